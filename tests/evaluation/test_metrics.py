import pytest

from services.evaluation.metrics import (
    TEXT_METRICS,
    exact_match,
    normalize_answer,
    paired_difference,
    score,
    score_pairs,
    token_f1,
)
from services.shared.errors import InvalidArgument

PREDICTIONS = ["The cat sat on the mat.", "A quick brown fox jumps over the dog", "Reset it from the settings page",
               "Paris", "nothing in common here at all", "running runners"]
REFERENCES = ["The cat is sitting on the mat.", "The quick brown fox jumped over the lazy dog",
              "You can reset it on the settings page", "Paris", "completely different words", "the runner runs"]


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Paris", "paris"),
        ("  The   Eiffel Tower. ", "eiffel tower"),
        ("An apple, a day!", "apple day"),
        ("theatre", "theatre"),  # an article inside a word stays
        ("", ""),
    ],
)
def test_normalize_answer_follows_squad(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_ignores_case_punctuation_and_articles():
    assert exact_match("The capital is Paris.", "the capital is paris") == 1.0
    assert exact_match("Paris", "Lyon") == 0.0


def test_token_f1_counts_overlap():
    # predicted: [paris, france]; reference: [paris]; precision 1/2, recall 1 -> F1 2/3
    assert token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "Paris") == 0.0


def test_score_pairs_averages_and_rejects_unknown_metrics():
    scores = score_pairs([("Paris", "paris"), ("Lyon", "Paris")], ["exact_match", "token_f1"])
    assert scores == {"exact_match": 0.5, "token_f1": 0.5}
    assert set(score_pairs([("Paris", "paris")], [])) == set(TEXT_METRICS)
    with pytest.raises(InvalidArgument) as error:
        score_pairs([("a", "a")], ["bleu2"])
    assert error.value.param == "metrics"
    with pytest.raises(InvalidArgument):
        score_pairs([], [])


def test_bleu_is_sacrebleus_corpus_bleu_and_sentence_bleu_per_example():
    import sacrebleu

    scored = score("bleu", PREDICTIONS, REFERENCES)
    assert scored.value == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score / 100)
    for mine, prediction, reference in zip(scored.per_example, PREDICTIONS, REFERENCES, strict=True):
        assert mine == pytest.approx(sacrebleu.sentence_bleu(prediction, [reference]).score / 100)
    assert 0 < scored.value < 1


@pytest.mark.parametrize("name", ["rouge1", "rouge2", "rougeL"])
def test_rouge_is_rouge_scores_stemmed_f_measure_averaged(name):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([name], use_stemmer=True)
    expected = [scorer.score(r, p)[name].fmeasure for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    scored = score(name, PREDICTIONS, REFERENCES)
    assert list(scored.per_example) == pytest.approx(expected)
    assert scored.value == pytest.approx(sum(expected) / len(expected))
    if name == "rouge1":  # "running runners" meets "the runner runs" only through the stemmer
        assert scored.per_example[5] > 0
        assert rouge_scorer.RougeScorer([name]).score(REFERENCES[5], PREDICTIONS[5])[name].fmeasure == 0


def test_label_metrics_are_scikit_learns_accuracy_and_macro_f1():
    from sklearn.metrics import accuracy_score, f1_score

    predicted = ["positive", "Negative.", "neutral", "positive", "negative", "positive", "mixed"]
    expected = ["positive", "negative", "positive", "neutral", "negative", "positive", "negative"]
    normalized = ([normalize_answer(p) for p in predicted], [normalize_answer(e) for e in expected])
    assert score("accuracy", predicted, expected).value == pytest.approx(accuracy_score(normalized[1], normalized[0]))
    assert score("macro_f1", predicted, expected).value == pytest.approx(
        f1_score(normalized[1], normalized[0], average="macro", zero_division=0))
    assert score("accuracy", predicted, expected).per_example == (1, 1, 0, 0, 1, 1, 0)


def test_the_bootstrap_interval_holds_the_value_and_narrows_with_more_examples():
    few = score("exact_match", ["a", "b", "c", "x"] * 5, ["a", "b", "c", "d"] * 5, seed=1)
    many = score("exact_match", ["a", "b", "c", "x"] * 100, ["a", "b", "c", "d"] * 100, seed=1)
    assert few.value == many.value == 0.75
    assert few.low <= 0.75 <= few.high and many.low <= 0.75 <= many.high
    assert many.high - many.low < few.high - few.low
    assert score("exact_match", ["a"] * 10, ["a"] * 10) == score("exact_match", ["a"] * 10, ["a"] * 10)
    same = score("bleu", PREDICTIONS, REFERENCES, seed=3)
    assert same.low <= same.value <= same.high


def test_the_paired_bootstrap_separates_a_real_gain_from_noise():
    references = [f"answer {i}" for i in range(60)]
    baseline = [f"answer {i}" if i % 3 == 0 else "no idea" for i in range(60)]
    better = [f"answer {i}" if i % 3 else "no idea" for i in range(60)]  # 40 right instead of 20
    delta, low, high = paired_difference("exact_match", baseline, better, references)
    assert delta == pytest.approx(20 / 60) and 0 < low <= delta <= high
    shuffled = baseline[1:] + baseline[:1]
    delta, low, high = paired_difference("exact_match", baseline, baseline, references)
    assert (delta, low, high) == (0, 0, 0)
    assert paired_difference("exact_match", baseline, shuffled, references)[1] < 0


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(InvalidArgument):
        score("bleu", ["a"], ["a", "b"])
    with pytest.raises(InvalidArgument) as error:
        score("meteor", ["a"], ["a"])
    assert error.value.param == "metrics"
