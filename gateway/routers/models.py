"""`/v1/models`, in OpenAI's shape: the registry's base and fine-tuned models (training service),
then the models another server answers for (the inference service's TUNELOOP_REMOTE_MODELS), by id.

A remote model is owned by its backend ("openai" or "tgi"); its `created` is 0, as the remote's own
date is not asked for on every listing. Where a remote id is also a registry id, the remote is what
answers it (the inference service asks remotes first), so it is the one listed.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.clients import call
from gateway.deps import ClientsDep, TenantDep
from gateway.errors import ERROR_RESPONSES
from protos import inference_pb2, training_pb2
from services.shared.errors import InvalidArgument

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


async def _remote_models(clients, tenant: str) -> dict[str, ModelPublic]:
    response = await call("inference", clients.inference.ListRemoteModels(inference_pb2.ListRemoteModelsRequest(),
                                                                         **clients.options(tenant)))
    return {model.id: ModelPublic(id=model.id, created=0, owned_by=model.backend) for model in response.models}


@router.get("", response_model=ModelsPublic)
async def list_models(clients: ClientsDep, tenant: TenantDep) -> ModelsPublic:
    registry, remote = await asyncio.gather(
        call("training", clients.training.ListModels(training_pb2.ListModelsRequest(), **clients.options(tenant))),
        _remote_models(clients, tenant))
    served_here = [_public(model) for model in registry.models if model.id not in remote]
    return ModelsPublic(data=[*served_here, *remote.values()])


@router.get("/{model_id:path}", response_model=ModelPublic)
async def retrieve_model(model_id: str, clients: ClientsDep, tenant: TenantDep) -> ModelPublic:
    remote = await _remote_models(clients, tenant)
    if model_id in remote:
        return remote[model_id]
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
    if model_id in await _remote_models(clients, tenant):
        raise InvalidArgument(f"'{model_id}' is a remote model, configured by TUNELOOP_REMOTE_MODELS of the inference "
                              "service, and cannot be deleted here", param="model")
    response = await call(
        "training",
        clients.training.DeleteModel(training_pb2.DeleteModelRequest(model_id=model_id), **clients.options(tenant)),
    )
    return ModelDeleted(id=response.model_id, deleted=response.deleted)
