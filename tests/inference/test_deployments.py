"""Deployments over gRPC: clients ask for a name, promotion, canary and rollback change which version
answers (checked through the completion log), events go out through the outbox, and a passed
evaluation promotes a candidate by itself where the deployment says so."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import sqlalchemy as sa

from protos import events_pb2, inference_pb2, inference_pb2_grpc
from services.inference import store
from services.inference.server import DEFINITION
from services.shared.bus import new_envelope
from services.shared.subjects import EVALUATION_COMPLETED
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


async def test_a_passed_evaluation_promotes_the_candidate_where_the_deployment_says_so(settings):
    async with running(DEFINITION, settings) as (service, channel):
        stub = inference_pb2_grpc.InferenceStub(channel)
        for name, auto in (("auto", True), ("manual", False)):
            await stub.CreateDeployment(inference_pb2.CreateDeploymentRequest(name=name, model_version=OLD,
                                                                              auto_promote=auto),
                                        metadata=call_metadata())
        for name, passed in (("auto", False), ("auto", True), ("manual", True)):
            await service.runtime.bus.publish(new_envelope(
                EVALUATION_COMPLETED, events_pb2.EvaluationCompleted(
                    evaluation_id=f"eval-{name}-{passed}", candidate_version=NEW, baseline_version=OLD,
                    deployment=name, passed=passed), source="evaluation", tenant="acme"))
        deadline = time.monotonic() + 20
        while True:
            auto = (await stub.GetDeployment(inference_pb2.GetDeploymentRequest(name="auto"),
                                             metadata=call_metadata())).deployment
            if auto.model_version == NEW or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the other two events are handled by now as well
        manual = (await stub.GetDeployment(inference_pb2.GetDeploymentRequest(name="manual"),
                                           metadata=call_metadata())).deployment
    assert auto.model_version == NEW and auto.history[-1].reason == "evaluation eval-auto-True passed"
    assert [c.action for c in auto.history] == ["created", "promoted"]
    assert manual.model_version == OLD
