"""Remote backends: models served by another server. `openai`: an OpenAI-compatible API, through the
official SDK. `tgi`: a Text Generation Inference server, through `huggingface_hub.InferenceClient` (the
maintained successor of the `text-generation` client, which cannot share an environment with
transformers 5).

Two kinds of model answer from there: models tuned on a provider (the registry names the provider's
model id; the provider's base URL and key are the training service's settings, shared), and models
the operator lists in `TUNELOOP_REMOTE_MODELS`. The remote is always asked to stream, so time to
first token, cancellation (a client that leaves closes the remote stream) and streaming to our own
clients work the same as for local models. Remote answers carry no per-token details.

Choices (OpenAI's `n`): an OpenAI-compatible remote generates them itself (`n` is passed on, its
stream's chunks name their choice); it reports the completion tokens summed over the choices only,
so each choice's share is estimated from its text's length (the sum stays exact). TGI gives one
answer per request (its Messages API documents `n` as unused), so n > 1 is refused for a TGI model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import openai
from pydantic import BaseModel, ConfigDict, SecretStr

from services.inference.generation import GeneratedToken, Generation
from services.shared.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable


class RemoteModel(BaseModel):
    """A model another server answers for: its API ("openai", or "tgi" for Text Generation
    Inference), where, under which name (TGI: the adapter id, empty for its own model), which key."""

    model_config = ConfigDict(frozen=True)

    backend: Literal["openai", "tgi"] = "openai"
    base_url: str
    model: str = ""
    api_key: SecretStr = SecretStr("")


class OpenAIBackend:
    """One SDK client per endpoint; thread-safe, called from the servicer's worker threads."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 300.0, max_retries: int = 2):
        self.base_url = base_url
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout_s,
                                     max_retries=max_retries)

    def generate(
        self,
        model_id: str,
        remote_model: str,
        *,
        n: int = 1,
        messages: list[dict[str, Any]] | None,
        prompt: str | None,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stop: Sequence[str],
        on_text: Callable[[int, str, list[GeneratedToken]], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Generation]:
        """`model_id` (ours, for errors) answered by `remote_model` at this endpoint: `n` choices."""
        options: dict[str, Any] = {"model": remote_model, "max_tokens": max_tokens, "temperature": temperature,
                                   "top_p": top_p, "stream": True, "stream_options": {"include_usage": True}}
        if n > 1:
            options["n"] = n
        if seed is not None:
            options["seed"] = seed
        if stop:
            options["stop"] = list(stop)
        try:
            if messages is not None:
                stream = self._client.chat.completions.create(messages=messages, **options)
            else:
                stream = self._client.completions.create(prompt=prompt, **options)
            with stream:  # leaving it, also on cancel, closes the remote stream
                return _read_openai_stream(stream, chat=messages is not None, n=n, on_text=on_text, cancel=cancel)
        except openai.NotFoundError as error:
            raise NotFound(f"{model_id}: the remote at {self.base_url} does not know {remote_model!r}: "
                           f"{error.message}", param="model", code="model_not_found") from None
        except openai.RateLimitError as error:
            raise ResourceExhausted(f"{model_id}: the remote at {self.base_url} is busy: {error.message}") from None
        except openai.APIConnectionError as error:
            raise Unavailable(f"{model_id}: cannot reach the remote at {self.base_url}: {error}") from None
        except openai.APIStatusError as error:
            if error.status_code >= 500:
                raise Unavailable(f"{model_id}: the remote at {self.base_url} failed: {error.message}") from None
            body = error.body if isinstance(error.body, dict) else {}
            raise InvalidArgument(f"{model_id}: the remote refused the request: {error.message}",
                                  param=body.get("param") or None) from None

    def close(self) -> None:
        self._client.close()


def _read_openai_stream(stream, *, chat: bool, n: int, on_text, cancel) -> list[Generation]:
    """A streamed answer of `n` choices in OpenAI's chunk shape (from the SDK, or TGI's Messages
    API), passed on to `on_text` piece by piece; stops reading when `cancel` is set."""
    texts, finishes, first_token_at, usage = [""] * n, ["length"] * n, [None] * n, None
    for chunk in stream:
        if cancel is not None and cancel.is_set():
            break
        usage = chunk.usage or usage
        for choice in chunk.choices:
            index = choice.index or 0
            if not 0 <= index < n:
                raise Unavailable(f"the remote streamed choice {index} of a request for {n}")
            piece = (choice.delta.content or "") if chat else (choice.text or "")
            if piece:
                first_token_at[index] = first_token_at[index] or time.perf_counter()
                texts[index] += piece
                if on_text is not None:
                    on_text(index, piece, [])
            if choice.finish_reason:
                finishes[index] = "length" if choice.finish_reason == "length" else "stop"
    prompt_tokens = usage.prompt_tokens if usage else 0
    shares = _shares(usage.completion_tokens if usage else 0, texts)
    return [Generation(text, finish, prompt_tokens=prompt_tokens, completion_tokens=share, first_token_at=first)
            for text, finish, share, first in zip(texts, finishes, shares, first_token_at, strict=True)]


def _shares(total: int, texts: list[str]) -> list[int]:
    """`total` completion tokens (a remote's sum over its choices) shared out in proportion to the
    choices' text lengths (evenly when every text is empty), the largest remainders rounded up, so
    that the shares add up to the total."""
    weights = [len(text) for text in texts] if any(texts) else [1] * len(texts)
    exact = [total * weight / sum(weights) for weight in weights]
    shares = [int(part) for part in exact]
    for index in sorted(range(len(texts)), key=lambda i: shares[i] - exact[i])[:total - sum(shares)]:
        shares[index] += 1
    return shares


class TgiBackend:
    """A remote TGI server: prompts through its generate API (per-token details included), chats
    through its Messages API. `remote_model` is a LoRA adapter id there, or empty for its own model."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 300.0):
        from huggingface_hub import InferenceClient

        self.base_url = base_url
        self._client = InferenceClient(base_url=base_url, api_key=api_key or None, timeout=timeout_s)

    def generate(self, model_id: str, remote_model: str, *, n: int = 1, messages, prompt, max_tokens, temperature,
                 top_p, seed, stop, on_text=None, cancel=None) -> list[Generation]:
        import httpx2  # huggingface_hub's own HTTP client
        from huggingface_hub.errors import HfHubHTTPError

        if n > 1:
            raise InvalidArgument(f"{model_id} is served by a TGI server, which gives one answer per request; "
                                  "send n: 1 (and ask again for another)", param="n", code="n_not_supported")
        sampling = {"temperature": temperature, "top_p": top_p if top_p < 1 else None} if temperature > 0 else {}
        text, tokens, finish, first_token_at, prompt_tokens = "", [], "length", None, 0
        try:
            if messages is not None:
                stream = self._client.chat_completion(
                    messages=messages, model=remote_model or None, max_tokens=max_tokens, seed=seed,
                    stop=list(stop) or None, stream=True, stream_options={"include_usage": True},
                    temperature=temperature, top_p=top_p)
                return _read_openai_stream(stream, chat=True, n=1, on_text=on_text, cancel=cancel)
            stream = self._client.text_generation(
                prompt, details=True, stream=True, adapter_id=remote_model or None, max_new_tokens=max_tokens,
                seed=seed, stop=list(stop) or None, do_sample=temperature > 0, **sampling)
            for event in stream:
                if cancel is not None and cancel.is_set():
                    break
                token = GeneratedToken(event.token.id, event.token.text, event.token.logprob or 0.0,
                                       event.token.special)
                tokens.append(token)
                first_token_at = first_token_at or time.perf_counter()
                piece = "" if token.special else token.text
                if event.details is not None:  # the last event: TGI's own text (cut at a stop string)
                    finish = "length" if event.details.finish_reason == "length" else "stop"
                    # The prompt's tokens as TGI read them (after its truncation). From a TGI release that
                    # sends no input_length the count stays 0: its tokenizer is not known here.
                    prompt_tokens = event.details.input_length or 0
                    piece = (event.generated_text or "")[len(text):]
                text += piece
                if on_text is not None:
                    on_text(0, piece, [token])
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            message = f"{model_id}: the TGI server at {self.base_url} answered {status}: {error}"
            if status == 404:
                raise NotFound(message, param="model", code="model_not_found") from None
            if status == 429:
                raise ResourceExhausted(message) from None
            if 400 <= status < 500:
                raise InvalidArgument(message) from None
            raise Unavailable(message) from None
        except (httpx2.TransportError, OSError, TimeoutError) as error:
            raise Unavailable(f"{model_id}: cannot reach the TGI server at {self.base_url}: {error}") from None
        return [Generation(text, finish, prompt_tokens=prompt_tokens, completion_tokens=len(tokens),
                           tokens=tuple(tokens), first_token_at=first_token_at)]
