"""`/healthz`: NATS and every service, as the gateway last saw them (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway.deps import MonitorDep

router = APIRouter(tags=["health"])


class HealthPublic(BaseModel):
    status: str
    parts: dict[str, str]


@router.get("/healthz", response_model=HealthPublic, responses={503: {"model": HealthPublic}})
async def healthz(monitor: MonitorDep):
    report = await monitor.check()
    body = HealthPublic(status="ok" if report.healthy else "degraded", parts=report.parts)
    return JSONResponse(status_code=200 if report.healthy else 503, content=body.model_dump())
