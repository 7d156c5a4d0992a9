"""When a deployment retrains: enough corrections (after the per-user cap), a falling thumbs-up rate,
or the calendar; never inside the cooldown after the previous request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.feedback.guards import eligible_count, largest_fair_cap
from services.feedback.policy import LoopPolicy

CORRECTIONS, DRIFT, SCHEDULE = "corrections", "drift", "schedule"


@dataclass(frozen=True)
class LoopState:
    """What the triggers look at, read under the deployment's lock."""

    policy: LoopPolicy
    pending_by_user: Mapping[str, int]
    # When the last retrain was requested; None: never.
    last_request_at: int | None
    # When the feedback service first saw the deployment (the schedule's start when it never retrained).
    since: int
    now: int

    @property
    def cooldown_over(self) -> bool:
        return self.last_request_at is None or self.now - self.last_request_at >= self.policy.cooldown_s

    @property
    def eligible(self) -> int:
        return eligible_count(self.pending_by_user, self.policy.per_user_cap)


@dataclass(frozen=True)
class Decision:
    trigger: str
    # Batch size and per-user cap to select with.
    size: int
    cap: int


def threshold_decision(state: LoopState) -> Decision | None:
    """A retrain of exactly `threshold` corrections, once enough are eligible."""
    policy = state.policy
    if policy.enabled and state.cooldown_over and state.eligible >= policy.threshold:
        return Decision(CORRECTIONS, policy.threshold, policy.per_user_cap)
    return None


def fair_batch_decision(state: LoopState, trigger: str) -> Decision | None:
    """A smaller batch (drift, schedule): what is pending, as long as no user dominates it."""
    policy = state.policy
    if not (policy.enabled and state.cooldown_over):
        return None
    cap = largest_fair_cap(state.pending_by_user, policy.max_user_share, policy.per_user_cap)
    return Decision(trigger, policy.threshold, cap) if cap else None


def schedule_due(state: LoopState) -> bool:
    days = state.policy.retrain_every_days
    start = state.last_request_at if state.last_request_at is not None else state.since
    return days > 0 and state.now - start >= days * 86_400


@dataclass(frozen=True)
class Drift:
    up_rate: float
    ratings: int

    def describe(self, policy: LoopPolicy) -> str:
        return (f"thumbs-up rate {self.up_rate:.0%} over the last {self.ratings} ratings is below "
                f"{policy.drift_min_up_rate:.0%}")


def drift_of(policy: LoopPolicy, ratings: Sequence[str]) -> Drift | None:
    """The drift, when the last `drift_window` ratings (newest first) fall below the policy's rate."""
    if policy.drift_min_up_rate <= 0 or len(ratings) < policy.drift_window:
        return None
    window = ratings[:policy.drift_window]
    rate = sum(1 for rating in window if rating == "up") / len(window)
    return Drift(rate, len(window)) if rate < policy.drift_min_up_rate else None


def up_rate(ratings: Sequence[str]) -> float:
    return sum(1 for rating in ratings if rating == "up") / len(ratings) if ratings else 0.0
