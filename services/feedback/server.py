"""The Feedback gRPC servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

import grpc

from protos import common_pb2, feedback_pb2, feedback_pb2_grpc
from services.feedback import events, store
from services.feedback.intake import FeedbackIn, validate_feedback
from services.feedback.loop import Loop, LoopView
from services.feedback.peers import Inference
from services.feedback.policy import LoopPolicy
from services.feedback.settings import FeedbackSettings
from services.shared.errors import InvalidArgument
from services.shared.process import Runtime, ServiceDefinition, ServiceParts
from services.shared.rpc import tenant_of

log = logging.getLogger(__name__)

_RATINGS = {feedback_pb2.RATING_UP: "up", feedback_pb2.RATING_DOWN: "down"}
_RATING_ENUMS = {name: number for number, name in _RATINGS.items()}
EXPORT_FORMATS = ("chat", "preference")
EXPORT_CHUNK_BYTES = 64 * 1024


def _limit(value: int, default: int = 100, most: int = 1000) -> int:
    if not 0 <= value <= most:
        raise InvalidArgument(f"limit must be between 1 and {most}", param="limit")
    return value or default


def _item(row: dict) -> feedback_pb2.FeedbackItem:
    return feedback_pb2.FeedbackItem(
        id=row["id"], completion_id=row["completion_id"], deployment=row["deployment"], model_version=row["model"],
        rating=_RATING_ENUMS.get(row["rating"], feedback_pb2.RATING_UNSPECIFIED), correction=row["correction"],
        comment=row["comment"], user=row["user"], created_at=row["created_at"], status=row["status"],
        retrain_request_id=row["retrain_request_id"] or "", quarantine_reason=row["quarantine_reason"],
        prompt=[common_pb2.ChatMessage(**m) for m in json.loads(row["prompt"] or "[]")], answer=row["answer"])


def _policy(policy: LoopPolicy) -> feedback_pb2.LoopPolicy:
    return feedback_pb2.LoopPolicy(**policy.model_dump())


def _cycle(row: dict) -> feedback_pb2.LoopCycle:
    fields = {name: row[name] for name in (
        "id", "deployment", "trigger", "stage", "finished", "created_at", "updated_at", "model_version",
        "corrections", "positives", "dataset_id", "file_id", "job_id", "candidate_version", "evaluation_id",
        "reason")}
    return feedback_pb2.LoopCycle(**fields, feedback_ids=row.get("feedback_ids", []))


def _loop(view: LoopView) -> feedback_pb2.GetLoopResponse:
    current = view.current
    return feedback_pb2.GetLoopResponse(
        deployment=view.deployment, policy=_policy(view.policy), model_version=view.model_version,
        pending_corrections=view.pending, eligible_corrections=view.eligible,
        held_back=sum(u.held_back for u in view.users), quarantined=view.quarantined,
        users=[feedback_pb2.UserShare(user=u.user, pending=u.pending, eligible=u.eligible, held_back=u.held_back)
               for u in view.users],
        current=_cycle(current) if current else None, cycles=[_cycle(c) for c in view.cycles],
        up_rate=view.up_rate, window_ratings=view.window_ratings)


def _export_line(row: dict, fmt: str) -> dict:
    prompt = json.loads(row["prompt"])
    if fmt == "preference":
        return {"input": {"messages": prompt},
                "preferred_output": [{"role": "assistant", "content": row["correction"]}],
                "non_preferred_output": [{"role": "assistant", "content": row["answer"]}]}
    return {"messages": [*prompt, {"role": "assistant", "content": row["correction"]}], "corrected": True}


class FeedbackServicer(feedback_pb2_grpc.FeedbackServicer):
    def __init__(self, runtime: Runtime, loop: Loop):
        self._runtime = runtime
        self._loop = loop
        self._settings: FeedbackSettings = runtime.settings  # type: ignore[assignment]

    async def SubmitFeedback(self, request, context):
        item = validate_feedback(
            FeedbackIn(completion_id=request.completion_id, rating=_RATINGS.get(request.rating, ""),
                       correction=request.correction, comment=request.comment, user=request.user,
                       idempotency_key=request.idempotency_key, model=request.model),
            max_correction_chars=self._settings.max_correction_chars,
        )
        submitted = await self._loop.submit(tenant_of(context), item)
        row = submitted.row
        return feedback_pb2.SubmitFeedbackResponse(
            feedback_id=row["id"], created_at=row["created_at"], created=submitted.created, status=row["status"],
            deployment=row["deployment"], model_version=row["model"],
            retrain_request_id=submitted.retrain_request_id)

    async def GetFeedbackStats(self, request, context):
        if not request.model:
            raise InvalidArgument("model is required: a model version or a deployment", param="model")
        async with self._runtime.db.transaction() as session:
            counts = await store.counts_for(session, tenant_of(context), request.model)
        return feedback_pb2.GetFeedbackStatsResponse(model=request.model, thumbs_up=counts.thumbs_up,
                                                     thumbs_down=counts.thumbs_down, corrections=counts.corrections)

    async def ListFeedback(self, request, context):
        limit = _limit(request.limit)
        async with self._runtime.db.transaction() as session:
            rows = await store.list_items(session, tenant_of(context), deployment=request.deployment,
                                          status=request.status, request_id=request.retrain_request_id,
                                          after=request.after, limit=limit + 1)
        return feedback_pb2.ListFeedbackResponse(items=[_item(row) for row in rows[:limit]],
                                                 has_more=len(rows) > limit)

    async def ExportFeedback(self, request, context):
        fmt = request.format or "chat"
        if fmt not in EXPORT_FORMATS:
            raise InvalidArgument(f"format must be one of {', '.join(EXPORT_FORMATS)}", param="format")
        if not request.deployment:
            raise InvalidArgument("deployment is required", param="deployment")
        tenant, after, buffer = tenant_of(context), "", bytearray()
        statuses = (store.PENDING,) if request.pending_only else (store.PENDING, store.USED)
        while True:
            async with self._runtime.db.transaction() as session:
                rows = await store.list_items(session, tenant, deployment=request.deployment, after=after, limit=500,
                                              oldest_first=True)
            if not rows:
                break
            after = rows[-1]["id"]
            for row in rows:
                if row["correction"] and row["status"] in statuses:
                    buffer += (json.dumps(_export_line(row, fmt), ensure_ascii=False) + "\n").encode()
            while len(buffer) >= EXPORT_CHUNK_BYTES:
                yield feedback_pb2.ExportFeedbackResponse(data=bytes(buffer[:EXPORT_CHUNK_BYTES]))
                del buffer[:EXPORT_CHUNK_BYTES]
        if buffer:
            yield feedback_pb2.ExportFeedbackResponse(data=bytes(buffer))

    async def GetRetrainBatch(self, request, context):
        cycle, rows = await self._loop.batch(tenant_of(context), request.retrain_request_id)
        examples = [
            feedback_pb2.RetrainExample(
                feedback_id=row["id"], kind="correction" if row["correction"] else "positive",
                prompt=[common_pb2.ChatMessage(**m) for m in json.loads(row["prompt"])],
                answer=row["correction"] or row["answer"], rejected=row["answer"] if row["correction"] else "",
                user=row["user"])
            for row in rows
        ]
        return feedback_pb2.GetRetrainBatchResponse(retrain_request_id=cycle["id"], deployment=cycle["deployment"],
                                                    model_version=cycle["model_version"],
                                                    base_model=cycle["base_model"], examples=examples)

    async def GetLoop(self, request, context):
        view = await self._loop.view(tenant_of(context), request.deployment, _limit(request.limit, default=20))
        return _loop(view)

    async def SetLoopPolicy(self, request, context):
        values = {field.name: value for field, value in request.policy.ListFields()}
        policy = await self._loop.set_policy(tenant_of(context), request.deployment, values)
        return feedback_pb2.LoopPolicyResponse(deployment=request.deployment, policy=_policy(policy), custom=True)

    async def GetLoopPolicy(self, request, context):
        policy, custom = await self._loop.policy(tenant_of(context), request.deployment)
        return feedback_pb2.LoopPolicyResponse(deployment=request.deployment, policy=_policy(policy), custom=custom)

    async def ListQuarantine(self, request, context):
        async with self._runtime.db.transaction() as session:
            rows = await store.list_items(session, tenant_of(context), deployment=request.deployment,
                                          status=store.QUARANTINED, limit=_limit(request.limit), oldest_first=True)
        return feedback_pb2.ListQuarantineResponse(items=[_item(row) for row in rows])

    async def ReviewQuarantined(self, request, context):
        rows = await self._loop.review(tenant_of(context), list(request.feedback_ids), request.action,
                                       request.reviewer)
        return feedback_pb2.ReviewQuarantinedResponse(items=[_item(row) for row in rows])


async def build(runtime: Runtime) -> ServiceParts:
    settings: FeedbackSettings = runtime.settings  # type: ignore[assignment]
    inference = Inference(settings, settings.call_timeout_s)
    loop = Loop(runtime.db, inference.completion, events.announce_retrain, inference.roll_back, runtime.relay.poke)

    def register(server: grpc.aio.Server) -> list[str]:
        feedback_pb2_grpc.add_FeedbackServicer_to_server(FeedbackServicer(runtime, loop), server)
        return [feedback_pb2.DESCRIPTOR.services_by_name["Feedback"].full_name]

    async def monitor(stop: asyncio.Event) -> None:
        """A cooldown that ended, drift and the schedule are noticed here, not only when feedback comes."""
        try:
            await loop.resume_rollbacks()
        except Exception:
            log.exception("feedback monitor: could not finish the rollbacks a restart interrupted")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.monitor_interval_s)
            if not stop.is_set():
                try:
                    await loop.check_all()
                except Exception:
                    log.exception("feedback monitor: the check failed")

    return ServiceParts(register=register, subscriptions=events.SUBSCRIPTIONS, background=[monitor],
                        on_close=inference.close)


DEFINITION = ServiceDefinition(
    name="feedback",
    settings_class=FeedbackSettings,
    tables=store.messaging,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
