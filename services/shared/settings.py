"""Typed settings, read from `TUNELOOP_*` environment variables, built once in each `main`."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_NAMES = ("dataprep", "training", "evaluation", "feedback", "inference")
DEFAULT_SERVICE_PORTS = {
    "dataprep": 50061,
    "training": 50062,
    "evaluation": 50063,
    "feedback": 50064,
    "inference": 50065,
}
# The same rule services.shared.models.validate_model_id applies before an id becomes a path.
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


def default_data_dir() -> Path:
    return Path.home() / ".tuneloop"


class Settings(BaseSettings):
    """What every tuneloop process needs to know: where its data lives and who its peers are."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    # Unset: one SQLite file per service in data_dir. Set: every service shares this database,
    # each with its own tables (prefixed by the service name).
    database_url: str | None = None
    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=AliasChoices("NATS_URL", "TUNELOOP_NATS_URL"),
    )
    # The JetStream stream that carries every platform event.
    stream_name: str = "TUNELOOP"
    # Replicas of the stream: 1 on one machine, 3 on a NATS cluster.
    stream_replicas: int = 1
    # Shared secret the services demand on every internal gRPC call; empty disables the check.
    internal_token: str = ""
    otlp_endpoint: str | None = None
    log_level: str = "INFO"
    # Base models and adapters live here; default <data_dir>/models.
    model_dir: Path | None = None
    # Content-addressed blobs (uploaded files, datasets, adapters); default <data_dir>/artifacts.
    artifact_dir: Path | None = None
    # Extra base models: a JSON object of model id -> local directory or Hugging Face cache path.
    base_models: dict[str, Path] = Field(default_factory=dict)
    default_base_model: str = "smollm2-135m-instruct"

    dataprep_addr: str = f"127.0.0.1:{DEFAULT_SERVICE_PORTS['dataprep']}"
    training_addr: str = f"127.0.0.1:{DEFAULT_SERVICE_PORTS['training']}"
    evaluation_addr: str = f"127.0.0.1:{DEFAULT_SERVICE_PORTS['evaluation']}"
    feedback_addr: str = f"127.0.0.1:{DEFAULT_SERVICE_PORTS['feedback']}"
    inference_addr: str = f"127.0.0.1:{DEFAULT_SERVICE_PORTS['inference']}"

    @field_validator("base_models")
    @classmethod
    def _model_ids_are_safe(cls, value: dict[str, Path]) -> dict[str, Path]:
        for model_id in value:
            if not _MODEL_ID.match(model_id) or ".." in model_id:
                raise ValueError(
                    f"base model id {model_id!r} must be lower-case letters, digits, '-', '_' or '.'"
                )
        return value

    @property
    def models_path(self) -> Path:
        return self.model_dir or self.data_dir / "models"

    @property
    def artifacts_path(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"

    def service_addr(self, service: str) -> str:
        if service not in SERVICE_NAMES:
            raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICE_NAMES)}")
        return getattr(self, f"{service}_addr")

    def database_url_for(self, service: str) -> str:
        """The database a service keeps its tables in."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / f'{service}.db'}"


class ServiceSettings(Settings):
    """Settings of one service process: the shared ones plus where it listens."""

    grpc_host: str = "127.0.0.1"
    # 0 picks a free port; the process prints the one it bound.
    grpc_port: int = 0
