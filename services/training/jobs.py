"""What a fine-tuning job request must look like, and how "auto" hyperparameters are resolved.

Mirrors OpenAI's fine-tuning API (limits, names, statuses) so that a client written for it works
unchanged; LoRA settings are our own additions to `method`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound
from services.training.distillation import TeacherRef

_SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
METHODS = ("supervised", "dpo", "qlora", "full", "distillation")
# LoRA's usual learning rate; OpenAI's learning_rate_multiplier scales it.
BASE_LEARNING_RATE = 2e-4
# Other methods' base rates: DPO of a LoRA adapter as trl's documentation runs it (5e-6), full
# fine-tuning at trl's SFTConfig default (2e-5): every weight moves, so a LoRA rate would wreck the model.
BASE_LEARNING_RATES = {"dpo": 5e-6, "full": 2e-5}
# OpenAI's default for method.dpo.hyperparameters.beta, and trl's.
DEFAULT_BETA = 0.1
MAX_METADATA_PAIRS = 16
# A key name becomes a Kubernetes Secret key (and an environment lookup), so it keeps to their alphabet.
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_TEACHER_MODEL = re.compile(r"^[^\s]{1,256}$")
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
    # The LoRA target modules; empty: the trainer's default (every linear layer). Set by a warm start.
    target_modules: tuple[str, ...] = ()
    early_stopping_patience: int = 0
    replay_fraction: float = DEFAULT_REPLAY_FRACTION
    # Only for method "dpo": how far the policy may move from the base model (OpenAI's beta).
    beta: float = DEFAULT_BETA
    metadata: dict[str, str] = field(default_factory=dict)
    # Only for method "distillation".
    teacher: TeacherRef | None = None

    def method_dict(self) -> dict:
        teacher = {"teacher": asdict(self.teacher)} if self.teacher is not None else {}
        return {
            "type": self.method,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            **({"target_modules": list(self.target_modules)} if self.target_modules else {}),
            "early_stopping_patience": self.early_stopping_patience,
            "replay_fraction": self.replay_fraction,
            **({"beta": self.beta} if self.method == "dpo" else {}),
            **teacher,
        }

    def hyperparameters_dict(self) -> dict:
        return asdict(self.hyperparameters)


def validate_teacher(teacher: TeacherRef | None, teacher_keys: Mapping[str, str]) -> None:
    """A distillation teacher: an http(s) URL, a model, and the name of a configured key, bound to
    that URL so a job cannot send the operator's key to a server of its own choosing."""
    if teacher is None:
        raise InvalidArgument("method.type 'distillation' needs method.teacher (base_url, model, api_key_name)",
                              param="method.teacher")
    if not teacher.base_url.startswith(("http://", "https://")) or len(teacher.base_url) > 2048:
        raise InvalidArgument("method.teacher.base_url must be an http(s) URL, such as https://api.openai.com/v1",
                              param="method.teacher.base_url")
    if not _TEACHER_MODEL.match(teacher.model):
        raise InvalidArgument("method.teacher.model is required: the teacher's model name, without spaces",
                              param="method.teacher.model")
    if not teacher.api_key_name:
        return  # a teacher that asks for no key, such as a vLLM server inside the cluster
    if not _KEY_NAME.match(teacher.api_key_name):
        raise InvalidArgument("method.teacher.api_key_name must be up to 63 letters, digits, '.', '_' or '-'",
                              param="method.teacher.api_key_name")
    if teacher.api_key_name not in teacher_keys:
        configured = ", ".join(sorted(teacher_keys)) or "none"
        raise InvalidArgument(
            f"method.teacher.api_key_name {teacher.api_key_name!r} is not a configured teacher key "
            f"(configured: {configured}); the operator sets them in TUNELOOP_TEACHER_API_KEYS",
            param="method.teacher.api_key_name",
        )
    bound = teacher_keys[teacher.api_key_name].rstrip("/")
    if teacher.base_url.rstrip("/") != bound:
        raise InvalidArgument(f"the teacher key {teacher.api_key_name!r} is for {bound}, not {teacher.base_url}",
                              param="method.teacher.base_url")


