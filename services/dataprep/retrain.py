"""Retraining sets for the feedback loop, built in the background and prepared like any dataset.

`feedback.retrain_requested` only records the request (events.py). This worker then builds the set:
the batch from the feedback service, the parent version's lineage from the training registry, and a
replay sample of the parent's training split (a dataset of ours), composed by retrain_set.py; then
one file and one dataset, queued for the dataset worker with the options a training job prepares
its file with, so the job's PrepareDataset finds this very dataset. While a peer cannot be reached
(restarting, say) the set waits and is tried again with back-off, for as long as it takes; an answer
that says it can never be built (no such request, an empty batch) fails it. Ready or failed, each
set is announced once as `dataset.prepared`, in the transaction that records its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING

import grpc
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from protos import dataprep_pb2, events_pb2, feedback_pb2, feedback_pb2_grpc, training_pb2, training_pb2_grpc
from services.dataprep import store
from services.dataprep.datasets import new_file, prepare_config, queue_dataset
from services.dataprep.events import dataset_prepared, retrain_set_prepared
from services.dataprep.options import PrepareConfig
from services.dataprep.pipeline import PipelineResources
from services.dataprep.retrain_set import MAX_LISTED, FeedbackExample, compose, keep_valid
from services.dataprep.settings import DataprepSettings
from services.shared.artifacts import ArtifactStore
from services.shared.errors import FailedPrecondition, InvalidArgument, TuneloopError
from services.shared.outbox import MessagingTables, add_to_outbox
from services.shared.process import Runtime
from services.shared.rpc import error_from_rpc, tenant_metadata

if TYPE_CHECKING:
    from services.dataprep.worker import DatasetWorker

log = logging.getLogger(__name__)

# Answers that say a set can never be built; anything else (a peer restarting, a timeout) is retried.
PERMANENT = frozenset({"NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION"})
CALL_TIMEOUT_S = 30.0
FIRST_RETRY_S = 1.0
# How long the worker sleeps when nothing wakes it. It then also settles sets whose dataset
# finished while the set was being recorded, before the dataset worker could see the set.
POLL_S = 5.0
# The feedback service's request ids are at most this long; the event id is built from one.
MAX_REQUEST_ID = 40


def _seed_of(request_id: str) -> int:
    return int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big")


class _AlreadyBuilt(Exception):
    """Rolls back a build that another worker recorded first."""


async def finish_retrain_sets(session: AsyncSession, tables: MessagingTables, dataset: store.DatasetRecord) -> bool:
    """Finish and announce the sets waiting on `dataset`, which has just finished; whether any were."""
    waiting = await store.retrain_sets_waiting_on(session, dataset.id)
    for retrain_set in waiting:
        if not await store.finish_retrain_set(session, retrain_set.request_id, status=dataset.status,
                                              error=dataset.error):
            continue
        if dataset.report and retrain_set.summary:
            report = json.loads(dataset.report)
            report["retrain"] = json.loads(retrain_set.summary)
            await store.set_report(session, dataset.id, json.dumps(report))
        await add_to_outbox(session, tables, retrain_set_prepared(retrain_set, dataset_prepared(dataset)))
        log.info("retraining set %s: dataset %s %s", retrain_set.request_id, dataset.id, dataset.status)
    return bool(waiting)


class RetrainSets:
    def __init__(self, runtime: Runtime, artifacts: ArtifactStore, resources: PipelineResources,
                 datasets: DatasetWorker, feedback: feedback_pb2_grpc.FeedbackStub,
                 registry: training_pb2_grpc.TrainingStub):
        self._runtime = runtime
        self._settings: DataprepSettings = runtime.settings  # type: ignore[assignment]
        self._artifacts = artifacts
        self._resources = resources
        self._datasets = datasets
        self._feedback = feedback
        self._registry = registry
        self._wake = asyncio.Event()
        # request id -> (monotonic time of its next try, the wait before it). Kept in memory: after
        # a restart every set is tried at once.
        self._retries: dict[str, tuple[float, float]] = {}

    def wake(self) -> None:
        self._wake.set()

    async def record(self, session: AsyncSession, tenant: str, event: events_pb2.RetrainRequested) -> None:
        """Record a retrain request, in the event handler's transaction; a repeat changes nothing."""
        if not 0 < len(event.request_id) <= MAX_REQUEST_ID:
            raise InvalidArgument(f"retrain request id {event.request_id!r} must have 1 to {MAX_REQUEST_ID} "
                                  "characters", param="request_id")
        created = await store.add_retrain_set_if_new(session, store.RetrainSetRecord(
            request_id=event.request_id, tenant=tenant, deployment=event.deployment,
            parent_version=event.model_version, base_model=event.base_model, status=store.BUILDING, file_id="",
            dataset_id="", error="", summary=None, created_at=store.now(), finished_at=None))
        if created:
            # Woken once the row is committed: woken now, the worker could look before it can see it.
            sa.event.listen(session.sync_session, "after_commit", lambda _session: self.wake(), once=True)

    # ---- the worker -------------------------------------------------------------------------------

    async def work(self, stop: asyncio.Event) -> None:
        """Build unfinished sets, oldest first, and settle the prepared ones, until `stop` is set."""
        while not stop.is_set():
            self._wake.clear()
            try:
                await self._pass(stop)
            except Exception:  # the database gone for a moment, say: the next pass tries again
                log.exception("retraining sets: a pass failed")
            waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
            try:
                await asyncio.wait(waiters, timeout=self._next_wait(), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def _pass(self, stop: asyncio.Event) -> None:
        async with self._runtime.db.transaction() as session:
            pending = await store.unfinished_retrain_sets(session)
        building = {retrain_set.request_id for retrain_set in pending if retrain_set.status == store.BUILDING}
        self._retries = {key: value for key, value in self._retries.items() if key in building}
        for retrain_set in pending:
            if stop.is_set():
                return
            if retrain_set.status == store.PROCESSING:
                await self._settle(retrain_set)
            elif self._due(retrain_set.request_id):
                await self._build(retrain_set)

    def _due(self, request_id: str) -> bool:
        return time.monotonic() >= self._retries.get(request_id, (0.0, 0.0))[0]

    def _next_wait(self) -> float:
        now = time.monotonic()
        return max(0.0, min([POLL_S, *(at - now for at, _ in self._retries.values())]))

    def _retry_later(self, retrain_set: store.RetrainSetRecord, reason: str) -> None:
        last = self._retries.get(retrain_set.request_id, (0.0, 0.0))[1]
        wait = min(self._settings.retrain_retry_max_s, last * 2 if last else FIRST_RETRY_S)
        self._retries[retrain_set.request_id] = (time.monotonic() + wait, wait)
        log.warning("retraining set %s waits: %s (next try in %.1fs)", retrain_set.request_id, reason, wait)

    async def _settle(self, retrain_set: store.RetrainSetRecord) -> None:
        async with self._runtime.db.transaction() as session:
            dataset = await store.find_dataset(session, retrain_set.tenant, retrain_set.dataset_id)
            settled = (dataset is not None and dataset.status != store.PROCESSING
                       and await finish_retrain_sets(session, self._runtime.tables, dataset))
        if settled:
            self._runtime.relay.poke()

    async def _build(self, retrain_set: store.RetrainSetRecord) -> None:
        request_id = retrain_set.request_id
        try:
            lines, summary, config = await self._compose(retrain_set)
        except TuneloopError as error:
            if error.grpc_status in PERMANENT:
                await self._fail(retrain_set, error.message)
            else:
                self._retry_later(retrain_set, error.message)
            return
        except Exception:
            log.exception("retraining set %s: building failed", request_id)
            self._retry_later(retrain_set, "internal error")
            return
        self._retries.pop(request_id, None)
        content = "".join(line + "\n" for line in lines).encode()
        artifact = await asyncio.to_thread(self._artifacts.put_bytes, content)
        with contextlib.suppress(_AlreadyBuilt):
            async with self._runtime.db.transaction() as session:
                source = new_file(retrain_set.tenant, f"retrain-{request_id}.jsonl", "fine-tune", artifact)
                await store.add_file(session, source)
                dataset, _created = await queue_dataset(session, source, config)
                if not await store.retrain_set_built(session, request_id, file_id=source.id, dataset_id=dataset.id,
                                                     base_model=config.base_model, summary=json.dumps(summary)):
                    raise _AlreadyBuilt
                if dataset.status != store.PROCESSING:  # the same set was prepared before: announce it now
                    await finish_retrain_sets(session, self._runtime.tables, dataset)
            log.info("retraining set %s: file %s, dataset %s (%d lines)", request_id, source.id, dataset.id, len(lines))
            self._datasets.wake()
            self._runtime.relay.poke()

    async def _compose(self, retrain_set: store.RetrainSetRecord) -> tuple[list[str], dict, PrepareConfig]:
        """The set's lines, what went into them, and the options its dataset is prepared with."""
        request_id = retrain_set.request_id
        batch = await self._call("feedback", self._feedback.GetRetrainBatch,
                                 feedback_pb2.GetRetrainBatchRequest(retrain_request_id=request_id), retrain_set.tenant)
        examples = [FeedbackExample(feedback_id=item.feedback_id, kind=item.kind,
                                    prompt=tuple({"role": m.role, "content": m.content} for m in item.prompt),
                                    answer=item.answer) for item in batch.examples]
        if not examples:
            raise FailedPrecondition(f"the batch of retrain request {request_id} holds no examples",
                                     code="empty_retrain_batch")
        replay_from = await self._replay_source(retrain_set)
        # Exactly what a training job asks for its training file, so its PrepareDataset gets this dataset.
        options = dataprep_pb2.PrepareOptions(base_model=batch.base_model or retrain_set.base_model,
                                              validation_fraction=0.1, seed=0)
        config = prepare_config(options, self._settings.default_base_model)
        lines, summary = await asyncio.to_thread(self._lines, request_id, examples, replay_from, config)
        if not lines:
            first = summary["invalid_errors"][:1]
            raise FailedPrecondition(f"the batch of retrain request {request_id} holds no usable examples"
                                     + (f"; first problem: {first[0]['message']}" if first else ""),
                                     code="empty_retrain_batch")
        return lines, summary, config

    def _lines(self, request_id: str, examples: list[FeedbackExample], replay_from: store.DatasetRecord | None,
               config: PrepareConfig) -> tuple[list[str], dict]:
        with contextlib.ExitStack() as stack:
            replay = stack.enter_context(self._artifacts.open(replay_from.train_sha256)) if replay_from else ()
            built = compose(examples, replay, replay_ratio=self._settings.retrain_replay_ratio,
                            seed=_seed_of(request_id))
        kept, problems = keep_valid(built.lines, self._resources.token_counter(config.base_model))
        summary = {"request_id": request_id, **built.summary, "replay_from": replay_from.id if replay_from else "",
                   "invalid": len(built.lines) - len(kept), "invalid_errors": problems[:MAX_LISTED]}
        return kept, summary

    async def _replay_source(self, retrain_set: store.RetrainSetRecord) -> store.DatasetRecord | None:
        """The dataset the parent version was trained on, when it was trained here and we still have it."""
        if not retrain_set.parent_version.startswith("ft:"):
            return None  # a base model: its training data is not ours to replay
        found = await self._call("training", self._registry.GetModel,
                                 training_pb2.GetModelRequest(model_id=retrain_set.parent_version), retrain_set.tenant)
        if not found.model.training_dataset:
            return None
        async with self._runtime.db.transaction() as session:
            dataset = await store.find_dataset(session, retrain_set.tenant, found.model.training_dataset)
        if dataset is None or dataset.status != store.READY or not dataset.train_sha256:
            log.warning("retraining set %s: no replay: %s's training dataset %s is not a ready dataset here",
                        retrain_set.request_id, retrain_set.parent_version, found.model.training_dataset)
            return None
        return dataset

    async def _call(self, service: str, rpc, request, tenant: str):
        try:
            return await rpc(request, metadata=tenant_metadata(tenant), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error, service=service) from None

    async def _fail(self, retrain_set: store.RetrainSetRecord, message: str) -> None:
        self._retries.pop(retrain_set.request_id, None)
        async with self._runtime.db.transaction() as session:
            if await store.finish_retrain_set(session, retrain_set.request_id, status=store.FAILED, error=message):
                await add_to_outbox(session, self._runtime.tables,
                                    retrain_set_prepared(retrain_set, events_pb2.DatasetPrepared(error=message)))
        self._runtime.relay.poke()
        log.warning("retraining set %s failed: %s", retrain_set.request_id, message)
