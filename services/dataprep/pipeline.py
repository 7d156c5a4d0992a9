"""The preparation pipeline: raw file bytes in, a clean, anonymised, split dataset and its report out.

Two streaming passes keep memory flat whatever the file size. Pass 1 reads line by line:
parse -> validate -> normalise -> anonymise PII -> count tokens (in batches, here or in worker
processes: see transform.py) -> drop exact duplicates -> drop near-duplicates (MinHash LSH) ->
spool the survivors to a work file, keeping only a label per example in memory. Pass 2 reads
the spool once: the seeded, stratified split decides each example's side, and train, validation
and the review sample are written to the artifact store. Near-duplicates are
removed across the whole file before the split, so no validation example has a near-copy in train.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from services.dataprep.dedup import ConflictDetector, ExactDeduplicator, NearDuplicateIndex
from services.dataprep.examples import LineError, example_from_record
from services.dataprep.formats import detect_format, iter_units
from services.dataprep.options import PrepareConfig
from services.dataprep.report import (
    DuplicateSummary,
    Report,
    SplitSummary,
    StepCounts,
    TokenTotals,
    cost_estimate,
    label_balance,
    readiness_advice,
    sample_indices,
)
from services.dataprep.split import choose_validation, infer_labels
from services.dataprep.tokens import TokenCounter, load_token_counter
from services.dataprep.transform import (
    Prepared,
    Transformer,
    TransformPool,
    TransformSpec,
    batched,
    read_spool_line,
    transform_batches,
)
from services.dataprep.validation import summarize_errors
from services.shared.artifacts import Artifact, ArtifactStore
from services.shared.errors import InvalidArgument, TuneloopError
from services.shared.models import ModelStore
from services.shared.settings import Settings

# Part of every dataset id: bump it when the same input would now be prepared differently.
PIPELINE_VERSION = "2"  # 2: chat examples keep "corrected"
PROGRESS_EVERY_LINES = 1000
MAX_LISTED = 100  # errors, duplicates and conflicts listed in the report (the totals are exact)
PII_SAMPLES = 5
LABEL_MAX_WORDS = 4
LABEL_MAX_CLASSES = 20


class DatasetRejected(InvalidArgument):
    """The file cannot become a dataset; the report says every reason a person must fix."""

    def __init__(self, message: str, report: dict):
        super().__init__(message, param="file_id", code="invalid_training_file")
        self.report = report


class Interrupted(TuneloopError):
    """The service is stopping; the dataset stays queued and is prepared again after the restart."""


@dataclass(frozen=True)
class PreparedDataset:
    format: str
    train: Artifact
    validation: Artifact
    review: Artifact
    train_examples: int
    validation_examples: int
    report: dict


class PipelineResources:
    """Tokenizers and PII engines, built once per process and shared by every dataset (they are slow to build)."""

    def __init__(self, settings: Settings, workers: int = 0):
        """`workers`: processes that transform large files (0: one per CPU core; 1: none, all here)."""
        self._models = ModelStore(settings)
        self._lock = threading.Lock()
        self._counters: dict[str, TokenCounter] = {}
        self._anonymizers: dict[tuple, object] = {}
        self._transformers: dict[TransformSpec, Transformer] = {}
        workers = workers or len(os.sched_getaffinity(0))
        self.pool = TransformPool(workers) if workers > 1 else None

    def token_counter(self, base_model: str) -> TokenCounter:
        with self._lock:
            if base_model not in self._counters:
                self._counters[base_model] = load_token_counter(self._models.ensure(base_model))
            return self._counters[base_model]

    def anonymizer(self, entities: tuple[str, ...], placeholders: dict[str, str], use_ner: bool):
        from services.dataprep.pii import PiiAnonymizer  # heavy: Presidio and spaCy

        key = (entities, tuple(sorted(placeholders.items())), use_ner)
        with self._lock:
            if key not in self._anonymizers:
                self._anonymizers[key] = PiiAnonymizer(
                    entities or None, placeholders or None, use_ner=use_ner
                )
            return self._anonymizers[key]

    def transformer(self, config: PrepareConfig, data_format: str) -> Transformer:
        """Pass 1's per-record work for `config` on a file of `data_format`, in this process (see transform.py)."""
        spec = TransformSpec(
            format=data_format,
            model_path=str(self._models.ensure(config.base_model)),
            anonymize=config.anonymize_pii,
            pii_entities=tuple(config.pii_entities),
            pii_placeholders=tuple(sorted(config.pii_placeholders.items())),
            use_ner=config.pii_detector == "ner",
        )
        counter = self.token_counter(config.base_model)
        anonymizer = (
            self.anonymizer(spec.pii_entities, dict(spec.pii_placeholders), spec.use_ner)
            if spec.anonymize
            else None
        )
        with self._lock:
            if spec not in self._transformers:
                self._transformers[spec] = Transformer(spec, counter, anonymizer)
            return self._transformers[spec]

    def close(self) -> None:
        """Stop the worker processes, if any were started."""
        if self.pool is not None:
            self.pool.close()


