"""The Training gRPC servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from protos import training_pb2, training_pb2_grpc
from services.shared.models import ModelStore
from services.shared.process import Runtime, ServiceDefinition, ServiceParts
from services.shared.rpc import tenant_of
from services.training import store
from services.training.registry import ModelRegistry, RegisteredModel
from services.training.settings import TrainingSettings


def _model_message(model: RegisteredModel) -> training_pb2.Model:
    return training_pb2.Model(
        id=model.id,
        created=model.created,
        owned_by=model.owned_by,
        kind=model.kind,
        base_model=model.base_model,
        available=model.available,
        unavailable_reason=model.unavailable_reason,
    )


class TrainingServicer(training_pb2_grpc.TrainingServicer):
    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    async def ListModels(self, request, context):
        models = await asyncio.to_thread(self._registry.list_models, tenant_of(context))
        return training_pb2.ListModelsResponse(models=[_model_message(m) for m in models])

    async def GetModel(self, request, context):
        model = await asyncio.to_thread(self._registry.get_model, tenant_of(context), request.model_id)
        return training_pb2.GetModelResponse(model=_model_message(model))


async def build(runtime: Runtime) -> ServiceParts:
    registry = ModelRegistry(ModelStore(runtime.settings))

    def register(server: grpc.aio.Server) -> list[str]:
        training_pb2_grpc.add_TrainingServicer_to_server(TrainingServicer(registry), server)
        return [training_pb2.DESCRIPTOR.services_by_name["Training"].full_name]

    return ServiceParts(register=register)


DEFINITION = ServiceDefinition(
    name="training",
    settings_class=TrainingSettings,
    tables=store.messaging,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
