"""The completion log: every served completion written once, and one read back by its id as feedback asks.

A response has one id (OpenAI's `id`, "cmpl-" and hex), and each of its n choices is a completion
of its own in the log: choice 0 under the response's id, choice i under "<id>.<i>". So feedback
against the id a client got back points at the first choice, as it does when n is 1, and a client
that shows several choices can point at another by its own id. The prompt's tokens are counted on
the first choice's row only and the request's cost is shared between the rows, so the log's sums
(GetUsage) are what the responses reported.

Reading is on feedback's hot path: one lookup by primary key, scoped to the tenant (another
tenant's id is as unknown as a made-up one).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from services.inference import store
from services.inference.decoding import Generation
from services.shared.db import Database
from services.shared.errors import InvalidArgument, NotFound

# What an id may look like: ours are "cmpl-" and hex, but a caller may have chosen its own.
_COMPLETION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

# Texts of the tenant in, the same texts with personal data replaced out; None when that failed.
Redact = Callable[[str, list[str]], Awaitable[list[str] | None]]


def new_completion_id() -> str:
    return f"cmpl-{secrets.token_hex(12)}"


def choice_id(completion_id: str, index: int) -> str:
    """The id the log keeps choice `index` of a response under."""
    return completion_id if index == 0 else f"{completion_id}.{index}"


@dataclass(frozen=True)
class LoggedCompletion:
    id: str
    model: str  # the version that answered
    deployment: str  # the deployment the request named; "" when it named a model
    created: int
    texts: str  # how the log kept the texts: "full", "redacted", "none" or "withheld"
    messages: list[dict] = field(default_factory=list)  # what was asked: a chat, or a plain prompt
    prompt: str = ""
    text: str = ""


class CompletionLog:
    def __init__(self, db: Database, *, texts: Literal["full", "redacted", "none"], price_per_hour_usd: float,
                 redact: Redact | None = None):
        self._db = db
        self._texts = texts
        self._price_per_hour_usd = price_per_hour_usd
        self._redact = redact  # needed for texts "redacted"

    async def record(self, tenant: str, *, completion_id: str, created: int, model: str, deployment: str,
                     messages: list[dict[str, str]], prompt: str, generations: list[Generation], started: float,
                     stream: bool) -> None:
        """Log a response's choices (`started`: time.perf_counter() when the request came in)."""
        latency_s = time.perf_counter() - started
        kept, asked, answers = await self._kept_texts(tenant, messages, prompt, [g.text for g in generations])
        async with self._db.transaction() as session:
            for index, (generation, answer) in enumerate(zip(generations, answers, strict=True)):
                await store.log_completion(
                    session,
                    id=choice_id(completion_id, index),
                    tenant=tenant,
                    model=model,
                    prompt_tokens=generation.prompt_tokens if index == 0 else 0,
                    completion_tokens=generation.completion_tokens,
                    finish_reason=generation.finish_reason,
                    latency_ms=latency_s * 1000,
                    created_at=created,
                    request=asked,
                    response=answer,
                    texts=kept,
                    stream=stream,
                    ttft_ms=(generation.first_token_at - started) * 1000 if generation.first_token_at else None,
                    cost_usd=latency_s * self._price_per_hour_usd / 3600 / len(generations),
                    deployment=deployment,
                )

    async def _kept_texts(self, tenant: str, messages: list[dict[str, str]], prompt: str, answers: list[str]
                          ) -> tuple[str, str | None, list[str | None]]:
        """What the log keeps of the request and the answers, as `texts` says: (how, request JSON, answers)."""
        if self._texts == "none":
            return "none", None, [None] * len(answers)
        texts = [m["content"] for m in messages] if messages else [prompt]
        asked_count = len(texts)
        texts += answers
        if self._texts == "redacted":
            assert self._redact is not None, "texts 'redacted' needs a redact function"
            redacted = await self._redact(tenant, texts)
            if redacted is None:  # the answer is served; only its texts go unlogged
                return "withheld", None, [None] * len(answers)
            texts = redacted
        asked, kept_answers = texts[:asked_count], texts[asked_count:]
        if messages:
            request_json = {"messages": [{**m, "content": text} for m, text in zip(messages, asked, strict=True)]}
        else:
            request_json = {"prompt": asked[0]}
        return self._texts, json.dumps(request_json, ensure_ascii=False), list(kept_answers)

    async def find(self, tenant: str, completion_id: str) -> LoggedCompletion:
        if not _COMPLETION_ID.fullmatch(completion_id):
            raise InvalidArgument(f"completion id {completion_id[:140]!r}: 1 to 128 letters, digits and '_.:-'",
                                  param="completion_id")
        async with self._db.transaction() as session:
            row = await store.find_completion(session, tenant, completion_id)
        if row is None:
            raise NotFound(f"no completion {completion_id!r}", param="completion_id", code="completion_not_found")
        asked = json.loads(row["request"]) if row["request"] else {}  # None: the texts were not kept
        return LoggedCompletion(id=row["id"], model=row["model"], deployment=row["deployment"],
                                created=row["created_at"], texts=row["texts"], messages=asked.get("messages", []),
                                prompt=asked.get("prompt", ""), text=row["response"] or "")
