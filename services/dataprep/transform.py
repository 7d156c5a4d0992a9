"""Pass 1's per-record work, run in this process for small files and in worker processes for large ones.

Each record (a raw line of a JSON-lines file, or a record the file's parser read) is parsed and
validated against the base model's context length; each valid example is then normalised,
anonymised, counted in tokens, and given its exact-duplicate digest, its MinHash signature and
what conflict detection keeps. All of it depends on the record alone, so records are cut into
batches that can be transformed anywhere; `transform_batches` hands them back in file order, and
the steps that need every earlier example (the duplicate indexes, conflicts, the split) run after
it, in the pipeline's own process. A dataset is therefore the same bytes whichever way it was
made, which a test checks. What comes back is small (`Prepared`: digests, the spool line, a few
strings; signatures as one array per batch), so sending it costs little next to the work.

Why processes: PII detection is pure-Python regex and phone-number parsing (~350-600 us per example
without NER, ~15 ms with it), so threads would share one core through the GIL. The pool uses the
`spawn` start method (forking a process that runs gRPC and asyncio threads is unsafe), is started
on the first file large enough to need it, and is then kept for the life of the process: a worker
costs ~4 s and ~250 MiB to start (Presidio, spaCy, the tokenizer), and small files never pay it.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from services.dataprep.dedup import ConflictKey, MinHasher, conflict_key, record_digest
from services.dataprep.examples import Example, LineError
from services.dataprep.formats import Record, parse_jsonl_line
from services.dataprep.normalize import normalize_example
from services.dataprep.tokens import TokenCounter, load_token_counter
from services.dataprep.validation import validate_record
from services.shared.children import die_with_parent
from services.shared.errors import Unavailable

# Records per batch handed to a worker: large enough that sending it costs little next to the work.
BATCH_EXAMPLES = 256
# Batches transformed here before the workers are used: files this small never start them.
INLINE_BATCHES = 4
# Batches in flight per worker: enough to keep every worker busy while the pipeline reads the
# results, few enough that memory stays bounded.
BATCHES_IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class TransformSpec:
    """What the per-record work depends on (hashable: each process keeps one transformer per spec)."""

    format: str
    model_path: str  # the base model's directory: its tokenizer, chat template and context length
    anonymize: bool
    pii_entities: tuple[str, ...] = ()
    pii_placeholders: tuple[tuple[str, str], ...] = ()
    use_ner: bool = False
    shingle_size: int = 2
    num_perm: int = 128
    seed: int = 1


class Prepared(NamedTuple):
    """A valid example after the per-example work: what the pipeline's own process needs of it."""

    line: int
    digest: bytes  # equal for exact duplicates (see dedup.record_digest)
    spool: str  # its line in the pipeline's spool file
    label: str | None
    output: str
    conflict: ConflictKey
    pii: dict[str, int]  # findings per entity type (empty: none)
    before: list[str] | None  # the texts before anonymisation, when something was found
    after: list[str] | None  # and after it


@dataclass
class TransformedBatch:
    items: list[Prepared | list[LineError]]  # per record, in file order: the example or its problems
    signatures: np.ndarray  # one row of MinHash values per Prepared item, in order


def near_duplicate_text(example: Example) -> str:
    """What near-duplicate detection compares: the conversation without its system prompt, which is
    usually the same boilerplate in every example and would make every pair look alike."""
    texts = [m["content"] for m in example.messages if m["role"] != "system"]
    if example.kind == "preference":
        texts += [example.preferred or "", example.rejected or ""]
    return "\n".join(texts)


def spool_line(line: int, tokens: int, example: Example) -> str:
    """How the pipeline's spool keeps a kept example: its line, its tokens, its training record."""
    return f"{line} {tokens} {example.to_json()}\n"


def read_spool_line(text: str) -> tuple[int, int, str]:
    """(line, tokens, the example's `to_json`) from a `spool_line`."""
    line, tokens, record = text.rstrip("\n").split(" ", 2)
    return int(line), int(tokens), record


