"""Taking a fine-tuning job in: refuse one that cannot run (naming the field) before anything is
stored, resolve a warm start's parent, and store the job with its first events.

CreateJob (server.py) and the feedback loop's consumer (events.py) both create jobs here, in the
caller's transaction. A request whose idempotency key already made a job gets that job back, as it
is now, without being checked again.
"""

from __future__ import annotations

import asyncio
import json

from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.errors import FailedPrecondition
from services.shared.models import ModelStore, bitsandbytes_installed
from services.training import store
from services.training.jobs import JobSpec, validate_full_size, validate_job
from services.training.provider import LOCAL, validate_provider
from services.training.settings import TrainingSettings
from services.training.warm_start import Parent, check_method, parent_of, warm_started


class JobIntake:
    def __init__(self, models: ModelStore, settings: TrainingSettings):
        self._models = models
        self._settings = settings

    async def parent(self, session: AsyncSession, tenant: str, model_id: str) -> Parent | None:
        """The tenant's fine-tuned model `model_id` as a warm start's parent; None for a base model
        or a model the tenant does not have."""
        if model_id in self._models.base_model_ids():
            return None
        row = await store.find_model(session, tenant, model_id)
        if row is None:
            return None
        return parent_of(row)

    async def create(self, session: AsyncSession, tenant: str, spec: JobSpec, *, provider: str = LOCAL,
                     idempotency_key: str = "", max_lr_multiplier: float = 10.0) -> tuple[store.JobRecord, bool]:
        """The job `spec` asks for, stored in `session` (False: the key's earlier job, unchanged).
        `max_lr_multiplier`: the API's cap, which the operator's own loop settings may pass."""
        import torch  # only to ask whether a CUDA GPU is there

        if idempotency_key:
            existing = await store.job_by_idempotency_key(session, tenant, idempotency_key)
            if existing is not None:
                return existing, False
        settings = self._settings
        validate_provider(provider, configured=settings.provider_configured, method=spec.method)
        base_models = self._models.base_model_ids()
        parent = await self.parent(session, tenant, spec.model) if provider == LOCAL else None
        # A provider job names the remote's base model, which the remote checks when it is created.
        known_models = [spec.model] if provider != LOCAL else base_models + ([spec.model] if parent else [])
        validate_job(spec, known_models=known_models, cuda_available=torch.cuda.is_available(),
                     teacher_keys=settings.teacher_key_urls(), qlora_on_cpu=settings.qlora_on_cpu,
                     bitsandbytes_installed=bitsandbytes_installed(), max_lr_multiplier=max_lr_multiplier)
        base_model, warm_start_note = spec.model, ""
        if parent is not None:
            check_method(parent, spec.method)
            if parent.base_model not in base_models:
                raise FailedPrecondition(f"The model '{parent.id}' was trained from the base model "
                                         f"'{parent.base_model}', which this service no longer has", param="model",
                                         code="model_unavailable")
            spec, warm_start_note = warm_started(spec, parent)
            base_model = parent.base_model
        if spec.method == "full":
            parameters = await asyncio.to_thread(self._models.parameter_count, base_model)
            validate_full_size(parameters, settings.max_full_parameters)
        record = store.JobRecord(
            id=store.new_id("ftjob"), tenant=tenant, status=store.VALIDATING, model=spec.model, base_model=base_model,
            training_file=spec.training_file, validation_file=spec.validation_file, training_dataset="",
            validation_dataset="", hyperparameters=json.dumps({"requested": spec.hyperparameters_dict()}),
            method=json.dumps(spec.method_dict()), suffix=spec.suffix, seed=spec.seed,
            metadata=json.dumps(spec.metadata), fine_tuned_model="", trained_tokens=0, error_code="",
            error_message="", error_param="", created_at=store.now(), finished_at=None, estimated_finish=None,
            idempotency_key=idempotency_key or None, attempts=0, provider=provider,
        )
        stored, created = await store.add_job(session, record)
        if created:
            await store.add_event(session, stored.id, f"Created fine-tuning job: {stored.id}")
            if warm_start_note:
                await store.add_event(session, stored.id, warm_start_note)
            await store.add_event(session, stored.id, "Validating training file: " + stored.training_file)
        return stored, created
