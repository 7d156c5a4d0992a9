"""Reading the completion log: one served completion by its id, as feedback asks for it.

Feedback ties thumbs and corrections to a completion id, so this is on its hot path: one lookup by
primary key, scoped to the tenant (another tenant's id is as unknown as a made-up one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from services.inference import store
from services.shared.db import Database
from services.shared.errors import InvalidArgument, NotFound

# What an id may look like: ours are "cmpl-" and hex, but a caller may have chosen its own.
_COMPLETION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


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


async def logged_completion(db: Database, tenant: str, completion_id: str) -> LoggedCompletion:
    if not _COMPLETION_ID.fullmatch(completion_id):
        raise InvalidArgument(f"completion id {completion_id[:140]!r}: 1 to 128 letters, digits and '_.:-'",
                              param="completion_id")
    async with db.transaction() as session:
        row = await store.find_completion(session, tenant, completion_id)
    if row is None:
        raise NotFound(f"no completion {completion_id!r}", param="completion_id", code="completion_not_found")
    asked = json.loads(row["request"]) if row["request"] else {}  # None: the texts were not kept
    return LoggedCompletion(id=row["id"], model=row["model"], deployment=row["deployment"], created=row["created_at"],
                            texts=row["texts"], messages=asked.get("messages", []), prompt=asked.get("prompt", ""),
                            text=row["response"] or "")
