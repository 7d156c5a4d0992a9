"""The one place errors become OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from services.shared.errors import TuneloopError

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_response(status: int, message: str, type_: str, param: str | None = None, code: str | None = None, headers=None):
    body = ErrorResponse(error=ErrorDetail(message=message, type=type_, param=param, code=code))
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


_HTTP_TYPES = {401: "invalid_request_error", 403: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 429: "rate_limit_exceeded"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TuneloopError)
    async def platform_error(_request: Request, error: TuneloopError):
        if error.http_status >= 500:
            log.warning("%s: %s", type(error).__name__, error.message)
        headers = None
        if error.http_status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        elif error.http_status in (429, 503):
            # A full queue drains and a restarting service is back within seconds; SDKs wait this long.
            headers = {"Retry-After": "1"}
        return error_response(error.http_status, error.message, error.openai_type, error.param, error.code, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
        param = ".".join(location) or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return error_response(400, message, "invalid_request_error", param, "invalid_value")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException):
        type_ = _HTTP_TYPES.get(error.status_code, "invalid_request_error" if error.status_code < 500 else "server_error")
        return error_response(error.status_code, str(error.detail), type_, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, error: Exception):
        log.exception("unhandled error")
        return error_response(500, "The server had an error while processing your request.", "server_error")


# What routes declare, so OpenAPI shows the error shape.
ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Invalid request",
        401: "Missing or invalid API key",
        404: "Not found",
        503: "A service is unavailable",
    }.items()
}
