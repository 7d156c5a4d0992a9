"""The Kubernetes runner: a job's spec rendered as a batch/v1 Job that runs `accelerate launch`.

The spec is the one the local runner hands `services.training.job_process` on stdin; here it goes
into a ConfigMap beside the accelerate config (data parallel: one process per GPU, each with
the whole model, gradients summed by the trainer; see services.training.distributed for why there
is no FSDP or DeepSpeed sharding), and the container runs

    accelerate launch --config_file /etc/tuneloop/accelerate.yaml ... \
        -m services.training.job_process --spec /etc/tuneloop/spec.json

in tuneloop's image. The dataset splits, checkpoints and the adapter live in the artifact store,
the data dir the platform's Deployments share (the kustomize base's ReadWriteMany claim
`tuneloop-data` at /data; an S3 bucket works through a CSI driver that presents it as that
claim): paths in the spec are rewritten from the service's data dir to the mount. More than one
node makes an Indexed Job with a headless Service, so rank 0 is reachable at a stable name.

Pure functions, no cluster: `render_manifests` returns plain dicts for `kubectl apply -f`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.shared.errors import InvalidArgument
from services.training.distillation import TEACHER_API_KEY_ENV

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_IMAGE = re.compile(r"^[^\s]+$")
CONFIG_DIR = "/etc/tuneloop"
ACCELERATE_FILE = "accelerate.yaml"
SPEC_FILE = "spec.json"
JOB_ID_LABEL = "tuneloop/job-id"
# The uid and gid of the `tuneloop` user in deploy/Dockerfile.
RUN_AS = 10001
SPEC_PATHS = ("train_path", "validation_path", "job_dir", "adapter_dir", "resume_from")


def dns_label(value: str, what: str, *, max_length: int = 63) -> str:
    """Refuse a name Kubernetes would refuse (RFC 1123 label), naming what it is for."""
    if len(value) > max_length or not _DNS_LABEL.match(value):
        raise InvalidArgument(f"{what} {value!r} is not a valid Kubernetes name: up to {max_length} lower-case "
                              "letters, digits and '-', starting and ending with a letter or digit", param=what)
    return value


def dns_subdomain(value: str, what: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise InvalidArgument(f"{what} {value!r} is not a valid Kubernetes name: lower-case letters, digits, '-' "
                              "and '.', up to 253 characters", param=what)
    return value


class KubernetesRunner(BaseModel):
    """Where and how jobs run on a cluster; `TUNELOOP_KUBERNETES` as JSON sets it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # A GPU build of tuneloop's image (CUDA torch).
    image: str = "tuneloop:0.1.0"
    namespace: str = "tuneloop"
    # Empty: the namespace's default account. Job pods need no API access; their token is not mounted.
    service_account: str = ""
    nodes: int = Field(default=1, ge=1, le=64)
    gpus_per_node: int = Field(default=1, ge=1, le=16)
    # The artifact store: the claim every tuneloop Deployment mounts at data_mount.
    data_claim: str = "tuneloop-data"
    data_mount: str = "/data"
    settings_config_map: str = "tuneloop-settings"
    # Holds the teacher keys of distillation jobs, one entry per key name.
    teacher_secret: str = "tuneloop-teacher-keys"
    cpu: str = "8"
    memory: str = "64Gi"
    # NCCL passes tensors through /dev/shm; a container's default 64 MiB is far too small.
    shm_size: str = "16Gi"
    # 0: a failed pod is not retried by Kubernetes; the job's own attempts (and checkpoints) decide.
    backoff_limit: int = Field(default=0, ge=0, le=10)
    active_deadline_seconds: int = Field(default=3 * 24 * 3600, ge=60)
    ttl_seconds_after_finished: int = Field(default=24 * 3600, ge=0)
    main_process_port: int = Field(default=29500, ge=1024, le=65535)
    node_selector: dict[str, str] = Field(default_factory=dict)

    @field_validator("namespace", "data_claim", "settings_config_map", "teacher_secret")
    @classmethod
    def _names(cls, value: str, info) -> str:
        return dns_label(value, info.field_name) if info.field_name == "namespace" else dns_subdomain(value, info.field_name)

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, value: str) -> str:
        return dns_subdomain(value, "service_account") if value else value

    @field_validator("cpu", "memory", "shm_size")
    @classmethod
    def _quantities(cls, value: str, info) -> str:
        if not _QUANTITY.match(value):
            raise ValueError(f"{info.field_name} {value!r} is not a Kubernetes quantity such as 8, 500m or 64Gi")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not _IMAGE.match(value):
            raise ValueError(f"image {value!r} must be an image reference without spaces")
        return value

    @field_validator("data_mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or ".." in path.parts or str(path) == "/":
            raise ValueError(f"data_mount {value!r} must be an absolute path below /")
        return str(path)

    @property
    def processes(self) -> int:
        return self.nodes * self.gpus_per_node


def accelerate_config(runner: KubernetesRunner) -> dict[str, Any]:
    """accelerate's own config format (what `accelerate config` writes): `accelerate launch` starts
    one process per GPU and sets the torch.distributed environment the trainer joins."""
    return {
        "compute_environment": "LOCAL_MACHINE",
        # The trainer itself runs in bf16 where the GPU has it (TrainConfig.bf16), not through accelerate.
        "mixed_precision": "no",
        "num_machines": runner.nodes,
        "num_processes": runner.processes,
        "machine_rank": 0,  # each pod passes its own with --machine_rank
        "main_process_port": runner.main_process_port,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "downcast_bf16": "no",
        "distributed_type": "MULTI_GPU" if runner.processes > 1 else "NO",
        "gpu_ids": "all",
    }


def job_name(job_id: str) -> str:
    # Indexed pods are named "<job>-<index>": leave room for the index.
    return dns_label(f"tuneloop-train-{job_id}".lower(), "job_id", max_length=56)


def _to_mount(path: str, data_dir: Path, mount: str, field: str) -> str:
    resolved = Path(path).resolve()
    try:
        relative = resolved.relative_to(data_dir.resolve())
    except ValueError:
        raise InvalidArgument(f"{field} {path} is outside the data dir {data_dir} that the cluster shares; "
                              "set TUNELOOP_MODEL_DIR and TUNELOOP_ARTIFACT_DIR inside it", param=field) from None
    return str(PurePosixPath(mount, *relative.parts))


def cluster_spec(spec: dict[str, Any], runner: KubernetesRunner, data_dir: Path) -> dict[str, Any]:
    """The job spec with its paths moved from the service's data dir to the pod's mount."""
    moved = dict(spec)
    for field in SPEC_PATHS:
        if moved.get(field):
            moved[field] = _to_mount(moved[field], data_dir, runner.data_mount, field)
    if moved.get("init_from"):  # a warm start's parent, in the model store
        path = _to_mount(moved["init_from"]["path"], data_dir, runner.data_mount, "init_from")
        moved["init_from"] = {**moved["init_from"], "path": path}
    return moved


def _labels(job_id: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "training-job",
        "app.kubernetes.io/component": "training-job",
        "app.kubernetes.io/part-of": "tuneloop",
        "app.kubernetes.io/managed-by": "tuneloop-training",
        JOB_ID_LABEL: job_id,
    }


def _launch_command(runner: KubernetesRunner, name: str) -> list[str]:
    command = ["accelerate", "launch", "--config_file", f"{CONFIG_DIR}/{ACCELERATE_FILE}",
               "--num_machines", str(runner.nodes), "--num_processes", str(runner.processes)]
    if runner.nodes > 1:
        # $(MACHINE_RANK) is expanded by Kubernetes from the container's env below.
        command += ["--machine_rank", "$(MACHINE_RANK)", "--main_process_ip", f"{name}-0.{name}",
                    "--main_process_port", str(runner.main_process_port)]
    return [*command, "-m", "services.training.job_process", "--spec", f"{CONFIG_DIR}/{SPEC_FILE}"]


def _env(spec: dict[str, Any], runner: KubernetesRunner) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "TUNELOOP_DATA_DIR", "value": runner.data_mount},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
    ]
    if runner.nodes > 1:
        env.append({"name": "MACHINE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}})
    key_name = (spec.get("method", {}).get("teacher") or {}).get("api_key_name")
    if key_name:
        if not _SECRET_KEY.match(key_name):
            raise InvalidArgument(f"teacher key name {key_name!r} cannot be a Secret key",
                                  param="method.teacher.api_key_name")
        # Only the one key this job names, straight from the Secret: never in the ConfigMap or the spec.
        env.append({"name": TEACHER_API_KEY_ENV, "valueFrom": {"secretKeyRef": {
            "name": runner.teacher_secret, "key": key_name}}})
    return env


def render_manifests(spec: dict[str, Any], runner: KubernetesRunner, data_dir: Path) -> list[dict[str, Any]]:
    """The ConfigMap (accelerate config and job spec), the Job, and for several nodes a headless
    Service, for the job `spec` (as the supervisor builds it) and the service's `data_dir`."""
    job_id = spec["job_id"]
    name = job_name(job_id)
    labels = _labels(job_id)
    moved = cluster_spec(spec, runner, data_dir)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": runner.namespace, "labels": labels},
        "data": {
            ACCELERATE_FILE: yaml.safe_dump(accelerate_config(runner), sort_keys=True),
            SPEC_FILE: json.dumps(moved, sort_keys=True, indent=2) + "\n",
        },
    }
    gpus = str(runner.gpus_per_node)
    container = {
        "name": "train",
        "image": runner.image,
        "imagePullPolicy": "IfNotPresent",
        "command": _launch_command(runner, name),
        "envFrom": [{"configMapRef": {"name": runner.settings_config_map}}],
        "env": _env(spec, runner),
        "resources": {
            "requests": {"cpu": runner.cpu, "memory": runner.memory, "nvidia.com/gpu": gpus},
            "limits": {"memory": runner.memory, "nvidia.com/gpu": gpus},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": runner.data_mount},
            {"name": "job-config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }
    if runner.nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": runner.main_process_port}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [container],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": runner.data_claim}},
            {"name": "job-config", "configMap": {"name": name}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": runner.shm_size}},
        ],
    }
    if runner.service_account:
        pod_spec["serviceAccountName"] = runner.service_account
    if runner.node_selector:
        pod_spec["nodeSelector"] = dict(runner.node_selector)
    job_spec: dict[str, Any] = {
        "backoffLimit": runner.backoff_limit,
        "activeDeadlineSeconds": runner.active_deadline_seconds,
        "ttlSecondsAfterFinished": runner.ttl_seconds_after_finished,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    manifests = [config_map]
    if runner.nodes > 1:
        # Every node's pod runs at once; rank 0 is reachable as <job>-0.<service>.
        job_spec.update(completionMode="Indexed", completions=runner.nodes, parallelism=runner.nodes)
        pod_spec["subdomain"] = name
        manifests.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": runner.namespace, "labels": labels},
            "spec": {"clusterIP": "None", "selector": {JOB_ID_LABEL: job_id},
                     "ports": [{"name": "rendezvous", "port": runner.main_process_port}],
                     "publishNotReadyAddresses": True},
        })
    manifests.append({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": runner.namespace, "labels": labels,
                     "annotations": {"tuneloop/base-model": str(spec.get("base_model", ""))}},
        "spec": job_spec,
    })
    return manifests


def dump_manifests(manifests: list[dict[str, Any]]) -> str:
    """One YAML stream, as `kubectl apply -f` reads it."""
    return yaml.safe_dump_all(manifests, sort_keys=False)
