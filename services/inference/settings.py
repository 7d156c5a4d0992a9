from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from services.inference.precision import ServingDtype
from services.inference.remote import RemoteModel
from services.shared.settings import DEFAULT_SERVICE_PORTS, ServiceSettings

# The LoRA ranks vLLM can be started for (its LoRAConfig.max_lora_rank, MaxLoRARanks in
# vllm/config/lora.py of vLLM 0.33): it sizes its adapter slots by one of these.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The fewest keys a compiled decoding step is built for (compiled_decode.py): a smaller one would serve almost nothing.
MIN_COMPILED_DECODE_CAPACITY = 16


class InferenceSettings(ServiceSettings):
    grpc_port: int = DEFAULT_SERVICE_PORTS["inference"]
    # max_tokens when a request leaves it at 0.
    default_max_tokens: int = 256
    # Requests generating or waiting for a model at once; more are refused with RESOURCE_EXHAUSTED
    # (HTTP 429 with Retry-After) instead of queueing without end.
    max_queued_requests: int = Field(default=64, ge=1)
    # Requests one model decodes together (the `transformers` backend's batch); more wait their turn.
    max_batch_size: int = Field(default=16, ge=1)
    # The most choices (OpenAI's `n`) one request may ask for; each is a row of the batch.
    max_choices: int = Field(default=8, ge=1, le=128)
    # What the `transformers` backend computes in (TUNELOOP_INFERENCE_DTYPE): "auto" is bfloat16 where
    # the machine computes it natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU with bf16), about
    # twice float32's speed there, and float32 elsewhere; "float32" or "bfloat16" choose (precision.py).
    inference_dtype: ServingDtype = "auto"
    # Prompt prefixes (a chat's system prompt and earlier turns) whose keys and values each model keeps,
    # so requests repeating one read only the rest of their prompt; 0 turns the prefix cache off.
    prefix_cache_prompts: int = Field(default=4, ge=0)
    # How many levels of CPU priority (Linux nice) the `transformers` backend's compute threads run
    # below the rest of the service, so that a request's own work (gRPC, templates, sending its first
    # token) gets a core at once while batches decode; 0 keeps them equal (batching._lower_own_priority).
    engine_nice: int = Field(default=10, ge=0, le=19)
    # The `transformers` backend's decoding steps compiled ahead of time (compiled_decode.py): the keys
    # a compiled step may cover (prompt and answer so far; at most the model's context), 0 for none.
    # The first load of a model starts building its package in the background (60-130 s for SmolLM2
    # on 2 cores, once per model, shape and torch version, kept under data_dir/compiled; it needs a C++
    # compiler) and serves eagerly meanwhile; then steps of up to compiled_decode_rows base-model rows
    # within that many keys run compiled (SmolLM2 in bf16, 8 rows over ~100 keys: 32 -> 19 ms a step on
    # an AMD EPYC), the others as before.
    compiled_decode_capacity: int = Field(default=2048, ge=0, le=32768)
    compiled_decode_rows: int = Field(default=8, ge=1, le=256)
    # LoRA adapters kept loaded per base model; past it, the least recently used idle one is unloaded.
    max_adapters: int = Field(default=8, ge=1)
    # Which backend serves the models held here (TUNELOOP_INFERENCE_BACKEND): "transformers" (this
    # process's own engine, on the CPU), or "vllm": vLLM's engine on a CUDA GPU serving the default
    # base model and its LoRA adapters (vllm_backend.py; needs the gpu extra).
    inference_backend: Literal["transformers", "vllm"] = "transformers"
    # The vllm backend: adapters decoded in one batch (vLLM's max_loras, its GPU slots; requests to
    # more adapters wait for a slot), at most max_adapters.
    vllm_max_loras: int = Field(default=4, ge=1)
    # The highest LoRA rank it serves (vLLM's max_lora_rank; one of VLLM_LORA_RANKS): its slots are
    # sized for it, and adapters of a higher rank are refused with the reason.
    vllm_max_lora_rank: int = 16
    # The share of the GPU's memory vLLM takes: the weights, then as many KV cache blocks as fit.
    vllm_gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    # The context length vLLM plans its KV cache for; 0: the model's own.
    vllm_max_model_len: int = Field(default=0, ge=0)
    # What this machine costs an hour: each completion's estimated cost is its latency's share of it.
    price_per_hour_usd: float = Field(default=0.0, ge=0)
    # What the completion log keeps of prompts and answers: "full"; "redacted", with personal data
    # replaced by placeholders by the data-prep service, as in datasets; or "none" (counts and times).
    log_texts: Literal["full", "redacted", "none"] = "full"
    # Completions older than this many days are deleted from the log; 0 keeps them forever.
    log_retention_days: int = Field(default=90, ge=0)
    # How often the log is swept for completions past their retention.
    log_sweep_s: float = Field(default=3600.0, gt=0)
    # Models another OpenAI-compatible server answers for, by our id, as JSON:
    # {"gpt-mini": {"base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini", "api_key": "sk-..."}}.
    remote_models: dict[str, RemoteModel] = Field(default_factory=dict)
    # The fine-tuning provider (the training service's same settings): models tuned there answer from there.
    provider_base_url: str = ""
    provider_api_key: SecretStr = SecretStr("")
    # A candidate that passes its evaluation on an auto_promote deployment first takes this share of
    # the deployment's requests (a canary), and is promoted to all of them after auto_canary_s
    # seconds unless a person promotes, rolls back or changes the canary first; 0 s promotes at once.
    auto_canary_percent: int = Field(default=10, ge=1, le=99)
    auto_canary_s: int = Field(default=600, ge=0)
    # How often the service looks for canaries whose time is up.
    canary_check_s: float = Field(default=5.0, gt=0)

    @field_validator("compiled_decode_capacity")
    @classmethod
    def _off_or_enough_keys(cls, capacity: int) -> int:
        if 0 < capacity < MIN_COMPILED_DECODE_CAPACITY:
            raise ValueError(f"compiled_decode_capacity (TUNELOOP_COMPILED_DECODE_CAPACITY) must be 0 (off) or at "
                             f"least {MIN_COMPILED_DECODE_CAPACITY} keys; got {capacity}")
        return capacity

    @field_validator("vllm_max_lora_rank")
    @classmethod
    def _a_rank_vllm_serves(cls, rank: int) -> int:
        if rank not in VLLM_LORA_RANKS:
            raise ValueError(f"vllm_max_lora_rank (TUNELOOP_VLLM_MAX_LORA_RANK) must be one of "
                             f"{', '.join(map(str, VLLM_LORA_RANKS))}; got {rank!r}")
        return rank

    @model_validator(mode="after")
    def _vllm_slots_fit_the_adapters(self) -> "InferenceSettings":
        if self.inference_backend == "vllm" and self.vllm_max_loras > self.max_adapters:
            raise ValueError(f"vllm_max_loras ({self.vllm_max_loras}) cannot exceed max_adapters "
                             f"({self.max_adapters}): vLLM keeps every adapter of a batch loaded")
        return self
