"""The engine's forward pass for Llama-architecture models: the model's own modules, without the
framework around them.

`LlamaForCausalLM.forward` spends a decoding step's time on more than its matmuls: building a 4D
causal mask through `masking_utils`, output-recording hooks and decorators on every layer, keyword
plumbing, and `sdpa_attention_forward`'s dispatch. On a CPU, where a small model's step is a few
tens of milliseconds, that is a quarter of it. `LlamaDecoder` runs the same layers by calling the
same modules (the embedding, each RMSNorm, each projection, the rotary embedding, the activation,
the head), so weights, packed layouts (packed_linear.py) and peft's LoRA layers are used exactly as
they are; what it writes itself is the loop over layers, the attention mask (built once per pass
from the engine's 2D mask), and the attention: one `scaled_dot_product_attention` call per layer
when reading prompts, and its own matmuls for a decoding step's single query (`one_query_attention`:
a step of 8 rows on an AMD EPYC without AMX went from 47 to 36 ms), in both cases with grouped query
heads left grouped (no copies of the keys and values).

Measured on 2 cores of a Xeon with AMX, SmolLM2-135M-Instruct in bf16 with packed weights, the two
alternately in one process: a decoding step of 8 rows over 60 tokens 29-31 ms with the model's
forward, 28 ms with this one; of one row 26-27 ms and 23-25 ms; reading a 60-token prompt 41-49 ms
and 39-40 ms. The generator uses it where the weights are packed, so only where answers already
differ from float32 in the last bits: a float32 model keeps the model's own forward, which the
exactness tests compare token for token with `generate`.

Rows may use different adapters: each of peft's LoRA layers is given the rows' adapter names, as
`PeftModel.forward(adapter_names=...)` gives them through its hooks, so its mixed-batch forward runs.
The decoder serves plain Llama models only (`supports`); anything else goes through the model's own
forward. tests/inference/test_llama_decoder.py compares the two in float32, with and without adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaForCausalLM, apply_rotary_pos_emb

# Columns of room kept after a cache layer's keys and values: a new tensor every this many decoding
# steps (or when rows join or leave) instead of every step.
_ROOM_COLUMNS = 64


def supports(model: Any) -> bool:
    """Whether `LlamaDecoder` can run `model` (the base model, before any peft wrapping): a Llama
    whose attention is scaled dot-product attention over all positions and whose layers are the
    library's own."""
    if type(model) is not LlamaForCausalLM:
        return False
    config = model.config
    return (getattr(config, "pretraining_tp", 1) == 1 and not getattr(config, "sliding_window", None)
            and config._attn_implementation in ("sdpa", "eager"))


