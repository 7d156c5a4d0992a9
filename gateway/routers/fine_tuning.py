"""`/v1/fine_tuning/jobs`, in OpenAI's shapes, so the official SDK works unchanged."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field

from gateway.clients import call
from gateway.deps import ClientsDep, TenantDep
from gateway.errors import ERROR_RESPONSES
from protos import training_pb2
from services.shared.errors import InvalidArgument, NotImplementedYet

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=ERROR_RESPONSES)

Auto = Literal["auto"]


class HyperparametersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | int = "auto"
    batch_size: Auto | int = "auto"
    learning_rate_multiplier: Auto | float = "auto"

    def to_message(self) -> training_pb2.Hyperparameters:
        message = training_pb2.Hyperparameters()
        for name in ("n_epochs", "batch_size", "learning_rate_multiplier"):
            value = getattr(self, name)
            if value == "auto":
                getattr(message, name).auto = True
            else:
                getattr(message, name).number = value
        return message


class SupervisedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: HyperparametersIn = HyperparametersIn()


class DpoHyperparametersIn(HyperparametersIn):
    beta: Auto | float = "auto"


class DpoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparametersIn = DpoHyperparametersIn()


class TeacherIn(BaseModel):
    """The distillation teacher: an OpenAI-compatible endpoint, and the name of a key configured for it."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(max_length=2048)
    model: str = Field(max_length=256)
    api_key_name: str = Field(default="", max_length=63)

    def to_message(self) -> training_pb2.Teacher:
        return training_pb2.Teacher(base_url=self.base_url, model=self.model, api_key_name=self.api_key_name)


class MethodIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["supervised", "dpo", "reinforcement", "qlora", "full", "distillation"] = "supervised"
    supervised: SupervisedIn | None = None
    dpo: DpoIn | None = None
    # tuneloop's own LoRA settings
    lora_r: int | None = Field(default=None, ge=1, le=256)
    lora_alpha: int | None = Field(default=None, ge=1, le=1024)
    lora_dropout: float | None = Field(default=None, ge=0, lt=1)
    early_stopping_patience: int | None = Field(default=None, ge=0, le=50)
    replay_fraction: float | None = Field(default=None, ge=0, le=0.9)
    # For "distillation": who answers the training prompts.
    teacher: TeacherIn | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: HyperparametersIn | None = None
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = None
    method: MethodIn | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    # tuneloop's own: "local" (default) or "openai", the remote fine-tuning API the platform is set up with
    provider: str | None = None


class JobPublic(BaseModel):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    model: str
    created_at: int
    finished_at: int | None
    fine_tuned_model: str | None
    organization_id: str
    result_files: list[str] = []
    status: str
    validation_file: str | None
    training_file: str
    hyperparameters: dict[str, Any]
    trained_tokens: int | None
    error: dict[str, Any] | None
    seed: int
    estimated_finish: int | None
    method: dict[str, Any]
    metadata: dict[str, str] | None
    integrations: list = []
    user_provided_suffix: str | None
    # tuneloop's own: where the job trains; for a provider, its job id and model id there
    provider: str
    provider_job_id: str | None
    provider_model: str | None


class JobsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobPublic]
    has_more: bool


class EventPublic(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None


class EventsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventPublic]
    has_more: bool


class CheckpointPublic(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, float]
    fine_tuning_job_id: str


class CheckpointsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointPublic]
    has_more: bool
    first_id: str | None
    last_id: str | None


def _hp_public(message: training_pb2.Hyperparameters) -> dict[str, Any]:
    values = {}
    for name, cast in (("n_epochs", int), ("batch_size", int), ("learning_rate_multiplier", float)):
        value = getattr(message, name)
        values[name] = cast(value.number) if value.WhichOneof("value") == "number" else "auto"
    return values


def public_job(job: training_pb2.Job, tenant: str) -> JobPublic:
    hyperparameters = _hp_public(job.hyperparameters)
    method: dict[str, Any] = {"type": job.method.type or "supervised"}
    method[method["type"]] = {"hyperparameters": hyperparameters}
    if job.method.HasField("beta"):
        method[method["type"]] = {"hyperparameters": {**hyperparameters, "beta": job.method.beta}}
    if job.method.HasField("teacher"):
        teacher = job.method.teacher
        method["teacher"] = {"base_url": teacher.base_url, "model": teacher.model, "api_key_name": teacher.api_key_name}
    error = None
    if job.error.code:
        error = {"code": job.error.code, "message": job.error.message, "param": job.error.param or None}
    return JobPublic(
        id=job.id, model=job.model, created_at=job.created_at, finished_at=job.finished_at or None,
        fine_tuned_model=job.fine_tuned_model or None, organization_id=tenant, status=job.status,
        validation_file=job.validation_file or None, training_file=job.training_file, hyperparameters=hyperparameters,
        trained_tokens=job.trained_tokens if job.status == "succeeded" else None, error=error, seed=job.seed,
        estimated_finish=job.estimated_finish or None, method=method, metadata=dict(job.metadata) or None,
        user_provided_suffix=job.suffix or None, provider=job.provider or "local",
        provider_job_id=job.provider_job_id or None, provider_model=job.provider_model or None,
    )


