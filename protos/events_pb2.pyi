import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TraceContext(_message.Message):
    __slots__ = ("traceparent", "tracestate")
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    traceparent: str
    tracestate: str
    def __init__(self, traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class DatasetPrepared(_message.Message):
    __slots__ = ("dataset_id", "content_hash", "train_examples", "validation_examples", "file_id", "deployment", "retrain_request_id", "parent_version", "base_model", "error")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    content_hash: str
    train_examples: int
    validation_examples: int
    file_id: str
    deployment: str
    retrain_request_id: str
    parent_version: str
    base_model: str
    error: str
    def __init__(self, dataset_id: _Optional[str] = ..., content_hash: _Optional[str] = ..., train_examples: _Optional[int] = ..., validation_examples: _Optional[int] = ..., file_id: _Optional[str] = ..., deployment: _Optional[str] = ..., retrain_request_id: _Optional[str] = ..., parent_version: _Optional[str] = ..., base_model: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class TrainingRequested(_message.Message):
    __slots__ = ("job_id", "base_model", "dataset_id", "deployment", "retrain_request_id", "parent_version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    base_model: str
    dataset_id: str
    deployment: str
    retrain_request_id: str
    parent_version: str
    def __init__(self, job_id: _Optional[str] = ..., base_model: _Optional[str] = ..., dataset_id: _Optional[str] = ..., deployment: _Optional[str] = ..., retrain_request_id: _Optional[str] = ..., parent_version: _Optional[str] = ...) -> None: ...

class TrainingProgress(_message.Message):
    __slots__ = ("job_id", "step", "total_steps", "train_loss", "valid_loss", "tokens_per_second")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALID_LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    total_steps: int
    train_loss: float
    valid_loss: float
    tokens_per_second: float
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., train_loss: _Optional[float] = ..., valid_loss: _Optional[float] = ..., tokens_per_second: _Optional[float] = ...) -> None: ...

class TrainingCompleted(_message.Message):
    __slots__ = ("job_id", "model_version", "base_model", "deployment", "dataset_id", "dataset_split", "retrain_request_id", "parent_version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_SPLIT_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model_version: str
    base_model: str
    deployment: str
    dataset_id: str
    dataset_split: str
    retrain_request_id: str
    parent_version: str
    def __init__(self, job_id: _Optional[str] = ..., model_version: _Optional[str] = ..., base_model: _Optional[str] = ..., deployment: _Optional[str] = ..., dataset_id: _Optional[str] = ..., dataset_split: _Optional[str] = ..., retrain_request_id: _Optional[str] = ..., parent_version: _Optional[str] = ...) -> None: ...

class TrainingFailed(_message.Message):
    __slots__ = ("job_id", "code", "message", "deployment", "retrain_request_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    code: str
    message: str
    deployment: str
    retrain_request_id: str
    def __init__(self, job_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., deployment: _Optional[str] = ..., retrain_request_id: _Optional[str] = ...) -> None: ...

class EvaluationCompleted(_message.Message):
    __slots__ = ("evaluation_id", "candidate_version", "baseline_version", "deployment", "passed", "reason", "rules", "error")
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    candidate_version: str
    baseline_version: str
    deployment: str
    passed: bool
    reason: str
    rules: _containers.RepeatedCompositeFieldContainer[GateRule]
    error: str
    def __init__(self, evaluation_id: _Optional[str] = ..., candidate_version: _Optional[str] = ..., baseline_version: _Optional[str] = ..., deployment: _Optional[str] = ..., passed: _Optional[bool] = ..., reason: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[GateRule, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class GateRule(_message.Message):
    __slots__ = ("name", "passed", "measured", "threshold", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    passed: bool
    measured: float
    threshold: float
    detail: str
    def __init__(self, name: _Optional[str] = ..., passed: _Optional[bool] = ..., measured: _Optional[float] = ..., threshold: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class ModelPromoted(_message.Message):
    __slots__ = ("deployment", "model_version", "evaluation_id")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    model_version: str
    evaluation_id: str
    def __init__(self, deployment: _Optional[str] = ..., model_version: _Optional[str] = ..., evaluation_id: _Optional[str] = ...) -> None: ...

class ModelDeployed(_message.Message):
    __slots__ = ("deployment", "model_version", "previous_version", "traffic_percent")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_PERCENT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    model_version: str
    previous_version: str
    traffic_percent: int
    def __init__(self, deployment: _Optional[str] = ..., model_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., traffic_percent: _Optional[int] = ...) -> None: ...

class ModelRolledBack(_message.Message):
    __slots__ = ("deployment", "from_version", "to_version", "reason")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    from_version: str
    to_version: str
    reason: str
    def __init__(self, deployment: _Optional[str] = ..., from_version: _Optional[str] = ..., to_version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RetrainRequested(_message.Message):
    __slots__ = ("request_id", "deployment", "model_version", "corrections", "trigger", "base_model", "positives")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deployment: str
    model_version: str
    corrections: int
    trigger: str
    base_model: str
    positives: int
    def __init__(self, request_id: _Optional[str] = ..., deployment: _Optional[str] = ..., model_version: _Optional[str] = ..., corrections: _Optional[int] = ..., trigger: _Optional[str] = ..., base_model: _Optional[str] = ..., positives: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("id", "type", "time", "source", "tenant", "trace", "dataset_prepared", "training_requested", "training_progress", "training_completed", "training_failed", "evaluation_completed", "model_promoted", "model_deployed", "model_rolled_back", "retrain_requested")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    DATASET_PREPARED_FIELD_NUMBER: _ClassVar[int]
    TRAINING_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    TRAINING_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FAILED_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    MODEL_PROMOTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_DEPLOYED_FIELD_NUMBER: _ClassVar[int]
    MODEL_ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    time: _timestamp_pb2.Timestamp
    source: str
    tenant: str
    trace: TraceContext
    dataset_prepared: DatasetPrepared
    training_requested: TrainingRequested
    training_progress: TrainingProgress
    training_completed: TrainingCompleted
    training_failed: TrainingFailed
    evaluation_completed: EvaluationCompleted
    model_promoted: ModelPromoted
    model_deployed: ModelDeployed
    model_rolled_back: ModelRolledBack
    retrain_requested: RetrainRequested
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., tenant: _Optional[str] = ..., trace: _Optional[_Union[TraceContext, _Mapping]] = ..., dataset_prepared: _Optional[_Union[DatasetPrepared, _Mapping]] = ..., training_requested: _Optional[_Union[TrainingRequested, _Mapping]] = ..., training_progress: _Optional[_Union[TrainingProgress, _Mapping]] = ..., training_completed: _Optional[_Union[TrainingCompleted, _Mapping]] = ..., training_failed: _Optional[_Union[TrainingFailed, _Mapping]] = ..., evaluation_completed: _Optional[_Union[EvaluationCompleted, _Mapping]] = ..., model_promoted: _Optional[_Union[ModelPromoted, _Mapping]] = ..., model_deployed: _Optional[_Union[ModelDeployed, _Mapping]] = ..., model_rolled_back: _Optional[_Union[ModelRolledBack, _Mapping]] = ..., retrain_requested: _Optional[_Union[RetrainRequested, _Mapping]] = ...) -> None: ...
