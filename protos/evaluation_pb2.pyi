from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoredPair(_message.Message):
    __slots__ = ("prediction", "reference")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    prediction: str
    reference: str
    def __init__(self, prediction: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class ComputeMetricsRequest(_message.Message):
    __slots__ = ("pairs", "metrics")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[ScoredPair]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pairs: _Optional[_Iterable[_Union[ScoredPair, _Mapping]]] = ..., metrics: _Optional[_Iterable[str]] = ...) -> None: ...

class ComputeMetricsResponse(_message.Message):
    __slots__ = ("scores", "count")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SCORES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.ScalarMap[str, float]
    count: int
    def __init__(self, scores: _Optional[_Mapping[str, float]] = ..., count: _Optional[int] = ...) -> None: ...

class RunEvaluationRequest(_message.Message):
    __slots__ = ("candidate", "baseline", "deployment", "dataset_id", "file_id", "metrics", "policy_json", "idempotency_key", "max_tokens", "dataset_split", "judge")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DATASET_SPLIT_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    candidate: str
    baseline: str
    deployment: str
    dataset_id: str
    file_id: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    policy_json: str
    idempotency_key: str
    max_tokens: int
    dataset_split: str
    judge: bool
    def __init__(self, candidate: _Optional[str] = ..., baseline: _Optional[str] = ..., deployment: _Optional[str] = ..., dataset_id: _Optional[str] = ..., file_id: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., policy_json: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., max_tokens: _Optional[int] = ..., dataset_split: _Optional[str] = ..., judge: _Optional[bool] = ...) -> None: ...

class RunEvaluationResponse(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: EvaluationRun
    def __init__(self, evaluation: _Optional[_Union[EvaluationRun, _Mapping]] = ...) -> None: ...

class GetEvaluationRequest(_message.Message):
    __slots__ = ("evaluation_id",)
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    def __init__(self, evaluation_id: _Optional[str] = ...) -> None: ...

class GetEvaluationResponse(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: EvaluationRun
    def __init__(self, evaluation: _Optional[_Union[EvaluationRun, _Mapping]] = ...) -> None: ...

class ListEvaluationsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListEvaluationsResponse(_message.Message):
    __slots__ = ("evaluations",)
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    evaluations: _containers.RepeatedCompositeFieldContainer[EvaluationRun]
    def __init__(self, evaluations: _Optional[_Iterable[_Union[EvaluationRun, _Mapping]]] = ...) -> None: ...

class EvaluationRun(_message.Message):
    __slots__ = ("id", "status", "candidate", "baseline", "base_model", "deployment", "dataset_id", "file_id", "created_at", "completed_at", "progress_done", "progress_total", "passed", "reason", "error_code", "error_message", "report", "dataset_split", "human")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_DONE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    DATASET_SPLIT_FIELD_NUMBER: _ClassVar[int]
    HUMAN_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    candidate: str
    baseline: str
    base_model: str
    deployment: str
    dataset_id: str
    file_id: str
    created_at: int
    completed_at: int
    progress_done: int
    progress_total: int
    passed: bool
    reason: str
    error_code: str
    error_message: str
    report: _struct_pb2.Struct
    dataset_split: str
    human: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., candidate: _Optional[str] = ..., baseline: _Optional[str] = ..., base_model: _Optional[str] = ..., deployment: _Optional[str] = ..., dataset_id: _Optional[str] = ..., file_id: _Optional[str] = ..., created_at: _Optional[int] = ..., completed_at: _Optional[int] = ..., progress_done: _Optional[int] = ..., progress_total: _Optional[int] = ..., passed: _Optional[bool] = ..., reason: _Optional[str] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., report: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., dataset_split: _Optional[str] = ..., human: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ExportHumanReviewRequest(_message.Message):
    __slots__ = ("evaluation_id", "size", "format", "seed")
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    size: int
    format: str
    seed: int
    def __init__(self, evaluation_id: _Optional[str] = ..., size: _Optional[int] = ..., format: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class ExportHumanReviewResponse(_message.Message):
    __slots__ = ("review_id", "format", "items", "content")
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    review_id: str
    format: str
    items: int
    content: bytes
    def __init__(self, review_id: _Optional[str] = ..., format: _Optional[str] = ..., items: _Optional[int] = ..., content: _Optional[bytes] = ...) -> None: ...

class ImportHumanReviewRequest(_message.Message):
    __slots__ = ("evaluation_id", "review_id", "format", "content")
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    review_id: str
    format: str
    content: bytes
    def __init__(self, evaluation_id: _Optional[str] = ..., review_id: _Optional[str] = ..., format: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class ImportHumanReviewResponse(_message.Message):
    __slots__ = ("rated", "summary")
    RATED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    rated: int
    summary: _struct_pb2.Struct
    def __init__(self, rated: _Optional[int] = ..., summary: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SetGatePolicyRequest(_message.Message):
    __slots__ = ("deployment", "policy_json")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    policy_json: str
    def __init__(self, deployment: _Optional[str] = ..., policy_json: _Optional[str] = ...) -> None: ...

class GetGatePolicyRequest(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    def __init__(self, deployment: _Optional[str] = ...) -> None: ...

class GatePolicyResponse(_message.Message):
    __slots__ = ("deployment", "policy_json", "configured", "updated_at")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    policy_json: str
    configured: bool
    updated_at: int
    def __init__(self, deployment: _Optional[str] = ..., policy_json: _Optional[str] = ..., configured: _Optional[bool] = ..., updated_at: _Optional[int] = ...) -> None: ...
