"""FastAPI dependencies, as `Annotated` aliases routes can declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from gateway.auth import KeyRing, bearer_key
from gateway.clients import ServiceClients
from gateway.health import HealthMonitor


# Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request.
async def _clients(request: Request) -> ServiceClients:
    return request.app.state.clients


async def _monitor(request: Request) -> HealthMonitor:
    return request.app.state.monitor


async def _tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    keys: KeyRing = request.app.state.keys
    return await keys.tenant_for(bearer_key(authorization))


ClientsDep = Annotated[ServiceClients, Depends(_clients)]
MonitorDep = Annotated[HealthMonitor, Depends(_monitor)]
TenantDep = Annotated[str, Depends(_tenant)]
