"""What the `vllm` backend hands vLLM and what it makes of vLLM's answers, in functions that need no
GPU: our requests as AsyncEngineArgs' and SamplingParams' fields, an adapter's directory checked
before vLLM reads it, and RequestOutputs turned into our streamed pieces and Generations.

The attribute names are vLLM 0.33.0's, as read in its wheel: vllm/engine/arg_utils.py
(AsyncEngineArgs), vllm/sampling_params.py (SamplingParams), vllm/outputs.py (RequestOutput,
CompletionOutput), vllm/logprobs.py (Logprob, FlatLogprobs), vllm/v1/engine/parallel_sampling.py (the
n child requests and their seeds).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.inference.decoding import FinishReason, GeneratedToken, Generation
from services.inference.fine_tuned import FineTuned
from services.shared.errors import FailedPrecondition, Unavailable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# on_text(choice index, text, the tokens generated since the choice's previous piece)
OnText = Callable[[int, str, list[GeneratedToken]], None]


def engine_fields(model_path: Path, *, dtype: str, max_adapters: int, max_loras: int, max_lora_rank: int,
                  gpu_memory_utilization: float, max_model_len: int) -> dict[str, Any]:
    """AsyncEngineArgs' fields for serving the base model at `model_path` with LoRA adapters: its
    weights from safetensors only, no code shipped with the model, and vLLM's CPU cache of adapters
    as large as ours (an adapter we keep loaded is one vLLM keeps)."""
    fields: dict[str, Any] = dict(
        model=str(model_path), tokenizer=str(model_path), dtype=dtype, load_format="safetensors",
        trust_remote_code=False, enable_lora=True, max_loras=max_loras, max_lora_rank=max_lora_rank,
        max_cpu_loras=max_adapters, gpu_memory_utilization=gpu_memory_utilization, disable_log_stats=True)
    if max_model_len:
        fields["max_model_len"] = max_model_len
    return fields


def sampling_fields(*, n: int, max_tokens: int, temperature: float, top_p: float, seed: int | None,
                    stop: Sequence[str]) -> dict[str, Any]:
    """SamplingParams' fields for one of our requests.

    Greedy (temperature 0, or top_p 0: only the most likely token) is one row: vLLM refuses n > 1
    when greedy, and the n greedy answers are the same, so `Choices` copies that row n times.
    Sampling, vLLM seeds its n child requests with seed + index, as the transformers backend does.
    `logprobs` 0 returns the sampled token's own log-probability only; vLLM's default logprobs_mode,
    "raw_logprobs", takes it from the model's logits before temperature and top_p, as
    GeneratedToken.logprob is. The text is cumulative (SamplingParams' default output_kind) and
    without special tokens or the stop string, as ours is."""
    greedy = temperature == 0 or top_p == 0
    return {"n": 1 if greedy else n, "temperature": 0.0 if greedy else float(temperature),
            "top_p": 1.0 if greedy else float(top_p), "seed": None if greedy else seed, "stop": list(stop),
            "max_tokens": max_tokens, "logprobs": 0, "skip_special_tokens": True}


def finish_of(reason: str | None, stop_reason: int | str | None) -> tuple[FinishReason, str]:
    """(our finish reason, the stop string that ended it or "") from a CompletionOutput's
    finish_reason and stop_reason. vLLM's "abort" is a cancelled request, which ends "length" as the
    transformers backend's does (the servicer logs it as cancelled); "repetition" ended it early."""
    if reason == "error":
        raise Unavailable("the vLLM engine failed the request")
    stop_sequence = stop_reason if isinstance(stop_reason, str) else ""
    return ("length" if reason in (None, "length", "abort") else "stop"), stop_sequence


def sampled_logprob(logprobs: Any, position: int, token_id: int) -> float:
    """The log-probability vLLM reports for the token it chose at `position` (SampleLogprobs: a list
    of {token id: Logprob}, or FlatLogprobs, which indexes the same way)."""
    if logprobs is None or position >= len(logprobs):
        return 0.0
    entry = logprobs[position].get(token_id)
    return float(entry.logprob) if entry is not None else 0.0


def answer_logprob(prompt_logprobs: Any, full_ids: list[int], answer_start: int) -> float:
    """The sum of the answer's log-probabilities from vLLM's prompt_logprobs (requested as 0: each
    prompt token's own; position 0, which nothing predicts, is None)."""
    return sum(float(prompt_logprobs[position][full_ids[position]].logprob)
               for position in range(answer_start, len(full_ids)))


def adapter_directory(fine_tuned: FineTuned, max_lora_rank: int) -> str:
    """The absolute directory vLLM loads `fine_tuned`'s LoRA adapter from, once it is known to be a
    PEFT adapter in safetensors that fits the engine's slots. Checked here because vLLM reads a
    relative path that does not exist as a Hugging Face repo id to download
    (get_adapter_absolute_path, vllm/lora/utils.py), falls back to adapter_model.bin, a pickle
    (vllm/lora/lora_model.py), and refuses a rank above max_lora_rank only inside the engine."""
    directory = fine_tuned.path.expanduser().resolve()
    config_file = directory / "adapter_config.json"
    if not config_file.is_file() or not (directory / "adapter_model.safetensors").is_file():
        raise FailedPrecondition(f"{fine_tuned.model_id}: {directory} is not a PEFT adapter in safetensors "
                                 "(adapter_config.json and adapter_model.safetensors)", param="model",
                                 code="model_not_available")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FailedPrecondition(f"{fine_tuned.model_id}: unreadable {config_file}: {error}", param="model",
                                 code="model_not_available") from None
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1 for rank in ranks):
        raise FailedPrecondition(f"{fine_tuned.model_id}: {config_file} has no valid LoRA rank: {ranks!r}",
                                 param="model", code="model_not_available")
    if max(ranks) > max_lora_rank:
        raise FailedPrecondition(f"{fine_tuned.model_id} has LoRA rank {max(ranks)}, above the vllm backend's "
                                 f"max_lora_rank of {max_lora_rank}: start it with TUNELOOP_VLLM_MAX_LORA_RANK "
                                 "at least that", param="model", code="lora_rank_too_high")
    return str(directory)


