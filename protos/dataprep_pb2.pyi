from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class File(_message.Message):
    __slots__ = ("id", "bytes", "created_at", "filename", "purpose", "sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    sha256: str
    def __init__(self, id: _Optional[str] = ..., bytes: _Optional[int] = ..., created_at: _Optional[int] = ..., filename: _Optional[str] = ..., purpose: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadFileHeader(_message.Message):
    __slots__ = ("filename", "purpose")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    filename: str
    purpose: str
    def __init__(self, filename: _Optional[str] = ..., purpose: _Optional[str] = ...) -> None: ...

class UploadFileRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadFileHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadFileHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadFileResponse(_message.Message):
    __slots__ = ("file",)
    FILE_FIELD_NUMBER: _ClassVar[int]
    file: File
    def __init__(self, file: _Optional[_Union[File, _Mapping]] = ...) -> None: ...

class GetFileRequest(_message.Message):
    __slots__ = ("file_id",)
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    def __init__(self, file_id: _Optional[str] = ...) -> None: ...

class GetFileResponse(_message.Message):
    __slots__ = ("file",)
    FILE_FIELD_NUMBER: _ClassVar[int]
    file: File
    def __init__(self, file: _Optional[_Union[File, _Mapping]] = ...) -> None: ...

class ListFilesRequest(_message.Message):
    __slots__ = ("purpose", "limit")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    limit: int
    def __init__(self, purpose: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListFilesResponse(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[File]
    def __init__(self, files: _Optional[_Iterable[_Union[File, _Mapping]]] = ...) -> None: ...

class GetFileContentRequest(_message.Message):
    __slots__ = ("file_id",)
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    def __init__(self, file_id: _Optional[str] = ...) -> None: ...

class GetFileContentResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class DeleteFileRequest(_message.Message):
    __slots__ = ("file_id",)
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    def __init__(self, file_id: _Optional[str] = ...) -> None: ...

class DeleteFileResponse(_message.Message):
    __slots__ = ("file_id", "deleted")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    deleted: bool
    def __init__(self, file_id: _Optional[str] = ..., deleted: _Optional[bool] = ...) -> None: ...

class PrepareOptions(_message.Message):
    __slots__ = ("format", "validation_fraction", "seed", "drop_invalid", "anonymize_pii", "pii_entities", "pii_placeholders", "near_duplicate_threshold", "base_model", "n_epochs", "price_per_1k_tokens", "review_sample_size", "pii_detector")
    class PiiPlaceholdersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DROP_INVALID_FIELD_NUMBER: _ClassVar[int]
    ANONYMIZE_PII_FIELD_NUMBER: _ClassVar[int]
    PII_ENTITIES_FIELD_NUMBER: _ClassVar[int]
    PII_PLACEHOLDERS_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    N_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_1K_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REVIEW_SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PII_DETECTOR_FIELD_NUMBER: _ClassVar[int]
    format: str
    validation_fraction: float
    seed: int
    drop_invalid: bool
    anonymize_pii: bool
    pii_entities: _containers.RepeatedScalarFieldContainer[str]
    pii_placeholders: _containers.ScalarMap[str, str]
    near_duplicate_threshold: float
    base_model: str
    n_epochs: int
    price_per_1k_tokens: float
    review_sample_size: int
    pii_detector: str
    def __init__(self, format: _Optional[str] = ..., validation_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., drop_invalid: _Optional[bool] = ..., anonymize_pii: _Optional[bool] = ..., pii_entities: _Optional[_Iterable[str]] = ..., pii_placeholders: _Optional[_Mapping[str, str]] = ..., near_duplicate_threshold: _Optional[float] = ..., base_model: _Optional[str] = ..., n_epochs: _Optional[int] = ..., price_per_1k_tokens: _Optional[float] = ..., review_sample_size: _Optional[int] = ..., pii_detector: _Optional[str] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "status", "file_id", "created_at", "format", "train_examples", "validation_examples", "train_sha256", "validation_sha256", "error", "lines_processed", "options", "finished_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SHA256_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SHA256_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LINES_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    file_id: str
    created_at: int
    format: str
    train_examples: int
    validation_examples: int
    train_sha256: str
    validation_sha256: str
    error: str
    lines_processed: int
    options: PrepareOptions
    finished_at: int
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., file_id: _Optional[str] = ..., created_at: _Optional[int] = ..., format: _Optional[str] = ..., train_examples: _Optional[int] = ..., validation_examples: _Optional[int] = ..., train_sha256: _Optional[str] = ..., validation_sha256: _Optional[str] = ..., error: _Optional[str] = ..., lines_processed: _Optional[int] = ..., options: _Optional[_Union[PrepareOptions, _Mapping]] = ..., finished_at: _Optional[int] = ...) -> None: ...

class PrepareDatasetRequest(_message.Message):
    __slots__ = ("file_id", "options")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    options: PrepareOptions
    def __init__(self, file_id: _Optional[str] = ..., options: _Optional[_Union[PrepareOptions, _Mapping]] = ...) -> None: ...

class PrepareDatasetResponse(_message.Message):
    __slots__ = ("dataset", "created")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    created: bool
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("dataset_id", "report")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    report: _struct_pb2.Struct
    def __init__(self, dataset_id: _Optional[str] = ..., report: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ExportReviewSampleRequest(_message.Message):
    __slots__ = ("dataset_id", "size", "format")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    size: int
    format: str
    def __init__(self, dataset_id: _Optional[str] = ..., size: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class ExportReviewSampleResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class GetDatasetContentRequest(_message.Message):
    __slots__ = ("dataset_id", "split")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    split: str
    def __init__(self, dataset_id: _Optional[str] = ..., split: _Optional[str] = ...) -> None: ...

class GetDatasetContentResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class GenerateSyntheticRequest(_message.Message):
    __slots__ = ("seed_file_id", "count", "teacher_base_url", "teacher_api_key", "teacher_model", "instructions", "options", "temperature")
    SEED_FILE_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TEACHER_BASE_URL_FIELD_NUMBER: _ClassVar[int]
    TEACHER_API_KEY_FIELD_NUMBER: _ClassVar[int]
    TEACHER_MODEL_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    seed_file_id: str
    count: int
    teacher_base_url: str
    teacher_api_key: str
    teacher_model: str
    instructions: str
    options: PrepareOptions
    temperature: float
    def __init__(self, seed_file_id: _Optional[str] = ..., count: _Optional[int] = ..., teacher_base_url: _Optional[str] = ..., teacher_api_key: _Optional[str] = ..., teacher_model: _Optional[str] = ..., instructions: _Optional[str] = ..., options: _Optional[_Union[PrepareOptions, _Mapping]] = ..., temperature: _Optional[float] = ...) -> None: ...

class GenerateSyntheticResponse(_message.Message):
    __slots__ = ("file", "dataset", "generated")
    FILE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    file: File
    dataset: Dataset
    generated: int
    def __init__(self, file: _Optional[_Union[File, _Mapping]] = ..., dataset: _Optional[_Union[Dataset, _Mapping]] = ..., generated: _Optional[int] = ...) -> None: ...

class AnonymizeTextsRequest(_message.Message):
    __slots__ = ("texts", "use_ner")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    USE_NER_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    use_ner: bool
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., use_ner: _Optional[bool] = ...) -> None: ...

class AnonymizeTextsResponse(_message.Message):
    __slots__ = ("texts", "counts")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    counts: _containers.ScalarMap[str, int]
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., counts: _Optional[_Mapping[str, int]] = ...) -> None: ...
