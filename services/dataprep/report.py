"""The dataset report: what each step kept, tokens and cost, label balance, readiness advice, review sample.

Everything here is a pure function or a dataclass; `Report.to_dict()` is the JSON stored with the
dataset and returned by the API (a google.protobuf.Struct, so only dicts, lists, str, numbers,
bools and None).

Advice levels: "error" means "do not fine-tune on this yet" (the dataset is still produced, so a
person can look at it and the report), "warning" means "you can, but fix this first if you can",
"info" is a plain observation. Fewer than 50 training examples is an error ("not_enough_data"):
OpenAI accepts 10 but recommends 50-100 as the minimum where fine-tuning starts to beat prompting,
and below that few-shot prompting or retrieval (RAG) is the better tool.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, TextIO

from services.dataprep.dedup import Conflict
from services.dataprep.examples import Example
from services.shared.errors import InvalidArgument

AdviceLevel = Literal["error", "warning", "info"]

REVIEW_COLUMNS = ("line", "prompt", "answer", "label", "rating", "correction", "notes")
EXPERT_COLUMNS = ("rating", "correction", "notes")

# OpenAI's fine-tuning guide: 10 examples at the very least, 50-100 to see a clear improvement.
MIN_EXAMPLES_ERROR = 50
MIN_EXAMPLES_WARNING = 100


@dataclass
class StepCounts:
    """Examples into and out of each step, in the order the steps ran."""

    steps: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, step: str, n_in: int, n_out: int) -> StepCounts:
        self.steps[step] = (n_in, n_out)
        return self

    def to_list(self) -> list[dict]:
        return [{"step": step, "in": n_in, "out": n_out} for step, (n_in, n_out) in self.steps.items()]


@dataclass(frozen=True)
class TokenTotals:
    train: int
    validation: int
    max_example: int
    context_limit: int | None = None

    def to_dict(self) -> dict:
        return {
            "train": self.train,
            "validation": self.validation,
            "max_example": self.max_example,
            "context_limit": self.context_limit,
        }


@dataclass(frozen=True)
class CostEstimate:
    n_epochs: int
    epochs_source: Literal["given", "recommended"]
    price_per_1k_tokens: float
    training_tokens: int  # tokens seen in training: train tokens x epochs
    estimated_cost: float

    def to_dict(self) -> dict:
        return {
            "n_epochs": self.n_epochs,
            "epochs_source": self.epochs_source,
            "price_per_1k_tokens": self.price_per_1k_tokens,
            "training_tokens": self.training_tokens,
            "estimated_cost": round(self.estimated_cost, 6),
        }


@dataclass(frozen=True)
class Advice:
    level: AdviceLevel
    code: str
    message: str

    def to_dict(self) -> dict:
        return {"level": self.level, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class DuplicateSummary:
    exact: int
    near: int
    rate: float  # (exact + near) / valid examples
    near_duplicate_threshold: float
    exact_examples: list[dict] = field(default_factory=list)  # {"line", "duplicate_of"}, capped by the caller
    near_examples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "exact": self.exact,
            "near": self.near,
            "rate": round(self.rate, 6),
            "near_duplicate_threshold": self.near_duplicate_threshold,
            "exact_examples": [dict(e) for e in self.exact_examples],
            "near_examples": [dict(e) for e in self.near_examples],
        }


@dataclass(frozen=True)
class SplitSummary:
    train: int
    validation: int
    validation_fraction: float
    seed: int
    stratified_by: str | None = None  # "label", "inferred label" or None

    def to_dict(self) -> dict:
        return {
            "train": self.train,
            "validation": self.validation,
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
            "stratified_by": self.stratified_by,
        }


@dataclass
class Report:
    format: str
    lines: int
    steps: StepCounts
    split: SplitSummary
    tokens: TokenTotals
    cost: CostEstimate
    duplicates: DuplicateSummary
    advice: list[Advice]
    conflicts: list[Conflict] = field(default_factory=list)
    label_source: Literal["explicit", "inferred"] | None = None
    label_counts: dict[str, int] | None = None
    invalid: dict = field(default_factory=dict)  # built by the validation step
    pii: dict = field(default_factory=dict)  # built by the PII step
    review_sample_size: int = 0

    def to_dict(self) -> dict:
        labels = None
        if self.label_counts is not None:
            labels = {"source": self.label_source, "balance": dict(self.label_counts)}
        # A JSON round trip turns tuples into lists and fails loudly on anything the API cannot store.
        return json.loads(
            json.dumps(
                {
                    "format": self.format,
                    "lines": self.lines,
                    "steps": self.steps.to_list(),
                    "invalid": self.invalid,
                    "duplicates": self.duplicates.to_dict(),
                    "conflicts": [c.to_dict() for c in self.conflicts],
                    "pii": self.pii,
                    "split": self.split.to_dict(),
                    "labels": labels,
                    "tokens": self.tokens.to_dict(),
                    "cost": self.cost.to_dict(),
                    "advice": [a.to_dict() for a in self.advice],
                    "review_sample_size": self.review_sample_size,
                },
                allow_nan=False,
            )
        )


def estimate_cost(training_tokens: int, n_epochs: int, price_per_1k_tokens: float) -> float:
    """Price of training on `training_tokens` per epoch for `n_epochs` (0 when the price is 0)."""
    if training_tokens < 0:
        raise InvalidArgument(
            f"training_tokens must not be negative, got {training_tokens}", param="training_tokens"
        )
    if n_epochs < 0:
        raise InvalidArgument(f"n_epochs must not be negative, got {n_epochs}", param="n_epochs")
    if not price_per_1k_tokens >= 0:  # also rejects NaN
        raise InvalidArgument(
            f"price_per_1k_tokens must not be negative, got {price_per_1k_tokens}",
            param="price_per_1k_tokens",
        )
    return training_tokens * n_epochs / 1000 * price_per_1k_tokens


def recommended_epochs(
    n_examples: int,
    target_epochs: int = 3,
    min_example_epochs: int = 100,
    max_example_epochs: int = 25000,
    min_epochs: int = 1,
    max_epochs: int = 25,
) -> int:
    """OpenAI's default epoch count for a dataset of `n_examples`, as its cookbook computes it.

    Aim for `target_epochs`, but for at least `min_example_epochs` and at most
    `max_example_epochs` example-passes in total. The cookbook divides with `//` (floor), so
    30 examples give 100 // 30 = 3 epochs, not ceil(100 / 30) = 4.
    """
    if n_examples < 1:
        raise InvalidArgument(f"n_examples must be at least 1, got {n_examples}", param="n_examples")
    if n_examples * target_epochs < min_example_epochs:
        return min(max_epochs, min_example_epochs // n_examples)
    if n_examples * target_epochs > max_example_epochs:
        return max(min_epochs, max_example_epochs // n_examples)
    return target_epochs


def cost_estimate(
    train_tokens: int, n_train: int, price_per_1k_tokens: float, n_epochs: int | None = None
) -> CostEstimate:
    """The cost section: the given epochs, or OpenAI's recommended ones for `n_train` examples."""
    epochs = n_epochs if n_epochs else recommended_epochs(max(n_train, 1))
    return CostEstimate(
        n_epochs=epochs,
        epochs_source="given" if n_epochs else "recommended",
        price_per_1k_tokens=price_per_1k_tokens,
        training_tokens=train_tokens * epochs,
        estimated_cost=estimate_cost(train_tokens, epochs, price_per_1k_tokens),
    )


