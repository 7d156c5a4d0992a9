"""Continuous batching for the `transformers` backend: the requests to one model decode together.

One thread per loaded model runs the model. Each turn it first prefills the requests that arrived
since the last turn (together, left-padded), then advances every running request by one token in a
single forward pass; if more requests arrived while it read prompts, it reads theirs first, so the
requests of a burst get their first tokens before the batch takes another step (measured on 2 cores,
bench/serve.py: 8 sent at once, first-token p50 184-190 ms before, 171 ms after). A request joins
the batch as soon as its prompt is read and leaves it as soon as it ends, so a short answer never
waits for a long one and throughput grows with the number of clients, while a newcomer waits at
most one decoding step before its prompt is read.

Why not `model.generate`: it batches only the requests it is started with, all to the end of the
longest. Why not a serving engine: vLLM and TGI need a GPU; this is the CPU path.

The rows of the batch keep one key/value cache, left-padded to the longest row; the attention mask
hides the padding and each row's position ids count only its own tokens, so a row computes what it
would alone (up to float rounding). Rows may use different LoRA adapters of the same base model:
peft's mixed-adapter batches (`adapter_names`, "__base__" for the base model) apply each row's own.

A request for n choices (OpenAI's `n`) is n rows submitted together: one prefill reads their prompt
once and each row gets a copy of its cache, then they decode side by side, each with its own sampler.

One thread does all of a model's computing: its forward passes, and `run` hands it anything else
that computes with the model (scoring an answer, loading an adapter) to do between two turns. On
a CPU this is about speed, not safety: torch's OpenMP (libgomp) keeps a team of worker threads for
every thread that has started parallel work, and once the teams hold more threads than there are
cores, its workers stop spinning between parallel regions and sleep, so each of a decoding step's
hundreds of small parallel regions waits to wake one. Measured on 2 cores with SmolLM2 in bf16: one
request decoded at 18 tokens/s instead of 27, the process using 1.2 cores instead of 2. For the
same reason a model is loaded on a thread of its own that ends afterwards (`on_own_thread`).

Prefix cache: a chat's prompt starts with what other requests repeat (the system prompt, SmolLM2's
default one included, and the turns before the last message; `Sequence.prefix_length`). The keys
and values of such a prefix are computed once, in a pass of their own, and kept (the few used most
recently); a prefill then reads only each prompt's rest after its prefix's cached keys and values.
Every request with that prefix goes this way, alone or in a batch, so answers do not depend on what
else is running; on SmolLM2's default system prompt it skips 24 of a short question's ~40 tokens.
"""


from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from services.inference.decoding import Sequence

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
# Shorter prefixes are read with the rest of their prompt: keeping them would save less than a pass costs.
MIN_PREFIX_TOKENS = 16


@dataclass
class EngineStats:
    """What the engine did, for monitoring and for tests that must see requests share a forward pass."""
    submitted: int = 0  # sequences handed to the engine (a request for n choices hands n)
    steps: int = 0  # forward passes, prefills included
    rows: int = 0  # rows summed over those passes
    max_rows: int = 0  # the most rows one pass computed
    mixed_steps: int = 0  # passes whose rows used more than one adapter (or adapters and the base model)
    shared_prompts: int = 0  # rows whose prompt another row of the same prefill read for them
    prefix_hits: int = 0  # prompts whose prefix's keys and values came from the prefix cache
    prefix_misses: int = 0  # prefixes computed (and kept) for a prompt
    compiled_steps: int = 0  # decoding steps computed by the compiled step (compiled_decode.py)


