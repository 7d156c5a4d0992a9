"""Text Generation Inference's API, so the official `text-generation` client works against tuneloop.

TGI serves one model and picks a LoRA adapter by `parameters.adapter_id`; tuneloop serves many, so
the model is either `adapter_id` (any id of `/v1/models`) on the root routes (`/`, `/generate`,
`/generate_stream`, default: the default base model) or the path on `/tgi/{model}/...`, which is
the base URL to give a client that has no `adapter_id` (text-generation 0.7):

    Client("http://localhost:8000/tgi/smollm2-135m-instruct", headers={"Authorization": "Bearer ..."})

Errors come in TGI's shape (`{"error", "error_type"}`, 422 for a bad request), as its client parses them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.clients import call, stream
from gateway.deps import ClientsDep, TenantDep
from protos import inference_pb2
from services.shared.errors import TuneloopError
from services.shared.models import DEFAULT_MODEL_ID
from services.shared.rpc import error_from_rpc

router = APIRouter(tags=["tgi"])

# Parameters TGI has and tuneloop does not implement: accepted only at their neutral values.
_UNSUPPORTED = {"repetition_penalty": (None, 1.0), "frequency_penalty": (None, 0.0), "top_k": (None,),
                "typical_p": (None,), "truncate": (None,), "top_n_tokens": (None,), "grammar": (None,),
                "watermark": (None, False), "decoder_input_details": (None, False), "best_of": (None, 1)}


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None stands for the default throughout: clients such as huggingface_hub send every field.
    do_sample: bool | None = False
    max_new_tokens: int | None = Field(default=20, ge=1)
    return_full_text: bool | None = False
    stop: list[str] | None = Field(default=None, max_length=4)
    seed: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, gt=0, le=2)
    top_p: float | None = Field(default=None, gt=0, lt=1)
    details: bool | None = False
    adapter_id: str | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    typical_p: float | None = None
    truncate: int | None = None
    top_n_tokens: int | None = None
    grammar: Any = None
    watermark: bool | None = False
    decoder_input_details: bool | None = False
    best_of: int | None = None

    @property
    def sampling(self) -> bool:
        return bool(self.do_sample) or self.temperature is not None or self.top_p is not None


class TgiRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str = Field(min_length=1)
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


class TgiError(Exception):
    """An error in TGI's shape; `error_type` is what its client dispatches on."""

    def __init__(self, status: int, message: str, error_type: str):
        self.status, self.message, self.error_type = status, message, error_type


def _tgi_error(error: TuneloopError) -> TgiError:
    status = error.http_status
    if status < 500 and status not in (401, 403, 404, 429):
        return TgiError(422, error.message, "validation")
    return TgiError(status, error.message, "overloaded" if status == 429 else "generation")


def install_tgi_errors(app) -> None:
    @app.exception_handler(TgiError)
    async def tgi_error(_request, error: TgiError):
        return JSONResponse(status_code=error.status, content={"error": error.message, "error_type": error.error_type})


def _request(model: str | None, body: TgiRequest) -> inference_pb2.GenerateRequest:
    parameters = body.parameters
    for name, neutral in _UNSUPPORTED.items():
        if getattr(parameters, name) not in neutral:
            raise TgiError(422, f"parameters.{name} is not supported by tuneloop; leave it unset", "validation")
    request = inference_pb2.GenerateRequest(
        model=model or parameters.adapter_id or DEFAULT_MODEL_ID, prompt=body.inputs,
        max_tokens=parameters.max_new_tokens or 20, stop=parameters.stop or [],
        temperature=(parameters.temperature or 1.0) if parameters.sampling else 0.0, top_p=parameters.top_p or 0.0)
    if parameters.seed is not None:
        request.seed = parameters.seed
    return request


def _finish_reason(finish_reason: str, stop_sequence: str) -> str:
    if finish_reason == "length":
        return "length"
    return "stop_sequence" if stop_sequence else "eos_token"


def _token(token: inference_pb2.GeneratedToken) -> dict:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


