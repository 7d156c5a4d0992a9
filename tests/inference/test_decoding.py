"""A Sequence's text as it grows token by token: the stream decoder keeps it equal to the start of
the whole decode, stop strings are found across token boundaries, and the whole completion is not
decoded again at every token."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from services.inference.decoding import Sequence, _TextSoFar

# Text with characters of one to four UTF-8 bytes, which SmolLM2's byte-level tokens split.
SAMPLE = (
    "Reset your password in Settings > Account. Zürich, São Paulo, Kraków; 東京とソウル; ёлка; "
    "emoji 🎉🎉 and 👩‍💻; prices €12.50 / £9; math ∑ x² ≤ ∞. STOP here, then more text.\n\n1. One\n2. Two"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _check_prefixes(tokenizer, ids: list[int]) -> None:
    text = _TextSoFar(tokenizer)
    for n in range(1, len(ids) + 1):
        streamed = text.add(ids[:n])
        whole = tokenizer.decode(ids[:n], skip_special_tokens=True)
        rest = whole[len(streamed):]
        # The whole decode, less only the last tokens while they hold a character missing bytes.
        assert whole.startswith(streamed) and (not rest or "\ufffd" in rest), (ids[:n], streamed, whole)
    assert "\ufffd" in rest or streamed == whole


def test_the_streamed_text_is_always_the_start_of_the_whole_decode(tokenizer):
    assert _TextSoFar(tokenizer)._stream is not None  # SmolLM2's: a fast tokenizer without clean-up
    ids = tokenizer(SAMPLE, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(SAMPLE.split())  # multi-byte characters split across tokens
    _check_prefixes(tokenizer, ids)
    _check_prefixes(tokenizer, [*ids[:20], tokenizer.eos_token_id, *ids[20:40]])  # special tokens skipped
    rng = random.Random(7)
    for _ in range(40):  # random ids: stray bytes of unfinished characters, special tokens
        _check_prefixes(tokenizer, [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))])


def test_a_tokenizer_that_cleans_up_after_decoding_decodes_everything_each_time(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "clean_up_tokenization_spaces", True)
    text = _TextSoFar(tokenizer)
    assert text._stream is None
    ids = tokenizer("Hello , world .", add_special_tokens=False)["input_ids"]
    assert text.add(ids) == tokenizer.decode(ids, skip_special_tokens=True)


def _forced(tokenizer, ids: list[int], **options) -> tuple[Sequence, list[str]]:
    """A Sequence fed logits that choose `ids` in turn; the pieces it streamed."""
    pieces: list[str] = []
    sequence = Sequence([1], tokenizer=tokenizer, eos_ids=frozenset({tokenizer.eos_token_id}), adapter="",
                        max_tokens=len(ids), temperature=0.0, top_p=1.0, seed=None,
                        on_text=lambda text, _tokens: pieces.append(text), **options)
    for token in ids:
        logits = torch.zeros(len(tokenizer))
        logits[token] = 1.0
        if sequence.take(logits):
            break
    sequence.finish()
    return sequence, pieces


def test_a_stop_string_split_across_tokens_cuts_the_text_and_is_never_streamed(tokenizer):
    ids = tokenizer(SAMPLE, add_special_tokens=False)["input_ids"]
    sequence, pieces = _forced(tokenizer, ids, stop=["STOP here", "never there"])
    result = sequence.result()
    assert result.finish_reason == "stop" and result.stop_sequence == "STOP here"
    assert result.text == SAMPLE[: SAMPLE.index("STOP here")]
    assert "".join(pieces) == result.text
    assert len(pieces) > 10  # streamed as it went, not all at the end


def test_streamed_pieces_add_up_to_the_whole_text_without_decoding_it_again_each_token(tokenizer, monkeypatch):
    ids = tokenizer(SAMPLE * 6, add_special_tokens=False)["input_ids"]
    lengths: list[int] = []
    decode = type(tokenizer).decode

    def counted(self, token_ids, *args, **kwargs):
        lengths.append(len(token_ids))
        return decode(self, token_ids, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "decode", counted)
    sequence, pieces = _forced(tokenizer, ids, stop=[])
    result = sequence.result()
    assert result.finish_reason == "length" and result.text == SAMPLE * 6
    assert "".join(pieces) == result.text
    # One token at a time for each token's own text, the whole completion once (at the end).
    assert lengths.count(len(ids)) == 1 and sum(length > 1 for length in lengths) == 1