class Engine:
    """The batch of one loaded model, decoded by its own thread.

    `model()` returns what to call for a forward pass: the model itself, or its peft wrapper once an
    adapter is loaded (read each pass; whoever changes the model's adapters does it through `run`).
    """

    def __init__(self, name: str, model: Callable[[], Any], device: Any, max_batch_size: int,
                 prefix_cache_size: int = 4, decoder: Callable[..., torch.Tensor] | None = None, nice: int = 0,
                 compiled: Any = None):
        self.stats = EngineStats()
        self._nice = nice  # how much lower its threads' CPU priority is than the process's (see _lower_own_priority)
        self._model = model
        self._decoder = decoder  # computes the model's forward pass faster (llama_decoder.py), if given
        self._compiled = compiled  # computes the decoding steps that fit it faster still (compiled_decode.py)
        self._device = device
        self._max_batch_size = max_batch_size
        self._prefix_cache_size = prefix_cache_size
        # (adapter, prefix token ids) -> per layer (keys, values) of that prefix alone, most recent last.
        self._prefixes: OrderedDict[tuple[str, tuple[int, ...]], list[tuple[Any, Any]]] = OrderedDict()
        self._waiting: deque[Sequence] = deque()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._paused = 0
        self._rows: list[Sequence] = []
        self._cache: Any = None  # the rows' DynamicCache, left-padded to the longest row
        self._mask: torch.Tensor | None = None  # [rows, cache length]: 1 where a row has a token
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    def submit(self, *sequences: Sequence) -> None:
        """Queue sequences for the batch; given together (the choices of one request), they arrive
        in the same turn when the batch has room for all of them."""
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.extend(sequences)
            self.stats.submitted += len(sequences)
            self._wake.notify()

    def run(self, work: Callable[[], T]) -> T:
        """`work()` done by the engine's thread between two turns (so between two forward passes),
        for the caller's thread, which waits for its result or exception."""
        done: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._calls.append((work, done))
            self._wake.notify()
        return done.result()

    def use_compiled(self, load: Callable[[], Any]) -> None:
        """From the next step on, compute the decoding steps that fit with `load()`'s compiled step
        (compiled_decode.CompiledDecode), which is created on the engine's thread, between two turns."""
        def install() -> None:
            self._compiled = load()

        self.run(install)

    @property
    def compiled(self) -> Any:
        """The compiled decoding step in use (`use_compiled`), or None."""
        return self._compiled

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet in the batch."""
        with self._wake:
            return len(self._waiting)

    @property
    def queued_calls(self) -> int:
        """Work handed to `run` and not started yet."""
        with self._wake:
            return len(self._calls)

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
        _lower_own_priority(self._nice)  # before the first forward pass: its OpenMP team inherits it
        while True:
            with self._wake:
                while not self._closed and (self._paused or not (self._waiting or self._rows or self._calls)):
                    self._wake.wait()
                if self._closed:
                    closing = RuntimeError("the inference service is shutting down")
                    for sequence in (*self._waiting, *self._rows):
                        sequence.fail(closing)
                    for _, done in self._calls:
                        done.set_exception(closing)
                    return
                calls = list(self._calls)
                self._calls.clear()
                room = self._max_batch_size - len(self._rows)
                arriving = [] if calls else [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            if calls:  # before the turn: the batch goes on with whatever they changed
                _do(calls)
                continue
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
            if self._rows and not self._more_arrived():
                self._decode()

    def _more_arrived(self) -> bool:
        """Whether requests that fit the batch came while the last pass ran: they are read before the
        next decoding step (a burst's first tokens do not wait for steps of the rows already running;
        at most max_batch_size prompts are read before the batch decodes again)."""
        with self._wake:
            return bool(self._waiting) and len(self._rows) < self._max_batch_size

    def _ended_before_start(self, sequence: Sequence) -> bool:
        if sequence.cancel.is_set():
            sequence.finish()
            return True
        return False

    def _prefill(self, arriving: list[Sequence]) -> None:
        """Read the newcomers' prompts in one pass, choose their first tokens, and add them to the batch.

        Rows with the same prompt and adapter (the choices of one request) are read once: the pass
        computes one row per distinct prompt, whose cache and logits are then copied to each."""
        import torch
        from transformers import DynamicCache

        distinct: dict[tuple[str, tuple[int, ...]], int] = {}
        row_of = [distinct.setdefault((s.adapter, tuple(s.input_ids)), len(distinct)) for s in arriving]
        readers = [arriving[row_of.index(row)] for row in range(len(distinct))]
        prefixes = [self._prefix(s) for s in readers]
        # Each row: [padding][its prefix's cached keys and values][padding][the rest of its prompt].
        cached = [kv[0][0].shape[2] if kv else 0 for kv in prefixes]
        past = max(cached)
        rests = [s.input_ids[length:] for s, length in zip(readers, cached, strict=True)]
        longest = max(len(rest) for rest in rests)
        ids = torch.zeros((len(readers), longest), dtype=torch.long)
        mask = torch.zeros((len(readers), past + longest), dtype=torch.long)
        for row, (rest, length) in enumerate(zip(rests, cached, strict=True)):
            ids[row, longest - len(rest):] = torch.tensor(rest)
            mask[row, past - length:past] = 1
            mask[row, past + longest - len(rest):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        cache = DynamicCache(ddp_cache_data=_left_padded(prefixes, past)) if past else DynamicCache()
        logits = self._forward(readers, ids, mask, positions, cache)
        if len(readers) < len(arriving):
            copies = torch.tensor(row_of)
            mask, logits = mask[copies], logits[copies]
            for layer in cache.layers:
                layer.keys = layer.keys[copies.to(layer.keys.device)]
                layer.values = layer.values[copies.to(layer.values.device)]
            self.stats.shared_prompts += len(arriving) - len(readers)
        self._merge(arriving, cache, mask)
        self._take(logits)

    def _prefix(self, sequence: Sequence) -> list[tuple[Any, Any]] | None:
        """The cached keys and values of `sequence`'s prefix (computed now if they are not kept yet),
        or None when it has no prefix worth keeping."""
        import torch
        from transformers import DynamicCache

        length = min(sequence.prefix_length, len(sequence.input_ids) - 1)  # a prefill reads one token at least
        if length < MIN_PREFIX_TOKENS or not self._prefix_cache_size:
            return None
        key = (sequence.adapter, tuple(sequence.input_ids[:length]))
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            self.stats.prefix_hits += 1
            return self._prefixes[key]
        cache = DynamicCache()
        ids = torch.tensor([key[1]])
        self._forward([sequence], ids, torch.ones_like(ids), torch.arange(length)[None], cache)
        self._prefixes[key] = [(layer.keys, layer.values) for layer in cache.layers]
        while len(self._prefixes) > self._prefix_cache_size:
            self._prefixes.popitem(last=False)
        self.stats.prefix_misses += 1
        return self._prefixes[key]

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
        model = self._model()
        adapters = {s.adapter for s in rows}
        extra = {}
        if hasattr(model, "peft_config"):  # a peft wrapper: every row names its adapter
            extra["adapter_names"] = [s.adapter for s in rows]
        elif adapters != {BASE}:
            raise RuntimeError(f"adapters {sorted(adapters - {BASE})} asked of a model that has none loaded")
        # The batch's decoding steps only: the compiled step keeps the batch's cache in its buffers.
        if (self._compiled is not None and cache is self._cache and ids.shape[1] == 1
                and self._compiled.fits(len(rows), mask.shape[1], extra.get("adapter_names"))):
            logits = self._compiled.step(ids, mask, positions, cache)
            self.stats.compiled_steps += 1
        elif self._decoder is not None:
            logits = self._decoder(ids, mask, positions, cache, extra.get("adapter_names"))
        else:
            # logits_to_keep=1: only the last position's logits are used, and a prefill's other
            # positions through the vocabulary-sized head were ~20% of its work on SmolLM2.
            logits = model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device),
                           position_ids=positions.to(self._device), past_key_values=cache, use_cache=True,
                           logits_to_keep=1, **extra).logits[:, -1]
        self.stats.steps += 1
        self.stats.rows += len(rows)
        self.stats.max_rows = max(self.stats.max_rows, len(rows))
        self.stats.mixed_steps += len(adapters) > 1
        return logits.float().cpu()

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
        # For every row at once (one log-softmax, one argmax) rather than two passes over the vocabulary per row.
        logprobs, greedy = torch.log_softmax(logits, dim=-1), logits.argmax(dim=-1).tolist()
        for offset, row_logits in enumerate(logits):
            sequence = self._rows[first + offset]
            try:
                done = sequence.take(row_logits, logprobs[offset], greedy[offset])
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


def _do(calls: list[tuple[Callable[[], Any], concurrent.futures.Future]]) -> None:
    for work, done in calls:
        try:
            done.set_result(work())
        except BaseException as error:  # noqa: BLE001 - the caller gets it, the engine goes on
            done.set_exception(error)


def _lower_own_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by `nice` (Linux's per-thread nice value; the threads it
    starts, its OpenMP team among them, inherit it).

    Why: on a CPU the engine's forward passes keep every core busy, and each step of a request's way
    in and out (the gRPC call, its prompt's chat template, the event loop sending its first token,
    the gateway, the client) waits for a core that a compute thread holds. With the compute threads
    a few nice levels lower, the kernel hands those short tasks a core as soon as they wake, and the
    compute threads still take every cycle nobody else wants. Measured on 2 cores (SmolLM2 in bf16,
    bench/serve.py): a request arriving into a running batch of 8 got its first token in 75-79 ms
    with equal priorities and 51-53 ms at 10 levels lower (a lone request's: 40-43 ms), for the same
    throughput. 3 levels made no difference."""
    if nice <= 0 or not sys.platform.startswith("linux"):  # elsewhere a thread id is not a process id
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    except OSError as error:  # a sandbox may forbid it: slower first tokens, not a broken engine
        log.warning("inference: could not lower the engine's CPU priority: %s", error)


