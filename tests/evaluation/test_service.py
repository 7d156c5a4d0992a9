"""The evaluation service with the real data-prep, training (registry) and inference services over
gRPC, on two tiny Llamas: `tiny-llama`, and `tiny-other` (other random weights). The held-out set's
references are tiny-llama's own greedy answers, so tiny-llama is a candidate that must pass against
tiny-other, and tiny-other one that must fail against tiny-llama."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import json_format

from protos import (
    common_pb2,
    dataprep_pb2,
    dataprep_pb2_grpc,
    evaluation_pb2,
    evaluation_pb2_grpc,
    events_pb2,
    inference_pb2,
    inference_pb2_grpc,
)
from services.dataprep.server import DEFINITION as DATAPREP
from services.evaluation.server import DEFINITION as EVALUATION
from services.evaluation.side_by_side import general_probe
from services.inference.server import DEFINITION as INFERENCE
from services.training.server import DEFINITION as TRAINING
from tests.fixtures.services import call_metadata, error_param, running, service_settings
from tests.fixtures.tiny_model import TINY_MODEL_ID

OTHER = "tiny-other"
QUESTIONS = [f"Tell me about ticket {i}." for i in range(24)]
WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kettle", "lantern", "meadow", "nectar", "orchid", "pepper", "quartz", "raven", "saffron", "thistle", "umber", "velvet", "willow", "yarrow", "zephyr", "anchor", "bramble", "cobalt", "drift", "falcon", "glacier", "hazel", "ivory", "jasmine", "kelp", "lilac", "marble", "nutmeg", "onyx", "pebble"]


@pytest.fixture(scope="module")
def other_model_dir(tiny_model_dir, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("tiny-other")
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.fixture
def sqlite_url(tmp_path):
    """For the tests of what the database does not change: PostgreSQL runs the core ones (database_url)."""
    return f"sqlite:///{tmp_path / 'platform.db'}"


@contextlib.asynccontextmanager
async def _platform(tmp_path, database_url, nats_url, tiny_model_dir, other_model_dir, **evaluation_settings):
    """data-prep, training, inference and evaluation, wired to each other; yields their channels."""
    models = {TINY_MODEL_ID: tiny_model_dir, OTHER: other_model_dir}

    def settings(definition, **extra):
        return service_settings(definition, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url,
                                base_models=models, default_base_model=TINY_MODEL_ID, **extra)

    async with running(DATAPREP, settings(DATAPREP)) as (dataprep, dataprep_channel):
        addresses = {"dataprep_addr": f"127.0.0.1:{dataprep.grpc.port}"}
        async with running(TRAINING, settings(TRAINING, **addresses)) as (training, _):
            _platform.training = training  # type: ignore[attr-defined]
            addresses["training_addr"] = f"127.0.0.1:{training.grpc.port}"
            # auto_canary_s 0: a passed candidate is promoted at once, without a canary first
            inference_settings = settings(INFERENCE, auto_canary_s=0, **addresses)
            async with running(INFERENCE, inference_settings) as (inference, inference_channel):
                addresses["inference_addr"] = f"127.0.0.1:{inference.grpc.port}"
                async with running(EVALUATION, settings(EVALUATION, **addresses, **evaluation_settings)) as (
                        evaluation, evaluation_channel):
                    _platform.evaluation = evaluation  # type: ignore[attr-defined]
                    yield dataprep_channel, inference_channel, evaluation_channel


async def _upload(channel, lines: list[dict]) -> str:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()

    async def chunks():
        yield dataprep_pb2.UploadFileRequest(header=dataprep_pb2.UploadFileHeader(filename="held-out.jsonl",
                                                                                  purpose="fine-tune"))
        yield dataprep_pb2.UploadFileRequest(data=content)

    return (await dataprep_pb2_grpc.DataPrepStub(channel).UploadFile(chunks(), metadata=call_metadata())).file.id


async def _held_out(inference_channel) -> list[dict]:
    """tiny-llama's greedy answers as the references."""
    stub = inference_pb2_grpc.InferenceStub(inference_channel)
    examples = []
    for question in QUESTIONS:
        answer = await stub.Generate(inference_pb2.GenerateRequest(
            model=TINY_MODEL_ID, max_tokens=6, messages=[common_pb2.ChatMessage(role="user", content=question)]),
            metadata=call_metadata())
        examples.append({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": answer.text}],
                         "slice": "even" if len(examples) % 2 == 0 else "odd"})
    return examples


