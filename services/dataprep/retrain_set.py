"""What a retraining set holds: this round's corrections, the thumbs-up answers, and a replay sample
of the data the parent model was trained on, as chat JSONL ready for the preparation pipeline.

Corrections are marked `"corrected": true`, so evaluation can measure how many the candidate fixes.
Prompts are compared as the pipeline compares them (normalised, then folded): among corrections of
one prompt the newest wins, and a correction replaces any thumbs-up answer or replayed example of
the same prompt, so the set never teaches two answers to one question.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.dataprep.dedup import fold
from services.dataprep.examples import Example, example_from_record
from services.dataprep.normalize import normalize_example
from services.dataprep.validation import TokenCounter, iter_validated

CORRECTION, POSITIVE = "correction", "positive"
# Superseded corrections listed by feedback id in the report; the count is always exact.
MAX_LISTED = 100


@dataclass(frozen=True)
class FeedbackExample:
    """One example of a retrain batch as the feedback service gives it."""

    feedback_id: str
    kind: str  # CORRECTION (answer: the corrected answer) or POSITIVE (answer: a thumbs-up answer)
    prompt: tuple[dict[str, str], ...]
    answer: str

    def to_example(self) -> Example:
        messages = (*self.prompt, {"role": "assistant", "content": self.answer})
        return Example(line=0, messages=messages, corrected=True if self.kind == CORRECTION else None)


@dataclass(frozen=True)
class RetrainSet:
    lines: list[str]
    summary: dict


def prompt_key(example: Example) -> str:
    return fold(normalize_example(example).prompt_text())


def compose(
    batch: Sequence[FeedbackExample], replay: Iterable[bytes | str], *, replay_ratio: float, seed: int
) -> RetrainSet:
    """The set's lines: corrections, then positives, then replay. `batch` is oldest first; `replay`
    is the parent's training split (our own JSONL); its sample is drawn with `seed`."""
    corrections: dict[str, FeedbackExample] = {}
    superseded: list[str] = []
    for item in batch:
        if item.kind == CORRECTION:
            key = prompt_key(item.to_example())
            if key in corrections:
                superseded.append(corrections.pop(key).feedback_id)
            corrections[key] = item
    positives = [item for item in batch if item.kind == POSITIVE]
    kept_positives = [item for item in positives if prompt_key(item.to_example()) not in corrections]
    wanted = round(replay_ratio * len(corrections))
    sample, available, replaced = _replay_sample(replay, set(corrections), wanted, seed)
    lines = [item.to_example().to_json() for item in (*corrections.values(), *kept_positives)] + sample
    summary = {
        "corrections": len(corrections),
        "superseded_corrections": len(superseded),
        "superseded": superseded[:MAX_LISTED],
        "positives": len(kept_positives),
        "positives_replaced_by_corrections": len(positives) - len(kept_positives),
        "replay": len(sample),
        "replay_available": available,
        "replay_replaced_by_corrections": replaced,
        "replay_ratio": replay_ratio,
        "ignored_examples": len(batch) - sum(1 for item in batch if item.kind in (CORRECTION, POSITIVE)),
    }
    return RetrainSet(lines=lines, summary=summary)


def _replay_sample(
    lines: Iterable[bytes | str], correction_keys: set[str], wanted: int, seed: int
) -> tuple[list[str], int, int]:
    """(a seeded sample of `wanted` chat lines, in file order; how many could be drawn; how many
    were left out because a correction has their prompt). One pass, memory for the sample only."""
    rng = random.Random(seed)
    reservoir: list[tuple[int, str]] = []
    available = replaced = 0
    for index, line in enumerate(lines):
        record = json.loads(line)
        if "messages" not in record:
            continue  # a preference pair (a DPO parent): this set is chat
        if prompt_key(example_from_record(record, index)) in correction_keys:
            replaced += 1
            continue
        # An earlier round's correction is plain replay now: the fix rate counts this round's only.
        record.pop("corrected", None)
        text = json.dumps(record, ensure_ascii=False, sort_keys=True)
        available += 1
        if len(reservoir) < wanted:
            reservoir.append((index, text))
        else:
            slot = rng.randrange(available)
            if slot < wanted:
                reservoir[slot] = (index, text)
    return [text for _, text in sorted(reservoir)], available, replaced


def keep_valid(lines: list[str], counter: TokenCounter) -> tuple[list[str], list[dict]]:
    """The lines the pipeline will accept, and the problems of the others.

    The set is prepared like any file, where one invalid line fails the whole dataset; one overlong
    correction must not hold back a whole round, so it is left out here and listed in the report.
    """
    content = "".join(line + "\n" for line in lines).encode()
    kept, problems = [], []
    for line, result in zip(lines, iter_validated([content], "chat", counter), strict=True):
        if isinstance(result, Example):
            kept.append(line)
        else:
            problems.extend({"field": error.field, "code": error.code, "message": error.message} for error in result)
    return kept, problems
