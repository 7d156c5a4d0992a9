"""Traces and request logs of a whole stack.

The collector here is a stand-in for an OpenTelemetry Collector (which cannot run in the test): a
gRPC server in this process implementing OTLP's TraceService, so the services export to it over
OTLP/gRPC, the real wire protocol, exactly as they would to a real collector.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent import futures

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.fixtures.stack import API_KEY, UpProcess, clean_env
from tests.fixtures.tiny_model import TINY_MODEL_ID

CHAT = {"model": TINY_MODEL_ID, "messages": [{"role": "user", "content": "Where is item 4?"}], "max_tokens": 2}


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span with the name of the service that exported it."""

    def __init__(self):
        self._lock = threading.Lock()
        self.spans: list[tuple[str, trace_pb2.Span]] = []

    def Export(self, request, context):  # noqa: N802 (the OTLP method's name)
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next((a.value.string_value for a in resource_spans.resource.attributes
                                if a.key == "service.name"), "")
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def in_trace(self, trace_id: bytes) -> list[tuple[str, trace_pb2.Span]]:
        with self._lock:
            return [(service, span) for service, span in self.spans if span.trace_id == trace_id]


@pytest.fixture(scope="module")
def collector():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    spans = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(spans, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield spans, port
    server.stop(0)


@pytest.fixture(scope="module")
def traced(collector, tmp_path_factory, tiny_model_dir):
    """A stack exporting its spans to the collector every 100 ms, with the gateway's access log on."""
    _, port = collector
    up = UpProcess(tmp_path_factory.mktemp("traced"), clean_env(
        TUNELOOP_API_KEY=API_KEY, TUNELOOP_BASE_MODELS=json.dumps({TINY_MODEL_ID: str(tiny_model_dir)}),
        TUNELOOP_DEFAULT_BASE_MODEL=TINY_MODEL_ID, TUNELOOP_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        TUNELOOP_GATEWAY_ACCESS_LOG="true", OTEL_BSP_SCHEDULE_DELAY="100"))
    try:
        up.wait_healthy()
        yield up
    finally:
        up.stop()


def _spans_of(collector: Collector, trace_id: bytes, services: set[str]) -> list[tuple[str, trace_pb2.Span]]:
    """The spans of `trace_id` once each of `services` has exported its server span. A service's
    server span ends last and may come in a later batch than its client spans: waiting for any
    span of a service once let a test look before its server span arrived."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = collector.in_trace(trace_id)
        if services <= {service for service, span in spans if span.kind == trace_pb2.Span.SPAN_KIND_SERVER}:
            return spans
        time.sleep(0.1)
    raise AssertionError(f"spans of trace {trace_id.hex()} from {services} not exported; got {collector.in_trace(trace_id)}")


def test_a_completion_is_one_trace_from_the_callers_span_through_the_gateway_to_the_inference_service(
        traced, collector):
    spans_seen, _ = collector
    trace_id, caller_span = secrets.token_bytes(16), secrets.token_bytes(8)
    response = httpx.post(f"{traced.url}/v1/chat/completions", json=CHAT, timeout=60, headers={
        "Authorization": f"Bearer {API_KEY}", "traceparent": f"00-{trace_id.hex()}-{caller_span.hex()}-01"})
    assert response.status_code == 200, response.text

    spans = _spans_of(spans_seen, trace_id, {"tuneloop-gateway", "tuneloop-inference"})
    gateway = [span for service, span in spans if service == "tuneloop-gateway"
               and span.kind == trace_pb2.Span.SPAN_KIND_SERVER]
    assert [span.name for span in gateway] == ["POST /v1/chat/completions"]
    assert gateway[0].parent_span_id == caller_span
    attributes = {a.key: a.value for a in gateway[0].attributes}
    assert attributes["http.route"].string_value == "/v1/chat/completions"
    assert attributes["http.response.status_code"].int_value == 200

    served = [span for service, span in spans if service == "tuneloop-inference"
              and span.kind == trace_pb2.Span.SPAN_KIND_SERVER]
    assert [span.name for span in served] == ["/tuneloop.v1.Inference/Generate"]
    ids = {span.span_id for _, span in spans}
    assert served[0].parent_span_id in ids - {caller_span}, "the service's span hangs under the gateway's"


def test_health_checks_make_no_spans_and_requests_are_in_the_access_log_when_it_is_on(traced, collector):
    spans_seen, _ = collector
    for _ in range(3):
        assert httpx.get(f"{traced.url}/healthz", timeout=10).status_code == 200
    trace_id = secrets.token_bytes(16)
    response = httpx.get(f"{traced.url}/v1/models", timeout=10, headers={
        "Authorization": f"Bearer {API_KEY}", "traceparent": f"00-{trace_id.hex()}-{secrets.token_hex(8)}-01"})
    assert response.status_code == 200
    _spans_of(spans_seen, trace_id, {"tuneloop-gateway"})  # exported after the health checks' would be

    names = {span.name for service, span in spans_seen.spans if service == "tuneloop-gateway"}
    assert "GET /v1/models" in names
    assert not any("healthz" in name for name in names)
    log = (traced.data_dir / "logs" / "gateway.log").read_text()
    assert '"GET /v1/models HTTP/1.1" 200' in log


def test_the_access_log_is_off_by_default(stack):
    assert httpx.get(f"{stack.url}/v1/models", timeout=10, headers={"Authorization": f"Bearer {API_KEY}"}).is_success
    log = (stack.data_dir / "logs" / "gateway.log").read_text()
    assert "tuneloop-gateway listening" in log  # the gateway does log to this file
    assert "GET /v1/models HTTP/1.1" not in log
