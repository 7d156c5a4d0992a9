"""The gateway's view of NATS and the services (gateway/health.py), behind /healthz."""

from __future__ import annotations

import time

from gateway.health import SERVING, HealthMonitor
from services.shared.settings import SERVICE_NAMES, Settings
from tuneloop.nats_server import free_port


def _unreachable_services() -> dict[str, str]:
    return {f"{name}_addr": f"127.0.0.1:{free_port()}" for name in SERVICE_NAMES}


async def test_nats_and_services_that_are_down_are_reported_unreachable_promptly():
    monitor = HealthMonitor(Settings(nats_url=f"nats://127.0.0.1:{free_port()}", **_unreachable_services()))
    try:
        started = time.monotonic()
        report = await monitor.check()
        assert time.monotonic() - started < HealthMonitor.NATS_CONNECT_TIMEOUT_S + 3
        assert report.parts == {"nats": "UNREACHABLE", **{name: "UNREACHABLE" for name in SERVICE_NAMES}}
        assert not report.healthy
    finally:
        await monitor.close()


async def test_a_running_nats_is_serving(nats_url):
    monitor = HealthMonitor(Settings(nats_url=nats_url, **_unreachable_services()))
    try:
        report = await monitor.check()
        assert report.parts["nats"] == SERVING
        assert not report.healthy  # the services are still down
    finally:
        await monitor.close()
