"""The feedback loop of each deployment: feedback in, guarded; a retrain request out, exactly once per
batch; the monitor's drift and schedule triggers; the policy and the view of it all.

Every decision about a deployment's batches is made under its lock (`store.lock_loop`), in the same
transaction that stores the feedback and writes the retrain request to the outbox: concurrent posts
queue on the lock, and a crash loses either both or neither.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from services.feedback import store
from services.feedback.guards import contradicted_by, near_duplicate_of, prompt_key, prompt_text, select_batch
from services.feedback.intake import FeedbackIn
from services.feedback.policy import LoopPolicy
from services.feedback.retrain_trigger import (
    DRIFT,
    SCHEDULE,
    Decision,
    LoopState,
    drift_of,
    fair_batch_decision,
    schedule_due,
    threshold_decision,
    up_rate,
)
from services.shared.db import Database
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

log = logging.getLogger(__name__)

REVIEW_ACTIONS = ("release", "reject")


@dataclass(frozen=True)
class Completion:
    """What the completion log says about a served completion."""

    id: str
    model: str
    deployment: str
    messages: list[dict[str, str]]
    text: str
    # How the log kept the texts: "full", "redacted", "none" or "withheld".
    texts: str


@dataclass(frozen=True)
class Submitted:
    row: dict
    created: bool
    retrain_request_id: str = ""


@dataclass(frozen=True)
class UserShare:
    user: str
    pending: int
    eligible: int

    @property
    def held_back(self) -> int:
        return self.pending - self.eligible


@dataclass(frozen=True)
class LoopView:
    deployment: str
    policy: LoopPolicy
    model_version: str
    users: list[UserShare]
    quarantined: int
    cycles: list[dict]
    up_rate: float
    window_ratings: int

    @property
    def pending(self) -> int:
        return sum(u.pending for u in self.users)

    @property
    def eligible(self) -> int:
        return sum(u.eligible for u in self.users)

    @property
    def current(self) -> dict | None:
        return next((cycle for cycle in self.cycles if not cycle["finished"]), None)


LookupCompletion = Callable[[str, str], Awaitable[Completion]]  # (tenant, completion id)
# Writes `feedback.retrain_requested` for a new cycle to the outbox, in the caller's transaction.
AnnounceRetrain = Callable[[AsyncSession, str, dict], Awaitable[None]]
# Rolls a deployment back if it still serves `version`; returns what happened, or raises.
RollBack = Callable[[str, str, str, str], Awaitable[str]]


def base_of(version: str) -> str:
    """The base model of a version: `ft:<base>:<tenant>:<suffix>:<job>`, or a base model itself."""
    return version.split(":")[1] if version.startswith("ft:") and version.count(":") >= 2 else version


def parse_policy(values: dict) -> LoopPolicy:
    """A LoopPolicy, or INVALID_ARGUMENT naming the field at fault."""
    from pydantic import ValidationError

    try:
        return LoopPolicy.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(map(str, first["loc"])) or "policy"
        raise InvalidArgument(f"policy.{field}: {first['msg']}", param=f"policy.{field}") from None


class Loop:
    def __init__(self, db: Database, lookup: LookupCompletion, announce: AnnounceRetrain, rollback: RollBack,
                 poke: Callable[[], None]):
        self._db = db
        self._lookup = lookup
        self._announce = announce
        self._rollback = rollback
        self._poke = poke  # the outbox relay: publish now rather than at its next poll

    # ---- intake -----------------------------------------------------------------------------

    async def submit(self, tenant: str, item: FeedbackIn) -> Submitted:
        if item.idempotency_key:
            async with self._db.transaction() as session:
                existing = await store.find_by_key(session, tenant, item.idempotency_key)
            if existing is not None:
                return Submitted(dict(existing), created=False)
        completion = await self._lookup(tenant, item.completion_id)
        if item.model and item.model not in (completion.model, completion.deployment):
            raise InvalidArgument(f"completion {completion.id} was answered by {completion.model}"
                                  f"{f' of deployment {completion.deployment}' if completion.deployment else ''}, "
                                  f"not {item.model}", param="model")
        if item.is_correction and (completion.texts not in ("full", "redacted") or not completion.messages):
            raise FailedPrecondition(f"the completion log kept no text of {completion.id} (its texts: "
                                     f"{completion.texts}), so a correction of it cannot become a training example",
                                     param="completion_id", code="completion_text_missing")
        deployment = completion.deployment
        async with self._db.transaction() as session:
            loop = await store.lock_loop(session, tenant, deployment, completion.model) if deployment else None
            if item.idempotency_key:  # a retry that raced the first attempt to the lock
                existing = await store.find_by_key(session, tenant, item.idempotency_key)
                if existing is not None:
                    return Submitted(dict(existing), created=False)
            policy = LoopPolicy(**store.policy_json(loop))
            key = prompt_key(completion.messages)
            feedback_id = store.new_id("fb")
            status, reason = store.RATING, ""
            if item.is_correction:
                status, reason = await self._guard(session, tenant, deployment, policy, item, completion.messages,
                                                   feedback_id)
            row = {
                "id": feedback_id, "tenant": tenant, "completion_id": completion.id, "model": completion.model,
                "deployment": deployment, "rating": item.rating, "correction": item.correction,
                "comment": item.comment, "user": item.user, "idempotency_key": item.idempotency_key or None,
                "created_at": store.now(), "status": status, "retrain_request_id": None,
                "quarantine_reason": reason, "reviewed_by": "", "prompt": json.dumps(completion.messages),
                "answer": completion.text, "prompt_key": key,
            }
            await store.add_item(session, **row)
            request_id = ""
            if loop is not None and status == store.PENDING:
                request_id = await self._trigger(session, tenant, loop, policy)
        if request_id:
            self._poke()
        return Submitted(row, created=True, retrain_request_id=request_id)

    async def _guard(self, session: AsyncSession, tenant: str, deployment: str, policy: LoopPolicy, item: FeedbackIn,
                     messages: list[dict[str, str]], feedback_id: str) -> tuple[str, str]:
        """(status, reason) of a new correction: pending, or quarantined by a guard; or refused."""
        hour_ago = store.now() - 3600
        if await store.corrections_by_user_since(session, tenant, deployment, item.user, hour_ago) \
                >= policy.user_corrections_per_hour:
            raise ResourceExhausted(f"user {item.user!r} has posted {policy.user_corrections_per_hour} corrections "
                                    "to this deployment in the last hour, the most the loop policy allows",
                                    param="user", code="rate_limit_exceeded")
        # A user correcting the same completion again replaces their earlier, unused correction.
        superseded = await store.pending_of_user_for_completion(session, tenant, item.user, item.completion_id)
        await store.set_status(session, tenant, superseded, store.REJECTED,
                               quarantine_reason=f"superseded by {feedback_id}")
        own = [p for p in await store.own_recent_corrections(session, tenant, deployment, item.user)
               if p.id not in superseded]
        repeated = near_duplicate_of(prompt_text(messages), item.correction, item.completion_id, own,
                                     policy.near_duplicate_threshold)
        if repeated is not None:
            return store.QUARANTINED, (f"near-duplicate of {repeated.id}, another correction by the same user "
                                       f"(similarity at least {policy.near_duplicate_threshold})")
        same_prompt = [p for p in await store.corrections_of_prompt(session, tenant, deployment, prompt_key(messages))
                       if p.id not in superseded]
        conflicts = contradicted_by(item.correction, item.user, same_prompt)
        if conflicts:
            ids = [p.id for p in conflicts]
            reason = f"contradicts {', '.join(ids)}: another user's correction of the same prompt"
            pending = [row["id"] for row in await store.get_items(session, tenant, ids) if row["status"] == store.PENDING]
            await store.set_status(session, tenant, pending, store.QUARANTINED,
                                   quarantine_reason=f"contradicted by {feedback_id}: another user's correction of "
                                                     "the same prompt")
            return store.QUARANTINED, reason
        return store.PENDING, ""

    # ---- triggers ---------------------------------------------------------------------------

    async def _state(self, session: AsyncSession, tenant: str, loop, policy: LoopPolicy) -> LoopState:
        return LoopState(policy=policy, pending_by_user=await store.pending_by_user(session, tenant, loop["deployment"]),
                         last_request_at=loop["last_request_at"], since=loop["created_at"], now=store.now())

    async def _trigger(self, session: AsyncSession, tenant: str, loop, policy: LoopPolicy) -> str:
        decision = threshold_decision(await self._state(session, tenant, loop, policy))
        return await self._request(session, tenant, loop, policy, decision) if decision else ""

    async def _request(self, session: AsyncSession, tenant: str, loop, policy: LoopPolicy, decision: Decision) -> str:
        """Take a batch, record the cycle and announce it; all in the caller's transaction, under the lock."""
        deployment = loop["deployment"]
        ids = select_batch(await store.pending_in_order(session, tenant, deployment), size=decision.size,
                           cap=decision.cap)
        if not ids:
            return ""
        positives = await store.unused_positives(session, tenant, deployment, policy.positives_per_batch)
        cycle_id = store.new_id("rtr")
        await store.set_status(session, tenant, ids, store.USED, retrain_request_id=cycle_id)
        await store.set_status(session, tenant, positives, store.USED, retrain_request_id=cycle_id)
        at = store.now()
        cycle = {"id": cycle_id, "tenant": tenant, "deployment": deployment, "trigger": decision.trigger,
                 "stage": "preparing", "finished": False, "created_at": at, "updated_at": at,
                 "model_version": loop["model_version"], "base_model": base_of(loop["model_version"]),
                 "corrections": len(ids), "positives": len(positives), "feedback_ids": json.dumps(ids + positives)}
        await store.add_cycle(session, **cycle)
        await store.update_loop(session, tenant, deployment, last_request_at=at)
        await self._announce(session, tenant, cycle)
        log.info("deployment %s: retrain %s requested (%s, %d corrections)", deployment, cycle_id,
                 decision.trigger, len(ids))
        return cycle_id

    async def check(self, tenant: str, deployment: str) -> str:
        """The monitor's look at one deployment: a threshold reached once a cooldown ended, the
        schedule, drift. Returns the retrain request or rollback made, if any."""
        async with self._db.transaction() as session:  # a read first: a disabled loop takes no lock
            if not LoopPolicy(**store.policy_json(await store.find_loop(session, tenant, deployment))).enabled:
                return ""
        rollback = None
        async with self._db.transaction() as session:
            loop = await store.lock_loop(session, tenant, deployment)
            policy = LoopPolicy(**store.policy_json(loop))
            if not policy.enabled:
                return ""
            state = await self._state(session, tenant, loop, policy)
            decision = threshold_decision(state)
            if decision is None and state.pending_by_user and schedule_due(state):
                decision = fair_batch_decision(state, SCHEDULE)
            made = await self._request(session, tenant, loop, policy, decision) if decision else ""
            version = loop["model_version"]
            drift = drift_of(policy, await store.recent_ratings(session, tenant, deployment, version,
                                                                policy.drift_window))
            if not made and drift is not None and loop["drift_version"] != version:
                await store.update_loop(session, tenant, deployment, drift_version=version)
                recent = loop["deployed_at"] and state.now * 1000 - loop["deployed_at"] < policy.drift_rollback_s * 1000
                if recent and loop["previous_version"]:
                    rollback = await self._drift_cycle(session, tenant, deployment, version, drift.describe(policy))
                else:
                    decision = fair_batch_decision(state, DRIFT)
                    made = await self._request(session, tenant, loop, policy, decision) if decision else ""
                    if not made:
                        log.warning("deployment %s: %s, but no fair batch of corrections to retrain on", deployment,
                                    drift.describe(policy))
        if made:
            self._poke()
        if rollback is not None:
            return await self._finish_rollback(tenant, deployment, version, rollback)
        return made

    async def _drift_cycle(self, session: AsyncSession, tenant: str, deployment: str, version: str, why: str) -> dict:
        at = store.now()
        cycle = {"id": store.new_id("rtr"), "tenant": tenant, "deployment": deployment, "trigger": DRIFT,
                 "stage": "rolling_back", "finished": False, "created_at": at, "updated_at": at,
                 "model_version": version, "base_model": base_of(version), "reason": f"{why} since {version} "
                 "was deployed"}
        await store.add_cycle(session, **cycle)
        return cycle

    async def _finish_rollback(self, tenant: str, deployment: str, version: str, cycle: dict) -> str:
        try:
            outcome = await self._rollback(tenant, deployment, version, cycle["reason"])
            stage, reason = "rolled_back", f"{cycle['reason']}; {outcome}"
        except (FailedPrecondition, NotFound) as error:
            stage, reason = "failed", f"{cycle['reason']}; could not roll back: {error.message}"
        async with self._db.transaction() as session:
            await store.update_cycle(session, cycle["id"], stage=stage, finished=True, reason=reason)
        return cycle["id"]

    async def resume_rollbacks(self) -> None:
        """Rollbacks a crash interrupted between recording and doing them."""
        async with self._db.transaction() as session:
            pending = await store.cycles_in_stage(session, "rolling_back")
        for cycle in pending:
            await self._finish_rollback(cycle["tenant"], cycle["deployment"], cycle["model_version"], dict(cycle))

    async def check_all(self) -> None:
        async with self._db.transaction() as session:
            deployments = await store.all_loops(session)
        for tenant, deployment in deployments:
            try:
                await self.check(tenant, deployment)
            except Exception:
                log.exception("deployment %s: the loop check failed", deployment)

    # ---- policy, view, review ---------------------------------------------------------------

    async def policy(self, tenant: str, deployment: str) -> tuple[LoopPolicy, bool]:
        async with self._db.transaction() as session:
            loop = await store.find_loop(session, tenant, deployment)
        values = store.policy_json(loop)
        return LoopPolicy(**values), bool(values)

    async def set_policy(self, tenant: str, deployment: str, values: dict) -> LoopPolicy:
        """Set the fields given; the others keep what was set before, or their defaults."""
        if not deployment:
            raise InvalidArgument("deployment is required", param="deployment")
        async with self._db.transaction() as session:
            loop = await store.lock_loop(session, tenant, deployment)
            merged = {**store.policy_json(loop), **values}
            policy = parse_policy(merged)
            await store.update_loop(session, tenant, deployment, policy=json.dumps(merged))
        return policy

    async def view(self, tenant: str, deployment: str, limit: int) -> LoopView:
        async with self._db.transaction() as session:
            loop = await store.find_loop(session, tenant, deployment)
            if loop is None:
                raise NotFound(f"deployment {deployment!r} has no feedback loop yet: no feedback, policy or "
                               "deployment event for it", param="deployment", code="deployment_not_found")
            policy = LoopPolicy(**store.policy_json(loop))
            pending = await store.pending_by_user(session, tenant, deployment)
            counts = await store.status_counts(session, tenant, deployment)
            cycles = [{**row, "feedback_ids": json.loads(row["feedback_ids"])}
                      for row in await store.cycles_of(session, tenant, deployment, limit)]
            ratings = await store.recent_ratings(session, tenant, deployment, loop["model_version"],
                                                 policy.drift_window)
        cap = policy.per_user_cap
        users = [UserShare(user, count, min(count, cap)) for user, count in sorted(pending.items())]
        return LoopView(deployment, policy, loop["model_version"], users, counts.get(store.QUARANTINED, 0), cycles,
                        up_rate(ratings), len(ratings))

    async def review(self, tenant: str, ids: list[str], action: str, reviewer: str) -> list[dict]:
        if action not in REVIEW_ACTIONS:
            raise InvalidArgument(f"action must be one of {', '.join(REVIEW_ACTIONS)}", param="action")
        if not ids:
            raise InvalidArgument("feedback_ids is empty", param="feedback_ids")
        async with self._db.transaction() as session:
            rows = await store.get_items(session, tenant, ids)
            found = {row["id"]: row for row in rows}
            for feedback_id in ids:
                if feedback_id not in found:
                    raise NotFound(f"no feedback {feedback_id!r}", param="feedback_ids", code="feedback_not_found")
                if found[feedback_id]["status"] != store.QUARANTINED:
                    raise FailedPrecondition(f"feedback {feedback_id} is {found[feedback_id]['status']}, not "
                                             "quarantined", param="feedback_ids", code="not_quarantined")
            status = store.PENDING if action == "release" else store.REJECTED
            await store.set_status(session, tenant, ids, status, reviewed_by=reviewer)
            rows = await store.get_items(session, tenant, ids)
        # Released corrections may complete a batch: the monitor's next look (or this one) requests it.
        if action == "release":
            for deployment in {row["deployment"] for row in rows if row["deployment"]}:
                await self.check(tenant, deployment)
        return [dict(row) for row in rows]

    async def batch(self, tenant: str, request_id: str) -> tuple[dict, list[dict]]:
        async with self._db.transaction() as session:
            cycle = await store.find_cycle(session, request_id, tenant)
            if cycle is None:
                raise NotFound(f"no retrain request {request_id!r}", param="retrain_request_id",
                               code="retrain_request_not_found")
            rows = await store.batch_of(session, tenant, request_id)
        return dict(cycle), [dict(row) for row in rows]