def _error_dict(error: LineError) -> dict:
    return {"line": error.line, "field": error.field, "code": error.code, "message": error.message}


class _ShortOutputs:
    """The answers, kept only while they could still be class labels, so memory stays small."""

    def __init__(self, max_words: int = LABEL_MAX_WORDS, max_classes: int = LABEL_MAX_CLASSES):
        self.max_words = max_words
        self.max_classes = max_classes
        self.outputs: list[str] | None = []
        self._distinct: set[str] = set()

    def add(self, output: str) -> None:
        if self.outputs is None:
            return
        self._distinct.add(output)
        if len(output.split()) > self.max_words or len(self._distinct) > self.max_classes:
            self.outputs = None  # free text, not labels: stop keeping them
            self._distinct.clear()
        else:
            self.outputs.append(output)

    def labels(self) -> list[str | None] | None:
        if self.outputs is None:
            return None
        return infer_labels(self.outputs, max_classes=self.max_classes, max_words=self.max_words)


class _FirstPass:
    """Everything pass 1 learns, kept small: totals, capped lists and one label per kept example."""

    def __init__(self, config: PrepareConfig):
        self.config = config
        self.lines = 0
        self.valid = 0
        self.errors: list[LineError] = []
        self.invalid_lines = 0
        self.exact_duplicates: list[dict] = []
        self.exact_total = 0
        self.near_duplicates: list[dict] = []
        self.near_total = 0
        self.pii_counts: Counter[str] = Counter()
        self.pii_samples: list[dict] = []
        self.kept_lines: list[int] = []
        self.labels: list[str | None] = []
        self.outputs = _ShortOutputs()
        self.conflicts = ConflictDetector()


