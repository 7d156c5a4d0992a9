"""Large files fan out to worker processes, and the dataset is the same bytes as when made in one process."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal

import pytest

from services.dataprep.examples import example_from_record
from services.dataprep.options import PrepareConfig
from services.dataprep.pipeline import DatasetRejected, PipelineResources, prepare_dataset
from services.dataprep.transform import BATCH_EXAMPLES, INLINE_BATCHES
from services.shared.artifacts import ArtifactStore
from services.shared.errors import Unavailable
from services.shared.settings import Settings
from tests.fixtures.tiny_model import TINY_MODEL_ID

WORDS = ["order", "parcel", "refund", "invoice", "account", "password", "delivery", "warranty", "screen",
         "battery", "cable", "charger", "printer", "router", "voucher", "courier"]
PII = [
    "Write to {first}.{last}@example.com about it.",
    "My name is {First} {Last} and my number is +44 20 7946 {n:04d}.",
    "The card 4111 1111 1111 1111 was charged on 12 March 2024.",
    "Server 10.0.{a}.{b} rejected the login.",
    "Ms. {Last} called from (555) 201-{n:04d}.",
]
N_EXAMPLES = BATCH_EXAMPLES * (INLINE_BATCHES + 4) + 37  # well past what is transformed in-process


def _file(n: int, seed: int = 3) -> bytes:
    """Support chats with PII in a fifth of them, exact copies and one-word near copies."""
    rng = random.Random(seed)
    lines: list[dict] = []
    for i in range(n):
        user = f"ticket {i}: " + " ".join(rng.choice(WORDS) for _ in range(25))
        if rng.random() < 0.2:
            first, last = rng.choice(["anna", "tomasz", "li", "omar"]), rng.choice(["berg", "chaudhry", "novak"])
            user += " " + rng.choice(PII).format(first=first, last=last, First=first.title(), Last=last.title(),
                                                 n=rng.randrange(10_000), a=rng.randrange(256), b=rng.randrange(256))
        record = {"messages": [{"role": "system", "content": "You are the support assistant."},
                               {"role": "user", "content": user},
                               {"role": "assistant", "content": f"Resolution {i % 40}."}]}
        lines.append(record)
        if rng.random() < 0.05:
            lines.append(record)
        elif rng.random() < 0.05:
            words = user.split()
            words[5] = "zebra"
            lines.append({"messages": [record["messages"][0], {"role": "user", "content": " ".join(words)},
                                       record["messages"][2]]})
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@pytest.fixture(scope="module")
def settings(tmp_path_factory, tiny_model_dir):
    return Settings(data_dir=tmp_path_factory.mktemp("data"), base_models={TINY_MODEL_ID: tiny_model_dir})


def _prepare(resources, content, tmp_path, name, **options):
    workdir = tmp_path / name
    workdir.mkdir()
    config = PrepareConfig(base_model=TINY_MODEL_ID, pii_detector="regex", seed=4, **options)
    chunks = [content[i : i + 65536] for i in range(0, len(content), 65536)]
    return prepare_dataset(chunks, config, resources=resources, artifacts=ArtifactStore(tmp_path / "artifacts"),
                           workdir=workdir)


def test_workers_make_the_same_dataset_as_one_process(settings, tmp_path):
    content = _file(N_EXAMPLES)
    alone = PipelineResources(settings, workers=1)
    fanned = PipelineResources(settings, workers=2)
    try:
        one = _prepare(alone, content, tmp_path, "one")
        many = _prepare(fanned, content, tmp_path, "many")
        assert alone.pool is None
        # Everything after the in-process batches went through the workers.
        assert fanned.pool.batches_done == -(-N_EXAMPLES // BATCH_EXAMPLES) - INLINE_BATCHES
    finally:
        fanned.close()
    assert multiprocessing.active_children() == []  # closed: no worker left behind
    report = one.report
    assert report["pii"]["replacements"]["EMAIL_ADDRESS"] > 50
    assert report["duplicates"]["exact"] > 50 and report["duplicates"]["near"] > 50
    assert many.report == report
    assert (many.train.sha256, many.validation.sha256, many.review.sha256) == (
        one.train.sha256, one.validation.sha256, one.review.sha256)


def test_a_dead_worker_fails_that_dataset_clearly_and_the_next_one_gets_fresh_workers(settings, tmp_path):
    content = _file(BATCH_EXAMPLES * (INLINE_BATCHES + 2))
    resources = PipelineResources(settings, workers=2)
    try:
        first = _prepare(resources, content, tmp_path, "first", anonymize_pii=False)
        workers = multiprocessing.active_children()
        assert len(workers) == 2
        for worker in workers:
            os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(Unavailable, match="worker process died"):
            _prepare(resources, content, tmp_path, "second", anonymize_pii=False)
        third = _prepare(resources, content, tmp_path, "third", anonymize_pii=False)
        assert third.train.sha256 == first.train.sha256
    finally:
        resources.close()


def _with_bad_lines(content: bytes) -> bytes:
    """The file with a bad line every 97 lines: broken JSON, bad UTF-8, no answer, an answer past the
    tiny model's 256 tokens, an unknown key; most of them land in batches the workers read."""
    bad = [b'{"messages": [', b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
           json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
           json.dumps({"messages": [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "word " * 400}]}).encode(),
           json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
                       "colour": "red"}).encode()]
    lines = content.split(b"\n")
    for i, position in enumerate(range(50, len(lines), 97)):
        lines[position] = bad[i % len(bad)]
    return b"\n".join(lines)


def test_workers_report_bad_lines_and_count_tokens_as_one_process(settings, tmp_path):
    content = _with_bad_lines(_file(N_EXAMPLES, seed=5))
    alone = PipelineResources(settings, workers=1)
    fanned = PipelineResources(settings, workers=2)
    try:
        one = _prepare(alone, content, tmp_path, "one", drop_invalid=True)
        many = _prepare(fanned, content, tmp_path, "many", drop_invalid=True)
        invalid = one.report["invalid"]
        assert invalid["total_lines"] >= 20 and many.report == one.report
        codes = {(e["code"], e["field"]) for e in invalid["errors"]}
        assert {("invalid_json", "(line)"), ("invalid_encoding", "(line)"), ("too_many_tokens", "messages"),
                ("example_missing_assistant_message", "messages"), ("unrecognized_key", "colour")} <= codes
        assert all(content.split(b"\n")[e["line"] - 1] for e in invalid["errors"])  # the line at fault
        assert many.train.sha256 == one.train.sha256
        with pytest.raises(DatasetRejected) as alone_rejected:
            _prepare(alone, content, tmp_path, "one-strict")
        with pytest.raises(DatasetRejected) as fanned_rejected:
            _prepare(fanned, content, tmp_path, "many-strict")
        assert fanned_rejected.value.report == alone_rejected.value.report
        assert fanned_rejected.value.message == alone_rejected.value.message
        # The token totals, counted in the workers before and after anonymisation, are those of what was written.
        counter = alone.token_counter(TINY_MODEL_ID)
        store = ArtifactStore(tmp_path / "artifacts")
        for side, artifact in (("train", many.train), ("validation", many.validation)):
            records = b"".join(store.iter_chunks(artifact.sha256)).decode().splitlines()
            examples = [example_from_record(json.loads(r), i) for i, r in enumerate(records)]
            assert many.report["tokens"][side] == sum(counter.count_many(examples))
    finally:
        fanned.close()
