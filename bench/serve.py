"""Serving throughput and latency: tuneloop's inference service against plain `model.generate`.

Run from the repository root (after `make setup`, which converts SmolLM2-135M-Instruct):

    .venv/bin/python bench/serve.py [--clients 8] [--requests 48] [--max-tokens 48] [--length-spread 0.5] [--dtype auto]
        [--compiled-decode KEYS]

In one run, on SmolLM2-135M-Instruct, greedy, the same chat prompts, each with its own answer
length: `--max-tokens` on average, spread evenly over +- `--length-spread` of it (as real answers
differ; with --length-spread 0 every answer has the same length, so concurrent clients finish
together and every prompt after the first ones arrives in a burst with the others):

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
- `--compiled-decode KEYS` (TUNELOOP_COMPILED_DECODE_CAPACITY, the service's default 2048) serves
  decoding steps of up to 8 rows within KEYS keys from a step compiled ahead of time
  (services/inference/compiled_decode.py); 0 keeps them eager. The script builds the package into
  the stack's data directory before the stack starts, so no phase runs while the service would
  build it in the background.
- time to first token at `--clients`: over all requests, and split into the first wave (the
  first `--clients` requests, sent at the same instant) and the requests that arrive into a
  running batch (every later one).
- gateway overhead: one-token completions of a two-token prompt, in turn through the gateway
  (HTTP `/v1/completions`, over one kept-alive connection with a minimal HTTP/1.1 client, so the
  client's own HTTP library is not counted as the gateway's) and from the inference service
  directly (gRPC, as the gateway calls it); the median of the paired differences. The same
  through httpx is printed beside it: its extra is httpx's own cost per request.

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
import psutil  # noqa: E402

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


def prompts(n: int, max_tokens: int, spread: float) -> list[tuple[list[dict[str, str]], int]]:
    """n (chat, answer length) pairs; the lengths spread evenly over max_tokens +- spread, in an
    order that mixes short and long ones."""
    low, high = round(max_tokens * (1 - spread)), round(max_tokens * (1 + spread))
    lengths = [low + (i * 7) % (high - low + 1) for i in range(n)] if high > low else [max_tokens] * n
    return [([{"role": "user", "content": f"How do I {TOPICS[i % len(TOPICS)]}? Explain step by step."}], max(1, length))
            for i, length in enumerate(lengths)]


def baseline(requests: list, dtype) -> dict:
    import torch

    model, tokenizer = ModelStore(Settings()).load(DEFAULT_MODEL_ID, dtype)
    model.eval()

    def answer(chat: list, limit: int) -> list[int]:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=limit, do_sample=False)
        return output[0, inputs["input_ids"].shape[1]:].tolist()

    answer(requests[0][0], 4)  # warm-up: the first bf16 matmuls of each shape build oneDNN kernels
    tokens, texts = 0, []
    started = time.perf_counter()
    for chat, max_tokens in requests:
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


async def clients(http: httpx.AsyncClient, requests: list, n_clients: int) -> dict:
    """Each client sends the next request as soon as its answer is complete."""
    queue: asyncio.Queue = asyncio.Queue()
    for index, request in enumerate(requests):
        queue.put_nowait((index, request))
    ttfts: list[float] = [0.0] * len(requests)
    texts: list[str] = [""] * len(requests)
    tokens = 0

    async def client() -> None:
        nonlocal tokens
        while not queue.empty():
            index, (chat, max_tokens) = queue.get_nowait()
            ttfts[index], used, texts[index] = await stream_one(http, chat, max_tokens)
            tokens += used

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(n_clients)))
    elapsed = time.perf_counter() - started
    first, later = ttfts[:n_clients], ttfts[n_clients:]
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed, "texts": texts,
            "ttft_p50_ms": statistics.median(ttfts) * 1000, "ttft_p95_ms": _p95(ttfts) * 1000,
            "first_wave_p50_ms": statistics.median(first) * 1000,
            "later_p50_ms": statistics.median(later) * 1000 if later else None}


class RawHttp:
    """A minimal HTTP/1.1 client over one kept-alive connection: a request out, a response with a
    Content-Length back. It does the least a client can, so what a request costs beyond it is the
    gateway's (httpx, a full client, spends about a millisecond of its own per request here)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, api_key: str):
        self._reader, self._writer = reader, writer
        self._head = f"Host: {host}\r\nAuthorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"

    @classmethod
    async def connect(cls, url: str, api_key: str) -> RawHttp:
        host, port = httpx.URL(url).host, httpx.URL(url).port
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}", api_key)

    async def post(self, path: str, body: dict) -> bytes:
        data = json.dumps(body).encode()
        self._writer.write(f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        answer = await self._reader.readexactly(length)
        if status != b"200":
            raise RuntimeError(f"{path} answered {status.decode()}: {answer[:300]!r}")
        return answer

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


async def overhead(http: httpx.AsyncClient, url: str, api_key: str, inference_addr: str, internal_token: str,
                   n: int) -> dict:
    """One-token completions of a two-token prompt (little model time, so little noise) in turn
    straight from the service, through the gateway with the minimal client, and through it with
    httpx; medians of each and of the paired differences."""
    metadata = ((INTERNAL_TOKEN_KEY, internal_token), (TENANT_KEY, "default"))
    direct, raw, full = [], [], []
    body = {"model": DEFAULT_MODEL_ID, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    raw_http = await RawHttp.connect(url, api_key)
    try:
        async with grpc.aio.insecure_channel(inference_addr) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            request = inference_pb2.GenerateRequest(model=DEFAULT_MODEL_ID, prompt="Hi", max_tokens=1)
            for _ in range(n):
                started = time.perf_counter()
                await stub.Generate(request, metadata=metadata, timeout=60)
                direct.append(time.perf_counter() - started)
                started = time.perf_counter()
                await raw_http.post("/v1/completions", body)
                raw.append(time.perf_counter() - started)
                started = time.perf_counter()
                (await http.post("/v1/completions", json=body)).raise_for_status()
                full.append(time.perf_counter() - started)
    finally:
        await raw_http.close()

    def median_ms(values) -> float:
        return statistics.median(values) * 1000

    return {"direct_p50_ms": median_ms(direct), "gateway_p50_ms": median_ms(raw), "httpx_p50_ms": median_ms(full),
            "overhead_p50_ms": median_ms([g - d for g, d in zip(raw, direct, strict=True)]),
            "httpx_overhead_p50_ms": median_ms([g - d for g, d in zip(full, direct, strict=True)])}


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


class CpuShares:
    """CPU seconds each part of the stack (and this process, the clients) used during a phase."""

    def __init__(self, stack: Stack):
        self._pids = {part.name: part.process.pid for part in stack.parts if part.process is not None}
        self._pids["clients (this process)"] = os.getpid()

    async def measure(self, phase) -> dict:
        """The phase's result, with "cpu_s": the CPU seconds of each part that used any."""
        before = {name: _cpu_seconds(pid) for name, pid in self._pids.items()}
        result = await phase
        used = {name: _cpu_seconds(pid) - before[name] for name, pid in self._pids.items()}
        return {**result, "cpu_s": {name: seconds for name, seconds in used.items() if seconds > 0}}


async def against_the_stack(stack: Stack, api_key: str, requests: list, args) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"}
    shares = CpuShares(stack)
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=600) as http:
        await stream_one(http, requests[0][0], 4)  # loads the model
        lone = await shares.measure(clients(http, requests, 1))
        concurrent = await shares.measure(clients(http, requests, args.clients))
        inference = next(part for part in stack.parts if part.name == "inference")
        cost = await overhead(http, stack.url, api_key, f"127.0.0.1:{inference.env['TUNELOOP_GRPC_PORT']}",
                              inference.env["TUNELOOP_INTERNAL_TOKEN"], args.overhead_requests)
    return {"lone": lone, "concurrent": concurrent, "overhead": cost}


def prebuild(data_dir: Path, dtype, capacity: int) -> None:
    """Build the compiled decoding step where the service started on `data_dir` will find it."""
    from services.inference import compiled_decode
    from services.inference.settings import InferenceSettings

    settings = InferenceSettings(data_dir=data_dir)
    rows = settings.compiled_decode_rows
    model_dir = ModelStore(settings).ensure(DEFAULT_MODEL_ID)  # the stack's copy: the package is keyed by its files
    path = compiled_decode.package_path(data_dir / "compiled", compiled_decode.model_identity(model_dir), dtype,
                                        rows, capacity)
    print(f"building the compiled decoding step ({rows} rows, up to {capacity} keys) ...", flush=True)
    started = time.perf_counter()
    compiled_decode.build(model_dir, dtype, rows, capacity, path)
    print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48, help="prompts per phase")
    parser.add_argument("--max-tokens", type=int, default=48, help="the answers' average length")
    parser.add_argument("--length-spread", type=float, default=0.5,
                        help="answer lengths spread over max-tokens +- this fraction of it (0: all equal)")
    parser.add_argument("--overhead-requests", type=int, default=200)
    parser.add_argument("--dtype", choices=SERVING_DTYPES, default="auto",
                        help="what the service computes in (TUNELOOP_INFERENCE_DTYPE)")
    parser.add_argument("--compiled-decode", type=int, default=2048, metavar="KEYS",
                        help="compile the decoding step for up to this many keys (TUNELOOP_COMPILED_DECODE_CAPACITY; "
                             "0: eager); the package is built before the stack starts")
    args = parser.parse_args()
    requests = prompts(args.requests, args.max_tokens, args.length_spread)
    served_dtype = serving_dtype(args.dtype)

    plain = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        print(f"baseline: {args.requests} prompts one by one with model.generate in {name} ...", flush=True)
        plain[name] = baseline(requests, dtype)
        print(f"  {plain[name]['tokens']} tokens in {plain[name]['seconds']:.1f}s: "
              f"{plain[name]['tokens_per_s']:.1f} tokens/s", flush=True)

    api_key = "tl-bench-" + secrets.token_hex(12)
    os.environ["TUNELOOP_API_KEY"] = api_key
    os.environ["TUNELOOP_INFERENCE_DTYPE"] = args.dtype
    os.environ["TUNELOOP_COMPILED_DECODE_CAPACITY"] = str(args.compiled_decode)
    os.environ.setdefault("TUNELOOP_INTERNAL_TOKEN", secrets.token_urlsafe(24))
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-serve-") as data_dir:
        if args.compiled_decode:
            prebuild(Path(data_dir), served_dtype, args.compiled_decode)
        stack = Stack(LaunchConfig(data_dir=Path(data_dir), port=free_port(), grpc_port=free_port(),
                                   startup_timeout_s=180), echo=lambda _line: None)
        stack.start()
        try:
            print(f"stack up, serving in {str(served_dtype).removeprefix('torch.')}; lone, concurrent and "
                  "overhead phases ...", flush=True)
            served = asyncio.run(against_the_stack(stack, api_key, requests, args))
        finally:
            stack.stop()
    report(args, requests, plain, served, str(served_dtype).removeprefix("torch."))


