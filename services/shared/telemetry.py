"""OpenTelemetry for one process: one `setup_tracing` call, W3C trace context across gRPC and NATS.

gRPC and FastAPI get explicit interceptors / instrumentation where their servers are built
(services.shared.rpc, gateway.app); nothing here patches a library.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from services.shared.settings import Settings


def setup_tracing(settings: Settings, service_name: str) -> TracerProvider | None:
    """Install this process's tracer provider, exporting over OTLP, when an endpoint is configured.

    Without one, no provider is installed: OpenTelemetry's default tracer makes spans that record
    nothing (recording spans no one exports cost the gateway ~0.15 ms of CPU a request), and a
    caller's trace context still passes through to the next call, as it would with spans."""
    if not settings.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": f"tuneloop-{service_name}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    trace.set_tracer_provider(provider)
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_trace(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write the current trace context (traceparent, tracestate) into headers or metadata."""
    propagate.inject(carrier)
    return carrier


def extract_trace(carrier: Mapping[str, str]) -> context.Context:
    """The trace context carried by headers or metadata, to parent a span on."""
    return propagate.extract(dict(carrier))
