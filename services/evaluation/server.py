"""The Evaluation gRPC servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import json_format

from protos import (
    dataprep_pb2_grpc,
    evaluation_pb2,
    evaluation_pb2_grpc,
    inference_pb2_grpc,
    training_pb2_grpc,
)
from services.evaluation import events, store
from services.evaluation.metrics import score_pairs
from services.evaluation.runs import Runs
from services.evaluation.settings import EvaluationSettings
from services.shared.errors import InvalidArgument
from services.shared.process import Runtime, ServiceDefinition, ServiceParts
from services.shared.rpc import open_channel, tenant_of


class EvaluationServicer(evaluation_pb2_grpc.EvaluationServicer):
    def __init__(self, settings: EvaluationSettings, runs: Runs):
        self._settings = settings
        self.runs = runs

    async def ComputeMetrics(self, request, context):
        if len(request.pairs) > self._settings.max_pairs:
            raise InvalidArgument(
                f"{len(request.pairs)} pairs; at most {self._settings.max_pairs} per call", param="pairs"
            )
        pairs = [(pair.prediction, pair.reference) for pair in request.pairs]
        scores = score_pairs(pairs, list(request.metrics))
        return evaluation_pb2.ComputeMetricsResponse(scores=scores, count=len(pairs))


    async def RunEvaluation(self, request, context):
        record = await self.runs.start(
            tenant_of(context), candidate=request.candidate, baseline=request.baseline,
            deployment=request.deployment, dataset_id=request.dataset_id, dataset_split=request.dataset_split,
            file_id=request.file_id,
            metrics=list(request.metrics), policy_json=request.policy_json,
            idempotency_key=request.idempotency_key, max_tokens=request.max_tokens, judge=request.judge)
        return evaluation_pb2.RunEvaluationResponse(evaluation=_message(record))

    async def GetEvaluation(self, request, context):
        tenant = tenant_of(context)
        record = await self.runs.get(tenant, request.evaluation_id)
        message = _message(record)
        if (summary := await self.runs.human_summary(tenant, record.id)) is not None:
            message.human.update(summary)
        return evaluation_pb2.GetEvaluationResponse(evaluation=message)

    async def SetGatePolicy(self, request, context):
        policy, updated = await self.runs.set_policy(tenant_of(context), request.deployment, request.policy_json)
        return evaluation_pb2.GatePolicyResponse(deployment=request.deployment, policy_json=policy.model_dump_json(),
                                                 configured=True, updated_at=updated)

    async def GetGatePolicy(self, request, context):
        policy, configured, updated = await self.runs.get_policy(tenant_of(context), request.deployment)
        return evaluation_pb2.GatePolicyResponse(deployment=request.deployment, policy_json=policy.model_dump_json(),
                                                 configured=configured, updated_at=updated)

    async def ExportHumanReview(self, request, context):
        review_id, items, content = await self.runs.export_review(
            tenant_of(context), request.evaluation_id, size=request.size, fmt=request.format, seed=request.seed)
        return evaluation_pb2.ExportHumanReviewResponse(review_id=review_id, format=request.format or "csv",
                                                        items=items, content=content)

    async def ImportHumanReview(self, request, context):
        rated, summary = await self.runs.import_review(tenant_of(context), request.evaluation_id, request.review_id,
                                                       fmt=request.format, content=request.content)
        response = evaluation_pb2.ImportHumanReviewResponse(rated=rated)
        response.summary.update(summary)
        return response

    async def ListEvaluations(self, request, context):
        records = await self.runs.list(tenant_of(context), request.limit)
        # The list leaves the reports out: each holds every example.
        return evaluation_pb2.ListEvaluationsResponse(evaluations=[_message(r, report=False) for r in records])


def _message(record: store.EvaluationRecord, *, report: bool = True) -> evaluation_pb2.EvaluationRun:
    message = evaluation_pb2.EvaluationRun(
        id=record.id, status=record.status, candidate=record.candidate, baseline=record.baseline,
        base_model=record.base_model, deployment=record.deployment, dataset_id=record.dataset_id,
        dataset_split=record.dataset_split,
        file_id=record.file_id, created_at=record.created_at, completed_at=record.completed_at or 0,
        progress_done=record.progress_done, progress_total=record.progress_total, passed=record.passed,
        reason=record.reason, error_code=record.error_code, error_message=record.error_message)
    if report and record.report:
        json_format.Parse(record.report, message.report)
    return message


async def build(runtime: Runtime) -> ServiceParts:
    settings: EvaluationSettings = runtime.settings  # type: ignore[assignment]
    channels = [open_channel(address, settings)
                for address in (settings.inference_addr, settings.training_addr, settings.dataprep_addr)]
    runs = Runs(runtime, inference_pb2_grpc.InferenceStub(channels[0]), training_pb2_grpc.TrainingStub(channels[1]),
                dataprep_pb2_grpc.DataPrepStub(channels[2]))
    servicer = EvaluationServicer(settings, runs)

    def register(server: grpc.aio.Server) -> list[str]:
        evaluation_pb2_grpc.add_EvaluationServicer_to_server(servicer, server)
        return [evaluation_pb2.DESCRIPTOR.services_by_name["Evaluation"].full_name]

    async def close() -> None:
        for channel in channels:
            await channel.close()

    return ServiceParts(register=register, background=[runs.work], on_close=close, servicer=servicer,
                        subscriptions=events.subscriptions(runs))


DEFINITION = ServiceDefinition(
    name="evaluation",
    settings_class=EvaluationSettings,
    tables=store.messaging,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
