"""Named deployments: what clients ask for as `model`, and which version answers them.

A deployment serves one version to everyone, or, during a canary, sends `canary_percent` of its
requests to a candidate: the split is a hash of (deployment, user), so one user keeps seeing one
version; requests without a user are split at random. Promotion makes a version the one everyone
gets and remembers the one before, which a rollback returns to. Every change is a row of the
deployment's history and an event (`model.deployed`, `model.rolled_back`) written to the outbox in
the same transaction. Versions are checked before they are deployed (the caller's `check_version`:
a base model, or a fine-tuned model of the tenant that is available).

A canary started by a passed evaluation (`start_canary_in`) has an end, `canary_until`: the
service's canary check (`promote_finished_canaries`) promotes it then, so the history reads
"canary" then "promoted". A person's promotion, canary or rollback clears that end: from then on
the deployment changes only when a person says. Several inference processes may run the check:
each canary's promotion is claimed by one conditional update, so it happens once.

Switching versions is a pointer change: the generator loads an adapter on its first request, so no
request fails during a swap.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from protos import events_pb2
from services.inference import store
from services.shared.bus import new_envelope
from services.shared.db import Database
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.shared.outbox import add_to_outbox
from services.shared.subjects import MODEL_DEPLOYED, MODEL_ROLLED_BACK

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

CheckVersion = Callable[[str, str], Awaitable[None]]

# A deployment's canary columns once everyone gets one version.
_NO_CANARY = {"canary_version": "", "canary_percent": 0, "canary_until": None, "canary_reason": ""}


@dataclass(frozen=True)
class Change:
    action: str
    from_version: str
    to_version: str
    percent: int
    reason: str
    at: int


@dataclass(frozen=True)
class Deployment:
    name: str
    model_version: str
    previous_version: str
    canary_version: str
    canary_percent: int
    auto_promote: bool
    created_at: int
    updated_at: int
    history: list[Change] = field(default_factory=list)


def check_name(name: str, model_ids: list[str]) -> None:
    if not _NAME.match(name):
        raise InvalidArgument(f"deployment name {name!r}: 1 to 63 lower-case letters, digits and '-', starting and "
                              "ending with a letter or digit", param="name")
    if name in model_ids:
        raise InvalidArgument(f"deployment name {name!r} is a model id; clients could not tell them apart",
                              param="name")


def canary_takes(name: str, user: str, percent: int) -> bool:
    """Whether this request goes to the canary: sticky per user, random without one."""
    if percent <= 0:
        return False
    key = user or secrets.token_hex(8)
    return int(hashlib.sha256(f"{name}\0{key}".encode()).hexdigest()[:8], 16) % 100 < percent


class Deployments:
    def __init__(self, db: Database, check_version: CheckVersion, poke: Callable[[], None]):
        self._db = db
        self._check_version = check_version
        self._poke = poke  # the outbox relay: publish now rather than at its next poll

    # ---- reading ------------------------------------------------------------------------------

    async def get(self, tenant: str, name: str) -> Deployment:
        async with self._db.transaction() as session:
            return await self._view(session, tenant, await self._row(session, tenant, name))

    async def list(self, tenant: str) -> list[Deployment]:
        async with self._db.transaction() as session:
            return [await self._view(session, tenant, row) for row in await store.list_deployments(session, tenant)]

    async def resolve(self, tenant: str, name: str, user: str) -> str | None:
        """The version that answers this request to deployment `name`; None: no such deployment."""
        async with self._db.transaction() as session:
            row = await store.find_deployment(session, tenant, name)
        if row is None:
            return None
        if row["canary_version"] and canary_takes(name, user, row["canary_percent"]):
            return row["canary_version"]
        return row["model_version"]

    # ---- changing -----------------------------------------------------------------------------

    async def create(self, tenant: str, name: str, version: str, auto_promote: bool, model_ids: list[str]) -> Deployment:
        check_name(name, model_ids)
        await self._check_version(version, tenant)
        now = int(time.time())
        async with self._db.transaction() as session:
            if await store.find_deployment(session, tenant, name) is not None:
                raise AlreadyExists(f"deployment {name!r} exists; promote a version to it instead", param="name")
            await store.insert_deployment(session, tenant=tenant, name=name, model_version=version,
                                          auto_promote=auto_promote, created_at=now, updated_at=now)
            await self._record(session, tenant, name, "created", "", version, 100, "")
            deployment = await self._view(session, tenant, await self._row(session, tenant, name))
        self._poke()
        return deployment

    async def promote(self, tenant: str, name: str, version: str, reason: str = "") -> Deployment:
        await self._check_version(version, tenant)
        async with self._db.transaction() as session:
            deployment = await self.promote_in(session, tenant, name, version, reason)
        self._poke()
        return deployment

    async def promote_in(self, session: AsyncSession, tenant: str, name: str, version: str, reason: str) -> Deployment:
        """Promote inside the caller's transaction (an event handler's); the version is checked already."""
        row = await self._row(session, tenant, name, for_update=True)
        if row["model_version"] == version and not row["canary_version"]:
            return await self._view(session, tenant, row)  # already there: a repeated promotion changes nothing
        previous = row["model_version"] if row["model_version"] != version else row["previous_version"]
        await store.update_deployment(session, tenant, name, model_version=version, previous_version=previous,
                                      updated_at=int(time.time()), **_NO_CANARY)
        await self._record(session, tenant, name, "promoted", row["model_version"], version, 100, reason)
        return await self._view(session, tenant, await self._row(session, tenant, name))

    async def start_canary_in(self, session: AsyncSession, tenant: str, name: str, version: str, percent: int,
                              seconds: int, reason: str) -> None:
        """Send `percent` of the requests to `version` for `seconds`, then promote it (the canary check
        does), inside the caller's transaction (an event handler's); the version is checked already."""
        row = await self._row(session, tenant, name, for_update=True)
        if version in (row["model_version"], row["canary_version"]):
            return  # serving or on canary already: a repeated evaluation changes nothing
        await store.update_deployment(session, tenant, name, canary_version=version, canary_percent=percent,
                                      canary_until=math.ceil(time.time() + seconds),
                                      canary_reason=f"canary at {percent}% for {seconds}s; {reason}",
                                      updated_at=int(time.time()))
        await self._record(session, tenant, name, "canary", row["model_version"], version, percent, reason)

    async def promote_finished_canaries(self) -> None:
        """Promote every canary whose time is up, each in its own transaction; one claim per canary
        (a conditional update) keeps two processes checking at once from promoting it twice."""
        now = int(time.time())
        async with self._db.transaction() as session:
            due = await store.canaries_due(session, now)
        for tenant, name in due:
            async with self._db.transaction() as session:
                if not await store.claim_due_canary(session, tenant, name, now):
                    continue  # another process promoted it, or a person took over, since it was found due
                row = await self._row(session, tenant, name)  # locked by the claim until this transaction ends
                await self.promote_in(session, tenant, name, row["canary_version"], row["canary_reason"])
        if due:
            self._poke()

    async def set_canary(self, tenant: str, name: str, version: str, percent: int) -> Deployment:
        if not 0 <= percent <= 99:
            raise InvalidArgument(f"percent must be between 0 (no canary) and 99, got {percent}; promote the "
                                  "version to send it everything", param="percent")
        if percent:
            await self._check_version(version, tenant)
        async with self._db.transaction() as session:
            row = await self._row(session, tenant, name, for_update=True)
            if percent and version == row["model_version"]:
                raise InvalidArgument(f"{version} already serves {name}; a canary is for another version",
                                      param="model")
            canary = version if percent else ""
            await store.update_deployment(session, tenant, name, canary_version=canary, canary_percent=percent,
                                          canary_until=None, canary_reason="", updated_at=int(time.time()))
            await self._record(session, tenant, name, "canary", row["model_version"], canary, percent, "")
            deployment = await self._view(session, tenant, await self._row(session, tenant, name))
        self._poke()
        return deployment

    async def rollback(self, tenant: str, name: str, reason: str = "") -> Deployment:
        async with self._db.transaction() as session:
            row = await self._row(session, tenant, name, for_update=True)
            if not row["previous_version"]:
                raise FailedPrecondition(f"deployment {name!r} has no earlier version to roll back to", param="name",
                                         code="nothing_to_roll_back")
            await store.update_deployment(session, tenant, name, model_version=row["previous_version"],
                                          previous_version="", updated_at=int(time.time()), **_NO_CANARY)
            await self._record(session, tenant, name, "rolled_back", row["model_version"], row["previous_version"],
                               100, reason)
            deployment = await self._view(session, tenant, await self._row(session, tenant, name))
        self._poke()
        return deployment

    async def delete(self, tenant: str, name: str) -> None:
        async with self._db.transaction() as session:
            if not await store.delete_deployment(session, tenant, name):
                raise NotFound(f"no deployment {name!r}", param="name", code="deployment_not_found")

    # ---- helpers ------------------------------------------------------------------------------

    @staticmethod
    async def _row(session: AsyncSession, tenant: str, name: str, *, for_update: bool = False):
        row = await store.find_deployment(session, tenant, name, for_update=for_update)
        if row is None:
            raise NotFound(f"no deployment {name!r}", param="name", code="deployment_not_found")
        return row

    @staticmethod
    async def _view(session: AsyncSession, tenant: str, row) -> Deployment:
        history = [Change(c["action"], c["from_version"], c["to_version"], c["percent"], c["reason"], c["at"])
                   for c in await store.changes_of(session, tenant, row["name"])]
        return Deployment(row["name"], row["model_version"], row["previous_version"], row["canary_version"],
                          row["canary_percent"], row["auto_promote"], row["created_at"], row["updated_at"], history)

    @staticmethod
    async def _record(session: AsyncSession, tenant: str, name: str, action: str, from_version: str, to_version: str,
                      percent: int, reason: str) -> None:
        """The history row and its event, in the same transaction."""
        await store.add_change(session, tenant=tenant, name=name, action=action, from_version=from_version,
                               to_version=to_version, percent=percent, reason=reason, at=int(time.time()))
        if action == "rolled_back":
            event_type, payload = MODEL_ROLLED_BACK, events_pb2.ModelRolledBack(
                deployment=name, from_version=from_version, to_version=to_version, reason=reason)
        else:
            event_type, payload = MODEL_DEPLOYED, events_pb2.ModelDeployed(
                deployment=name, model_version=to_version or from_version, previous_version=from_version,
                traffic_percent=percent if to_version else 100 - percent)
        await add_to_outbox(session, store.messaging, new_envelope(event_type, payload, source="inference",
                                                                  tenant=tenant))
