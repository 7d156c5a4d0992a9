"""The one mapping from platform errors to OpenAI's error body, status and headers."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.errors import install_error_handlers
from services.shared.errors import NotFound, ResourceExhausted, Unavailable


@pytest.mark.parametrize(("error", "status", "type_", "retry_after"), [
    (ResourceExhausted("64 requests are already being served or waiting", code="queue_full"), 429,
     "rate_limit_exceeded", "1"),
    (Unavailable("the inference service is unavailable"), 503, "server_error", "1"),
    (NotFound("no such model", param="model", code="model_not_found"), 404, "invalid_request_error", None),
])
def test_platform_errors_become_openai_errors(error, status, type_, retry_after):
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fail")
    async def fail():
        raise error

    response = TestClient(app).get("/fail")
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry_after
    body = response.json()["error"]
    assert (body["message"], body["type"], body["param"], body["code"]) == (
        error.message, type_, error.param, error.code)
