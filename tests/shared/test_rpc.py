"""The gRPC plumbing every service shares: interceptors, health, reflection, error mapping."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos import evaluation_pb2, evaluation_pb2_grpc
from services.shared.errors import InvalidArgument, NotFound, TuneloopError, Unavailable
from services.shared.rpc import check_health, error_from_rpc, open_channel, start_server, tenant_metadata
from services.shared.settings import Settings

TOKEN = "s3cret"


class Probe(evaluation_pb2_grpc.EvaluationServicer):
    """A servicer whose behaviour each test picks, to drive the interceptors."""

    def __init__(self):
        self.raise_ = None
        self.seen_tenant = None

    async def ComputeMetrics(self, request, context):
        from services.shared.rpc import tenant_of

        self.seen_tenant = tenant_of(context)
        if self.raise_:
            raise self.raise_
        return evaluation_pb2.ComputeMetricsResponse(count=len(request.pairs))


@pytest.fixture
async def server():
    probe = Probe()

    def register(server):
        evaluation_pb2_grpc.add_EvaluationServicer_to_server(probe, server)
        return [evaluation_pb2.DESCRIPTOR.services_by_name["Evaluation"].full_name]

    running = await start_server(host="127.0.0.1", port=0, internal_token=TOKEN, register=register)
    yield running, probe
    await running.stop(grace=0)


async def _call(port, *, token=TOKEN, tenant="acme"):
    settings = Settings(internal_token=token)
    async with open_channel(f"127.0.0.1:{port}", settings) as channel:
        stub = evaluation_pb2_grpc.EvaluationStub(channel)
        return await stub.ComputeMetrics(evaluation_pb2.ComputeMetricsRequest(), metadata=tenant_metadata(tenant))


async def test_client_channel_carries_token_and_tenant(server):
    running, probe = server
    await _call(running.port)
    assert probe.seen_tenant == "acme"


async def test_wrong_or_missing_token_is_unauthenticated(server):
    running, probe = server
    for token in ("wrong", ""):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _call(running.port, token=token)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert probe.seen_tenant is None  # the servicer never ran


@pytest.mark.parametrize(
    ("raised", "status", "expected"),
    [
        (InvalidArgument("bad value", param="pairs"), grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (NotFound("no such thing", param="id", code="thing_not_found"), grpc.StatusCode.NOT_FOUND, NotFound),
    ],
)
async def test_platform_errors_map_to_status_and_back(server, raised, status, expected):
    running, probe = server
    probe.raise_ = raised
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _call(running.port)
    assert error.value.code() == status
    mapped = error_from_rpc(error.value, service="evaluation")
    assert type(mapped) is expected
    assert (mapped.message, mapped.param, mapped.code) == (raised.message, raised.param, raised.code)


async def test_unexpected_errors_become_internal_without_leaking_details(server):
    running, probe = server
    probe.raise_ = RuntimeError("password=hunter2")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _call(running.port)
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in error.value.details()
    assert type(error_from_rpc(error.value, service="evaluation")) is TuneloopError


async def test_an_unreachable_service_maps_to_unavailable():
    with pytest.raises(grpc.aio.AioRpcError) as error:
        settings = Settings()
        async with open_channel("127.0.0.1:1", settings) as channel:
            await evaluation_pb2_grpc.EvaluationStub(channel).ComputeMetrics(
                evaluation_pb2.ComputeMetricsRequest(), timeout=2)
    assert isinstance(error_from_rpc(error.value, service="evaluation"), Unavailable)
    assert await check_health("127.0.0.1:1", timeout=1) == "UNREACHABLE"


async def test_health_and_reflection_need_no_token(server):
    running, _probe = server
    assert await check_health(f"127.0.0.1:{running.port}") == "SERVING"
    assert await check_health(f"127.0.0.1:{running.port}", service="tuneloop.v1.Evaluation") == "SERVING"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        names = set()
        async for response in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            names |= {s.name for s in response.list_services_response.service}
        assert {"tuneloop.v1.Evaluation", "grpc.health.v1.Health"} <= names
        await running.set_serving(False, ["tuneloop.v1.Evaluation"])
        status = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tuneloop.v1.Evaluation"))
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_trace_context_crosses_a_grpc_call():
    """A span started by the caller is the parent of the span the server's handler runs in."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from services.shared.telemetry import tracer

    if not hasattr(trace.get_tracer_provider(), "add_span_processor"):
        trace.set_tracer_provider(TracerProvider())  # what setup_tracing installs with an endpoint
    seen = {}

    class Tracing(evaluation_pb2_grpc.EvaluationServicer):
        async def ComputeMetrics(self, request, context):
            seen["trace_id"] = trace.get_current_span().get_span_context().trace_id
            return evaluation_pb2.ComputeMetricsResponse()

    def register(server):
        evaluation_pb2_grpc.add_EvaluationServicer_to_server(Tracing(), server)
        return ["tuneloop.v1.Evaluation"]

    running = await start_server(host="127.0.0.1", port=0, internal_token="", register=register)
    try:
        async with open_channel(f"127.0.0.1:{running.port}", Settings()) as channel:
            with tracer("test").start_as_current_span("caller") as span:
                await evaluation_pb2_grpc.EvaluationStub(channel).ComputeMetrics(evaluation_pb2.ComputeMetricsRequest())
                caller_trace = span.get_span_context().trace_id
    finally:
        await running.stop(grace=0)
    assert caller_trace != 0 and seen["trace_id"] == caller_trace


