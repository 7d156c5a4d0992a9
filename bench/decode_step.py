"""One decoding step of SmolLM2-135M-Instruct: the engine's eager step against an ahead-of-time
compiled one (torch.export + AOTInductor), in the same process.

Run from the repository root (after `make setup`):

    .venv/bin/python bench/decode_step.py [--rows 8] [--capacity 2048] [--context 60] [--steps 40]

What it compares, in bf16 on the CPU, both over the same rows and keys:

- eager: what the service runs today. `LlamaDecoder` (services/inference/llama_decoder.py) over
  the packed oneDNN weights (packed_linear.py) and a DynamicCache, one query per row.
- compiled: services/inference/compiled_decode.py, what the service serves decoding steps from
  (the `compiled_decode_capacity` setting). The same layers written for `rows` x 1 new token, keys
  and values in per-layer buffers of `capacity` columns of which attention reads the first
  `length` (the graph's one dynamic size), the mask as an additive bias, exported with
  torch.export and compiled by AOTInductor with weight freezing and max-autotune (C++ GEMM
  templates or oneDNN, per product), built by a child process (compiled_decode.build; the
  module's docstring says why) and loaded with `aoti_load_package`.

Both start from the same past keys and values. It prints each step's p50 and the ratio, and how
far the compiled step's logits are from the eager one's (both bf16: the kernels accumulate in
different orders, so last bits differ; tests/inference/test_compiled_decode.py compares them in
float32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Running `python bench/decode_step.py` puts bench/ (not the repository root) on sys.path.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from services.inference.compiled_decode import CompiledDecode, build  # noqa: E402
from services.inference.llama_decoder import LlamaDecoder  # noqa: E402
from services.inference.packed_linear import pack_linears  # noqa: E402
from services.shared.models import DEFAULT_MODEL_ID, ModelStore  # noqa: E402
from services.shared.settings import Settings  # noqa: E402


def load_model():
    model, _ = ModelStore(Settings()).load(DEFAULT_MODEL_ID, torch.bfloat16)
    model.eval().requires_grad_(False)
    return model


def p50_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def measure(path: Path, rows: int, capacity: int, context: int, steps: int) -> dict:
    from transformers import DynamicCache

    model = load_model()
    compiled = CompiledDecode(path, model, rows, capacity)  # loads its own frozen copy of the weights
    pack_linears(model, 16)  # the eager step's layout
    decoder = LlamaDecoder(model)
    generator = torch.Generator().manual_seed(0)
    vocabulary = model.config.vocab_size
    eager_times, compiled_times, differences, agree = [], [], [], 0
    with torch.inference_mode():
        prompt = torch.randint(0, vocabulary, (rows, context), generator=generator)
        mask = torch.ones((rows, context), dtype=torch.long)
        cache = DynamicCache()
        decoder(prompt, mask, torch.arange(context)[None].expand(rows, context), cache)
        # The same past for both; the compiled step copies it into its buffers at its first step.
        ours = DynamicCache(ddp_cache_data=[(layer.keys.clone(), layer.values.clone()) for layer in cache.layers])
        for _ in range(min(steps, capacity - context)):
            ids = torch.randint(0, vocabulary, (rows, 1), generator=generator)
            positions = mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
            started = time.perf_counter()
            eager = decoder(ids, mask, positions, cache)
            eager_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            logits = compiled.step(ids, mask, positions, ours)
            compiled_times.append(time.perf_counter() - started)
            differences.append(float((logits.float() - eager.float()).abs().max()))
            agree += int((logits.argmax(-1) == eager.argmax(-1)).sum())
    measured = len(eager_times)
    return {"eager_ms": p50_ms(eager_times[3:]), "compiled_ms": p50_ms(compiled_times[3:]), "steps": measured,
            "max_logit_difference": max(differences), "argmax_agree": agree / (measured * rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--capacity", type=int, default=2048, help="the most keys of the compiled step")
    parser.add_argument("--context", type=int, default=60, help="tokens already read before the steps")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    if args.context + 4 > args.capacity:
        parser.error("--capacity must leave room for a few steps after --context")
    with tempfile.TemporaryDirectory(prefix="decode-step-") as scratch:
        path = Path(scratch) / "step.pt2"
        print(f"building the compiled step ({args.rows} rows, up to {args.capacity} keys) in a child process ...",
              flush=True)
        started = time.perf_counter()
        build(ModelStore(Settings()).ensure(DEFAULT_MODEL_ID), torch.bfloat16, args.rows, args.capacity, path)
        built = time.perf_counter() - started
        result = measure(path, args.rows, args.capacity, args.context, args.steps)
    print(f"build: {built:.0f} s")
    print(f"{args.rows} rows, keys {args.context}-{args.context + result['steps']}, {result['steps']} steps:")
    print(f"  eager (LlamaDecoder, packed oneDNN weights): p50 {result['eager_ms']:.1f} ms")
    print(f"  compiled (AOTInductor, up to {args.capacity} keys): p50 {result['compiled_ms']:.1f} ms")
    print(f"  eager / compiled: {result['eager_ms'] / result['compiled_ms']:.2f}x")
    print(f"  logits: max difference {result['max_logit_difference']:.3f}, "
          f"same argmax in {result['argmax_agree']:.0%} of rows")


if __name__ == "__main__":
    main()
