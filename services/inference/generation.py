"""Text generation with the `transformers` backend: one request at a time per model, on CPU.

The decoding loop is written out rather than delegated to `model.generate` because each request
needs its own random generator (a seed must give the same text whatever other threads sample),
stop strings checked as tokens arrive, and an exact finish reason. Batching comes later.

Fine-tuned models: a LoRA adapter is loaded into its base model's one copy with peft (each
adapter under its own name, switched per request; base requests run with adapters disabled), so
a base model is in memory once however many adapters it serves; a full fine-tune is a model of
its own. Either renders prompts with the chat template it was trained with (fine_tuned.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from services.inference.fine_tuned import FineTuned, check_chat_template
from services.shared.errors import InvalidArgument
from services.shared.models import ModelStore

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ROLES = frozenset({"system", "user", "assistant"})
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GeneratedToken:
    id: int
    text: str
    logprob: float  # under the model itself: temperature 1, before top_p
    special: bool


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # Every generated token, the last included (end of sequence, or those of the stop string).
    tokens: tuple[GeneratedToken, ...] = ()
    # The stop string that ended it, if one did.
    stop_sequence: str = ""
    # time.perf_counter() when the first token was chosen (None: no token was asked for).
    first_token_at: float | None = field(default=None, compare=False)


@dataclass
class _LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_ids: frozenset[int]
    context_length: int
    # Set once the first adapter is loaded: the same weights, wrapped by peft.
    peft: Any = None
    # Loaded LoRA adapters by model id: (peft adapter name, the tokenizer they were trained with).
    adapters: dict[str, tuple[str, PreTrainedTokenizerBase]] = field(default_factory=dict)


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
        fine_tuned: FineTuned | None = None,
        on_text: Callable[[str, list[GeneratedToken]], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Complete a chat (`messages`, rendered with the model's chat template) or a raw `prompt`.

        Greedy when `temperature` is 0. Stop strings are cut from the text and end generation
        with finish_reason "stop", as an end-of-sequence token does. A fine-tuned `model_id` comes
        with its registry entry, `fine_tuned` (the caller resolved it for the tenant).

        Streaming: `on_text` gets the text as it is decided (never a part of a stop string or of
        a character still being decoded), in pieces that add up to the returned text, each with
        the tokens generated since the previous call (all of them, by the last call). Setting
        `cancel` ends the generation after the current token and frees the model for others.
        """
        check_request(messages, prompt, max_tokens, temperature, top_p, seed, stop)
        if fine_tuned is None:
            if model_id.startswith("ft:"):
                raise InvalidArgument(f"{model_id} is a fine-tuned model; resolve it in the registry first",
                                      param="model")
            self._store.check_known(model_id)
        # A LoRA adapter runs on its base model's one copy, under that model's lock.
        key = fine_tuned.base_model if fine_tuned is not None and fine_tuned.kind == "lora" else model_id
        with self._lock_for(key):
            loaded = self._models.get(key)
            if loaded is None:
                loaded = self._models[key] = _load(self._store, key) if fine_tuned is None or fine_tuned.kind == "lora" \
                    else _load_full(fine_tuned)
            model, tokenizer = loaded.model, loaded.tokenizer
            if fine_tuned is not None and fine_tuned.kind == "lora":
                name, tokenizer = _adapter(loaded, fine_tuned)
                loaded.peft.set_adapter(name)
                model = loaded.peft
            input_ids = _encode(tokenizer, model_id, messages, prompt)
            field_name = "messages" if messages is not None else "prompt"
            if len(input_ids) + max_tokens > loaded.context_length:
                raise InvalidArgument(
                    f"{field_name} ({len(input_ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                    f"context length of {model_id} ({loaded.context_length} tokens)",
                    param="max_tokens",
                )
            base_request_on_adapted = fine_tuned is None and loaded.peft is not None
            with loaded.peft.disable_adapter() if base_request_on_adapted else contextlib.nullcontext():
                return _decode(model, tokenizer, loaded.eos_ids, input_ids, max_tokens, temperature, top_p, seed,
                               list(stop), on_text, cancel)

    def _lock_for(self, model_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(model_id, threading.Lock())


def check_request(
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
    return _loaded(*store.load(model_id))


def _load_full(fine_tuned: FineTuned) -> _LoadedModel:
    """A full fine-tune: a whole model of its own, with the tokenizer it was trained with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fine_tuned.path, local_files_only=True, trust_remote_code=False)
    check_chat_template(fine_tuned, tokenizer.chat_template)
    model = AutoModelForCausalLM.from_pretrained(fine_tuned.path, dtype=torch.float32, local_files_only=True,
                                                 use_safetensors=True, trust_remote_code=False)
    model.eval()
    return _loaded(model, tokenizer)


def _adapter(loaded: _LoadedModel, fine_tuned: FineTuned) -> tuple[str, PreTrainedTokenizerBase]:
    """The peft adapter name of `fine_tuned` in `loaded` and its tokenizer, loading it on first use."""
    if fine_tuned.model_id in loaded.adapters:
        return loaded.adapters[fine_tuned.model_id]
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fine_tuned.path, local_files_only=True, trust_remote_code=False)
    check_chat_template(fine_tuned, tokenizer.chat_template)
    # Model ids hold ':' and '.', which peft's module names cannot.
    name = "ft_" + hashlib.sha256(fine_tuned.model_id.encode()).hexdigest()[:16]
    if loaded.peft is None:
        loaded.peft = PeftModel.from_pretrained(loaded.model, str(fine_tuned.path), adapter_name=name,
                                                is_trainable=False)
    else:
        loaded.peft.load_adapter(str(fine_tuned.path), adapter_name=name, is_trainable=False)
    loaded.peft.eval()
    loaded.adapters[fine_tuned.model_id] = (name, tokenizer)
    return name, tokenizer


def _loaded(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> _LoadedModel:
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
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    eos_ids: frozenset[int],
    input_ids: list[int],
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    stop: list[str],
    on_text: Callable[[str, list[GeneratedToken]], None] | None = None,
    cancel: threading.Event | None = None,
) -> Generation:
    import torch

    rng: torch.Generator | None = None
    if temperature > 0:
        rng = torch.Generator()
        if seed is None:
            rng.seed()
        else:
            rng.manual_seed(seed)
    completion: list[int] = []
    generated: list[GeneratedToken] = []  # the same tokens with their text and log-probability
    special_ids = set(tokenizer.all_special_ids)
    reported = 0  # tokens handed to on_text

    def new_tokens() -> list[GeneratedToken]:
        nonlocal reported
        fresh, reported = generated[reported:], len(generated)
        return fresh

    finish: FinishReason = "length"
    first_token_at: float | None = None
    cut: int | None = None
    past = None
    sent = 0  # characters of the text handed to on_text
    # A stop string may be completed by the next token: hold back that many characters meanwhile.
    hold = max((len(s) for s in stop), default=1) - 1
    step_input = torch.tensor([input_ids], device=model.device)
    with torch.inference_mode():
        for _ in range(max_tokens):
            if cancel is not None and cancel.is_set():
                break
            output = model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = output.past_key_values
            logits = output.logits[0, -1].float()
            token = _pick(logits, temperature, top_p, rng)
            completion.append(token)
            generated.append(GeneratedToken(token, tokenizer.decode([token]),
                                            float(torch.log_softmax(logits, dim=-1)[token]), token in special_ids))
            first_token_at = first_token_at or time.perf_counter()
            if token in eos_ids:
                finish = "stop"
                break
            if stop or on_text is not None:
                text = tokenizer.decode(completion, skip_special_tokens=True)
                cut = _earliest_stop(text, stop) if stop else None
                if cut is not None:
                    finish = "stop"
                    break
                # U+FFFD: a character whose bytes have not all been generated yet.
                ready = (text.find("\ufffd") if "\ufffd" in text else len(text)) - hold
                if on_text is not None and ready > sent:
                    on_text(text[sent:ready], new_tokens())
                    sent = ready
            step_input = torch.tensor([[token]], device=model.device)
    full_text = tokenizer.decode(completion, skip_special_tokens=True)
    text = full_text[:cut] if cut is not None else full_text
    stop_sequence = next((s for s in stop if full_text.find(s) == cut), "") if cut is not None else ""
    if on_text is not None and (len(text) > sent or reported < len(generated)):
        on_text(text[sent:], new_tokens())
    return Generation(text, finish, prompt_tokens=len(input_ids), completion_tokens=len(completion),
                      tokens=tuple(generated),
                      stop_sequence=stop_sequence, first_token_at=first_token_at)


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
