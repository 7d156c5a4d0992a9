"""The engine's own Llama forward pass (llama_decoder.py) against the model's: the same logits and
cache for left-padded prefills over a cached prefix and for decoding steps, with rows on different
LoRA adapters, in float32; and the generator using it where weights are packed."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from services.inference import llama_decoder
from services.inference.batching import BASE
from services.inference.generation import Generator
from services.inference.llama_decoder import LlamaDecoder, supports
from services.shared.models import ModelStore, computes_bf16_natively

MODEL = "tiny-llama"


def _model(tiny_settings, dtype=torch.float32):
    model, _ = ModelStore(tiny_settings).load(MODEL, dtype)
    return model.eval()


def _batch(rows: int = 3, past: int = 5, new: int = 7):
    """ids, mask and positions of a left-padded prefill after `past` cached columns (row 1 has no
    prefix, row 2 a shorter prompt)."""
    torch.manual_seed(3)
    ids = torch.randint(5, 500, (rows, new))
    mask = torch.ones((rows, past + new), dtype=torch.long)
    mask[1, :past] = 0
    mask[2, past:past + 3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    return ids, mask, positions


def _prefix_cache(model, rows: int, past: int) -> DynamicCache:
    torch.manual_seed(4)
    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=torch.randint(5, 500, (rows, past)), past_key_values=cache, use_cache=True)
    return cache


def _run(forward, model, adapters=None, steps: int = 3):
    """Logits and final cache of a prefill over a prefix and `steps` greedy decoding steps."""
    ids, mask, positions = _batch()
    cache = _prefix_cache(model, 3, 5)
    logits = []
    with torch.inference_mode():
        for _ in range(steps + 1):
            logits.append(forward(ids, mask, positions, cache, adapters).float())
            ids = logits[-1].argmax(-1, keepdim=True)
            positions = mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones((3, 1), dtype=mask.dtype)], dim=-1)
    return logits, cache


def _hf(model):
    def forward(ids, mask, positions, cache, adapters):
        extra = {} if adapters is None else {"adapter_names": adapters}
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                     use_cache=True, logits_to_keep=1, **extra).logits[:, -1]
    return forward


def _assert_same(ours, theirs):
    (our_logits, our_cache), (their_logits, their_cache) = ours, theirs
    for got, expected in zip(our_logits, their_logits, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))
    # Where a row has a token (at padding each computes something else, which no row ever reads).
    tokens = _final_mask().bool()
    for mine, theirs_layer in zip(our_cache.layers, their_cache.layers, strict=True):
        for row in range(tokens.shape[0]):
            for ours_kv, theirs_kv in ((mine.keys, theirs_layer.keys), (mine.values, theirs_layer.values)):
                torch.testing.assert_close(ours_kv[row][:, tokens[row]], theirs_kv[row][:, tokens[row]],
                                           rtol=1e-5, atol=1e-5)


def _final_mask(steps: int = 3) -> torch.Tensor:
    _, mask, _ = _batch()
    return torch.cat([mask, torch.ones((mask.shape[0], steps + 1), dtype=mask.dtype)], dim=-1)[:, :-1]


def test_the_decoder_computes_the_models_logits_and_cache_for_padded_prefills_and_decoding(tiny_settings):
    model = _model(tiny_settings)
    _assert_same(_run(LlamaDecoder(model), model), _run(_hf(model), model))


def test_rows_on_different_adapters_get_what_peft_gives_them(tiny_settings):
    model = _model(tiny_settings)
    decoder = LlamaDecoder(model)  # made before peft wraps the layers, as the generator does
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                        init_lora_weights=False)
    torch.manual_seed(5)
    peft_model = get_peft_model(model, config, adapter_name="one")
    peft_model.add_adapter("two", config)
    peft_model.eval()
    adapters = ["one", BASE, "two"]
    ours = _run(decoder, model, adapters)
    _assert_same(ours, _run(_hf(peft_model), model, adapters))
    # The adapters do change the answer: not the base model's logits.
    assert not torch.allclose(ours[0][0][0], _run(decoder, model, [BASE] * 3)[0][0][0], atol=1e-4)


def test_only_plain_llama_models_are_run_by_the_decoder(tiny_settings):
    assert supports(_model(tiny_settings))
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    assert not supports(qwen)
    with pytest.raises(ValueError, match="plain Llama models, not Qwen2ForCausalLM"):
        LlamaDecoder(qwen)


def test_the_generator_decodes_with_it_exactly_where_weights_are_packed(tiny_settings, monkeypatch):
    calls = []
    real = LlamaDecoder.__call__
    monkeypatch.setattr(LlamaDecoder, "__call__", lambda self, *args: calls.append(1) or real(self, *args))
    exact = Generator(ModelStore(tiny_settings), dtype="float32")
    exact.generate(MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0)
    assert exact._models[MODEL].decoder is None and not calls
    exact.close()
    if not computes_bf16_natively("cpu"):
        return
    packed = Generator(ModelStore(tiny_settings), dtype="bfloat16")
    answer = packed.generate(MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0)
    assert answer.completion_tokens == 3
    assert isinstance(packed._models[MODEL].decoder, llama_decoder.LlamaDecoder)
    assert len(calls) == 3  # a prefill and two decoding steps
    packed.close()


def test_decoding_steps_write_into_room_after_the_cache_and_rows_leaving_start_a_new_one(tiny_settings):
    model = _model(tiny_settings)
    decoder, hf = LlamaDecoder(model), _hf(model)
    ids, mask, positions = _batch()
    ours, theirs = _prefix_cache(model, 3, 5), _prefix_cache(model, 3, 5)
    with torch.inference_mode():
        for step in range(4):
            logits = decoder(ids, mask, positions, ours)
            torch.testing.assert_close(logits, hf(ids, mask, positions, theirs, None), rtol=1e-5, atol=1e-5)
            if step == 2:
                where = ours.layers[0].keys.data_ptr()
            if step == 3:  # the step's column went into the room after the others: no new tensor
                assert ours.layers[0].keys.data_ptr() == where
            ids, positions = logits.argmax(-1, keepdim=True), mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones((3, 1), dtype=mask.dtype)], dim=-1)
        # Row 1 leaves, as the engine drops an ended row: its keys and values become new tensors.
        keep = torch.tensor([0, 2])
        for cache in (ours, theirs):
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
        ids, mask, positions = ids[keep], mask[keep], positions[keep]
        for _ in range(2):
            logits = decoder(ids, mask, positions, ours)
            torch.testing.assert_close(logits, hf(ids, mask, positions, theirs, None), rtol=1e-5, atol=1e-5)
            ids, positions = logits.argmax(-1, keepdim=True), mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones((2, 1), dtype=mask.dtype)], dim=-1)
