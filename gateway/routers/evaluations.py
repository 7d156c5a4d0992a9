"""`/v1/evaluations`: side-by-side runs of a candidate against production (or the base model) on
held-out examples, and the gate's verdict."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, UploadFile
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field

from gateway.clients import call
from gateway.deps import ClientsDep, TenantDep
from gateway.errors import ERROR_RESPONSES
from protos import evaluation_pb2
from services.shared.errors import InvalidArgument

MAX_RATINGS_BYTES = 20_000_000  # 500 items of long answers fit many times over
router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"], responses=ERROR_RESPONSES)


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate: str = Field(min_length=1, max_length=255)
    # Default: the deployment's production version, else the candidate's base model.
    baseline: str = Field(default="", max_length=255)
    deployment: str = Field(default="", max_length=63)
    # Held-out examples: a prepared dataset's validation split, or a chat JSONL file.
    dataset_id: str = Field(default="", max_length=64)
    file_id: str = Field(default="", max_length=64)
    metrics: list[str] = Field(default_factory=list, max_length=16)
    # The gate's policy (primary_metric, min_ratio, min_gain, require_significance, min_examples,
    # max_forgetting_drop, max_slice_drop); what is left out keeps its default.
    policy: dict[str, Any] | None = None
    max_tokens: int = Field(default=0, ge=0)
    # Have the configured judge model grade production's and the candidate's answers.
    judge: bool = False


class Progress(BaseModel):
    done: int
    total: int


class ErrorPublic(BaseModel):
    code: str
    message: str


class EvaluationPublic(BaseModel):
    id: str
    object: Literal["evaluation"] = "evaluation"
    status: Literal["queued", "running", "completed", "failed"]
    candidate: str
    baseline: str | None
    base_model: str | None
    deployment: str | None
    dataset_id: str | None
    file_id: str | None
    created_at: int
    completed_at: int | None
    progress: Progress
    # Per model version: each metric's value (0-1); `intervals` holds their 95% bootstrap intervals.
    metrics: dict[str, dict[str, float]] | None = None
    intervals: dict[str, dict[str, tuple[float, float]]] | None = None
    # Agreement with the base model's answers to general prompts, per model version.
    general: dict[str, float] | None = None
    slices: dict[str, dict[str, float]] | None = None
    # When examples are marked "corrected" (prompts users corrected): per model the share it now
    # answers as corrected.
    fix_rate: dict[str, float] | None = None
    verdict: dict[str, Any] | None = None
    # Is it worth it: the primary metric's gain, what training cost (the job's trained tokens) and
    # what serving costs per 1K tokens (from the completion log).
    cost: dict[str, Any] | None = None
    # Per model version, when asked for ("perplexity" among the metrics): the loss per token of the
    # reference answers and its exponential.
    perplexity: dict[str, Any] | None = None
    # The judge model's grades per model version (correct, helpful, would_trust), when asked for.
    judge: dict[str, Any] | None = None
    # The latest imported human review: per model what the experts said, beside the metric.
    human: dict[str, Any] | None = None
    error: ErrorPublic | None = None


class ReviewExport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(default=50, ge=1, le=500)
    format: Literal["csv", "jsonl"] = "csv"
    seed: int = 0


class ReviewPublic(BaseModel):
    id: str
    object: Literal["human_review"] = "human_review"
    evaluation_id: str
    format: str
    items: int
    # The file for the experts: prompts, references, answers A and B, and columns to rate.
    content: str


class RatingsPublic(BaseModel):
    object: Literal["human_review.ratings"] = "human_review.ratings"
    review_id: str
    rated: int
    summary: dict[str, Any]


class EvaluationsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvaluationPublic]


class ExamplePublic(BaseModel):
    messages: list[dict[str, str]]
    reference: str
    slice: str
    corrected: bool = False
    answers: dict[str, str]
    scores: dict[str, dict[str, float]]


class ExamplesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[ExamplePublic]


def _report(run: evaluation_pb2.EvaluationRun) -> dict[str, Any]:
    return json_format.MessageToDict(run.report) if run.report.fields else {}


def _public(run: evaluation_pb2.EvaluationRun) -> EvaluationPublic:
    report = _report(run)
    metrics = report.get("metrics")
    return EvaluationPublic(
        id=run.id, status=run.status, candidate=run.candidate, baseline=run.baseline or None,
        base_model=run.base_model or None, deployment=run.deployment or None, dataset_id=run.dataset_id or None,
        file_id=run.file_id or None, created_at=run.created_at, completed_at=run.completed_at or None,
        progress=Progress(done=run.progress_done, total=run.progress_total),
        metrics={model: {name: s["value"] for name, s in scored.items()} for model, scored in metrics.items()}
        if metrics else None,
        intervals={model: {name: (s["low"], s["high"]) for name, s in scored.items()} for model, scored in metrics.items()}
        if metrics else None,
        general=report.get("general"), slices=report.get("slices"), fix_rate=report.get("fix_rate"),
        verdict=report.get("verdict"),
        cost=report.get("cost"), judge=report.get("judge"), perplexity=report.get("perplexity"),
        human=json_format.MessageToDict(run.human) if run.human.fields else None,
        error=ErrorPublic(code=run.error_code, message=run.error_message) if run.status == "failed" else None,
    )


@router.post("", response_model=EvaluationPublic)
async def create_evaluation(body: EvaluationCreate, clients: ClientsDep, tenant: TenantDep,
                            idempotency_key: Annotated[str | None, Header(max_length=255)] = None) -> EvaluationPublic:
    request = evaluation_pb2.RunEvaluationRequest(
        candidate=body.candidate, baseline=body.baseline, deployment=body.deployment, dataset_id=body.dataset_id,
        file_id=body.file_id, metrics=body.metrics, policy_json=json.dumps(body.policy) if body.policy else "",
        idempotency_key=idempotency_key or "", max_tokens=body.max_tokens, judge=body.judge)
    response = await call("evaluation", clients.evaluation.RunEvaluation(request, **clients.options(tenant)))
    return _public(response.evaluation)


@router.get("", response_model=EvaluationsPublic)
async def list_evaluations(clients: ClientsDep, tenant: TenantDep,
                           limit: Annotated[int, Query(ge=1, le=100)] = 20) -> EvaluationsPublic:
    response = await call("evaluation", clients.evaluation.ListEvaluations(
        evaluation_pb2.ListEvaluationsRequest(limit=limit), **clients.options(tenant)))
    return EvaluationsPublic(data=[_public(run) for run in response.evaluations])


@router.get("/{evaluation_id}", response_model=EvaluationPublic)
async def get_evaluation(evaluation_id: str, clients: ClientsDep, tenant: TenantDep) -> EvaluationPublic:
    response = await call("evaluation", clients.evaluation.GetEvaluation(
        evaluation_pb2.GetEvaluationRequest(evaluation_id=evaluation_id), **clients.options(tenant)))
    return _public(response.evaluation)


@router.get("/{evaluation_id}/examples", response_model=ExamplesPublic)
async def list_examples(evaluation_id: str, clients: ClientsDep, tenant: TenantDep) -> ExamplesPublic:
    """Every held-out example with each model's answer and per-example scores."""
    response = await call("evaluation", clients.evaluation.GetEvaluation(
        evaluation_pb2.GetEvaluationRequest(evaluation_id=evaluation_id), **clients.options(tenant)))
    return ExamplesPublic(data=[ExamplePublic(**example) for example in _report(response.evaluation).get("examples", [])])


