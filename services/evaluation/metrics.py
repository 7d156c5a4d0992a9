"""Metrics over (prediction, reference) pairs, with bootstrap confidence intervals.

Every metric is in [0, 1], higher is better:

- `exact_match` and `token_f1`: the SQuAD v1.1 evaluation script's definitions (lower-case, strip
  punctuation and English articles, collapse whitespace), which is what "normalised exact match"
  means to most readers of an evaluation report. They are a few lines, so they are written here
  rather than pulling in `evaluate` and its hub downloads.
- `bleu`: sacrebleu's corpus BLEU (13a tokenisation, as sacrebleu reports it), divided by 100.
  Per example: sacrebleu's sentence BLEU (effective order).
- `rouge1`, `rouge2`, `rougeL`: rouge-score's F-measure with the Porter stemmer, averaged over
  the examples (as the Hugging Face `evaluate` wrapper does). rouge-score's tokenizer keeps ASCII
  letters and digits only: text in other scripts scores 0.
- `accuracy` and `macro_f1`: for outputs that are labels (a class name per answer), compared
  after the same normalisation as exact match. Macro F1 averages the F1 of every label seen in
  the references or the predictions, as scikit-learn's `f1_score(average="macro")` does (the
  tests check it against scikit-learn, which is not a dependency of the service: 40 MB of
  scipy for two counts).

A metric is computed from one row of statistics per example (a score, BLEU's n-gram counts, a
label pair), so a bootstrap resample is a choice of rows: that is how sacrebleu's own paired
bootstrap resamples corpus BLEU, and it is what `bootstrap_interval` does for every metric.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from services.shared.errors import InvalidArgument

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

TEXT_METRICS = ("exact_match", "token_f1", "bleu", "rouge1", "rouge2", "rougeL")
LABEL_METRICS = ("accuracy", "macro_f1")
METRICS = (*TEXT_METRICS, *LABEL_METRICS)


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


@dataclass(frozen=True)
class Scored:
    """One metric over a set of examples: its value, each example's score, and a 95% interval."""

    value: float
    per_example: tuple[float, ...]
    low: float
    high: float


def check_metric_names(names: Sequence[str]) -> list[str]:
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise InvalidArgument(f"unknown metric {unknown[0]!r}; known: {', '.join(METRICS)}", param="metrics")
    return list(names)


def score_pairs(pairs: Sequence[tuple[str, str]], metric_names: Sequence[str]) -> dict[str, float]:
    """Each metric over the pairs (all text metrics when none is named)."""
    if not pairs:
        raise InvalidArgument("pairs is empty: nothing to score", param="pairs")
    names = check_metric_names(metric_names) or list(TEXT_METRICS)
    predictions, references = [p for p, _ in pairs], [r for _, r in pairs]
    return {name: _value(name, _rows(name, predictions, references)) for name in names}


def score(name: str, predictions: Sequence[str], references: Sequence[str], *, resamples: int = 1000,
          seed: int = 0) -> Scored:
    """`name` over the examples, with each example's score and a bootstrap 95% interval."""
    if len(predictions) != len(references) or not predictions:
        raise InvalidArgument("predictions and references must be non-empty and of the same length",
                              param="predictions")
    rows = _rows(name, predictions, references)
    low, high = bootstrap_interval(name, rows, resamples=resamples, seed=seed)
    return Scored(_value(name, rows), tuple(_per_example(name, predictions, references, rows)), low, high)


def bootstrap_interval(name: str, rows: np.ndarray, *, resamples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of `name` over `rows` (one per example)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(rows), size=(resamples, len(rows)))
    values = np.array([_value(name, rows[pick]) for pick in picks])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(name: str, baseline: Sequence[str], candidate: Sequence[str], references: Sequence[str], *,
                      resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """(candidate - baseline, interval low, interval high) on the same resampled examples: the
    paired bootstrap of Koehn (2004), as sacrebleu's `--paired-bs` runs it."""
    base_rows, candidate_rows = _rows(name, baseline, references), _rows(name, candidate, references)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(references), size=(resamples, len(references)))
    deltas = np.array([_value(name, candidate_rows[pick]) - _value(name, base_rows[pick]) for pick in picks])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return _value(name, candidate_rows) - _value(name, base_rows), float(low), float(high)


# ---- the rows each metric is computed from ----------------------------------------------------

def _rows(name: str, predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    if name == "exact_match":
        return np.array([[exact_match(p, r)] for p, r in zip(predictions, references, strict=True)])
    if name == "token_f1":
        return np.array([[token_f1(p, r)] for p, r in zip(predictions, references, strict=True)])
    if name == "bleu":
        return np.array(_bleu()._extract_corpus_statistics(list(predictions), [list(references)]), dtype=float)
    if name in ("rouge1", "rouge2", "rougeL"):
        scorer = _rouge()
        return np.array([[scorer.score(r, p)[name].fmeasure] for p, r in zip(predictions, references, strict=True)])
    if name in LABEL_METRICS:
        codes: dict[str, int] = {}
        return np.array([[codes.setdefault(normalize_answer(p), len(codes)),
                          codes.setdefault(normalize_answer(r), len(codes))]
                         for p, r in zip(predictions, references, strict=True)])
    check_metric_names([name])
    raise AssertionError(name)


def _value(name: str, rows: np.ndarray) -> float:
    if name == "bleu":
        return float(_bleu()._compute_score_from_stats(rows.sum(axis=0).tolist()).score) / 100
    if name == "accuracy":
        return float(np.mean(rows[:, 0] == rows[:, 1]))
    if name == "macro_f1":
        return _macro_f1(rows[:, 0], rows[:, 1])
    return float(rows[:, 0].mean())


def _per_example(name: str, predictions: Sequence[str], references: Sequence[str], rows: np.ndarray) -> list[float]:
    if name == "bleu":
        sentence = _sentence_bleu()
        return [sentence.sentence_score(p, [r]).score / 100 for p, r in zip(predictions, references, strict=True)]
    if name in LABEL_METRICS:
        return [float(predicted == expected) for predicted, expected in rows]
    return rows[:, 0].tolist()


def _macro_f1(predicted: np.ndarray, expected: np.ndarray) -> float:
    scores = []
    for label in np.union1d(predicted, expected):
        true_positive = np.sum((predicted == label) & (expected == label))
        false_positive = np.sum((predicted == label) & (expected != label))
        false_negative = np.sum((predicted != label) & (expected == label))
        denominator = 2 * true_positive + false_positive + false_negative
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores))


@cache
def _bleu():
    from sacrebleu.metrics import BLEU

    return BLEU()


@cache
def _sentence_bleu():
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True)


@cache
def _rouge():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
