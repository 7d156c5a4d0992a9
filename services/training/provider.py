"""Running a fine-tuning job on a remote OpenAI-compatible fine-tuning API instead of here.

A job created with `provider: "openai"` is validated and its data prepared here as any job is;
then, instead of a training process, `follow_remote_job` runs it remotely with the official
`openai` SDK: it uploads the prepared splits, creates the remote job, and polls it, turning what
it sees into the same reports a local training process writes (`step`, `epoch`, `message`,
`checkpoint`, `completed`, `failed`), so the supervisor records them the same way.

Idempotent across restarts: the remote job is created with an `Idempotency-Key` derived from our
job id and its id is stored before anything else happens, so a restarted service follows the job
it created instead of creating another; events already mirrored are skipped by the remote id of
the last one (`JobRecord.provider_event_cursor`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import openai

from services.shared.errors import FailedPrecondition, InvalidArgument, Unavailable

LOCAL, OPENAI = "local", "openai"
PROVIDERS = (LOCAL, OPENAI)
# Remote states in which the remote job is still on its way.
_UNDERWAY = ("validating_files", "queued", "running", "paused")


def validate_provider(provider: str, *, configured: bool, method: str) -> None:
    """Refuse an unknown provider, or one this service has no endpoint for, naming the field."""
    if provider not in PROVIDERS:
        raise InvalidArgument(f"provider {provider!r}: use one of {', '.join(PROVIDERS)}", param="provider")
    if provider == OPENAI and not configured:
        raise FailedPrecondition(
            "provider 'openai' needs the training service's TUNELOOP_PROVIDER_BASE_URL and "
            "TUNELOOP_PROVIDER_API_KEY settings",
            param="provider",
            code="provider_not_configured",
        )
    if provider == OPENAI and method != "supervised":
        raise InvalidArgument(f"method.type {method!r} cannot run on a provider yet; 'supervised' can",
                              param="method.type")


@dataclass(frozen=True)
class RemoteJobSpec:
    """What the remote job is created from: our job, its prepared splits and resolved settings."""

    job_id: str
    model: str
    train_path: Path
    validation_path: Path | None
    hyperparameters: dict
    suffix: str
    seed: int


class RemoteFineTuning:
    """A remote OpenAI-compatible fine-tuning API, through the official SDK."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 60.0, max_retries: int = 2):
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s,
                                          max_retries=max_retries)

    async def close(self) -> None:
        await self._client.close()

    async def create(self, spec: RemoteJobSpec) -> str:
        """Upload the splits and create the remote job; returns its id. The same spec twice gives
        the same remote job (an Idempotency-Key made of our job id)."""
        training = await self._upload(spec.train_path, f"{spec.job_id}-train.jsonl")
        validation = await self._upload(spec.validation_path, f"{spec.job_id}-validation.jsonl") \
            if spec.validation_path else openai.omit
        job = await self._client.fine_tuning.jobs.create(
            model=spec.model,
            training_file=training,
            validation_file=validation,
            hyperparameters={k: spec.hyperparameters[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
            suffix=spec.suffix or openai.omit,
            seed=spec.seed,
            metadata={"tuneloop_job_id": spec.job_id},
            extra_headers={"Idempotency-Key": f"tuneloop-{spec.job_id}"},
        )
        return job.id

    async def _upload(self, path: Path, filename: str) -> str:
        content = await asyncio.to_thread(path.read_bytes)
        return (await self._client.files.create(file=(filename, content), purpose="fine-tune")).id

    async def retrieve(self, remote_id: str):
        return await self._client.fine_tuning.jobs.retrieve(remote_id)

    async def events_after(self, remote_id: str, cursor: str) -> list:
        """The remote job's events newer than the one with id `cursor` (all when empty), oldest first."""
        newer = []
        async for event in self._client.fine_tuning.jobs.list_events(remote_id, limit=100):  # newest first
            if event.id == cursor:
                break
            newer.append(event)
        return newer[::-1]

    async def checkpoints(self, remote_id: str) -> list:
        """The remote job's checkpoints, oldest first."""
        found = [c async for c in self._client.fine_tuning.jobs.checkpoints.list(remote_id, limit=100)]
        return sorted(found, key=lambda c: c.step_number)

    async def cancel(self, remote_id: str) -> None:
        await self._client.fine_tuning.jobs.cancel(remote_id)


async def follow_remote_job(
    remote: RemoteFineTuning,
    spec: RemoteJobSpec,
    *,
    remote_id: str,
    event_cursor: str,
    known_checkpoint_steps: set[int],
    on_created: Callable[[str], Awaitable[None]],
    poll_s: float,
) -> AsyncIterator[dict]:
    """Run one job remotely, yielding reports as a local training process writes them.

    `remote_id` empty: the remote job is created first and `on_created` stores its id before
    anything else is reported. A report carrying `provider_event_id` mirrors that remote event;
    the caller stores it as the cursor with the event, so a restart mirrors nothing twice.
    """
    if not remote_id:
        remote_id = await _call(remote.create(spec))
        await on_created(remote_id)
        yield {"event": "message", "level": "info", "message": f"Created the provider's fine-tuning job {remote_id}."}
    while True:
        job = await _call(remote.retrieve(remote_id))  # first: events seen after it are all in
        for event in await _call(remote.events_after(remote_id, event_cursor)):
            event_cursor = event.id
            yield _mirrored(event)
        for checkpoint in await _call(remote.checkpoints(remote_id)):
            if checkpoint.step_number not in known_checkpoint_steps:
                known_checkpoint_steps.add(checkpoint.step_number)
                yield {"event": "checkpoint", "epoch": len(known_checkpoint_steps), "step": checkpoint.step_number,
                       "path": checkpoint.fine_tuned_model_checkpoint,
                       "metrics": checkpoint.metrics.model_dump(exclude_none=True) if checkpoint.metrics else {}}
        if job.status == "succeeded":
            yield {"event": "completed", "adapter_path": "", "provider_model": job.fine_tuned_model or "",
                   "trained_tokens": job.trained_tokens or 0, "metrics": {}}
            return
        if job.status in ("failed", "cancelled"):
            error = job.error
            code = (error.code if error and error.code else "") or f"provider_job_{job.status}"
            message = (error.message if error and error.message else "") or f"the provider's job {remote_id} was {job.status}"
            yield {"event": "failed", "code": code, "message": f"provider: {message}"}
            return
        if job.status not in _UNDERWAY:
            yield {"event": "failed", "code": "provider_unknown_status",
                   "message": f"provider: job {remote_id} is in an unknown state {job.status!r}"}
            return
        await asyncio.sleep(poll_s)


def _mirrored(event) -> dict:
    data = event.data if isinstance(event.data, dict) else None
    if event.type == "metrics" and data is not None:
        kind = "epoch" if event.message.lower().startswith("epoch") else "step"
        return {"event": kind, **data, "provider_event_id": event.id}
    return {"event": "message", "level": event.level or "info", "message": f"provider: {event.message}",
            "provider_event_id": event.id}


async def _call(pending: Awaitable):
    """An SDK call; a connection or server failure becomes Unavailable (the caller polls again
    later), while a refusal (4xx) stays an openai.APIStatusError the caller turns into a failure."""
    try:
        return await pending
    except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as error:
        raise Unavailable(f"the fine-tuning provider is unreachable: {error}") from error


def remote_error(error: openai.APIStatusError) -> tuple[str, str, str]:
    """code, message and param of a remote refusal, from OpenAI's error body."""
    body = error.body if isinstance(error.body, dict) else {}
    return (str(body.get("code") or f"provider_http_{error.status_code}"),
            str(body.get("message") or error.message), str(body.get("param") or ""))

