"""The Kubernetes runner's manifests, checked against Kubernetes' own OpenAPI schema (strict: no
unknown fields) and accelerate's own config loader. No cluster is reachable here, so nothing is applied."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import yaml

from services.shared.errors import InvalidArgument
from services.training.distillation import TEACHER_API_KEY_ENV
from services.training.kubernetes import KubernetesRunner, accelerate_config, dump_manifests, render_manifests

ROOT = Path(__file__).resolve().parents[2]
JOB_ID = "ftjob-0123456789abcdef01234567"
SCHEMA_VERSION = kubernetes_validate.latest_version()


def _spec(data_dir: Path, **method) -> dict:
    artifacts = data_dir / "artifacts" / "sha256"
    return {
        "job_id": JOB_ID,
        "base_model": "smollm2-135m-instruct",
        "train_path": str(artifacts / "ab" / ("c" * 62)),
        "validation_path": str(artifacts / "de" / ("f" * 62)),
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0, "learning_rate": 2e-4},
        "method": {"type": "supervised", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                   "early_stopping_patience": 0, "replay_fraction": 0.2, **method},
        "seed": 3,
        "job_dir": str(data_dir / "training" / "jobs" / JOB_ID),
        "adapter_dir": str(data_dir / "models" / "adapters" / JOB_ID),
        "resume_from": str(data_dir / "training" / "jobs" / JOB_ID / "checkpoints" / "epoch-1"),
        "init_from": {"model": "ft:smollm2-135m-instruct:acme:x:ftjob-1", "kind": "lora",
                      "path": str(data_dir / "models" / "adapters" / "ftjob-1")},
    }


def _by_kind(manifests: list[dict]) -> dict[str, dict]:
    return {m["kind"]: m for m in manifests}


def _valid(manifests: list[dict]) -> None:
    for manifest in manifests:
        kubernetes_validate.validate(manifest, SCHEMA_VERSION, strict=True)


def test_a_single_node_four_gpu_job_is_a_valid_batch_v1_job_with_its_spec_and_config(tmp_path):
    runner = KubernetesRunner(image="registry.example/tuneloop-gpu:0.1.0", gpus_per_node=4, service_account="trainer")
    manifests = render_manifests(_spec(tmp_path), runner, tmp_path)
    _valid(manifests)
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Job"]
    config_map, job = manifests
    name = f"tuneloop-train-{JOB_ID}"
    assert job["metadata"]["name"] == config_map["metadata"]["name"] == name
    assert job["metadata"]["namespace"] == "tuneloop"
    assert job["metadata"]["labels"]["tuneloop/job-id"] == JOB_ID
    assert job["spec"]["template"]["metadata"]["labels"]["tuneloop/job-id"] == JOB_ID
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] > 0 and job["spec"]["ttlSecondsAfterFinished"] > 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "trainer"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/tuneloop-gpu:0.1.0"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["command"] == [
        "accelerate", "launch", "--config_file", "/etc/tuneloop/accelerate.yaml", "--num_machines", "1",
        "--num_processes", "4", "-m", "services.training.job_process", "--spec", "/etc/tuneloop/spec.json"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "tuneloop-data"}} in pod["volumes"]
    assert {"name": "job-config", "configMap": {"name": name}} in pod["volumes"]

    # the spec in the ConfigMap points into the artifact store as the pod mounts it
    spec = json.loads(config_map["data"]["spec.json"])
    assert spec["train_path"] == f"/data/artifacts/sha256/ab/{'c' * 62}"
    assert spec["adapter_dir"] == f"/data/models/adapters/{JOB_ID}"
    assert spec["resume_from"] == f"/data/training/jobs/{JOB_ID}/checkpoints/epoch-1"
    assert spec["init_from"] == {**_spec(tmp_path)["init_from"], "path": "/data/models/adapters/ftjob-1"}
    assert spec["hyperparameters"] == _spec(tmp_path)["hyperparameters"]
    accelerate = yaml.safe_load(config_map["data"]["accelerate.yaml"])
    assert accelerate["distributed_type"] == "MULTI_GPU" and accelerate["num_processes"] == 4
    # the YAML stream kubectl would read holds the same documents
    assert list(yaml.safe_load_all(dump_manifests(manifests))) == manifests


@pytest.mark.parametrize(("nodes", "gpus", "distributed"), [(2, 8, "MULTI_GPU"), (1, 1, "NO")])
def test_accelerate_reads_the_config_as_its_own(tmp_path, nodes, gpus, distributed):
    from accelerate.commands.config.config_args import ClusterConfig

    runner = KubernetesRunner(nodes=nodes, gpus_per_node=gpus)
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(accelerate_config(runner)))
    config = ClusterConfig.from_yaml_file(path)  # refuses unknown keys
    assert config.num_machines == nodes and config.num_processes == nodes * gpus
    assert config.distributed_type.value == distributed
    assert config.mixed_precision == "no"  # the trainer picks bf16 itself


def test_several_nodes_make_an_indexed_job_whose_pods_find_rank_zero(tmp_path):
    runner = KubernetesRunner(nodes=3, gpus_per_node=2)
    manifests = render_manifests(_spec(tmp_path), runner, tmp_path)
    _valid(manifests)
    kinds = _by_kind(manifests)
    job, service = kinds["Job"], kinds["Service"]
    name = job["metadata"]["name"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"] == name
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"tuneloop/job-id": JOB_ID}
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[command.index("--num_processes") + 1] == "6"
    assert command[command.index("--machine_rank") + 1] == "$(MACHINE_RANK)"
    assert command[command.index("--main_process_ip") + 1] == f"{name}-0.{name}"
    rank = next(e for e in container["env"] if e["name"] == "MACHINE_RANK")
    assert "job-completion-index" in rank["valueFrom"]["fieldRef"]["fieldPath"]


def test_a_distillation_job_gets_its_one_teacher_key_from_a_secret_never_the_config_map(tmp_path):
    teacher = {"base_url": "https://api.openai.com/v1", "model": "gpt-4o", "api_key_name": "openai"}
    manifests = render_manifests(_spec(tmp_path, type="distillation", teacher=teacher), KubernetesRunner(), tmp_path)
    _valid(manifests)
    kinds = _by_kind(manifests)
    env = kinds["Job"]["spec"]["template"]["spec"]["containers"][0]["env"]
    key = next(e for e in env if e["name"] == TEACHER_API_KEY_ENV)
    assert key["valueFrom"] == {"secretKeyRef": {"name": "tuneloop-teacher-keys", "key": "openai"}}
    assert json.loads(kinds["ConfigMap"]["data"]["spec.json"])["method"]["teacher"] == teacher
    # a supervised job gets no key at all
    plain = _by_kind(render_manifests(_spec(tmp_path), KubernetesRunner(), tmp_path))
    assert all(e["name"] != TEACHER_API_KEY_ENV for e in plain["Job"]["spec"]["template"]["spec"]["containers"][0]["env"])


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"namespace": "Team_ML"}, "namespace"),
        ({"namespace": "a" * 64}, "namespace"),
        ({"data_claim": "-data"}, "data_claim"),
        ({"service_account": "Trainer"}, "service_account"),
        ({"teacher_secret": "keys/../x"}, "teacher_secret"),
        ({"memory": "lots"}, "memory"),
        ({"image": "tuneloop latest"}, "image"),
        ({"data_mount": "relative/data"}, "data_mount"),
        ({"accelerate": "fsdp"}, "accelerate"),  # the trainer is data parallel: no sharding to choose
        ({"gpus_per_node": 0}, "gpus_per_node"),
    ],
)
def test_runner_settings_kubernetes_would_refuse_are_refused_by_name(settings, field):
    with pytest.raises(pydantic.ValidationError) as error:
        KubernetesRunner(**settings)
    assert error.value.errors()[0]["loc"] == (field,)


def test_names_and_paths_that_cannot_reach_the_cluster_are_refused(tmp_path):
    spec = _spec(tmp_path)
    with pytest.raises(InvalidArgument) as error:
        render_manifests({**spec, "job_id": "FTJOB_1"}, KubernetesRunner(), tmp_path)
    assert error.value.param == "job_id"
    outside = {**spec, "train_path": "/etc/passwd"}
    with pytest.raises(InvalidArgument) as error:
        render_manifests(outside, KubernetesRunner(), tmp_path)
    assert error.value.param == "train_path" and "outside the data dir" in error.value.message
    escaping = {**spec, "adapter_dir": str(tmp_path / "models" / ".." / ".." / "elsewhere")}
    with pytest.raises(InvalidArgument):
        render_manifests(escaping, KubernetesRunner(), tmp_path)
    parent_outside = {**spec, "init_from": {**spec["init_from"], "path": "/srv/adapters/ftjob-1"}}
    with pytest.raises(InvalidArgument) as error:
        render_manifests(parent_outside, KubernetesRunner(), tmp_path)
    assert error.value.param == "init_from"


def test_the_container_command_runs_the_job_process_from_a_spec_file(tmp_path):
    """What the pod runs after `accelerate launch`: job_process reads --spec (tests/training/
    test_distributed.py runs it as several processes)."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**_spec(tmp_path), "train_path": str(tmp_path / "missing.jsonl")}))
    command = [sys.executable, "-m", "services.training.job_process", "--spec", str(spec_file)]
    env = {"PATH": "/usr/bin:/bin", "TUNELOOP_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    single = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    failed = json.loads(single.stdout.splitlines()[-1])
    assert single.returncode == 1 and failed["event"] == "failed"
    assert "missing.jsonl" in failed["message"]  # it read the spec from the file, not stdin
