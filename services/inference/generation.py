"""Text generation with the `transformers` backend: one request at a time per model, on CPU.

The decoding loop is written out rather than delegated to `model.generate` because each request
needs its own random generator (a seed must give the same text whatever other threads sample),
stop strings checked as tokens arrive, and an exact finish reason. Batching comes later.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from services.shared.errors import InvalidArgument, NotImplementedYet
from services.shared.models import ModelStore

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ROLES = frozenset({"system", "user", "assistant"})
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class _LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_ids: frozenset[int]
    context_length: int


class Generator:
    """Loads each model on first use, keeps it, and serialises the requests to it.

    Thread-safe: the gRPC server calls `generate` from `asyncio.to_thread`.
    """

    def __init__(self, store: ModelStore):
        self._store = store
        self._models: dict[str, _LoadedModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def generate(
        self,
        model_id: str,
        *,
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> Generation:
        """Complete a chat (`messages`, rendered with the model's chat template) or a raw `prompt`.

        Greedy when `temperature` is 0. Stop strings are cut from the text and end generation
        with finish_reason "stop", as an end-of-sequence token does.
        """
        _check_request(messages, prompt, max_tokens, temperature, top_p, seed, stop)
        if model_id.startswith("ft:"):
            raise NotImplementedYet(
                f"serving fine-tuned models ({model_id}) is not implemented yet: this backend loads base models "
                "only, neither LoRA adapters nor full fine-tunes (the registry's model directory with its "
                "tuneloop-adapter.json says which)",
                param="model",
            )
        self._store.check_known(model_id)
        with self._lock_for(model_id):
            loaded = self._models.get(model_id)
            if loaded is None:
                loaded = self._models[model_id] = _load(self._store, model_id)
            input_ids = _encode(loaded.tokenizer, model_id, messages, prompt)
            field = "messages" if messages is not None else "prompt"
            if len(input_ids) + max_tokens > loaded.context_length:
                raise InvalidArgument(
                    f"{field} ({len(input_ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                    f"context length of {model_id} ({loaded.context_length} tokens)",
                    param="max_tokens",
                )
            return _decode(loaded, input_ids, max_tokens, temperature, top_p, seed, list(stop))

    def _lock_for(self, model_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(model_id, threading.Lock())


def _check_request(
    messages: list[dict[str, Any]] | None,
    prompt: str | None,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    stop: Sequence[str],
) -> None:
    """Validate what needs no model, so a bad request never waits for a model to load."""
    if (messages is None) == (prompt is None):
        raise InvalidArgument("give exactly one of messages or prompt", param="messages")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise InvalidArgument("messages must be a non-empty list", param="messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise InvalidArgument("each message must be an object", param=f"messages[{index}]")
            role = message.get("role")
            if role not in ROLES:
                raise InvalidArgument(
                    f"unknown role {role!r}; expected one of {', '.join(sorted(ROLES))}",
                    param=f"messages[{index}].role",
                )
            if not isinstance(message.get("content"), str):
                raise InvalidArgument("content must be a string", param=f"messages[{index}].content")
    elif not isinstance(prompt, str) or not prompt:
        raise InvalidArgument("prompt must be a non-empty string", param="prompt")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise InvalidArgument(f"max_tokens must be an integer >= 0, got {max_tokens!r}", param="max_tokens")
    if not isinstance(temperature, int | float) or not (0 <= temperature <= 2):
        raise InvalidArgument(
            f"temperature must be between 0 and 2, got {temperature!r}", param="temperature"
        )
    if not isinstance(top_p, int | float) or not (0 <= top_p <= 1):
        raise InvalidArgument(f"top_p must be between 0 and 1, got {top_p!r}", param="top_p")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidArgument(f"seed must be an integer, got {seed!r}", param="seed")
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidArgument("stop must be a list of non-empty strings", param="stop")


def _load(store: ModelStore, model_id: str) -> _LoadedModel:
    model, tokenizer = store.load(model_id)
    eos = model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return _LoadedModel(model, tokenizer, frozenset(eos_ids), int(context))


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    model_id: str,
    messages: list[dict[str, Any]] | None,
    prompt: str | None,
) -> list[int]:
    if messages is None:
        return list(tokenizer(prompt)["input_ids"])
    if not tokenizer.chat_template:
        raise InvalidArgument(f"model {model_id} has no chat template; send a prompt", param="messages")
    chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    # The template already wrote the special tokens it wants; adding more would change the prompt.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _decode(
    loaded: _LoadedModel,
    input_ids: list[int],
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    stop: list[str],
) -> Generation:
    import torch

    rng: torch.Generator | None = None
    if temperature > 0:
        rng = torch.Generator()
        if seed is None:
            rng.seed()
        else:
            rng.manual_seed(seed)
    model, tokenizer = loaded.model, loaded.tokenizer
    completion: list[int] = []
    finish: FinishReason = "length"
    cut: int | None = None
    past = None
    step_input = torch.tensor([input_ids], device=model.device)
    with torch.inference_mode():
        for _ in range(max_tokens):
            output = model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = output.past_key_values
            token = _pick(output.logits[0, -1].float(), temperature, top_p, rng)
            completion.append(token)
            if token in loaded.eos_ids:
                finish = "stop"
                break
            if stop:
                cut = _earliest_stop(tokenizer.decode(completion, skip_special_tokens=True), stop)
                if cut is not None:
                    finish = "stop"
                    break
            step_input = torch.tensor([[token]], device=model.device)
    text = tokenizer.decode(completion, skip_special_tokens=True)
    if cut is not None:
        text = text[:cut]
    return Generation(text, finish, prompt_tokens=len(input_ids), completion_tokens=len(completion))


def _pick(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator | None) -> int:
    """Greedy at temperature 0; otherwise sample from the smallest set of tokens whose
    probability reaches top_p (top_p 0 keeps only the most likely token)."""
    import torch

    if temperature == 0 or rng is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1:
        return int(torch.multinomial(probs, 1, generator=rng))
    sorted_probs, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(sorted_probs, dim=0) - sorted_probs < top_p
    keep[0] = True
    choice = torch.multinomial(sorted_probs * keep, 1, generator=rng)
    return int(order[choice])


def _earliest_stop(text: str, stop: list[str]) -> int | None:
    positions = [index for s in stop if (index := text.find(s)) >= 0]
    return min(positions) if positions else None
