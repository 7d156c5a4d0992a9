"""Text metrics over (prediction, reference) pairs.

Exact match and token F1 follow the SQuAD v1.1 evaluation script's definitions (lower-case, strip
punctuation and English articles, collapse whitespace), which is what "normalised exact match"
means to most readers of an evaluation report. They are a few lines, so they are written here
rather than pulling in `evaluate` and its hub downloads; BLEU and ROUGE will come from sacrebleu
and rouge-score.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from services.shared.errors import InvalidArgument

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(expected)
    return 2 * precision * recall / (precision + recall)


METRICS: dict[str, Callable[[str, str], float]] = {"exact_match": exact_match, "token_f1": token_f1}


def score_pairs(pairs: Sequence[tuple[str, str]], metric_names: Sequence[str]) -> dict[str, float]:
    """The mean of each metric over the pairs."""
    if not pairs:
        raise InvalidArgument("pairs is empty: nothing to score", param="pairs")
    names = list(metric_names) or list(METRICS)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise InvalidArgument(
            f"unknown metric {unknown[0]!r}; known: {', '.join(METRICS)}", param="metrics"
        )
    return {name: sum(METRICS[name](p, r) for p, r in pairs) / len(pairs) for name in names}
