"""Deployments over gRPC: clients ask for a name, promotion, canary and rollback change which version
answers (checked through the completion log), events go out through the outbox, and a passed
evaluation puts a candidate on canary, then promotes it, by itself where the deployment says so."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
import sqlalchemy as sa

from protos import events_pb2, inference_pb2, inference_pb2_grpc
from services.inference import store
from services.inference.server import DEFINITION
from services.shared.bus import new_envelope
from services.shared.subjects import EVALUATION_COMPLETED, MODEL_DEPLOYED
from tests.fixtures.services import call_metadata, error_param, running, service_settings

OLD, NEW = "tiny-llama", "tiny-llama-b"  # two versions (the same weights under two ids)


@pytest.fixture
def settings(tmp_path, database_url, nats_url, tiny_model_dir):
    return service_settings(DEFINITION, tmp_path=tmp_path, database_url=database_url, nats_url=nats_url,
                            base_models={OLD: tiny_model_dir, NEW: tiny_model_dir})


def _ask(stub, model: str, user: str = "", tenant: str = "acme"):
    return stub.Generate(inference_pb2.GenerateRequest(model=model, prompt="Hello", max_tokens=1, user=user),
                         metadata=call_metadata(tenant))


async def _logged(service) -> list:
    async with service.runtime.db.transaction() as session:
        query = sa.select(store.completions).order_by(store.completions.c.created_at)
        return list((await session.execute(query)).mappings())


async def _events(service) -> list[str]:
    async with service.runtime.db.transaction() as session:
        outbox = service.runtime.tables.outbox
        return [row.event_type for row in await session.execute(sa.select(outbox.c.event_type))]


async def test_promote_canary_and_rollback_change_which_version_answers(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        created = (await stub.CreateDeployment(inference_pb2.CreateDeploymentRequest(name="acme-support",
                                                                                     model_version=OLD),
                                               metadata=call_metadata())).deployment
        assert (created.model_version, created.previous_version) == (OLD, "")
        assert (await _ask(stub, "acme-support")).model == OLD

        promoted = (await stub.PromoteDeployment(inference_pb2.PromoteDeploymentRequest(
            name="acme-support", model_version=NEW, reason="better"), metadata=call_metadata())).deployment
        assert (promoted.model_version, promoted.previous_version) == (NEW, OLD)
        assert (await _ask(stub, "acme-support")).model == NEW

        canary = (await stub.SetCanary(inference_pb2.SetCanaryRequest(name="acme-support", model_version=OLD,
                                                                      percent=50), metadata=call_metadata())).deployment
        assert (canary.canary_version, canary.canary_percent) == (OLD, 50)
        by_user = {}
        for user in [f"agent-{i}" for i in range(24)]:
            answers = {(await _ask(stub, "acme-support", user)).model for _ in range(3)}
            assert len(answers) == 1, f"{user} saw {answers}: the split is not sticky"
            by_user[user] = answers.pop()
        assert set(by_user.values()) == {OLD, NEW}

        rolled = (await stub.RollbackDeployment(inference_pb2.RollbackDeploymentRequest(
            name="acme-support", reason="thumbs down"), metadata=call_metadata())).deployment
        assert (rolled.model_version, rolled.previous_version, rolled.canary_version) == (OLD, "", "")
        assert {(await _ask(stub, "acme-support", f"agent-{i}")).model for i in range(6)} == {OLD}
        with pytest.raises(grpc.aio.AioRpcError) as nothing_left:
            await stub.RollbackDeployment(inference_pb2.RollbackDeploymentRequest(name="acme-support"),
                                          metadata=call_metadata())
        assert nothing_left.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        history = (await stub.GetDeployment(inference_pb2.GetDeploymentRequest(name="acme-support"),
                                            metadata=call_metadata())).deployment.history
        logged = await _logged(service)
        events = await _events(service)
    assert [c.action for c in history] == ["created", "promoted", "canary", "rolled_back"]
    assert history[1].reason == "better" and history[3].reason == "thumbs down"
    assert {(row["deployment"], row["model"]) for row in logged} == {("acme-support", OLD), ("acme-support", NEW)}
    assert events == ["model.deployed"] * 3 + ["model.rolled_back"]


async def test_a_hot_swap_during_a_burst_fails_no_request(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        await stub.CreateDeployment(inference_pb2.CreateDeploymentRequest(name="burst", model_version=OLD),
                                    metadata=call_metadata())

        async def swaps():
            for version in (NEW, OLD, NEW):
                await asyncio.sleep(0.05)
                await stub.PromoteDeployment(inference_pb2.PromoteDeploymentRequest(name="burst", model_version=version),
                                             metadata=call_metadata())

        replies, _ = await asyncio.gather(asyncio.gather(*(_ask(stub, "burst", f"u{i}") for i in range(50))), swaps())
        logged = await _logged(service)
    assert len(replies) == 50 and all(r.usage.completion_tokens == 1 for r in replies)
    assert len([row for row in logged if row["deployment"] == "burst"]) == 50


@pytest.mark.parametrize(("name", "version", "code", "param"), [
    ("Bad_Name", OLD, grpc.StatusCode.INVALID_ARGUMENT, "name"),
    (OLD, NEW, grpc.StatusCode.INVALID_ARGUMENT, "name"),  # a model id: ambiguous
    ("ok", "gpt-9", grpc.StatusCode.NOT_FOUND, "model"),
    ("ok", "ft:tiny-llama:acme:x:ftjob-0123456789abcdef01234567", grpc.StatusCode.UNAVAILABLE, None),
])
async def test_bad_deployments_are_refused_naming_the_field(settings, name, version, code, param):
    from tuneloop.nats_server import free_port

    configured = settings.model_copy(update={"training_addr": f"127.0.0.1:{free_port()}"})  # no registry running
    async with running(DEFINITION, configured) as (_service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateDeployment(inference_pb2.CreateDeploymentRequest(name=name, model_version=version),
                                        metadata=call_metadata())
        listed = await stub.ListDeployments(inference_pb2.ListDeploymentsRequest(), metadata=call_metadata())
    assert refused.value.code() == code
    if param:
        assert error_param(refused.value) == param
    assert list(listed.deployments) == []


async def test_deployments_belong_to_their_tenant(settings):
    async with running(DEFINITION, settings) as (_service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        await stub.CreateDeployment(inference_pb2.CreateDeploymentRequest(name="mine", model_version=OLD),
                                    metadata=call_metadata("acme"))
        with pytest.raises(grpc.aio.AioRpcError) as duplicate:
            await stub.CreateDeployment(inference_pb2.CreateDeploymentRequest(name="mine", model_version=NEW),
                                        metadata=call_metadata("acme"))
        for call in (_ask(stub, "mine", tenant="other"),
                     stub.GetDeployment(inference_pb2.GetDeploymentRequest(name="mine"), metadata=call_metadata("other"))):
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await call
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        deleted = await stub.DeleteDeployment(inference_pb2.DeleteDeploymentRequest(name="mine"),
                                              metadata=call_metadata("acme"))
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await _ask(stub, "mine")
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS and deleted.deleted
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def _evaluated(name: str, passed: bool, evaluation_id: str) -> events_pb2.Envelope:
    return new_envelope(EVALUATION_COMPLETED, events_pb2.EvaluationCompleted(
        evaluation_id=evaluation_id, candidate_version=NEW, baseline_version=OLD, deployment=name, passed=passed),
        source="evaluation", tenant="acme")


async def _create(stub, name: str, auto_promote: bool = True) -> None:
    await stub.CreateDeployment(inference_pb2.CreateDeploymentRequest(name=name, model_version=OLD,
                                                                      auto_promote=auto_promote),
                                metadata=call_metadata())


async def _deployment(stub, name: str) -> inference_pb2.Deployment:
    return (await stub.GetDeployment(inference_pb2.GetDeploymentRequest(name=name),
                                     metadata=call_metadata())).deployment


async def _until(stub, name: str, reached, seconds: float = 20) -> inference_pb2.Deployment:
    """The deployment once `reached(deployment)` holds, polled; the last one seen after `seconds`."""
    deadline = time.monotonic() + seconds
    while not reached(deployment := await _deployment(stub, name)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return deployment


async def _handled(service, *envelopes: events_pb2.Envelope) -> None:
    """Wait until the service's consumer has processed (committed) each of these events."""
    processed = service.runtime.tables.processed_events
    ids = {envelope.id for envelope in envelopes}
    for _ in range(200):
        async with service.runtime.db.transaction() as session:
            done = set((await session.execute(sa.select(processed.c.event_id)
                                              .where(processed.c.event_id.in_(ids)))).scalars())
        if done == ids:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"events {ids - done} were never handled")


