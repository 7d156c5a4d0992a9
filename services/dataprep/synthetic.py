"""Synthetic examples from a teacher model behind any OpenAI-compatible endpoint.

The teacher sees a handful of seed examples and writes new ones in the same chat format, a few
per request; every answer goes through the same validation as an uploaded file, and what survives
is written as a new JSONL file that is then prepared like any other (normalised, anonymised,
deduplicated, split).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from services.dataprep.examples import Example
from services.dataprep.validation import iter_validated
from services.shared.errors import InvalidArgument
from services.shared.teacher import TeacherClient, TeacherEndpoint

MAX_COUNT = 10_000
PER_REQUEST = 10
SEEDS_SHOWN = 8
# Requests the generator may spend per example asked for, so a teacher that keeps answering
# garbage cannot make it loop for ever.
MAX_REQUESTS_FACTOR = 3

SYSTEM_PROMPT = (
    "You write training examples for fine-tuning a chat assistant. Reply with JSON Lines only: one "
    'JSON object per line, each {"messages": [{"role": "user", "content": ...}, {"role": "assistant", '
    '"content": ...}]}, with no prose and no code fences. Keep the domain, tone and answer style of the '
    "seed examples, vary the questions, and never copy a seed."
)


@dataclass(frozen=True)
class TeacherConfig:
    base_url: str
    api_key: str = field(repr=False)
    model: str
    temperature: float = 0.8
    instructions: str = ""

    def __post_init__(self) -> None:
        self.endpoint()  # refuses a bad URL or a missing model, naming the field
        if not 0 <= self.temperature <= 2:
            raise InvalidArgument("temperature must be between 0 and 2", param="temperature")

    def endpoint(self) -> TeacherEndpoint:
        return TeacherEndpoint(base_url=self.base_url, model=self.model, api_key=self.api_key)


def _user_prompt(seeds: list[Example], count: int, instructions: str) -> str:
    shown = "\n".join(json.dumps({"messages": list(seed.messages)}, ensure_ascii=False) for seed in seeds)
    extra = f"\nGuidance: {instructions.strip()}" if instructions.strip() else ""
    return f"Seed examples:\n{shown}\n{extra}\nWrite {count} new examples."


def _json_lines(text: str) -> Iterator[bytes]:
    for line in text.splitlines():
        line = line.strip().strip("`")
        if line.startswith("{"):
            yield (line + "\n").encode()


def generate_examples(
    seeds: list[Example], count: int, teacher: TeacherConfig, *, seed: int = 0
) -> tuple[list[Example], int]:
    """Ask the teacher for `count` new chat examples; returns the valid ones and how many were refused."""
    if not seeds:
        raise InvalidArgument("the seed file has no valid examples", param="seed_file_id")
    if not 1 <= count <= MAX_COUNT:
        raise InvalidArgument(f"count must be between 1 and {MAX_COUNT}", param="count")
    client = TeacherClient(teacher.endpoint(), max_retries=2, timeout=120)
    rng = random.Random(seed)
    seen = {json.dumps(list(s.messages), sort_keys=True) for s in seeds}
    generated: list[Example] = []
    refused = 0
    for _ in range(MAX_REQUESTS_FACTOR * ((count + PER_REQUEST - 1) // PER_REQUEST)):
        if len(generated) >= count:
            break
        shown = rng.sample(seeds, min(SEEDS_SHOWN, len(seeds)))
        text = client.chat(
            [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": _user_prompt(shown, min(PER_REQUEST, count - len(generated)),
                                                         teacher.instructions)},
            ],
            temperature=teacher.temperature,
        )
        for item in iter_validated(_json_lines(text), "chat"):
            if isinstance(item, list):
                refused += 1
                continue
            key = json.dumps(list(item.messages), sort_keys=True)
            if key in seen:
                refused += 1
                continue
            seen.add(key)
            generated.append(Example(line=len(generated) + 1, messages=item.messages))
            if len(generated) >= count:
                break
    return generated, refused
