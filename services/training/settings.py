from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from services.shared.settings import DEFAULT_SERVICE_PORTS, ServiceSettings
from services.training.jobs import DEFAULT_REPLAY_FRACTION
from services.training.kubernetes import KubernetesRunner


class TeacherKey(BaseModel):
    """An API key for distillation teachers, usable only with the endpoint it was issued for."""

    base_url: str
    api_key: SecretStr


LOOP_MAX_LR_MULTIPLIER = 1000.0


class TrainingSettings(ServiceSettings):
    grpc_port: int = DEFAULT_SERVICE_PORTS["training"]
    # Jobs training at once; each is its own process using every core, so 1 on a CPU machine.
    max_concurrent_jobs: int = 1
    # How many times a job whose process was lost (a crash, a killed service) is started again.
    max_job_attempts: int = 3
    # Largest base model method.type "full" may train. Every weight is float32 with its gradient and
    # two AdamW moments: ~16 bytes a parameter before activations, 8 GB at 500M, about what a CPU
    # machine can spare and still finish.
    max_full_parameters: int = Field(default=500_000_000, ge=1)
    # method.type "qlora" on a machine without a CUDA GPU: bitsandbytes runs NF4 on the CPU too, but
    # slower than the bf16 LoRA the CPU is good at, so it is refused unless the operator allows it
    # (to save memory on a large base, or to try QLoRA before moving it to a GPU).
    qlora_on_cpu: bool = False
    # bf16 base weights and autocast in training: unset, where the device computes bf16 natively (a
    # GPU that has it, a CPU with AVX512-BF16 or AMX); false keeps every run in float32 (bit-stable
    # results across machines and process counts, about half the speed on such a CPU).
    training_bf16: bool | None = None
    # Teacher keys by name, as JSON: {"openai": {"base_url": "https://api.openai.com/v1", "api_key": "sk-..."}}.
    # A distillation job names one (method.teacher.api_key_name); the key itself never enters a job record.
    teacher_api_keys: dict[str, TeacherKey] = Field(default_factory=dict)
    # Teacher requests in flight at once per job, and the SDK's retries of a 429 or 5xx answer.
    teacher_concurrency: int = Field(default=8, ge=1, le=64)
    teacher_max_retries: int = Field(default=4, ge=0, le=10)
    teacher_timeout_s: float = Field(default=120.0, gt=0)
    # "local": each job trains in a subprocess here. "kubernetes": each job is rendered as a Job
    # manifest (settings below) into its job directory; this service does not submit it.
    runner: Literal["local", "kubernetes"] = "local"
    kubernetes: KubernetesRunner = Field(default_factory=KubernetesRunner)

    # The feedback loop's retraining jobs (events.py): their hyperparameters, 0 meaning "auto", and the
    # share of general examples replayed against forgetting.
    loop_n_epochs: int = Field(default=0, ge=0, le=50)
    loop_batch_size: int = Field(default=0, ge=0, le=256)
    # Unlike a request's, not capped at 10: full fine-tuning's base rate (2e-5) suits large models, and
    # the operator of a small one may need far more.
    loop_learning_rate_multiplier: float = Field(default=0.0, ge=0, le=LOOP_MAX_LR_MULTIPLIER)
    # "supervised" (LoRA) or "full"; empty: "full" when the deployed version is a full fine-tune, else LoRA.
    loop_method: Literal["", "supervised", "full"] = ""
    loop_replay_fraction: float = Field(default=DEFAULT_REPLAY_FRACTION, ge=0, le=0.9)

    # provider "openai": the OpenAI-compatible fine-tuning API a job may run on instead of here.
    provider_base_url: str = ""
    provider_api_key: SecretStr = SecretStr("")
    # How often a remote job is polled for its status, events and checkpoints.
    provider_poll_s: float = Field(default=5.0, gt=0)

    @property
    def provider_configured(self) -> bool:
        return bool(self.provider_base_url and self.provider_api_key.get_secret_value())

    def teacher_key_urls(self) -> dict[str, str]:
        """Each configured teacher key's name and the base URL it is for (no key material)."""
        return {name: key.base_url for name, key in self.teacher_api_keys.items()}
