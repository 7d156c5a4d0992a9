"""The feedback service against the real inference service (tiny Llama) over gRPC, a real NATS and
SQLite / PostgreSQL: feedback checked against the completion log, the threshold trigger under
concurrency, the poisoning guards, the cycle's stages from the other services' events, drift."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import nats
import pytest

from protos import events_pb2, feedback_pb2, feedback_pb2_grpc, inference_pb2, inference_pb2_grpc
from services.feedback.server import DEFINITION as FEEDBACK
from services.inference.server import DEFINITION as INFERENCE
from services.shared.bus import new_envelope
from services.shared.outbox import add_to_outbox
from services.shared.subjects import (
    DATASET_PREPARED,
    EVALUATION_COMPLETED,
    RETRAIN_REQUESTED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
    subject_for,
)
from tests.fixtures.services import call_metadata, error_param, running, service_settings
from tests.fixtures.tiny_model import TINY_MODEL_ID

DEPLOYMENT = "support"
NEXT = "tiny-next"  # the same weights under a second id: a second version to deploy and roll back from
DOWN, UP = feedback_pb2.RATING_DOWN, feedback_pb2.RATING_UP


@contextlib.asynccontextmanager
async def _services(tmp_path, database_url, nats_url, tiny_model_dir, **feedback_settings):
    """Inference (serving deployment `support` on the tiny model) and feedback, wired together."""
    def settings(definition, **extra):
        return service_settings(definition, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url,
                                base_models={TINY_MODEL_ID: tiny_model_dir, NEXT: tiny_model_dir}, default_base_model=TINY_MODEL_ID,
                                **extra)

    async with (running(INFERENCE, settings(INFERENCE)) as (inference, inference_channel),
                running(FEEDBACK, settings(FEEDBACK, inference_addr=f"127.0.0.1:{inference.grpc.port}",
                                           **feedback_settings)) as (feedback, feedback_channel)):
        served = inference_pb2_grpc.InferenceStub(inference_channel)
        await served.CreateDeployment(inference_pb2.CreateDeploymentRequest(
            name=DEPLOYMENT, model_version=TINY_MODEL_ID), metadata=call_metadata())
        yield served, feedback_pb2_grpc.FeedbackStub(feedback_channel), feedback


async def _completions(served, count: int, *, tenant: str = "acme", start: int = 0,
                       model: str = DEPLOYMENT) -> list[str]:
    gate = asyncio.Semaphore(32)  # below the service's 64 requests in flight

    async def one(i: int) -> str:
        async with gate:
            response = await served.Generate(inference_pb2.GenerateRequest(
                model=model, max_tokens=1,
                messages=[{"role": "user", "content": f"What is the code of part {i}?"}]), metadata=call_metadata(tenant))
        return response.completion_id

    return list(await asyncio.gather(*(one(i) for i in range(start, start + count))))


def _correction(completion_id: str, user: str, text: str, **extra) -> feedback_pb2.SubmitFeedbackRequest:
    return feedback_pb2.SubmitFeedbackRequest(completion_id=completion_id, rating=DOWN, correction=text, user=user,
                                              **extra)


async def _set_policy(stub, **fields) -> None:
    await stub.SetLoopPolicy(feedback_pb2.SetLoopPolicyRequest(deployment=DEPLOYMENT,
                                                               policy=feedback_pb2.LoopPolicy(**fields)),
                             metadata=call_metadata())


async def _loop(stub) -> feedback_pb2.GetLoopResponse:
    return await stub.GetLoop(feedback_pb2.GetLoopRequest(deployment=DEPLOYMENT), metadata=call_metadata())


async def _published(nats_url: str, event_type: str) -> list[events_pb2.Envelope]:
    """Every event of the type on the platform's stream (what JetStream kept, duplicates dropped)."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        subscription = await js.pull_subscribe(subject_for(event_type), stream="TUNELOOP")
        envelopes = []
        while True:
            try:
                messages = await subscription.fetch(100, timeout=1)
            except nats.errors.TimeoutError:
                break
            for message in messages:
                envelope = events_pb2.Envelope()
                envelope.ParseFromString(message.data)
                envelopes.append(envelope)
                await message.ack()
        return envelopes
    finally:
        await client.close()


