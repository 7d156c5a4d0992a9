"""/v1/fine_tuning/jobs through the official openai SDK against the whole stack."""

from __future__ import annotations

import json
import time

import openai
import pytest
from openai import OpenAI

from tests.fixtures.stack import API_KEY
from tests.fixtures.tiny_model import TINY_MODEL_ID


@pytest.fixture(scope="module")
def client(stack):
    return OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)


def _wait(client, job_id: str, statuses=("succeeded", "failed", "cancelled"), timeout=180.0):
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        try:
            job = client.fine_tuning.jobs.retrieve(job_id)
        except openai.InternalServerError as error:  # a service restarting: 503, as a client would see it
            assert error.status_code == 503 and "127.0.0.1" not in error.message
            time.sleep(0.3)
            continue
        if job.status in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status if job else 'unreachable'}")


def test_a_malformed_training_file_fails_the_job_at_validation_naming_the_line(client):
    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})
             for i in range(20)]
    lines[6] = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "wizard", "content": "a"}]})
    file = client.files.create(file=("bad.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=file.id, suffix="bad")
    assert job.status == "validating_files" and job.object == "fine_tuning.job"
    job = _wait(client, job.id)
    assert job.status == "failed"
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 7" in job.error.message and "messages[1].role" in job.error.message
    messages = [event.message for event in client.fine_tuning.jobs.list_events(job.id)]
    assert any("failed" in message for message in messages)


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "gpt-9"}, openai.NotFoundError, "model"),
        ({"method": {"type": "qlora"}}, openai.ConflictError, "method.type"),
        ({"suffix": "Not Valid!"}, openai.BadRequestError, "suffix"),
        ({"hyperparameters": {"n_epochs": 0}}, openai.BadRequestError, "hyperparameters.n_epochs"),
    ],
)
def test_requests_that_cannot_run_are_refused_before_anything_is_stored(client, kwargs, error, param):
    file = client.files.create(file=("ok.jsonl", b'{"messages": [{"role": "user", "content": "q"}, '
                                                b'{"role": "assistant", "content": "a"}]}\n'), purpose="fine-tune")
    before = len(client.fine_tuning.jobs.list(limit=100).data)
    with pytest.raises(error) as raised:
        client.fine_tuning.jobs.create(**{"model": TINY_MODEL_ID, "training_file": file.id, **kwargs})
    assert raised.value.body["param"] == param
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before


def test_qlora_on_a_cpu_says_it_needs_a_gpu(client):
    file = client.files.create(file=("ok.jsonl", b'{"messages": [{"role": "user", "content": "q"}, '
                                                b'{"role": "assistant", "content": "a"}]}\n'), purpose="fine-tune")
    with pytest.raises(openai.ConflictError) as raised:
        client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=file.id, method={"type": "qlora"})
    assert raised.value.body["code"] == "gpu_required" and "CUDA GPU" in raised.value.body["message"]


def test_unknown_jobs_are_404(client):
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.cancel("ftjob-nope")


def _task_file(client, n=24):
    """A narrow generated task the tiny model can learn: answer the colour of a numbered item."""
    colours = ["red", "blue", "green"]
    lines = [json.dumps({"messages": [{"role": "user", "content": f"What colour is item {i}?"},
                                      {"role": "assistant", "content": colours[i % 3]}]}) for i in range(n)]
    return client.files.create(file=("task.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")


def test_the_sdk_runs_a_job_to_success_with_events_checkpoints_and_a_model(client, stack, tiny_model_dir):
    file = _task_file(client)
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=file.id, suffix="colours", seed=3,
                                         hyperparameters={"n_epochs": 2, "batch_size": 4,
                                                          "learning_rate_multiplier": 10})
    job = _wait(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{TINY_MODEL_ID}:default:colours:{job.id}"
    assert job.trained_tokens > 0 and job.hyperparameters.n_epochs == 2
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    losses = [e.data["train_loss"] for e in reversed(events) if e.type == "metrics" and e.data and "train_loss" in e.data]
    assert len(losses) >= 4 and losses[-1] < losses[0]
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == sorted((c.step_number for c in checkpoints), reverse=True)
    assert len(checkpoints) == 2 and {"train_loss", "valid_loss"} <= set(checkpoints[0].metrics.model_dump(exclude_none=True))
    assert job.fine_tuned_model in [m.id for m in client.models.list()]

    # until serving lands, the adapter loads with peft and generates
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = stack.data_dir / "models" / "adapters" / job.id
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What colour is item 4?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]

    assert client.models.delete(job.fine_tuned_model).deleted
    assert job.fine_tuned_model not in [m.id for m in client.models.list()]