async def _finished(stub, evaluation_id: str) -> evaluation_pb2.EvaluationRun:
    for _ in range(600):
        found = (await stub.GetEvaluation(evaluation_pb2.GetEvaluationRequest(evaluation_id=evaluation_id),
                                          metadata=call_metadata())).evaluation
        if found.status in ("completed", "failed"):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"evaluation {evaluation_id} is still {found.status}")


async def test_a_better_candidate_passes_the_gate_and_its_deployment_promotes_it(
        tmp_path, database_url, nats_url, tiny_model_dir, other_model_dir):
    async with _platform(tmp_path, database_url, nats_url, tiny_model_dir, other_model_dir) as (
            dataprep, inference, evaluation):
        file_id = await _upload(dataprep, await _held_out(inference))
        deployments = inference_pb2_grpc.InferenceStub(inference)
        await deployments.CreateDeployment(inference_pb2.CreateDeploymentRequest(
            name="acme-support", model_version=OTHER, auto_promote=True), metadata=call_metadata())
        stub = evaluation_pb2_grpc.EvaluationStub(evaluation)
        started = (await stub.RunEvaluation(evaluation_pb2.RunEvaluationRequest(
            candidate=TINY_MODEL_ID, deployment="acme-support", file_id=file_id, max_tokens=6,
            metrics=["exact_match", "token_f1", "rougeL", "perplexity"], idempotency_key="k1"),
            metadata=call_metadata())).evaluation
        again = (await stub.RunEvaluation(evaluation_pb2.RunEvaluationRequest(
            candidate=TINY_MODEL_ID, deployment="acme-support", file_id=file_id, idempotency_key="k1"),
            metadata=call_metadata())).evaluation
        assert started.status == "queued" and again.id == started.id
        done = await _finished(stub, started.id)
        for _ in range(100):  # evaluation.completed travels through the outbox and NATS to inference
            deployment = (await deployments.GetDeployment(inference_pb2.GetDeploymentRequest(name="acme-support"),
                                                          metadata=call_metadata())).deployment
            if deployment.model_version == TINY_MODEL_ID:
                break
            await asyncio.sleep(0.1)
        listed = (await stub.ListEvaluations(evaluation_pb2.ListEvaluationsRequest(), metadata=call_metadata()))
        runtime = _platform.evaluation.runtime
        async with runtime.db.transaction() as session:
            [payload] = (await session.execute(sa.select(runtime.tables.outbox.c.payload))).scalars().all()
        event = events_pb2.Envelope.FromString(payload).evaluation_completed
        other_tenant = await stub.ListEvaluations(evaluation_pb2.ListEvaluationsRequest(),
                                                  metadata=call_metadata("other"))
    assert done.status == "completed", done.error_message
    assert done.passed, done.reason
    assert (done.baseline, done.base_model) == (OTHER, TINY_MODEL_ID)  # the deployment's production version
    assert done.progress_done == done.progress_total > 0
    report = done.report
    assert report["metrics"][TINY_MODEL_ID]["exact_match"]["value"] == 1.0
    assert report["metrics"][OTHER]["exact_match"]["value"] < 0.2
    assert len(report["examples"]) == len(QUESTIONS)
    assert set(report["examples"][0]["answers"]) == {TINY_MODEL_ID, OTHER}
    assert set(report["slices"]) == {"even", "odd"}
    assert [rule["name"] for rule in report["verdict"]["rules"]][:2] == ["min_examples", "primary_metric"]
    assert (event.evaluation_id, event.passed, event.deployment) == (done.id, True, "acme-support")
    assert [rule.name for rule in event.rules] == [rule["name"] for rule in report["verdict"]["rules"]]
    assert event.rules[1].measured == 1.0 and event.rules[1].passed
    assert deployment.model_version == TINY_MODEL_ID and deployment.previous_version == OTHER
    assert f"evaluation {done.id} passed" in deployment.history[-1].reason
    assert [e.id for e in listed.evaluations] == [done.id] and not listed.evaluations[0].report.fields
    perplexity = json_format.MessageToDict(report)["perplexity"]  # its own answers are likelier to it
    assert perplexity[TINY_MODEL_ID]["loss"] < perplexity[OTHER]["loss"] and perplexity[OTHER]["perplexity"] > 1
    assert perplexity[TINY_MODEL_ID]["tokens"] == perplexity[OTHER]["tokens"] > len(QUESTIONS)
    cost = report["cost"]
    assert cost["training"] is None and cost["primary_metric"] == "exact_match" and cost["gain"] > 0.8
    served = cost["serving"][TINY_MODEL_ID]  # its answers to the held-out set and the general probe, logged
    assert served["completions"] >= len(QUESTIONS) + len(general_probe()) and served["tokens"] > 0
    assert served["cost_per_1k_tokens"] == 0  # the default machine price is 0
    assert list(other_tenant.evaluations) == []


