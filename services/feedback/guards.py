"""Poisoning guards (OWASP LLM04): who may contribute how much of a retrain batch, and which
corrections wait for a person.

- A user may post at most `user_corrections_per_hour` corrections to a deployment.
- No user supplies more than `max_user_share` of a batch: their corrections past it are held back
  for a later batch, never dropped.
- A correction that is a near-duplicate of another correction by the same user, or that contradicts
  another user's correction of the same prompt, is quarantined until someone releases or rejects it.
  A long answer is compared on its own (the same text pushed at many prompts); a short one (a label,
  at most LABEL_WORDS words, which many prompts legitimately share) is compared together with its
  prompt (the same example posted again and again with small changes).

Similarity is the exact Jaccard index of word 3-shingles. datasketch's MinHash estimates the same
index for large collections (data-prep uses it over whole datasets); here one user's recent
corrections are compared directly, a few hundred short texts, where the exact value is cheap and
an estimate would only add false positives and negatives.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"\w+", re.UNICODE)
LABEL_WORDS = 4


def normalise(text: str) -> str:
    """Case, Unicode form and spacing do not make two texts different."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def prompt_key(messages: Sequence[Mapping[str, str]]) -> str:
    """The same question, asked in the same words, has the same key."""
    canonical = json.dumps([[m.get("role", ""), normalise(m.get("content", ""))] for m in messages])
    return hashlib.sha256(canonical.encode()).hexdigest()


def shingles(text: str, size: int = 3) -> frozenset[str]:
    words = normalise(text).split()
    if len(words) <= size:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i:i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class PriorCorrection:
    """An earlier correction the guards compare a new one with."""

    id: str
    user: str
    completion_id: str
    prompt_key: str
    correction: str
    # The prompt's text (its messages' contents, joined).
    prompt: str = ""


def _compared_text(prompt: str, correction: str) -> str:
    return correction if len(normalise(correction).split()) > LABEL_WORDS else f"{prompt}\n{correction}"


def near_duplicate_of(prompt: str, correction: str, completion_id: str, own: Iterable[PriorCorrection],
                      threshold: float) -> PriorCorrection | None:
    """The user's earlier correction (of another completion) this one nearly repeats, if any."""
    mine = shingles(_compared_text(prompt, correction))
    for prior in own:
        if prior.completion_id == completion_id:
            continue
        if jaccard(mine, shingles(_compared_text(prior.prompt, prior.correction))) >= threshold:
            return prior
    return None


def prompt_text(messages: Sequence[Mapping[str, str]]) -> str:
    return "\n".join(m.get("content", "") for m in messages)


def contradicted_by(correction: str, user: str, same_prompt: Iterable[PriorCorrection]) -> list[PriorCorrection]:
    """Other users' corrections of the same prompt that give a different answer."""
    mine = normalise(correction)
    return [prior for prior in same_prompt if prior.user != user and normalise(prior.correction) != mine]


def eligible_count(pending_by_user: Mapping[str, int], cap: int) -> int:
    """How many pending corrections a batch could take with at most `cap` per user."""
    return sum(min(count, cap) for count in pending_by_user.values())


def select_batch(pending: Sequence[tuple[str, str]], *, size: int, cap: int) -> list[str]:
    """The ids of a batch: the oldest pending corrections (`pending` is (id, user), oldest first),
    at most `cap` per user, at most `size` in all."""
    taken: dict[str, int] = {}
    batch: list[str] = []
    for feedback_id, user in pending:
        if len(batch) == size:
            break
        if taken.get(user, 0) < cap:
            taken[user] = taken.get(user, 0) + 1
            batch.append(feedback_id)
    return batch


def largest_fair_cap(pending_by_user: Mapping[str, int], share: float, ceiling: int) -> int:
    """The largest per-user cap (at most `ceiling`) under which no user supplies more than `share`
    of the batch it gives; 0 when no batch is fair (one user alone, say)."""
    for cap in range(ceiling, 0, -1):
        if cap <= share * eligible_count(pending_by_user, cap) + 1e-9:
            return cap
    return 0
