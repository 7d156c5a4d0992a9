"""`/v1/deployments`: named deployments that clients call as `model`, with promote, canary and rollback."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.clients import call
from gateway.deps import ClientsDep, TenantDep
from gateway.errors import ERROR_RESPONSES
from protos import inference_pb2

router = APIRouter(prefix="/v1/deployments", tags=["deployments"], responses=ERROR_RESPONSES)


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    model: str = Field(min_length=1, max_length=255)
    # A candidate that passes its evaluation for this deployment is promoted with no person in the loop.
    auto_promote: bool = False


class Promote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=255)
    reason: str = Field(default="", max_length=1000)


class Canary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(default="", max_length=255)
    # 1 to 99; 0 ends the canary.
    percent: int = Field(ge=0, le=99)


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1000)


class CanaryPublic(BaseModel):
    model: str
    percent: int


class ChangePublic(BaseModel):
    action: str
    from_model: str | None
    to_model: str | None
    percent: int
    reason: str | None
    at: int


class DeploymentPublic(BaseModel):
    id: str
    object: Literal["deployment"] = "deployment"
    model: str
    previous_model: str | None
    canary: CanaryPublic | None
    auto_promote: bool
    created_at: int
    updated_at: int
    history: list[ChangePublic]


class DeploymentsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeploymentPublic]


class DeploymentDeleted(BaseModel):
    id: str
    object: Literal["deployment"] = "deployment"
    deleted: bool


def _public(d: inference_pb2.Deployment) -> DeploymentPublic:
    return DeploymentPublic(
        id=d.name, model=d.model_version, previous_model=d.previous_version or None,
        canary=CanaryPublic(model=d.canary_version, percent=d.canary_percent) if d.canary_version else None,
        auto_promote=d.auto_promote, created_at=d.created_at, updated_at=d.updated_at,
        history=[ChangePublic(action=c.action, from_model=c.from_version or None, to_model=c.to_version or None,
                              percent=c.percent, reason=c.reason or None, at=c.at) for c in d.history])


@router.post("", response_model=DeploymentPublic)
async def create_deployment(body: DeploymentCreate, clients: ClientsDep, tenant: TenantDep) -> DeploymentPublic:
    request = inference_pb2.CreateDeploymentRequest(name=body.name, model_version=body.model,
                                                    auto_promote=body.auto_promote)
    response = await call("inference", clients.inference.CreateDeployment(request, **clients.options(tenant)))
    return _public(response.deployment)


@router.get("", response_model=DeploymentsPublic)
async def list_deployments(clients: ClientsDep, tenant: TenantDep) -> DeploymentsPublic:
    response = await call("inference", clients.inference.ListDeployments(inference_pb2.ListDeploymentsRequest(),
                                                                         **clients.options(tenant)))
    return DeploymentsPublic(data=[_public(d) for d in response.deployments])


@router.get("/{name}", response_model=DeploymentPublic)
async def get_deployment(name: str, clients: ClientsDep, tenant: TenantDep) -> DeploymentPublic:
    response = await call("inference", clients.inference.GetDeployment(inference_pb2.GetDeploymentRequest(name=name),
                                                                       **clients.options(tenant)))
    return _public(response.deployment)


@router.post("/{name}/promote", response_model=DeploymentPublic)
async def promote(name: str, body: Promote, clients: ClientsDep, tenant: TenantDep) -> DeploymentPublic:
    request = inference_pb2.PromoteDeploymentRequest(name=name, model_version=body.model, reason=body.reason)
    response = await call("inference", clients.inference.PromoteDeployment(request, **clients.options(tenant)))
    return _public(response.deployment)


@router.post("/{name}/canary", response_model=DeploymentPublic)
async def canary(name: str, body: Canary, clients: ClientsDep, tenant: TenantDep) -> DeploymentPublic:
    request = inference_pb2.SetCanaryRequest(name=name, model_version=body.model, percent=body.percent)
    response = await call("inference", clients.inference.SetCanary(request, **clients.options(tenant)))
    return _public(response.deployment)


@router.post("/{name}/rollback", response_model=DeploymentPublic)
async def rollback(name: str, body: Rollback, clients: ClientsDep, tenant: TenantDep) -> DeploymentPublic:
    request = inference_pb2.RollbackDeploymentRequest(name=name, reason=body.reason)
    response = await call("inference", clients.inference.RollbackDeployment(request, **clients.options(tenant)))
    return _public(response.deployment)


@router.delete("/{name}", response_model=DeploymentDeleted)
async def delete_deployment(name: str, clients: ClientsDep, tenant: TenantDep) -> DeploymentDeleted:
    response = await call("inference", clients.inference.DeleteDeployment(
        inference_pb2.DeleteDeploymentRequest(name=name), **clients.options(tenant)))
    return DeploymentDeleted(id=response.name, deleted=response.deleted)
