"""Report pieces: epochs and cost, label balance, readiness advice, review sample files, JSON shape."""

import csv
import io
import json

import pytest

from services.dataprep.dedup import Conflict
from services.dataprep.examples import Example
from services.dataprep.report import (
    REVIEW_COLUMNS,
    Advice,
    DuplicateSummary,
    Report,
    SplitSummary,
    StepCounts,
    TokenTotals,
    cost_estimate,
    estimate_cost,
    label_balance,
    readiness_advice,
    recommended_epochs,
    sample_indices,
    write_review_csv,
    write_review_jsonl,
)
from services.shared.errors import InvalidArgument


@pytest.mark.parametrize(
    ("n", "epochs"),
    [
        (1, 25),  # min(25, 100 // 1)
        (4, 25),
        (5, 20),
        (10, 10),
        (30, 3),  # 100 // 30 = 3: the cookbook floors (ceil would say 4)
        (33, 3),  # 99 < 100
        (34, 3),
        (1000, 3),
        (8333, 3),  # 24,999 <= 25,000
        (8334, 2),  # 25,002 > 25,000: 25,000 // 8,334
        (12500, 2),
        (12501, 1),
        (100_000, 1),  # max(1, 0)
    ],
)
def test_recommended_epochs_matches_openai_cookbook(n, epochs):
    assert recommended_epochs(n) == epochs


def test_recommended_epochs_parameters_and_bounds():
    assert recommended_epochs(100, target_epochs=4) == 4
    assert recommended_epochs(2, min_example_epochs=200, max_epochs=50) == 50
    with pytest.raises(InvalidArgument) as err:
        recommended_epochs(0)
    assert err.value.param == "n_examples"


def test_estimate_cost():
    assert estimate_cost(10_000, 3, 0.008) == pytest.approx(0.24)
    assert estimate_cost(10_000, 3, 0.0) == 0.0
    with pytest.raises(InvalidArgument) as err:
        estimate_cost(10, 1, -1.0)
    assert err.value.param == "price_per_1k_tokens"
    cost = cost_estimate(train_tokens=5_000, n_train=30, price_per_1k_tokens=0.01)
    assert (cost.n_epochs, cost.epochs_source, cost.training_tokens) == (3, "recommended", 15_000)
    assert cost.estimated_cost == pytest.approx(0.15)
    assert cost_estimate(5_000, 30, 0.01, n_epochs=5).to_dict()["epochs_source"] == "given"


def test_label_balance():
    assert label_balance(["b", "a", None, "b", "c", "a", "b"]) == {"b": 3, "a": 2, "c": 1}
    assert list(label_balance(["z", "y"])) == ["y", "z"]  # ties by label
    assert label_balance([None, None]) == {}


def codes(advice):
    return [(a.level, a.code) for a in advice]


def test_readiness_advice_each_condition():
    balanced = {"a": 60, "b": 60}
    assert readiness_advice(500, 50, 0.0, balanced) == []
    assert readiness_advice(500, 50, 0.0, None) == []
    assert codes(readiness_advice(10, 2, 0.0, None)) == [("error", "not_enough_data")]
    assert "few-shot" in readiness_advice(49, 5, 0.0, None)[0].message
    assert codes(readiness_advice(50, 5, 0.0, None)) == [("warning", "few_examples")]
    assert codes(readiness_advice(99, 5, 0.0, None)) == [("warning", "few_examples")]
    assert codes(readiness_advice(100, 0, 0.0, None)) == [("warning", "no_validation_set")]
    assert codes(readiness_advice(500, 50, 0.0, {"yes": 61, "no": 39})) == [("warning", "dominant_label")]
    assert readiness_advice(500, 50, 0.0, {"yes": 60, "no": 40}) == []  # 0.6 is not above 0.6
    assert codes(readiness_advice(500, 50, 0.0, {"yes": 7, "no": 3}, dominant_share=0.8)) == []
    assert codes(readiness_advice(500, 50, 0.25, None)) == [("warning", "high_duplicate_rate")]
    assert readiness_advice(500, 50, 0.2, None) == []
    assert codes(readiness_advice(500, 50, 0.25, None, duplicate_warn=0.3)) == []
    everything = readiness_advice(20, 0, 0.5, {"only": 20})
    assert codes(everything) == [
        ("error", "not_enough_data"),
        ("warning", "no_validation_set"),
        ("warning", "dominant_label"),
        ("warning", "high_duplicate_rate"),
    ]


