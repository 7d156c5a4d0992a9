"""`/v1/chat/completions` and `/v1/completions`, in OpenAI's shapes, over the inference service.

Each response's `id` is the completion id the inference service logged, which `/v1/feedback`
points at later. Streaming and `n` > 1 are not served yet and say so (501).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.clients import call
from gateway.deps import ClientsDep, TenantDep
from gateway.errors import ERROR_RESPONSES
from protos import common_pb2, inference_pb2
from services.shared.errors import InvalidArgument, NotImplementedYet

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


class SamplingIn(BaseModel):
    """What both routes take; OpenAI's defaults (temperature and top_p 1: sampling)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: Stop = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    user: str | None = Field(default=None, max_length=256)
    # Accepted at their neutral values only: nothing here implements them.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # Storage options of OpenAI's that change nothing here.
    store: bool | None = None
    metadata: dict[str, str] | None = None

    def check_supported(self) -> None:
        if self.stream:
            raise NotImplementedYet("stream: true is not served yet; send stream: false", param="stream")
        if self.n != 1:
            raise NotImplementedYet("n > 1 is not served yet; send n: 1 and ask again for more choices", param="n")
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
            stop=self.stops(), **fields)
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


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(body: ChatCompletionCreate, clients: ClientsDep, tenant: TenantDep) -> ChatCompletion:
    body.check_supported()
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise InvalidArgument("give max_tokens or max_completion_tokens, not both", param="max_completion_tokens")
    body.max_tokens = body.max_tokens or body.max_completion_tokens
    request = body.request(messages=[message.to_message() for message in body.messages])
    response = await call("inference", clients.inference.Generate(request, **clients.options(tenant)))
    return ChatCompletion(
        id=response.completion_id, created=response.created, model=response.model, usage=_usage(response.usage),
        choices=[ChatChoice(index=0, message=AssistantMessage(content=response.text),
                            finish_reason=response.finish_reason)],
    )


@router.post("/completions", response_model=Completion)
async def create_completion(body: CompletionCreate, clients: ClientsDep, tenant: TenantDep) -> Completion:
    body.check_supported()
    request = body.request(prompt=body.prompt)
    response = await call("inference", clients.inference.Generate(request, **clients.options(tenant)))
    return Completion(
        id=response.completion_id, created=response.created, model=response.model, usage=_usage(response.usage),
        choices=[CompletionChoice(index=0, text=response.text, finish_reason=response.finish_reason)],
    )