_UNTRACED_CALL = """
import asyncio, sys
from opentelemetry import context, trace
from protos import evaluation_pb2, evaluation_pb2_grpc
from services.shared.rpc import open_channel, start_server
from services.shared.settings import Settings
from services.shared.telemetry import extract_trace, setup_tracing

assert setup_tracing(Settings(otlp_endpoint=None), "test") is None
assert not hasattr(trace.get_tracer_provider(), "add_span_processor")  # OpenTelemetry's default
seen = {}

class Server(evaluation_pb2_grpc.EvaluationServicer):
    async def ComputeMetrics(self, request, context):
        span = trace.get_current_span().get_span_context()
        seen["trace"] = (format(span.trace_id, "032x"), span.is_valid)
        return evaluation_pb2.ComputeMetricsResponse()

async def main():
    def register(server):
        evaluation_pb2_grpc.add_EvaluationServicer_to_server(Server(), server)
        return ["tuneloop.v1.Evaluation"]
    running = await start_server(host="127.0.0.1", port=0, internal_token="", register=register)
    try:
        token = context.attach(extract_trace({"traceparent": sys.argv[1]}))
        async with open_channel(f"127.0.0.1:{running.port}", Settings()) as channel:
            await evaluation_pb2_grpc.EvaluationStub(channel).ComputeMetrics(evaluation_pb2.ComputeMetricsRequest())
        context.detach(token)
    finally:
        await running.stop(grace=0)
    print(*seen["trace"])

asyncio.run(main())
"""


def test_without_an_otlp_endpoint_no_spans_are_recorded_and_the_callers_trace_still_passes_through():
    """A process of its own: the tracer provider is process-wide, and other tests install one."""
    import subprocess
    import sys
    from pathlib import Path

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    done = subprocess.run(
        [sys.executable, "-c", _UNTRACED_CALL, f"00-{trace_id}-00f067aa0ba902b7-01"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [trace_id, "True"]


async def test_a_second_server_on_a_taken_port_fails_to_bind_instead_of_sharing_it(server):
    running, _ = server
    with pytest.raises((OSError, RuntimeError)):
        second = await start_server(host="127.0.0.1", port=running.port, internal_token=TOKEN, register=lambda _s: [])
        await second.stop(grace=0)  # only reached if the bind wrongly succeeded
    assert (await _call(running.port)).count == 0  # the first server still answers every call
