"""One request's decoding, whatever batch it runs in: choosing each token (greedy, or sampled
with its own seeded generator), stop strings, the text streamed so far, and at the end its Generation.

The engine (batching.py) feeds a Sequence the logits of its row each step; the caller's thread
waits for `result`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GeneratedToken:
    id: int
    text: str
    logprob: float  # under the model itself: temperature 1, before top_p
    special: bool


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # Every generated token, the last included (end of sequence, or those of the stop string).
    tokens: tuple[GeneratedToken, ...] = ()
    # The stop string that ended it, if one did.
    stop_sequence: str = ""
    # time.perf_counter() when the first token was chosen (None: no token was asked for).
    first_token_at: float | None = field(default=None, compare=False)


class Sequence:
    """One request's decoding: its sampler, stop strings, streamed text and, at the end, its Generation.

    The engine's thread feeds it tokens; the caller's thread waits for `result`.
    """

    def __init__(
        self,
        input_ids: list[int],
        *,
        tokenizer: PreTrainedTokenizerBase,
        eos_ids: frozenset[int],
        adapter: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stop: list[str],
        on_text: Callable[[str, list[GeneratedToken]], None] | None = None,
        cancel: threading.Event | None = None,
        prefix_length: int = 0,
    ):
        import torch

        self.input_ids = input_ids
        # Leading tokens other requests are likely to repeat (a chat's system prompt and earlier
        # turns): the engine keeps their keys and values (batching.py, prefix cache).
        self.prefix_length = prefix_length
        self.adapter = adapter
        self._tokenizer = tokenizer
        self._eos_ids = eos_ids
        self._special_ids = set(tokenizer.all_special_ids)
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._top_p = top_p
        self._stop = stop
        self._on_text = on_text
        self.cancel = cancel or threading.Event()
        self._rng: torch.Generator | None = None
        if temperature > 0:
            self._rng = torch.Generator()
            if seed is None:
                self._rng.seed()
            else:
                self._rng.manual_seed(seed)
        self._completion: list[int] = []
        self._generated: list[GeneratedToken] = []
        self._text = _TextSoFar(tokenizer)  # the completion's text, for stop strings and on_text
        self._reported = 0  # tokens handed to on_text
        self._sent = 0  # characters handed to on_text
        # A stop string may be completed by the next token: hold back that many characters meanwhile.
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._cut: int | None = None
        self._finish: FinishReason = "length"
        self._first_token_at: float | None = None
        self._done = threading.Event()
        self._result: Generation | None = None
        self._error: BaseException | None = None

    @property
    def last_token(self) -> int:
        return self._completion[-1]

    def take(self, logits: torch.Tensor, logprobs: torch.Tensor | None = None, greedy: int | None = None) -> bool:
        """Choose the next token from this row's `logits`; True when the sequence has ended.
        `logprobs` (their log-softmax) and `greedy` (their argmax) may come computed for a whole
        batch at once: one pass over the vocabulary for every row instead of two per row."""
        import torch

        token = _pick(logits, self._temperature, self._top_p, self._rng, greedy)
        if logprobs is None:
            logprobs = torch.log_softmax(logits, dim=-1)
        logprob = float(logprobs[token])
        self._completion.append(token)
        self._generated.append(GeneratedToken(token, self._tokenizer.decode([token]), logprob,
                                              token in self._special_ids))
        self._first_token_at = self._first_token_at or time.perf_counter()
        if token in self._eos_ids:
            self._finish = "stop"
            return True
        if self._stop or self._on_text is not None:
            searched = len(self._text.text)
            text = self._text.add(self._completion)
            # A stop string that ends in the new text starts at most `hold` characters before it
            # (an earlier one would have ended the sequence already).
            self._cut = _earliest_stop(text, self._stop, max(0, searched - self._hold)) if self._stop else None
            if self._cut is not None:
                self._finish = "stop"
                return True
            # U+FFFD: a character whose bytes have not all been generated yet.
            ready = (text.find("\ufffd") if "\ufffd" in text else len(text)) - self._hold
            if self._on_text is not None and ready > self._sent:
                self._on_text(text[self._sent:ready], self._new_tokens())
                self._sent = ready
        return len(self._completion) >= self._max_tokens or self.cancel.is_set()

    def finish(self) -> None:
        """End it with what it has: the last text goes to on_text and `result` returns."""
        if self._done.is_set():  # it failed
            return
        full_text = self._tokenizer.decode(self._completion, skip_special_tokens=True)
        cut = self._cut
        text = full_text[:cut] if cut is not None else full_text
        stop_sequence = next((s for s in self._stop if full_text.find(s) == cut), "") if cut is not None else ""
        try:
            if self._on_text is not None and (len(text) > self._sent or self._reported < len(self._generated)):
                self._on_text(text[self._sent:], self._new_tokens())
        except Exception as error:  # noqa: BLE001 - the caller's callback: its failure is the caller's answer
            self.fail(error)
            return
        self._result = Generation(text, self._finish, prompt_tokens=len(self.input_ids),
                                  completion_tokens=len(self._completion), tokens=tuple(self._generated),
                                  stop_sequence=stop_sequence, first_token_at=self._first_token_at)
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def result(self) -> Generation:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _new_tokens(self) -> list[GeneratedToken]:
        fresh, self._reported = self._generated[self._reported:], len(self._generated)
        return fresh


def _pick(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator | None,
          greedy: int | None = None) -> int:
    """Greedy at temperature 0 (`greedy`: the argmax, if already computed); otherwise sample from
    the smallest set of tokens whose probability reaches top_p (top_p 0 keeps only the most likely token)."""
    import torch

    if temperature == 0 or rng is None:
        return int(torch.argmax(logits)) if greedy is None else greedy
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1:
        return int(torch.multinomial(probs, 1, generator=rng))
    sorted_probs, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(sorted_probs, dim=0) - sorted_probs < top_p
    keep[0] = True
    choice = torch.multinomial(sorted_probs * keep, 1, generator=rng)
    return int(order[choice])


def _earliest_stop(text: str, stop: list[str], start: int = 0) -> int | None:
    positions = [index for s in stop if (index := text.find(s, start)) >= 0]
    return min(positions) if positions else None


class _TextSoFar:
    """The text of a growing completion, `tokenizer.decode(ids, skip_special_tokens=True)`, kept up
    to date token by token.

    With a fast tokenizer that cleans nothing up after decoding, each token goes through the
    tokenizers library's `DecodeStream`, which decodes the last few tokens only and holds back a
    character whose bytes are not all there yet (~1 us a token; decoding the whole completion
    again at every token costs 170 us at 1,000 tokens and 720 us at 4,000 with SmolLM2's). Its text
    is always the start of the whole decode (tests/inference/test_decoding.py); the final text is
    the whole decode (`Sequence.finish`). Other tokenizers decode everything each time."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self._tokenizer = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._stream = None
        if self._backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=True)
        self._fed = 0  # ids given to the stream
        self.text = ""

    def add(self, ids: list[int]) -> str:
        """The text of `ids`, which extend the ids of the last call."""
        if self._stream is None:
            self.text = self._tokenizer.decode(ids, skip_special_tokens=True)
            return self.text
        for token in ids[self._fed:]:
            piece = self._stream.step(self._backend, token)
            if piece:
                self.text += piece
        self._fed = len(ids)
        return self.text