def on_own_thread(work: Callable[[], T]) -> T:
    """`work()` on a new thread, which ends when it is done (taking its OpenMP team with it: see
    the module's docstring); the caller waits for its result or exception."""
    done: concurrent.futures.Future = concurrent.futures.Future()
    thread = threading.Thread(target=_do, args=([(work, done)],), name="model-loader", daemon=True)
    thread.start()
    thread.join()
    return done.result()


def _left_padded(prefixes: list[list[tuple[Any, Any]] | None], length: int) -> list[tuple[Any, Any]]:
    """Per layer, the rows' cached prefix keys and values left-padded to `length` (all padding for a
    row without a prefix): a prefill's past, which the mask hides where it is padding."""
    import torch

    layers = next(kv for kv in prefixes if kv)
    batched = []
    for index, (keys, values) in enumerate(layers):
        empty = keys.new_zeros((1, keys.shape[1], length, keys.shape[3])), values.new_zeros(
            (1, values.shape[1], length, values.shape[3]))
        rows = [(_pad_left(kv[index][0], length, dim=2), _pad_left(kv[index][1], length, dim=2)) if kv else empty
                for kv in prefixes]
        batched.append((torch.cat([k for k, _ in rows]), torch.cat([v for _, v in rows])))
    return batched


def _pad_left(tensor: torch.Tensor, length: int, *, dim: int) -> torch.Tensor:
    import torch

    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)
