from pydantic import Field, SecretStr

from services.shared.settings import DEFAULT_SERVICE_PORTS, ServiceSettings


class EvaluationSettings(ServiceSettings):
    grpc_port: int = DEFAULT_SERVICE_PORTS["evaluation"]
    # One ComputeMetrics call scores at most this many pairs.
    max_pairs: int = 100_000
    # Held-out examples one evaluation may have.
    max_examples: int = Field(default=2000, ge=1)
    # Tokens per answer when a request does not say, and the most it may ask for.
    answer_tokens: int = Field(default=64, ge=1)
    max_answer_tokens: int = Field(default=1024, ge=1)
    # Answers asked of the inference service at once (it batches them).
    concurrency: int = Field(default=8, ge=1)
    # Seconds between looks for queued evaluations when nothing wakes the worker.
    poll_s: float = Field(default=2.0, gt=0)
    # What one thousand trained tokens cost, for the cost-and-worth report (OpenAI's price for small
    # models by default; set what a job costs on your machines).
    training_price_per_1k_tokens: float = Field(default=0.008, ge=0)
    # The judge model (any OpenAI-compatible endpoint) that grades answers when an evaluation asks
    # for it; its key is configured here, never sent in a request.
    judge_base_url: str = ""
    judge_model: str = ""
    judge_api_key: SecretStr = SecretStr("")
    # Seconds one call to another service may take.
    call_timeout_s: float = Field(default=120.0, gt=0)
