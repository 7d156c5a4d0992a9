"""The `vllm` backend (TUNELOOP_INFERENCE_BACKEND=vllm): the default base model and its LoRA adapters
served by vLLM's async engine on a CUDA GPU, each request with its own adapter in one batch
(vLLM's multi-LoRA), an adapter loaded into the engine on first use and the least recently used idle
one unloaded past `max_adapters`.

It answers what the servicer asks of the `transformers` Generator (generate_choices, score,
loaded_adapters, close) with the same results: prompts are rendered here, with the chat template the
model or adapter was trained with (fine_tuned.py), and handed to vLLM as token ids, so both backends
read the same prompt; the Generation carries each token with its log-probability under the model
itself; streamed pieces add up to the text; a set `cancel` aborts the request in the engine.

vLLM's asyncio engine lives on an event loop of its own, in a thread: the servicer calls from its
worker threads, as it calls the Generator. Other base models and full fine-tunes (a whole model,
which would be a second engine on the GPU) are refused with the reason; the `transformers` backend
serves them. What it hands vLLM and makes of its answers, without a GPU, is in vllm_translate.py.

Written against vLLM 0.33.0, the `gpu` extra's floor, as read in its wheel: vllm/v1/engine/async_llm.py
(AsyncLLM, of which AsyncLLMEngine is an alias: generate, abort, add_lora, remove_lora, shutdown),
vllm/engine/arg_utils.py (AsyncEngineArgs), vllm/sampling_params.py, vllm/outputs.py (RequestOutput,
CompletionOutput), vllm/lora/request.py (LoRARequest), vllm/inputs/engine.py (tokens_input).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import itertools
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.inference.decoding import Generation
from services.inference.fine_tuned import FineTuned, check_chat_template
from services.inference.generation import (
    check_choices,
    check_context_length,
    check_request,
    check_score_request,
    encode_prompt,
    score_token_ids,
)
from services.inference.precision import check_serving_dtype, serving_dtype
from services.inference.vllm_translate import (
    Choices,
    OnText,
    adapter_directory,
    answer_logprob,
    engine_fields,
    sampling_fields,
)
from services.shared.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from services.shared.models import ModelStore

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from services.inference.settings import InferenceSettings

VLLM_REQUIRED = ("TUNELOOP_INFERENCE_BACKEND=vllm needs the gpu extra: pip install 'tuneloop[gpu]' on a machine "
                 "with a CUDA GPU")
# How often a request looks at its `cancel` event: a threading.Event cannot wake an event loop.
CANCEL_POLL_S = 0.05


def require_vllm() -> None:
    """FailedPrecondition, saying what to install where, unless vLLM can run here."""
    if not _vllm_installed():
        raise FailedPrecondition(f"{VLLM_REQUIRED} (vllm is not installed here)", code="vllm_not_available")
    import torch

    if not torch.cuda.is_available():
        raise FailedPrecondition(f"{VLLM_REQUIRED} (vllm is installed, but this machine shows no CUDA GPU)",
                                 code="vllm_not_available")


def _vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


@dataclass(frozen=True)
class _Adapter:
    model_id: str
    request: Any  # vllm.lora.request.LoRARequest
    tokenizer: PreTrainedTokenizerBase


class VllmGenerator:
    """Serves `base_model` and its LoRA adapters with one vLLM engine, started by the constructor
    (minutes: weights, CUDA graphs, the KV cache). Thread-safe, as the Generator is."""

    def __init__(self, store: ModelStore, *, base_model: str, dtype: str = "auto", max_adapters: int = 8,
                 max_loras: int = 4, max_lora_rank: int = 16, gpu_memory_utilization: float = 0.9,
                 max_model_len: int = 0):
        require_vllm()
        from transformers import AutoTokenizer

        check_serving_dtype(dtype)
        self._store = store
        self.base_model = base_model
        self._max_adapters = max_adapters
        self._max_lora_rank = max_lora_rank
        path = store.ensure(base_model)
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        self.dtype = str(serving_dtype(dtype, "cuda")).removeprefix("torch.")
        fields = engine_fields(path, dtype=self.dtype, max_adapters=max_adapters, max_loras=max_loras,
                               max_lora_rank=max_lora_rank, gpu_memory_utilization=gpu_memory_utilization,
                               max_model_len=max_model_len)
        # Adapters loaded in the engine by model id, least recently used first; changed on the loop,
        # read from the callers' threads under the lock.
        self._adapters: OrderedDict[str, _Adapter] = OrderedDict()
        self._lock = threading.Lock()
        # vLLM's lora_int_id of each adapter ever loaded, from 1: the same id each time it is loaded again.
        self._lora_ids: dict[str, int] = {}
        self._next_lora_id = itertools.count(1)
        # On the loop only: requests in flight per adapter (one in use is never unloaded), our
        # requests' tasks (cancelled by close), and one add_lora / remove_lora at a time.
        self._in_use: dict[str, int] = {}
        self._requests: set[asyncio.Task] = set()
        self._loading = asyncio.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        try:
            self._engine = self._call(self._start(fields))
        except BaseException:
            self._stop_loop()
            raise
        self.context_length = int(self._engine.model_config.max_model_len)

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> VllmGenerator:
        return cls(ModelStore(settings), base_model=settings.default_base_model, dtype=settings.inference_dtype,
                   max_adapters=settings.max_adapters, max_loras=settings.vllm_max_loras,
                   max_lora_rank=settings.vllm_max_lora_rank,
                   gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
                   max_model_len=settings.vllm_max_model_len)

    def generate_choices(self, model_id: str, *, n: int = 1, messages: list[dict[str, Any]] | None = None,
                         prompt: str | None = None, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                         seed: int | None = None, stop: Sequence[str] = (), fine_tuned: FineTuned | None = None,
                         on_text: OnText | None = None, cancel: threading.Event | None = None) -> list[Generation]:
        """What Generator.generate_choices does, answered by vLLM; `on_text` is called from the
        engine's thread."""
        check_request(messages, prompt, max_tokens, temperature, top_p, seed, stop)
        check_choices(n)
        tokenizer, adapter = self._model_for(model_id, fine_tuned)
        input_ids = encode_prompt(tokenizer, model_id, messages, prompt)
        check_context_length(model_id, messages, input_ids, max_tokens, self.context_length)
        if max_tokens == 0:
            return [Generation("", "length", prompt_tokens=len(input_ids), completion_tokens=0)] * n
        fields = sampling_fields(n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                 stop=stop)
        choices = Choices(n, fields["n"], prompt_tokens=len(input_ids), tokenizer=self._tokenizer, on_text=on_text)
        self._call(self._generate(input_ids, fields, adapter, choices, cancel or threading.Event()))
        return choices.generations()

    def score(self, model_id: str, *, messages: list[dict[str, Any]], answer: str,
              fine_tuned: FineTuned | None = None) -> tuple[float, int]:
        """(sum of log-probabilities, tokens) of `answer` as the assistant's reply to `messages`, from
        vLLM's prompt log-probabilities of the conversation with the answer."""
        check_score_request(messages, answer)
        tokenizer, adapter = self._model_for(model_id, fine_tuned)
        prompt_ids, full_ids = score_token_ids(tokenizer, model_id, messages, answer, self.context_length)
        fields = {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        outputs: list[Any] = []
        self._call(self._generate(full_ids, fields, adapter, outputs, threading.Event()))
        return answer_logprob(outputs[-1].prompt_logprobs, full_ids, len(prompt_ids)), len(full_ids) - len(prompt_ids)

    def loaded_adapters(self, base_model: str) -> list[str]:
        """The fine-tuned model ids whose adapters the engine holds, least recently used first."""
        with self._lock:
            return list(self._adapters) if base_model == self.base_model else []

    def close(self) -> None:
        """Stop the engine; requests still in flight fail."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._stop_loop()

    # ---- on the caller's thread ---------------------------------------------------------------

    def _model_for(self, model_id: str, fine_tuned: FineTuned | None) -> tuple[PreTrainedTokenizerBase, _Adapter | None]:
        """The tokenizer that renders `model_id`'s prompts, and its adapter (None: the base model)."""
        if fine_tuned is None:
            if model_id.startswith("ft:"):
                raise InvalidArgument(f"{model_id} is a fine-tuned model; resolve it in the registry first",
                                      param="model")
            self._store.check_known(model_id)
            self._check_base(model_id, model_id)
            return self._tokenizer, None
        if fine_tuned.kind != "lora":
            raise FailedPrecondition(f"{model_id} is a full fine-tune, a whole model of its own: the vllm backend "
                                     f"serves {self.base_model} and its LoRA adapters; serve it with "
                                     "TUNELOOP_INFERENCE_BACKEND=transformers", param="model",
                                     code="model_not_available")
        self._check_base(model_id, fine_tuned.base_model)
        with self._lock:
            adapter = self._adapters.get(model_id)
        adapter = adapter or self._prepare(fine_tuned)
        return adapter.tokenizer, adapter

    def _check_base(self, model_id: str, base_model: str) -> None:
        if base_model != self.base_model:
            raise FailedPrecondition(f"{model_id} runs on {base_model}, and this vllm backend serves "
                                     f"{self.base_model} (TUNELOOP_DEFAULT_BASE_MODEL) and its adapters",
                                     param="model", code="model_not_available")

    def _prepare(self, fine_tuned: FineTuned) -> _Adapter:
        """An adapter not loaded in the engine, checked (its files, its rank, its chat template), with
        its tokenizer and the LoRARequest that loads it."""
        from transformers import AutoTokenizer
        from vllm.lora.request import LoRARequest

        directory = adapter_directory(fine_tuned, self._max_lora_rank)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        check_chat_template(fine_tuned, tokenizer.chat_template)
        with self._lock:
            lora_id = self._lora_ids.setdefault(fine_tuned.model_id, next(self._next_lora_id))
        request = LoRARequest(lora_name=fine_tuned.model_id, lora_int_id=lora_id, lora_path=directory)
        return _Adapter(fine_tuned.model_id, request, tokenizer)

    def _call(self, work: Coroutine[Any, Any, Any]) -> Any:
        """Run `work` on the engine's loop and wait for it, vLLM's errors mapped to ours."""
        import vllm.exceptions

        try:
            return asyncio.run_coroutine_threadsafe(work, self._loop).result()
        except vllm.exceptions.VLLMClientError as error:  # the request, as vLLM validates it
            raise InvalidArgument(f"vLLM refused the request: {error}") from None
        except vllm.exceptions.GracefulHTTPError as error:  # its admission control: queue or tokens full
            raise ResourceExhausted(f"the vLLM engine is full: {error}") from None
        except vllm.exceptions.VLLMError as error:  # the engine died, or failed this request
            raise Unavailable(f"the vLLM engine failed: {str(error) or type(error).__name__}") from None
        except concurrent.futures.CancelledError:
            raise Unavailable("the vllm backend was closed while the request ran") from None

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # ---- on the engine's loop -----------------------------------------------------------------

    async def _start(self, fields: dict[str, Any]) -> Any:
        # Made on this loop: the engine starts its output handler on the loop it is made on.
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        return AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**fields))

    async def _generate(self, input_ids: list[int], fields: dict[str, Any], adapter: _Adapter | None,
                        into: Choices | list[Any], cancel: threading.Event) -> None:
        """Stream one request's RequestOutputs into `into`; `cancel` aborts it, after which vLLM sends
        the final output of each row (finish_reason "abort") with what it had."""
        from vllm import SamplingParams
        from vllm.inputs import tokens_input

        request_id = f"tl-{uuid.uuid4().hex}"
        task = asyncio.current_task()
        assert task is not None
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)
        async with self._using(adapter):
            watcher = asyncio.ensure_future(self._abort_when_set(cancel, request_id))
            try:
                async for output in self._engine.generate(tokens_input(input_ids), SamplingParams(**fields),
                                                          request_id,
                                                          lora_request=None if adapter is None else adapter.request):
                    if isinstance(into, Choices):
                        into.update(output)
                    else:
                        into.append(output)
            finally:
                watcher.cancel()

    async def _abort_when_set(self, cancel: threading.Event, request_id: str) -> None:
        while not cancel.is_set():
            await asyncio.sleep(CANCEL_POLL_S)
        await self._engine.abort(request_id)

    @contextlib.asynccontextmanager
    async def _using(self, adapter: _Adapter | None) -> AsyncIterator[None]:
        """`adapter` loaded in the engine, and not unloaded while the request runs: loaded on first
        use (a bad adapter fails here, before any request carries it), and the least recently used
        idle adapters unloaded past max_adapters."""
        if adapter is None:
            yield
            return
        model_id = adapter.model_id
        async with self._loading:
            if model_id in self._adapters:
                with self._lock:
                    self._adapters.move_to_end(model_id)
            else:
                try:
                    loaded = await self._engine.add_lora(adapter.request)
                except Exception as error:  # noqa: BLE001 - whatever the engine found wrong with the files
                    loaded, reason = False, f": {error}"
                else:
                    reason = ""
                if not loaded:
                    raise FailedPrecondition(f"{model_id}: vLLM could not load its adapter from "
                                             f"{adapter.request.lora_path}{reason}", param="model",
                                             code="model_not_available")
                with self._lock:
                    self._adapters[model_id] = adapter
                idle = [old for old in self._adapters.values() if not self._in_use.get(old.model_id)
                        and old.model_id != model_id]
                for old in idle[:max(0, len(self._adapters) - self._max_adapters)]:
                    await self._engine.remove_lora(old.request.lora_int_id)
                    with self._lock:
                        self._adapters.pop(old.model_id)
            self._in_use[model_id] = self._in_use.get(model_id, 0) + 1
        try:
            yield
        finally:
            self._in_use[model_id] -= 1

    async def _shutdown(self) -> None:
        """Cancel our requests in flight (each aborts itself in the engine), then stop the engine."""
        pending = list(self._requests)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._engine.shutdown()
