"""Token counts: the piece cache gives exactly the tokenizer's counts, and is used only where it can."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dataprep.tokens import PieceCounts, TokenCounter

# Characters where GPT-2's split regex has to decide something: spaces of every kind, letters,
# digits, punctuation, apostrophes (contractions), non-Latin scripts, emoji; and the added tokens.
TRICKY = " \t\n\r\x0b\x0c\u00a0\u2009\u3000\u0085aZzé'’s9.,!?-<|>東京🙂\u0301"
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
HARD_TEXTS = [
    "",
    " ",
    "   ",
    "a",
    " leading space",
    "trailing space ",
    "two  spaces and\ttabs\t\tand  \n newlines \n\n  indented",
    "it's they're we've I'm you'll he'd O'Neil 'quoted' ’curly’",
    "numbers 12345 1 2 3 +1 555 123 4567 4111-1111-1111-1111 3.14159",
    "<|im_start|>user\nHello <|im_end|>\n<|im_start|>assistant\n Hi! <|im_end|> x",
    "no\u00a0break\u00a0spaces and\u3000ideographic space 東京 タワー",
    "emoji 🙂 🙂🙂 e\u0301 combining , . ! ? ; : ) ( ] [",
    "  \n  \n\n x  y   z    ",
    "user\n <|im_end|>\n",
    "a\t <|im_start|> <|im_end|>  <|endoftext|>",
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir).backend_tokenizer


@pytest.fixture(scope="module")
def spec(backend) -> dict:
    return json.loads(backend.to_str())


def _library_counts(backend, texts: list[str]) -> list[int]:
    return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]


def test_smollm2_tokenizer_is_counted_piece_by_piece(spec):
    assert PieceCounts.exact_for(spec)


def test_piece_counts_equal_the_tokenizers_on_hard_texts(backend, spec):
    pieces = PieceCounts(spec, backend.encode_batch_fast)
    assert pieces.count(HARD_TEXTS) == _library_counts(backend, HARD_TEXTS)
    # Again, now from the cache.
    assert pieces.count(HARD_TEXTS[::-1]) == _library_counts(backend, HARD_TEXTS[::-1])


TEXTS = st.lists(st.sampled_from([*TRICKY, *SPECIAL, "\n ", "  "]), max_size=40).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(TEXTS, min_size=1, max_size=4))
def test_piece_counts_equal_the_tokenizers_on_random_texts(backend, spec, texts):
    assert PieceCounts(spec, backend.encode_batch_fast).count(texts) == _library_counts(backend, texts)


@settings(max_examples=200, deadline=None)
@given(TEXTS)
def test_pieces_are_the_text_cut_before_each_space_that_starts_one(spec, text):
    # The first form of the cut: zero-width, before the space; the cache keys a piece after a
    # space by its text after the space, which the split drops.
    added = sorted({t["content"] for t in spec["added_tokens"]}, key=len)
    before_space = re.compile(f"(?= (?!{'|'.join(map(re.escape, added))})[!-~])")
    first, *rest = PieceCounts(spec, None)._space_before_piece.split(text)
    assert [first, *(" " + part for part in rest)] == before_space.split(text)


def test_piece_counts_of_known_and_new_pieces_in_one_batch(backend, spec):
    pieces = PieceCounts(spec, backend.encode_batch_fast)
    pieces.count(HARD_TEXTS[:5])
    texts = HARD_TEXTS[:5] + ["known and new 🙂 pieces"] + HARD_TEXTS
    assert pieces.count(texts) == _library_counts(backend, texts)


@pytest.mark.parametrize(
    "change",
    [
        lambda spec: spec.update(normalizer={"type": "NFC"}),
        lambda spec: spec["pre_tokenizer"].update(add_prefix_space=True),
        lambda spec: spec["pre_tokenizer"].update(use_regex=False),
        lambda spec: spec.update(pre_tokenizer={"type": "Whitespace"}),
        lambda spec: spec["model"].update(dropout=0.1),
        lambda spec: spec.update(truncation={"max_length": 8}),
        lambda spec: spec["added_tokens"][1].update(rstrip=True),
        lambda spec: spec["added_tokens"][1].update(content="<| im_start |>"),
    ],
)
def test_other_tokenizers_are_not_counted_by_pieces(spec, change):
    changed = copy.deepcopy(spec)
    change(changed)
    assert not PieceCounts.exact_for(changed)


def test_the_counter_uses_pieces_and_counts_the_rendering(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    counter = TokenCounter(tokenizer, max_tokens=10_000)
    assert counter._pieces is not None
    conversations = [
        [{"role": "user", "content": t or "x"}, {"role": "assistant", "content": "ok"}] for t in HARD_TEXTS
    ]
    rendered = counter.render_many(conversations)
    assert counter._count_texts(rendered) == _library_counts(tokenizer.backend_tokenizer, rendered)
