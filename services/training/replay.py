"""Replay against forgetting: general prompts answered by the base model itself, mixed into training.

At this model size a narrow LoRA run forgets general answers it knew. Mixing in examples of the
base model's own behaviour on general prompts (a set that ships with the project, so nothing is
downloaded) anchors that behaviour while the domain is learned. The base model's answers are
generated once per base model and cached next to the job directories.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from services.shared.errors import InvalidArgument

GENERAL_PROMPTS = Path(__file__).parent / "data" / "general_prompts.jsonl"
MAX_NEW_TOKENS = 48
BATCH = 16


def general_prompts(path: Path = GENERAL_PROMPTS) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["prompt"] for line in handle if line.strip()]


def answer_prompts(model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy answers, batched with left padding, through the tokenizer's chat template."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), BATCH):
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                   tokenize=False) for p in prompts[start:start + BATCH]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            for row in output[:, batch["input_ids"].shape[1]:]:
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    return answers


def cache_key(base_model: str, model_dir: Path, prompts_path: Path = GENERAL_PROMPTS) -> str:
    """Changes when the prompts or the base model's weights change."""
    weights = sorted(model_dir.glob("*.safetensors"))
    stamp = ";".join(f"{w.name}:{w.stat().st_size}:{int(w.stat().st_mtime)}" for w in weights)
    digest = hashlib.sha256(prompts_path.read_bytes())
    digest.update(f"{base_model}|{stamp}|{MAX_NEW_TOKENS}".encode())
    return digest.hexdigest()[:24]


def replay_records(cache_dir: Path, key: str, generate) -> list[dict]:
    """The base model's answers as chat records, from the cache or made once by `generate()`."""
    path = cache_dir / f"{key}.jsonl"
    if path.is_file():
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    prompts = general_prompts()
    answers = generate(prompts)
    records = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
               for p, a in zip(prompts, answers, strict=True) if a]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)
    return records


def mix(train: list[dict], replay: list[dict], fraction: float, seed: int) -> list[dict]:
    """`train` plus enough replay examples that they make up `fraction` of the result."""
    if not 0 <= fraction < 1:
        raise InvalidArgument("replay_fraction must be at least 0 and below 1", param="method.replay_fraction")
    if fraction == 0 or not replay:
        return list(train)
    wanted = round(fraction / (1 - fraction) * len(train))
    rng = random.Random(seed)
    if wanted <= len(replay):
        chosen = rng.sample(replay, wanted)
    else:  # a small replay set under a large domain set: repeat it
        chosen = [replay[i % len(replay)] for i in range(wanted)]
    mixed = list(train) + chosen
    rng.shuffle(mixed)
    return mixed