class LlamaDecoder:
    """`__call__` computes what `LlamaForCausalLM(input_ids, attention_mask, position_ids,
    past_key_values, use_cache=True, logits_to_keep=1)` does, for the engine's left-padded batches."""

    def __init__(self, model: LlamaForCausalLM):
        if not supports(model):
            raise ValueError(f"LlamaDecoder runs plain Llama models, not {type(model).__name__}")
        self._model = model
        self._layers = list(model.model.layers)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                 adapters: Sequence[str] | None = None) -> torch.Tensor:
        """The last position's logits of each row ([rows, vocabulary], the model's dtype).

        `ids` and `positions` are [rows, new tokens]; `mask` is [rows, cached + new tokens], 1 where a
        row has a token; `cache` is the rows' DynamicCache, extended here. `adapters`: each row's peft
        adapter name, when the model's layers are wrapped by peft."""
        model = self._model.model
        hidden = model.embed_tokens(ids)
        position_embeddings = model.rotary_emb(hidden, positions)
        # One query per row (a decoding step): attention as matmuls, with the mask as a bias to add.
        if ids.shape[1] == 1:
            attend, allowed = one_query_attention, key_bias(mask)
        else:
            attend, allowed = _prompt_attention, _allowed(mask, ids.shape[1])
        lora = {} if adapters is None else {"adapter_names": list(adapters)}
        for index, layer in enumerate(self._layers):
            hidden = hidden + self._attention(layer.self_attn, layer.input_layernorm(hidden), position_embeddings,
                                              attend, allowed, cache, index, lora)
            mlp = layer.mlp
            x = layer.post_attention_layernorm(hidden)
            gate, up = _project(mlp.gate_proj, x, lora), _project(mlp.up_proj, x, lora)
            hidden = hidden + _project(mlp.down_proj, mlp.act_fn(gate) * up, lora)
        return self._model.lm_head(model.norm(hidden[:, -1:]))[:, -1]

    @staticmethod
    def _attention(attention, x: torch.Tensor, position_embeddings, attend, allowed: torch.Tensor, cache: Any,
                   index: int, lora: dict) -> torch.Tensor:
        rows, length = x.shape[:2]
        shape = (rows, length, -1, attention.head_dim)
        query = _project(attention.q_proj, x, lora).view(shape).transpose(1, 2)
        key = _project(attention.k_proj, x, lora).view(shape).transpose(1, 2)
        value = _project(attention.v_proj, x, lora).view(shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        key, value = _append(cache, index, key, value)
        out = attend(query, key, value, allowed, attention.scaling)
        return _project(attention.o_proj, out.transpose(1, 2).reshape(rows, length, -1), lora)


def _append(cache: Any, index: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`cache.update(key, value, index)` without copying the whole layer each step: a layer's keys and
    values are the front of a larger tensor, and a step writes its new columns into the room after
    them. DynamicCache's update concatenates, which copies every row's keys and values of every
    layer at every decoding step, a cost that grows with the context: SmolLM2, 8 rows, one step over
    60-100 tokens 28.6-29.4 ms with it and 27.7-28.8 ms without; over 1,000 tokens 56-57 ms and
    42-44 ms. Whoever replaces a layer's keys (the engine, when rows join or leave) just makes the
    next call start a new tensor."""
    if index >= len(cache.layers) or not cache.layers[index].is_initialized:
        return cache.update(key, value, index)
    layer = cache.layers[index]
    length, new = layer.keys.shape[2], key.shape[2]
    room = getattr(layer, "_room", None)
    if room is None or not _is_front_of(layer.keys, room[0]) or not _is_front_of(layer.values, room[1]) \
            or room[0].shape[2] < length + new:
        size = (*layer.keys.shape[:2], length + new + _ROOM_COLUMNS, layer.keys.shape[3])
        room = layer.keys.new_empty(size), layer.values.new_empty(size)
        room[0][:, :, :length] = layer.keys
        room[1][:, :, :length] = layer.values
        layer._room = room
    room[0][:, :, length:length + new] = key
    room[1][:, :, length:length + new] = value
    layer.keys, layer.values = room[0][:, :, :length + new], room[1][:, :, :length + new]
    return layer.keys, layer.values


def _is_front_of(tensor: torch.Tensor, whole: torch.Tensor) -> bool:
    """Whether `tensor` is `whole[:, :, :n]` for some n."""
    return (tensor.data_ptr() == whole.data_ptr() and tensor.stride() == whole.stride()
            and tensor.shape[:2] == whole.shape[:2] and tensor.shape[3] == whole.shape[3])


def _project(module: torch.nn.Module, x: torch.Tensor, lora: dict) -> torch.Tensor:
    """A projection; a peft LoRA layer also gets the rows' adapter names (its mixed-batch forward)."""
    return module(x, **lora) if lora and hasattr(module, "lora_A") else module(x)


def _prompt_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """Attention of a prompt's positions: `scaled_dot_product_attention` (flash attention on a CPU),
    grouped query heads left grouped; `allowed` is `_allowed`."""
    return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scale,
                                          enable_gqa=query.shape[1] != key.shape[1])


def one_query_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """Attention of one new position per row ([rows, heads, 1, head dim]) over [rows, kv heads,
    keys, head dim], in float32 from the model's dtype, each group of query heads against its own
    key/value head (grouped-query attention, nothing copied per head); `bias` is `key_bias`.

    What `scaled_dot_product_attention` computes, by other kernels: with one query, its CPU kernel
    (flash attention) does its blocked work on a 1-row block, and in bf16 on an AVX512-BF16 CPU
    without AMX that costs more than the layer's projections. Measured on 2 cores of an AMD EPYC
    (Zen 4), 8 rows, 9 query and 3 key/value heads of 64: 600 us a layer over 140 keys and
    2.6 ms over 600 keys; these matmuls 140 and 320 us. Same results to float32 rounding
    (tests/inference/test_llama_decoder.py compares the decoder with the model's forward)."""
    rows, heads, _, dim = query.shape
    groups = key.shape[1]
    grouped = query.reshape(rows, groups, heads // groups, dim).float()
    scores = torch.matmul(grouped, key.float().transpose(-1, -2)).mul_(scale).add_(bias)
    out = torch.matmul(torch.softmax(scores, dim=-1), value.float())
    return out.to(query.dtype).reshape(rows, heads, 1, dim)


def key_bias(mask: torch.Tensor) -> torch.Tensor:
    """[rows, 1, 1, cached + 1] float32: 0 for a row's tokens (`mask` 1), minus infinity for its padding."""
    bias = torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(mask == 0, float("-inf"))
    return bias[:, None, None, :]


def _allowed(mask: torch.Tensor, new: int) -> torch.Tensor:
    """[rows, 1, new, cached + new] booleans: which keys each new position attends to. A key must be
    a row's token (`mask`) and not after the query; a position that is padding attends to itself
    alone (its output is never used, and a row of nothing but masked keys would be NaN)."""
    total = mask.shape[1]
    keys = mask.bool()[:, None, None, :]
    query_at = torch.arange(total - new, total)[:, None]
    key_at = torch.arange(total)[None, :]
    return (keys & (key_at <= query_at)) | (key_at == query_at)