def label_balance(labels: Iterable[str | None]) -> dict[str, int]:
    """Examples per label, most frequent first (ties by label); unlabelled examples are not counted."""
    counts = Counter(label for label in labels if label is not None)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def readiness_advice(
    n_train: int,
    n_validation: int,
    duplicate_rate: float,
    label_counts: dict[str, int] | None,
    dominant_share: float = 0.6,
    duplicate_warn: float = 0.2,
) -> list[Advice]:
    """What a person should know before fine-tuning on this dataset, errors first."""
    advice: list[Advice] = []
    if n_train < MIN_EXAMPLES_ERROR:
        advice.append(
            Advice(
                "error",
                "not_enough_data",
                f"only {n_train} training examples: fine-tuning needs at least {MIN_EXAMPLES_ERROR} "
                f"(OpenAI accepts 10 and recommends 50-100 to start); with this little data prefer "
                "few-shot prompting or retrieval (RAG), or collect more examples",
            )
        )
    elif n_train < MIN_EXAMPLES_WARNING:
        advice.append(
            Advice(
                "warning",
                "few_examples",
                f"{n_train} training examples is at the low end of the 50-100 recommended minimum; "
                "expect a clear improvement only with more (quality beats quantity, so review them)",
            )
        )
    if n_validation == 0:
        advice.append(
            Advice(
                "warning",
                "no_validation_set",
                "no validation examples: overfitting cannot be seen during training and the model "
                "cannot be compared with the base model; set validation_fraction above 0",
            )
        )
    if label_counts:
        total = sum(label_counts.values())
        label, count = max(label_counts.items(), key=lambda item: (item[1], item[0]))
        share = count / total if total else 0.0
        if share > dominant_share:
            advice.append(
                Advice(
                    "warning",
                    "dominant_label",
                    f"label {label!r} is {share:.0%} of the labelled examples ({count} of {total}): "
                    f"the model may learn to answer {label!r} regardless; add examples of the other labels",
                )
            )
    if duplicate_rate > duplicate_warn:
        advice.append(
            Advice(
                "warning",
                "high_duplicate_rate",
                f"{duplicate_rate:.0%} of the valid examples were exact or near-duplicates (dropped): "
                "check how the data was collected; repeated examples over-weight a few cases",
            )
        )
    return advice