def validate_job(spec: JobSpec, *, known_models: list[str], cuda_available: bool,
                 teacher_keys: Mapping[str, str] | None = None, qlora_on_cpu: bool = False,
                 bitsandbytes_installed: bool = True, max_lr_multiplier: float = 10.0) -> None:
    """Refuse a job that cannot run, naming the field, before anything is stored. `teacher_keys`: the
    configured teacher key names and the base URL each is for; `qlora_on_cpu`: the operator lets
    QLoRA run on a machine without a GPU (bitsandbytes has a CPU backend, slower than bf16 LoRA)."""
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
    if spec.method == "qlora" and not cuda_available and not qlora_on_cpu:
        raise FailedPrecondition(
            "QLoRA trains a 4-bit (NF4) model through bitsandbytes and needs a CUDA GPU; this machine has none. "
            "Use method.type 'supervised' (LoRA) on the CPU.",
            param="method.type",
            code="gpu_required",
        )
    if spec.method == "qlora" and not bitsandbytes_installed:
        raise FailedPrecondition(
            "QLoRA needs bitsandbytes, which the 'gpu' extra installs (pip install 'tuneloop[gpu]'); "
            "it is not installed here",
            param="method.type",
            code="bitsandbytes_required",
        )
    if spec.method == "distillation":
        validate_teacher(spec.teacher, teacher_keys or {})
    elif spec.teacher is not None:
        raise InvalidArgument("method.teacher is only for method.type 'distillation'", param="method.teacher")
    if not 0 < spec.beta <= 10:
        raise InvalidArgument(f"beta must be above 0 and at most 10, got {spec.beta}",
                              param="method.dpo.hyperparameters.beta")
    hp = spec.hyperparameters
    if hp.n_epochs is not None and not 1 <= hp.n_epochs <= 50:
        raise InvalidArgument("n_epochs must be between 1 and 50", param="hyperparameters.n_epochs")
    if hp.batch_size is not None and not 1 <= hp.batch_size <= 256:
        raise InvalidArgument("batch_size must be between 1 and 256", param="hyperparameters.batch_size")
    if hp.learning_rate_multiplier is not None and not 0 < hp.learning_rate_multiplier <= max_lr_multiplier:
        raise InvalidArgument(f"learning_rate_multiplier must be above 0 and at most {max_lr_multiplier:g}",
                              param="hyperparameters.learning_rate_multiplier")
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


def validate_full_size(n_parameters: int | None, limit: int) -> None:
    """Refuse full fine-tuning of a base model too large to train every weight of on this machine."""
    if n_parameters is not None and n_parameters > limit:
        raise FailedPrecondition(
            f"method.type 'full' trains every weight and is limited to base models of at most {limit:,} parameters "
            f"on this machine; this one has {n_parameters:,}. Use method.type 'supervised' (LoRA) instead.",
            param="method.type",
            code="model_too_large",
        )


def validate_training_format(method: str, dataset_format: str, param: str) -> None:
    """DPO learns from preference pairs and every other method from chats: refuse a file of the other kind."""
    if method == "dpo" and dataset_format != "preference":
        raise InvalidArgument(
            f"{param}: method.type 'dpo' needs preference pairs ({{\"input\", \"preferred_output\", "
            f"\"non_preferred_output\"}} on every line); this file holds {dataset_format or 'other'} examples",
            param=param,
        )
    if method != "dpo" and dataset_format == "preference":
        raise InvalidArgument(
            f"{param}: this file holds preference pairs, which only method.type 'dpo' trains on; "
            f"method.type {method!r} needs chat examples ({{\"messages\": [...]}})",
            param=param,
        )


def learning_rate_for(method: str, learning_rate_multiplier: float) -> float:
    return BASE_LEARNING_RATES.get(method, BASE_LEARNING_RATE) * learning_rate_multiplier


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


def is_fine_tuned_id(model_id: str) -> bool:
    return model_id.startswith("ft:")


def suffix_for(name: str) -> str:
    """A valid suffix made from a name (a deployment's): lower-case letters, digits and '-'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].rstrip("-")
