"""The Training gRPC servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from google.protobuf import json_format

from protos import training_pb2, training_pb2_grpc
from services.shared.errors import InvalidArgument
from services.shared.models import ModelStore
from services.shared.process import Runtime, ServiceDefinition, ServiceParts
from services.shared.rpc import tenant_of
from services.training import events, store
from services.training.distillation import TeacherRef
from services.training.intake import JobIntake
from services.training.jobs import (
    DEFAULT_BETA,
    DEFAULT_REPLAY_FRACTION,
    Hyperparameters,
    JobSpec,
    fine_tuned_model_id,
)
from services.training.provider import LOCAL
from services.training.registry import ModelRegistry, RegisteredModel
from services.training.settings import TrainingSettings
from services.training.supervisor import JobSupervisor


def _model_message(model: RegisteredModel) -> training_pb2.Model:
    lineage = model.lineage or {}
    return training_pb2.Model(
        id=model.id,
        created=model.created,
        owned_by=model.owned_by,
        kind=model.kind,
        base_model=model.base_model,
        available=model.available,
        unavailable_reason=model.unavailable_reason,
        path=model.path,
        provider_model=model.provider_model,
        parent_model=lineage.get("parent") or "",
        job_id=lineage.get("job_id", ""),
        training_dataset=lineage.get("training_dataset", ""),
        validation_dataset=lineage.get("validation_dataset", ""),
    )


def _value(value: training_pb2.HyperparameterValue, cast):
    """None for "auto" (or unset), else the number."""
    return cast(value.number) if value.WhichOneof("value") == "number" else None


def _hp_message(values: dict) -> training_pb2.Hyperparameters:
    message = training_pb2.Hyperparameters()
    for name in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        if values.get(name) is None:
            getattr(message, name).auto = True
        else:
            getattr(message, name).number = values[name]
    return message


def job_message(job: store.JobRecord) -> training_pb2.Job:
    hyperparameters = json.loads(job.hyperparameters)
    method = json.loads(job.method)
    shown = hyperparameters.get("resolved") or hyperparameters["requested"]
    return training_pb2.Job(
        id=job.id,
        status=job.status,
        model=job.model,
        created_at=job.created_at,
        finished_at=job.finished_at or 0,
        fine_tuned_model=job.fine_tuned_model,
        training_file=job.training_file,
        validation_file=job.validation_file,
        hyperparameters=_hp_message(shown),
        trained_tokens=job.trained_tokens,
        error=training_pb2.JobError(code=job.error_code, message=job.error_message, param=job.error_param),
        seed=job.seed,
        estimated_finish=job.estimated_finish or 0,
        method=training_pb2.Method(
            type=method["type"], hyperparameters=_hp_message(shown), lora_r=method["lora_r"],
            lora_alpha=method["lora_alpha"], lora_dropout=method["lora_dropout"],
            early_stopping_patience=method["early_stopping_patience"],
            replay_fraction=method.get("replay_fraction", 0.0),
            teacher=training_pb2.Teacher(**method["teacher"]) if method.get("teacher") else None,
            beta=method.get("beta"),
        ),
        suffix=job.suffix,
        metadata=json.loads(job.metadata),
        training_dataset=job.training_dataset,
        validation_dataset=job.validation_dataset,
        provider=job.provider,
        provider_job_id=job.provider_job_id,
        provider_model=job.provider_model,
    )


def _spec(request: training_pb2.CreateJobRequest) -> JobSpec:
    # OpenAI accepts hyperparameters at the top level (legacy) or under method.supervised.
    hp = request.method.hyperparameters if request.method.HasField("hyperparameters") else request.hyperparameters
    method = request.method
    return JobSpec(
        model=request.model,
        training_file=request.training_file,
        validation_file=request.validation_file,
        hyperparameters=Hyperparameters(
            n_epochs=_value(hp.n_epochs, int),
            batch_size=_value(hp.batch_size, int),
            learning_rate_multiplier=_value(hp.learning_rate_multiplier, float),
        ),
        suffix=request.suffix,
        seed=request.seed if request.HasField("seed") else 0,
        method=method.type or "supervised",
        lora_r=method.lora_r or 16,
        lora_alpha=method.lora_alpha or 32,
        lora_dropout=method.lora_dropout if method.lora_dropout else 0.05,
        early_stopping_patience=method.early_stopping_patience,
        replay_fraction=method.replay_fraction if method.HasField("replay_fraction") else DEFAULT_REPLAY_FRACTION,
        beta=method.beta if method.HasField("beta") else DEFAULT_BETA,
        metadata=dict(request.metadata),
        teacher=TeacherRef(base_url=method.teacher.base_url, model=method.teacher.model,
                           api_key_name=method.teacher.api_key_name) if method.HasField("teacher") else None,
    )


def _limit(limit: int, default: int = 20) -> int:
    if limit < 0 or limit > 100:
        raise InvalidArgument("limit must be between 1 and 100", param="limit")
    return limit or default


class TrainingServicer(training_pb2_grpc.TrainingServicer):
    def __init__(self, runtime: Runtime, registry: ModelRegistry, intake: JobIntake, supervisor: JobSupervisor):
        self._db = runtime.db
        self._registry = registry
        self._intake = intake
        self._supervisor = supervisor

    async def ListModels(self, request, context):
        models = await self._registry.list_models(tenant_of(context))
        return training_pb2.ListModelsResponse(models=[_model_message(m) for m in models])

    async def GetModel(self, request, context):
        model = await self._registry.get_model(tenant_of(context), request.model_id)
        return training_pb2.GetModelResponse(model=_model_message(model))

    async def DeleteModel(self, request, context):
        await self._registry.delete_model(tenant_of(context), request.model_id)
        return training_pb2.DeleteModelResponse(model_id=request.model_id, deleted=True)

    async def CreateJob(self, request, context):
        async with self._db.transaction() as session:
            stored, created = await self._intake.create(session, tenant_of(context), _spec(request),
                                                        provider=request.provider or LOCAL,
                                                        idempotency_key=request.idempotency_key)
        self._supervisor.wake()
        return training_pb2.CreateJobResponse(job=job_message(stored), created=created)

    async def GetJob(self, request, context):
        async with self._db.transaction() as session:
            job = await store.get_job(session, tenant_of(context), request.job_id)
        return training_pb2.GetJobResponse(job=job_message(job))

    async def ListJobs(self, request, context):
        limit = _limit(request.limit)
        async with self._db.transaction() as session:
            jobs = await store.list_jobs(session, tenant_of(context), request.after, limit + 1)
        return training_pb2.ListJobsResponse(jobs=[job_message(j) for j in jobs[:limit]], has_more=len(jobs) > limit)

    async def CancelJob(self, request, context):
        job = await self._supervisor.cancel(tenant_of(context), request.job_id)
        return training_pb2.CancelJobResponse(job=job_message(job))

    async def PauseJob(self, request, context):
        job = await self._supervisor.pause(tenant_of(context), request.job_id)
        return training_pb2.PauseJobResponse(job=job_message(job))

    async def ResumeJob(self, request, context):
        job = await self._supervisor.resume(tenant_of(context), request.job_id)
        return training_pb2.ResumeJobResponse(job=job_message(job))

    async def ListJobEvents(self, request, context):
        limit = _limit(request.limit)
        async with self._db.transaction() as session:
            await store.get_job(session, tenant_of(context), request.job_id)
            rows = await store.list_events(session, request.job_id, request.after, limit + 1)
        events = []
        for row in rows[:limit]:
            event = training_pb2.JobEvent(id=row.id, created_at=row.created_at, level=row.level, message=row.message,
                                          type=row.type)
            if row.data:
                json_format.ParseDict(json.loads(row.data), event.data)
            events.append(event)
        return training_pb2.ListJobEventsResponse(events=events, has_more=len(rows) > limit)

    async def ListJobCheckpoints(self, request, context):
        limit = _limit(request.limit, default=10)
        async with self._db.transaction() as session:
            job = await store.get_job(session, tenant_of(context), request.job_id)
            rows = await store.list_checkpoints(session, request.job_id, limit + 1)
        base_id = job.fine_tuned_model or fine_tuned_model_id(job.root_base, job.tenant, job.suffix, job.id)
        checkpoints = [
            training_pb2.JobCheckpoint(
                id=row.id, created_at=row.created_at, fine_tuned_model_checkpoint=f"{base_id}:ckpt-step-{row.step}",
                step_number=row.step, metrics={k: float(v) for k, v in json.loads(row.metrics).items()},
                fine_tuning_job_id=job.id,
            )
            for row in rows[:limit]
        ]
        return training_pb2.ListJobCheckpointsResponse(checkpoints=checkpoints, has_more=len(rows) > limit)


async def build(runtime: Runtime) -> ServiceParts:
    settings: TrainingSettings = runtime.settings  # type: ignore[assignment]
    models = ModelStore(settings)
    supervisor = JobSupervisor(runtime, max_concurrent=settings.max_concurrent_jobs,
                               max_attempts=settings.max_job_attempts)
    registry = ModelRegistry(models, runtime.db, supervisor.adapters_dir)
    intake = JobIntake(models, settings)

    def register(server: grpc.aio.Server) -> list[str]:
        training_pb2_grpc.add_TrainingServicer_to_server(TrainingServicer(runtime, registry, intake, supervisor), server)
        return [training_pb2.DESCRIPTOR.services_by_name["Training"].full_name]

    return ServiceParts(register=register, subscriptions=events.subscriptions(runtime, intake, supervisor),
                        background=[supervisor.run])


DEFINITION = ServiceDefinition(
    name="training",
    settings_class=TrainingSettings,
    tables=store.messaging,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