def sample_indices(n: int, size: int = 50, seed: int = 0) -> list[int]:
    """`size` distinct positions in range(n) (all of them if n <= size), sorted, the same for a seed."""
    if n < 0:
        raise InvalidArgument(f"n must not be negative, got {n}", param="n")
    if size < 0:
        raise InvalidArgument(
            f"review sample size must not be negative, got {size}", param="review_sample_size"
        )
    return sorted(random.Random(seed).sample(range(n), min(size, n)))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    # Spreadsheets run a cell that starts with = + - @ as a formula (CSV injection, OWASP); the
    # experts open this file in one, so such cells get a leading apostrophe, shown as text.
    return "'" + value if value.startswith(_FORMULA_START) else value


def _review_row(ex: Example) -> dict[str, str | int]:
    return {"line": ex.line, "prompt": ex.prompt_text(), "answer": ex.output, "label": ex.label or ""}


def write_review_csv(examples: Iterable[Example], out: TextIO) -> None:
    """A CSV for 2-3 domain experts: line, prompt, answer, label, then empty rating / correction / notes.

    Open `out` with newline="" (csv's own rule); rows end with \\r\\n as spreadsheets expect.
    """
    writer = csv.DictWriter(out, fieldnames=REVIEW_COLUMNS)
    writer.writeheader()
    for ex in examples:
        row = _review_row(ex)
        cells = {k: _cell(v) if isinstance(v, str) else v for k, v in row.items()}
        writer.writerow({**cells, **dict.fromkeys(EXPERT_COLUMNS, "")})


def write_review_jsonl(examples: Iterable[Example], out: TextIO) -> None:
    """The same sample as JSON lines, with the full record and null expert fields to fill in."""
    for ex in examples:
        row = {**_review_row(ex), "record": ex.to_record(), **dict.fromkeys(EXPERT_COLUMNS)}
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
