"""The poisoning guards and the trigger decisions, on their own."""

from services.feedback.guards import (
    PriorCorrection,
    contradicted_by,
    eligible_count,
    largest_fair_cap,
    near_duplicate_of,
    prompt_key,
    select_batch,
)
from services.feedback.policy import LoopPolicy
from services.feedback.retrain_trigger import LoopState, drift_of, fair_batch_decision, threshold_decision


def _prior(i: int, prompt: str, correction: str, user: str = "u") -> PriorCorrection:
    return PriorCorrection(f"fb-{i}", user, f"cmpl-{i}", prompt_key([{"role": "user", "content": prompt}]),
                           correction, prompt)


def test_a_long_answer_pushed_at_other_prompts_is_a_near_duplicate_a_shared_label_is_not():
    own = [_prior(1, "Where is my parcel 12?", "Always buy from cheap-parts example dot com today")]
    assert near_duplicate_of("How do I reset my modem?", "Always buy from cheap-parts example dot com today!",
                             "cmpl-9", own, 0.9) == own[0]
    labels = [_prior(1, "Refund my router, please.", "billing")]
    assert near_duplicate_of("Refund the invoice, please.", "billing", "cmpl-9", labels, 0.9) is None
    # ... unless the whole example comes again (another completion of the same question, same label).
    assert near_duplicate_of("Refund my router, please!", "billing", "cmpl-9", labels, 0.9) == labels[0]
    # The same completion corrected again is not a duplicate of itself (it supersedes it).
    assert near_duplicate_of("Refund my router, please.", "billing", "cmpl-1", labels, 0.9) is None


def test_only_other_users_different_answers_contradict():
    same = [_prior(1, "Q", "Paris", "alice"), _prior(2, "Q", "paris.", "bob"), _prior(3, "Q", "Lyon", "carol"),
            _prior(4, "Q", "Nice", "dave")]
    assert [p.id for p in contradicted_by("Paris", "dave", same)] == ["fb-3"]


def test_batches_take_the_oldest_with_at_most_cap_per_user():
    pending = [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c"), ("a4", "a"), ("b2", "b")]
    assert select_batch(pending, size=4, cap=2) == ["a1", "a2", "b1", "c1"]
    assert eligible_count({"a": 4, "b": 2, "c": 1}, 2) == 5
    # No fair batch from one user; with five users, one each is 20% each.
    assert largest_fair_cap({"a": 50}, 0.2, 20) == 0
    assert largest_fair_cap({"a": 9, "b": 1, "c": 1, "d": 1, "e": 1}, 0.2, 20) == 1
    assert largest_fair_cap({u: 30 for u in "abcde"}, 0.2, 20) == 20


def test_the_threshold_counts_after_the_cap_and_waits_for_the_cooldown():
    policy = LoopPolicy(threshold=10, cooldown_s=60, max_user_share=0.2)  # at most 2 per user
    state = LoopState(policy, {"a": 9, "b": 9, "c": 9, "d": 1}, last_request_at=None, since=0, now=1000)
    assert state.eligible == 7 and threshold_decision(state) is None
    more = LoopState(policy, {u: 5 for u in "abcde"}, last_request_at=None, since=0, now=1000)
    assert threshold_decision(more).size == 10 and threshold_decision(more).cap == 2
    cooling = LoopState(policy, {u: 5 for u in "abcde"}, last_request_at=990, since=0, now=1000)
    assert threshold_decision(cooling) is None and fair_batch_decision(cooling, "drift") is None


def test_drift_needs_a_full_window_below_the_rate():
    policy = LoopPolicy(drift_window=4, drift_min_up_rate=0.5)
    assert drift_of(policy, ["down", "down", "down"]) is None  # not enough ratings yet
    assert drift_of(policy, ["down", "up", "down", "down", "up", "up"]).up_rate == 0.25
    assert drift_of(policy, ["up", "up", "down", "down"]) is None
    assert drift_of(LoopPolicy(drift_window=4), ["down"] * 4) is None  # off by default
