"""One error hierarchy for the whole platform, mapped once at each edge.

Domain code raises these with the field, line or id at fault. The gRPC interceptor turns them into
status codes (and puts `code` and `param` in trailing metadata); the gateway turns them into
OpenAI's error body. Each class also inherits the matching built-in exception, as nats.py does, so
callers that only know Python's exceptions still catch them.
"""

from __future__ import annotations


class TuneloopError(Exception):
    """Base of every error tuneloop raises on purpose."""

    grpc_status = "INTERNAL"
    http_status = 500
    openai_type = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def __str__(self) -> str:
        return self.message


class InvalidArgument(TuneloopError, ValueError):
    grpc_status = "INVALID_ARGUMENT"
    http_status = 400
    openai_type = "invalid_request_error"
    default_code = "invalid_value"


class NotFound(TuneloopError, LookupError):
    grpc_status = "NOT_FOUND"
    http_status = 404
    openai_type = "invalid_request_error"
    default_code = "not_found"


class AlreadyExists(TuneloopError):
    grpc_status = "ALREADY_EXISTS"
    http_status = 409
    openai_type = "invalid_request_error"
    default_code = "already_exists"


class FailedPrecondition(TuneloopError):
    grpc_status = "FAILED_PRECONDITION"
    http_status = 409
    openai_type = "invalid_request_error"
    default_code = "failed_precondition"


class Unauthenticated(TuneloopError, PermissionError):
    grpc_status = "UNAUTHENTICATED"
    http_status = 401
    openai_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(TuneloopError, PermissionError):
    grpc_status = "PERMISSION_DENIED"
    http_status = 403
    openai_type = "invalid_request_error"
    default_code = "permission_denied"


class ResourceExhausted(TuneloopError):
    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 429
    openai_type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class Unavailable(TuneloopError, ConnectionError):
    grpc_status = "UNAVAILABLE"
    http_status = 503
    openai_type = "server_error"
    default_code = "service_unavailable"


class NotImplementedYet(TuneloopError, NotImplementedError):
    """A capability the platform names but does not have yet; says so instead of pretending."""

    grpc_status = "UNIMPLEMENTED"
    http_status = 501
    openai_type = "server_error"
    default_code = "not_implemented"


class ModelUnavailable(FailedPrecondition):
    """A model id is known but its weights are not in the model store (and cannot be made)."""

    default_code = "model_not_available"


ERRORS_BY_GRPC_STATUS: dict[str, type[TuneloopError]] = {
    cls.grpc_status: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        NotImplementedYet,
    )
}
