"""A teacher model behind any OpenAI-compatible endpoint, asked through the official `openai` SDK.

Data prep writes synthetic examples with it and training distils it into a student. The SDK
retries 408, 409, 429 and 5xx by itself, honouring `Retry-After`; what still fails afterwards
becomes a tuneloop error that names the request field at fault, so the caller's error says whether
the key, the model or the endpoint is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import openai

from services.shared.errors import FailedPrecondition, InvalidArgument, Unavailable


@dataclass(frozen=True)
class TeacherParams:
    """The names the caller's request gives the teacher's fields, for errors to point at."""

    base_url: str = "teacher_base_url"
    model: str = "teacher_model"
    api_key: str = "teacher_api_key"


@dataclass(frozen=True)
class TeacherEndpoint:
    base_url: str
    model: str
    # Kept out of repr so an endpoint printed in a log or a traceback never shows the key.
    api_key: str = field(default="", repr=False)
    params: TeacherParams = field(default_factory=TeacherParams)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InvalidArgument("the teacher's base URL must be an http(s) URL", param=self.params.base_url)
        if not self.model:
            raise InvalidArgument("the teacher's model is required", param=self.params.model)


class TeacherClient:
    """One `openai.OpenAI` client per endpoint; thread-safe, so one client serves a thread pool."""

    def __init__(self, endpoint: TeacherEndpoint, *, max_retries: int = 2, timeout: float = 120.0):
        self.endpoint = endpoint
        self._client = openai.OpenAI(
            base_url=endpoint.base_url, api_key=endpoint.api_key or "none", max_retries=max_retries, timeout=timeout
        )

    def chat(self, messages: list[dict], *, temperature: float, max_tokens: int | None = None) -> str:
        """The text of the teacher's first choice for `messages`."""
        endpoint, params = self.endpoint, self.endpoint.params
        extra = {"max_tokens": max_tokens} if max_tokens else {}
        try:
            reply = self._client.chat.completions.create(
                model=endpoint.model, messages=messages, temperature=temperature, **extra
            )
        except openai.AuthenticationError as error:
            raise FailedPrecondition(
                f"the teacher at {endpoint.base_url} refused the API key: {error.message}", param=params.api_key,
                code="teacher_error",
            ) from None
        except openai.NotFoundError as error:
            raise FailedPrecondition(
                f"the teacher at {endpoint.base_url} does not know model {endpoint.model!r}: {error.message}",
                param=params.model, code="teacher_error",
            ) from None
        except openai.APIConnectionError as error:
            raise Unavailable(f"cannot reach the teacher at {endpoint.base_url}: {error}", param=params.base_url,
                              code="teacher_error") from None
        except openai.APIStatusError as error:
            raise Unavailable(
                f"the teacher at {endpoint.base_url} answered HTTP {error.status_code}: {error.message}",
                param=params.base_url, code="teacher_error",
            ) from None
        except openai.APIError as error:
            raise Unavailable(f"the teacher at {endpoint.base_url} failed: {error}", param=params.base_url,
                              code="teacher_error") from None
        return (reply.choices[0].message.content or "") if reply.choices else ""
