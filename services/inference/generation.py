"""Text generation with the `transformers` backend, on CPU (or the one GPU a model was loaded on).

Each loaded model has an engine (batching.py) whose thread decodes every request to that model in
one batch; `Generator.generate` hands a request over and waits for its answer (or streams it).

Fine-tuned models: a LoRA adapter is loaded into its base model's one copy with peft, each adapter
under its own name; requests to the base model and to any of its adapters share one batch, each
row with its own adapter (peft's mixed-adapter batches). So a base model is in memory once however
many adapters it serves, and at most `max_adapters` adapters are loaded: the one used least
recently, and by no request in flight, is unloaded to make room. A full fine-tune is a model (and
an engine) of its own. Either renders prompts with the chat template it was trained with
(fine_tuned.py).

Every model is loaded in the generator's one dtype (precision.py): bfloat16 where the CPU computes
it natively, float32 elsewhere, unless the `inference_dtype` setting chooses.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.inference import batching
from services.inference.batching import BASE, Engine
from services.inference.decoding import GeneratedToken, Generation
from services.inference.fine_tuned import FineTuned, check_chat_template
from services.inference.precision import check_serving_dtype, serving_dtype
from services.shared.errors import InvalidArgument
from services.shared.models import ModelStore

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["GeneratedToken", "Generation", "Generator", "check_choices", "check_request"]

ROLES = frozenset({"system", "user", "assistant"})

log = logging.getLogger(__name__)


@dataclass
class _LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_ids: frozenset[int]
    context_length: int
    engine: Engine | None = None
    packed: bool = False  # its linear weights are packed for oneDNN (packed_linear.py)
    decoder: Any = None  # its engine's forward pass, when faster than the model's own (llama_decoder.py)
    compiled: Any = None  # its engine's compiled decoding step, when the settings ask for one (compiled_decode.py)
    # The package to build for it (in the background, once its engine serves), when none is built yet.
    compile_later: tuple[Path, Path, int, int] | None = None  # (model directory, package, rows, keys)
    compiling: threading.Thread | None = None  # that build, then its loading into the engine
    # Set once the first adapter is loaded: the same weights, wrapped by peft.
    peft: Any = None
    # Loaded LoRA adapters by model id, least recently used first: (peft adapter name, the
    # tokenizer they were trained with).
    adapters: OrderedDict[str, tuple[str, PreTrainedTokenizerBase]] = field(default_factory=OrderedDict)
    # Requests in flight per peft adapter name: an adapter in use is never unloaded.
    in_use: dict[str, int] = field(default_factory=dict)


class Generator:
    """Loads each model on first use and keeps it; its engine serves every request to it at once.

    Thread-safe: the gRPC server calls `generate` from a thread per request.
    """

    def __init__(self, store: ModelStore, *, max_batch_size: int = 16, max_adapters: int = 8, dtype: str = "auto",
                 prefix_cache_size: int = 4, engine_nice: int = 0, compiled_decode: tuple[int, int] = (8, 0)):
        if max_batch_size < 1 or max_adapters < 1:
            raise ValueError("max_batch_size and max_adapters must be at least 1")
        # Checked now, resolved at the first load: resolving imports torch, which a bad setting
        # should not wait for.
        self._dtype_choice = check_serving_dtype(dtype)
        self._store = store
        self._prefix_cache_size = prefix_cache_size
        self._engine_nice = engine_nice
        # (rows, keys) of the compiled decoding step (compiled_decode.py); 0 keys: none.
        self._compiled_shape = compiled_decode
        self._max_batch_size = max_batch_size
        self._max_adapters = max_adapters
        self._models: dict[str, _LoadedModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def generate(self, model_id: str, *, on_text: Callable[[str, list[GeneratedToken]], None] | None = None,
                 **request: Any) -> Generation:
        """One completion: `generate_choices` with n = 1, whose `on_text` has no choice index."""
        streamed = None if on_text is None else (lambda _index, text, tokens: on_text(text, tokens))
        return self.generate_choices(model_id, n=1, on_text=streamed, **request)[0]

    def generate_choices(
        self,
        model_id: str,
        *,
        n: int = 1,
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        fine_tuned: FineTuned | None = None,
        on_text: Callable[[int, str, list[GeneratedToken]], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Generation]:
        """Complete a chat (`messages`, rendered with the model's chat template) or a raw `prompt`,
        `n` times (OpenAI's choices): the n rows join the batch together and share one reading of
        the prompt. Each Generation counts the prompt's tokens; a response counts them once.

        Greedy when `temperature` is 0 (the n choices are then the same). Sampling, each choice has
        its own generator: seeded with `seed` + its index (as vLLM seeds its n child requests) when a
        seed is given, so the same seed gives the same n answers, and choice 0 is what n = 1 gives.
        Stop strings are cut from the text and end generation with finish_reason "stop", as an
        end-of-sequence token does. A fine-tuned `model_id` comes with its registry entry,
        `fine_tuned` (the caller resolved it for the tenant).

        Streaming: `on_text(index, text, tokens)` gets each choice's text as it is decided (never a
        part of a stop string or of a character still being decoded), in pieces that add up to the
        returned text, each with the tokens generated since the previous call (all of them, by the
        last call). It is called from the engine's thread and must be quick. Setting `cancel` ends
        every choice after the current token and frees their places in the batch.
        """
        check_request(messages, prompt, max_tokens, temperature, top_p, seed, stop)
        check_choices(n)
        with self._using(model_id, fine_tuned) as (loaded, adapter, tokenizer):
            input_ids = encode_prompt(tokenizer, model_id, messages, prompt)
            check_context_length(model_id, messages, input_ids, max_tokens, loaded.context_length)
            if max_tokens == 0:
                return [Generation("", "length", prompt_tokens=len(input_ids), completion_tokens=0)] * n
            # A second render of the template per request: only worth it when there is a cache to use it.
            cached = messages is not None and self._prefix_cache_size > 0
            prefix_length = _prefix_length(tokenizer, messages, input_ids) if cached else 0
            sequences = [
                batching.Sequence(input_ids, tokenizer=tokenizer, eos_ids=loaded.eos_ids, adapter=adapter,
                                  prefix_length=prefix_length,
                                  max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                  seed=None if seed is None else seed + index, stop=list(stop),
                                  on_text=None if on_text is None else functools.partial(on_text, index),
                                  cancel=cancel)
                for index in range(n)]
            assert loaded.engine is not None
            loaded.engine.submit(*sequences)
            return [sequence.result() for sequence in sequences]

    def score(self, model_id: str, *, messages: list[dict[str, Any]], answer: str,
              fine_tuned: FineTuned | None = None) -> tuple[float, int]:
        """(sum of log-probabilities, tokens) of `answer` as the assistant's reply to `messages`,
        end of turn included: what the model thinks of a reference answer (its loss and perplexity)."""
        import torch

        check_score_request(messages, answer)
        with self._using(model_id, fine_tuned) as (loaded, adapter, tokenizer):
            prompt_ids, full_ids = score_token_ids(tokenizer, model_id, messages, answer, loaded.context_length)
            assert loaded.engine is not None

            def answer_logprob() -> float:  # on the engine's thread, between two of its turns
                with torch.inference_mode():
                    model = loaded.peft or loaded.model
                    extra = {"adapter_names": [adapter]} if loaded.peft is not None else {}
                    logits = model(input_ids=torch.tensor([full_ids], device=loaded.model.device), **extra).logits[0]
                    targets = torch.tensor(full_ids[len(prompt_ids):])
                    # Upcast before the log-softmax: on a bf16 model, a sum over 49k exponentials and the
                    # log of it in bf16 would be off by more than the differences a perplexity compares.
                    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1:-1].float().cpu(), dim=-1)
                    return float(logprobs.gather(1, targets[:, None]).sum())

            return loaded.engine.run(answer_logprob), len(full_ids) - len(prompt_ids)

    @contextlib.contextmanager
    def _using(self, model_id: str, fine_tuned: FineTuned | None) -> Iterator[tuple[_LoadedModel, str, Any]]:
        """The loaded model that serves `model_id`, the peft adapter name to use, and the tokenizer
        that renders its prompts; the adapter cannot be unloaded meanwhile."""
        if fine_tuned is None:
            if model_id.startswith("ft:"):
                raise InvalidArgument(f"{model_id} is a fine-tuned model; resolve it in the registry first",
                                      param="model")
            self._store.check_known(model_id)
        lora = fine_tuned is not None and fine_tuned.kind == "lora"
        # A LoRA adapter runs on its base model's one copy.
        key = fine_tuned.base_model if lora else model_id
        with self._lock_for(key):  # loading, and the adapters' bookkeeping
            loaded = self._models.get(key)
            if loaded is None:
                # On a thread that ends: see batching.py on OpenMP's teams.
                loaded = batching.on_own_thread(lambda: self._load(key, None if lora else fine_tuned))
                log.info("inference: loaded %s in %s%s", key, str(self.dtype).removeprefix("torch."),
                         ", linear weights packed for oneDNN" if loaded.packed else "")
                loaded.engine = Engine(key, lambda loaded=loaded: loaded.peft or loaded.model, loaded.model.device,
                                       self._max_batch_size, self._prefix_cache_size, loaded.decoder,
                                       self._engine_nice, loaded.compiled)
                self._models[key] = loaded
                if loaded.compile_later is not None:
                    self._compile_in_background(key, loaded)
            adapter, tokenizer = (self._adapter(loaded, fine_tuned) if lora and fine_tuned is not None
                                  else (BASE, loaded.tokenizer))
            loaded.in_use[adapter] = loaded.in_use.get(adapter, 0) + 1
        try:
            yield loaded, adapter, tokenizer
        finally:
            with self._lock_for(key):
                loaded.in_use[adapter] -= 1

    def _load(self, key: str, full: FineTuned | None) -> _LoadedModel:
        """The base model `key`, or the full fine-tune `full`, with its linear weights packed where
        that pays (packed_linear.py): a model here only ever serves."""
        from services.inference import llama_decoder  # imports torch
        from services.inference.packed_linear import pack_linears

        loaded = _loaded(*self._store.load(key, self.dtype)) if full is None else _load_full(full, self.dtype)
        loaded.packed = pack_linears(loaded.model, self._max_batch_size) > 0
        # Where the weights are packed the answers already differ from float32 in the last bits; a
        # float32 model keeps the model's own forward, token for token what `generate` computes.
        if loaded.packed and llama_decoder.supports(loaded.model):
            loaded.decoder = llama_decoder.LlamaDecoder(loaded.model)
        rows, capacity = self._compiled_shape
        if capacity:
            self._compiled_decode(loaded, self._store.ensure(key) if full is None else full.path, rows,
                                  min(capacity, loaded.context_length))
        return loaded

    def _compiled_decode(self, loaded: _LoadedModel, model_dir: Path, rows: int, capacity: int) -> None:
        """The compiled decoding step of the model saved at `model_dir`: loaded now when its package is
        built (`loaded.compiled`), or to be built once the model serves (`loaded.compile_later`). A
        model that is not one it computes is served with eager steps, as without the setting."""
        from services.inference import compiled_decode

        if not compiled_decode.supports(loaded.model) or capacity < compiled_decode.MIN_CAPACITY:
            log.warning("inference: %s is not a plain Llama with a context of %d keys or more; its decoding "
                        "steps are not compiled", model_dir, compiled_decode.MIN_CAPACITY)
            return
        path = compiled_decode.package_path(self._store.settings.data_dir / "compiled",
                                            compiled_decode.model_identity(model_dir), loaded.model.dtype, rows,
                                            capacity)
        if path.exists():
            try:
                loaded.compiled = compiled_decode.CompiledDecode(path, loaded.model, rows, capacity)
            except (RuntimeError, OSError) as error:  # a damaged file, say: the model still serves
                log.error("inference: %s's decoding steps stay eager: its package %s does not load: %s",
                          model_dir, path, error)
        else:
            loaded.compile_later = (model_dir, path, rows, capacity)

    def _compile_in_background(self, key: str, loaded: _LoadedModel) -> None:
        """Build `loaded`'s package on a thread of its own (which waits for the child process that
        compiles, computing nothing itself), then hand it to the engine. Its requests are served with
        eager steps meanwhile. A failed build (no C++ compiler, say) leaves them eager, and the log
        says why."""
        import subprocess

        from services.inference import compiled_decode

        assert loaded.compile_later is not None and loaded.engine is not None
        model_dir, path, rows, capacity = loaded.compile_later
        engine = loaded.engine

        def build_and_load() -> None:
            try:
                compiled_decode.build(model_dir, loaded.model.dtype, rows, capacity, path)
                engine.use_compiled(lambda: compiled_decode.CompiledDecode(path, loaded.model, rows, capacity))
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
                log.error("inference: %s's decoding steps stay eager: %s", key, error)
            else:
                log.info("inference: %s's decoding steps of up to %d rows and %d keys are compiled from now on",
                         key, rows, capacity)

        log.info("inference: compiling %s's decoding step for %d rows and up to %d keys in the background "
                 "(a minute or two, once); its steps are eager until then", key, rows, capacity)
        loaded.compiling = threading.Thread(target=build_and_load, name=f"compile-{key}", daemon=True)
        loaded.compiling.start()

    def compiled_decode_ready(self, model_id: str, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the background build of `model_id`'s compiled decoding
        step, if one runs; whether its engine now computes decoding steps with one."""
        loaded = self._models.get(model_id)
        if loaded is None:
            return False
        if loaded.compiling is not None:
            loaded.compiling.join(timeout)
        return loaded.engine is not None and loaded.engine.compiled is not None

    @functools.cached_property
    def dtype(self) -> torch.dtype:
        """What every model here is loaded in. "auto" asks the CPU: this backend loads models there."""
        return serving_dtype(self._dtype_choice, "cpu")

    def loaded_dtype(self, model_id: str) -> torch.dtype | None:
        """The dtype of the loaded weights serving `model_id` (a base model or a full fine-tune)."""
        loaded = self._models.get(model_id)
        return loaded.model.dtype if loaded is not None else None

    def engine(self, model_id: str) -> Engine | None:
        """The engine serving `model_id` (a base model or a full fine-tune), if it is loaded."""
        loaded = self._models.get(model_id)
        return loaded.engine if loaded is not None else None

    def loaded_adapters(self, base_model: str) -> list[str]:
        """The fine-tuned model ids whose adapters are loaded on `base_model`, least recently used first."""
        loaded = self._models.get(base_model)
        return list(loaded.adapters) if loaded is not None else []

    def close(self) -> None:
        """Stop every engine; requests still in flight fail."""
        for loaded in list(self._models.values()):
            if loaded.engine is not None:
                loaded.engine.close()

    def _adapter(self, loaded: _LoadedModel, fine_tuned: FineTuned) -> tuple[str, PreTrainedTokenizerBase]:
        """The peft adapter name of `fine_tuned` in `loaded` and its tokenizer, loading it on first use
        (and unloading the least recently used adapter no request is using, past `max_adapters`)."""
        if fine_tuned.model_id in loaded.adapters:
            loaded.adapters.move_to_end(fine_tuned.model_id)
            return loaded.adapters[fine_tuned.model_id]
        from peft import PeftModel
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(fine_tuned.path, local_files_only=True, trust_remote_code=False)
        check_chat_template(fine_tuned, tokenizer.chat_template)
        # Model ids hold ':' and '.', which peft's module names cannot.
        name = "ft_" + hashlib.sha256(fine_tuned.model_id.encode()).hexdigest()[:16]
        assert loaded.engine is not None
        # autocast_adapter_dtype (peft's default, stated because it matters): on a bf16 base the
        # adapter's weights stay float32 and its product is computed in float32, then added to the
        # base layer's bf16 output; a small learned delta is not rounded away inside the adapter.

        def change_adapters() -> None:  # on the engine's thread: no row sees the model half changed
            if loaded.peft is None:
                loaded.peft = PeftModel.from_pretrained(loaded.model, str(fine_tuned.path), adapter_name=name,
                                                        is_trainable=False, autocast_adapter_dtype=True)
            else:
                loaded.peft.load_adapter(str(fine_tuned.path), adapter_name=name, is_trainable=False,
                                         autocast_adapter_dtype=True)
            loaded.peft.eval()
            idle = [model_id for model_id, (old, _) in loaded.adapters.items() if not loaded.in_use.get(old)]
            for model_id in idle[:max(0, len(loaded.adapters) + 1 - self._max_adapters)]:
                old, _ = loaded.adapters.pop(model_id)
                loaded.peft.delete_adapter(old)
                loaded.in_use.pop(old, None)

        loaded.engine.run(change_adapters)
        loaded.adapters[fine_tuned.model_id] = (name, tokenizer)
        return name, tokenizer

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


