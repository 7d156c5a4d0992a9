"""An optional judge model behind any OpenAI-compatible endpoint, asking the seed's human-evaluation
questions of every answer: is it correct, how helpful (1-5), would you trust it.

The judge sees the question, the reference answer and the model's answer (never which model wrote
it) and must reply with one JSON object. A reply that is not one is counted as unparsed rather than
guessed at. When experts' ratings are imported for the same evaluation, the judge's agreement with
them is reported beside (human.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

from services.shared.teacher import TeacherClient, TeacherEndpoint, TeacherParams

RUBRIC = """You grade one answer of an assistant against a reference answer written by a domain expert.
Question:
{question}

Reference answer:
{reference}

Answer to grade:
{answer}

Reply with one JSON object and nothing else:
{{"correct": true or false (does the answer say what the reference says?), "helpful": an integer from 1 (useless) to 5 (fully answers the question), "would_trust": true or false (would you act on this answer?)}}"""

PARAMS = TeacherParams(base_url="judge_base_url", model="judge_model", api_key="judge_api_key")
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class Judge:
    def __init__(self, base_url: str, model: str, api_key: str):
        self._client = TeacherClient(TeacherEndpoint(base_url, model, api_key, params=PARAMS))

    def grade(self, question: str, reference: str, answer: str) -> dict[str, Any] | None:
        """{"correct": bool, "helpful": 1-5, "would_trust": bool}, or None when the reply is not that."""
        reply = self._client.chat([{"role": "user", "content": RUBRIC.format(question=question, reference=reference,
                                                                              answer=answer)}], temperature=0)
        return parse_grade(reply)


def parse_grade(reply: str) -> dict[str, Any] | None:
    found = _OBJECT.search(reply)
    if found is None:
        return None
    try:
        grade = json.loads(found.group(0))
    except ValueError:
        return None
    if not isinstance(grade, dict):
        return None
    correct, helpful, trust = grade.get("correct"), grade.get("helpful"), grade.get("would_trust")
    if not isinstance(correct, bool) or not isinstance(trust, bool):
        return None
    if isinstance(helpful, bool) or not isinstance(helpful, int | float) or not 1 <= helpful <= 5:
        return None
    return {"correct": correct, "helpful": float(helpful), "would_trust": trust}


def summarise_grades(grades: list[dict[str, Any] | None]) -> dict[str, Any]:
    parsed = [grade for grade in grades if grade is not None]

    def mean(key: str) -> float | None:
        return sum(float(grade[key]) for grade in parsed) / len(parsed) if parsed else None

    return {"graded": len(parsed), "unparsed": len(grades) - len(parsed), "correct": mean("correct"),
            "helpful": mean("helpful"), "would_trust": mean("would_trust")}
