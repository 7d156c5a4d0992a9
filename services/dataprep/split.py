"""Train / validation split: seeded, stratified by label, never empty on either side by accident.

`choose_validation` returns the positions of the validation examples (train is every other
position, so no example can be on both sides). Its size:

    total = round_half_up(fraction * n)                       (2.5 -> 3, not Python's banker's 2)
    total = max(total, min_validation, labels_with_2_or_more)  when fraction > 0 and n >= 2
    total = min(total, n - 1)                                  at least one training example

Every label with two or more examples gets at least one validation example *and* keeps at least
one training example (unless the total leaves no other way), which can make the validation set larger than `fraction` when there are
many small classes (a class missing from validation cannot be evaluated, one missing from train
cannot be learned). A label with a single example stays in train unless nothing else can fill the
quota. Examples without a label (None) form one more stratum, with no minimum of its own. The
rest of the quota is shared between labels in proportion to their size (largest remainder), and
the examples of each label are drawn with `random.Random(seed)`.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence

from services.shared.errors import InvalidArgument


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def validation_size(labels: Sequence[str | None], fraction: float, min_validation: int = 1) -> int:
    """How many examples `choose_validation` puts in validation (see the module docstring)."""
    _check(fraction, min_validation)
    n = len(labels)
    if fraction == 0 or n < 2:
        return 0
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    per_label_minimum = sum(1 for c in counts.values() if c >= 2)
    return min(max(_round_half_up(fraction * n), min_validation, per_label_minimum), n - 1)


def _check(fraction: float, min_validation: int) -> None:
    if not 0 <= fraction < 1:  # also rejects NaN
        raise InvalidArgument(
            f"validation_fraction must be at least 0 and less than 1, got {fraction}",
            param="validation_fraction",
        )
    if min_validation < 0:
        raise InvalidArgument(
            f"min_validation must not be negative, got {min_validation}", param="min_validation"
        )


def _allocate(sizes: list[int], floors: list[int], caps: list[int], total: int) -> list[int]:
    """Largest-remainder shares of `total` proportional to `sizes`, each within [floor, cap]."""
    n = sum(sizes)
    ideal = [total * s / n for s in sizes]
    quota = [min(cap, max(lo, math.floor(x))) for x, lo, cap in zip(ideal, floors, caps, strict=True)]
    assigned = sum(quota)
    if assigned > total:  # the floors pushed it over: take back from the most over-served
        heap = [(ideal[i] - q, i) for i, q in enumerate(quota) if q > floors[i]]
        heapq.heapify(heap)
        while assigned > total and heap:
            _, i = heapq.heappop(heap)
            quota[i] -= 1
            assigned -= 1
            if quota[i] > floors[i]:
                heapq.heappush(heap, (ideal[i] - quota[i], i))
    elif assigned < total:  # hand out the rest by largest remainder
        heap = [(quota[i] - ideal[i], i) for i, q in enumerate(quota) if q < caps[i]]
        heapq.heapify(heap)
        while assigned < total and heap:
            _, i = heapq.heappop(heap)
            quota[i] += 1
            assigned += 1
            if quota[i] < caps[i]:
                heapq.heappush(heap, (quota[i] - ideal[i], i))
    return quota


def choose_validation(
    labels: Sequence[str | None], fraction: float = 0.1, seed: int = 0, min_validation: int = 1
) -> set[int]:
    """Positions (0-based, into `labels`) of the validation examples; the same for the same seed.

    `labels` has one entry per example: its class label, or None. With no labels at all this is a
    plain seeded random sample. fraction == 0 gives an empty set; fraction < 0 or >= 1 raises
    InvalidArgument(param="validation_fraction").
    """
    total = validation_size(labels, fraction, min_validation)
    if total == 0:
        return set()
    groups: dict[str | None, list[int]] = {}
    for position, label in enumerate(labels):
        groups.setdefault(label, []).append(position)
    # A fixed order (unlabelled first, then by label) so the result does not depend on dict order.
    keys = sorted(groups, key=lambda k: (k is not None, k or ""))
    members = [groups[k] for k in keys]
    sizes = [len(m) for m in members]
    floors = [1 if k is not None and s >= 2 else 0 for k, s in zip(keys, sizes, strict=True)]
    caps = [s - 1 if s >= 2 else 0 for s in sizes]
    quota = _allocate(sizes, floors, caps, total)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for group, q in zip(members, quota, strict=True):
        chosen.update(rng.sample(group, q))
    if len(chosen) < total:  # the caps left the quota short (e.g. every label is a singleton)
        # Single examples first, so labels with 2+ examples keep one in train whenever possible.
        singles = [g[0] for g in members if len(g) == 1]
        chosen.update(rng.sample(singles, min(len(singles), total - len(chosen))))
        if len(chosen) < total:
            rest = [p for p in range(len(labels)) if p not in chosen]
            chosen.update(rng.sample(rest, total - len(chosen)))
    return chosen


def infer_labels(
    examples_outputs: Sequence[str], max_classes: int = 20, max_words: int = 4
) -> list[str | None] | None:
    """The outputs as class labels when the data looks like classification, else None.

    Classification-style means few distinct outputs for the number of examples (at most
    max(2, min(max_classes, n // 5))) and every output at most `max_words` words. Labels are the
    outputs with surrounding whitespace stripped; case is kept ("Yes" and "yes" train differently).
    """
    n = len(examples_outputs)
    if n == 0:
        return None
    labels = [output.strip() for output in examples_outputs]
    if any(len(label.split()) > max_words for label in labels):
        return None
    if len(set(labels)) > max(2, min(max_classes, n // 5)):
        return None
    return list(labels)