def check_choices(n: int, most: int | None = None) -> None:
    """OpenAI's `n`: an integer from 1 to `most` (the service's max_choices)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or (most is not None and n > most):
        allowed = f"from 1 to {most}, the most choices a request may ask for here" if most else "of at least 1"
        raise InvalidArgument(f"n must be an integer {allowed}; got {n!r}", param="n")


def _load_full(fine_tuned: FineTuned, dtype: torch.dtype) -> _LoadedModel:
    """A full fine-tune: a whole model of its own (saved in float32, cast to `dtype` as it loads),
    with the tokenizer it was trained with."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fine_tuned.path, local_files_only=True, trust_remote_code=False)
    check_chat_template(fine_tuned, tokenizer.chat_template)
    model = AutoModelForCausalLM.from_pretrained(fine_tuned.path, dtype=dtype, local_files_only=True,
                                                 use_safetensors=True, trust_remote_code=False)
    model.eval()
    return _loaded(model, tokenizer)


def _loaded(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> _LoadedModel:
    eos = model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return _LoadedModel(model, tokenizer, frozenset(eos_ids), int(context))


def check_context_length(model_id: str, messages: list[dict[str, Any]] | None, input_ids: list[int], max_tokens: int,
                         context_length: int) -> None:
    """Refuse a prompt that leaves no room for `max_tokens` in the model's context."""
    if len(input_ids) + max_tokens > context_length:
        field_name = "messages" if messages is not None else "prompt"
        raise InvalidArgument(
            f"{field_name} ({len(input_ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
            f"context length of {model_id} ({context_length} tokens)",
            param="max_tokens",
        )


def check_score_request(messages: list[dict[str, Any]], answer: str) -> None:
    """Validate a `score` request before any model is asked."""
    check_request(messages, None, 0, 0, 1, None, ())
    if not isinstance(answer, str) or not answer:
        raise InvalidArgument("answer must be a non-empty string", param="answer")


def score_token_ids(tokenizer: PreTrainedTokenizerBase, model_id: str, messages: list[dict[str, Any]], answer: str,
                    context_length: int) -> tuple[list[int], list[int]]:
    """(the prompt's tokens, the prompt's and then the answer's) for scoring `answer` as the reply to
    `messages`, the answer's end of turn included; the answer's tokens as generation would produce
    them, after the prompt's own."""
    prompt_ids = encode_prompt(tokenizer, model_id, messages, None)
    chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template([*chat, {"role": "assistant", "content": answer}], tokenize=False)
    if not whole.startswith(prompt) or whole == prompt:
        raise InvalidArgument(f"{model_id}'s chat template does not render the answer after the prompt",
                              param="answer")
    full_ids = prompt_ids + list(tokenizer(whole[len(prompt):], add_special_tokens=False)["input_ids"])
    if len(full_ids) > context_length:
        raise InvalidArgument(f"messages and answer ({len(full_ids)} tokens) exceed the context length of "
                              f"{model_id} ({context_length} tokens)", param="answer")
    return prompt_ids, full_ids


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    model_id: str,
    messages: list[dict[str, Any]] | None,
    prompt: str | None,
) -> list[int]:
    """The token ids of a raw `prompt`, or of `messages` rendered with the tokenizer's chat template."""
    if messages is None:
        return list(tokenizer(prompt)["input_ids"])
    if not tokenizer.chat_template:
        raise InvalidArgument(f"model {model_id} has no chat template; send a prompt", param="messages")
    chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    # The template already wrote the special tokens it wants; adding more would change the prompt.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# Stands for the last message's content while the prompt's head is rendered: no chat contains it.
_CONTENT_MARK = "\ue000tuneloop-last-message\ue000"


def _prefix_length(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], input_ids: list[int]) -> int:
    """How many of a chat prompt's tokens come before its last message's content (the system prompt,
    the template's default one included, and earlier turns): what the next request is likely to
    repeat. 0 when those tokens are not a prefix of the prompt's own (a merge across the boundary)."""
    chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    chat[-1]["content"] = _CONTENT_MARK
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    if _CONTENT_MARK not in rendered:
        return 0
    head = list(tokenizer(rendered.split(_CONTENT_MARK)[0], add_special_tokens=False)["input_ids"])
    return len(head) if input_ids[:len(head)] == head else 0
