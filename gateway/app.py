"""Building the gateway: the FastAPI app and the public gRPC server, sharing one set of clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from gateway import health as health_module
from gateway.auth import KeyRing
from gateway.clients import ServiceClients
from gateway.errors import install_error_handlers
from gateway.grpc_proxy import PublicServicesProxy, public_service_names
from gateway.health import HealthMonitor
from gateway.routers import (
    completions,
    datasets,
    deployments,
    evaluations,
    feedback,
    files,
    fine_tuning,
    health,
    models,
    tgi,
)
from gateway.settings import GatewaySettings
from services.shared.db import Database
from services.shared.rpc import GrpcServer, start_server

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class GatewayRuntime:
    settings: GatewaySettings
    db: Database
    keys: KeyRing
    clients: ServiceClients
    monitor: HealthMonitor


def _untraced(scope) -> bool:
    return scope.get("path") == "/healthz"


def create_app(runtime: GatewayRuntime) -> FastAPI:
    app = FastAPI(
        title="tuneloop",
        version="0.1.0",
        description="OpenAI-compatible inference and fine-tuning, plus the platform's own routes.",
        # FastAPI's own OpenTelemetry: one server span per request, named by the route it matched and
        # parented on the caller's traceparent. opentelemetry-instrumentation-fastapi, used before,
        # matched each request against every route a second time to name its span (~0.3 ms of a
        # completion's 2 ms through the gateway). Metrics and logs stay off: no provider is set up.
        telemetry={"metrics": False, "logs": False, "operation_spans": False, "exclude": _untraced},
    )
    app.state.keys = runtime.keys
    app.state.clients = runtime.clients
    app.state.monitor = runtime.monitor
    install_error_handlers(app)
    # Routes are matched in order, so the ones every completion takes come first.
    app.include_router(completions.router)
    app.include_router(tgi.router)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(files.router)
    app.include_router(datasets.router)
    app.include_router(fine_tuning.router)
    app.include_router(deployments.router)
    app.include_router(evaluations.router)
    app.include_router(evaluations.policies)
    app.include_router(feedback.router)
    app.include_router(feedback.loops)
    tgi.install_tgi_errors(app)
    return app


async def open_runtime(settings: GatewaySettings) -> tuple[GatewayRuntime, str | None]:
    """Connect to the database and the services; returns a newly generated admin key, if one was made."""
    db = Database(settings.database_url_for("gateway"), service="gateway", migrations=MIGRATIONS)
    await asyncio.to_thread(db.migrate)
    keys = KeyRing(db)
    configured = settings.api_key.get_secret_value() if settings.api_key else None
    generated = await keys.bootstrap(configured)
    runtime = GatewayRuntime(
        settings=settings,
        db=db,
        keys=keys,
        clients=ServiceClients(settings, timeout=settings.rpc_timeout_s),
        monitor=HealthMonitor(settings),
    )
    return runtime, generated


async def start_grpc(runtime: GatewayRuntime) -> GrpcServer:
    proxy = PublicServicesProxy(runtime.clients.channels, runtime.keys, runtime.settings.rpc_timeout_s)
    return await start_server(
        host=runtime.settings.host,
        port=runtime.settings.grpc_port,
        internal_token="",  # callers of the public door authenticate with API keys instead
        register=lambda _server: public_service_names(),
        generic_handlers=[proxy],
    )


async def mirror_health(runtime: GatewayRuntime, server: GrpcServer, stop: asyncio.Event) -> None:
    """Keep the gateway's gRPC health in step with the parts behind it: "" is the whole platform."""
    while not stop.is_set():
        report = await runtime.monitor.check()
        await server.set_serving(report.healthy, [""])
        await server.set_serving(report.parts.get("nats") == health_module.SERVING, ["nats"])
        for service, full_name in health_module.GRPC_SERVICE_NAMES.items():
            await server.set_serving(report.parts.get(service) == health_module.SERVING, [full_name])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), runtime.settings.health_interval_s)


async def close_runtime(runtime: GatewayRuntime) -> None:
    await runtime.clients.close()
    await runtime.monitor.close()
    await runtime.db.close()