async def _deployed(service, name: str) -> list[tuple[str, str, int]]:
    """(model version, previous version, traffic percent) of each model.deployed of `name` in the outbox."""
    async with service.runtime.db.transaction() as session:
        outbox = service.runtime.tables.outbox
        rows = await session.execute(sa.select(outbox.c.payload).where(outbox.c.event_type == MODEL_DEPLOYED)
                                     .order_by(outbox.c.created_at))
        events = [events_pb2.Envelope.FromString(payload).model_deployed for payload in rows.scalars()]
    return [(e.model_version, e.previous_version, e.traffic_percent) for e in events if e.deployment == name]


def _again(envelope: events_pb2.Envelope) -> events_pb2.Envelope:
    """The same event under a new envelope id: past the stream's de-duplication, to the handler itself."""
    again = events_pb2.Envelope()
    again.CopyFrom(envelope)
    again.id = uuid.uuid4().hex
    return again


async def test_a_passed_evaluation_starts_a_canary_that_is_promoted_when_its_time_is_up(settings):
    configured = settings.model_copy(update={"auto_canary_percent": 25, "auto_canary_s": 2,
                                             "canary_check_s": 0.2})
    async with running(DEFINITION, configured) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        await _create(stub, "auto")
        await _create(stub, "manual", auto_promote=False)
        failed, passed, elsewhere = (_evaluated("auto", False, "eval-1"), _evaluated("auto", True, "eval-2"),
                                     _evaluated("manual", True, "eval-3"))
        for envelope in (failed, passed, elsewhere):
            await service.runtime.bus.publish(envelope)
        canary = await _until(stub, "auto", lambda d: d.canary_version == NEW)
        redelivered = _again(passed)
        await service.runtime.bus.publish(passed)  # dropped by the stream: the same Nats-Msg-Id
        await service.runtime.bus.publish(redelivered)  # handled, and changes nothing
        await _handled(service, failed, passed, elsewhere, redelivered)
        promoted = await _until(stub, "auto", lambda d: d.model_version == NEW)
        after = _again(passed)
        await service.runtime.bus.publish(after)  # a redelivery after the promotion changes nothing either
        await _handled(service, after)
        final = await _deployment(stub, "auto")
        manual = await _deployment(stub, "manual")
        deployed = await _deployed(service, "auto")
    assert (canary.model_version, canary.canary_version, canary.canary_percent) == (OLD, NEW, 25)
    assert [(c.action, c.percent, c.reason) for c in canary.history] == [
        ("created", 100, ""), ("canary", 25, "evaluation eval-2 passed")]
    assert (promoted.model_version, promoted.previous_version, promoted.canary_version) == (NEW, OLD, "")
    assert [(c.action, c.reason) for c in final.history] == [
        ("created", ""), ("canary", "evaluation eval-2 passed"),
        ("promoted", "canary at 25% for 2s; evaluation eval-2 passed")]
    assert final.history[2].at - final.history[1].at >= 2
    assert deployed == [(OLD, "", 100), (NEW, OLD, 25), (NEW, OLD, 100)]
    assert (manual.model_version, manual.canary_version) == (OLD, "")
    assert [c.action for c in manual.history] == ["created"]


