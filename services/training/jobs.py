"""What a fine-tuning job request must look like, and how "auto" hyperparameters are resolved.

Mirrors OpenAI's fine-tuning API (limits, names, statuses) so that a client written for it works
unchanged; LoRA settings are our own additions to `method`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound, NotImplementedYet

_SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
METHODS = ("supervised", "dpo", "qlora", "full")
# LoRA's usual learning rate; OpenAI's learning_rate_multiplier scales it.
BASE_LEARNING_RATE = 2e-4
MAX_METADATA_PAIRS = 16
# Enough general examples to anchor the base model's behaviour without slowing the domain down much.
DEFAULT_REPLAY_FRACTION = 0.2


@dataclass(frozen=True)
class Hyperparameters:
    """Requested values; None means "auto"."""

    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None


@dataclass(frozen=True)
class JobSpec:
    model: str
    training_file: str
    validation_file: str = ""
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    suffix: str = ""
    seed: int = 0
    method: str = "supervised"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    early_stopping_patience: int = 0
    replay_fraction: float = DEFAULT_REPLAY_FRACTION
    metadata: dict[str, str] = field(default_factory=dict)

    def method_dict(self) -> dict:
        return {
            "type": self.method,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "early_stopping_patience": self.early_stopping_patience,
            "replay_fraction": self.replay_fraction,
        }

    def hyperparameters_dict(self) -> dict:
        return asdict(self.hyperparameters)


def validate_job(spec: JobSpec, *, known_models: list[str], cuda_available: bool) -> None:
    """Refuse a job that cannot run, naming the field, before anything is stored."""
    if spec.model not in known_models:
        raise NotFound(
            f"The model '{spec.model}' does not exist or cannot be fine-tuned; base models: {', '.join(known_models)}",
            param="model",
            code="model_not_found",
        )
    if not spec.training_file:
        raise InvalidArgument("training_file is required", param="training_file")
    if spec.method not in METHODS:
        raise InvalidArgument(f"method.type {spec.method!r}: use one of {', '.join(METHODS)}", param="method.type")
    if spec.method == "qlora" and not cuda_available:
        raise FailedPrecondition(
            "QLoRA trains a 4-bit (NF4) model through bitsandbytes and needs a CUDA GPU; this machine has none. "
            "Use method.type 'supervised' (LoRA) on the CPU.",
            param="method.type",
            code="gpu_required",
        )
    if spec.method in ("dpo", "qlora", "full"):
        raise NotImplementedYet(
            f"method.type {spec.method!r} is not implemented yet; 'supervised' (LoRA) is", param="method.type"
        )
    hp = spec.hyperparameters
    if hp.n_epochs is not None and not 1 <= hp.n_epochs <= 50:
        raise InvalidArgument("n_epochs must be between 1 and 50", param="hyperparameters.n_epochs")
    if hp.batch_size is not None and not 1 <= hp.batch_size <= 256:
        raise InvalidArgument("batch_size must be between 1 and 256", param="hyperparameters.batch_size")
    if hp.learning_rate_multiplier is not None and not 0 < hp.learning_rate_multiplier <= 10:
        raise InvalidArgument(
            "learning_rate_multiplier must be above 0 and at most 10", param="hyperparameters.learning_rate_multiplier"
        )
    if spec.suffix and not _SUFFIX.match(spec.suffix):
        raise InvalidArgument(
            "suffix must be at most 64 characters: lower-case letters, digits and '-'", param="suffix"
        )
    if not 1 <= spec.lora_r <= 256:
        raise InvalidArgument("lora_r must be between 1 and 256", param="method.lora_r")
    if not 1 <= spec.lora_alpha <= 1024:
        raise InvalidArgument("lora_alpha must be between 1 and 1024", param="method.lora_alpha")
    if not 0 <= spec.lora_dropout < 1:
        raise InvalidArgument("lora_dropout must be at least 0 and below 1", param="method.lora_dropout")
    if not 0 <= spec.early_stopping_patience <= 50:
        raise InvalidArgument("early_stopping_patience must be between 0 and 50", param="method.early_stopping_patience")
    if not 0 <= spec.replay_fraction <= 0.9:
        raise InvalidArgument("replay_fraction must be between 0 and 0.9", param="method.replay_fraction")
    if len(spec.metadata) > MAX_METADATA_PAIRS or any(
        len(key) > 64 or len(value) > 512 for key, value in spec.metadata.items()
    ):
        raise InvalidArgument("metadata: at most 16 pairs, keys up to 64 and values up to 512 characters",
                              param="metadata")


@dataclass(frozen=True)
class ResolvedHyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.learning_rate_multiplier


def resolve_hyperparameters(requested: Hyperparameters, *, n_train: int, recommended_epochs: int) -> ResolvedHyperparameters:
    """OpenAI's "auto": epochs from the dataset report's heuristic; a batch of about 0.2% of the
    examples (as OpenAI describes it), kept between 1 and 8 for a CPU; multiplier 1."""
    return ResolvedHyperparameters(
        n_epochs=requested.n_epochs or recommended_epochs,
        batch_size=requested.batch_size or max(1, min(8, round(n_train * 0.002))),
        learning_rate_multiplier=requested.learning_rate_multiplier or 1.0,
    )


def fine_tuned_model_id(base_model: str, tenant: str, suffix: str, job_id: str) -> str:
    return f"ft:{base_model}:{tenant}:{suffix}:{job_id}"
