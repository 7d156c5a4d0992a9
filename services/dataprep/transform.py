"""Pass 1's per-example work, run in this process for small files and in worker processes for large ones.

Each valid example is normalised, anonymised, given its exact-duplicate digest and the MinHash
signature near-duplicate detection reads. All of it depends on the example alone, so examples are
cut into batches that can be transformed anywhere; `transform_batches` hands them back in file
order, and the steps that need every earlier example (the duplicate indexes, conflicts, the split)
run after it, in the pipeline's own process. A dataset is therefore the same bytes whichever way
it was made, which a test checks.

Why processes: PII detection is pure-Python regex and phone-number parsing (~300 us per example
without NER, ~15 ms with it), so threads would share one core through the GIL. The pool uses the
`spawn` start method (forking a process that runs gRPC and asyncio threads is unsafe), is started
on the first file large enough to need it, and is then kept for the life of the process: a worker
costs ~3 s and ~220 MiB to start (Presidio and spaCy), and small files never pay it.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import sys
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from services.dataprep.dedup import MinHasher, record_digest
from services.dataprep.examples import Example
from services.dataprep.normalize import normalize_example
from services.shared.children import die_with_parent
from services.shared.errors import Unavailable

# Examples per batch handed to a worker: large enough that sending it costs little next to the work.
BATCH_EXAMPLES = 256
# Batches transformed here before the workers are used: files this small never start them.
INLINE_BATCHES = 4
# Batches in flight per worker: enough to keep every worker busy while the pipeline reads the
# results, few enough that memory stays bounded.
BATCHES_IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class TransformSpec:
    """What the per-example work depends on (hashable: each process keeps one transformer per spec)."""

    anonymize: bool
    pii_entities: tuple[str, ...] = ()
    pii_placeholders: tuple[tuple[str, str], ...] = ()
    use_ner: bool = False
    shingle_size: int = 2
    num_perm: int = 128
    seed: int = 1


@dataclass(frozen=True)
class Transformed:
    example: Example  # normalised and anonymised
    digest: bytes  # equal for exact duplicates (see dedup.record_digest)
    signature: np.ndarray  # MinHash values of near_duplicate_text(example)
    pii: Counter[str]  # findings per entity type (empty: none)
    before: list[str] | None  # the texts before anonymisation, when something was found


def near_duplicate_text(example: Example) -> str:
    """What near-duplicate detection compares: the conversation without its system prompt, which is
    usually the same boilerplate in every example and would make every pair look alike."""
    texts = [m["content"] for m in example.messages if m["role"] != "system"]
    if example.kind == "preference":
        texts += [example.preferred or "", example.rejected or ""]
    return "\n".join(texts)


class Transformer:
    """The per-example work for one spec; `anonymizer` is a built `PiiAnonymizer` (or None)."""

    def __init__(self, spec: TransformSpec, anonymizer=None):
        if spec.anonymize and anonymizer is None:
            raise ValueError("an anonymizing spec needs an anonymizer")
        self.spec = spec
        self._anonymizer = anonymizer if spec.anonymize else None
        self._hasher = MinHasher(spec.shingle_size, spec.num_perm, spec.seed)

    def __call__(self, examples: list[Example]) -> list[Transformed]:
        done: list[tuple[Example, Counter[str], list[str] | None]] = []
        for example in examples:
            example = normalize_example(example)
            found: Counter[str] = Counter()
            before = None
            if self._anonymizer is not None:
                anonymized, found = self._anonymizer.anonymize_example(example)
                if found:
                    before = example.texts()
                example = anonymized
            done.append((example, found, before))
        signatures = self._hasher.signatures([near_duplicate_text(example) for example, _, _ in done])
        return [
            Transformed(example, record_digest(example), signature, found, before)
            for (example, found, before), signature in zip(done, signatures, strict=True)
        ]


# ------------------------------------------------------------------------------ worker processes

_worker_transformers: dict[TransformSpec, Transformer] = {}


def _start_worker() -> None:
    die_with_parent()
    # Workers only tokenize text: no nested thread pools fighting the other workers for cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # spaCy's thinc imports torch and Presidio imports transformers when they are installed (they
    # are, for training), which costs a worker ~5 s and ~300 MiB; nothing here runs their models,
    # and both libraries work without them (an entry of None makes the import raise ImportError,
    # which they expect when the package is absent).
    for package in ("torch", "transformers"):
        sys.modules.setdefault(package, None)


def _transform_in_worker(spec: TransformSpec, examples: list[Example]) -> list[Transformed]:
    transformer = _worker_transformers.get(spec)
    if transformer is None:
        anonymizer = None
        if spec.anonymize:
            from services.dataprep.pii import PiiAnonymizer  # heavy: Presidio and spaCy

            anonymizer = PiiAnonymizer(
                spec.pii_entities or None, dict(spec.pii_placeholders) or None, use_ner=spec.use_ner
            )
        transformer = _worker_transformers[spec] = Transformer(spec, anonymizer)
    return transformer(examples)


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

    def map(self, spec: TransformSpec, batches: Iterator[list[Example]]) -> Iterator[list[Transformed]]:
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
    batches: Iterable[list[Example]], transformer: Transformer, pool: TransformPool | None
) -> Iterator[list[Transformed]]:
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