class Transformer:
    """The per-record work for one spec; `counter` counts the base model's tokens, `anonymizer` is a
    built `PiiAnonymizer` (or None)."""

    def __init__(self, spec: TransformSpec, counter: TokenCounter, anonymizer=None):
        if spec.anonymize and anonymizer is None:
            raise ValueError("an anonymizing spec needs an anonymizer")
        self.spec = spec
        self._counter = counter
        self._anonymizer = anonymizer if spec.anonymize else None
        self._hasher = MinHasher(spec.shingle_size, spec.num_perm, spec.seed)

    def _validated(self, units: list) -> list[Example | list[LineError]]:
        validated: list[Example | list[LineError]] = []
        for unit in units:
            record = (
                unit if isinstance(unit, Record | LineError) else parse_jsonl_line(*unit, self.spec.format)
            )
            if record is None:
                continue  # a blank line
            if isinstance(record, LineError):
                validated.append([record])
            else:
                validated.append(validate_record(record.line, record.data, record.format))
        return validated

    def __call__(self, units: list) -> TransformedBatch:
        """`units`: `formats.RawLine`s (of a JSON-lines file of the spec's format), `Record`s and
        `LineError`s, as `formats.iter_units` yields them."""
        validated = self._validated(units)
        examples = [item for item in validated if isinstance(item, Example)]
        checked = iter(self._counter.check_and_count(examples))
        items: list[Example | list[LineError]] = []
        done: list[tuple[Example, int | None, dict[str, int], list[str] | None]] = []
        for item in validated:
            result = next(checked) if isinstance(item, Example) else item
            if isinstance(result, LineError):
                items.append([result])
                continue
            if isinstance(item, list):
                items.append(item)
                continue
            example = normalize_example(item)
            found: dict[str, int] = {}
            before = None
            if self._anonymizer is not None:
                anonymized, found = self._anonymizer.anonymize_example(example)
                if found:
                    before = example.texts()
                example = anonymized
            # The count of the validated example holds unless normalising or anonymising changed it.
            done.append((example, result if example is item else None, found, before))
            items.append(example)
        recount = [example for example, tokens, _, _ in done if tokens is None]
        recounted = iter(self._counter.count_many(recount))  # InvalidArgument if the template now refuses one
        prepared = iter(
            Prepared(
                example.line,
                record_digest(example),
                spool_line(example.line, next(recounted) if tokens is None else tokens, example),
                example.label,
                example.output,
                conflict_key(example),
                dict(found),
                before,
                example.texts() if before is not None else None,
            )
            for example, tokens, found, before in done
        )
        signatures = self._hasher.signatures([near_duplicate_text(example) for example, _, _, _ in done])
        return TransformedBatch([next(prepared) if isinstance(i, Example) else i for i in items], signatures)


# ------------------------------------------------------------------------------ worker processes

_worker_transformers: dict[TransformSpec, Transformer] = {}
_worker_counters: dict[str, TokenCounter] = {}


def _start_worker() -> None:
    die_with_parent()
    # Workers only tokenize text: no nested thread pools fighting the other workers for cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # spaCy's thinc imports torch when it is installed (it is, for training), which costs a worker
    # seconds and hundreds of MiB; nothing here runs a torch model, and thinc works without it (an
    # entry of None makes the import raise ImportError, which it expects when torch is absent).
    # transformers stays: the tokenizer and chat template come from it, and it imports without torch.
    sys.modules.setdefault("torch", None)


def _transform_in_worker(spec: TransformSpec, units: list) -> TransformedBatch:
    transformer = _worker_transformers.get(spec)
    if transformer is None:
        counter = _worker_counters.get(spec.model_path)
        if counter is None:
            counter = _worker_counters[spec.model_path] = load_token_counter(spec.model_path)
        anonymizer = None
        if spec.anonymize:
            from services.dataprep.pii import PiiAnonymizer  # heavy: Presidio and spaCy

            anonymizer = PiiAnonymizer(
                spec.pii_entities or None, dict(spec.pii_placeholders) or None, use_ner=spec.use_ner
            )
        transformer = _worker_transformers[spec] = Transformer(spec, counter, anonymizer)
    return transformer(units)


class TransformPool:
    """Worker processes for `transform_batches`, started on first use and kept until `close`."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self.batches_done = 0  # transformed by workers, since the start

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                )
            return self._executor

    def map(self, spec: TransformSpec, batches: Iterator[list]) -> Iterator[TransformedBatch]:
        """Each batch transformed by a worker, in the order given, with a bounded number in flight."""
        pool = self._pool()
        pending: deque[concurrent.futures.Future] = deque()
        limit = self.workers * BATCHES_IN_FLIGHT_PER_WORKER
        try:
            for batch in batches:
                pending.append(pool.submit(_transform_in_worker, spec, batch))
                if len(pending) >= limit:
                    yield pending.popleft().result()
                    self.batches_done += 1
            while pending:
                yield pending.popleft().result()
                self.batches_done += 1
        except concurrent.futures.process.BrokenProcessPool as error:
            with self._lock:  # the next file starts a fresh pool
                if self._executor is pool:
                    self._executor = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise Unavailable(
                "a data-preparation worker process died (out of memory?); prepare the dataset again"
            ) from error
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def transform_batches(
    batches: Iterable[list], transformer: Transformer, pool: TransformPool | None
) -> Iterator[TransformedBatch]:
    """Every batch transformed, in order: the first INLINE_BATCHES here, the rest by the pool when
    there is one (so a small file never starts it)."""
    batches = iter(batches)
    for batch in itertools.islice(batches, INLINE_BATCHES):
        yield transformer(batch)
    following = next(batches, None)
    if following is None:
        return
    rest = itertools.chain([following], batches)
    if pool is None:
        yield from map(transformer, rest)
    else:
        yield from pool.map(transformer.spec, rest)


def batched(items: Iterable, size: int = BATCH_EXAMPLES) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