def test_sample_indices():
    sample = sample_indices(1000, 50, seed=4)
    assert sample == sorted(set(sample)) and len(sample) == 50
    assert all(0 <= i < 1000 for i in sample)
    assert sample == sample_indices(1000, 50, seed=4)
    assert sample != sample_indices(1000, 50, seed=5)
    assert sample_indices(7, 50) == list(range(7))
    assert sample_indices(0, 50) == []
    with pytest.raises(InvalidArgument):
        sample_indices(10, -1)


def examples():
    return [
        Example(
            line=3,
            messages=(
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": 'Say "hi", then list: a, b\nand c'},
                {"role": "assistant", "content": "hi — a, b\r\nand c ✓"},
            ),
            label="greeting",
        ),
        Example(
            line=8, messages=({"role": "user", "content": "Sum?"}, {"role": "assistant", "content": "=1+1"})
        ),
        Example(
            line=9, messages=({"role": "user", "content": "pick"},), preferred="- this one", rejected="that"
        ),
    ]


def test_review_csv_round_trips_through_dictreader():
    out = io.StringIO(newline="")
    write_review_csv(examples(), out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert tuple(rows[0]) == REVIEW_COLUMNS
    assert rows[0] == {
        "line": "3",
        "prompt": 'system: You are terse.\nuser: Say "hi", then list: a, b\nand c',
        "answer": "hi — a, b\r\nand c ✓",
        "label": "greeting",
        "rating": "",
        "correction": "",
        "notes": "",
    }
    # Cells a spreadsheet would run as a formula are shown as text.
    assert (rows[1]["answer"], rows[1]["label"]) == ("'=1+1", "")
    assert (rows[2]["prompt"], rows[2]["answer"]) == ("user: pick", "'- this one")
    assert len(rows) == 3


def test_review_jsonl():
    out = io.StringIO()
    write_review_jsonl(examples(), out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["line"] for r in rows] == [3, 8, 9]
    assert rows[1]["answer"] == "=1+1"  # JSON is not a spreadsheet: kept as written
    assert rows[2]["record"]["preferred_output"] == [{"role": "assistant", "content": "- this one"}]
    assert {k: rows[0][k] for k in ("rating", "correction", "notes")} == dict.fromkeys(
        ("rating", "correction", "notes")
    )


def test_report_to_dict_is_json():
    steps = StepCounts().add("read", 120, 118).add("validate", 118, 110).add("exact_duplicates", 110, 100)
    report = Report(
        format="openai_chat",
        lines=120,
        steps=steps,
        split=SplitSummary(train=90, validation=10, validation_fraction=0.1, seed=0, stratified_by="label"),
        tokens=TokenTotals(train=9000, validation=1000, max_example=300, context_limit=8192),
        cost=cost_estimate(9000, 90, 0.008),
        duplicates=DuplicateSummary(
            exact=10,
            near=0,
            rate=10 / 110,
            near_duplicate_threshold=0.85,
            exact_examples=[{"line": 5, "duplicate_of": 2}],
        ),
        advice=readiness_advice(90, 10, 10 / 110, {"pos": 50, "neg": 40}),
        conflicts=[Conflict(prompt="user: q", outputs=["a", "b"], lines=[1, 4])],
        label_source="explicit",
        label_counts={"pos": 50, "neg": 40},
        review_sample_size=50,
    )
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["steps"] == [
        {"step": "read", "in": 120, "out": 118},
        {"step": "validate", "in": 118, "out": 110},
        {"step": "exact_duplicates", "in": 110, "out": 100},
    ]
    assert data["cost"] == {
        "n_epochs": 3,
        "epochs_source": "recommended",
        "price_per_1k_tokens": 0.008,
        "training_tokens": 27000,
        "estimated_cost": 0.216,
    }
    assert data["advice"] == [
        {"level": "warning", "code": "few_examples", "message": report.advice[0].message}
    ]
    assert data["labels"] == {"source": "explicit", "balance": {"pos": 50, "neg": 40}}
    assert data["conflicts"] == [{"prompt": "user: q", "outputs": ["a", "b"], "lines": [1, 4]}]
    assert data["duplicates"]["rate"] == 0.090909
    assert data["tokens"]["context_limit"] == 8192
    assert isinstance(report.advice[0], Advice)