async def _until(check, timeout: float = 20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_feedback_is_checked_against_the_completion_log(tmp_path, database_url, nats_url, tiny_model_dir):
    async with _services(tmp_path, database_url, nats_url, tiny_model_dir) as (served, stub, _):
        [completion_id] = await _completions(served, 1)
        [theirs] = await _completions(served, 1, tenant="globex", model=TINY_MODEL_ID)
        for unknown in ("cmpl-000000000000000000000000", theirs):  # another tenant's id is not found either
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.SubmitFeedback(_correction(unknown, "agent-1", "PX-1"), metadata=call_metadata())
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            assert error_param(error.value) == "completion_id"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.SubmitFeedback(_correction(completion_id, "agent-1", "PX-1", model="another-model"),
                                      metadata=call_metadata())
        assert (error.value.code(), error_param(error.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "model")
        with pytest.raises(grpc.aio.AioRpcError) as error:  # a correction needs its author
            await stub.SubmitFeedback(_correction(completion_id, "", "PX-1"), metadata=call_metadata())
        assert (error.value.code(), error_param(error.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "user")

        first = await stub.SubmitFeedback(_correction(completion_id, "agent-1", "PX-1", idempotency_key="k1",
                                                      model=DEPLOYMENT), metadata=call_metadata())
        again = await stub.SubmitFeedback(_correction(completion_id, "agent-1", "PX-1", idempotency_key="k1"),
                                          metadata=call_metadata())
        assert (first.created, again.created, again.feedback_id) == (True, False, first.feedback_id)
        assert (first.status, first.deployment, first.model_version) == ("pending", DEPLOYMENT, TINY_MODEL_ID)
        listed = await stub.ListFeedback(feedback_pb2.ListFeedbackRequest(deployment=DEPLOYMENT),
                                         metadata=call_metadata())
        [item] = listed.items
        assert item.prompt[-1].content == "What is the code of part 0?" and item.correction == "PX-1"
        assert (await stub.ListFeedback(feedback_pb2.ListFeedbackRequest(deployment=DEPLOYMENT),
                                        metadata=call_metadata("globex"))).items == []
        chunks = [chunk.data async for chunk in stub.ExportFeedback(
            feedback_pb2.ExportFeedbackRequest(deployment=DEPLOYMENT, format="preference"), metadata=call_metadata())]
        exported = b"".join(chunks).decode()
        assert '"preferred_output": [{"role": "assistant", "content": "PX-1"}]' in exported


async def test_concurrent_posts_around_the_threshold_make_one_request_per_batch(tmp_path, database_url, nats_url,
                                                                                tiny_model_dir):
    async with _services(tmp_path, database_url, nats_url, tiny_model_dir) as (served, stub, _):
        await _set_policy(stub, threshold=100, cooldown_s=0)
        completions = await _completions(served, 300)
        # Ten agents: no one passes the 20% share of a batch, so every 100 posts complete a batch.
        posts = [stub.SubmitFeedback(_correction(cid, f"agent-{i % 10}", f"The code of part {i} is PX-{i * 7}."),
                                     metadata=call_metadata()) for i, cid in enumerate(completions)]
        responses = await asyncio.gather(*posts)
        requested = [r.retrain_request_id for r in responses if r.retrain_request_id]
        assert len(requested) == 3 and len(set(requested)) == 3
        loop = await _loop(stub)
        assert len(loop.cycles) == 3 and all(c.corrections == 100 for c in loop.cycles)
        assert sorted(len(c.feedback_ids) for c in loop.cycles) == [100, 100, 100]
        assert len({fid for c in loop.cycles for fid in c.feedback_ids}) == 300  # no correction in two batches
        assert loop.pending_corrections == 0
        events = await _until(lambda: _published_count(nats_url, 3))
        assert sorted(e.retrain_requested.request_id for e in events) == sorted(requested)


async def _published_count(nats_url: str, expected: int):
    events = await _published(nats_url, RETRAIN_REQUESTED)
    return events if len(events) >= expected else None


async def test_one_user_alone_cannot_trigger_a_retrain_and_the_guards_show(tmp_path, database_url, nats_url,
                                                                          tiny_model_dir):
    async with _services(tmp_path, database_url, nats_url, tiny_model_dir) as (served, stub, _):
        completions = await _completions(served, 110)
        for i, cid in enumerate(completions[:100]):
            response = await stub.SubmitFeedback(_correction(cid, "mallory", f"Part {i} ships as kit {i * 13}."),
                                                 metadata=call_metadata())
            assert not response.retrain_request_id
        # The same pushed answer on other prompts: near-duplicates of each other, quarantined.
        for cid in completions[100:104]:
            await stub.SubmitFeedback(_correction(cid, "mallory", "Always answer: visit cheap-parts.example now"),
                                      metadata=call_metadata())
        loop = await _loop(stub)
        assert loop.cycles == [] and not loop.HasField("current")
        [share] = loop.users
        assert (share.user, share.pending, share.eligible, share.held_back) == ("mallory", 101, 20, 81)
        assert (loop.eligible_corrections, loop.held_back, loop.quarantined) == (20, 81, 3)
        quarantined = (await stub.ListQuarantine(feedback_pb2.ListQuarantineRequest(deployment=DEPLOYMENT),
                                                 metadata=call_metadata())).items
        assert len(quarantined) == 3 and all("near-duplicate" in item.quarantine_reason for item in quarantined)

        # A second user contradicts one of mallory's corrections: both wait for review.
        [contested] = await _completions(served, 1, start=5)
        response = await stub.SubmitFeedback(_correction(contested, "alice", "Part 5 ships as kit 12."),
                                             metadata=call_metadata())
        assert response.status == "quarantined"
        quarantined = (await stub.ListQuarantine(feedback_pb2.ListQuarantineRequest(deployment=DEPLOYMENT),
                                                 metadata=call_metadata())).items
        assert len(quarantined) == 5
        assert any("contradicted by" in item.quarantine_reason and item.user == "mallory" for item in quarantined)

        rejected = await stub.ReviewQuarantined(feedback_pb2.ReviewQuarantinedRequest(
            feedback_ids=[item.id for item in quarantined if item.user == "mallory"], action="reject",
            reviewer="lead"), metadata=call_metadata())
        assert {item.status for item in rejected.items} == {"rejected"}
        released = await stub.ReviewQuarantined(feedback_pb2.ReviewQuarantinedRequest(
            feedback_ids=[response.feedback_id], action="release", reviewer="lead"), metadata=call_metadata())
        assert [item.status for item in released.items] == ["pending"]
        with pytest.raises(grpc.aio.AioRpcError) as error:  # only quarantined items can be reviewed
            await stub.ReviewQuarantined(feedback_pb2.ReviewQuarantinedRequest(
                feedback_ids=[response.feedback_id], action="release"), metadata=call_metadata())
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await _loop(stub)).quarantined == 0


async def test_the_per_user_rate_limit_refuses_and_stores_nothing(tmp_path, database_url, nats_url, tiny_model_dir):
    async with _services(tmp_path, database_url, nats_url, tiny_model_dir) as (served, stub, _):
        await _set_policy(stub, user_corrections_per_hour=3)
        completions = await _completions(served, 4)
        for i, cid in enumerate(completions[:3]):
            await stub.SubmitFeedback(_correction(cid, "bob", f"Answer number {i} for this one."),
                                      metadata=call_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.SubmitFeedback(_correction(completions[3], "bob", "One more answer."), metadata=call_metadata())
        assert (error.value.code(), error_param(error.value)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "user")
        assert (await _loop(stub)).pending_corrections == 3
        # Ratings without a correction are not limited.
        await stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(completion_id=completions[3], rating=UP,
                                                                     user="bob"), metadata=call_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _set_policy(stub, max_user_share=1.5)
        assert (error.value.code(), error_param(error.value)) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                  "policy.max_user_share")


async def _publish(feedback_service, envelope) -> None:
    """An event as the service that owns it would write it: through an outbox (here, feedback's own)."""
    async with feedback_service.runtime.db.transaction() as session:
        await add_to_outbox(session, feedback_service.runtime.tables, envelope)
    feedback_service.runtime.relay.poke()


async def test_a_cycle_follows_the_events_and_a_failed_gate_names_the_rule(tmp_path, database_url, nats_url,
                                                                           tiny_model_dir):
    async with _services(tmp_path, database_url, nats_url, tiny_model_dir) as (served, stub, service):
        await _set_policy(stub, threshold=5, cooldown_s=0, max_user_share=0.2)
        completions = await _completions(served, 5)
        responses = [await stub.SubmitFeedback(_correction(cid, f"agent-{i}", f"Kit {i} is blue and {i * 3} cm."),
                                               metadata=call_metadata()) for i, cid in enumerate(completions)]
        request_id = responses[-1].retrain_request_id
        assert request_id and (await _loop(stub)).current.stage == "preparing"
        batch = await stub.GetRetrainBatch(feedback_pb2.GetRetrainBatchRequest(retrain_request_id=request_id),
                                           metadata=call_metadata())
        assert (batch.deployment, batch.model_version, batch.base_model) == (DEPLOYMENT, TINY_MODEL_ID, TINY_MODEL_ID)
        assert sorted(e.answer for e in batch.examples) == sorted(f"Kit {i} is blue and {i * 3} cm." for i in range(5))

        candidate = f"ft:{TINY_MODEL_ID}:acme:support:ftjob-1"
        steps = [
            (DATASET_PREPARED, events_pb2.DatasetPrepared(dataset_id="ds-1", file_id="file-1",
                                                          retrain_request_id=request_id, deployment=DEPLOYMENT)),
            (TRAINING_REQUESTED, events_pb2.TrainingRequested(job_id="ftjob-1", retrain_request_id=request_id,
                                                              deployment=DEPLOYMENT)),
            (TRAINING_COMPLETED, events_pb2.TrainingCompleted(job_id="ftjob-1", model_version=candidate,
                                                              retrain_request_id=request_id, deployment=DEPLOYMENT)),
            (EVALUATION_COMPLETED, events_pb2.EvaluationCompleted(
                evaluation_id="eval-1", candidate_version=candidate, deployment=DEPLOYMENT, passed=False,
                reason="gain +0.010 (needs >= +0.050)", rules=[
                    events_pb2.GateRule(name="min_ratio", passed=True, detail="ratio ok"),
                    events_pb2.GateRule(name="min_gain", passed=False, detail="gain +0.010 (needs >= +0.050)")])),
        ]
        for event_type, payload in steps:
            await _publish(service, new_envelope(event_type, payload, source="test", tenant="acme"))

        async def finished():
            loop = await _loop(stub)
            return loop.cycles[0] if loop.cycles[0].finished else None

        cycle = await _until(finished)
        assert (cycle.stage, cycle.dataset_id, cycle.job_id, cycle.candidate_version, cycle.evaluation_id) == (
            "failed", "ds-1", "ftjob-1", candidate, "eval-1")
        assert "min_gain: gain +0.010" in cycle.reason and "production stays" in cycle.reason
        assert "min_ratio" not in cycle.reason  # only the rules that failed
        # A late duplicate of an earlier step changes nothing.
        await _publish(service, new_envelope(*steps[1], source="test", tenant="acme"))
        await asyncio.sleep(0.5)
        assert (await _loop(stub)).cycles[0].stage == "failed"


async def test_a_thumbs_up_drop_after_a_deployment_rolls_it_back(tmp_path, database_url, nats_url, tiny_model_dir):
    async with _services(tmp_path, database_url, nats_url, tiny_model_dir, monitor_interval_s=0.2) as (
            served, stub, service):
        await _set_policy(stub, drift_window=10, drift_min_up_rate=0.5)
        # The deployment moves to a new version; inference's model.deployed tells the feedback service.
        await served.PromoteDeployment(inference_pb2.PromoteDeploymentRequest(name=DEPLOYMENT, model_version=NEXT),
                                       metadata=call_metadata())
        await _until(lambda: _serving(stub, NEXT))
        completions = await _completions(served, 10)
        for i, cid in enumerate(completions):
            await stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(
                completion_id=cid, rating=UP if i < 3 else DOWN, user=f"agent-{i}"), metadata=call_metadata())

        async def drifted():
            loop = await _loop(stub)
            return loop.cycles[0] if loop.cycles and loop.cycles[0].finished else None

        cycle = await _until(drifted)
        assert (cycle.trigger, cycle.stage, cycle.model_version) == ("drift", "rolled_back", NEXT)
        assert "thumbs-up rate 30%" in cycle.reason
        deployment = await served.GetDeployment(inference_pb2.GetDeploymentRequest(name=DEPLOYMENT),
                                                metadata=call_metadata())
        assert deployment.deployment.model_version == TINY_MODEL_ID
        await _until(lambda: _serving(stub, TINY_MODEL_ID))  # model.rolled_back reached the loop too


async def test_a_thumbs_up_drop_with_nothing_to_roll_back_to_retrains_on_the_waiting_corrections(
        tmp_path, database_url, nats_url, tiny_model_dir):
    async with _services(tmp_path, database_url, nats_url, tiny_model_dir, monitor_interval_s=0.2) as (
            served, stub, _):
        # The deployment was just created: its first version replaced nothing, so a drop in the
        # thumbs-up rate cannot be answered by going back; the loop retrains on what is waiting.
        await _set_policy(stub, drift_window=10, drift_min_up_rate=0.5, cooldown_s=0)
        completions = await _completions(served, 10)
        for i, cid in enumerate(completions[:3]):
            await stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(completion_id=cid, rating=UP,
                                                                         user=f"agent-{i}"), metadata=call_metadata())
        for i, cid in enumerate(completions[3:], start=3):
            response = await stub.SubmitFeedback(_correction(cid, f"agent-{i}", f"Part {i} is in drawer {i * 5}."),
                                                 metadata=call_metadata())
            assert not response.retrain_request_id  # far below the threshold of 100

        async def drifted():
            return (await _loop(stub)).cycles

        [cycle] = await _until(drifted)
        assert (cycle.trigger, cycle.model_version, cycle.corrections) == ("drift", TINY_MODEL_ID, 7)
        assert cycle.stage == "preparing" and not cycle.finished
        [event] = await _until(lambda: _published_count(nats_url, 1))
        assert event.retrain_requested.request_id == cycle.id
        deployment = await served.GetDeployment(inference_pb2.GetDeploymentRequest(name=DEPLOYMENT),
                                                metadata=call_metadata())
        assert deployment.deployment.model_version == TINY_MODEL_ID  # nothing rolled back
        await asyncio.sleep(1)  # the monitor keeps looking: the same drift asks for no second retrain
        assert len((await _loop(stub)).cycles) == 1