async def test_a_worse_candidate_fails_naming_the_rules_and_production_stays(
        tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir):
    async with _platform(tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir) as (
            dataprep, inference, evaluation):
        file_id = await _upload(dataprep, await _held_out(inference))
        stub = evaluation_pb2_grpc.EvaluationStub(evaluation)
        started = (await stub.RunEvaluation(evaluation_pb2.RunEvaluationRequest(
            candidate=OTHER, baseline=TINY_MODEL_ID, file_id=file_id, max_tokens=6), metadata=call_metadata()))
        done = await _finished(stub, started.evaluation.id)
    assert done.status == "completed" and not done.passed
    failed = [rule["name"] for rule in done.report["verdict"]["rules"] if not rule["passed"]]
    assert failed[:3] == ["primary_metric", "min_gain", "significant"]
    assert done.base_model == OTHER  # a base model is its own base: forgetting is measured against itself
    assert done.reason.startswith("exact_match 0.")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"file_id": "file-x"}, "candidate"),
        ({"candidate": TINY_MODEL_ID}, "dataset_id"),
        ({"candidate": TINY_MODEL_ID, "file_id": "f", "dataset_id": "d"}, "dataset_id"),
        ({"candidate": TINY_MODEL_ID, "file_id": "f", "metrics": ["meteor"]}, "metrics"),
        ({"candidate": TINY_MODEL_ID, "file_id": "f", "policy_json": '{"min_ratio": -1}'}, "policy"),
        ({"candidate": TINY_MODEL_ID, "file_id": "f", "policy_json": "{not json"}, "policy"),
        ({"candidate": TINY_MODEL_ID, "file_id": "f", "max_tokens": 100_000}, "max_tokens"),
    ],
)
async def test_bad_requests_are_refused_naming_the_field_and_store_nothing(
        tmp_path, database_url, nats_url, tiny_model_dir, fields, param):
    settings = service_settings(EVALUATION, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url)
    async with running(EVALUATION, settings) as (_service, channel):
        stub = evaluation_pb2_grpc.EvaluationStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RunEvaluation(evaluation_pb2.RunEvaluationRequest(**fields), metadata=call_metadata())
        listed = await stub.ListEvaluations(evaluation_pb2.ListEvaluationsRequest(), metadata=call_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetEvaluation(evaluation_pb2.GetEvaluationRequest(evaluation_id="eval-nope"),
                                     metadata=call_metadata())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_param(refused.value) == param
    assert list(listed.evaluations) == []
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_examples_that_are_not_chats_fail_the_evaluation_naming_the_line(
        tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir):
    async with _platform(tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir) as (
            dataprep, inference, evaluation):
        good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
        file_id = await _upload(dataprep, [good, {"messages": [{"role": "user", "content": "no answer"}]}])
        await inference_pb2_grpc.InferenceStub(inference).CreateDeployment(inference_pb2.CreateDeploymentRequest(
            name="acme-support", model_version=OTHER), metadata=call_metadata())
        stub = evaluation_pb2_grpc.EvaluationStub(evaluation)
        started = await stub.RunEvaluation(evaluation_pb2.RunEvaluationRequest(
            candidate=TINY_MODEL_ID, file_id=file_id, deployment="acme-support"), metadata=call_metadata())
        done = await _finished(stub, started.evaluation.id)
        # For a deployment, a run that could not finish still announces itself: no verdict, and why.
        runtime = _platform.evaluation.runtime
        async with runtime.db.transaction() as session:
            [payload] = (await session.execute(sa.select(runtime.tables.outbox.c.payload))).scalars().all()
        announced = events_pb2.Envelope.FromString(payload).evaluation_completed
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.RunEvaluation(evaluation_pb2.RunEvaluationRequest(candidate="gpt-9", file_id=file_id),
                                     metadata=call_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as unknown_baseline:
            await stub.RunEvaluation(evaluation_pb2.RunEvaluationRequest(
                candidate=TINY_MODEL_ID, baseline="ft:tiny-llama:other:x:ftjob-1", file_id=file_id),
                metadata=call_metadata())
    assert done.status == "failed" and done.error_code == "invalid_examples"
    assert f"file {file_id}, line 2: messages must end with the assistant's answer" in done.error_message
    assert (announced.evaluation_id, announced.passed, announced.deployment) == (done.id, False, "acme-support")
    assert announced.error.startswith("invalid_examples: ") and not announced.rules
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and error_param(unknown.value) == "candidate"
    assert "gpt-9" in unknown.value.details()
    assert error_param(unknown_baseline.value) == "baseline"


async def test_a_finished_training_job_for_a_deployment_is_evaluated_once_on_its_held_out_split(
        tmp_path, database_url, nats_url, tiny_model_dir, other_model_dir):
    """`training.completed` with a deployment (from the job's metadata) queues one evaluation of
    the new version against the deployment's production version, on the job's validation split."""
    import random

    from services.shared.bus import new_envelope
    from services.shared.subjects import TRAINING_COMPLETED

    rng = random.Random(0)
    async with _platform(tmp_path, database_url, nats_url, tiny_model_dir, other_model_dir, answer_tokens=6) as (
            dataprep, inference, evaluation):
        stub = inference_pb2_grpc.InferenceStub(inference)
        questions = [" ".join(rng.sample(WORDS, 6)) + "?" for _ in range(60)]  # data-prep drops near-duplicates
        answers = await asyncio.gather(*(stub.Generate(inference_pb2.GenerateRequest(
            model=TINY_MODEL_ID, max_tokens=6, messages=[common_pb2.ChatMessage(role="user", content=question)]),
            metadata=call_metadata()) for question in questions))
        lines = [{"messages": [{"role": "user", "content": question},
                               {"role": "assistant", "content": answer.text.strip() or "."}]}
                 for question, answer in zip(questions, answers, strict=True)]
        file_id = await _upload(dataprep, lines)
        prepared = await dataprep_pb2_grpc.DataPrepStub(dataprep).PrepareDataset(dataprep_pb2.PrepareDatasetRequest(
            file_id=file_id, options=dataprep_pb2.PrepareOptions(base_model=TINY_MODEL_ID, validation_fraction=0.5,
                                                                anonymize_pii=False)), metadata=call_metadata())
        for _ in range(300):
            dataset = (await dataprep_pb2_grpc.DataPrepStub(dataprep).GetDataset(dataprep_pb2.GetDatasetRequest(
                dataset_id=prepared.dataset.id), metadata=call_metadata())).dataset
            if dataset.status != "processing":
                break
            await asyncio.sleep(0.1)
        assert dataset.status == "ready" and dataset.validation_examples >= 20, dataset.error
        await stub.CreateDeployment(inference_pb2.CreateDeploymentRequest(name="acme-support", model_version=OTHER),
                                    metadata=call_metadata())
        bus = _platform.evaluation.runtime.bus
        for _ in range(2):  # delivered twice (a retry): evaluated once
            await bus.publish(new_envelope(TRAINING_COMPLETED, events_pb2.TrainingCompleted(
                job_id="ftjob-1", model_version=TINY_MODEL_ID, base_model=TINY_MODEL_ID, deployment="acme-support",
                dataset_id=dataset.id, dataset_split="validation"), source="training", tenant="acme"))
        await bus.publish(new_envelope(TRAINING_COMPLETED, events_pb2.TrainingCompleted(
            job_id="ftjob-2", model_version=TINY_MODEL_ID, base_model=TINY_MODEL_ID, dataset_id=dataset.id),
            source="training", tenant="acme"))  # no deployment: not evaluated
        evaluations = evaluation_pb2_grpc.EvaluationStub(evaluation)
        for _ in range(300):
            listed = (await evaluations.ListEvaluations(evaluation_pb2.ListEvaluationsRequest(),
                                                        metadata=call_metadata())).evaluations
            if listed and listed[0].status in ("completed", "failed"):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        listed = (await evaluations.ListEvaluations(evaluation_pb2.ListEvaluationsRequest(),
                                                    metadata=call_metadata())).evaluations
        done = await _finished(evaluations, listed[0].id)
    assert len(listed) == 1
    assert done.status == "completed", done.error_message
    assert (done.candidate, done.baseline, done.deployment) == (TINY_MODEL_ID, OTHER, "acme-support")
    assert (done.dataset_id, done.dataset_split) == (dataset.id, "validation")
    assert len(done.report["examples"]) == dataset.validation_examples and done.passed, done.reason


async def test_the_human_review_export_is_blind_and_its_ratings_come_back_per_model(
        tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir):
    import csv
    import io

    async with _platform(tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir) as (
            dataprep, inference, evaluation):
        file_id = await _upload(dataprep, await _held_out(inference))
        stub = evaluation_pb2_grpc.EvaluationStub(evaluation)
        started = await stub.RunEvaluation(evaluation_pb2.RunEvaluationRequest(
            candidate=TINY_MODEL_ID, baseline=OTHER, file_id=file_id, max_tokens=6), metadata=call_metadata())
        done = await _finished(stub, started.evaluation.id)
        exported = await stub.ExportHumanReview(evaluation_pb2.ExportHumanReviewRequest(
            evaluation_id=done.id, size=12, seed=1), metadata=call_metadata())
        text = exported.content.decode()
        rows = list(csv.DictReader(io.StringIO(text)))
        # The experts' verdict: the answer that is the reference is right, the other wrong.
        for row in rows:
            for letter in "AB":
                right = row[f"answer_{letter}"] == row["reference"]
                row[f"correct_{letter}"], row[f"helpful_{letter}"] = ("yes", "5") if right else ("no", "1")
                row[f"would_trust_{letter}"] = "yes" if right else "no"
            row["preferred"] = "A" if row["answer_A"] == row["reference"] else "B"
        rows[-1] = {**rows[-1], **{c: "" for c in rows[-1] if c.split("_")[0] in ("correct", "helpful", "would",
                                                                                   "preferred")}}  # left unrated
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        bad = buffer.getvalue().replace(",5,", ",6,", 1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ImportHumanReview(evaluation_pb2.ImportHumanReviewRequest(
                evaluation_id=done.id, review_id=exported.review_id, format="csv", content=bad.encode()),
                metadata=call_metadata())
        before = (await stub.GetEvaluation(evaluation_pb2.GetEvaluationRequest(evaluation_id=done.id),
                                           metadata=call_metadata())).evaluation
        imported = await stub.ImportHumanReview(evaluation_pb2.ImportHumanReviewRequest(
            evaluation_id=done.id, review_id=exported.review_id, format="csv", content=buffer.getvalue().encode()),
            metadata=call_metadata())
        after = (await stub.GetEvaluation(evaluation_pb2.GetEvaluationRequest(evaluation_id=done.id),
                                          metadata=call_metadata())).evaluation
        as_jsonl = await stub.ExportHumanReview(evaluation_pb2.ExportHumanReviewRequest(
            evaluation_id=done.id, size=3, format="jsonl"), metadata=call_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as stranger:
            await stub.ImportHumanReview(evaluation_pb2.ImportHumanReviewRequest(
                evaluation_id=done.id, review_id=as_jsonl.review_id, format="jsonl",
                content=b'{"item": "item-0000", "ratings": {}}\n'), metadata=call_metadata())
    assert exported.items == 12 and len(rows) == 12
    assert TINY_MODEL_ID not in text and OTHER not in text  # blind
    candidate_first = [row["answer_A"] == row["reference"] for row in rows]
    assert any(candidate_first) and not all(candidate_first)  # shuffled per item
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(r"line \d+, helpful_[AB]: .6. is not a number from 1 to 5", refused.value.details())
    assert not before.human.fields  # the refused file stored nothing
    summary = json_format.MessageToDict(imported.summary)
    assert imported.rated == 11 and summary["rated"] == 11
    mine, theirs = summary["models"][TINY_MODEL_ID], summary["models"][OTHER]
    assert (mine["correct"], mine["helpful"], mine["would_trust"], mine["preferred"]) == (1.0, 5.0, 1.0, 1.0)
    assert (theirs["correct"], theirs["preferred"]) == (0.0, 0.0)
    assert mine["exact_match"] == 1.0 and mine["metric_agrees_with_correct"] == 1.0
    assert after.human["models"][TINY_MODEL_ID]["correct"] == 1.0
    first = json.loads(as_jsonl.content.decode().splitlines()[0])
    assert set(first["answers"]) == {"A", "B"} and first["ratings"]["A"] == {"correct": None, "helpful": None,
                                                                              "would_trust": None}
    assert stranger.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not in this review" in stranger.value.details()


async def test_a_fine_tuned_candidate_is_judged_against_its_base_with_what_its_training_cost(
        tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir):
    """The candidate's base model comes from the registry, and the cost report from its job."""
    from services.shared.models import ModelStore
    from services.shared.settings import Settings
    from services.training import store as training_store
    from services.training.jobs import JobSpec
    from services.training.trainer import TrainConfig, Trainer

    spec = JobSpec(model=TINY_MODEL_ID, training_file="file-t")
    models = ModelStore(Settings(data_dir=tmp_path, base_models={TINY_MODEL_ID: tiny_model_dir}))
    examples = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
                for i in range(8)]
    trainer = Trainer(TrainConfig(n_epochs=1, batch_size=4, bf16=False),
                      lambda dtype: models.load(TINY_MODEL_ID, dtype), examples, output_dir=tmp_path / "run",
                      base_model_id=TINY_MODEL_ID)
    trainer.setup()
    adapter = trainer.train().adapter_dir
    job_id = "ftjob-0123456789abcdef01234567"
    model_id = f"ft:{TINY_MODEL_ID}:acme:x:{job_id}"
    async with _platform(tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir,
                         training_price_per_1k_tokens=2.0) as (dataprep, inference, evaluation):
        async with _platform.training.runtime.db.transaction() as session:
            await training_store.add_job(session, training_store.JobRecord(
                id=job_id, tenant="acme", status="succeeded", model=TINY_MODEL_ID, training_file="file-t",
                validation_file="", training_dataset="ds-t", validation_dataset="ds-t", hyperparameters=json.dumps({"requested": spec.hyperparameters_dict()}),
                method=json.dumps(spec.method_dict()), suffix="x", seed=0, metadata="{}", fine_tuned_model=model_id,
                trained_tokens=1500, error_code="", error_message="", error_param="", created_at=1, finished_at=2,
                estimated_finish=None, idempotency_key=None, attempts=1))
            await training_store.add_model(session, id=model_id, tenant="acme", base_model=TINY_MODEL_ID,
                                           job_id=job_id, path=str(adapter),
                                           lineage=json.dumps({"base_model": TINY_MODEL_ID}))
        file_id = await _upload(dataprep, await _held_out(inference))
        stub = evaluation_pb2_grpc.EvaluationStub(evaluation)
        started = await stub.RunEvaluation(evaluation_pb2.RunEvaluationRequest(
            candidate=model_id, file_id=file_id, max_tokens=6), metadata=call_metadata())
        done = await _finished(stub, started.evaluation.id)
    assert done.status == "completed", done.error_message
    assert (done.base_model, done.baseline) == (TINY_MODEL_ID, TINY_MODEL_ID)
    training = done.report["cost"]["training"]
    assert (training["job_id"], training["trained_tokens"], training["cost_usd"]) == (job_id, 1500, 3.0)
    assert set(done.report["cost"]["serving"]) == {TINY_MODEL_ID, model_id}


def _fake_judge(messages: list[dict], model: str) -> str:
    """The FAKE judge's rule: an answer is correct when it is the reference, word for word."""
    prompt = messages[-1]["content"]
    reference = prompt.split("Reference answer:\n")[1].split("\n\nAnswer to grade:\n")[0]
    answer = prompt.split("Answer to grade:\n")[1].split("\n\nReply with one JSON object")[0]
    right = answer == reference
    return json.dumps({"correct": right, "helpful": 5 if right else 2, "would_trust": right})


async def test_a_judge_model_grades_the_answers_and_its_agreement_with_experts_is_reported(
        tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir):
    """The judge is a FAKE OpenAI-compatible server (a hosted judge cannot run here) on real HTTP."""
    import csv
    import io

    from tests.fixtures.fake_openai import fake_openai_server

    with fake_openai_server(_fake_judge) as judge_url:
        async with _platform(tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir,
                             judge_base_url=judge_url, judge_model="teacher-1", judge_api_key="teacher-key") as (
                dataprep, inference, evaluation):
            file_id = await _upload(dataprep, await _held_out(inference))
            stub = evaluation_pb2_grpc.EvaluationStub(evaluation)
            started = await stub.RunEvaluation(evaluation_pb2.RunEvaluationRequest(
                candidate=TINY_MODEL_ID, baseline=OTHER, file_id=file_id, max_tokens=6, judge=True),
                metadata=call_metadata())
            done = await _finished(stub, started.evaluation.id)
            exported = await stub.ExportHumanReview(evaluation_pb2.ExportHumanReviewRequest(
                evaluation_id=done.id, size=6), metadata=call_metadata())
            rows = list(csv.DictReader(io.StringIO(exported.content.decode())))
            for row in rows:  # the experts agree with the judge on the candidate, and disagree on production
                for letter in "AB":
                    row[f"correct_{letter}"] = "yes"
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            imported = await stub.ImportHumanReview(evaluation_pb2.ImportHumanReviewRequest(
                evaluation_id=done.id, review_id=exported.review_id, format="csv", content=buffer.getvalue().encode()),
                metadata=call_metadata())
    assert done.status == "completed", done.error_message
    judged = json_format.MessageToDict(done.report)["judge"]
    assert judged[TINY_MODEL_ID]["correct"] == 1.0 and judged[TINY_MODEL_ID]["helpful"] == 5.0
    assert judged[OTHER]["correct"] < 0.2
    assert judged[TINY_MODEL_ID]["graded"] == len(QUESTIONS) and judged[TINY_MODEL_ID]["unparsed"] == 0
    assert done.report["examples"][0]["judge"][TINY_MODEL_ID]["correct"] is True
    summary = json_format.MessageToDict(imported.summary)["models"]
    assert summary[TINY_MODEL_ID]["judge_agrees_with_correct"] == 1.0
    assert summary[OTHER]["judge_agrees_with_correct"] < 0.5


async def test_asking_for_a_judge_that_is_not_configured_is_refused(tmp_path, database_url, nats_url):
    settings = service_settings(EVALUATION, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url)
    async with running(EVALUATION, settings) as (_service, channel):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await evaluation_pb2_grpc.EvaluationStub(channel).RunEvaluation(evaluation_pb2.RunEvaluationRequest(
                candidate=TINY_MODEL_ID, file_id="file-x", judge=True), metadata=call_metadata())
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and error_param(refused.value) == "judge"


async def test_a_deployments_gate_policy_applies_to_its_evaluations(
        tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir):
    async with _platform(tmp_path, sqlite_url, nats_url, tiny_model_dir, other_model_dir) as (
            dataprep, inference, evaluation):
        file_id = await _upload(dataprep, await _held_out(inference))
        stub = evaluation_pb2_grpc.EvaluationStub(evaluation)
        default = await stub.GetGatePolicy(evaluation_pb2.GetGatePolicyRequest(deployment="strict"),
                                           metadata=call_metadata())
        stored = await stub.SetGatePolicy(evaluation_pb2.SetGatePolicyRequest(
            deployment="strict", policy_json='{"min_examples": 100}'), metadata=call_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetGatePolicy(evaluation_pb2.SetGatePolicyRequest(
                deployment="strict", policy_json='{"max_slice_drop": -1}'), metadata=call_metadata())
        other_tenant = await stub.GetGatePolicy(evaluation_pb2.GetGatePolicyRequest(deployment="strict"),
                                                metadata=call_metadata("other"))
        started = await stub.RunEvaluation(evaluation_pb2.RunEvaluationRequest(
            candidate=TINY_MODEL_ID, baseline=OTHER, deployment="strict", file_id=file_id, max_tokens=6),
            metadata=call_metadata())
        done = await _finished(stub, started.evaluation.id)
    assert not default.configured and json.loads(default.policy_json)["min_examples"] == 20
    assert stored.configured and json.loads(stored.policy_json)["min_examples"] == 100
    assert json.loads(stored.policy_json)["min_ratio"] == 1.2  # the rest keeps its defaults
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_param(refused.value) == "policy"
    assert not other_tenant.configured
    assert done.status == "completed" and not done.passed  # it would pass the default gate
    assert [rule["name"] for rule in done.report["verdict"]["rules"] if not rule["passed"]] == ["min_examples"]
    assert done.report["policy"]["min_examples"] == 100
