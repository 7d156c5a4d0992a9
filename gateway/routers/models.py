"""`/v1/models`, in OpenAI's shape."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.clients import call
from gateway.deps import ClientsDep, TenantDep
from gateway.errors import ERROR_RESPONSES
from protos import training_pb2

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]


def _public(model: training_pb2.Model) -> ModelPublic:
    return ModelPublic(id=model.id, created=model.created, owned_by=model.owned_by)


@router.get("", response_model=ModelsPublic)
async def list_models(clients: ClientsDep, tenant: TenantDep) -> ModelsPublic:
    response = await call(
        "training", clients.training.ListModels(training_pb2.ListModelsRequest(), **clients.options(tenant))
    )
    return ModelsPublic(data=[_public(model) for model in response.models])


@router.get("/{model_id:path}", response_model=ModelPublic)
async def retrieve_model(model_id: str, clients: ClientsDep, tenant: TenantDep) -> ModelPublic:
    response = await call(
        "training",
        clients.training.GetModel(training_pb2.GetModelRequest(model_id=model_id), **clients.options(tenant)),
    )
    return _public(response.model)


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


@router.delete("/{model_id:path}", response_model=ModelDeleted)
async def delete_model(model_id: str, clients: ClientsDep, tenant: TenantDep) -> ModelDeleted:
    response = await call(
        "training",
        clients.training.DeleteModel(training_pb2.DeleteModelRequest(model_id=model_id), **clients.options(tenant)),
    )
    return ModelDeleted(id=response.model_id, deleted=response.deleted)