async def _generate(model: str | None, body: TgiRequest, clients, tenant: str) -> dict:
    request = _request(model, body)
    try:
        response = await call("inference", clients.inference.Generate(request, **clients.options(tenant)))
    except TuneloopError as error:
        raise _tgi_error(error) from None
    text = (body.inputs + response.text) if body.parameters.return_full_text else response.text
    result: dict[str, Any] = {"generated_text": text}
    if body.parameters.details:
        result["details"] = {
            "finish_reason": _finish_reason(response.finish_reason, response.stop_sequence),
            "generated_tokens": response.usage.completion_tokens,
            "seed": body.parameters.seed if body.parameters.sampling else None,
            "prefill": [], "tokens": [_token(t) for t in response.tokens], "top_tokens": None,
            "best_of_sequences": None,
        }
    return result


async def _generate_stream(model: str | None, body: TgiRequest, clients, tenant: str) -> StreamingResponse:
    """One event per token; the last carries the whole text and the details, as TGI sends them."""
    request = _request(model, body)
    generating = clients.inference.GenerateStream(request, **clients.options(tenant))
    try:
        chunks = await stream("inference", generating, pick=lambda chunk: chunk)
    except TuneloopError as error:
        raise _tgi_error(error) from None

    async def events() -> AsyncIterator[bytes]:
        held: dict | None = None  # the latest token's event: the last one gets the text and details
        text = body.inputs if body.parameters.return_full_text else ""
        try:
            async for chunk in chunks:
                text += chunk.text
                for token in chunk.tokens:
                    if held is not None:
                        yield _event(held)
                    held = {"token": _token(token), "generated_text": None, "details": None, "top_tokens": None}
                if chunk.finish_reason and held is not None:
                    held["generated_text"] = text
                    held["details"] = {"finish_reason": _finish_reason(chunk.finish_reason, chunk.stop_sequence),
                                       "generated_tokens": chunk.usage.completion_tokens,
                                       "input_length": chunk.usage.prompt_tokens,
                                       "seed": body.parameters.seed if body.parameters.sampling else None}
                    yield _event(held)
                    held = None
        except grpc.aio.AioRpcError as failure:
            error = error_from_rpc(failure, service="inference")
            yield _event({"error": error.message, "error_type": "generation"})
        finally:  # the client went away: stop generating for it
            generating.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _event(data: dict) -> bytes:
    return f"data:{json.dumps(data)}\n\n".encode()


@router.post("/generate")
async def generate(body: TgiRequest, clients: ClientsDep, tenant: TenantDep) -> dict:
    return await _generate(None, body, clients, tenant)


@router.post("/generate_stream", response_class=StreamingResponse)
async def generate_stream(body: TgiRequest, clients: ClientsDep, tenant: TenantDep) -> StreamingResponse:
    return await _generate_stream(None, body, clients, tenant)


@router.post("/")
async def compat_generate(body: TgiRequest, clients: ClientsDep, tenant: TenantDep):
    """TGI's root route, which its client calls: `stream` picks the kind of answer."""
    if body.stream:
        return await _generate_stream(None, body, clients, tenant)
    return [await _generate(None, body, clients, tenant)]


@router.post("/tgi/{model}/generate")
async def model_generate(model: str, body: TgiRequest, clients: ClientsDep, tenant: TenantDep) -> dict:
    return await _generate(_model(model, body), body, clients, tenant)


@router.post("/tgi/{model}/generate_stream", response_class=StreamingResponse)
async def model_generate_stream(model: str, body: TgiRequest, clients: ClientsDep, tenant: TenantDep):
    return await _generate_stream(_model(model, body), body, clients, tenant)


@router.post("/tgi/{model}")
async def model_compat_generate(model: str, body: TgiRequest, clients: ClientsDep, tenant: TenantDep):
    model = _model(model, body)
    if body.stream:
        return await _generate_stream(model, body, clients, tenant)
    return [await _generate(model, body, clients, tenant)]


def _model(model: str, body: TgiRequest) -> str:
    if body.parameters.adapter_id and body.parameters.adapter_id != model:
        raise TgiError(422, f"parameters.adapter_id {body.parameters.adapter_id!r} differs from the model in the "
                       f"path, {model!r}", "validation")
    return model

