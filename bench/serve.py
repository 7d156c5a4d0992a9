"""Serving throughput and latency: tuneloop's inference service against plain `model.generate`.

Run from the repository root (after `make setup`, which converts SmolLM2-135M-Instruct):

    .venv/bin/python bench/serve.py [--clients 8] [--requests 16] [--max-tokens 48]

In one run, on SmolLM2-135M-Instruct in float32, greedy, the same chat prompts:

- baseline: the prompts answered one by one with `model.generate` in this process (the model
  loaded by the model store, the prompt rendered with its chat template).
- lone: the same prompts sent one at a time to the running stack (`tuneloop up`'s launcher:
  NATS, the five services and the gateway as processes), streamed through the gateway's
  `/v1/chat/completions`; time to first token is when the first chunk with text arrives.
- concurrent: `--clients` clients sending the prompts through the same route at once, each taking
  the next prompt when its answer is complete.
- gateway overhead: one-token completions of a two-token prompt, alternately through the gateway
  (HTTP `/v1/completions`) and from the inference service directly (gRPC, as the gateway calls
  it); the difference of the medians.

Output tokens/s counts the tokens each answer has (`usage.completion_tokens`; the baseline's
generated ids) over the wall time of the whole phase. Targets (issue 5): concurrent ≥ 8x the
baseline's output tokens/s, p50 time to first token at `--clients` ≤ 1.5x the lone p50, and
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


def baseline(chats: list, max_tokens: int) -> dict:
    import torch

    model, tokenizer = ModelStore(Settings()).load(DEFAULT_MODEL_ID)
    model.eval()
    tokens = 0
    started = time.perf_counter()
    for chat in chats:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        tokens += output.shape[1] - inputs["input_ids"].shape[1]
    elapsed = time.perf_counter() - started
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


async def stream_one(http: httpx.AsyncClient, chat: list, max_tokens: int) -> tuple[float, int]:
    """(time to first token, completion tokens) of one streamed chat completion through the gateway."""
    started = time.perf_counter()
    first = None
    usage = 0
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
            if first is None and any(choice["delta"].get("content") for choice in chunk["choices"]):
                first = time.perf_counter() - started
    assert first is not None and usage > 0, "an answer without text"
    return first, usage


async def clients(http: httpx.AsyncClient, chats: list, max_tokens: int, n_clients: int) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for chat in chats:
        queue.put_nowait(chat)
    ttfts: list[float] = []
    tokens = 0

    async def client() -> None:
        nonlocal tokens
        while not queue.empty():
            ttft, used = await stream_one(http, queue.get_nowait(), max_tokens)
            ttfts.append(ttft)
            tokens += used

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(n_clients)))
    elapsed = time.perf_counter() - started
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed,
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16, help="prompts per phase")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--overhead-requests", type=int, default=100)
    args = parser.parse_args()
    chats = prompts(args.requests)

    print(f"baseline: {args.requests} prompts one by one with model.generate ...", flush=True)
    plain = baseline(chats, args.max_tokens)
    print(f"  {plain['tokens']} tokens in {plain['seconds']:.1f}s: {plain['tokens_per_s']:.1f} tokens/s", flush=True)

    api_key = "tl-bench-" + secrets.token_hex(12)
    os.environ["TUNELOOP_API_KEY"] = api_key
    os.environ.setdefault("TUNELOOP_INTERNAL_TOKEN", secrets.token_urlsafe(24))
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-serve-") as data_dir:
        stack = Stack(LaunchConfig(data_dir=Path(data_dir), port=free_port(), grpc_port=free_port(),
                                   startup_timeout_s=180), echo=lambda _line: None)
        stack.start()
        try:
            print("stack up; lone, concurrent and overhead phases ...", flush=True)
            served = asyncio.run(against_the_stack(stack, api_key, chats, args))
        finally:
            stack.stop()

    lone, concurrent, cost = served["lone"], served["concurrent"], served["overhead"]
    throughput = concurrent["tokens_per_s"] / plain["tokens_per_s"]
    ttft = concurrent["ttft_p50_ms"] / lone["ttft_p50_ms"]
    rows = [
        ("plain model.generate, one by one", plain["tokens_per_s"], None, None),
        ("service, 1 client", lone["tokens_per_s"], lone["ttft_p50_ms"], lone["ttft_p95_ms"]),
        (f"service, {args.clients} clients", concurrent["tokens_per_s"], concurrent["ttft_p50_ms"],
         concurrent["ttft_p95_ms"]),
    ]
    print(f"\n{'run':<36} {'output tok/s':>12} {'TTFT p50 ms':>12} {'TTFT p95 ms':>12}")
    for name, rate, p50, p95 in rows:
        print(f"{name:<36} {rate:>12.1f} {p50 or 0:>12.0f} {p95 or 0:>12.0f}")
    print(f"\nthroughput at {args.clients} clients / sequential generate: {throughput:.2f}x "
          f"(target >= {TARGET_THROUGHPUT}x)")
    print(f"service at 1 client / sequential generate: {lone['tokens_per_s'] / plain['tokens_per_s']:.2f}x")
    print(f"TTFT p50 at {args.clients} clients / lone: {ttft:.2f}x (target <= {TARGET_TTFT}x)")
    print(f"gateway overhead p50: {cost['overhead_p50_ms']:.2f} ms (gateway {cost['gateway_p50_ms']:.1f} ms, "
          f"direct gRPC {cost['direct_p50_ms']:.1f} ms; target <= {TARGET_OVERHEAD_MS} ms)")


if __name__ == "__main__":
    main()
