"""Train / validation split: seeded, stratified, bounded; label inference for classification data."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dataprep.split import choose_validation, infer_labels, validation_size
from services.shared.errors import InvalidArgument


def test_same_seed_same_split_other_seed_other_split():
    labels = [None] * 200
    first = choose_validation(labels, 0.1, seed=42)
    assert first == choose_validation(labels, 0.1, seed=42)
    assert first != choose_validation(labels, 0.1, seed=43)
    assert len(first) == 20
    assert first <= set(range(200))


def test_no_example_in_both_sides():
    labels = ["a", "b"] * 50
    validation = choose_validation(labels, 0.2, seed=1)
    train = set(range(100)) - validation
    assert train & validation == set()
    assert len(train) + len(validation) == 100
    assert len(validation) == 20


def test_stratified_by_label():
    labels = ["neg"] * 90 + ["pos"] * 10
    validation = choose_validation(labels, 0.1, seed=0)
    assert Counter(labels[i] for i in validation) == {"neg": 9, "pos": 1}
    labels = ["a"] * 80 + ["b"] * 15 + ["c"] * 3 + ["d"]
    validation = choose_validation(labels, 0.1, seed=0)
    # Proportional, every label with 2+ examples in validation, the single "d" stays in train.
    assert Counter(labels[i] for i in validation) == {"a": 8, "b": 1, "c": 1}


def test_every_label_gets_validation_and_keeps_train_even_beyond_fraction():
    labels = [f"class{i}" for i in range(30) for _ in range(3)]  # 30 classes of 3
    validation = choose_validation(labels, 0.1, seed=0)
    assert len(validation) == 30  # round(0.1 * 90) = 9 would leave 21 classes out
    assert Counter(labels[i] for i in validation) == dict.fromkeys(set(labels), 1)


def test_unlabelled_examples_are_one_more_stratum():
    labels = ["x"] * 10 + [None] * 90
    validation = choose_validation(labels, 0.1, seed=3)
    assert Counter(labels[i] for i in validation) == {"x": 1, None: 9}


def test_only_singleton_labels_still_fill_the_quota():
    labels = [f"id{i}" for i in range(20)]
    assert len(choose_validation(labels, 0.25, seed=0)) == 5


def test_minimum_one_validation_and_at_least_one_train():
    assert len(choose_validation([None] * 5, 0.05)) == 1  # round(0.25) = 0, raised to 1
    assert len(choose_validation([None] * 5, 0.05, min_validation=0)) == 0
    assert len(choose_validation([None] * 10, 0.05, min_validation=3)) == 3
    assert len(choose_validation([None] * 2, 0.9)) == 1  # never all of them
    assert len(choose_validation(["a", "a"], 0.5)) == 1
    assert choose_validation([None], 0.5) == set()  # one example: it trains
    assert choose_validation([], 0.5) == set()


def test_rounding_is_half_up():
    assert len(choose_validation([None] * 25, 0.1)) == 3  # 2.5 -> 3
    assert len(choose_validation([None] * 15, 0.1)) == 2  # 1.5 -> 2


def test_zero_fraction_gives_no_validation():
    assert choose_validation(["a"] * 10 + ["b"] * 10, 0.0) == set()


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_invalid_fraction(fraction):
    with pytest.raises(InvalidArgument) as err:
        choose_validation([None] * 10, fraction)
    assert err.value.param == "validation_fraction"


@settings(max_examples=200, deadline=None)
@given(
    labels=st.lists(st.sampled_from(["a", "b", "c", "d", None]), max_size=120),
    fraction=st.floats(min_value=0.0, max_value=0.95),
    seed=st.integers(min_value=0, max_value=2**32),
    min_validation=st.integers(min_value=0, max_value=4),
)
def test_split_invariants(labels, fraction, seed, min_validation):
    n = len(labels)
    validation = choose_validation(labels, fraction, seed, min_validation)
    assert validation == choose_validation(list(labels), fraction, seed, min_validation)  # deterministic
    assert validation <= set(range(n))  # disjoint from train by construction: train is the rest
    assert len(validation) == validation_size(labels, fraction, min_validation)
    if n >= 1:
        assert len(validation) <= n - 1  # at least one training example
    if fraction > 0 and n >= 2:
        expected = max(int(fraction * n + 0.5), min_validation)
        assert len(validation) >= min(expected, n - 1)
        counts = Counter(label for label in labels if label is not None)
        in_validation = Counter(labels[i] for i in validation)
        # Up to this size every group of 2+ (the unlabelled one too) can keep a training example.
        room = n - sum(1 for count in Counter(labels).values() if count >= 2)
        for label, count in counts.items():
            if count >= 2:
                assert in_validation[label] >= 1
                if len(validation) <= room:
                    assert in_validation[label] <= count - 1
    else:
        assert validation == set()


def test_infer_labels_for_classification_data():
    outputs = ["positive", "negative", " neutral "] * 20
    assert infer_labels(outputs) == ["positive", "negative", "neutral"] * 20
    assert infer_labels(["yes", "no", "yes"]) == ["yes", "no", "yes"]  # max(2, ...) distinct for tiny sets


def test_infer_labels_refuses_free_text_and_too_many_classes():
    assert infer_labels([]) is None
    assert infer_labels(["The capital of France is Paris."] * 50) is None  # longer than 4 words
    assert infer_labels(["Paris", "Rome", "Berlin"]) is None  # 3 distinct in 3: not classes
    many = [f"c{i % 30}" for i in range(300)]
    assert infer_labels(many) is None  # 30 > max_classes
    assert infer_labels(many, max_classes=30) == many
    assert infer_labels([f"c{i % 5}" for i in range(20)]) is None  # 5 > 20 // 5 = 4
    assert infer_labels(["a b c d e", "x"] * 10, max_words=5) == ["a b c d e", "x"] * 10