def prepare_dataset(
    chunks: Iterable[bytes],
    config: PrepareConfig,
    *,
    resources: PipelineResources,
    artifacts: ArtifactStore,
    workdir: Path,
    on_progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> PreparedDataset:
    counter = resources.token_counter(config.base_model)
    chunks = iter(chunks)
    first = next(chunks, b"")
    if not first.strip():
        raise DatasetRejected("the file is empty", {"format": config.format or "", "lines": 0})
    data_format = config.format or detect_format(first)
    transformer = resources.transformer(config, data_format)
    spool_path = workdir / "clean.jsonl"
    state = _FirstPass(config)
    with open(spool_path, "w", encoding="utf-8") as spool:
        _first_pass(
            itertools.chain([first], chunks),
            data_format,
            transformer,
            resources.pool,
            state,
            spool,
            on_progress,
            cancel,
        )
    if state.invalid_lines and not config.drop_invalid:
        listed, total = summarize_errors(state.errors, cap=MAX_LISTED)
        report = _rejection_report(data_format, state, listed, total)
        raise DatasetRejected(
            f"the file has {state.invalid_lines} invalid line(s); first: {listed[0]}. Fix them, or prepare "
            "with drop_invalid to keep only the valid lines.",
            report,
        )
    if not state.kept_lines:
        raise DatasetRejected("the file has no usable examples", _rejection_report(data_format, state, [], 0))
    return _second_pass(spool_path, data_format, config, counter.max_tokens, artifacts, state, cancel)


def _first_pass(
    chunks,
    data_format,
    transformer: Transformer,
    pool: TransformPool | None,
    state: _FirstPass,
    spool,
    on_progress,
    cancel,
) -> None:
    """Parse, validate, normalise, anonymise, count and hash in batches (here or in worker processes,
    see transform.py); then, in file order, drop exact and near-duplicates and spool the rest."""
    exact = ExactDeduplicator()
    near = NearDuplicateIndex(
        threshold=state.config.near_duplicate_threshold,
        shingle_size=transformer.spec.shingle_size,
        num_perm=transformer.spec.num_perm,
        seed=transformer.spec.seed,
    )
    for batch in transform_batches(batched(iter_units(chunks, data_format)), transformer, pool):
        unique: list[tuple[Prepared, int]] = []  # with its row in batch.signatures
        rows = itertools.count()
        for item in batch.items:
            row = None if isinstance(item, list) else next(rows)
            state.lines = item[0].line if isinstance(item, list) else item.line
            if state.lines % PROGRESS_EVERY_LINES == 0:
                if on_progress:
                    on_progress(state.lines)
                if cancel is not None and cancel.is_set():
                    raise Interrupted("the service is stopping")
            if isinstance(item, list):
                state.invalid_lines += 1
                state.errors.extend(item)
                continue
            state.valid += 1
            if state.invalid_lines and not state.config.drop_invalid:
                continue  # the file will be rejected: keep reading only to list every error
            if item.pii:
                state.pii_counts.update(item.pii)
                if len(state.pii_samples) < PII_SAMPLES:
                    state.pii_samples.append({"line": item.line, "before": item.before, "after": item.after})
            earlier = exact.first_seen_digest(item.digest, item.line)
            if earlier is not None:
                state.exact_total += 1
                if len(state.exact_duplicates) < MAX_LISTED:
                    state.exact_duplicates.append({"line": item.line, "duplicate_of": earlier})
                continue
            unique.append((item, row))
        if not unique:
            continue
        matches = near.add_or_match_signatures(
            [item.line for item, _ in unique], batch.signatures[[row for _, row in unique]]
        )
        for (item, _), match in zip(unique, matches, strict=True):
            if match is not None:
                state.near_total += 1
                if len(state.near_duplicates) < MAX_LISTED:
                    state.near_duplicates.append({"line": item.line, "duplicate_of": match})
                continue
            state.conflicts.add_key(item.conflict, item.line)
            spool.write(item.spool)
            state.kept_lines.append(item.line)
            state.labels.append(item.label)
            state.outputs.add(item.output)
    if on_progress:
        on_progress(state.lines)


def _second_pass(
    spool_path, data_format, config, max_tokens, artifacts, state: _FirstPass, cancel
) -> PreparedDataset:
    n = len(state.kept_lines)
    explicit = any(label is not None for label in state.labels)
    labels = state.labels if explicit else state.outputs.labels()
    validation = choose_validation(labels or [None] * n, config.validation_fraction, config.seed)
    review_positions = set(sample_indices(n, config.review_sample_size, config.seed))
    tokens = {"train": 0, "validation": 0}
    longest = 0
    reviewed = 0
    train_writer, validation_writer, review_writer = (
        artifacts.writer(),
        artifacts.writer(),
        artifacts.writer(),
    )
    try:
        with open(spool_path, encoding="utf-8") as spool:
            for position, text in enumerate(spool):
                if position % PROGRESS_EVERY_LINES == 0 and cancel is not None and cancel.is_set():
                    raise Interrupted("the service is stopping")
                line, count, record = read_spool_line(text)
                side = "validation" if position in validation else "train"
                (validation_writer if side == "validation" else train_writer).write((record + "\n").encode())
                tokens[side] += count
                longest = max(longest, count)
                if position in review_positions:
                    reviewed += 1
                    example = example_from_record(json.loads(record), line)
                    review_writer.write(
                        (
                            json.dumps({"line": line, "record": example.to_record()}, ensure_ascii=False)
                            + "\n"
                        ).encode()
                    )
        train, validation_artifact, review_artifact = (
            train_writer.commit(),
            validation_writer.commit(),
            review_writer.commit(),
        )
    finally:
        for writer in (train_writer, validation_writer, review_writer):
            writer.abort()
    n_validation = len(validation)
    n_train = n - n_validation
    label_counts = label_balance(labels) if labels else None
    duplicate_rate = (state.exact_total + state.near_total) / max(state.valid, 1)
    report = Report(
        format=data_format,
        lines=state.lines,
        steps=StepCounts()
        .add("read", state.lines, state.valid + state.invalid_lines)
        .add("validate", state.valid + state.invalid_lines, state.valid)
        .add("exact_duplicates", state.valid, state.valid - state.exact_total)
        .add("near_duplicates", state.valid - state.exact_total, n)
        .add("split", n, n),
        invalid=_invalid_section(
            state.errors[:MAX_LISTED], len(state.errors), state.invalid_lines, dropped=True
        ),
        duplicates=DuplicateSummary(
            exact=state.exact_total,
            near=state.near_total,
            rate=duplicate_rate,
            near_duplicate_threshold=config.near_duplicate_threshold,
            exact_examples=state.exact_duplicates,
            near_examples=state.near_duplicates,
        ),
        conflicts=state.conflicts.conflicts()[:MAX_LISTED],
        pii={
            "enabled": config.anonymize_pii,
            "detector": config.pii_detector,
            "replacements": dict(sorted(state.pii_counts.items())),
            "samples": state.pii_samples,
        },
        split=SplitSummary(
            train=n_train,
            validation=n_validation,
            validation_fraction=config.validation_fraction,
            seed=config.seed,
            stratified_by=("label" if explicit else "inferred label") if labels else None,
        ),
        label_source=("explicit" if explicit else "inferred") if labels else None,
        label_counts=label_counts,
        tokens=TokenTotals(tokens["train"], tokens["validation"], longest, max_tokens),
        cost=cost_estimate(tokens["train"], n_train, config.price_per_1k_tokens, config.n_epochs),
        advice=readiness_advice(n_train, n_validation, duplicate_rate, label_counts),
        review_sample_size=reviewed,
    ).to_dict()
    return PreparedDataset(
        format=data_format,
        train=train,
        validation=validation_artifact,
        review=review_artifact,
        train_examples=n_train,
        validation_examples=n_validation,
        report=report,
    )


def _invalid_section(
    listed: list[LineError], total_errors: int, invalid_lines: int, *, dropped: bool
) -> dict:
    return {
        "total_lines": invalid_lines,
        "dropped": invalid_lines if dropped else 0,
        "errors": [_error_dict(e) for e in listed],
        "total_errors": total_errors,
    }


def _rejection_report(data_format: str, state: _FirstPass, listed: list[LineError], total: int) -> dict:
    return {
        "format": data_format,
        "lines": state.lines,
        "invalid": _invalid_section(listed, total, state.invalid_lines, dropped=False),
        "advice": [],
    }
