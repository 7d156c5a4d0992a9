"""`method.type: "distillation"` through /v1/fine_tuning/jobs with the official SDK, against the whole stack.

The teacher is a FAKE OpenAI-compatible server (real HTTP and wire format, canned answers). The
stack has no teacher keys configured, so a job may only name a teacher that needs no key.
"""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.fixtures.fake_openai import fake_openai_server
from tests.fixtures.stack import API_KEY
from tests.fixtures.tiny_model import TINY_MODEL_ID


@pytest.fixture(scope="module")
def client(stack):
    return OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def training_file(client):
    content = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    return client.files.create(file=("prompts.jsonl", content), purpose="fine-tune").id


@pytest.mark.parametrize(
    ("method", "param"),
    [
        ({"type": "distillation"}, "method.teacher"),
        ({"type": "distillation", "teacher": {"base_url": "http://t.example/v1", "model": "m", "api_key_name": "prod"}},
         "method.teacher.api_key_name"),
        ({"type": "distillation", "teacher": {"base_url": "file:///etc/passwd", "model": "m"}}, "method.teacher.base_url"),
        ({"type": "supervised", "teacher": {"base_url": "http://t.example/v1", "model": "m"}}, "method.teacher"),
    ],
)
def test_distillation_without_a_usable_teacher_is_a_400_naming_the_field(client, training_file, method, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=training_file, method=method)
    assert raised.value.body["param"] == param


def test_a_raw_api_key_in_the_request_is_refused(client, training_file):
    method = {"type": "distillation", "teacher": {"base_url": "http://t.example/v1", "model": "m", "api_key": "sk-x"}}
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=training_file, method=method)
    assert raised.value.body["param"] == "method.teacher.api_key"


def test_a_distillation_job_shows_its_teacher_and_no_key(client, training_file):
    with fake_openai_server(lambda messages, model: "a", api_key="none") as base_url:
        teacher = {"base_url": base_url, "model": "teacher-1"}
        job = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=training_file,
                                             method={"type": "distillation", "teacher": teacher})
        client.fine_tuning.jobs.cancel(job.id)
    assert job.method.type == "distillation"
    assert job.method.model_extra["teacher"] == {**teacher, "api_key_name": ""}
    assert client.fine_tuning.jobs.retrieve(job.id).method.model_extra["teacher"]["model"] == "teacher-1"