async def test_without_canary_time_a_passed_evaluation_promotes_at_once_a_failed_one_changes_nothing(settings):
    configured = settings.model_copy(update={"auto_canary_s": 0})
    async with running(DEFINITION, configured) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        await _create(stub, "auto")
        await _create(stub, "refused")
        passed, failed = _evaluated("auto", True, "eval-1"), _evaluated("refused", False, "eval-2")
        for envelope in (passed, failed, _again(passed)):
            await service.runtime.bus.publish(envelope)
        await _handled(service, passed, failed)
        promoted = await _until(stub, "auto", lambda d: d.model_version == NEW)
        refused = await _deployment(stub, "refused")
        deployed = await _deployed(service, "auto") + await _deployed(service, "refused")
    assert (promoted.model_version, promoted.canary_version) == (NEW, "")
    assert [(c.action, c.reason) for c in promoted.history] == [
        ("created", ""), ("promoted", "evaluation eval-1 passed")]
    assert (refused.model_version, refused.canary_version) == (OLD, "")
    assert [c.action for c in refused.history] == ["created"]
    assert deployed == [(OLD, "", 100), (NEW, OLD, 100), (OLD, "", 100)]


async def test_a_person_changing_the_canary_takes_it_over(settings):
    configured = settings.model_copy(update={"auto_canary_s": 1, "canary_check_s": 0.2})
    async with running(DEFINITION, configured) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        await _create(stub, "held")
        await service.runtime.bus.publish(_evaluated("held", True, "eval-1"))
        await _until(stub, "held", lambda d: d.canary_version == NEW)
        await stub.SetCanary(inference_pb2.SetCanaryRequest(name="held", model_version=NEW, percent=50),
                             metadata=call_metadata())
        await asyncio.sleep(2.5)  # past the canary's end, and several checks
        held = await _deployment(stub, "held")
    assert (held.model_version, held.canary_version, held.canary_percent) == (OLD, NEW, 50)
    assert [c.action for c in held.history] == ["created", "canary", "canary"]


async def test_two_processes_checking_at_once_promote_a_canary_once(settings, tmp_path):
    # The background checks sleep after their first pass; the test runs the checks that race.
    configured = settings.model_copy(update={"auto_canary_s": 1, "canary_check_s": 3600})
    other = configured.model_copy(update={"data_dir": tmp_path / "other"})
    async with running(DEFINITION, configured) as (first, channel), running(DEFINITION, other) as (second, _):
        stub = inference_pb2_grpc.InferenceStub(channel)
        await _create(stub, "shared")
        await first.runtime.bus.publish(_evaluated("shared", True, "eval-1"))
        await _until(stub, "shared", lambda d: d.canary_version == NEW)
        await asyncio.sleep(2.1)  # the canary's time is up
        await asyncio.gather(*(service.parts.servicer.deployments.promote_finished_canaries()
                               for service in (first, second, first, second)))
        shared = await _deployment(stub, "shared")
        deployed = await _deployed(first, "shared")
    assert (shared.model_version, [c.action for c in shared.history]) == (NEW, ["created", "canary", "promoted"])
    assert deployed == [(OLD, "", 100), (NEW, OLD, 10), (NEW, OLD, 100)]
