"""From chat examples to training batches: tokens, assistant-only labels, length-grouped batches.

Labels are -100 everywhere except the assistant's own tokens (its content and the end-of-turn
token), so the loss never rewards predicting the system prompt, the user's words or the template's
role headers. The assistant spans are found by rendering the conversation one message at a time:
the text a message adds to the rendered prefix is exactly what the template makes of it. That works
with any chat template that renders a conversation as the concatenation of its turns (ChatML,
Llama 3, Mistral, ...), and needs no `{% generation %}` markers, which SmolLM2's template lacks.

Batches are grouped by length (seeded), so a batch holds examples of similar length and padding
wastes little; each batch is then cut into micro-batches under a token budget, so activation
memory stays bounded whatever the batch size.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.dataprep.examples import Example
from services.shared.errors import InvalidArgument

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
# How many batches' worth of examples are sorted together: large enough that neighbours in a
# batch have similar lengths, small enough that batch order stays random (as HF's
# LengthGroupedSampler does).
MEGABATCH_BATCHES = 50
# Padded widths are rounded up to a multiple of this. Few distinct tensor shapes let glibc's
# allocator reuse freed blocks instead of growing the heap step after step (measured: peak RSS
# over an epoch 2.9 GB with exact widths, 2.0 GB with multiples of 8; see bench/RESULTS.md), for
# about 3% more (pad) tokens.
PAD_TO_MULTIPLE = 8

Message = Mapping[str, Any]
Conversation = Sequence[Message]


@dataclass(frozen=True)
class EncodedExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        """Tokens the loss is taken on: labelled positions after the first (which nothing predicts)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def messages_of(item: Example | Mapping[str, Any] | Conversation) -> list[dict[str, Any]]:
    """The messages of an Example, an `Example.to_record()` dict or a plain list of messages."""
    if isinstance(item, Example):
        if item.kind != "chat":
            raise InvalidArgument(f"example on line {item.line} is a preference pair, not a chat",
                                  param="training_file")
        return [dict(m) for m in item.messages]
    if isinstance(item, Mapping):
        if "messages" not in item:
            raise InvalidArgument("a chat record needs a 'messages' list", param="training_file")
        return [dict(m) for m in item["messages"]]
    return [dict(m) for m in item]


def read_chat_jsonl(path: Path) -> list[list[dict[str, Any]]]:
    """The conversations of a prepared dataset file (JSONL of `Example.to_record()`)."""
    conversations = []
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                conversations.append(messages_of(json.loads(line)))
    return conversations


# ---- tokenisation --------------------------------------------------------------------------


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the loss is taken on.

    Each span starts where the assistant's content starts (after the template's role header) and
    ends after the end-of-turn marker, without the whitespace a template puts between turns.
    Assistant messages with OpenAI's `"weight": 0` are left out.
    """
    text = _render(tokenizer, messages, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        prompt = _render(tokenizer, messages[:index], generation_prompt=True)
        turn = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if not (turn.startswith(prompt) and text.startswith(turn)):
            if index != len(messages) - 1:
                continue  # a template that rewrites earlier turns (e.g. drops their reasoning)
            raise InvalidArgument(
                "the chat template does not render a conversation as the concatenation of its turns; "
                "cannot find the assistant's tokens",
                param="chat_template",
            )
        content = str(message.get("content") or "")
        start = turn.find(content, len(prompt)) if content else -1
        spans.append((start if start >= 0 else len(prompt), len(turn.rstrip())))
    return text, spans


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], max_length: int) -> EncodedExample:
    """Token ids and labels of one conversation, truncated to `max_length` tokens."""
    text, spans = assistant_spans(tokenizer, messages)
    # The template writes the special tokens itself: the tokenizer must not add a BOS of its own.
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])[:max_length]
    labels = [IGNORE_INDEX] * len(input_ids)
    span_iter = iter(spans)
    span = next(span_iter, None)
    for position, (start, _end) in enumerate(encoding["offset_mapping"][:max_length]):
        while span is not None and start >= span[1]:
            span = next(span_iter, None)
        if span is None:
            break
        if start >= span[0]:
            labels[position] = input_ids[position]
    return EncodedExample(tuple(input_ids), tuple(labels))


def encode_dataset(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Example | Mapping[str, Any] | Conversation],
    max_length: int,
    param: str = "training_file",
) -> tuple[list[EncodedExample], int]:
    """Every example that keeps at least one label token after truncation, and how many did not."""
    encoded, dropped = [], 0
    for item in items:
        example = encode_chat(tokenizer, messages_of(item), max_length)
        if example.n_targets:
            encoded.append(example)
        else:
            dropped += 1
    if items and not encoded:
        raise InvalidArgument(
            f"no example keeps an assistant token within max_length={max_length} tokens", param=param
        )
    return encoded, dropped


# ---- batches -------------------------------------------------------------------------------


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of each batch of one epoch: shuffled, sorted by length within mega-batches, the
    longest batch first (so a run that will run out of memory does so at once), the rest shuffled.

    A function of (seed, epoch) only, so a resumed run sees the same batches as an uninterrupted one.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    megabatch = batch_size * MEGABATCH_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), megabatch):
        group = sorted(order[start : start + megabatch], key=lambda i: lengths[i], reverse=True)
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    if len(batches) > 1:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches[0], batches[longest] = batches[longest], batches[0]
        rest = batches[1:]
        rng.shuffle(rest)
        batches = [batches[0], *rest]
    return batches


def padded_width(length: int) -> int:
    return -(-length // PAD_TO_MULTIPLE) * PAD_TO_MULTIPLE


def micro_batches(batch: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Cut a batch (sorted by length, longest first) so each part's padded size stays under
    `max_tokens`; a single example longer than that is a micro-batch of its own."""
    ordered = sorted(batch, key=lambda i: lengths[i], reverse=True)
    parts: list[list[int]] = []
    for index in ordered:
        if parts and padded_width(lengths[parts[-1][0]]) * (len(parts[-1]) + 1) <= max_tokens:
            parts[-1].append(index)
        else:
            parts.append([index])
    return parts


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor | None]:
    """Right-padded tensors. `attention_mask` is None when nothing is padded, which lets SDPA
    take its causal fast path instead of reading a mask."""
    import torch

    width = padded_width(max(len(e) for e in examples))
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, : len(example)] = torch.tensor(example.input_ids)
        labels[row, : len(example)] = torch.tensor(example.labels)
        mask[row, : len(example)] = 1
    padded = any(len(e) != width for e in examples)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask if padded else None}


def iter_eval_batches(examples: Sequence[EncodedExample], max_tokens: int) -> Iterator[list[int]]:
    """Validation batches: sorted by length (order does not matter for a sum), under the budget."""
    lengths = [len(e) for e in examples]
    yield from micro_batches(range(len(examples)), lengths, max_tokens)
