from protos import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Rating(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RATING_UNSPECIFIED: _ClassVar[Rating]
    RATING_UP: _ClassVar[Rating]
    RATING_DOWN: _ClassVar[Rating]
RATING_UNSPECIFIED: Rating
RATING_UP: Rating
RATING_DOWN: Rating

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("completion_id", "model", "rating", "correction", "comment", "user", "idempotency_key")
    COMPLETION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    completion_id: str
    model: str
    rating: Rating
    correction: str
    comment: str
    user: str
    idempotency_key: str
    def __init__(self, completion_id: _Optional[str] = ..., model: _Optional[str] = ..., rating: _Optional[_Union[Rating, str]] = ..., correction: _Optional[str] = ..., comment: _Optional[str] = ..., user: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("feedback_id", "created_at", "created", "status", "deployment", "model_version", "retrain_request_id")
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    created_at: int
    created: bool
    status: str
    deployment: str
    model_version: str
    retrain_request_id: str
    def __init__(self, feedback_id: _Optional[str] = ..., created_at: _Optional[int] = ..., created: _Optional[bool] = ..., status: _Optional[str] = ..., deployment: _Optional[str] = ..., model_version: _Optional[str] = ..., retrain_request_id: _Optional[str] = ...) -> None: ...

class GetFeedbackStatsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GetFeedbackStatsResponse(_message.Message):
    __slots__ = ("model", "thumbs_up", "thumbs_down", "corrections")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    THUMBS_UP_FIELD_NUMBER: _ClassVar[int]
    THUMBS_DOWN_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    thumbs_up: int
    thumbs_down: int
    corrections: int
    def __init__(self, model: _Optional[str] = ..., thumbs_up: _Optional[int] = ..., thumbs_down: _Optional[int] = ..., corrections: _Optional[int] = ...) -> None: ...

class FeedbackItem(_message.Message):
    __slots__ = ("id", "completion_id", "deployment", "model_version", "rating", "correction", "comment", "user", "created_at", "status", "retrain_request_id", "quarantine_reason", "prompt", "answer")
    ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    id: str
    completion_id: str
    deployment: str
    model_version: str
    rating: Rating
    correction: str
    comment: str
    user: str
    created_at: int
    status: str
    retrain_request_id: str
    quarantine_reason: str
    prompt: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    answer: str
    def __init__(self, id: _Optional[str] = ..., completion_id: _Optional[str] = ..., deployment: _Optional[str] = ..., model_version: _Optional[str] = ..., rating: _Optional[_Union[Rating, str]] = ..., correction: _Optional[str] = ..., comment: _Optional[str] = ..., user: _Optional[str] = ..., created_at: _Optional[int] = ..., status: _Optional[str] = ..., retrain_request_id: _Optional[str] = ..., quarantine_reason: _Optional[str] = ..., prompt: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., answer: _Optional[str] = ...) -> None: ...

class ListFeedbackRequest(_message.Message):
    __slots__ = ("deployment", "status", "retrain_request_id", "after", "limit")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    status: str
    retrain_request_id: str
    after: str
    limit: int
    def __init__(self, deployment: _Optional[str] = ..., status: _Optional[str] = ..., retrain_request_id: _Optional[str] = ..., after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListFeedbackResponse(_message.Message):
    __slots__ = ("items", "has_more")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[FeedbackItem]
    has_more: bool
    def __init__(self, items: _Optional[_Iterable[_Union[FeedbackItem, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class ExportFeedbackRequest(_message.Message):
    __slots__ = ("deployment", "format", "pending_only")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PENDING_ONLY_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    format: str
    pending_only: bool
    def __init__(self, deployment: _Optional[str] = ..., format: _Optional[str] = ..., pending_only: _Optional[bool] = ...) -> None: ...

class ExportFeedbackResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class GetRetrainBatchRequest(_message.Message):
    __slots__ = ("retrain_request_id",)
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    retrain_request_id: str
    def __init__(self, retrain_request_id: _Optional[str] = ...) -> None: ...

class RetrainExample(_message.Message):
    __slots__ = ("feedback_id", "kind", "prompt", "answer", "rejected", "user")
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    kind: str
    prompt: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    answer: str
    rejected: str
    user: str
    def __init__(self, feedback_id: _Optional[str] = ..., kind: _Optional[str] = ..., prompt: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., answer: _Optional[str] = ..., rejected: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class GetRetrainBatchResponse(_message.Message):
    __slots__ = ("retrain_request_id", "deployment", "model_version", "base_model", "examples")
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    retrain_request_id: str
    deployment: str
    model_version: str
    base_model: str
    examples: _containers.RepeatedCompositeFieldContainer[RetrainExample]
    def __init__(self, retrain_request_id: _Optional[str] = ..., deployment: _Optional[str] = ..., model_version: _Optional[str] = ..., base_model: _Optional[str] = ..., examples: _Optional[_Iterable[_Union[RetrainExample, _Mapping]]] = ...) -> None: ...

class LoopPolicy(_message.Message):
    __slots__ = ("threshold", "cooldown_s", "max_user_share", "user_corrections_per_hour", "near_duplicate_threshold", "drift_window", "drift_min_up_rate", "drift_rollback_s", "retrain_every_days", "positives_per_batch", "enabled")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_S_FIELD_NUMBER: _ClassVar[int]
    MAX_USER_SHARE_FIELD_NUMBER: _ClassVar[int]
    USER_CORRECTIONS_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DRIFT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    DRIFT_MIN_UP_RATE_FIELD_NUMBER: _ClassVar[int]
    DRIFT_ROLLBACK_S_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_EVERY_DAYS_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    threshold: int
    cooldown_s: int
    max_user_share: float
    user_corrections_per_hour: int
    near_duplicate_threshold: float
    drift_window: int
    drift_min_up_rate: float
    drift_rollback_s: int
    retrain_every_days: float
    positives_per_batch: int
    enabled: bool
    def __init__(self, threshold: _Optional[int] = ..., cooldown_s: _Optional[int] = ..., max_user_share: _Optional[float] = ..., user_corrections_per_hour: _Optional[int] = ..., near_duplicate_threshold: _Optional[float] = ..., drift_window: _Optional[int] = ..., drift_min_up_rate: _Optional[float] = ..., drift_rollback_s: _Optional[int] = ..., retrain_every_days: _Optional[float] = ..., positives_per_batch: _Optional[int] = ..., enabled: _Optional[bool] = ...) -> None: ...

class SetLoopPolicyRequest(_message.Message):
    __slots__ = ("deployment", "policy")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    policy: LoopPolicy
    def __init__(self, deployment: _Optional[str] = ..., policy: _Optional[_Union[LoopPolicy, _Mapping]] = ...) -> None: ...

class GetLoopPolicyRequest(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    def __init__(self, deployment: _Optional[str] = ...) -> None: ...

class LoopPolicyResponse(_message.Message):
    __slots__ = ("deployment", "policy", "custom")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    policy: LoopPolicy
    custom: bool
    def __init__(self, deployment: _Optional[str] = ..., policy: _Optional[_Union[LoopPolicy, _Mapping]] = ..., custom: _Optional[bool] = ...) -> None: ...

class LoopCycle(_message.Message):
    __slots__ = ("id", "deployment", "trigger", "stage", "finished", "created_at", "updated_at", "model_version", "corrections", "positives", "dataset_id", "file_id", "job_id", "candidate_version", "evaluation_id", "reason", "feedback_ids")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_IDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    deployment: str
    trigger: str
    stage: str
    finished: bool
    created_at: int
    updated_at: int
    model_version: str
    corrections: int
    positives: int
    dataset_id: str
    file_id: str
    job_id: str
    candidate_version: str
    evaluation_id: str
    reason: str
    feedback_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., deployment: _Optional[str] = ..., trigger: _Optional[str] = ..., stage: _Optional[str] = ..., finished: _Optional[bool] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., model_version: _Optional[str] = ..., corrections: _Optional[int] = ..., positives: _Optional[int] = ..., dataset_id: _Optional[str] = ..., file_id: _Optional[str] = ..., job_id: _Optional[str] = ..., candidate_version: _Optional[str] = ..., evaluation_id: _Optional[str] = ..., reason: _Optional[str] = ..., feedback_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UserShare(_message.Message):
    __slots__ = ("user", "pending", "eligible", "held_back")
    USER_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    HELD_BACK_FIELD_NUMBER: _ClassVar[int]
    user: str
    pending: int
    eligible: int
    held_back: int
    def __init__(self, user: _Optional[str] = ..., pending: _Optional[int] = ..., eligible: _Optional[int] = ..., held_back: _Optional[int] = ...) -> None: ...

class GetLoopRequest(_message.Message):
    __slots__ = ("deployment", "limit")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    limit: int
    def __init__(self, deployment: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class GetLoopResponse(_message.Message):
    __slots__ = ("deployment", "policy", "model_version", "pending_corrections", "eligible_corrections", "held_back", "quarantined", "users", "current", "cycles", "up_rate", "window_ratings")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PENDING_CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    HELD_BACK_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    CYCLES_FIELD_NUMBER: _ClassVar[int]
    UP_RATE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_RATINGS_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    policy: LoopPolicy
    model_version: str
    pending_corrections: int
    eligible_corrections: int
    held_back: int
    quarantined: int
    users: _containers.RepeatedCompositeFieldContainer[UserShare]
    current: LoopCycle
    cycles: _containers.RepeatedCompositeFieldContainer[LoopCycle]
    up_rate: float
    window_ratings: int
    def __init__(self, deployment: _Optional[str] = ..., policy: _Optional[_Union[LoopPolicy, _Mapping]] = ..., model_version: _Optional[str] = ..., pending_corrections: _Optional[int] = ..., eligible_corrections: _Optional[int] = ..., held_back: _Optional[int] = ..., quarantined: _Optional[int] = ..., users: _Optional[_Iterable[_Union[UserShare, _Mapping]]] = ..., current: _Optional[_Union[LoopCycle, _Mapping]] = ..., cycles: _Optional[_Iterable[_Union[LoopCycle, _Mapping]]] = ..., up_rate: _Optional[float] = ..., window_ratings: _Optional[int] = ...) -> None: ...

class ListQuarantineRequest(_message.Message):
    __slots__ = ("deployment", "limit")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    limit: int
    def __init__(self, deployment: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListQuarantineResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[FeedbackItem]
    def __init__(self, items: _Optional[_Iterable[_Union[FeedbackItem, _Mapping]]] = ...) -> None: ...

class ReviewQuarantinedRequest(_message.Message):
    __slots__ = ("feedback_ids", "action", "reviewer")
    FEEDBACK_IDS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    feedback_ids: _containers.RepeatedScalarFieldContainer[str]
    action: str
    reviewer: str
    def __init__(self, feedback_ids: _Optional[_Iterable[str]] = ..., action: _Optional[str] = ..., reviewer: _Optional[str] = ...) -> None: ...

class ReviewQuarantinedResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[FeedbackItem]
    def __init__(self, items: _Optional[_Iterable[_Union[FeedbackItem, _Mapping]]] = ...) -> None: ...
