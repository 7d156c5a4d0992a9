"""Every platform event type, its subject, and the envelope field that carries its payload."""

from __future__ import annotations

SUBJECT_PREFIX = "tuneloop."
# The header that carries the envelope id, so JetStream drops a repeated publish.
MSG_ID_HEADER = "Nats-Msg-Id"

DATASET_PREPARED = "dataset.prepared"
TRAINING_REQUESTED = "training.requested"
TRAINING_PROGRESS = "training.progress"
TRAINING_COMPLETED = "training.completed"
TRAINING_FAILED = "training.failed"
EVALUATION_COMPLETED = "evaluation.completed"
MODEL_PROMOTED = "model.promoted"
MODEL_DEPLOYED = "model.deployed"
MODEL_ROLLED_BACK = "model.rolled_back"
RETRAIN_REQUESTED = "feedback.retrain_requested"

# event type -> name of the Envelope's oneof field that carries it
PAYLOAD_FIELDS: dict[str, str] = {
    DATASET_PREPARED: "dataset_prepared",
    TRAINING_REQUESTED: "training_requested",
    TRAINING_PROGRESS: "training_progress",
    TRAINING_COMPLETED: "training_completed",
    TRAINING_FAILED: "training_failed",
    EVALUATION_COMPLETED: "evaluation_completed",
    MODEL_PROMOTED: "model_promoted",
    MODEL_DEPLOYED: "model_deployed",
    MODEL_ROLLED_BACK: "model_rolled_back",
    RETRAIN_REQUESTED: "retrain_requested",
}
EVENT_TYPES: dict[str, str] = {field: event_type for event_type, field in PAYLOAD_FIELDS.items()}


def subject_for(event_type: str) -> str:
    if event_type not in PAYLOAD_FIELDS:
        raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(PAYLOAD_FIELDS)}")
    return SUBJECT_PREFIX + event_type