def report(args, requests: list, plain: dict, served: dict, served_dtype: str) -> None:
    lone, concurrent, cost = served["lone"], served["concurrent"], served["overhead"]
    ttft = concurrent["ttft_p50_ms"] / lone["ttft_p50_ms"]
    rows = [
        ("plain model.generate float32, one by one", plain["float32"]["tokens_per_s"], None, None),
        ("plain model.generate bf16, one by one", plain["bfloat16"]["tokens_per_s"], None, None),
        (f"service ({served_dtype}), 1 client", lone["tokens_per_s"], lone["ttft_p50_ms"], lone["ttft_p95_ms"]),
        (f"service ({served_dtype}), {args.clients} clients", concurrent["tokens_per_s"], concurrent["ttft_p50_ms"],
         concurrent["ttft_p95_ms"]),
    ]
    lengths = [length for _, length in requests]
    print(f"\n{len(lengths)} requests, answer lengths {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f})")
    print(f"{'run':<44} {'output tok/s':>12} {'TTFT p50 ms':>12} {'TTFT p95 ms':>12}")
    for name, rate, p50, p95 in rows:
        print(f"{name:<44} {rate:>12.1f} {p50 or 0:>12.0f} {p95 or 0:>12.0f}")
    print()
    for name in ("float32", "bfloat16"):
        target = f" (target >= {TARGET_THROUGHPUT}x)" if name == "float32" else ""
        print(f"throughput at {args.clients} clients / sequential generate in {name}: "
              f"{concurrent['tokens_per_s'] / plain[name]['tokens_per_s']:.2f}x{target}; "
              f"at 1 client: {lone['tokens_per_s'] / plain[name]['tokens_per_s']:.2f}x")
    for phase, name in ((lone, "1 client"), (concurrent, f"{args.clients} clients")):
        cpu = ", ".join(f"{part} {seconds / phase['seconds']:.2f}" for part, seconds in phase["cpu_s"].items())
        print(f"CPU cores busy at {name} ({phase['seconds']:.1f} s): {cpu}")
    print(f"TTFT p50 at {args.clients} clients / lone: {ttft:.2f}x (target <= {TARGET_TTFT}x); "
          f"first wave ({args.clients} sent at once) p50 {concurrent['first_wave_p50_ms']:.0f} ms"
          + ("" if concurrent["later_p50_ms"] is None else
             f", requests arriving into a running batch p50 {concurrent['later_p50_ms']:.0f} ms "
             f"({concurrent['later_p50_ms'] / lone['ttft_p50_ms']:.2f}x lone)"))
    print(f"gateway overhead p50: {cost['overhead_p50_ms']:.2f} ms (gateway {cost['gateway_p50_ms']:.1f} ms, "
          f"direct gRPC {cost['direct_p50_ms']:.1f} ms; target <= {TARGET_OVERHEAD_MS} ms); "
          f"with httpx as the client {cost['httpx_overhead_p50_ms']:.2f} ms ({cost['httpx_p50_ms']:.1f} ms)")
    same_as_lone = sum(a == b for a, b in zip(concurrent["texts"], lone["texts"], strict=True))
    reference = plain["bfloat16" if served_dtype == "bfloat16" else "float32"]["texts"]
    same_as_generate = sum(a == b for a, b in zip(lone["texts"], reference, strict=True))
    print(f"answers: {same_as_lone}/{len(lone['texts'])} concurrent ones equal the lone ones; "
          f"{same_as_generate}/{len(reference)} lone ones equal plain generate's in {served_dtype}")


if __name__ == "__main__":
    main()
