import pytest

from services.evaluation.metrics import exact_match, normalize_answer, score_pairs, token_f1
from services.shared.errors import InvalidArgument


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
    scores = score_pairs([("Paris", "paris"), ("Lyon", "Paris")], [])
    assert scores == {"exact_match": 0.5, "token_f1": 0.5}
    with pytest.raises(InvalidArgument) as error:
        score_pairs([("a", "a")], ["bleu2"])
    assert error.value.param == "metrics"
    with pytest.raises(InvalidArgument):
        score_pairs([], [])
