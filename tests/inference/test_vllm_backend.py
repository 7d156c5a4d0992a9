"""The `vllm` backend.

On a CUDA GPU with the gpu extra installed (marked `gpu`): the tiny learning model and LoRA adapters
really trained on it, served by vLLM and checked against the transformers backend. Everywhere:
selecting the backend where it cannot run stops the service at start-up saying what to install,
and its settings are checked.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from services.inference import vllm_backend
from services.inference.fine_tuned import FineTuned
from services.inference.generation import Generator
from services.inference.server import build
from services.inference.settings import InferenceSettings
from services.inference.vllm_backend import VLLM_REQUIRED, VllmGenerator
from services.shared.errors import FailedPrecondition
from tests.fixtures.adapters import QUESTION, train_adapter
from tests.fixtures.tiny_model import TINY_MODEL_ID

VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None


def on_a_gpu(test):
    """Marked gpu, and skipped without a CUDA GPU and vllm."""
    skip = pytest.mark.skipif(not (VLLM_INSTALLED and torch.cuda.is_available()),
                              reason="needs a CUDA GPU and vllm (pip install 'tuneloop[gpu]')")
    return pytest.mark.gpu(skip(test))


# ---- everywhere --------------------------------------------------------------------------------

@pytest.mark.skipif(VLLM_INSTALLED, reason="vllm is installed here")
def test_selecting_vllm_where_it_is_not_installed_says_what_to_install(tmp_path):
    settings = InferenceSettings(data_dir=tmp_path, inference_backend="vllm")
    with pytest.raises(FailedPrecondition) as raised:
        VllmGenerator.from_settings(settings)
    assert str(raised.value) == f"{VLLM_REQUIRED} (vllm is not installed here)"
    assert raised.value.code == "vllm_not_available"


@pytest.mark.skipif(VLLM_INSTALLED, reason="vllm is installed here")
async def test_the_service_does_not_start_on_the_vllm_backend_without_vllm(tmp_path):
    settings = InferenceSettings(data_dir=tmp_path, inference_backend="vllm")
    # A stand-in for the Runtime: the backend is the first thing build makes, before any connection.
    with pytest.raises(FailedPrecondition, match=re.escape(VLLM_REQUIRED)):
        await build(SimpleNamespace(settings=settings))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_selecting_vllm_without_a_cuda_gpu_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_backend, "_vllm_installed", lambda: True)
    with pytest.raises(FailedPrecondition, match=re.escape(VLLM_REQUIRED) + r" \(.*no CUDA GPU\)"):
        VllmGenerator.from_settings(InferenceSettings(data_dir=tmp_path, inference_backend="vllm"))


def test_the_backend_is_chosen_by_its_setting(monkeypatch):
    assert InferenceSettings().inference_backend == "transformers"
    monkeypatch.setenv("TUNELOOP_INFERENCE_BACKEND", "vllm")
    assert InferenceSettings().inference_backend == "vllm"
    monkeypatch.setenv("TUNELOOP_INFERENCE_BACKEND", "tgi")  # a remote model's backend, not this one's
    with pytest.raises(ValidationError, match="'transformers' or 'vllm'"):
        InferenceSettings()


def test_the_vllm_settings_are_checked(monkeypatch):
    monkeypatch.setenv("TUNELOOP_VLLM_MAX_LORA_RANK", "32")
    assert InferenceSettings().vllm_max_lora_rank == 32
    with pytest.raises(ValidationError, match="must be one of 1, 8, 16, 32, 64, 128, 256, 320, 512; got 24"):
        InferenceSettings(vllm_max_lora_rank=24)
    with pytest.raises(ValidationError, match=r"vllm_max_loras \(4\) cannot exceed max_adapters \(2\)"):
        InferenceSettings(inference_backend="vllm", max_adapters=2, vllm_max_loras=4)
    assert InferenceSettings(max_adapters=2, vllm_max_loras=4).max_adapters == 2  # not the transformers backend's
    with pytest.raises(ValidationError, match="vllm_gpu_memory_utilization"):
        InferenceSettings(vllm_gpu_memory_utilization=1.5)


# ---- on a CUDA GPU -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapters(learning_store, tmp_path_factory) -> dict[str, FineTuned]:
    return {answer: train_adapter(learning_store, tmp_path_factory.mktemp(answer), answer)
            for answer in ("blue", "green", "red")}


@pytest.fixture(scope="module")
def served(learning_store):
    # float32, as the transformers backend it is compared with, token for token.
    generator = VllmGenerator(learning_store, base_model=TINY_MODEL_ID, dtype="float32", max_adapters=2, max_loras=2,
                              gpu_memory_utilization=0.3, max_model_len=256)
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def reference(learning_store):
    generator = Generator(learning_store, dtype="float32")
    yield generator
    generator.close()


def _greedy(generator, model_id: str, fine_tuned: FineTuned | None = None, max_tokens: int = 4):
    return generator.generate_choices(model_id, messages=QUESTION, max_tokens=max_tokens, temperature=0,
                                      fine_tuned=fine_tuned)[0]


@on_a_gpu
@pytest.mark.parametrize("answer", [None, "blue"])
def test_greedy_answers_are_the_transformers_backends(served, reference, adapters, answer):
    fine_tuned = adapters[answer] if answer else None
    model_id = fine_tuned.model_id if fine_tuned else TINY_MODEL_ID
    expected, got = _greedy(reference, model_id, fine_tuned), _greedy(served, model_id, fine_tuned)
    assert [t.id for t in got.tokens] == [t.id for t in expected.tokens]
    assert (got.text, got.finish_reason, got.prompt_tokens) == (expected.text, expected.finish_reason,
                                                                 expected.prompt_tokens)
    assert [t.logprob for t in got.tokens] == pytest.approx([t.logprob for t in expected.tokens], abs=1e-2)
    if answer:
        assert got.text.startswith(answer)


@on_a_gpu
def test_two_adapters_in_concurrent_requests_each_answer_with_their_own(served, adapters):
    blue, green = adapters["blue"], adapters["green"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda fine_tuned: _greedy(served, fine_tuned.model_id, fine_tuned).text,
                                [blue, green] * 4))
    assert all(text.startswith("blue") for text in answers[0::2]), answers
    assert all(text.startswith("green") for text in answers[1::2]), answers
    assert not _greedy(served, TINY_MODEL_ID).text.startswith(("blue", "green"))  # the base stays the base


@on_a_gpu
def test_adapters_past_max_adapters_unload_the_least_recently_used(served, adapters):
    blue, green, red = adapters["blue"], adapters["green"], adapters["red"]
    for fine_tuned in (blue, green, red):
        assert _greedy(served, fine_tuned.model_id, fine_tuned).text.startswith(fine_tuned.model_id.split(":")[3])
    assert served.loaded_adapters(TINY_MODEL_ID) == [green.model_id, red.model_id]
    assert _greedy(served, blue.model_id, blue).text.startswith("blue")  # loaded again on demand
    assert served.loaded_adapters(TINY_MODEL_ID) == [red.model_id, blue.model_id]


@on_a_gpu
def test_streamed_pieces_of_each_choice_add_up_to_its_text(served, adapters):
    blue = adapters["blue"]
    pieces: list[tuple[int, str, list]] = []
    generations = served.generate_choices(blue.model_id, n=2, messages=QUESTION, max_tokens=16, temperature=1.0,
                                          seed=7, fine_tuned=blue,
                                          on_text=lambda index, text, tokens: pieces.append((index, text, tokens)))
    assert len(generations) == 2
    for index, generation in enumerate(generations):
        assert "".join(text for i, text, _ in pieces if i == index) == generation.text
        assert [t for i, _, tokens in pieces if i == index for t in tokens] == list(generation.tokens)
        assert generation.completion_tokens == len(generation.tokens) > 0


@on_a_gpu
def test_cancel_aborts_the_request_and_keeps_what_was_streamed(served):
    cancel, streamed = threading.Event(), []

    def on_text(_index, text, _tokens):
        streamed.append(text)
        cancel.set()  # the client left after its first piece

    max_tokens = 200
    generation = served.generate_choices(TINY_MODEL_ID, prompt="Once upon a time", max_tokens=max_tokens,
                                         temperature=1.0, seed=1, on_text=on_text, cancel=cancel)[0]
    assert generation.completion_tokens < max_tokens and generation.finish_reason == "length"
    assert "".join(streamed) == generation.text
    assert _greedy(served, TINY_MODEL_ID).completion_tokens >= 1  # the engine serves on


@on_a_gpu
def test_scores_are_the_transformers_backends(served, reference, adapters):
    blue = adapters["blue"]
    for model_id, fine_tuned in ((TINY_MODEL_ID, None), (blue.model_id, blue)):
        expected = reference.score(model_id, messages=QUESTION, answer="blue", fine_tuned=fine_tuned)
        got = served.score(model_id, messages=QUESTION, answer="blue", fine_tuned=fine_tuned)
        assert got[1] == expected[1] and got[0] == pytest.approx(expected[0], abs=1e-2)
    assert served.score(blue.model_id, messages=QUESTION, answer="blue", fine_tuned=blue)[0] > served.score(
        TINY_MODEL_ID, messages=QUESTION, answer="blue")[0]


@on_a_gpu
def test_a_full_fine_tune_is_left_to_the_transformers_backend(served, adapters):
    full = FineTuned("ft:tiny-llama:acme:full:ftjob-f", TINY_MODEL_ID, adapters["blue"].path, "full", "")
    with pytest.raises(FailedPrecondition, match="TUNELOOP_INFERENCE_BACKEND=transformers"):
        _greedy(served, full.model_id, full)
