"""Distillation: a teacher model answers the training prompts, then the student learns its answers.

A chat record's prompt is its messages before its last assistant turn; the teacher's answer
replaces that turn (whatever the file had there is ignored, so a placeholder will do). Answers
are cached on disk under (teacher URL, model, prompt), so a resumed or repeated job asks for
nothing twice. A few requests run at once; the SDK retries rate limits (429) and server errors
(5xx) with backoff; any other failure ends the job with the teacher's own error.

The validation split is answered too: the student's target is the teacher, so its validation
loss, and the early stopping and best-epoch choice that follow it, must measure the distance to
the teacher, not to the file's original answers.

The API key never enters the job record or the job spec: the job names a key the operator
configured (`TrainingSettings.teacher_api_keys`), and the runner hands that one key to the job
process in the `TUNELOOP_TEACHER_API_KEY` environment variable (locally from the settings, on
Kubernetes from a Secret).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.shared.errors import FailedPrecondition, InvalidArgument

TEACHER_API_KEY_ENV = "TUNELOOP_TEACHER_API_KEY"
DEFAULT_CONCURRENCY = 8
# Greedy answers: the student learns the teacher's most likely answer, and asking again gives the same.
TEMPERATURE = 0.0
# Fields of a message the chat completions API takes; ours (weights, labels) stay home.
_WIRE_FIELDS = ("role", "content", "name")

Ask = Callable[[list[dict]], str]


@dataclass(frozen=True)
class TeacherRef:
    """The teacher a distillation job names. `api_key_name` refers to a configured key, never the key."""

    base_url: str
    model: str
    api_key_name: str = ""

    @classmethod
    def from_method(cls, method: Mapping[str, Any]) -> TeacherRef:
        teacher = method.get("teacher") or {}
        return cls(base_url=teacher.get("base_url", ""), model=teacher.get("model", ""),
                   api_key_name=teacher.get("api_key_name", ""))


@dataclass(frozen=True)
class DistillReport:
    examples: int
    asked: int
    cached: int
    empty: int


def split_prompt(record: Mapping[str, Any], index: int) -> tuple[list[dict], list[dict]]:
    """The messages before the record's last assistant turn: as the record has them (to keep their
    weights), and as the wire format wants them (role, content, name)."""
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise InvalidArgument(f"example {index + 1}: distillation needs chat examples with 'messages'",
                              param="training_file")
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    kept = [dict(m) for m in messages[:last]]
    if not any(m.get("role") == "user" for m in kept):
        raise InvalidArgument(f"example {index + 1}: no user message before the answer to distil",
                              param="training_file")
    return kept, [{k: m[k] for k in _WIRE_FIELDS if k in m} for m in kept]


class AnswerCache:
    """One small file per answer, named by the digest of (teacher URL, model, prompt); written under a
    temporary name and renamed, so two jobs sharing a teacher never read half an answer."""

    def __init__(self, directory: Path, teacher: TeacherRef):
        self._directory = directory
        self._identity = [teacher.base_url.rstrip("/"), teacher.model]

    def _path(self, prompt: list[dict]) -> Path:
        digest = hashlib.sha256(json.dumps([*self._identity, prompt], sort_keys=True, ensure_ascii=False)
                                .encode()).hexdigest()
        return self._directory / digest[:2] / f"{digest[2:]}.json"

    def get(self, prompt: list[dict]) -> str | None:
        try:
            return json.loads(self._path(prompt).read_text(encoding="utf-8"))["answer"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None

    def put(self, prompt: list[dict], answer: str) -> None:
        path = self._path(prompt)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".part")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"answer": answer}, handle, ensure_ascii=False)
        os.replace(temporary, path)


def distil(records: list[dict], ask: Ask, cache: AnswerCache, *, concurrency: int = DEFAULT_CONCURRENCY,
           ) -> tuple[list[dict], DistillReport]:
    """The records with their last assistant turn written by the teacher.

    Each distinct prompt is asked once, `concurrency` at a time, and cached as soon as it is
    answered, so a failure part-way keeps what was already paid for. The first failure stops the
    rest and is raised. Records whose answer comes back empty are left out (and counted)."""
    split = [split_prompt(record, index) for index, record in enumerate(records)]
    prompts = [wire for _kept, wire in split]
    keys = [json.dumps(p, sort_keys=True, ensure_ascii=False) for p in prompts]
    answers: dict[str, str] = {}
    missing: dict[str, list[dict]] = {}
    for key, prompt in zip(keys, prompts, strict=True):
        if key in answers or key in missing:
            continue
        cached = cache.get(prompt)
        if cached is None:
            missing[key] = prompt
        else:
            answers[key] = cached

    # Set by the first failure, before its future completes: a worker that already took the next
    # prompt off the queue must not send it (cancelling the queued futures comes too late for that).
    stopped = threading.Event()

    def answer(key: str) -> None:
        if stopped.is_set():
            return
        try:
            text = ask(missing[key]).strip()
        except BaseException:
            stopped.set()
            raise
        if text:
            cache.put(missing[key], text)
        answers[key] = text

    if missing:
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="teacher") as pool:
            futures = [pool.submit(answer, key) for key in missing]
            done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                raise failed.exception()
    distilled = []
    for record, (kept, _wire), key in zip(records, split, keys, strict=True):
        if answers[key]:
            distilled.append({**record, "messages": [*kept, {"role": "assistant", "content": answers[key]}]})
    empty = len(records) - len(distilled)
    if records and not distilled:
        raise FailedPrecondition("the teacher gave an empty answer to every prompt", param="method.teacher.model",
                                 code="teacher_error")
    return distilled, DistillReport(examples=len(distilled), asked=len(missing),
                                    cached=len(answers) - len(missing), empty=empty)
