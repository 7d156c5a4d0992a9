"""`/v1/feedback`: thumbs up/down and corrections of served completions, the quarantine, and each
deployment's feedback loop (`/v1/deployments/{name}/loop`, `/loop_policy`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field

from gateway.clients import call, stream
from gateway.deps import ClientsDep, TenantDep
from gateway.errors import ERROR_RESPONSES
from protos import feedback_pb2
from services.shared.errors import InvalidArgument

router = APIRouter(prefix="/v1/feedback", tags=["feedback"], responses=ERROR_RESPONSES)
loops = APIRouter(prefix="/v1/deployments", tags=["feedback"], responses=ERROR_RESPONSES)

_RATINGS = {"up": feedback_pb2.RATING_UP, "down": feedback_pb2.RATING_DOWN}
_RATING_NAMES = {number: name for name, number in _RATINGS.items()}
Status = Literal["rating", "pending", "used", "quarantined", "rejected"]


class FeedbackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The `id` of a served completion (/v1/chat/completions or /v1/completions).
    completion_id: str = Field(min_length=1, max_length=128)
    rating: Literal["up", "down"]
    # The right answer; it becomes a training example at the next retrain.
    correction: str = Field(default="", max_length=20_000)
    comment: str = Field(default="", max_length=20_000)
    # The agent giving the feedback; required with a correction (the guards count per user).
    user: str = Field(default="", max_length=255)
    # Optional: the model or deployment the caller believes answered.
    model: str = Field(default="", max_length=255)


class FeedbackPublic(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    completion_id: str
    deployment: str | None
    model: str
    rating: str
    correction: str | None
    comment: str | None
    user: str | None
    created_at: int
    status: Status
    retrain_request_id: str | None
    quarantine_reason: str | None
    prompt: list[dict[str, str]] | None = None
    answer: str | None = None


class FeedbackCreated(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    completion_id: str
    deployment: str | None
    model: str
    created_at: int
    status: Status
    # False when the Idempotency-Key matched an earlier submission (this is that one).
    created: bool
    # Set when this submission completed a batch and a retrain was requested.
    retrain_request_id: str | None


class FeedbackList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FeedbackPublic]
    has_more: bool


class Review(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feedback_ids: list[str] = Field(min_length=1, max_length=1000)
    reviewer: str = Field(default="", max_length=255)


def _public(item: feedback_pb2.FeedbackItem, *, texts: bool = False) -> FeedbackPublic:
    return FeedbackPublic(
        id=item.id, completion_id=item.completion_id, deployment=item.deployment or None, model=item.model_version,
        rating=_RATING_NAMES.get(item.rating, ""), correction=item.correction or None, comment=item.comment or None,
        user=item.user or None, created_at=item.created_at, status=item.status,
        retrain_request_id=item.retrain_request_id or None, quarantine_reason=item.quarantine_reason or None,
        prompt=[{"role": m.role, "content": m.content} for m in item.prompt] if texts else None,
        answer=item.answer if texts else None)


@router.post("", response_model=FeedbackCreated)
async def create_feedback(body: FeedbackCreate, clients: ClientsDep, tenant: TenantDep,
                          idempotency_key: Annotated[str, Header(max_length=255)] = "") -> FeedbackCreated:
    """Rate a served completion, optionally with the right answer. Fast: no model work happens here."""
    request = feedback_pb2.SubmitFeedbackRequest(
        completion_id=body.completion_id, rating=_RATINGS[body.rating], correction=body.correction,
        comment=body.comment, user=body.user, model=body.model, idempotency_key=idempotency_key)
    response = await call("feedback", clients.feedback.SubmitFeedback(request, **clients.options(tenant)))
    return FeedbackCreated(id=response.feedback_id, completion_id=body.completion_id,
                           deployment=response.deployment or None, model=response.model_version,
                           created_at=response.created_at, status=response.status, created=response.created,
                           retrain_request_id=response.retrain_request_id or None)


@router.get("", response_model=FeedbackList)
async def list_feedback(clients: ClientsDep, tenant: TenantDep, deployment: str = "", status: Status | None = None,
                        retrain_request_id: str = "", after: str = "",
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> FeedbackList:
    request = feedback_pb2.ListFeedbackRequest(deployment=deployment, status=status or "",
                                               retrain_request_id=retrain_request_id, after=after, limit=limit)
    response = await call("feedback", clients.feedback.ListFeedback(request, **clients.options(tenant)))
    return FeedbackList(data=[_public(item, texts=True) for item in response.items], has_more=response.has_more)


@router.get("/export", response_class=StreamingResponse)
async def export_feedback(clients: ClientsDep, tenant: TenantDep, deployment: str,
                          format: Literal["chat", "preference"] = "chat",
                          pending_only: bool = False) -> StreamingResponse:
    """A deployment's corrections as training data (JSONL): supervised chats, or preference pairs
    (chosen = the correction, rejected = the model's answer) for DPO."""
    chunks = await stream("feedback", clients.feedback.ExportFeedback(
        feedback_pb2.ExportFeedbackRequest(deployment=deployment, format=format, pending_only=pending_only),
        **clients.options(tenant)))
    return StreamingResponse(chunks, media_type="application/jsonl")


@router.get("/quarantine", response_model=FeedbackList)
async def list_quarantine(clients: ClientsDep, tenant: TenantDep, deployment: str = "",
                          limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> FeedbackList:
    """Corrections the poisoning guards hold for a person to release or reject, oldest first."""
    response = await call("feedback", clients.feedback.ListQuarantine(
        feedback_pb2.ListQuarantineRequest(deployment=deployment, limit=limit), **clients.options(tenant)))
    return FeedbackList(data=[_public(item, texts=True) for item in response.items], has_more=False)


async def _review(action: str, body: Review, clients: ClientsDep, tenant: str) -> FeedbackList:
    response = await call("feedback", clients.feedback.ReviewQuarantined(feedback_pb2.ReviewQuarantinedRequest(
        feedback_ids=body.feedback_ids, action=action, reviewer=body.reviewer), **clients.options(tenant)))
    return FeedbackList(data=[_public(item) for item in response.items], has_more=False)


@router.post("/quarantine/release", response_model=FeedbackList)
async def release(body: Review, clients: ClientsDep, tenant: TenantDep) -> FeedbackList:
    """Quarantined corrections count toward the next batch again."""
    return await _review("release", body, clients, tenant)


@router.post("/quarantine/reject", response_model=FeedbackList)
async def reject(body: Review, clients: ClientsDep, tenant: TenantDep) -> FeedbackList:
    """Quarantined corrections are never used for training."""
    return await _review("reject", body, clients, tenant)


class LoopPolicyPublic(BaseModel):
    deployment: str
    object: Literal["loop_policy"] = "loop_policy"
    policy: dict[str, Any]
    # False while the defaults apply.
    configured: bool


def _policy_dict(policy: feedback_pb2.LoopPolicy) -> dict[str, Any]:
    # Read field by field: MessageToDict would write the int64 fields as strings.
    return {field.name: getattr(policy, field.name) for field in policy.DESCRIPTOR.fields}


class CyclePublic(BaseModel):
    id: str
    object: Literal["loop.cycle"] = "loop.cycle"
    deployment: str
    trigger: str
    stage: str
    finished: bool
    created_at: int
    updated_at: int
    model_version: str
    corrections: int
    positives: int
    dataset_id: str | None
    file_id: str | None
    job_id: str | None
    candidate_version: str | None
    evaluation_id: str | None
    reason: str | None
    feedback_ids: list[str]


class UserSharePublic(BaseModel):
    user: str
    pending: int
    eligible: int
    held_back: int


class LoopPublic(BaseModel):
    deployment: str
    object: Literal["loop"] = "loop"
    policy: dict[str, Any]
    model_version: str
    pending_corrections: int
    eligible_corrections: int
    held_back: int
    quarantined: int
    users: list[UserSharePublic]
    current: CyclePublic | None
    cycles: list[CyclePublic]
    up_rate: float
    window_ratings: int


def _cycle(cycle: feedback_pb2.LoopCycle) -> CyclePublic:
    return CyclePublic(
        id=cycle.id, deployment=cycle.deployment, trigger=cycle.trigger, stage=cycle.stage, finished=cycle.finished,
        created_at=cycle.created_at, updated_at=cycle.updated_at, model_version=cycle.model_version,
        corrections=cycle.corrections, positives=cycle.positives, dataset_id=cycle.dataset_id or None,
        file_id=cycle.file_id or None, job_id=cycle.job_id or None, candidate_version=cycle.candidate_version or None,
        evaluation_id=cycle.evaluation_id or None, reason=cycle.reason or None, feedback_ids=list(cycle.feedback_ids))


@loops.get("/{name}/loop", response_model=LoopPublic)
async def get_loop(name: str, clients: ClientsDep, tenant: TenantDep,
                   limit: Annotated[int, Query(ge=1, le=100)] = 20) -> LoopPublic:
    """Deployment NAME's feedback loop: its policy, the corrections waiting (per user, with what the
    batch cap holds back), the quarantine, the current cycle and the history of cycles, each with its
    feedback ids, dataset, training job, candidate, evaluation and outcome."""
    r = await call("feedback", clients.feedback.GetLoop(feedback_pb2.GetLoopRequest(deployment=name, limit=limit),
                                                        **clients.options(tenant)))
    return LoopPublic(
        deployment=r.deployment, policy=_policy_dict(r.policy), model_version=r.model_version,
        pending_corrections=r.pending_corrections, eligible_corrections=r.eligible_corrections, held_back=r.held_back,
        quarantined=r.quarantined,
        users=[UserSharePublic(user=u.user, pending=u.pending, eligible=u.eligible, held_back=u.held_back)
               for u in r.users],
        current=_cycle(r.current) if r.HasField("current") else None, cycles=[_cycle(c) for c in r.cycles],
        up_rate=r.up_rate, window_ratings=r.window_ratings)


@loops.put("/{name}/loop_policy", response_model=LoopPolicyPublic)
async def set_loop_policy(name: str, body: dict[str, Any], clients: ClientsDep, tenant: TenantDep) -> LoopPolicyPublic:
    """Deployment NAME's loop policy: threshold, cooldown_s, max_user_share, user_corrections_per_hour,
    near_duplicate_threshold, drift_window, drift_min_up_rate, drift_rollback_s, retrain_every_days,
    positives_per_batch, enabled. Fields left out keep what they were."""
    policy = feedback_pb2.LoopPolicy()
    try:
        json_format.ParseDict(body, policy)
    except json_format.ParseError as error:
        raise InvalidArgument(f"policy: {error}", param="policy") from None
    response = await call("feedback", clients.feedback.SetLoopPolicy(
        feedback_pb2.SetLoopPolicyRequest(deployment=name, policy=policy), **clients.options(tenant)))
    return LoopPolicyPublic(deployment=name, policy=_policy_dict(response.policy), configured=response.custom)


@loops.get("/{name}/loop_policy", response_model=LoopPolicyPublic)
async def get_loop_policy(name: str, clients: ClientsDep, tenant: TenantDep) -> LoopPolicyPublic:
    response = await call("feedback", clients.feedback.GetLoopPolicy(
        feedback_pb2.GetLoopPolicyRequest(deployment=name), **clients.options(tenant)))
    return LoopPolicyPublic(deployment=name, policy=_policy_dict(response.policy), configured=response.custom)
