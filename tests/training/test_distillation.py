"""Distillation's data step on its own: prompts, the answer cache, bounded concurrency, failures."""

from __future__ import annotations

import threading
import time

import pytest

from services.shared.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.training.distillation import AnswerCache, TeacherRef, distil, split_prompt
from services.training.jobs import JobSpec, validate_job

TEACHER = TeacherRef(base_url="http://teacher.example/v1", model="teacher-1", api_key_name="main")


def _record(question: str, answer: str = "placeholder", **extra) -> dict:
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}], **extra}


def test_the_prompt_is_everything_before_the_last_answer_and_keeps_its_weights():
    record = {"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "weight": 0},
        {"role": "user", "content": "and?"}, {"role": "assistant", "content": "old answer"}]}
    kept, wire = split_prompt(record, 0)
    assert kept == record["messages"][:3]
    assert wire == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "and?"}]
    assert split_prompt({"messages": [{"role": "user", "content": "no answer yet"}]}, 0)[1] == [
        {"role": "user", "content": "no answer yet"}]
    with pytest.raises(InvalidArgument, match="example 4"):
        split_prompt({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}, 3)


def test_answers_replace_the_last_turn_each_prompt_is_asked_once_and_a_rerun_asks_nothing(tmp_path):
    asked = []

    def ask(prompt):
        asked.append(prompt[-1]["content"])
        return f"teacher says: {prompt[-1]['content'].upper()}"

    records = [_record("alpha", slice="a"), _record("beta"), _record("alpha", "another placeholder")]
    cache = AnswerCache(tmp_path, TEACHER)
    distilled, report = distil(records, ask, cache, concurrency=2)
    assert sorted(asked) == ["alpha", "beta"]
    assert [r["messages"][-1] for r in distilled] == [
        {"role": "assistant", "content": "teacher says: ALPHA"}, {"role": "assistant", "content": "teacher says: BETA"},
        {"role": "assistant", "content": "teacher says: ALPHA"}]
    assert distilled[0]["slice"] == "a" and distilled[0]["messages"][:2] == records[0]["messages"][:2]
    assert (report.asked, report.cached, report.examples) == (2, 0, 3)

    again, report = distil(records, ask, AnswerCache(tmp_path, TEACHER))
    assert again == distilled and len(asked) == 2 and (report.asked, report.cached) == (0, 2)
    # another model (or endpoint) is another cache entry
    other = AnswerCache(tmp_path, TeacherRef(base_url=TEACHER.base_url, model="teacher-2"))
    distil(records[:1], ask, other)
    assert len(asked) == 3


def test_no_more_requests_than_the_concurrency_are_in_flight(tmp_path):
    lock, in_flight, peak = threading.Lock(), [0], [0]

    def ask(prompt):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.02)
        with lock:
            in_flight[0] -= 1
        return "ok"

    distil([_record(f"q{i}") for i in range(24)], ask, AnswerCache(tmp_path, TEACHER), concurrency=3)
    assert peak[0] == 3


def test_a_teacher_failure_stops_the_rest_and_what_was_answered_stays_cached(tmp_path):
    first = []

    def ask(prompt):
        first.append(prompt[-1]["content"])
        if prompt[-1]["content"] == "q5":
            raise Unavailable("the teacher at http://teacher.example/v1 answered HTTP 500: boom")
        return "fine"

    records = [_record(f"q{i}") for i in range(12)]
    with pytest.raises(Unavailable, match="HTTP 500"):
        distil(records, ask, AnswerCache(tmp_path, TEACHER), concurrency=1)
    assert "q11" not in first  # queued requests were dropped, not sent
    answered = []
    distil(records, lambda p: answered.append(p[-1]["content"]) or "fine", AnswerCache(tmp_path, TEACHER),
           concurrency=1)
    assert "q5" in answered and not {f"q{i}" for i in range(5)} & set(answered)


def test_empty_answers_are_left_out_and_all_empty_fails(tmp_path):
    distilled, report = distil([_record("a"), _record("b")], lambda p: "" if p[-1]["content"] == "a" else "B",
                               AnswerCache(tmp_path, TEACHER))
    assert [r["messages"][-1]["content"] for r in distilled] == ["B"] and report.empty == 1
    with pytest.raises(FailedPrecondition, match="empty answer"):
        distil([_record("c")], lambda p: "  ", AnswerCache(tmp_path, TEACHER))


@pytest.mark.parametrize(
    ("teacher", "keys", "param"),
    [
        (None, {}, "method.teacher"),
        (TeacherRef(base_url="ftp://teacher", model="m"), {}, "method.teacher.base_url"),
        (TeacherRef(base_url="http://teacher/v1", model=""), {}, "method.teacher.model"),
        (TeacherRef(base_url="http://teacher/v1", model="m", api_key_name="nope"), {"main": "http://teacher/v1"},
         "method.teacher.api_key_name"),
        (TeacherRef(base_url="http://teacher/v1", model="m", api_key_name="bad name"), {}, "method.teacher.api_key_name"),
        # a configured key only goes to the endpoint it was issued for
        (TeacherRef(base_url="http://attacker.example/v1", model="m", api_key_name="main"), {"main": "http://teacher/v1"},
         "method.teacher.base_url"),
    ],
)
def test_distillation_jobs_without_a_usable_teacher_are_refused_naming_the_field(teacher, keys, param):
    spec = JobSpec(model="tiny", training_file="file-1", method="distillation", teacher=teacher)
    with pytest.raises(InvalidArgument) as error:
        validate_job(spec, known_models=["tiny"], cuda_available=False, teacher_keys=keys)
    assert error.value.param == param


def test_a_teacher_is_only_for_distillation_and_a_good_one_passes():
    teacher = TeacherRef(base_url="http://teacher/v1/", model="m", api_key_name="main")
    with pytest.raises(InvalidArgument) as error:
        validate_job(JobSpec(model="tiny", training_file="f", teacher=teacher), known_models=["tiny"],
                     cuda_available=False)
    assert error.value.param == "method.teacher"
    spec = JobSpec(model="tiny", training_file="f", method="distillation", teacher=teacher)
    validate_job(spec, known_models=["tiny"], cuda_available=False, teacher_keys={"main": "http://teacher/v1"})
    assert spec.method_dict()["teacher"] == {"base_url": "http://teacher/v1/", "model": "m", "api_key_name": "main"}
