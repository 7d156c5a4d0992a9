"""The pipeline on its own: malformed input never crashes it, and the split never leaks near-duplicates."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dataprep.dedup import NearDuplicateIndex
from services.dataprep.examples import example_from_record
from services.dataprep.options import PrepareConfig
from services.dataprep.pipeline import DatasetRejected, PipelineResources, prepare_dataset
from services.dataprep.transform import near_duplicate_text
from services.shared.artifacts import ArtifactStore
from services.shared.settings import Settings
from tests.fixtures.tiny_model import TINY_MODEL_ID


@pytest.fixture(scope="module")
def resources(tmp_path_factory, tiny_model_dir):
    return PipelineResources(Settings(data_dir=tmp_path_factory.mktemp("data"), base_models={TINY_MODEL_ID: tiny_model_dir}))


def _blobs(store: ArtifactStore) -> list:
    root = store.root / "sha256"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
malformed_line = st.one_of(
    st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b and b.strip()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["messages", "role", "content", "input", "label", "extra"]), json_values,
                    min_size=1, max_size=3).map(lambda d: json.dumps(d).encode()),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "robot", "", "assistant"]),
                                    "content": st.one_of(st.text(max_size=10), st.integers())}),
             max_size=3).map(lambda ms: json.dumps({"messages": ms}).encode()),
)
VALID = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(malformed_line, min_size=1, max_size=6), valid_first=st.booleans())
def test_malformed_files_are_rejected_with_line_errors_and_store_nothing(resources, tmp_path_factory, lines, valid_first):
    workdir = tmp_path_factory.mktemp("work")
    store = ArtifactStore(workdir / "artifacts")
    content = b"\n".join(([VALID] if valid_first else []) + lines) + b"\n"
    config = PrepareConfig(base_model=TINY_MODEL_ID, anonymize_pii=False, format="chat")
    try:
        prepared = prepare_dataset([content], config, resources=resources, artifacts=store, workdir=workdir)
    except DatasetRejected as rejected:
        errors = rejected.report.get("invalid", {}).get("errors", [])
        assert rejected.param == "file_id"
        assert all(e["line"] >= 1 and e["field"] and e["code"] for e in errors)
        assert errors or "no usable examples" in rejected.message or "empty" in rejected.message
        assert _blobs(store) == []  # a rejected file stores nothing
        return
    # Only lines that happen to be valid chat examples can get here.
    assert prepared.train_examples + prepared.validation_examples >= 1


def test_no_validation_example_has_a_near_duplicate_in_train(resources, tmp_path):
    rng = random.Random(5)
    words = ["order", "parcel", "refund", "invoice", "account", "password", "delivery", "warranty", "screen", "battery", "cable", "charger"]
    lines = []
    for i in range(300):
        base = " ".join(rng.choice(words) for _ in range(30))
        lines.append({"messages": [{"role": "user", "content": f"case {i}: {base}"},
                                   {"role": "assistant", "content": f"resolution {i}"}]})
        if i % 3 == 0:  # a near-copy: one word changed
            near = base.split()
            near[10] = "zebra"
            lines.append({"messages": [{"role": "user", "content": f"case {i}: {' '.join(near)}"},
                                       {"role": "assistant", "content": f"resolution {i}"}]})
    rng.shuffle(lines)
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    store = ArtifactStore(tmp_path / "artifacts")
    config = PrepareConfig(base_model=TINY_MODEL_ID, anonymize_pii=False, validation_fraction=0.3, seed=11)
    prepared = prepare_dataset([content], config, resources=resources, artifacts=store, workdir=tmp_path)
    # MinHash estimates Jaccard: a one-word change in 32 words (true Jaccard ~0.89) is caught most of the time.
    assert prepared.report["duplicates"]["near"] >= 85
    kept = 400 - prepared.report["duplicates"]["near"]

    def read(sha):
        return [example_from_record(json.loads(line), n) for n, line in enumerate(store.path(sha).read_text().splitlines())]

    index = NearDuplicateIndex(threshold=0.85)
    for example in read(prepared.train.sha256):
        assert index.add_or_match(example.line, near_duplicate_text(example)) is None
    validation = read(prepared.validation.sha256)
    assert len(validation) == round(0.3 * kept)
    leaks = [e for e in validation if index.add_or_match(-1 - e.line, near_duplicate_text(e)) is not None]
    assert leaks == []

    again = prepare_dataset([content], config, resources=resources, artifacts=store, workdir=tmp_path)
    assert again.validation.sha256 == prepared.validation.sha256  # stable for a seed


def test_corrected_marks_reach_both_splits_and_no_other_example_gets_one(resources, tmp_path):
    lines = [{"messages": [{"role": "user", "content": f"Question number {i} about parcel {i * 7919}?"},
                           {"role": "assistant", "content": f"Answer {i}."}],
              **({"corrected": True} if i % 2 == 0 else {"corrected": False} if i % 3 == 0 else {})}
             for i in range(40)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    store = ArtifactStore(tmp_path / "artifacts")
    config = PrepareConfig(base_model=TINY_MODEL_ID, anonymize_pii=False, validation_fraction=0.25, seed=3)
    prepared = prepare_dataset([content], config, resources=resources, artifacts=store, workdir=tmp_path)
    written = [json.loads(line) for sha in (prepared.train.sha256, prepared.validation.sha256)
               for line in store.path(sha).read_text().splitlines()]
    by_question = {record["messages"][0]["content"]: record.get("corrected") for record in written}
    assert by_question == {line["messages"][0]["content"]: line.get("corrected") for line in lines}
    validation = [json.loads(line) for line in store.path(prepared.validation.sha256).read_text().splitlines()]
    assert any(record.get("corrected") is True for record in validation)