def test_cancel_stops_the_job(client):
    file = _task_file(client, n=60)
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=file.id,
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})
    _wait(client, job.id, statuses=("running",))
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    time.sleep(1)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # idempotent


def test_a_killed_training_service_resumes_the_job_from_its_last_checkpoint(client, stack):
    import signal

    file = _task_file(client, n=90)
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=file.id,
                                         hyperparameters={"n_epochs": 4, "batch_size": 2})
    deadline = time.monotonic() + 120
    while not list(client.fine_tuning.jobs.checkpoints.list(job.id)):
        assert time.monotonic() < deadline, "no checkpoint written"
        assert client.fine_tuning.jobs.retrieve(job.id).status in ("validating_files", "queued", "running")
        time.sleep(0.2)
    service = next(p for p in stack.children() if "services.training" in " ".join(p.cmdline()))
    trainers = [p for p in service.children(recursive=True) if "job_process" in " ".join(p.cmdline())]
    service.send_signal(signal.SIGKILL)
    service.wait(10)
    for trainer in trainers:  # the training run dies with its service
        trainer.wait(10)
    job = _wait(client, job.id, timeout=240)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any("queued again" in m for m in messages)
    assert any("resumed from the checkpoint of epoch" in m for m in messages)
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert len(steps) == 4 and steps == sorted(set(steps), reverse=True)


def test_cli_trains_lists_and_prints_events(stack, tmp_path):
    import os
    import subprocess
    import sys

    from tests.fixtures.stack import ROOT

    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"item {i}?"},
                                                     {"role": "assistant", "content": "red"}]}) + "\n" for i in range(20)))
    env = dict(os.environ, TUNELOOP_API_KEY=API_KEY, TUNELOOP_URL=stack.url, COLUMNS="200")

    def tuneloop(*args):
        return subprocess.run([sys.executable, "-m", "tuneloop", *args], capture_output=True, text=True,
                              timeout=300, cwd=ROOT, env=env)

    created = tuneloop("train", "create", str(data), "--model", TINY_MODEL_ID, "--epochs", "1", "--suffix", "cli")
    assert created.returncode == 0, created.stdout + created.stderr
    assert "succeeded" in created.stdout and f"ft:{TINY_MODEL_ID}:default:cli:" in created.stdout
    job_id = created.stdout.split("created ")[1].split()[0]
    listed = tuneloop("train", "list")
    assert listed.returncode == 0 and job_id in listed.stdout
    events = tuneloop("train", "events", job_id, "--follow")
    assert events.returncode == 0 and "successfully completed" in events.stdout

    started = tuneloop("train", "create", str(data), "--model", TINY_MODEL_ID, "--epochs", "3", "--no-follow")
    assert started.returncode == 0, started.stdout + started.stderr
    other = started.stdout.split("created ")[1].split()[0]
    cancelled = tuneloop("train", "cancel", other)
    assert cancelled.returncode == 0 and f"{other}: cancelled" in cancelled.stdout, cancelled.stdout
    refused = tuneloop("train", "pause", other)
    assert refused.returncode == 2 and "is cancelled" in refused.stdout, refused.stdout
    unknown = tuneloop("train", "create", str(data), "--method", "magic")
    assert unknown.returncode == 2 and "--method 'magic'" in unknown.stdout


