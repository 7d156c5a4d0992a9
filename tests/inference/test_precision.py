"""The serving dtype: the inference_dtype setting, what "auto" picks, and the tiny model really
computing in bf16 when it is chosen (adapters and scores in bf16: test_fine_tuned.py)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from services.inference import precision
from services.inference.generation import Generator
from services.inference.precision import serving_dtype
from services.inference.settings import InferenceSettings
from services.shared import models
from services.shared.models import ModelStore, cpu_supports_bf16
from services.shared.settings import Settings

MODEL = "tiny-llama"
CHAT = [{"role": "user", "content": "Hello there"}]


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_where_the_hardware_check_says_so(monkeypatch, native):
    asked = []
    monkeypatch.setattr(precision, "computes_bf16_natively", lambda device: asked.append(device) or native)
    assert serving_dtype("auto") == (torch.bfloat16 if native else torch.float32)
    assert asked == ["cpu"]
    # An explicit choice does not ask the hardware.
    assert (serving_dtype("float32"), serving_dtype("bfloat16")) == (torch.float32, torch.bfloat16)
    assert asked == ["cpu"]


def test_the_hardware_check_is_avx512_bf16_or_amx_on_a_cpu_and_bf16_support_on_a_gpu(monkeypatch):
    assert cpu_supports_bf16() == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert models.computes_bf16_natively("cpu") == cpu_supports_bf16()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert models.computes_bf16_natively("cpu")  # AMX alone is enough
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for gpu_has_bf16 in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda gpu_has_bf16=gpu_has_bf16: gpu_has_bf16)
        assert models.computes_bf16_natively(torch.device("cuda", 0)) is gpu_has_bf16


def test_the_setting_defaults_to_auto_reads_its_variable_and_refuses_a_bad_value_naming_itself(monkeypatch):
    assert InferenceSettings().inference_dtype == "auto"
    monkeypatch.setenv("TUNELOOP_INFERENCE_DTYPE", "bfloat16")
    assert InferenceSettings().inference_dtype == "bfloat16"
    monkeypatch.setenv("TUNELOOP_INFERENCE_DTYPE", "fp16")
    with pytest.raises(ValidationError, match="inference_dtype") as refused:
        InferenceSettings()
    assert "'auto', 'float32' or 'bfloat16'" in str(refused.value)
    with pytest.raises(ValueError, match=r"inference_dtype \(TUNELOOP_INFERENCE_DTYPE\) must be one of .*'half'"):
        Generator(ModelStore(Settings()), dtype="half")


def test_auto_serves_the_model_in_bf16_on_this_machine_exactly_when_it_has_native_bf16(tiny_settings):
    generator = Generator(ModelStore(tiny_settings))
    answer = generator.generate(MODEL, messages=CHAT, max_tokens=4, temperature=0)
    expected = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    assert generator.dtype == generator.loaded_dtype(MODEL) == expected
    assert answer.completion_tokens == 4 and all(t.logprob <= 0 for t in answer.tokens)


def test_a_bf16_model_computes_in_bf16_and_answers_like_itself(tiny_settings):
    generator = Generator(ModelStore(tiny_settings), dtype="bfloat16")
    first = generator.generate(MODEL, messages=CHAT, max_tokens=6, temperature=0)
    engine = generator.engine(MODEL)
    cache_dtypes = []
    real_forward = engine._forward

    def recording_forward(rows, ids, mask, positions, cache):
        logits = real_forward(rows, ids, mask, positions, cache)
        cache_dtypes.extend({layer.keys.dtype for layer in cache.layers})
        return logits

    engine._forward = recording_forward
    again = generator.generate(MODEL, messages=CHAT, max_tokens=6, temperature=0)
    assert generator.loaded_dtype(MODEL) == torch.bfloat16
    assert {p.dtype for p in generator._models[MODEL].model.parameters()} == {torch.bfloat16}
    assert set(cache_dtypes) == {torch.bfloat16}  # the keys and values it attends to are bf16 too
    assert (again.text, [t.id for t in again.tokens]) == (first.text, [t.id for t in first.tokens])
