"""Preparing datasets through the data-prep service: real gRPC, NATS, SQLite / PostgreSQL, tokenizer, Presidio."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
import sqlalchemy as sa

from protos import dataprep_pb2, dataprep_pb2_grpc
from services.dataprep import store
from services.dataprep.server import DEFINITION
from tests.fixtures.services import call_metadata, error_param, running, service_settings
from tests.fixtures.tiny_model import TINY_MODEL_ID

PII = {
    "PERSON": "Tomasz Chaudhry",
    "DATE_TIME": "6/07/1991",
    "EMAIL_ADDRESS": "tomasz.chaudhry@example.com",
    "PHONE_NUMBER": "+44 20 7946 0958",
    "LOCATION": "Manchester",
    "URL": "https://portal.example.com/accounts/4471",
    "IP_ADDRESS": "203.0.113.42",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "US_SSN": "536-22-8019",
}


def chat(user: str, assistant: str, **extra) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **extra})


LONG = ("Our premium support plan includes a dedicated account manager, a four hour response time on "
        "weekdays, quarterly reviews of your open tickets and priority access to new features")

MESSY_LINES = [
    chat("How long is the refund window?", "Thirty days from delivery."),                          # 1 kept
    '{"messages": [{"role": "user", "content": "broken"',                                          # 2 invalid_json
    json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}),  # 3 role
    chat("How long is the refund window?  ", "Thirty  days from delivery."),                        # 4 exact dup of 1
    chat("What does the premium plan include?", LONG + "."),                                       # 5 kept
    chat("What does the premium plan include?", LONG.replace("quarterly", "monthly") + "."),       # 6 near dup of 5
    chat("Can I pay by invoice?", "Yes, for annual plans."),                                       # 7 conflict a
    chat("Can I pay by invoice?", "No, only by card."),                                            # 8 conflict b
    json.dumps({"messages": [{"role": "user", "content": "Hello"}]}),                              # 9 no assistant
    chat(f"Patient {PII['PERSON']} (DOB {PII['DATE_TIME']}) called from {PII['LOCATION']}.",
         "Thanks, the note is filed."),                                                              # 10 PII
    chat(f"Write to {PII['EMAIL_ADDRESS']} or call {PII['PHONE_NUMBER']}.", "Will do."),            # 11 PII
    chat(f"The portal {PII['URL']} logged a login from {PII['IP_ADDRESS']}.", "Noted."),           # 12 PII
    chat(f"Charge card {PII['CREDIT_CARD']}; SSN {PII['US_SSN']}.", "I cannot store card numbers."),  # 13 PII
    json.dumps({"messages": [{"role": "user", "content": "x " * 400}, {"role": "assistant", "content": "y"}]}),  # 14 tokens
    chat("", "Empty question."),                                                                     # 15 missing content
    chat("Where is my order?", "Check the tracking link in your e-mail."),                         # 16 kept
]
MESSY = ("\n".join(MESSY_LINES) + "\n").encode()


@pytest.fixture
def settings(tmp_path, database_url, nats_url, tiny_model_dir):
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url,
                            base_models={TINY_MODEL_ID: tiny_model_dir}, default_base_model=TINY_MODEL_ID)


async def upload(stub, content: bytes, filename="train.jsonl", tenant="acme") -> str:
    requests = [dataprep_pb2.UploadFileRequest(header=dataprep_pb2.UploadFileHeader(filename=filename, purpose="fine-tune")),
                dataprep_pb2.UploadFileRequest(data=content)]
    return (await stub.UploadFile(iter(requests), metadata=call_metadata(tenant))).file.id


async def prepare(stub, file_id: str, tenant="acme", **options) -> dataprep_pb2.Dataset:
    response = await stub.PrepareDataset(
        dataprep_pb2.PrepareDatasetRequest(file_id=file_id, options=dataprep_pb2.PrepareOptions(**options)),
        metadata=call_metadata(tenant),
    )
    return await wait_done(stub, response.dataset.id, tenant)


async def wait_done(stub, dataset_id: str, tenant="acme", timeout=120.0) -> dataprep_pb2.Dataset:
    for _ in range(int(timeout / 0.1)):
        dataset = (await stub.GetDataset(dataprep_pb2.GetDatasetRequest(dataset_id=dataset_id),
                                         metadata=call_metadata(tenant))).dataset
        if dataset.status != "processing":
            return dataset
        await asyncio.sleep(0.1)
    raise AssertionError(f"dataset {dataset_id} still processing after {timeout}s")


async def report_of(stub, dataset_id: str) -> dict:
    from google.protobuf import json_format

    response = await stub.GetReport(dataprep_pb2.GetReportRequest(dataset_id=dataset_id), metadata=call_metadata())
    return json_format.MessageToDict(response.report)


async def content_of(stub, dataset_id: str, split: str) -> list[dict]:
    chunks = [c.data async for c in stub.GetDatasetContent(
        dataprep_pb2.GetDatasetContentRequest(dataset_id=dataset_id, split=split), metadata=call_metadata())]
    return [json.loads(line) for line in b"".join(chunks).decode().splitlines()]


def _ints(value):
    """protobuf Struct numbers come back as floats."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


