"""Continuous batching for the `transformers` backend: the requests to one model decode together.

One thread per loaded model runs the model. Each turn it first prefills the requests that arrived
since the last turn (together, left-padded), then advances every running request by one token in a
single forward pass. A request joins the batch as soon as its prompt is read and leaves it as soon
as it ends, so a short answer never waits for a long one and throughput grows with the number of
clients, while a newcomer waits at most one decoding step before its prompt is read.

Why not `model.generate`: it batches only the requests it is started with, all to the end of the
longest. Why not a serving engine: vLLM and TGI need a GPU; this is the CPU path.

The rows of the batch keep one key/value cache, left-padded to the longest row; the attention mask
hides the padding and each row's position ids count only its own tokens, so a row computes what it
would alone (up to float rounding). Rows may use different LoRA adapters of the same base model:
peft's mixed-adapter batches (`adapter_names`, "__base__" for the base model) apply each row's own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
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
    ):
        import torch

        self.input_ids = input_ids
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

    def take(self, logits: torch.Tensor) -> bool:
        """Choose the next token from this row's `logits`; True when the sequence has ended."""
        import torch

        token = _pick(logits, self._temperature, self._top_p, self._rng)
        logprob = float(torch.log_softmax(logits, dim=-1)[token])
        self._completion.append(token)
        self._generated.append(GeneratedToken(token, self._tokenizer.decode([token]), logprob,
                                              token in self._special_ids))
        self._first_token_at = self._first_token_at or time.perf_counter()
        if token in self._eos_ids:
            self._finish = "stop"
            return True
        if self._stop or self._on_text is not None:
            text = self._tokenizer.decode(self._completion, skip_special_tokens=True)
            self._cut = _earliest_stop(text, self._stop) if self._stop else None
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


@dataclass
class EngineStats:
    """What the engine did, for monitoring and for tests that must see requests share a forward pass."""
    submitted: int = 0  # requests handed to the engine
    steps: int = 0  # forward passes, prefills included
    rows: int = 0  # rows summed over those passes
    max_rows: int = 0  # the most rows one pass computed
    mixed_steps: int = 0  # passes whose rows used more than one adapter (or adapters and the base model)