@dataclass
class _Row:
    """One row vLLM generates, as streamed so far."""

    text: str = ""
    tokens: list[GeneratedToken] = field(default_factory=list)
    reported: int = 0  # tokens handed to on_text
    finish: FinishReason = "length"
    stop_sequence: str = ""
    first_token_at: float | None = None


class Choices:
    """The n choices of one request from vLLM's RequestOutputs. Each RequestOutput holds, for each
    row that moved (CompletionOutput.index), its whole text and token ids so far; what is new goes to
    `on_text(choice, text, tokens)`. Greedy, one row stands for all n choices (sampling_fields)."""

    def __init__(self, n: int, rows: int, *, prompt_tokens: int, tokenizer: PreTrainedTokenizerBase,
                 on_text: OnText | None = None):
        self._n = n
        self._rows = [_Row() for _ in range(rows)]
        self._prompt_tokens = prompt_tokens
        self._tokenizer = tokenizer
        self._special_ids = set(tokenizer.all_special_ids)
        self._on_text = on_text

    def update(self, output: Any) -> None:
        """Take in one RequestOutput."""
        for completion in output.outputs:
            row = self._rows[completion.index]
            token_ids = list(completion.token_ids)
            for position in range(len(row.tokens), len(token_ids)):
                token_id = token_ids[position]
                row.tokens.append(GeneratedToken(token_id, self._tokenizer.decode([token_id]),
                                                 sampled_logprob(completion.logprobs, position, token_id),
                                                 token_id in self._special_ids))
            if row.tokens and row.first_token_at is None:
                row.first_token_at = time.perf_counter()
            # vLLM's cumulative text only grows: it holds back what could still become a stop string
            # until the string is decided (IncrementalDetokenizer, vllm/v1/engine/detokenizer.py).
            piece, row.text = completion.text[len(row.text):], completion.text
            finished = completion.finish_reason is not None
            if finished:
                row.finish, row.stop_sequence = finish_of(completion.finish_reason, completion.stop_reason)
            if self._on_text is not None and (piece or (finished and row.reported < len(row.tokens))):
                fresh, row.reported = row.tokens[row.reported:], len(row.tokens)
                for choice in self._choices_of(completion.index):
                    self._on_text(choice, piece, fresh)

    def generations(self) -> list[Generation]:
        made = [Generation(row.text, row.finish, prompt_tokens=self._prompt_tokens, completion_tokens=len(row.tokens),
                           tokens=tuple(row.tokens), stop_sequence=row.stop_sequence,
                           first_token_at=row.first_token_at) for row in self._rows]
        return made if len(made) == self._n else made * self._n

    def _choices_of(self, row: int) -> range:
        return range(self._n) if len(self._rows) < self._n else range(row, row + 1)
