"""The Feedback gRPC servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from pathlib import Path

import grpc

from protos import feedback_pb2, feedback_pb2_grpc
from services.feedback import events, store
from services.feedback.intake import FeedbackIn, validate_feedback
from services.feedback.settings import FeedbackSettings
from services.shared.process import Runtime, ServiceDefinition, ServiceParts
from services.shared.rpc import tenant_of

_RATINGS = {feedback_pb2.RATING_UP: "up", feedback_pb2.RATING_DOWN: "down"}


class FeedbackServicer(feedback_pb2_grpc.FeedbackServicer):
    def __init__(self, runtime: Runtime):
        self._runtime = runtime
        self._settings: FeedbackSettings = runtime.settings  # type: ignore[assignment]

    async def SubmitFeedback(self, request, context):
        item = validate_feedback(
            FeedbackIn(
                completion_id=request.completion_id,
                model=request.model,
                rating=_RATINGS.get(request.rating, ""),
                correction=request.correction,
                comment=request.comment,
                user=request.user,
                idempotency_key=request.idempotency_key,
            ),
            max_correction_chars=self._settings.max_correction_chars,
        )
        async with self._runtime.db.transaction() as session:
            stored = await store.add_feedback(session, tenant_of(context), item)
        return feedback_pb2.SubmitFeedbackResponse(
            feedback_id=stored.id, created_at=stored.created_at, created=stored.created
        )

    async def GetFeedbackStats(self, request, context):
        async with self._runtime.db.transaction() as session:
            counts = await store.counts_for(session, tenant_of(context), request.model)
        return feedback_pb2.GetFeedbackStatsResponse(
            model=request.model,
            thumbs_up=counts.thumbs_up,
            thumbs_down=counts.thumbs_down,
            corrections=counts.corrections,
        )


async def build(runtime: Runtime) -> ServiceParts:
    def register(server: grpc.aio.Server) -> list[str]:
        feedback_pb2_grpc.add_FeedbackServicer_to_server(FeedbackServicer(runtime), server)
        return [feedback_pb2.DESCRIPTOR.services_by_name["Feedback"].full_name]

    return ServiceParts(register=register, subscriptions=events.SUBSCRIPTIONS)


DEFINITION = ServiceDefinition(
    name="feedback",
    settings_class=FeedbackSettings,
    tables=store.messaging,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
