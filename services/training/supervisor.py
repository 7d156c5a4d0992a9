"""The job supervisor: moves jobs from validating_files to queued to running to an end, and back
on its feet after a restart.

The jobs table is the queue. Each job trains in its own subprocess (`services.training.job_process`),
so a crash or a cancel never takes the service down; the subprocess reports progress as JSON lines
on stdout, which this module turns into job events, checkpoints and platform events. A job found
"running" with no process behind it (the service was killed) is queued again and resumes from its
last checkpoint, or fails with a reason once it has used its attempts: never left running.

Pausing stops a running job's process (SIGUSR1: the trainer finishes its step and checkpoints it)
and frees its slot; resuming queues it again, to continue from that checkpoint. A paused job stays
paused across restarts. If the process dies before it could write the pause checkpoint (killed,
or the pause timed out), the job continues from its last epoch checkpoint instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
from google.protobuf import json_format

from protos import dataprep_pb2, dataprep_pb2_grpc, events_pb2
from services.shared.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotImplementedYet,
    TuneloopError,
    Unavailable,
)
from services.shared.process import Runtime
from services.shared.rpc import error_from_rpc, open_channel, tenant_metadata
from services.shared.subjects import TRAINING_COMPLETED, TRAINING_FAILED, TRAINING_PROGRESS
from services.training import events, kubernetes, store
from services.training.distillation import TEACHER_API_KEY_ENV
from services.training.jobs import (
    Hyperparameters,
    ResolvedHyperparameters,
    fine_tuned_model_id,
    resolve_hyperparameters,
    validate_training_format,
)
from services.training.provider import LOCAL, RemoteFineTuning, RemoteJobSpec, follow_remote_job, remote_error
from services.training.warm_start import parent_of

log = logging.getLogger(__name__)
POLL_S = 1.0
# How long a pausing process may take to finish its step and checkpoint before it is stopped hard.
PAUSE_TIMEOUT_S = 120.0


@dataclass
class RunningJob:
    job: store.JobRecord
    process: asyncio.subprocess.Process
    reader: asyncio.Task


class JobSupervisor:
    def __init__(self, runtime: Runtime, *, max_concurrent: int, max_attempts: int):
        self._runtime = runtime
        self._settings = runtime.settings
        self._db = runtime.db
        self._max_concurrent = max_concurrent
        self._max_attempts = max_attempts
        self._wake = asyncio.Event()
        self._running: dict[str, RunningJob] = {}
        self._channel = open_channel(self._settings.dataprep_addr, self._settings)
        self._dataprep = dataprep_pb2_grpc.DataPrepStub(self._channel)
        self.jobs_dir = self._settings.data_dir / "training" / "jobs"
        self.adapters_dir = self._settings.models_path / "adapters"
        # Jobs run on a remote fine-tuning API: no process here, no local slot; one poller each.
        self._remote = RemoteFineTuning(self._settings.provider_base_url,
                                        self._settings.provider_api_key.get_secret_value()) \
            if self._settings.provider_configured else None
        self._following: dict[str, asyncio.Task] = {}

    def wake(self) -> None:
        self._wake.set()

    # ---- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self._recover()
        while not stop.is_set():
            try:
                await self._tick()
            except Exception:
                log.exception("job supervisor: tick failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(self._wake, stop), POLL_S)
        await self._stop_all()
        await self._channel.close()
        if self._remote is not None:
            await self._remote.close()

    async def _recover(self) -> None:
        """Jobs "running" when the service starts have no process: resume them or fail them."""
        async with self._db.transaction() as session:
            orphans = await store.jobs_in(session, (store.RUNNING,))
            for job in orphans:
                if job.provider != LOCAL:  # nothing was lost: the remote job went on without us
                    await store.update_job(session, job.id, status=store.QUEUED)
                    await store.add_event(session, job.id, "The service restarted; following the provider's job "
                                          "again.")
                elif job.attempts < self._max_attempts:
                    await store.update_job(session, job.id, status=store.QUEUED)
                    await store.add_event(session, job.id, "The training process was lost; the job is queued again "
                                          "and resumes from its last checkpoint.", level="warn")
                else:
                    await self._fail(session, job, "process_lost",
                                     f"The training process was lost {job.attempts} times; giving up.")

    async def _tick(self) -> None:
        async with self._db.transaction() as session:
            validating = await store.jobs_in(session, (store.VALIDATING,))
            queued = await store.jobs_in(session, (store.QUEUED,))
        for job in validating:
            await self._validate(job)
        for job in [job for job in queued if job.provider != LOCAL and job.id not in self._following]:
            await self._start_remote(job)
        for job in [job for job in queued if job.provider == LOCAL]:
            if len(self._running) >= self._max_concurrent:
                break
            if job.id in self._running:
                continue  # paused and resumed while its last process is still stopping
            await self._start(job)

    # ---- validating_files -> queued ---------------------------------------------------------------

    async def _prepare(self, job: store.JobRecord, file_id: str, validation_fraction: float) -> str:
        options = dataprep_pb2.PrepareOptions(base_model=job.root_base, validation_fraction=validation_fraction,
                                              seed=job.seed)
        response = await self._dataprep.PrepareDataset(
            dataprep_pb2.PrepareDatasetRequest(file_id=file_id, options=options),
            metadata=tenant_metadata(job.tenant), timeout=30,
        )
        return response.dataset.id

    async def _dataset(self, job: store.JobRecord, dataset_id: str) -> dataprep_pb2.Dataset:
        response = await self._dataprep.GetDataset(dataprep_pb2.GetDatasetRequest(dataset_id=dataset_id),
                                                   metadata=tenant_metadata(job.tenant), timeout=30)
        return response.dataset

    async def _validate(self, job: store.JobRecord) -> None:
        try:
            if not job.training_dataset:
                # Asked once per job: asking again for a failed dataset would prepare it again.
                # With its own validation file, the training file is all training; else 10% is held out.
                training_id = await self._prepare(job, job.training_file, 0.0 if job.validation_file else 0.1)
                validation_id = await self._prepare(job, job.validation_file, 0.0) if job.validation_file else ""
                async with self._db.transaction() as session:
                    await store.update_job(session, job.id, expect=(store.VALIDATING,),
                                           training_dataset=training_id, validation_dataset=validation_id)
                return
            training = await self._dataset(job, job.training_dataset)
            validation = await self._dataset(job, job.validation_dataset) if job.validation_dataset else None
        except grpc.aio.AioRpcError as error:
            mapped = error_from_rpc(error, service="dataprep")
            if mapped.grpc_status in ("NOT_FOUND", "INVALID_ARGUMENT"):
                async with self._db.transaction() as session:
                    await self._fail(session, job, "invalid_training_file", mapped.message, param="training_file")
            else:
                log.warning("job %s: data-prep not reachable yet: %s", job.id, error)
            return
        for dataset, param in ((training, "training_file"), (validation, "validation_file")):
            if dataset is not None and dataset.status == "failed":
                async with self._db.transaction() as session:
                    await self._fail(session, job, "invalid_training_file", f"{param}: {dataset.error}", param=param)
                return
        if training.status != "ready" or (validation is not None and validation.status != "ready"):
            return  # still being prepared
        for dataset, param in ((training, "training_file"), (validation, "validation_file")):
            try:
                if dataset is not None:
                    validate_training_format(json.loads(job.method)["type"], dataset.format, param)
            except InvalidArgument as error:
                async with self._db.transaction() as session:
                    await self._fail(session, job, "invalid_training_file", error.message, param=param)
                return
        report = await self._dataprep.GetReport(dataprep_pb2.GetReportRequest(dataset_id=training.id),
                                                metadata=tenant_metadata(job.tenant), timeout=30)
        recommended = int(json_format.MessageToDict(report.report)["cost"]["n_epochs"])
        requested = Hyperparameters(**json.loads(job.hyperparameters)["requested"])
        resolved = resolve_hyperparameters(requested, n_train=training.train_examples, recommended_epochs=recommended)
        hyperparameters = {"requested": json.loads(job.hyperparameters)["requested"], "resolved": resolved.__dict__}
        async with self._db.transaction() as session:
            changed = await store.update_job(
                session, job.id, expect=(store.VALIDATING,), status=store.QUEUED,
                training_dataset=training.id, validation_dataset=validation.id if validation else training.id,
                hyperparameters=json.dumps(hyperparameters),
            )
            if changed:
                await store.add_event(session, job.id, f"Files validated: {training.train_examples} training examples, "
                                      f"{(validation or training).validation_examples or training.validation_examples} "
                                      "validation examples.")
                await store.add_event(session, job.id, "Fine-tuning job queued.")
        self.wake()

    # ---- queued -> running ------------------------------------------------------------------------

    async def _split_path(self, job: store.JobRecord, dataset_id: str, split: str) -> str:
        response = await self._dataprep.GetDataset(dataprep_pb2.GetDatasetRequest(dataset_id=dataset_id),
                                                   metadata=tenant_metadata(job.tenant), timeout=30)
        sha = response.dataset.train_sha256 if split == "train" else response.dataset.validation_sha256
        return str(self._settings.artifacts_path / "sha256" / sha[:2] / sha[2:])

    async def _start(self, job: store.JobRecord) -> None:
        train_path = await self._split_path(job, job.training_dataset, "train")
        validation_split = "train" if job.validation_dataset != job.training_dataset else "validation"
        validation_path = await self._split_path(job, job.validation_dataset, validation_split)
        async with self._db.transaction() as session:
            latest = await store.list_checkpoints(session, job.id, limit=1)
        if job.pause_checkpoint:
            resume_from, resumed = job.pause_checkpoint, f"the checkpoint of step {job.pause_step}, where it was paused"
        elif latest:
            resume_from, resumed = latest[0].path, f"the checkpoint of epoch {latest[0].epoch}"
        else:
            resume_from, resumed = None, ""
        job_dir = self.jobs_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "job_id": job.id,
            "base_model": job.root_base,
            "train_path": train_path,
            "validation_path": validation_path,
            "hyperparameters": {**json.loads(job.hyperparameters)["resolved"],
                                "learning_rate": ResolvedHyperparameters(**json.loads(job.hyperparameters)["resolved"]).learning_rate},
            "method": json.loads(job.method),
            "seed": job.seed,
            "job_dir": str(job_dir),
            "adapter_dir": str(self.adapters_dir / job.id),
            "resume_from": resume_from,
        }
        try:
            spec["init_from"] = await self._init_from(job)
            env = self._child_env() | self._teacher_env(spec["method"])
            if self._settings.runner == "kubernetes":
                self._write_manifests(spec, job_dir)
        except TuneloopError as error:
            async with self._db.transaction() as session:
                await self._fail(session, job, error.code or "training_failed", error.message, param=error.param or "")
            return
        log_file = open(job_dir / "train.log", "ab")  # noqa: SIM115 - handed to the child process
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.training.job_process",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_file,
            env=env, start_new_session=True,
        )
        log_file.close()
        process.stdin.write(json.dumps(spec).encode() + b"\n")
        await process.stdin.drain()
        process.stdin.close()
        async with self._db.transaction() as session:
            started = await store.update_job(session, job.id, expect=(store.QUEUED,), status=store.RUNNING,
                                             attempts=job.attempts + 1)
            if started:
                await store.add_event(session, job.id, f"Fine-tuning job resumed from {resumed}." if resumed else
                                      "Fine-tuning job started.")
        if not started:  # paused or cancelled while the process was being started
            await _terminate(process)
            return
        running = RunningJob(job=job, process=process, reader=asyncio.create_task(self._follow(job, process)))
        self._running[job.id] = running

    async def _init_from(self, job: store.JobRecord) -> dict[str, str] | None:
        """The weights a warm-started job starts from: its parent's, looked up again as the job starts
        (a checkpoint's, when it resumes, still win in the trainer)."""
        if not job.parent_model:
            return None
        async with self._db.transaction() as session:
            row = await store.find_model(session, job.tenant, job.parent_model)
        if row is None:
            raise NotFound(f"The model '{job.parent_model}' this job warm-starts from was deleted", param="model",
                           code="model_not_found")
        return parent_of(row).init_from()

    def _child_env(self) -> dict[str, str]:
        """The job process reads its settings from the environment: hand it this service's model
        store and data directory, however the service itself was configured."""
        settings = self._settings
        env = dict(os.environ, TUNELOOP_DATA_DIR=str(settings.data_dir),
                   TUNELOOP_BASE_MODELS=json.dumps({k: str(v) for k, v in settings.base_models.items()}),
                   TUNELOOP_DEFAULT_BASE_MODEL=settings.default_base_model)
        for name in ("model_dir", "artifact_dir"):
            if getattr(settings, name) is not None:
                env[f"TUNELOOP_{name.upper()}"] = str(getattr(settings, name))
        return env

    def _teacher_env(self, method: dict) -> dict[str, str]:
        """How a distillation job's process asks its teacher, and the one key the job names: for the
        process only, never in the spec."""
        if method.get("type") != "distillation":
            return {}
        settings = self._settings
        env = {"TUNELOOP_TEACHER_CONCURRENCY": str(settings.teacher_concurrency),
               "TUNELOOP_TEACHER_MAX_RETRIES": str(settings.teacher_max_retries),
               "TUNELOOP_TEACHER_TIMEOUT_S": str(settings.teacher_timeout_s)}
        name = (method.get("teacher") or {}).get("api_key_name")
        if name:
            key = settings.teacher_api_keys.get(name)
            if key is None:
                raise FailedPrecondition(f"the teacher key {name!r} is no longer configured (TUNELOOP_TEACHER_API_KEYS)",
                                         param="method.teacher.api_key_name", code="teacher_error")
            env[TEACHER_API_KEY_ENV] = key.api_key.get_secret_value()
        return env

    def _write_manifests(self, spec: dict, job_dir) -> None:
        """The Kubernetes runner: the job as a Job manifest in its directory. Submitting it needs a
        cluster client this service does not have, so the job fails saying where the manifest is."""
        manifests = kubernetes.render_manifests(spec, self._settings.kubernetes, self._settings.data_dir)
        path = job_dir / "kubernetes.yaml"
        path.write_text(kubernetes.dump_manifests(manifests), encoding="utf-8")
        raise FailedPrecondition(
            f"no cluster configured: the Kubernetes runner wrote the Job manifest to {path}; apply it with "
            "`kubectl apply -f` (this service does not submit or follow cluster jobs)", code="no_cluster")

    # ---- queued -> running on a provider ------------------------------------------------------------

    async def _start_remote(self, job: store.JobRecord) -> None:
        if self._remote is None:
            async with self._db.transaction() as session:
                await self._fail(session, job, "provider_not_configured", "This job runs on the provider 'openai', "
                                 "but the training service has no TUNELOOP_PROVIDER_BASE_URL any more.", param="provider")
            return
        train_path = Path(await self._split_path(job, job.training_dataset, "train"))
        validation_split = "train" if job.validation_dataset != job.training_dataset else "validation"
        validation_path = Path(await self._split_path(job, job.validation_dataset, validation_split))
        spec = RemoteJobSpec(
            job_id=job.id, model=job.model, train_path=train_path,
            validation_path=validation_path if validation_path.is_file() and validation_path.stat().st_size else None,
            hyperparameters=json.loads(job.hyperparameters)["resolved"], suffix=job.suffix, seed=job.seed,
        )
        async with self._db.transaction() as session:
            if not await store.update_job(session, job.id, expect=(store.QUEUED,), status=store.RUNNING):
                return
            if not job.provider_job_id:
                await store.add_event(session, job.id, f"Fine-tuning job started on the provider '{job.provider}'.")
        self._following[job.id] = asyncio.create_task(self._follow_remote(job, spec))

    async def _follow_remote(self, job: store.JobRecord, spec: RemoteJobSpec) -> None:
        async def created(remote_id: str) -> None:
            async with self._db.transaction() as session:
                await store.update_job(session, job.id, provider_job_id=remote_id)

        try:
            while True:
                async with self._db.transaction() as session:
                    current = await store.job_by_id(session, job.id)
                    known = {row.step for row in await store.list_checkpoints(session, job.id)}
                if current.status != store.RUNNING:
                    return
                try:
                    reports = follow_remote_job(
                        self._remote, spec, remote_id=current.provider_job_id,
                        event_cursor=current.provider_event_cursor, known_checkpoint_steps=known,
                        on_created=created, poll_s=self._settings.provider_poll_s)
                    async for message in reports:
                        if await self._on_message(current, message):
                            return
                    return
                except Unavailable as error:  # polled again shortly; the remote job is not affected
                    log.warning("job %s: %s", job.id, error)
                    await asyncio.sleep(self._settings.provider_poll_s * 2)
                except openai.APIStatusError as error:  # the provider refused: the job cannot go on
                    code, message, param = remote_error(error)
                    async with self._db.transaction() as session:
                        current = await store.job_by_id(session, job.id)
                        if current.status == store.RUNNING:
                            await self._fail(session, current, code, f"provider: {message}", param=param)
                    return
        finally:
            self._following.pop(job.id, None)
            self.wake()

    # ---- running -> an end ------------------------------------------------------------------------

    async def _follow(self, job: store.JobRecord, process: asyncio.subprocess.Process) -> None:
        finished = False
        try:
            async for raw in process.stdout:
                try:
                    message = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                finished = await self._on_message(job, message) or finished
            code = await process.wait()
            if not finished:
                async with self._db.transaction() as session:
                    current = await store.job_by_id(session, job.id)
                    if current.status == store.RUNNING:
                        await self._fail(session, current, "training_process_failed",
                                         f"The training process exited with code {code}; see its log.")
        finally:
            self._running.pop(job.id, None)
            self.wake()

    async def _on_message(self, job: store.JobRecord, message: dict) -> bool:
        kind = message.pop("event", "")
        provider_event_id = message.pop("provider_event_id", None)
        async with self._db.transaction() as session:
            if provider_event_id:  # recorded with the event it mirrors: a restart mirrors it no more
                await store.update_job(session, job.id, provider_event_cursor=provider_event_id)
            if kind in ("step", "epoch"):
                text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in message.items())
                await store.add_event(session, job.id, f"{kind} {text}", type="metrics", data=message)
                if kind == "step":
                    eta = message.get("eta_seconds")
                    if eta is not None:
                        await store.update_job(session, job.id, expect=(store.RUNNING,),
                                               estimated_finish=store.now() + int(eta))
                    await self._publish(session, job, TRAINING_PROGRESS, events_pb2.TrainingProgress(
                        job_id=job.id, step=int(message.get("step", 0)), total_steps=int(message.get("total_steps", 0)),
                        train_loss=float(message.get("train_loss", 0.0)),
                        tokens_per_second=float(message.get("tokens_per_second", 0.0))))
                return False
            if kind == "message":
                await store.add_event(session, job.id, message.get("message", ""), level=message.get("level", "info"))
                return False
            if kind == "checkpoint":
                await store.add_checkpoint(session, job.id, step=int(message["step"]), epoch=int(message["epoch"]),
                                           metrics=message.get("metrics", {}), path=message["path"])
                # An epoch checkpoint is newer than the one a pause left: resume from it from now on.
                await store.update_job(session, job.id, pause_checkpoint="", pause_step=0)
                await store.add_event(session, job.id, f"Checkpoint saved at the end of epoch {message['epoch']}.")
                return False
            if kind == "paused":
                await store.update_job(session, job.id, pause_checkpoint=message["path"], pause_step=int(message["step"]))
                await store.add_event(session, job.id, f"Checkpoint saved at step {message['step']}; the job resumes "
                                      "from it.")
                return True
            if kind == "completed":
                current = await store.job_by_id(session, job.id)
                if current.status not in (store.RUNNING, store.PAUSED):
                    return True  # cancelled meanwhile; a pause that came after the last step keeps the model
                model_id = fine_tuned_model_id(job.root_base, job.tenant, job.suffix, job.id)
                lineage = {
                    "base_model": job.root_base, "job_id": job.id, "training_file": job.training_file,
                    "training_dataset": job.training_dataset, "validation_dataset": job.validation_dataset,
                    "hyperparameters": json.loads(job.hyperparameters)["resolved"], "method": json.loads(job.method),
                    "metrics": message.get("metrics", {}), "parent": job.parent_model or None,
                }
                if job.provider != LOCAL:
                    lineage.update(provider=job.provider, provider_model=message.get("provider_model", ""))
                await store.add_model(session, id=model_id, tenant=job.tenant, base_model=job.root_base,
                                      job_id=job.id, path=message["adapter_path"], lineage=json.dumps(lineage))
                await store.update_job(session, job.id, status=store.SUCCEEDED, fine_tuned_model=model_id,
                                       trained_tokens=int(message.get("trained_tokens", 0)), finished_at=store.now(),
                                       provider_model=message.get("provider_model", ""))
                await store.add_event(session, job.id, f"The job has successfully completed: {model_id}.")
                await self._publish(session, job, TRAINING_COMPLETED, events_pb2.TrainingCompleted(
                    job_id=job.id, model_version=model_id, base_model=job.root_base, **job.loop_metadata,
                    parent_version=job.parent_model, dataset_id=job.validation_dataset,
                    dataset_split="train" if job.validation_dataset != job.training_dataset else "validation"))
                return True
            if kind == "failed":
                current = await store.job_by_id(session, job.id)
                if current.status == store.RUNNING:
                    await self._fail(session, current, message.get("code", "training_failed"), message.get("message", ""))
                return True
        return False

    async def _publish(self, session, job: store.JobRecord, event_type: str, payload) -> None:
        await events.publish(session, self._runtime, job.tenant, event_type, payload)

    async def _fail(self, session, job: store.JobRecord, code: str, message: str, *, param: str = "") -> None:
        await store.update_job(session, job.id, status=store.FAILED, error_code=code, error_message=message,
                               error_param=param, finished_at=store.now())
        await store.add_event(session, job.id, f"The job failed: {message}", level="error")
        await self._publish(session, job, TRAINING_FAILED,
                            events_pb2.TrainingFailed(job_id=job.id, code=code, message=message, **job.loop_metadata))

    # ---- cancel and shutdown ----------------------------------------------------------------------

    async def pause(self, tenant: str, job_id: str) -> store.JobRecord:
        """Stop a queued or running job, keeping its progress; returns once its process is gone."""
        async with self._db.transaction() as session:
            job = await store.get_job(session, tenant, job_id)
            if job.provider != LOCAL:
                raise NotImplementedYet("pausing a job that runs on a provider is not implemented yet; cancel it "
                                        "instead", param="fine_tuning_job_id")
            if not await store.update_job(session, job.id, expect=store.PAUSABLE, status=store.PAUSED,
                                          estimated_finish=None):
                raise FailedPrecondition(f"Job {job_id} is {job.status}; only a queued or running job can be paused.",
                                         param="fine_tuning_job_id", code="invalid_job_status")
            await store.add_event(session, job.id, "Job paused.")
        running = self._running.get(job_id)
        if running is not None:
            with contextlib.suppress(ProcessLookupError):
                running.process.send_signal(signal.SIGUSR1)
            try:
                # The reader, not just the process: the pause checkpoint is recorded once it is done.
                await asyncio.wait_for(asyncio.shield(running.reader), PAUSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("job %s: no pause checkpoint after %ss; stopping the process", job_id, PAUSE_TIMEOUT_S)
                await _terminate(running.process)
                await running.reader
        async with self._db.transaction() as session:
            return await store.get_job(session, tenant, job_id)

    async def resume(self, tenant: str, job_id: str) -> store.JobRecord:
        """Queue a paused job again; it continues from the checkpoint its pause left."""
        async with self._db.transaction() as session:
            job = await store.get_job(session, tenant, job_id)
            # attempts count lost processes; a pause stopped this one on purpose.
            if not await store.update_job(session, job.id, expect=(store.PAUSED,), status=store.QUEUED, attempts=0):
                raise FailedPrecondition(f"Job {job_id} is {job.status}; only a paused job can be resumed.",
                                         param="fine_tuning_job_id", code="invalid_job_status")
            await store.add_event(session, job.id, "Job resumed.")
            job = await store.get_job(session, tenant, job_id)
        self.wake()
        return job

    async def cancel(self, tenant: str, job_id: str) -> store.JobRecord:
        async with self._db.transaction() as session:
            job = await store.get_job(session, tenant, job_id)
            if await store.update_job(session, job.id, expect=store.ACTIVE, status=store.CANCELLED,
                                      finished_at=store.now()):
                await store.add_event(session, job.id, "The job was cancelled.")
            job = await store.get_job(session, tenant, job_id)
        running = self._running.get(job_id)
        if running is not None:
            await _terminate(running.process)
        following = self._following.pop(job_id, None)
        if following is not None:
            following.cancel()
        if job.status == store.CANCELLED and job.provider_job_id and self._remote is not None:
            await self._cancel_remote(job)
        return job

    async def _cancel_remote(self, job: store.JobRecord) -> None:
        try:
            await self._remote.cancel(job.provider_job_id)
        except openai.APIStatusError as error:  # already finished there, most often
            if error.status_code != 409:
                log.warning("job %s: the provider refused to cancel %s: %s", job.id, job.provider_job_id, error)
            return
        except openai.APIConnectionError as error:
            async with self._db.transaction() as session:
                await store.add_event(session, job.id, f"The provider's job {job.provider_job_id} could not be "
                                      f"cancelled: {error}", level="warn")
            return
        async with self._db.transaction() as session:
            await store.add_event(session, job.id, f"The provider's job {job.provider_job_id} was cancelled.")

    async def _stop_all(self) -> None:
        """On shutdown the jobs stay "running" in the table: the next start resumes them."""
        for running in list(self._running.values()):
            await _terminate(running.process)
            running.reader.cancel()
        for following in list(self._following.values()):
            following.cancel()


async def _terminate(process: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()

