"""The Evaluation gRPC servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from pathlib import Path

import grpc

from protos import evaluation_pb2, evaluation_pb2_grpc
from services.evaluation import store
from services.evaluation.metrics import score_pairs
from services.evaluation.settings import EvaluationSettings
from services.shared.errors import InvalidArgument
from services.shared.process import Runtime, ServiceDefinition, ServiceParts


class EvaluationServicer(evaluation_pb2_grpc.EvaluationServicer):
    def __init__(self, settings: EvaluationSettings):
        self._settings = settings

    async def ComputeMetrics(self, request, context):
        if len(request.pairs) > self._settings.max_pairs:
            raise InvalidArgument(
                f"{len(request.pairs)} pairs; at most {self._settings.max_pairs} per call", param="pairs"
            )
        pairs = [(pair.prediction, pair.reference) for pair in request.pairs]
        scores = score_pairs(pairs, list(request.metrics))
        return evaluation_pb2.ComputeMetricsResponse(scores=scores, count=len(pairs))


async def build(runtime: Runtime) -> ServiceParts:
    def register(server: grpc.aio.Server) -> list[str]:
        evaluation_pb2_grpc.add_EvaluationServicer_to_server(EvaluationServicer(runtime.settings), server)
        return [evaluation_pb2.DESCRIPTOR.services_by_name["Evaluation"].full_name]

    return ServiceParts(register=register)


DEFINITION = ServiceDefinition(
    name="evaluation",
    settings_class=EvaluationSettings,
    tables=store.messaging,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
