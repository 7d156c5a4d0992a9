"""Token counts as training sees them: each conversation rendered through the base model's chat
template and tokenized by its fast tokenizer (`TokenCounter`, used by validation for the context
limit and by the pipeline for the report's totals).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.dataprep.chat_templates import CHATML_TEMPLATE, fast_renderer
from services.dataprep.examples import Example, LineError
from services.shared.errors import InvalidArgument

# ChatML, for a tokenizer that has no chat template of its own.
DEFAULT_CHAT_TEMPLATE = CHATML_TEMPLATE


class TokenCounter:
    """Counts an example's tokens as training will see them: rendered through the chat template.

    Works in batches: the template renders a list of conversations in one call and the fast
    tokenizer encodes the list in one call (in Rust, on every core). A preference pair counts as
    its prompt plus the longer of its two answers.

    `check_many` skips exact counting where it cannot matter: with a byte-level BPE tokenizer and no
    normalizer (GPT-2, Llama 3, Qwen, SmolLM2), every token covers at least one byte of the text, so
    a rendering of at most `max_tokens` UTF-8 bytes is within the limit without tokenizing it.
    Exact counts of such a tokenizer (GPT-2's pre-tokenizer) go through `PieceCounts`.
    """

    def __init__(
        self, tokenizer: Any, max_tokens: int, *, batch_size: int = 512, chat_template: str | None = None
    ):
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.chat_template = (
            chat_template or getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
        )
        self._fast_render = fast_renderer(self.chat_template)  # None: Jinja renders every conversation
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._encode_batch = None
        if backend is not None:
            self._encode_batch = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
        spec = _spec(backend) if backend is not None else None
        self._bytes_bound = spec is not None and _is_byte_level(spec)
        self._pieces = (
            PieceCounts(spec, self._encode_batch)
            if spec is not None and PieceCounts.exact_for(spec)
            else None
        )

    def _conversations(self, example: Example) -> list[list[dict]]:
        if example.kind == "preference":
            prompt = list(example.messages)
            return [
                prompt + [{"role": "assistant", "content": example.preferred or ""}],
                prompt + [{"role": "assistant", "content": example.rejected or ""}],
            ]
        return [list(example.messages)]

    def render_many(self, conversations: Sequence[list[dict]]) -> list[str | Exception]:
        """Each conversation through the chat template, or the error the template raised for it."""
        if not conversations:
            return []
        if self._fast_render is not None:
            texts: list[str | Exception | None] = [self._fast_render(c) for c in conversations]
            rest = [c for c, text in zip(conversations, texts, strict=True) if text is None]
            if rest:  # conversations the Python renderer leaves to Jinja
                rendered = iter(self._render_with_jinja(rest))
                texts = [next(rendered) if text is None else text for text in texts]
            return texts  # type: ignore[return-value]
        return self._render_with_jinja(conversations)

    def _render_with_jinja(self, conversations: Sequence[list[dict]]) -> list[str | Exception]:
        try:
            texts = self.tokenizer.apply_chat_template(
                list(conversations), chat_template=self.chat_template, tokenize=False
            )
            return [texts] if isinstance(texts, str) else list(texts)
        except Exception:  # some conversation of the batch: find which, one at a time
            if len(conversations) == 1:
                try:
                    return [
                        self.tokenizer.apply_chat_template(
                            conversations[0], chat_template=self.chat_template, tokenize=False
                        )
                    ]
                except Exception as exc:  # a template's raise_exception(...), or a bad message
                    return [exc]
            return [text for c in conversations for text in self._render_with_jinja([c])]

    def _count_texts(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self._pieces is not None:
            return self._pieces.count(texts)
        if self._encode_batch is not None:
            return [len(encoding.ids) for encoding in self._encode_batch(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _counts(
        self, examples: Sequence[Example], exact: bool
    ) -> tuple[list[int | Exception | None], list[int]]:
        """Per rendering of `examples`: its token count, the template's error, or (when not `exact`)
        None for one certainly within the limit; and for each example the index of its first one."""
        conversations: list[list[dict]] = []
        starts: list[int] = []
        for example in examples:
            starts.append(len(conversations))
            conversations.extend(self._conversations(example))
        texts: list[str | Exception] = []
        for i in range(0, len(conversations), self.batch_size):
            texts.extend(self.render_many(conversations[i : i + self.batch_size]))
        counts: list[int | Exception | None] = [t if isinstance(t, Exception) else None for t in texts]
        shortcut = self._bytes_bound and not exact
        todo = [
            i
            for i, text in enumerate(texts)
            if isinstance(text, str) and not (shortcut and _utf8_len(text) <= self.max_tokens)
        ]
        for i in range(0, len(todo), self.batch_size):
            part = todo[i : i + self.batch_size]
            for j, n in zip(part, self._count_texts([texts[j] for j in part]), strict=True):  # type: ignore[misc]
                counts[j] = n
        return counts, starts

    def count_many(self, examples: Sequence[Example]) -> list[int]:
        """Exact token counts, one per example. InvalidArgument if the chat template refuses one."""
        counts, starts = self._counts(examples, exact=True)
        result = []
        for example, start in zip(examples, starts, strict=True):
            mine = counts[start : start + (2 if example.kind == "preference" else 1)]
            for n in mine:
                if isinstance(n, Exception):
                    raise InvalidArgument(
                        f"line {example.line}: the chat template refuses it: {n}", param="messages"
                    )
            result.append(max(mine))  # type: ignore[type-var]
        return result

    def count(self, example: Example) -> int:
        return self.count_many([example])[0]

    def check_many(self, examples: Sequence[Example]) -> list[LineError | None]:
        """For each example, a `too_many_tokens` or `chat_template_error` problem, or None."""
        return self._problems(examples, *self._counts(examples, exact=False))

    def check_and_count(self, examples: Sequence[Example]) -> list[LineError | int]:
        """For each example, what `check_many` finds wrong with it, or else its exact token count
        (what `count_many` would say): both from one rendering and tokenization."""
        counts, starts = self._counts(examples, exact=True)
        problems = self._problems(examples, counts, starts)
        return [
            problem or max(counts[start : start + (2 if example.kind == "preference" else 1)])  # type: ignore[type-var]
            for example, start, problem in zip(examples, starts, problems, strict=True)
        ]

    def _problems(
        self, examples: Sequence[Example], counts: list[int | Exception | None], starts: list[int]
    ) -> list[LineError | None]:
        results: list[LineError | None] = []
        for example, start in zip(examples, starts, strict=True):
            if example.kind == "preference":
                pairs = [(counts[start], "preferred_output"), (counts[start + 1], "non_preferred_output")]
            else:
                pairs = [(counts[start], "messages")]
            refused = next((n for n, _ in pairs if isinstance(n, Exception)), None)
            if refused is not None:
                field = "input.messages" if example.kind == "preference" else "messages"
                results.append(
                    LineError(
                        example.line,
                        field,
                        "chat_template_error",
                        f"the base model's chat template refuses this conversation: {refused}",
                    )
                )
                continue
            over = [(n, field) for n, field in pairs if isinstance(n, int) and n > self.max_tokens]
            if not over:
                results.append(None)
                continue
            n, field = max(over)
            what = "the conversation" if field == "messages" else f"the prompt with {field}"
            results.append(
                LineError(
                    example.line,
                    field,
                    "too_many_tokens",
                    f"{what} is {n} tokens, over the base model's limit of {self.max_tokens}; shorten it or split it",
                )
            )
        return results

    def check(self, example: Example) -> LineError | None:
        return self.check_many([example])[0]


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _spec(backend: Any) -> dict | None:
    """The fast tokenizer's JSON description, or None for an unusual backend (no shortcuts then)."""
    try:
        return json.loads(backend.to_str())
    except Exception:
        return None


def _pre_tokenizers(spec: dict) -> list[dict]:
    pre = spec.get("pre_tokenizer") or {}
    return pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]


