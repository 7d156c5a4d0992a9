from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
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
    __slots__ = ("feedback_id", "created_at", "created")
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    created_at: int
    created: bool
    def __init__(self, feedback_id: _Optional[str] = ..., created_at: _Optional[int] = ..., created: _Optional[bool] = ...) -> None: ...

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