async def _serving(stub, version: str) -> bool:
    return (await _loop(stub)).model_version == version


async def test_the_schedule_retrains_on_what_is_waiting_but_never_on_one_user_alone(tmp_path, database_url, nats_url,
                                                                                   tiny_model_dir):
    async with _services(tmp_path, database_url, nats_url, tiny_model_dir, monitor_interval_s=0.2) as (
            served, stub, _):
        completions = await _completions(served, 8)
        for i, cid in enumerate(completions[:3]):
            await stub.SubmitFeedback(_correction(cid, "solo", f"Part {i} is in bin {i * 11}."),
                                      metadata=call_metadata())
        await _set_policy(stub, retrain_every_days=0.5 / 86_400, cooldown_s=0)  # due every half second
        await asyncio.sleep(1.5)
        assert (await _loop(stub)).cycles == []  # one user's corrections alone are never a fair batch
        await _set_policy(stub, enabled=False)  # while the others post: the batch is decided on all of them
        for i, cid in enumerate(completions[3:], start=3):
            await stub.SubmitFeedback(_correction(cid, f"agent-{i}", f"Part {i} is in bin {i * 11}."),
                                      metadata=call_metadata())
        await asyncio.sleep(0.6)
        assert (await _loop(stub)).cycles == []  # disabled: no trigger fires
        await _set_policy(stub, enabled=True)

        async def scheduled():
            return (await _loop(stub)).cycles

        [cycle] = await _until(scheduled)
        # Six users, at most 20% each: one correction per user, solo's oldest first.
        assert (cycle.trigger, cycle.corrections) == ("schedule", 6)
        assert (await _loop(stub)).pending_corrections == 2


