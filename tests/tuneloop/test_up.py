"""`tuneloop up` as a user runs it: real subprocesses for NATS, the five services and the gateway."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from openai import AuthenticationError, OpenAI

from gateway.health import GRPC_SERVICE_NAMES
from protos import (
    dataprep_pb2,
    dataprep_pb2_grpc,
    evaluation_pb2,
    evaluation_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tests.fixtures.stack import API_KEY, ROOT, UpProcess, auth_metadata, clean_env


def test_healthz_reports_nats_and_every_service_serving(stack):
    body = httpx.get(f"{stack.url}/healthz").json()
    assert body == {
        "status": "ok",
        "parts": {name: "SERVING" for name in ["nats", "dataprep", "training", "evaluation", "feedback", "inference"]},
    }


def test_grpc_health_of_the_gateway_covers_every_part(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", "nats", *GRPC_SERVICE_NAMES.values()]:
            deadline = time.monotonic() + 10  # the gateway mirrors health every couple of seconds
            while True:
                status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert status == health_pb2.HealthCheckResponse.SERVING, name


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_api_key"), ({"Authorization": "Bearer wrong-key-123456"}, "invalid_api_key"), ({"Authorization": "Basic abc"}, "invalid_api_key")],
)
def test_requests_without_a_valid_key_get_401_in_openai_shape(stack, headers, code):
    response = httpx.get(f"{stack.url}/v1/models", headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["message"]


def test_openai_sdk_lists_the_base_models(stack):
    client = OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY)
    ids = [model.id for model in client.models.list()]
    assert ids[:2] == ["smollm2-135m-instruct", "tiny-llama"]
    assert client.models.retrieve("tiny-llama").owned_by == "tuneloop"
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{stack.url}/v1", api_key="nope", max_retries=0).models.list()


def test_unknown_model_is_404_model_not_found(stack):
    response = httpx.get(f"{stack.url}/v1/models/gpt-9", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_public_grpc_needs_a_key_and_proxies_every_kind_of_rpc(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        training = training_pb2_grpc.TrainingStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            training.ListModels(training_pb2.ListModelsRequest(), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        models = training.ListModels(training_pb2.ListModelsRequest(), metadata=auth_metadata(), timeout=10)
        assert "tiny-llama" in [m.id for m in models.models]

        # unary with a domain error: the status and the field at fault come through the gateway
        evaluation = evaluation_pb2_grpc.EvaluationStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            evaluation.ComputeMetrics(
                evaluation_pb2.ComputeMetricsRequest(pairs=[evaluation_pb2.ScoredPair(prediction="a", reference="a")],
                                                     metrics=["nope"]),
                metadata=auth_metadata(), timeout=10,
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(error.value.trailing_metadata())["x-tuneloop-error-param"] == "metrics"

        # client streaming in, server streaming out
        dataprep = dataprep_pb2_grpc.DataPrepStub(channel)
        content = b'{"messages": []}\n' * 5000
        chunks = [dataprep_pb2.UploadFileRequest(header=dataprep_pb2.UploadFileHeader(filename="a.jsonl", purpose="fine-tune"))]
        chunks += [dataprep_pb2.UploadFileRequest(data=content[i:i + 4096]) for i in range(0, len(content), 4096)]
        uploaded = dataprep.UploadFile(iter(chunks), metadata=auth_metadata(), timeout=10).file
        assert uploaded.bytes == len(content)
        echoed = b"".join(c.data for c in dataprep.GetFileContent(
            dataprep_pb2.GetFileContentRequest(file_id=uploaded.id), metadata=auth_metadata(), timeout=10))
        assert echoed == content

        # inference on the tiny model, through the gateway
        inference = inference_pb2_grpc.InferenceStub(channel)
        reply = inference.Generate(
            inference_pb2.GenerateRequest(model="tiny-llama", prompt="Hello", max_tokens=5), metadata=auth_metadata(), timeout=60
        )
        assert reply.completion_id.startswith("cmpl-")
        assert reply.usage.completion_tokens == 5 and reply.finish_reason == "length"


def test_gateway_grpc_reflection_lists_the_public_services(stack):
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {service.name for response in responses for service in response.list_services_response.service}
    assert set(GRPC_SERVICE_NAMES.values()) <= names
    assert "grpc.health.v1.Health" in names


def test_readme_curl_examples_work(stack):
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")  # a command continued on the next line
    # The feedback example needs a served completion's id: tests/gateway/test_feedback_api.py runs it.
    commands = [c for c in re.findall(r"^\s*(curl .+)$", readme, flags=re.MULTILINE) if "cmpl-..." not in c]
    assert len(commands) >= 2
    for command in commands:
        command = command.replace("localhost:8000", f"127.0.0.1:{stack.port}")
        result = subprocess.run(
            ["bash", "-c", command + " --fail --silent --show-error"], capture_output=True, text=True,
            env=dict(os.environ, TUNELOOP_API_KEY=API_KEY), timeout=30, cwd=ROOT,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        json.loads(result.stdout)


def test_a_killed_service_is_restarted(stack):
    victim = next(p for p in stack.children() if "services.feedback" in " ".join(p.cmdline()))
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        replacement = [p for p in stack.children() if "services.feedback" in " ".join(p.cmdline())]
        if replacement and replacement[0].pid != victim.pid:
            healthy = httpx.get(f"{stack.url}/healthz").status_code == 200
            if healthy:
                return
        time.sleep(0.5)
    raise AssertionError("feedback was not restarted and healthy within 60s")


def test_first_start_generates_a_key_and_sigterm_stops_everything(tmp_path):
    up = UpProcess(tmp_path, clean_env())
    try:
        up.wait_healthy()
        children = up.children()
        assert len(children) >= 7  # nats-server, five services, the gateway
        key = re.search(r"^\s+(tl-\S+)$", up.output.read_text(), flags=re.MULTILINE).group(1)
        models = httpx.get(f"{up.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200
        logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
        assert key not in logs  # shown once on the terminal, never written to a log
        status = subprocess.run([sys.executable, "-m", "tuneloop", "status", "--url", up.url],
                                capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert status.returncode == 0 and status.stdout.count("SERVING") == 6
    finally:
        started = time.monotonic()
        code = up.stop()
    assert code == 0
    assert time.monotonic() - started < 15
    assert "was killed" not in up.output.read_text()
    gone = psutil.wait_procs(children, timeout=10)[1]
    assert not gone, f"still running after SIGTERM: {gone}"


@pytest.mark.postgres
def test_up_uses_an_existing_nats_and_postgresql(tmp_path, nats_server, request):
    admin_url = os.environ.get("TUNELOOP_TEST_POSTGRES_URL")
    if not admin_url:
        pytest.skip("needs TUNELOOP_TEST_POSTGRES_URL (for example postgresql://postgres@127.0.0.1:5432/test)")
    from tests.conftest import _postgres_database

    databases = _postgres_database()
    database_url = next(databases)
    request.addfinalizer(lambda: next(databases, None))
    up = UpProcess(tmp_path, clean_env(NATS_URL=nats_server.url, TUNELOOP_DATABASE_URL=database_url,
                                  TUNELOOP_API_KEY=API_KEY))
    try:
        up.wait_healthy()
        names = [" ".join(p.cmdline()) for p in up.children()]
        assert not any("nats-server" in name for name in names)  # it used ours
        assert not list(tmp_path.glob("*.db"))  # and no SQLite files
    finally:
        assert up.stop() == 0
    import sqlalchemy as sa

    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    for part in ("gateway", "dataprep", "training", "evaluation", "feedback", "inference"):
        assert f"{part}_alembic_version" in tables


def test_sigterm_during_start_up_leaves_no_process_behind(tmp_path):
    up = UpProcess(tmp_path, clean_env(TUNELOOP_API_KEY=API_KEY))
    deadline = time.monotonic() + 30
    children: list[psutil.Process] = []
    while len(children) < 7 and time.monotonic() < deadline:  # every part started, none healthy yet
        children = up.children()
        time.sleep(0.05)
    assert len(children) >= 7, up.output.read_text()
    assert up.stop() == 0
    gone = psutil.wait_procs(children, timeout=20)[1]
    assert not gone, f"still running: {gone}"