@router.post("", response_model=JobPublic)
async def create_job(
    body: JobCreate,
    clients: ClientsDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JobPublic:
    if body.integrations:
        raise NotImplementedYet("integrations (e.g. Weights & Biases) are not supported", param="integrations")
    method = body.method or MethodIn()
    if method.type == "reinforcement":
        raise NotImplementedYet("method.type 'reinforcement' is not supported", param="method.type")
    hyperparameters = body.hyperparameters
    for name, section in (("supervised", method.supervised), ("dpo", method.dpo)):
        if section is None:
            continue
        if name == "dpo" and method.type != "dpo":
            raise InvalidArgument(f"method.dpo is only for method.type 'dpo', not {method.type!r}", param="method.dpo")
        if hyperparameters is not None:
            raise InvalidArgument(f"give hyperparameters either at the top level or in method.{name}, not both",
                                  param="hyperparameters")
        hyperparameters = section.hyperparameters
    beta = method.dpo.hyperparameters.beta if method.dpo is not None else "auto"
    request = training_pb2.CreateJobRequest(
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file or "",
        hyperparameters=(hyperparameters or HyperparametersIn()).to_message(),
        suffix=body.suffix or "",
        method=training_pb2.Method(
            type=method.type, lora_r=method.lora_r or 0, lora_alpha=method.lora_alpha or 0,
            lora_dropout=method.lora_dropout or 0.0, early_stopping_patience=method.early_stopping_patience or 0,
            replay_fraction=method.replay_fraction,
            teacher=method.teacher.to_message() if method.teacher else None,
            beta=None if beta == "auto" else beta,
        ),
        metadata=body.metadata or {},
        idempotency_key=idempotency_key or "",
        provider=body.provider or "",
    )
    if body.seed is not None:
        request.seed = body.seed
    response = await call("training", clients.training.CreateJob(request, **clients.options(tenant)))
    return public_job(response.job, tenant)


@router.get("", response_model=JobsPublic)
async def list_jobs(
    clients: ClientsDep, tenant: TenantDep, after: str = "", limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> JobsPublic:
    response = await call("training", clients.training.ListJobs(
        training_pb2.ListJobsRequest(after=after, limit=limit), **clients.options(tenant)))
    return JobsPublic(data=[public_job(job, tenant) for job in response.jobs], has_more=response.has_more)


@router.get("/{job_id}", response_model=JobPublic)
async def retrieve_job(job_id: str, clients: ClientsDep, tenant: TenantDep) -> JobPublic:
    response = await call("training", clients.training.GetJob(
        training_pb2.GetJobRequest(job_id=job_id), **clients.options(tenant)))
    return public_job(response.job, tenant)


@router.post("/{job_id}/cancel", response_model=JobPublic)
async def cancel_job(job_id: str, clients: ClientsDep, tenant: TenantDep) -> JobPublic:
    response = await call("training", clients.training.CancelJob(
        training_pb2.CancelJobRequest(job_id=job_id), **clients.options(tenant)))
    return public_job(response.job, tenant)


@router.post("/{job_id}/pause", response_model=JobPublic)
async def pause_job(job_id: str, clients: ClientsDep, tenant: TenantDep) -> JobPublic:
    response = await call("training", clients.training.PauseJob(
        training_pb2.PauseJobRequest(job_id=job_id), **clients.options(tenant)))
    return public_job(response.job, tenant)


@router.post("/{job_id}/resume", response_model=JobPublic)
async def resume_job(job_id: str, clients: ClientsDep, tenant: TenantDep) -> JobPublic:
    response = await call("training", clients.training.ResumeJob(
        training_pb2.ResumeJobRequest(job_id=job_id), **clients.options(tenant)))
    return public_job(response.job, tenant)


@router.get("/{job_id}/events", response_model=EventsPublic)
async def list_events(
    job_id: str, clients: ClientsDep, tenant: TenantDep, after: str = "",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> EventsPublic:
    response = await call("training", clients.training.ListJobEvents(
        training_pb2.ListJobEventsRequest(job_id=job_id, after=after, limit=limit), **clients.options(tenant)))
    data = [
        EventPublic(id=e.id, created_at=e.created_at, level=e.level, message=e.message, type=e.type,
                    data=json_format.MessageToDict(e.data) if e.data.fields else None)
        for e in response.events
    ]
    return EventsPublic(data=data, has_more=response.has_more)


@router.get("/{job_id}/checkpoints", response_model=CheckpointsPublic)
async def list_checkpoints(
    job_id: str, clients: ClientsDep, tenant: TenantDep, after: str = "",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> CheckpointsPublic:
    response = await call("training", clients.training.ListJobCheckpoints(
        training_pb2.ListJobCheckpointsRequest(job_id=job_id, after=after, limit=limit), **clients.options(tenant)))
    data = [
        CheckpointPublic(id=c.id, created_at=c.created_at, fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
                         step_number=c.step_number, metrics=dict(c.metrics), fine_tuning_job_id=c.fine_tuning_job_id)
        for c in response.checkpoints
    ]
    return CheckpointsPublic(data=data, has_more=response.has_more, first_id=data[0].id if data else None,
                             last_id=data[-1].id if data else None)