@router.post("/{evaluation_id}/human_reviews", response_model=ReviewPublic)
async def export_review(evaluation_id: str, body: ReviewExport, clients: ClientsDep, tenant: TenantDep) -> ReviewPublic:
    """A blind sample for domain experts: two answers per prompt, shuffled and unlabelled."""
    response = await call("evaluation", clients.evaluation.ExportHumanReview(evaluation_pb2.ExportHumanReviewRequest(
        evaluation_id=evaluation_id, size=body.size, format=body.format, seed=body.seed), **clients.options(tenant)))
    return ReviewPublic(id=response.review_id, evaluation_id=evaluation_id, format=response.format,
                        items=response.items, content=response.content.decode())


@router.post("/{evaluation_id}/human_reviews/{review_id}/ratings", response_model=RatingsPublic)
async def import_ratings(evaluation_id: str, review_id: str, file: UploadFile, clients: ClientsDep,
                         tenant: TenantDep) -> RatingsPublic:
    """The experts' ratings: the exported file with its rating columns filled in (.csv or .jsonl)."""
    fmt = "jsonl" if (file.filename or "").endswith(".jsonl") else "csv"
    content = await file.read(MAX_RATINGS_BYTES + 1)
    if len(content) > MAX_RATINGS_BYTES:
        raise InvalidArgument(f"the ratings file is over {MAX_RATINGS_BYTES // 1_000_000} MB", param="file")
    response = await call("evaluation", clients.evaluation.ImportHumanReview(evaluation_pb2.ImportHumanReviewRequest(
        evaluation_id=evaluation_id, review_id=review_id, format=fmt, content=content), **clients.options(tenant)))
    return RatingsPublic(review_id=review_id, rated=response.rated, summary=json_format.MessageToDict(response.summary))


policies = APIRouter(prefix="/v1/deployments", tags=["evaluations"], responses=ERROR_RESPONSES)


class GatePolicyPublic(BaseModel):
    deployment: str
    object: Literal["gate_policy"] = "gate_policy"
    # Every rule's setting; `configured` is false while the defaults apply.
    policy: dict[str, Any]
    configured: bool
    updated_at: int | None


def _policy(response: evaluation_pb2.GatePolicyResponse) -> GatePolicyPublic:
    return GatePolicyPublic(deployment=response.deployment, policy=json.loads(response.policy_json),
                            configured=response.configured, updated_at=response.updated_at or None)


@policies.put("/{name}/gate_policy", response_model=GatePolicyPublic)
async def set_gate_policy(name: str, body: dict[str, Any], clients: ClientsDep, tenant: TenantDep) -> GatePolicyPublic:
    """The gate every evaluation for deployment NAME applies (fields left out keep their defaults)."""
    response = await call("evaluation", clients.evaluation.SetGatePolicy(evaluation_pb2.SetGatePolicyRequest(
        deployment=name, policy_json=json.dumps(body)), **clients.options(tenant)))
    return _policy(response)


@policies.get("/{name}/gate_policy", response_model=GatePolicyPublic)
async def get_gate_policy(name: str, clients: ClientsDep, tenant: TenantDep) -> GatePolicyPublic:
    response = await call("evaluation", clients.evaluation.GetGatePolicy(evaluation_pb2.GetGatePolicyRequest(
        deployment=name), **clients.options(tenant)))
    return _policy(response)
