"""One decoding step of SmolLM2-135M-Instruct: the engine's eager step against an ahead-of-time
compiled one (torch.export + AOTInductor), in the same process.

Run from the repository root (after `make setup`):

    .venv/bin/python bench/decode_step.py [--rows 8] [--capacity 128] [--context 60] [--steps 40]

What it compares, in bf16 on the CPU, both over the same rows and keys:

- eager: what the service runs today. `LlamaDecoder` (services/inference/llama_decoder.py) over
  the packed oneDNN weights (packed_linear.py) and a DynamicCache, one query per row.
- compiled: the same layers written for fixed shapes (`rows` x 1 new token, keys and values in
  static per-layer buffers of `capacity` columns, the mask as an additive bias), exported with
  torch.export and compiled by AOTInductor with weight freezing and max-autotune's C++ GEMM
  templates (AMX micro-kernels where the CPU has them), loaded with `aoti_load_package`.

The package is built by a child process (this script with `--build`): a compile leaves OpenMP
teams behind on the threads that ran its autotuning, and torch's OpenMP workers sleep instead
of spinning once the process holds more of them than there are cores (see
services/inference/batching.py), which would slow every later step. The timing process computes
on its main thread only.

It prints each step's p50 and the ratio, and how far the compiled step's logits are from the
eager one's (both bf16: the kernels accumulate in different orders, so last bits differ).
This is a measurement, not a serving path: the engine does not use the compiled step (yet).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Running `python bench/decode_step.py` puts bench/ (not the repository root) on sys.path.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from services.inference.llama_decoder import LlamaDecoder  # noqa: E402
from services.inference.packed_linear import pack_linears  # noqa: E402
from services.shared.models import DEFAULT_MODEL_ID, ModelStore  # noqa: E402
from services.shared.settings import Settings  # noqa: E402


class StaticStep(torch.nn.Module):
    """One new token for each of `rows` rows, keys and values kept in fixed buffers.

    forward(ids [rows, 1], positions [rows], column [1], bias [rows, 1, 1, capacity], keys, values)
    writes each layer's new key and value at `column` of its buffers ([rows, kv heads, capacity,
    head dim], one per layer, changed in place) and returns the last position's logits [rows,
    vocabulary]. `bias` is 0 where a row attends and minus infinity elsewhere. Same arithmetic as
    LlamaDecoder's one-query step: RMSNorm and rotary embedding through the model's own modules and
    formulas, attention in float32, grouped query heads against their own key/value head."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads

    def forward(self, ids, positions, column, bias, keys, values):
        inner = self.model.model
        rows, heads, kv_heads, dim = ids.shape[0], self.heads, self.kv_heads, self.head_dim
        hidden = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(hidden, positions[:, None])
        cos, sin = cos[:, None], sin[:, None]  # [rows, 1, 1, head dim]: every head

        def rotate(x):
            half = torch.cat([-x[..., dim // 2:], x[..., :dim // 2]], dim=-1)
            return x * cos + half * sin

        for index, layer in enumerate(inner.layers):
            attention, mlp = layer.self_attn, layer.mlp
            x = layer.input_layernorm(hidden)
            query = F.linear(x, attention.q_proj.weight).view(rows, 1, heads, dim).transpose(1, 2)
            key = F.linear(x, attention.k_proj.weight).view(rows, 1, kv_heads, dim).transpose(1, 2)
            value = F.linear(x, attention.v_proj.weight).view(rows, 1, kv_heads, dim).transpose(1, 2)
            query, key = rotate(query), rotate(key)
            keys[index].index_copy_(2, column, key)
            values[index].index_copy_(2, column, value)
            grouped = query.reshape(rows, kv_heads, heads // kv_heads, dim).float()
            scores = torch.matmul(grouped, keys[index].float().transpose(-1, -2)) * attention.scaling + bias
            out = torch.matmul(torch.softmax(scores, dim=-1), values[index].float())
            hidden = hidden + F.linear(out.to(hidden.dtype).reshape(rows, 1, heads * dim), attention.o_proj.weight)
            x = layer.post_attention_layernorm(hidden)
            up = F.linear(mlp.act_fn(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight),
                          mlp.down_proj.weight)
            hidden = hidden + up
        return F.linear(inner.norm(hidden), self.model.lm_head.weight)[:, -1]


def buffers(model, rows: int, capacity: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    config = model.config
    shape = (rows, config.num_key_value_heads, capacity, config.hidden_size // config.num_attention_heads)
    layers = config.num_hidden_layers
    return ([torch.zeros(shape, dtype=model.dtype) for _ in range(layers)],
            [torch.zeros(shape, dtype=model.dtype) for _ in range(layers)])


def load_model():
    model, _ = ModelStore(Settings()).load(DEFAULT_MODEL_ID, torch.bfloat16)
    model.eval().requires_grad_(False)
    return model


def build(path: Path, rows: int, capacity: int) -> None:
    """Export the static step and compile it into an AOTInductor package at `path`."""
    model = load_model()
    keys, values = buffers(model, rows, capacity)
    example = (torch.zeros((rows, 1), dtype=torch.long), torch.zeros(rows, dtype=torch.long), torch.tensor([0]),
               torch.zeros((rows, 1, 1, capacity)), keys, values)
    with torch.inference_mode():
        exported = torch.export.export(StaticStep(model).eval(), example)
        torch._inductor.aoti_compile_and_package(
            exported, package_path=str(path),
            inductor_configs={"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP"})


def p50_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def measure(path: Path, rows: int, capacity: int, context: int, steps: int) -> dict:
    from transformers import DynamicCache

    model = load_model()
    compiled = torch._inductor.aoti_load_package(str(path))
    pack_linears(model, 16)  # after the package holds its own frozen copy; the eager step's layout
    decoder = LlamaDecoder(model)
    generator = torch.Generator().manual_seed(0)
    vocabulary = model.config.vocab_size
    keys, values = buffers(model, rows, capacity)
    eager_times, compiled_times, differences, agree = [], [], [], 0
    with torch.inference_mode():
        prompt = torch.randint(0, vocabulary, (rows, context), generator=generator)
        mask = torch.ones((rows, context), dtype=torch.long)
        cache = DynamicCache()
        decoder(prompt, mask, torch.arange(context)[None].expand(rows, context), cache)
        for index, layer in enumerate(cache.layers):  # the same past for both
            keys[index][:, :, :context] = layer.keys
            values[index][:, :, :context] = layer.values
        bias = torch.full((rows, 1, 1, capacity), float("-inf"))
        bias[..., :context] = 0
        for step in range(steps):
            length = context + step
            if length >= capacity:
                break
            ids = torch.randint(0, vocabulary, (rows, 1), generator=generator)
            positions = torch.full((rows,), length)
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
            bias[..., length] = 0
            started = time.perf_counter()
            eager = decoder(ids, mask, positions[:, None], cache)
            eager_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            logits = compiled(ids, positions, torch.tensor([length]), bias, keys, values)
            compiled_times.append(time.perf_counter() - started)
            differences.append(float((logits.float() - eager.float()).abs().max()))
            agree += int((logits.argmax(-1) == eager.argmax(-1)).sum())
    measured = len(eager_times)
    return {"eager_ms": p50_ms(eager_times[3:]), "compiled_ms": p50_ms(compiled_times[3:]), "steps": measured,
            "max_logit_difference": max(differences), "argmax_agree": agree / (measured * rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--capacity", type=int, default=128, help="key/value columns of the compiled step")
    parser.add_argument("--context", type=int, default=60, help="tokens already read before the steps")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # the child process: build only
    args = parser.parse_args()
    if args.context + 4 > args.capacity:
        parser.error("--capacity must leave room for a few steps after --context")
    if args.build:
        build(args.build, args.rows, args.capacity)
        return
    with tempfile.TemporaryDirectory(prefix="decode-step-") as scratch:
        path = Path(scratch) / "step.pt2"
        print(f"building the compiled step ({args.rows} rows, {args.capacity} columns) in a child process ...",
              flush=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--build", str(path), "--rows", str(args.rows),
                        "--capacity", str(args.capacity), "--context", str(args.context)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        built = time.perf_counter() - started
        result = measure(path, args.rows, args.capacity, args.context, args.steps)
    print(f"build: {built:.0f} s")
    print(f"{args.rows} rows, keys {args.context}-{args.context + result['steps']}, {result['steps']} steps:")
    print(f"  eager (LlamaDecoder, packed oneDNN weights): p50 {result['eager_ms']:.1f} ms")
    print(f"  compiled (AOTInductor, {args.capacity} columns): p50 {result['compiled_ms']:.1f} ms")
    print(f"  eager / compiled: {result['eager_ms'] / result['compiled_ms']:.2f}x")
    print(f"  logits: max difference {result['max_logit_difference']:.3f}, "
          f"same argmax in {result['argmax_agree']:.0%} of rows")


if __name__ == "__main__":
    main()