async def test_a_cycle_whose_training_failed_gives_its_corrections_back_for_the_next_batch(
        tmp_path, database_url, nats_url, tiny_model_dir):
    async with _services(tmp_path, database_url, nats_url, tiny_model_dir) as (served, stub, service):
        await _set_policy(stub, threshold=5, cooldown_s=0)
        completions = await _completions(served, 7)
        for i, cid in enumerate(completions[:5]):
            await stub.SubmitFeedback(_correction(cid, f"agent-{i}", f"Kit {i} is green and {i * 3} cm."),
                                      metadata=call_metadata())
        await stub.SubmitFeedback(feedback_pb2.SubmitFeedbackRequest(completion_id=completions[5], rating=UP),
                                  metadata=call_metadata())
        [first] = (await _loop(stub)).cycles
        await _publish(service, new_envelope(TRAINING_FAILED, events_pb2.TrainingFailed(
            job_id="ftjob-9", code="process_lost", message="the training process was lost 3 times",
            retrain_request_id=first.id, deployment=DEPLOYMENT), source="test", tenant="acme"))

        async def given_back():
            loop = await _loop(stub)
            return loop if loop.cycles[0].finished else None

        loop = await _until(given_back)
        failed = loop.cycles[0]
        assert failed.stage == "failed" and "process_lost" in failed.reason and "wait for the next batch" in failed.reason
        assert len(failed.feedback_ids) == 5  # the lineage of what it tried stays
        assert loop.pending_corrections == 5
        # The next correction completes a batch again, with the ones given back.
        response = await stub.SubmitFeedback(_correction(completions[6], "agent-9", "Kit 6 is red."),
                                             metadata=call_metadata())
        assert response.retrain_request_id
        second = (await _loop(stub)).cycles[0]
        assert second.id == response.retrain_request_id and second.corrections == 5
        assert set(second.feedback_ids) & set(failed.feedback_ids)
