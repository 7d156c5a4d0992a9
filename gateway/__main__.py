"""`python -m gateway`: the REST and gRPC doors in one process, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvicorn

from gateway.app import close_runtime, create_app, mirror_health, open_runtime, start_grpc
from gateway.http_protocol import CoalescingHttpToolsProtocol
from gateway.settings import GatewaySettings
from services.shared.telemetry import setup_tracing

# The launcher looks for this prefix to show a generated key on the terminal and keep it out of logs.
NEW_KEY_PREFIX = "TUNELOOP_NEW_API_KEY="


async def serve(settings: GatewaySettings) -> None:
    setup_tracing(settings, "gateway")
    runtime, generated_key = await open_runtime(settings)
    if generated_key:
        print(f"{NEW_KEY_PREFIX}{generated_key}", flush=True)
    grpc_server = await start_grpc(runtime)
    config = uvicorn.Config(
        create_app(runtime), host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        lifespan="off", http=CoalescingHttpToolsProtocol, access_log=settings.access_log,
    )
    http_server = uvicorn.Server(config)
    # uvicorn installs its own handlers; ours decide when both doors close.
    http_server.install_signal_handlers = lambda: None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health_task = asyncio.create_task(mirror_health(runtime, grpc_server, stop))
    http_task = asyncio.create_task(http_server.serve())
    while not http_server.started:
        if http_task.done():  # uvicorn gave up, e.g. the port is taken; it has logged why
            stop.set()
            await health_task
            await grpc_server.stop()
            await close_runtime(runtime)
            raise SystemExit(f"gateway: cannot serve HTTP on {settings.host}:{settings.port}")
        await asyncio.sleep(0.05)
    print(
        f"tuneloop-gateway listening on http://{settings.host}:{settings.port} and grpc {settings.host}:{grpc_server.port}",
        flush=True,
    )
    await stop.wait()
    http_server.should_exit = True
    await http_task
    await health_task
    await grpc_server.stop()
    await close_runtime(runtime)


def main() -> None:
    settings = GatewaySettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
