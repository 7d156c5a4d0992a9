"""A Llama decoding step compiled ahead of time for fixed shapes (torch.export + AOTInductor).

Measured on 2 cores of a Xeon with AMX, SmolLM2-135M-Instruct in bf16, 8 rows over 60-100 keys
(bench/decode_step.py): 33.4 ms a step through `LlamaDecoder` and oneDNN's packed products,
17.9 ms compiled. The compile freezes the weights and uses max-autotune's C++ GEMM templates (AMX
micro-kernels where the CPU has them): a product of 8 rows costs ~10 us instead of oneDNN's
~32 us per call, and each layer's element-wise work is fused into a few loops.

The price is fixed shapes. A package serves `rows` rows (fewer are padded) and keys in `capacity`
static columns per layer. A step that does not fit (more rows, a longer context, a prompt, a row
with a LoRA adapter: the frozen package holds the base weights only) goes the eager way. Building
a package takes 55-110 s per shape on 2 cores, so it is opt-in (the `compiled_decode_capacity`
setting) and built once per model, shape and torch version, by a child process: see `build`.

Why a child process: a compile runs its autotuning on the calling thread. In a serving process
that leaves another OpenMP team behind, and once a process holds more OpenMP threads than cores,
libgomp's workers sleep between parallel regions (batching.py): the same step took 64-80 ms.
Also, `torch.compile` from a thread other than the main one chose other kernels (no AMX
micro-GEMM, 33 ms); a child process compiles on its main thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from services.inference.batching import BASE
from services.inference.llama_decoder import _key_bias, _one_query_attention
from services.inference.llama_decoder import supports as supports_llama

log = logging.getLogger(__name__)

_INDUCTOR_CONFIG = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP"}


class StaticStep(torch.nn.Module):
    """One new token for each of `rows` rows, keys and values kept in fixed buffers.

    forward(ids [rows, 1], positions [rows], column [1], bias [rows, 1, 1, capacity], keys, values)
    writes each layer's new key and value at `column` of its buffers ([rows, kv heads, capacity,
    head dim], one per layer, changed in place) and returns the last position's logits [rows,
    vocabulary]. `bias` is 0 where a row attends and minus infinity elsewhere. LlamaDecoder's
    one-query step with its own pieces: the model's modules, transformers' rotary formula and the
    decoder's `_one_query_attention`."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, column: torch.Tensor, bias: torch.Tensor,
                keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        inner = self.model.model
        rows, heads, kv_heads, dim = ids.shape[0], self.heads, self.kv_heads, self.head_dim
        hidden = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(hidden, positions[:, None])
        for index, layer in enumerate(inner.layers):
            attention, mlp = layer.self_attn, layer.mlp
            x = layer.input_layernorm(hidden)
            query = F.linear(x, attention.q_proj.weight).view(rows, 1, heads, dim).transpose(1, 2)
            key = F.linear(x, attention.k_proj.weight).view(rows, 1, kv_heads, dim).transpose(1, 2)
            value = F.linear(x, attention.v_proj.weight).view(rows, 1, kv_heads, dim).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            keys[index].index_copy_(2, column, key)
            values[index].index_copy_(2, column, value)
            out = _one_query_attention(query, keys[index], values[index], bias, attention.scaling)
            hidden = hidden + F.linear(out.transpose(1, 2).reshape(rows, 1, heads * dim), attention.o_proj.weight)
            x = layer.post_attention_layernorm(hidden)
            hidden = hidden + F.linear(
                mlp.act_fn(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)
        return F.linear(inner.norm(hidden), self.model.lm_head.weight)[:, -1]


def supports(model: Any) -> bool:
    """Whether `StaticStep` computes `model`: what LlamaDecoder runs, without biases on the projections
    and with heads that split the hidden size (StaticStep's head dim)."""
    config = model.config
    split = config.hidden_size // config.num_attention_heads
    return (supports_llama(model) and not getattr(config, "attention_bias", False)
            and not getattr(config, "mlp_bias", False) and (getattr(config, "head_dim", None) or split) == split)


def buffers(model: Any, rows: int, capacity: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, empty key and value buffers [rows, kv heads, capacity, head dim] in the model's dtype."""
    config = model.config
    shape = (rows, config.num_key_value_heads, capacity, config.hidden_size // config.num_attention_heads)
    return ([torch.zeros(shape, dtype=model.dtype) for _ in range(config.num_hidden_layers)],
            [torch.zeros(shape, dtype=model.dtype) for _ in range(config.num_hidden_layers)])


def export_and_compile(model: Any, rows: int, capacity: int, path: Path) -> None:
    """Compile `model`'s StaticStep for `rows` x `capacity` into an AOTInductor package at `path`.
    Call it on a process's main thread, in a process that serves nothing (see the module's docstring)."""
    keys, values = buffers(model, rows, capacity)
    example = (torch.zeros((rows, 1), dtype=torch.long), torch.zeros(rows, dtype=torch.long), torch.tensor([0]),
               torch.zeros((rows, 1, 1, capacity)), keys, values)
    model.eval().requires_grad_(False)
    with torch.inference_mode():
        exported = torch.export.export(StaticStep(model).eval(), example)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.pt2")  # two builders never share one
        torch._inductor.aoti_compile_and_package(exported, package_path=str(partial),
                                                 inductor_configs=_INDUCTOR_CONFIG)
        os.replace(partial, path)  # whoever finds the package finds it whole


def model_identity(model_dir: Path) -> str:
    """What identifies the weights saved at `model_dir` for `package_path`: its weight and config
    files' paths, sizes and modification times (a model saved again gets a new package)."""
    files = sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"]
    stats = [(path.resolve(), path.stat()) for path in files]
    return "|".join(f"{path}:{stat.st_size}:{stat.st_mtime_ns}" for path, stat in stats)


def package_path(directory: Path, model_key: str, dtype: torch.dtype, rows: int, capacity: int) -> Path:
    """Where the package of one model, dtype and shape lives. `model_key` identifies the weights (a
    model id and its files); it is hashed, so no name of a client's becomes a path."""
    name = f"{model_key}|{dtype}|{rows}|{capacity}|torch {torch.__version__}"
    return directory / f"decode-{hashlib.sha256(name.encode()).hexdigest()[:24]}.pt2"


def build(model_dir: Path, dtype: torch.dtype, rows: int, capacity: int, path: Path, timeout: float = 1800) -> None:
    """Build the package of the model saved at `model_dir` in a child process (this module's
    `__main__`), unless `path` already holds it. RuntimeError with the child's last output if it fails."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "services.inference.compiled_decode", str(model_dir), str(dtype).removeprefix(
        "torch."), str(rows), str(capacity), str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(f"building the compiled decoding step failed ({done.returncode}): {done.stderr[-2000:]}")


class CompiledDecode:
    """A loaded package and its key/value buffers: `step` for the engine's decoding steps that fit.

    The engine's DynamicCache layers become views of the buffers (`[:rows, :, :length]`), so a step
    that follows a step costs no copy; after rows joined or left (the engine made new tensors) the
    cache is copied into the buffers first. Use it from one thread only (the engine's)."""

    def __init__(self, path: Path, model: Any, rows: int, capacity: int):
        self.rows, self.capacity = rows, capacity
        self._runner = torch._inductor.aoti_load_package(str(path))
        self._keys, self._values = buffers(model, rows, capacity)
        self.steps = 0  # decoding steps computed here

    def fits(self, rows: int, length: int, adapters: Sequence[str] | None) -> bool:
        """Whether a decoding step of `rows` rows over `length` keys (the new one included) can run here:
        base-model rows only."""
        return rows <= self.rows and length <= self.capacity and (adapters is None or set(adapters) <= {BASE})

    def step(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """The engine's decoding step: `ids` and `positions` [rows, 1], `mask` [rows, length] (the new
        column included), `cache` the rows' left-padded DynamicCache; its layers are extended."""
        rows, length = mask.shape
        layers = cache.layers
        if not self._holds(layers, rows, length - 1):
            for index, layer in enumerate(layers):
                self._keys[index][:rows, :, :length - 1] = layer.keys
                self._values[index][:rows, :, :length - 1] = layer.values
        bias = torch.full((self.rows, 1, 1, self.capacity), float("-inf"))
        bias[:rows, :, :, :length] = _key_bias(mask)
        bias[rows:, 0, 0, 0] = 0  # padding rows attend to one key: no row of nothing but minus infinity
        padded_ids = torch.zeros((self.rows, 1), dtype=torch.long)
        padded_ids[:rows] = ids
        padded_positions = torch.zeros(self.rows, dtype=torch.long)
        padded_positions[:rows] = positions[:, 0]
        logits = self._runner(padded_ids, padded_positions, torch.tensor([length - 1]), bias, self._keys,
                              self._values)[:rows]
        for index, layer in enumerate(layers):
            layer.keys = self._keys[index][:rows, :, :length]
            layer.values = self._values[index][:rows, :, :length]
        self.steps += 1
        return logits

    def _holds(self, layers: Any, rows: int, length: int) -> bool:
        """Whether every cache layer already is the front `[:rows, :, :length]` of its buffers."""
        return all(layer.keys.data_ptr() == keys.data_ptr() and layer.values.data_ptr() == values.data_ptr()
                   and layer.keys.shape[0] == rows and layer.keys.shape[2] == length
                   and layer.keys.stride() == keys.stride() and layer.values.stride() == values.stride()
                   for layer, keys, values in zip(layers, self._keys, self._values, strict=True))


def _main(argv: list[str]) -> None:
    """`python -m services.inference.compiled_decode MODEL_DIR DTYPE ROWS CAPACITY PACKAGE`."""
    from transformers import AutoModelForCausalLM

    model_dir, dtype_name, rows, capacity, path = argv
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True, use_safetensors=True,
                                                 trust_remote_code=False)
    if not supports(model):
        raise SystemExit(f"{model_dir}: not a model the compiled decoding step computes")
    export_and_compile(model, int(rows), int(capacity), Path(path))


if __name__ == "__main__":
    _main(sys.argv[1:])