def test_cli_creates_jobs_of_every_method_with_their_settings(stack, tmp_path):
    import os
    import subprocess
    import sys

    from tests.fixtures.stack import ROOT

    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"item {i}?"},
                                                     {"role": "assistant", "content": "red"}]}) + "\n" for i in range(20)))
    env = dict(os.environ, TUNELOOP_API_KEY=API_KEY, TUNELOOP_URL=stack.url, COLUMNS="200")
    client = OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY)
    for extra, expected in (
        (["--method", "dpo", "--beta", "0.3"], {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}}),
        (["--method", "full"], {"type": "full"}),
    ):
        created = subprocess.run([sys.executable, "-m", "tuneloop", "train", "create", str(data), "--model",
                                  TINY_MODEL_ID, "--no-follow", *extra], capture_output=True, text=True, timeout=120,
                                 cwd=ROOT, env=env)
        assert created.returncode == 0, created.stdout + created.stderr
        job = client.fine_tuning.jobs.cancel(created.stdout.split("created ")[1].split()[0])
        method = job.method.model_dump(exclude_none=True)
        assert method["type"] == expected["type"]
        if "dpo" in expected:
            assert method["dpo"]["hyperparameters"]["beta"] == 0.3


def test_readme_fine_tuning_examples_work(stack, tmp_path):
    """The README's CLI line and SDK snippet, run as written (the tiny model stands in for SmolLM2)."""
    import os
    import re
    import subprocess
    import sys

    from tests.fixtures.stack import ROOT

    readme = (ROOT / "README.md").read_text()
    env = dict(os.environ, TUNELOOP_API_KEY=API_KEY, TUNELOOP_URL=stack.url)
    for command in re.findall(r"^(\.venv/bin/tuneloop train .+)$", readme, flags=re.MULTILINE):
        result = subprocess.run([sys.executable, "-m", "tuneloop", *command.split()[1:], "--model", TINY_MODEL_ID],
                                capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    snippet = re.search(r"```python\n(.+?)```", readme, flags=re.DOTALL).group(1)
    snippet = snippet.replace("http://localhost:8000/v1", f"{stack.url}/v1").replace(
        '"smollm2-135m-instruct"', f'"{TINY_MODEL_ID}"')
    (tmp_path / "train.jsonl").write_bytes((ROOT / "tuneloop" / "samples" / "support_clean.jsonl").read_bytes())
    namespace = {"TUNELOOP_API_KEY": API_KEY}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    finally:
        os.chdir(cwd)
    assert namespace["job"].status == "validating_files"
    client = OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY)
    assert _wait(client, namespace["job"].id, timeout=300).status == "succeeded"


def test_the_sdk_pauses_and_resumes_a_job_which_ends_as_if_never_stopped(client, stack):
    file = _task_file(client, n=30)
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=file.id,
                                         hyperparameters={"n_epochs": 2, "batch_size": 1})
    deadline = time.monotonic() + 180
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=100)):
        assert time.monotonic() < deadline, "the job never trained a step"
        assert client.fine_tuning.jobs.retrieve(job.id).status in ("validating_files", "queued", "running")
        time.sleep(0.2)
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused" and paused.estimated_finish is None
    assert not [p for p in stack.children() if "services.training.job_process" in p.cmdline()]
    time.sleep(1.5)  # a supervisor tick: a paused job is not picked up again
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    with pytest.raises(openai.ConflictError) as raised:
        client.fine_tuning.jobs.pause(job.id)
    assert "is paused" in raised.value.message and raised.value.body["param"] == "fine_tuning_job_id"

    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    job = _wait(client, job.id)
    assert job.status == "succeeded", job.error
    events = list(reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=100))))  # every page, oldest first
    messages = [e.message for e in events]
    assert messages.index("Job paused.") < messages.index("Job resumed.")
    assert any(m.startswith("Fine-tuning job resumed from the checkpoint of step") for m in messages)
    steps = [e.data for e in events if e.type == "metrics" and "total_steps" in e.data]
    # every step once: none redone after the pause, none skipped
    assert [s["step"] for s in steps] == list(range(1, int(steps[-1]["total_steps"]) + 1))
    assert len(list(client.fine_tuning.jobs.checkpoints.list(job.id))) == 2  # the pause's is not an epoch's

    for verb in (client.fine_tuning.jobs.pause, client.fine_tuning.jobs.resume):
        with pytest.raises(openai.ConflictError) as raised:
            verb(job.id)
        assert "is succeeded" in raised.value.message
        with pytest.raises(openai.NotFoundError):
            verb("ftjob-nope")
