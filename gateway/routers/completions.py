"""`/v1/chat/completions` and `/v1/completions`, in OpenAI's shapes, over the inference service.

Each response's `id` is the completion id the inference service logged, which `/v1/feedback`
points at later. `n` asks for that many choices (each with its `index`; `usage` counts the prompt
once and sums the choices' tokens); the log keeps choice 0 under the response's `id` and choice i
under `<id>.<i>`, so feedback can name any of them. `stream: true` sends OpenAI's server-sent
events (chunks, each with one choice, whose `index` says which; then `data: [DONE]`); a client that
goes away cancels the call, which stops the generation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Literal

import grpc
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.clients import call, stream
from gateway.deps import ClientsDep, TenantDep
from gateway.errors import ERROR_RESPONSES
from protos import common_pb2, inference_pb2
from services.shared.errors import InvalidArgument
from services.shared.rpc import error_from_rpc

router = APIRouter(prefix="/v1", tags=["inference"], responses=ERROR_RESPONSES)

Stop = str | list[Annotated[str, Field(min_length=1)]] | None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    # A string, or OpenAI's list of content parts (text only here).
    content: str | list[TextPart]
    name: str | None = None

    def to_message(self) -> common_pb2.ChatMessage:
        content = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        # OpenAI's "developer" messages are its newer name for system instructions.
        return common_pb2.ChatMessage(role="system" if self.role == "developer" else self.role, content=content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A last chunk with the usage and no choices, as OpenAI sends it.
    include_usage: bool = False


class SamplingIn(BaseModel):
    """What both routes take; OpenAI's defaults (temperature and top_p 1: sampling)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: Stop = None
    seed: int | None = None
    # 1 to 128 as OpenAI takes it; the inference service may allow fewer (TUNELOOP_MAX_CHOICES).
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    # Accepted at their neutral values only: nothing here implements them.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # Storage options of OpenAI's that change nothing here.
    store: bool | None = None
    metadata: dict[str, str] | None = None

    def check_supported(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise InvalidArgument("stream_options is only for stream: true", param="stream_options")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise InvalidArgument(f"{name} is not supported; leave it at 0", param=name)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > 4 or not all(stops):
            raise InvalidArgument("stop: up to 4 non-empty strings", param="stop")
        return stops

    def request(self, **fields) -> inference_pb2.GenerateRequest:
        request = inference_pb2.GenerateRequest(
            model=self.model, max_tokens=self.max_tokens or 0, temperature=self.temperature, top_p=self.top_p,
            stop=self.stops(), user=self.user or "", n=self.n or 1, **fields)
        if self.seed is not None:
            request.seed = self.seed
        return request


class ChatCompletionCreate(SamplingIn):
    messages: list[MessageIn] = Field(min_length=1)
    # OpenAI's newer name for max_tokens.
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionCreate(SamplingIn):
    prompt: str = Field(min_length=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


def _usage(usage: common_pb2.Usage) -> Usage:
    return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                 total_tokens=usage.total_tokens)


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def _stream(body: SamplingIn, request: inference_pb2.GenerateRequest, clients, tenant: str,
                  choice: Callable[[int, str, str | None, bool], dict], kind: str) -> StreamingResponse:
    """OpenAI's server-sent events for one streamed request, a chunk per piece of a choice; errors
    before the first chunk are ordinary HTTP errors, later ones an `error` event (the 200 status is
    already sent)."""
    generating = clients.inference.GenerateStream(request, **clients.options(tenant))
    chunks = await stream("inference", generating, pick=lambda chunk: chunk)
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    async def events() -> AsyncIterator[bytes]:
        started: set[int] = set()  # the choices whose first chunk (with the role) was sent
        try:
            async for chunk in chunks:
                event = {"id": chunk.completion_id, "object": kind, "created": chunk.created, "model": chunk.model}
                first = chunk.index not in started
                if chunk.text or first:
                    yield _sse({**event, "choices": [choice(chunk.index, chunk.text, None, first)]})
                    started.add(chunk.index)
                if chunk.finish_reason:
                    yield _sse({**event, "choices": [choice(chunk.index, "", chunk.finish_reason, False)]})
                if chunk.HasField("usage") and include_usage:  # the stream's last chunk
                    yield _sse({**event, "choices": [], "usage": _usage(chunk.usage).model_dump()})
        except grpc.aio.AioRpcError as failure:
            error = error_from_rpc(failure, service="inference")
            yield _sse({"error": {"message": error.message, "type": error.openai_type, "param": error.param,
                                  "code": error.code}})
        finally:  # the client went away: stop generating for it
            generating.cancel()
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _chat_choice(index: int, text: str, finish_reason: str | None, first: bool) -> dict:
    delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
    return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}


def _text_choice(index: int, text: str, finish_reason: str | None, _first: bool) -> dict:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}}, "description": "with stream: chunks as SSE"}})
async def create_chat_completion(body: ChatCompletionCreate, clients: ClientsDep, tenant: TenantDep):
    body.check_supported()
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise InvalidArgument("give max_tokens or max_completion_tokens, not both", param="max_completion_tokens")
    body.max_tokens = body.max_tokens or body.max_completion_tokens
    request = body.request(messages=[message.to_message() for message in body.messages])
    if body.stream:
        return await _stream(body, request, clients, tenant, _chat_choice, "chat.completion.chunk")
    response = await call("inference", clients.inference.Generate(request, **clients.options(tenant)))
    return ChatCompletion(
        id=response.completion_id, created=response.created, model=response.model, usage=_usage(response.usage),
        choices=[ChatChoice(index=c.index, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason)
                 for c in response.choices],
    )


@router.post("/completions", response_model=Completion,
             responses={200: {"content": {"text/event-stream": {}}, "description": "with stream: chunks as SSE"}})
async def create_completion(body: CompletionCreate, clients: ClientsDep, tenant: TenantDep):
    body.check_supported()
    request = body.request(prompt=body.prompt)
    if body.stream:
        return await _stream(body, request, clients, tenant, _text_choice, "text_completion")
    response = await call("inference", clients.inference.Generate(request, **clients.options(tenant)))
    return Completion(
        id=response.completion_id, created=response.created, model=response.model, usage=_usage(response.usage),
        choices=[CompletionChoice(index=c.index, text=c.text, finish_reason=c.finish_reason) for c in response.choices],
    )
