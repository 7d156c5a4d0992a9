"""Running one service process: the start-up and shutdown every service shares.

A service describes itself with a `ServiceDefinition` (its name, tables, migrations, how to
register its servicers and which events it consumes); `run_service` does the rest in one order:
settings -> tracing -> migrate -> NATS stream -> gRPC server -> consumers and outbox relay ->
wait for SIGTERM/SIGINT -> stop taking calls, drain consumers, close the bus and the database.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services.shared.bus import EventBus
from services.shared.consumer import Handler
from services.shared.db import Database
from services.shared.outbox import MessagingTables, OutboxRelay
from services.shared.rpc import GrpcServer, start_server
from services.shared.settings import ServiceSettings
from services.shared.telemetry import setup_tracing

log = logging.getLogger(__name__)

@dataclass
class Subscription:
    """A durable consumer: its name, the event types it takes, and the handler that applies them."""

    durable: str
    event_types: list[str]
    handler: Handler


@dataclass
class Runtime:
    """What a service's parts are built from."""

    settings: ServiceSettings
    db: Database
    bus: EventBus
    tables: MessagingTables
    relay: OutboxRelay


@dataclass
class ServiceParts:
    """What a service's `build` hands back to the process runner."""

    register: Callable[[grpc.aio.Server], Iterable[str]]
    subscriptions: list[Subscription] = field(default_factory=list)
    # Loops that run beside the server (a worker, a supervisor) until the event they get is set.
    background: list[Callable[[asyncio.Event], Awaitable[None]]] = field(default_factory=list)
    on_close: Callable[[], Awaitable[None]] | None = None
    # The servicer, for whoever runs the service in its own process (tests, benchmarks) to look into.
    servicer: object | None = None


@dataclass
class ServiceDefinition:
    name: str
    settings_class: type[ServiceSettings]
    tables: MessagingTables
    migrations: Path
    build: Callable[[Runtime], Awaitable[ServiceParts]]


@dataclass
class RunningService:
    definition: ServiceDefinition
    runtime: Runtime
    grpc: GrpcServer
    parts: ServiceParts
    tasks: list[asyncio.Task] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def stop(self) -> None:
        """Stop taking calls, let consumers finish the message in hand, then close connections."""
        self.stopping.set()
        await self.grpc.stop()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.parts.on_close:
            await self.parts.on_close()
        await self.runtime.bus.close()
        await self.runtime.db.close()


async def start_service(definition: ServiceDefinition, settings: ServiceSettings) -> RunningService:
    db = Database(settings.database_url_for(definition.name), service=definition.name, migrations=definition.migrations)
    await asyncio.to_thread(db.migrate)
    bus = await EventBus.connect(settings, name=f"tuneloop-{definition.name}")
    await bus.ensure_stream()
    relay = OutboxRelay(db, definition.tables, bus)
    runtime = Runtime(settings=settings, db=db, bus=bus, tables=definition.tables, relay=relay)
    parts = await definition.build(runtime)
    server = await start_server(
        host=settings.grpc_host,
        port=settings.grpc_port,
        internal_token=settings.internal_token,
        register=parts.register,
    )
    running = RunningService(definition=definition, runtime=runtime, grpc=server, parts=parts)
    running.tasks.append(asyncio.create_task(relay.run(running.stopping), name=f"{definition.name}-outbox"))
    for loop in parts.background:
        running.tasks.append(asyncio.create_task(loop(running.stopping), name=f"{definition.name}-{loop.__name__}"))
    for subscription in parts.subscriptions:
        consumer = await bus.subscribe(
            durable=f"{definition.name}-{subscription.durable}",
            event_types=subscription.event_types,
            handler=subscription.handler,
            db=db,
            tables=definition.tables,
        )
        running.tasks.append(asyncio.create_task(consumer.run(running.stopping), name=subscription.durable))
    return running


async def _serve(definition: ServiceDefinition, settings: ServiceSettings) -> None:
    setup_tracing(settings, definition.name)
    running = await start_service(definition, settings)
    # The launcher and tests read this line to learn the port when they asked for port 0.
    print(f"tuneloop-{definition.name} listening on {settings.grpc_host}:{running.grpc.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("%s: shutting down", definition.name)
    await running.stop()


def run_service(definition: ServiceDefinition) -> None:
    """The whole of a service's `__main__`."""
    settings = definition.settings_class()
    logging.basicConfig(level=settings.log_level, format=f"%(asctime)s {definition.name} %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(definition, settings))
