"""A Llama decoding step compiled ahead of time (torch.export + AOTInductor).

The step is compiled for a fixed number of rows (fewer are padded) and any number of keys up to a
capacity: keys and values live in per-layer buffers of `capacity` columns, written in place, and
attention reads the first `length` of them (the one dynamic size of the graph; every product has
static shapes). The compile freezes the weights and lets max-autotune choose, per product, between
its C++ GEMM templates and ATen's (oneDNN) kernels; each layer's element-wise work is fused.

Measured with SmolLM2-135M-Instruct in bf16, 8 rows (bench/decode_step.py, RESULTS.md):

- 2 cores of an AMD EPYC (Zen 4: AVX512-BF16, no AMX): eager `LlamaDecoder` 32 ms a step over
  60-100 keys; compiled 18 ms over 64 keys, 19 over 100, 21 over 200, 25 over 400, 35 over 1000,
  55 over 2000 (attention grows with the keys, in both). Autotuned, the step takes what it takes
  with oneDNN's products alone (20.0 ms over 60-100 keys, both with 128 static columns): the
  templates have no AVX512-BF16 kernel (they convert to float32), 43 ms with them alone.
- 2 cores of a Xeon with AMX (session 10, a static 128-key step with the templates alone): 33.4
  -> 17.9 ms; the templates' AMX micro-kernels compute a product of 8 rows in ~10 us against
  oneDNN's ~32 us. This dynamic-keys step with autotuning was not measured on that CPU.
- Attention over a static capacity instead (every step reads all of it): 20 ms at 128 columns,
  28 at 256, 30 at 512 on the EPYC; hence the dynamic key length.

A step that does not fit (more rows, more keys than the capacity, a prompt, a row with a LoRA
adapter: the frozen package holds the base weights only) goes the eager way. Building a package
takes 60-130 s on 2 cores, once per model, shape, torch version and step version; the service
builds it in the background and serves eagerly meanwhile (generation.py).

Why a child process builds it: a compile runs its autotuning on the calling thread. In a serving
process that leaves another OpenMP team behind, and once a process holds more OpenMP threads than
cores, libgomp's workers sleep between parallel regions (batching.py): the same step took 64-80 ms.
Also, `torch.compile` from a thread other than the main one chose other kernels (no AMX
micro-GEMM, 33 ms, on the Xeon); a child process compiles on its main thread.
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
from services.inference.llama_decoder import key_bias, one_query_attention
from services.inference.llama_decoder import supports as supports_llama
from services.inference.settings import MIN_COMPILED_DECODE_CAPACITY as MIN_CAPACITY

log = logging.getLogger(__name__)

_INDUCTOR_CONFIG = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
# Part of every package's key: a package built by an earlier version of DecodeStep is not this one's.
STEP_VERSION = 2
# Packages a directory keeps (`prune`): the models one service serves at once, with room to spare.
KEEP_PACKAGES = 8
_PARENT_ENV = "TUNELOOP_COMPILE_PARENT_PID"  # set by `build` for its child: see _end_with_parent
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class DecodeStep(torch.nn.Module):
    """One new token for each of `rows` rows, keys and values kept in fixed buffers.

    forward(ids [rows, 1], positions [rows], column [1], bias [rows, 1, 1, length], keys, values)
    writes each layer's new key and value at `column` (length - 1) of its buffers ([rows, kv heads,
    columns, head dim], one per layer, changed in place), attends over their first `length`
    columns and returns the last position's logits [rows, vocabulary]. `bias` is 0 where a row
    attends and minus infinity elsewhere. LlamaDecoder's one-query step with its own pieces: the
    model's modules, transformers' rotary formula and the decoder's `one_query_attention`."""

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
        length = bias.shape[-1]
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
            out = one_query_attention(query, keys[index][:, :, :length], values[index][:, :, :length], bias,
                                       attention.scaling)
            hidden = hidden + F.linear(out.transpose(1, 2).reshape(rows, 1, heads * dim), attention.o_proj.weight)
            x = layer.post_attention_layernorm(hidden)
            hidden = hidden + F.linear(
                mlp.act_fn(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)
        return F.linear(inner.norm(hidden), self.model.lm_head.weight)[:, -1]


def supports(model: Any) -> bool:
    """Whether `DecodeStep` computes `model`: what LlamaDecoder runs, without biases on the projections
    and with heads that split the hidden size (DecodeStep's head dim)."""
    config = model.config
    split = config.hidden_size // config.num_attention_heads
    return (supports_llama(model) and not getattr(config, "attention_bias", False)
            and not getattr(config, "mlp_bias", False) and (getattr(config, "head_dim", None) or split) == split)


def buffers(model: Any, rows: int, capacity: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, empty key and value buffers [rows, kv heads, capacity + 1, head dim] in the model's
    dtype. The column more than any step reads: an export would otherwise specialise the step
    whose keys fill the buffers (a slice of a whole dimension) as a graph of its own."""
    config = model.config
    shape = (rows, config.num_key_value_heads, capacity + 1, config.hidden_size // config.num_attention_heads)
    return ([torch.zeros(shape, dtype=model.dtype) for _ in range(config.num_hidden_layers)],
            [torch.zeros(shape, dtype=model.dtype) for _ in range(config.num_hidden_layers)])


def export_and_compile(model: Any, rows: int, capacity: int, path: Path) -> None:
    """Compile `model`'s DecodeStep for `rows` rows and 2 to `capacity` keys into an AOTInductor
    package at `path`. Call it on a process's main thread, in a process that serves nothing (see the
    module's docstring)."""
    if capacity < MIN_CAPACITY:
        raise ValueError(f"capacity must be at least {MIN_CAPACITY} keys, not {capacity}")
    keys, values = buffers(model, rows, capacity)
    example_length = MIN_CAPACITY // 2  # neither 0 nor 1, which an export specialises on
    example = (torch.zeros((rows, 1), dtype=torch.long), torch.zeros(rows, dtype=torch.long),
               torch.tensor([example_length - 1]), torch.zeros((rows, 1, 1, example_length)), keys, values)
    length = torch.export.Dim("keys", min=2, max=capacity)
    dynamic = (None, None, None, {3: length}, [None] * len(keys), [None] * len(values))
    model.eval().requires_grad_(False)
    with torch.inference_mode():
        exported = torch.export.export(DecodeStep(model).eval(), example, dynamic_shapes=dynamic)
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
    name = f"{model_key}|{dtype}|{rows}|{capacity}|torch {torch.__version__}|step {STEP_VERSION}|{_INDUCTOR_CONFIG}"
    return directory / f"decode-{hashlib.sha256(name.encode()).hexdigest()[:24]}.pt2"


def build(model_dir: Path, dtype: torch.dtype, rows: int, capacity: int, path: Path, timeout: float = 1800) -> None:
    """Build the package of the model saved at `model_dir` in a child process (this module's
    `__main__`), unless `path` already holds it; afterwards the directory keeps the `KEEP_PACKAGES`
    packages used most recently. RuntimeError with the child's last output if it fails.

    On Linux the child ends when the thread that called `build` does (a stopped service leaves no
    compile running)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "services.inference.compiled_decode", str(model_dir), str(dtype).removeprefix(
        "torch."), str(rows), str(capacity), str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, _PARENT_ENV: str(os.getpid())})
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(f"building the compiled decoding step failed ({done.returncode}): {done.stderr[-2000:]}")
    prune(path.parent, keep=path)


def prune(directory: Path, keep: Path) -> None:
    """Delete the packages in `directory` past the `KEEP_PACKAGES` used most recently (`keep` stays).
    A package is keyed by its model's files, so each full fine-tune served leaves one (~330 MB for
    SmolLM2); a process that loaded one has its own copy, so deleting it stops no one."""
    packages = sorted(directory.glob("decode-*.pt2"), key=lambda package: package.stat().st_mtime, reverse=True)
    for package in [package for package in packages if package != keep][KEEP_PACKAGES - 1:]:
        package.unlink(missing_ok=True)


class CompiledDecode:
    """A loaded package and its key/value buffers: `step` for the engine's decoding steps that fit.

    The engine's DynamicCache layers become views of the buffers (`[:rows, :, :length]`), so a step
    that follows a step costs no copy; after rows joined or left (the engine made new tensors) the
    cache is copied into the buffers first. Create and use it on one thread only, the engine's: its
    buffers are computed there, and no other thread's OpenMP team (the module's docstring)."""

    def __init__(self, path: Path, model: Any, rows: int, capacity: int):
        self.rows, self.capacity = rows, capacity
        self._runner = torch._inductor.aoti_load_package(str(path))
        os.utime(path)  # used now: `prune` keeps the packages used most recently
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
        bias = torch.full((self.rows, 1, 1, length), float("-inf"))
        bias[:rows] = key_bias(mask)
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


def _end_with_parent() -> None:
    """Linux: have the kernel end this process (SIGTERM) when the thread that started it ends."""
    parent = os.environ.get(_PARENT_ENV)
    if not sys.platform.startswith("linux") or parent is None:
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # it ended before the line above: nobody waits for this build
        raise SystemExit("the process that asked for this build has ended")


def _main(argv: list[str]) -> None:
    """`python -m services.inference.compiled_decode MODEL_DIR DTYPE ROWS CAPACITY PACKAGE`."""
    from transformers import AutoModelForCausalLM

    model_dir, dtype_name, rows, capacity, path = argv
    _end_with_parent()
    # A service builds while it serves: its requests come first, the build takes what is left.
    os.nice(19)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True, use_safetensors=True,
                                                 trust_remote_code=False)
    if not supports(model):
        raise SystemExit(f"{model_dir}: not a model the compiled decoding step computes")
    export_and_compile(model, int(rows), int(capacity), Path(path))


if __name__ == "__main__":
    _main(sys.argv[1:])