def _is_byte_level(spec: dict) -> bool:
    """True if every token of the tokenizer covers at least one byte of the text it was read from."""
    if spec.get("normalizer") is not None or (spec.get("model") or {}).get("type") != "BPE":
        return False
    byte_level = [p for p in _pre_tokenizers(spec) if p.get("type") == "ByteLevel"]
    # add_prefix_space would add a byte that is not in the text.
    return bool(byte_level) and not any(p.get("add_prefix_space") for p in byte_level)


# Distinct pieces remembered (a few dozen MiB at most); past it the memory starts again.
PIECE_CACHE_ENTRIES = 1 << 18


class PieceCounts:
    """Exact token counts of texts as the sums of their pieces' counts, each distinct piece encoded once.

    Why not the tokenizer on every whole text: on our 2-core bench machine it costs ~215 us of CPU
    per ~150-token conversation (almost all of it in the pre-tokenizer's regex), more than
    validation, PII and dedup of the example together, while most pieces (" the", " order",
    " number") recur in every file. The tokenizer still encodes every piece it has not seen.

    Why the sum is exact, for the tokenizers `exact_for` accepts (no normaliser, GPT-2's ByteLevel
    pre-tokenizer with its split regex, BPE without dropout, added tokens that hold no whitespace
    and strip none, no truncation or padding): such a tokenizer cuts the text at its added tokens,
    splits the rest into pre-tokens and encodes each pre-token on its own, so the encoding of a text
    is the concatenation of its pre-tokens' and added tokens' encodings. A space followed by a
    non-space always starts a pre-token (no alternative of the regex matches a space followed by a
    non-space unless it starts at that space; the whitespace runs before it stop short of it) and
    no added token spans it, so a text cut before each such space encodes, piece by piece, to the
    same tokens. Not before an added token, though: the text is cut at added tokens first, so a
    space before one ends its part of the text, and a whitespace run before the space takes it in.
    Printable ASCII after the space keeps "non-space" the same in every regex dialect.
    tests/dataprep/test_tokens.py checks the counts against the tokenizer's.
    """

    def __init__(self, spec: dict, encode_batch):
        self._encode_batch = encode_batch
        # Counts of a text's first piece, and of the pieces after it by their text after the space.
        self._caches: tuple[dict[str, int], dict[str, int]] = ({}, {})
        added = sorted({t["content"] for t in spec.get("added_tokens") or () if t.get("content")}, key=len)
        not_added = f"(?!{'|'.join(map(re.escape, added))})" if added else ""
        # The space that starts a piece, matched (and so dropped by `split`): a pattern that starts
        # with a literal is searched for that character, while one that starts with a lookahead is
        # tried at every position (twice the time). Pieces meet at spaces, never overlapping.
        self._space_before_piece = re.compile(f" {not_added}(?=[!-~])")

    @staticmethod
    def exact_for(spec: dict) -> bool:
        """Whether the tokenizer described by `spec` (its tokenizer.json) encodes texts piece by piece."""
        model = spec.get("model") or {}
        pre = _pre_tokenizers(spec)
        return (
            spec.get("normalizer") is None
            and spec.get("truncation") is None
            and spec.get("padding") is None
            and model.get("type") == "BPE"
            and not model.get("dropout")
            and len(pre) == 1
            and pre[0].get("type") == "ByteLevel"
            and pre[0].get("use_regex", True)
            and not pre[0].get("add_prefix_space")
            and all(
                not (token.get("lstrip") or token.get("rstrip") or token.get("single_word"))
                and not any(char.isspace() for char in token.get("content", ""))
                for token in spec.get("added_tokens") or ()
            )
        )

    def count(self, texts: Sequence[str]) -> list[int]:
        first, spaced = self._caches
        if len(first) + len(spaced) > PIECE_CACHE_ENTRIES:
            # New dicts rather than clear(): another thread may be summing from the old ones.
            first, spaced = self._caches = ({}, {})
        split = [self._space_before_piece.split(text) for text in texts]
        counts: list[int] = []
        unknown: list[int] = []  # the texts with a piece not counted yet: most batches have a few
        for i, parts in enumerate(split):
            try:
                counts.append(_sum_of_pieces(parts, first, spaced))
            except KeyError:
                counts.append(0)
                unknown.append(i)
        if unknown:
            new_first = list({split[i][0] for i in unknown} - first.keys())
            new_spaced = list({part for i in unknown for part in split[i][1:]} - spaced.keys())
            pieces = new_first + [" " + part for part in new_spaced]
            lengths = [len(encoding.ids) for encoding in self._encode_batch(pieces, add_special_tokens=False)]
            first.update(zip(new_first, lengths, strict=False))
            spaced.update(zip(new_spaced, lengths[len(new_first) :], strict=True))
            for i in unknown:
                counts[i] = _sum_of_pieces(split[i], first, spaced)
        return counts


def _sum_of_pieces(parts: list[str], first: dict[str, int], spaced: dict[str, int]) -> int:
    """The tokens of a text split at the spaces that start its pieces (KeyError: a piece not counted)."""
    return first[parts[0]] + sum(map(spaced.__getitem__, itertools.islice(parts, 1, None)))


def load_token_counter(path: str | Path) -> TokenCounter:
    """The counter of the base model in directory `path`: its tokenizer, chat template and context length."""
    from transformers import AutoConfig, AutoTokenizer  # heavy: only where counting happens

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    return TokenCounter(tokenizer, config.max_position_embeddings)
