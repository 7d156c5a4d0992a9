"""Serving throughput and latency: tuneloop's inference service against plain `model.generate`.

Run from the repository root (after `make setup`, which converts SmolLM2-135M-Instruct):

    .venv/bin/python bench/serve.py [--clients 8] [--requests 16] [--max-tokens 48] [--dtype auto]

In one run, on SmolLM2-135M-Instruct, greedy, the same chat prompts:

- baselines: the prompts answered one by one with `model.generate` in this process (the model
  loaded by the model store, the prompt rendered with its chat template), in float32 (issue 5's
  reference baseline) and in bf16 (what the service's "auto" serves in where the CPU computes bf16
  natively), each after one warm-up call so oneDNN's kernels are built before the clock starts.
- lone: the same prompts sent one at a time to the running stack (`tuneloop up`'s launcher:
  NATS, the five services and the gateway as processes), streamed through the gateway's
  `/v1/chat/completions`; time to first token is when the first chunk with text arrives.
- concurrent: `--clients` clients sending the prompts through the same route at once, each taking
  the next prompt when its answer is complete.
- the service computes in `--dtype` (TUNELOOP_INFERENCE_DTYPE; "auto" is bf16 on a CPU with
  AVX512-BF16 or AMX). Its answers are compared: concurrent with lone, and lone with the baseline of
  the same dtype (greedy: the same prompt should give the same text).
- gateway overhead: one-token completions of a two-token prompt, alternately through the gateway
  (HTTP `/v1/completions`) and from the inference service directly (gRPC, as the gateway calls
  it); the difference of the medians.

Output tokens/s counts the tokens each answer has (`usage.completion_tokens`; the baseline's
generated ids) over the wall time of the whole phase. Targets (issue 5): concurrent ≥ 8x the
float32 baseline's output tokens/s (the bf16 ratio is printed beside it), p50 time to first token at `--clients` ≤ 1.5x the lone p50, and
gateway overhead ≤ 2 ms p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Running `python bench/serve.py` puts bench/ (not the repository root) on sys.path.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import httpx  # noqa: E402

from protos import inference_pb2, inference_pb2_grpc  # noqa: E402
from services.inference.precision import SERVING_DTYPES, serving_dtype  # noqa: E402
from services.shared.models import DEFAULT_MODEL_ID, ModelStore  # noqa: E402
from services.shared.rpc import INTERNAL_TOKEN_KEY, TENANT_KEY  # noqa: E402
from services.shared.settings import Settings  # noqa: E402
from tuneloop.launcher import LaunchConfig, Stack  # noqa: E402
from tuneloop.nats_server import free_port  # noqa: E402

TARGET_THROUGHPUT = 8.0
TARGET_TTFT = 1.5
TARGET_OVERHEAD_MS = 2.0
TOPICS = ["reset my password", "cancel my subscription", "update my billing address", "export my data",
          "change the language of the app", "add a second user", "recover a deleted file", "turn on two-factor login",
          "get a refund", "move to the annual plan", "connect the printer", "sync my calendar",
          "report a bug", "change my e-mail address", "close my account", "find my invoices"]


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"How do I {TOPICS[i % len(TOPICS)]}? Explain step by step."}]
            for i in range(n)]


def baseline(chats: list, max_tokens: int, dtype) -> dict:
    import torch

    model, tokenizer = ModelStore(Settings()).load(DEFAULT_MODEL_ID, dtype)
    model.eval()

    def answer(chat: list, limit: int) -> list[int]:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=limit, do_sample=False)
        return output[0, inputs["input_ids"].shape[1]:].tolist()

    answer(chats[0], 4)  # warm-up: the first bf16 matmuls of each shape build oneDNN kernels
    tokens, texts = 0, []
    started = time.perf_counter()
    for chat in chats:
        ids = answer(chat, max_tokens)
        tokens += len(ids)
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    elapsed = time.perf_counter() - started
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed, "texts": texts}


async def stream_one(http: httpx.AsyncClient, chat: list, max_tokens: int) -> tuple[float, int, str]:
    """(time to first token, completion tokens, text) of one streamed chat completion through the gateway."""
    started = time.perf_counter()
    first = None
    usage = 0
    text = ""
    body = {"model": DEFAULT_MODEL_ID, "messages": chat, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            text += "".join(choice["delta"].get("content") or "" for choice in chunk["choices"])
            if first is None and any(choice["delta"].get("content") for choice in chunk["choices"]):
                first = time.perf_counter() - started
    assert first is not None and usage > 0, "an answer without text"
    return first, usage, text


async def clients(http: httpx.AsyncClient, chats: list, max_tokens: int, n_clients: int) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for index, chat in enumerate(chats):
        queue.put_nowait((index, chat))
    ttfts: list[float] = []
    texts: list[str] = [""] * len(chats)
    tokens = 0

    async def client() -> None:
        nonlocal tokens
        while not queue.empty():
            index, chat = queue.get_nowait()
            ttft, used, texts[index] = await stream_one(http, chat, max_tokens)
            ttfts.append(ttft)
            tokens += used

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(n_clients)))
    elapsed = time.perf_counter() - started
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed, "texts": texts,
            "ttft_p50_ms": statistics.median(ttfts) * 1000, "ttft_p95_ms": _p95(ttfts) * 1000}


async def overhead(http: httpx.AsyncClient, inference_addr: str, internal_token: str, n: int) -> dict:
    """Median latency of a one-token completion of a two-token prompt (little model time, so little
    noise) through the gateway and straight from the service, alternately."""
    metadata = ((INTERNAL_TOKEN_KEY, internal_token), (TENANT_KEY, "default"))
    via_gateway, direct = [], []
    async with grpc.aio.insecure_channel(inference_addr) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        request = inference_pb2.GenerateRequest(model=DEFAULT_MODEL_ID, prompt="Hi", max_tokens=1)
        body = {"model": DEFAULT_MODEL_ID, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
        for _ in range(n):
            started = time.perf_counter()
            (await http.post("/v1/completions", json=body)).raise_for_status()
            via_gateway.append(time.perf_counter() - started)
            started = time.perf_counter()
            await stub.Generate(request, metadata=metadata, timeout=60)
            direct.append(time.perf_counter() - started)
    gateway_ms, direct_ms = statistics.median(via_gateway) * 1000, statistics.median(direct) * 1000
    return {"gateway_p50_ms": gateway_ms, "direct_p50_ms": direct_ms, "overhead_p50_ms": gateway_ms - direct_ms}


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def against_the_stack(stack: Stack, api_key: str, chats: list, args) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=600) as http:
        await stream_one(http, chats[0], 4)  # loads the model
        lone = await clients(http, chats, args.max_tokens, 1)
        concurrent = await clients(http, chats, args.max_tokens, args.clients)
        inference = next(part for part in stack.parts if part.name == "inference")
        cost = await overhead(http, f"127.0.0.1:{inference.env['TUNELOOP_GRPC_PORT']}",
                              inference.env["TUNELOOP_INTERNAL_TOKEN"], args.overhead_requests)
    return {"lone": lone, "concurrent": concurrent, "overhead": cost}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16, help="prompts per phase")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--overhead-requests", type=int, default=100)
    parser.add_argument("--dtype", choices=SERVING_DTYPES, default="auto",
                        help="what the service computes in (TUNELOOP_INFERENCE_DTYPE)")
    args = parser.parse_args()
    chats = prompts(args.requests)
    served_dtype = serving_dtype(args.dtype)

    plain = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        print(f"baseline: {args.requests} prompts one by one with model.generate in {name} ...", flush=True)
        plain[name] = baseline(chats, args.max_tokens, dtype)
        print(f"  {plain[name]['tokens']} tokens in {plain[name]['seconds']:.1f}s: "
              f"{plain[name]['tokens_per_s']:.1f} tokens/s", flush=True)

    api_key = "tl-bench-" + secrets.token_hex(12)
    os.environ["TUNELOOP_API_KEY"] = api_key
    os.environ["TUNELOOP_INFERENCE_DTYPE"] = args.dtype
    os.environ.setdefault("TUNELOOP_INTERNAL_TOKEN", secrets.token_urlsafe(24))
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-serve-") as data_dir:
        stack = Stack(LaunchConfig(data_dir=Path(data_dir), port=free_port(), grpc_port=free_port(),
                                   startup_timeout_s=180), echo=lambda _line: None)
        stack.start()
        try:
            print(f"stack up, serving in {str(served_dtype).removeprefix('torch.')}; lone, concurrent and "
                  "overhead phases ...", flush=True)
            served = asyncio.run(against_the_stack(stack, api_key, chats, args))
        finally:
            stack.stop()
    report(args, plain, served, str(served_dtype).removeprefix("torch."))


def report(args, plain: dict, served: dict, served_dtype: str) -> None:
    lone, concurrent, cost = served["lone"], served["concurrent"], served["overhead"]
    ttft = concurrent["ttft_p50_ms"] / lone["ttft_p50_ms"]
    rows = [
        ("plain model.generate float32, one by one", plain["float32"]["tokens_per_s"], None, None),
        ("plain model.generate bf16, one by one", plain["bfloat16"]["tokens_per_s"], None, None),
        (f"service ({served_dtype}), 1 client", lone["tokens_per_s"], lone["ttft_p50_ms"], lone["ttft_p95_ms"]),
        (f"service ({served_dtype}), {args.clients} clients", concurrent["tokens_per_s"], concurrent["ttft_p50_ms"],
         concurrent["ttft_p95_ms"]),
    ]
    print(f"\n{'run':<44} {'output tok/s':>12} {'TTFT p50 ms':>12} {'TTFT p95 ms':>12}")
    for name, rate, p50, p95 in rows:
        print(f"{name:<44} {rate:>12.1f} {p50 or 0:>12.0f} {p95 or 0:>12.0f}")
    print()
    for name in ("float32", "bfloat16"):
        target = f" (target >= {TARGET_THROUGHPUT}x)" if name == "float32" else ""
        print(f"throughput at {args.clients} clients / sequential generate in {name}: "
              f"{concurrent['tokens_per_s'] / plain[name]['tokens_per_s']:.2f}x{target}; "
              f"at 1 client: {lone['tokens_per_s'] / plain[name]['tokens_per_s']:.2f}x")
    print(f"TTFT p50 at {args.clients} clients / lone: {ttft:.2f}x (target <= {TARGET_TTFT}x)")
    print(f"gateway overhead p50: {cost['overhead_p50_ms']:.2f} ms (gateway {cost['gateway_p50_ms']:.1f} ms, "
          f"direct gRPC {cost['direct_p50_ms']:.1f} ms; target <= {TARGET_OVERHEAD_MS} ms)")
    same_as_lone = sum(a == b for a, b in zip(concurrent["texts"], lone["texts"], strict=True))
    reference = plain["bfloat16" if served_dtype == "bfloat16" else "float32"]["texts"]
    same_as_generate = sum(a == b for a, b in zip(lone["texts"], reference, strict=True))
    print(f"answers: {same_as_lone}/{len(lone['texts'])} concurrent ones equal the lone ones; "
          f"{same_as_generate}/{len(reference)} lone ones equal plain generate's in {served_dtype}")


if __name__ == "__main__":
    main()
