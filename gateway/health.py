"""Watching NATS and the five services, for /healthz and the gateway's own gRPC health."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import nats

from protos import dataprep_pb2, evaluation_pb2, feedback_pb2, inference_pb2, training_pb2
from services.shared.rpc import check_health
from services.shared.settings import SERVICE_NAMES, Settings

log = logging.getLogger(__name__)

SERVING = "SERVING"
# The name each service is known by in gRPC health, on the gateway as on the service.
GRPC_SERVICE_NAMES = {
    "dataprep": dataprep_pb2.DESCRIPTOR.services_by_name["DataPrep"].full_name,
    "training": training_pb2.DESCRIPTOR.services_by_name["Training"].full_name,
    "evaluation": evaluation_pb2.DESCRIPTOR.services_by_name["Evaluation"].full_name,
    "feedback": feedback_pb2.DESCRIPTOR.services_by_name["Feedback"].full_name,
    "inference": inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
}


@dataclass
class HealthReport:
    parts: dict[str, str] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return bool(self.parts) and all(status == SERVING for status in self.parts.values())


async def _log_nats_error(error: Exception) -> None:
    log.debug("NATS (health connection): %s", error)


class HealthMonitor:
    """Checks every part; keeps one NATS connection open so a NATS outage shows up at once."""

    NATS_CONNECT_TIMEOUT_S = 3.0

    def __init__(self, settings: Settings):
        self._settings = settings
        self._nats: nats.NATS | None = None

    async def _nats_status(self) -> str:
        try:
            if self._nats is None or self._nats.is_closed:
                # Bounded: with reconnects allowed, nats-py keeps trying a server that is down on the
                # first connect, and /healthz waited for it instead of saying NATS is unreachable.
                self._nats = await asyncio.wait_for(nats.connect(
                    self._settings.nats_url, name="tuneloop-gateway-health", connect_timeout=2,
                    max_reconnect_attempts=-1, allow_reconnect=True, error_cb=_log_nats_error,
                ), timeout=self.NATS_CONNECT_TIMEOUT_S)
            if not self._nats.is_connected:
                return "UNREACHABLE"
            info = await self._nats.jetstream().account_info()
            return SERVING if info is not None else "NOT_SERVING"
        except Exception as error:  # any failure here means "not healthy", never a crash
            log.debug("NATS health check failed: %s", error)
            return "UNREACHABLE"

    async def check(self) -> HealthReport:
        names = list(SERVICE_NAMES)
        results = await asyncio.gather(
            self._nats_status(),
            *(check_health(self._settings.service_addr(name)) for name in names),
        )
        return HealthReport(parts=dict(zip(["nats", *names], results, strict=True)))

    async def close(self) -> None:
        if self._nats is not None and not self._nats.is_closed:
            await self._nats.close()