class Engine:
    """The batch of one loaded model, decoded by its own thread.

    `model()` returns what to call for a forward pass: the model itself, or its peft wrapper once an
    adapter is loaded (read each turn, under `lock`, which whoever changes the model's adapters holds).
    """

    def __init__(self, name: str, model: Callable[[], Any], device: Any, max_batch_size: int):
        self.lock = threading.Lock()  # held for each forward pass; changing the model's adapters takes it
        self.stats = EngineStats()
        self._model = model
        self._device = device
        self._max_batch_size = max_batch_size
        self._waiting: deque[Sequence] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._paused = 0
        self._rows: list[Sequence] = []
        self._cache: Any = None  # the rows' DynamicCache, left-padded to the longest row
        self._mask: torch.Tensor | None = None  # [rows, cache length]: 1 where a row has a token
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    def submit(self, sequence: Sequence) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.append(sequence)
            self.stats.submitted += 1
            self._wake.notify()

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet in the batch."""
        with self._wake:
            return len(self._waiting)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Meanwhile requests are accepted and wait; the rows already decoding wait too."""
        with self._wake:
            self._paused += 1
        try:
            yield
        finally:
            with self._wake:
                self._paused -= 1
                self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and (self._paused or (not self._waiting and not self._rows)):
                    self._wake.wait()
                if self._closed:
                    for sequence in (*self._waiting, *self._rows):
                        sequence.fail(RuntimeError("the inference service is shutting down"))
                    return
                room = self._max_batch_size - len(self._rows)
                arriving = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            try:
                self._turn(arriving)
            except Exception as error:  # noqa: BLE001 - a failed pass fails its requests, not the engine
                log.exception("inference: a forward pass failed; its %d requests fail with it",
                              len(self._rows) + len(arriving))
                for sequence in {*self._rows, *arriving}:
                    sequence.fail(error)
                self._rows, self._cache, self._mask = [], None, None

    def _turn(self, arriving: list[Sequence]) -> None:
        import torch

        with torch.inference_mode():
            arriving = [s for s in arriving if not self._ended_before_start(s)]
            if arriving:
                self._prefill(arriving)
            if self._rows:
                self._decode()

    def _ended_before_start(self, sequence: Sequence) -> bool:
        if sequence.cancel.is_set():
            sequence.finish()
            return True
        return False

    def _prefill(self, arriving: list[Sequence]) -> None:
        """Read the newcomers' prompts in one pass, choose their first tokens, and add them to the batch."""
        import torch
        from transformers import DynamicCache

        longest = max(len(s.input_ids) for s in arriving)
        ids = torch.zeros((len(arriving), longest), dtype=torch.long)
        mask = torch.zeros((len(arriving), longest), dtype=torch.long)
        for row, sequence in enumerate(arriving):
            ids[row, longest - len(sequence.input_ids):] = torch.tensor(sequence.input_ids)
            mask[row, longest - len(sequence.input_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(arriving, ids, mask, positions, cache)
        self._merge(arriving, cache, mask)
        self._take(logits)

    def _decode(self) -> None:
        """One token more for every row."""
        import torch

        assert self._mask is not None
        ids = torch.tensor([[s.last_token] for s in self._rows])
        positions = self._mask.sum(-1, keepdim=True)
        self._mask = torch.cat([self._mask, torch.ones((len(self._rows), 1), dtype=torch.long)], dim=-1)
        logits = self._forward(self._rows, ids, self._mask, positions, self._cache)
        self._take(logits, start=0)

    def _forward(self, rows: list[Sequence], ids, mask, positions, cache) -> torch.Tensor:
        """The last position's logits of each row, in float32."""
        with self.lock:  # the model as it is between two changes of its adapters
            model = self._model()
            adapters = {s.adapter for s in rows}
            extra = {}
            if hasattr(model, "peft_config"):  # a peft wrapper: every row names its adapter
                extra["adapter_names"] = [s.adapter for s in rows]
            elif adapters != {BASE}:
                raise RuntimeError(f"adapters {sorted(adapters - {BASE})} asked of a model that has none loaded")
            output = model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device),
                           position_ids=positions.to(self._device), past_key_values=cache, use_cache=True, **extra)
        self.stats.steps += 1
        self.stats.rows += len(rows)
        self.stats.max_rows = max(self.stats.max_rows, len(rows))
        self.stats.mixed_steps += len(adapters) > 1
        return output.logits[:, -1].float().cpu()

    def _merge(self, arriving: list[Sequence], cache: Any, mask: torch.Tensor) -> None:
        """Add the newcomers' cache rows to the batch's, left-padding whichever is shorter."""
        import torch

        if not self._rows:
            self._rows, self._cache, self._mask = list(arriving), cache, mask
            return
        assert self._mask is not None
        length = max(self._mask.shape[1], mask.shape[1])
        self._mask = torch.cat([_pad_left(self._mask, length, dim=1), _pad_left(mask, length, dim=1)])
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, length, dim=2), _pad_left(theirs.keys, length, dim=2)])
            mine.values = torch.cat([_pad_left(mine.values, length, dim=2),
                                     _pad_left(theirs.values, length, dim=2)])
        self._rows.extend(arriving)

    def _take(self, logits: torch.Tensor, start: int | None = None) -> None:
        """Give each row its logits (the newest rows, after a prefill), then drop the rows that ended."""
        import torch

        first = len(self._rows) - logits.shape[0] if start is None else start
        ended = []
        for offset, row_logits in enumerate(logits):
            sequence = self._rows[first + offset]
            try:
                done = sequence.take(row_logits)
            except Exception as error:  # noqa: BLE001 - the caller's callback failed: only its request ends
                sequence.fail(error)
                done = True
            if done:
                ended.append(first + offset)
        if not ended:
            return
        for index in ended:
            self._rows[index].finish()
        keep = [i for i in range(len(self._rows)) if i not in set(ended)]
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache, self._mask = None, None
            return
        assert self._mask is not None
        selected = torch.tensor(keep)
        self._mask = self._mask[selected]
        # Columns that are padding in every row left are dropped.
        drop = int(self._mask.any(dim=0).long().argmax())
        self._mask = self._mask[:, drop:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[selected.to(layer.keys.device), :, drop:]
            layer.values = layer.values[selected.to(layer.values.device), :, drop:]


def _pad_left(tensor: torch.Tensor, length: int, *, dim: int) -> torch.Tensor:
    import torch

    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator | None) -> int:
    """Greedy at temperature 0; otherwise sample from the smallest set of tokens whose
    probability reaches top_p (top_p 0 keeps only the most likely token)."""
    import torch

    if temperature == 0 or rng is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1:
        return int(torch.multinomial(probs, 1, generator=rng))
    sorted_probs, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(sorted_probs, dim=0) - sorted_probs < top_p
    keep[0] = True
    choice = torch.multinomial(sorted_probs * keep, 1, generator=rng)
    return int(order[choice])


def _earliest_stop(text: str, stop: list[str]) -> int | None:
    positions = [index for s in stop if (index := text.find(s)) >= 0]
    return min(positions) if positions else None