async def test_a_messy_file_gives_exactly_the_expected_report(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        dataset = await prepare(stub, await upload(stub, MESSY), drop_invalid=True, validation_fraction=0.2)
        assert dataset.status == "ready", dataset.error
        report = _ints(await report_of(stub, dataset.id))
        train = await content_of(stub, dataset.id, "train")
        validation = await content_of(stub, dataset.id, "validation")
        async with service.runtime.db.transaction() as session:
            sent = (await session.execute(sa.select(service.runtime.tables.outbox.c.event_type))).scalars().all()

    assert report["format"] == "chat" and report["lines"] == 16
    assert report["steps"] == [
        {"step": "read", "in": 16, "out": 16},
        {"step": "validate", "in": 16, "out": 11},
        {"step": "exact_duplicates", "in": 11, "out": 10},
        {"step": "near_duplicates", "in": 10, "out": 9},
        {"step": "split", "in": 9, "out": 9},
    ]
    errors = {(e["line"], e["field"], e["code"]) for e in report["invalid"]["errors"]}
    assert errors == {
        (2, "(line)", "invalid_json"),
        (3, "messages[0].role", "unrecognized_role"),
        (9, "messages", "example_missing_assistant_message"),
        (14, "messages", "too_many_tokens"),
        (15, "messages[0].content", "missing_content"),
    }
    assert report["invalid"]["total_lines"] == 5
    assert report["duplicates"]["exact"] == 1 and report["duplicates"]["exact_examples"] == [{"line": 4, "duplicate_of": 1}]
    assert report["duplicates"]["near"] == 1 and report["duplicates"]["near_examples"] == [{"line": 6, "duplicate_of": 5}]
    assert [sorted(c["lines"]) for c in report["conflicts"]] == [[7, 8]]
    assert set(report["pii"]["replacements"]) == set(PII)
    assert report["split"] == {"train": 7, "validation": 2, "validation_fraction": 0.2, "seed": 0, "stratified_by": None}
    assert {a["code"] for a in report["advice"]} >= {"not_enough_data"}
    assert report["tokens"]["train"] > 0 and report["tokens"]["context_limit"] == 256
    assert report["cost"]["n_epochs"] == 14  # OpenAI's heuristic: at least 100 example-passes, 100 // 7 train examples
    assert len(train) == 7 and len(validation) == 2
    stored = json.dumps(train + validation)
    for entity, value in PII.items():
        assert value not in stored, f"{entity} {value!r} leaked into the stored dataset"
    for placeholder in ("[PERSON]", "[DATE]", "[EMAIL]", "[PHONE]", "[LOCATION]", "[URL]", "[IP_ADDRESS]", "[CREDIT_CARD]", "[ID]"):
        assert placeholder in stored
    assert sent == ["dataset.prepared"]


async def test_strict_mode_rejects_the_file_listing_every_error_and_stores_no_dataset(settings):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        dataset = await prepare(stub, await upload(stub, MESSY))
        report = _ints(await report_of(stub, dataset.id))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await content_of(stub, dataset.id, "train")
    assert dataset.status == "failed"
    assert "5 invalid line(s)" in dataset.error and "line 2" in dataset.error
    assert [e["line"] for e in report["invalid"]["errors"]] == [2, 3, 9, 14, 15]
    assert not dataset.train_sha256
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _generated(n: int, labels=("billing", "shipping", "returns")) -> bytes:
    lines = [chat(f"Ticket {i}: my parcel number {i * 7919} needs help with {labels[i % len(labels)]}",
                  labels[i % len(labels)]) for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


async def test_the_split_is_stable_stratified_and_content_addressed(settings):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        file_id = await upload(stub, _generated(120))
        first = await prepare(stub, file_id, seed=7, anonymize_pii=False)
        again = await stub.PrepareDataset(dataprep_pb2.PrepareDatasetRequest(
            file_id=file_id, options=dataprep_pb2.PrepareOptions(seed=7, anonymize_pii=False)), metadata=call_metadata())
        other = await prepare(stub, file_id, seed=8, anonymize_pii=False)
        validation_7 = await content_of(stub, first.id, "validation")
        validation_8 = await content_of(stub, other.id, "validation")
        report = _ints(await report_of(stub, first.id))
    assert again.dataset.id == first.id and not again.created
    assert first.id != other.id
    assert validation_7 != validation_8
    assert first.validation_examples == 12 and first.train_examples == 108
    assert report["labels"] == {"source": "inferred", "balance": {"billing": 40, "returns": 40, "shipping": 40}}
    assert sorted(e["messages"][-1]["content"] for e in validation_7).count("billing") == 4


async def test_review_sample_exports_as_jsonl_and_csv(settings):
    import csv
    import io

    async with running(DEFINITION, settings) as (_service, channel):
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        dataset = await prepare(stub, await upload(stub, _generated(80)), anonymize_pii=False, review_sample_size=20)

        async def export(**fields):
            chunks = [c.data async for c in stub.ExportReviewSample(
                dataprep_pb2.ExportReviewSampleRequest(dataset_id=dataset.id, **fields), metadata=call_metadata())]
            return b"".join(chunks).decode()

        jsonl = await export(size=5)
        rows = list(csv.DictReader(io.StringIO(await export(format="csv"))))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await export(format="xml")
    assert len(jsonl.splitlines()) == 5
    assert len(rows) == 20 and {"line", "prompt", "answer", "rating", "correction", "notes"} <= set(rows[0])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_param(error.value) == "format"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"format": "xml"}, "format"),
        ({"near_duplicate_threshold": 0.0}, "near_duplicate_threshold"),
        ({"review_sample_size": 5000}, "review_sample_size"),
        ({"pii_entities": ["PERSON", "SHOE_SIZE"]}, "pii_entities"),
        ({"pii_detector": "oracle"}, "pii_detector"),
    ],
)
async def test_bad_options_are_refused_and_store_nothing(settings, options, param):
    async with running(DEFINITION, settings) as (service, channel):
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        file_id = await upload(stub, _generated(5))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.PrepareDataset(dataprep_pb2.PrepareDatasetRequest(
                file_id=file_id, options=dataprep_pb2.PrepareOptions(**options)), metadata=call_metadata())
        async with service.runtime.db.transaction() as session:
            count = (await session.execute(sa.select(sa.func.count()).select_from(store.datasets))).scalar_one()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_param(error.value) == param
    assert count == 0


async def test_a_dataset_left_processing_by_a_crash_is_prepared_after_restart(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        file_id = await upload(stub, _generated(60))
        # what a crash mid-preparation leaves behind: the row, still processing
        queued = await stub.PrepareDataset(dataprep_pb2.PrepareDatasetRequest(
            file_id=file_id, options=dataprep_pb2.PrepareOptions(anonymize_pii=False)), metadata=call_metadata())
        async with service.runtime.db.transaction() as session:
            await session.execute(store.datasets.update().values(status="processing", report=None, finished_at=None))
    async with running(DEFINITION, settings) as (_service, channel):
        dataset = await wait_done(dataprep_pb2_grpc.DataPrepStub(channel), queued.dataset.id)
    assert dataset.status == "ready" and dataset.train_examples + dataset.validation_examples == 60
