"""A side-by-side run: the base model, production and the candidate answer the same held-out
examples and the same general prompts; every answer is scored, and the gate gives its verdict.

Models answer through `answer(model, messages)` (the inference service, in the service), greedy,
a few requests at a time so the inference engine batches them. A model that plays two roles (the
base model in production) answers once.

Forgetting is measured as agreement with the base model's own answers to general prompts that
ship with the project (services/evaluation/data/general_probe.jsonl, none of them in the training
service's replay set, so a candidate trained with replay cannot pass by having memorised them):
token F1 between a model's answer and the base model's, averaged. The base model agrees with
itself fully, so a drop is what fine-tuning changed in general behaviour.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.evaluation.gate import GatePolicy, Measured, Verdict, decide
from services.evaluation.judge import summarise_grades
from services.evaluation.metrics import (
    Scored,
    check_metric_names,
    exact_match,
    paired_difference,
    score,
    score_pairs,
    token_f1,
)

GENERAL_PROBE = Path(__file__).parent / "data" / "general_probe.jsonl"
ROLES = ("base", "production", "candidate")

Answer = Callable[[str, list[dict[str, str]]], Awaitable[str]]
# (question, reference, answer) -> {"correct", "helpful", "would_trust"}, or None if the judge's reply was unusable.
Grade = Callable[[str, str, str], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True)
class Example:
    messages: tuple[tuple[str, str], ...]  # (role, content): the conversation up to the answer
    reference: str
    slice: str = ""
    # A prompt a user corrected (the feedback loop marks them): the fix rate counts these.
    corrected: bool = False

    @classmethod
    def from_chat(cls, record: dict[str, Any]) -> Example:
        """A held-out chat example: its last assistant message is the reference."""
        messages = record["messages"]
        return cls(tuple((m["role"], m["content"]) for m in messages[:-1]), messages[-1]["content"],
                   str(record.get("slice") or ""), record.get("corrected") is True)

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass
class SideBySide:
    models: dict[str, str]  # role -> model id
    examples: list[Example]
    answers: dict[str, list[str]]  # model id -> one answer per example
    scores: dict[str, dict[str, Scored]]  # model id -> metric -> score
    general_prompts: list[str]
    general_answers: dict[str, list[str]]  # model id -> one answer per general prompt
    general: dict[str, float]  # model id -> agreement with the base model's general answers
    slices: dict[str, dict[str, float]]  # slice -> model id -> primary metric
    verdict: Verdict
    policy: GatePolicy
    gain: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))  # primary: candidate - production, interval
    # The judge's grade of each answer of production and the candidate (None: not asked, or unusable).
    grades: dict[str, list[dict[str, Any] | None]] = field(default_factory=dict)

    def fix_rate(self) -> dict[str, Any] | None:
        """Per model, the share of corrected prompts it answers right (exact match with the correction)."""
        corrected = [i for i, example in enumerate(self.examples) if example.corrected]
        if not corrected:
            return None
        return {"corrected": len(corrected),
                **{model: sum(exact_match(answers[i], self.examples[i].reference) for i in corrected) / len(corrected)
                   for model, answers in self.answers.items()}}

    def to_dict(self) -> dict[str, Any]:
        """Everything, as JSON: per model its metrics with intervals, per example every answer and score."""
        return {
            "models": self.models,
            "policy": self.policy.model_dump(),
            "metrics": {model: {name: {"value": s.value, "low": s.low, "high": s.high} for name, s in scored.items()}
                        for model, scored in self.scores.items()},
            "primary_gain": dict(zip(("value", "low", "high"), self.gain, strict=True)),
            "general": self.general,
            "slices": self.slices,
            "fix_rate": self.fix_rate(),
            "verdict": self.verdict.to_dict(),
            "judge": {model: summarise_grades(grades) for model, grades in self.grades.items()} or None,
            "examples": [
                {"messages": example.chat(), "reference": example.reference, "slice": example.slice,
                 "corrected": example.corrected,
                 "answers": {model: answers[index] for model, answers in self.answers.items()},
                 "scores": {model: {name: s.per_example[index] for name, s in scored.items()}
                            for model, scored in self.scores.items()},
                 **({"judge": {model: grades[index] for model, grades in self.grades.items()}} if self.grades else {})}
                for index, example in enumerate(self.examples)
            ],
            "general_answers": [
                {"prompt": prompt, "answers": {model: answers[index] for model, answers in self.general_answers.items()}}
                for index, prompt in enumerate(self.general_prompts)
            ],
        }


def general_probe(path: Path = GENERAL_PROBE) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["prompt"] for line in handle if line.strip()]


async def run_side_by_side(
    examples: Sequence[Example],
    *,
    base: str,
    production: str,
    candidate: str,
    answer: Answer,
    metrics: Sequence[str],
    policy: GatePolicy,
    general_prompts: Sequence[str] | None = None,
    concurrency: int = 8,
    progress: Callable[[int, int], None] | None = None,
    seed: int = 0,
    grade: Grade | None = None,
) -> SideBySide:
    """Ask every model every example and general prompt, score, and decide."""
    names = check_metric_names(metrics)
    if policy.primary_metric not in names:
        names.append(policy.primary_metric)
    models = {"base": base, "production": production, "candidate": candidate}
    distinct = list(dict.fromkeys(models.values()))
    prompts = list(general_probe() if general_prompts is None else general_prompts)
    chats = [example.chat() for example in examples]
    general_chats = [[{"role": "user", "content": prompt}] for prompt in prompts]
    total = len(distinct) * (len(chats) + len(general_chats))
    done = 0
    limit = asyncio.Semaphore(concurrency)

    async def ask(model: str, chat: list[dict[str, str]]) -> str:
        nonlocal done
        async with limit:
            text = await answer(model, chat)
        done += 1
        if progress is not None:
            progress(done, total)
        return text

    async def all_answers(model: str, conversations: list[list[dict[str, str]]]) -> list[str]:
        return list(await asyncio.gather(*(ask(model, chat) for chat in conversations)))

    answers = dict(zip(distinct, await asyncio.gather(*(all_answers(m, chats) for m in distinct)), strict=True))
    general_answers = dict(zip(distinct, await asyncio.gather(*(all_answers(m, general_chats) for m in distinct)),
                               strict=True))
    references = [example.reference for example in examples]
    scores = {model: {name: score(name, answers[model], references, seed=seed) for name in names}
              for model in distinct}
    general = {model: (sum(token_f1(mine, theirs) for mine, theirs in
                           zip(general_answers[model], general_answers[base], strict=True)) / len(prompts)
                       if prompts else 1.0)
               for model in distinct}
    primary = policy.primary_metric
    slices: dict[str, dict[str, float]] = {}
    slice_rows = []
    for name in sorted({example.slice for example in examples if example.slice}):
        picked = [i for i, example in enumerate(examples) if example.slice == name]
        slices[name] = {model: score_pairs([(answers[model][i], references[i]) for i in picked], [primary])[primary]
                        for model in distinct}
        slice_rows.append((name, len(picked), slices[name][production], slices[name][candidate]))
    gain = paired_difference(primary, answers[production], answers[candidate], references, seed=seed)
    measured = Measured(
        examples=len(examples), baseline=scores[production][primary].value, candidate=scores[candidate][primary].value,
        gain_low=gain[1], gain_high=gain[2],
        baseline_general=general[production] if prompts else None,
        candidate_general=general[candidate] if prompts else None,
        slices=tuple(slice_rows),
    )
    grades: dict[str, list[dict[str, Any] | None]] = {}
    if grade is not None:
        judged = list(dict.fromkeys([production, candidate]))

        async def graded(model: str, index: int) -> dict[str, Any] | None:
            async with limit:
                return await grade(chats[index][-1]["content"], references[index], answers[model][index])

        for model in judged:
            grades[model] = list(await asyncio.gather(*(graded(model, i) for i in range(len(examples)))))
    return SideBySide(models=models, examples=list(examples), answers=answers, scores=scores, grades=grades,
                      general_prompts=prompts, general_answers=general_answers, general=general, slices=slices,
                      verdict=decide(policy, measured), policy=policy, gain=gain)
