"""Linear weights packed once for oneDNN (packed_linear.py): the same bits as the unpacked model,
alone, in a padded batch, under a peft adapter, and through the generator; float32 is never packed."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import DynamicCache

from services.inference import packed_linear
from services.inference.generation import Generator
from services.inference.packed_linear import PackedLinear, can_pack, pack_linears
from services.shared.models import ModelStore, computes_bf16_natively

MODEL = "tiny-llama"
CHAT = [{"role": "user", "content": "Name a colour, then another one"}]
native_bf16 = pytest.mark.skipif(
    not (computes_bf16_natively("cpu") and torch.backends.mkldnn.is_available()),
    reason="packing applies only on a CPU that computes bf16 natively (AVX512-BF16 or AMX)")


def _linears(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def _pair(tiny_settings):
    """Two copies of the tiny model in bf16, the second packed."""
    store = ModelStore(tiny_settings)
    plain, _ = store.load(MODEL, torch.bfloat16)
    packed, _ = store.load(MODEL, torch.bfloat16)
    return plain.eval(), packed.eval(), pack_linears(packed, 8)


def _prefill_and_decode(model, steps: int = 4) -> list[torch.Tensor]:
    """Logits of a left-padded batch of three prompts, then of a few greedy decoding steps."""
    torch.manual_seed(1)
    ids = torch.randint(5, 500, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :2] = 0
    cache, outputs = DynamicCache(), []
    with torch.inference_mode():
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        for _ in range(steps):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                           use_cache=True).logits
            outputs.append(logits)
            ids = logits[:, -1].argmax(-1, keepdim=True)
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((3, 1), dtype=mask.dtype)], dim=-1)
    return outputs


@native_bf16
def test_a_packed_bf16_model_computes_the_same_bits_as_the_unpacked_one(tiny_settings):
    plain, packed, count = _pair(tiny_settings)
    assert count == len(_linears(packed)) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the head
    assert all(type(m) is PackedLinear for m in _linears(packed))
    for got, expected in zip(_prefill_and_decode(packed), _prefill_and_decode(plain), strict=True):
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, expected)


@native_bf16
def test_an_adapter_on_a_packed_base_computes_what_it_does_on_the_unpacked_one(tiny_settings):
    plain, packed, _ = _pair(tiny_settings)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    torch.manual_seed(2)
    plain = get_peft_model(plain, config).eval()
    torch.manual_seed(2)
    packed = get_peft_model(packed, config).eval()
    wrapped = [m.base_layer for m in packed.modules() if hasattr(m, "base_layer") and not hasattr(m, "model")]
    assert wrapped and all(type(m) is PackedLinear for m in wrapped)
    with_adapter = _prefill_and_decode(packed)
    for got, expected in zip(with_adapter, _prefill_and_decode(plain), strict=True):
        assert torch.equal(got, expected)
    with packed.disable_adapter():
        assert not torch.equal(_prefill_and_decode(packed)[0], with_adapter[0])  # the adapter does change them


def test_float32_models_and_models_asked_for_gradients_are_left_as_they_are(tiny_settings):
    store = ModelStore(tiny_settings)
    model, _ = store.load(MODEL, torch.float32)
    assert not can_pack(model) and pack_linears(model, 8) == 0
    assert all(type(m) is torch.nn.Linear for m in _linears(model))
    if not can_pack(store.load(MODEL, torch.bfloat16)[0]):
        return
    packed, _ = store.load(MODEL, torch.bfloat16)
    pack_linears(packed, 8)
    layer = packed.model.layers[0].mlp.up_proj
    x = torch.randn(2, layer.in_features, dtype=torch.bfloat16, requires_grad=True)
    layer(x).sum().backward()  # the packed op has no backward: the unpacked one runs
    assert x.grad is not None and x.grad.shape == x.shape


@native_bf16
def test_the_generator_serves_bf16_models_packed_and_answers_as_unpacked(tiny_settings, monkeypatch):
    packed = Generator(ModelStore(tiny_settings), dtype="bfloat16")
    exact = Generator(ModelStore(tiny_settings), dtype="float32")
    prompts = [CHAT, [{"role": "user", "content": "And a third one?"}]]
    answers = [packed.generate(MODEL, messages=chat, max_tokens=8, temperature=0) for chat in prompts]
    exact.generate(MODEL, messages=CHAT, max_tokens=1)
    assert packed._models[MODEL].packed and not exact._models[MODEL].packed
    monkeypatch.setattr(packed_linear, "pack_linears", lambda model, batch_size: 0)
    unpacked = Generator(ModelStore(tiny_settings), dtype="bfloat16")
    again = [unpacked.generate(MODEL, messages=chat, max_tokens=8, temperature=0) for chat in prompts]
    assert not unpacked._models[MODEL].packed
    assert [[t.id for t in a.tokens] for a in answers] == [[t.id for t in a.tokens] for a in again]
    for generator in (packed, exact, unpacked):
        generator.close()
