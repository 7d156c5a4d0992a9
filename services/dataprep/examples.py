"""The one shape every data-prep step works on: a training example and a problem found on a line.

Every input format (OpenAI chat JSONL, Alpaca, OpenAI preference pairs, CSV) becomes `Example`s,
and every step after parsing (validation, normalisation, PII, deduplication, split, report) reads
and writes only this type, so adding a format touches one module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class LineError:
    """A problem a person can fix: which line, which field, what is wrong.

    `code` uses the names of OpenAI's data-preparation cookbook where one fits (`data_type`,
    `missing_messages_list`, `message_missing_key`, `message_unrecognized_key`,
    `unrecognized_role`, `missing_content`, `example_missing_assistant_message`), plus our own
    (`invalid_json`, `last_message_not_assistant`, `too_many_tokens`, `unrecognized_key`, ...).
    """

    line: int
    field: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass(frozen=True)
class Example:
    """One training example.

    Chat examples carry the whole conversation in `messages`, ending with the assistant's answer.
    Preference pairs (for DPO) carry the prompt conversation in `messages` and the two answers in
    `preferred` / `rejected`. `label` and `slice` are optional: a class label (for stratified
    splits and the label-balance audit) and a group name (for per-slice evaluation). `corrected`
    (chat only, optional) marks a prompt a user corrected: the feedback loop sets it, and evaluation
    measures its fix rate on those examples.
    """

    line: int
    messages: tuple[dict[str, str], ...]
    preferred: str | None = None
    rejected: str | None = None
    label: str | None = None
    slice: str | None = None
    corrected: bool | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def kind(self) -> str:
        return "preference" if self.preferred is not None else "chat"

    @property
    def prompt_messages(self) -> tuple[dict[str, str], ...]:
        """What the model is asked: every message before the answer."""
        if self.kind == "preference":
            return self.messages
        return self.messages[:-1]

    @property
    def output(self) -> str:
        """The answer the model should learn to give."""
        if self.kind == "preference":
            return self.preferred or ""
        return self.messages[-1]["content"] if self.messages else ""

    def prompt_text(self) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.prompt_messages)

    def texts(self) -> list[str]:
        """Every piece of free text in the example (what PII detection and shingling read)."""
        texts = [m["content"] for m in self.messages]
        if self.kind == "preference":
            texts += [self.preferred or "", self.rejected or ""]
        return texts

    def with_texts(self, texts: list[str]) -> Example:
        """A copy with the texts of `texts()` replaced, in the same order."""
        count = len(self.messages)
        messages = tuple({**m, "content": t} for m, t in zip(self.messages, texts[:count], strict=True))
        if self.kind == "preference":
            return replace(self, messages=messages, preferred=texts[count], rejected=texts[count + 1])
        return replace(self, messages=messages)

    def to_record(self) -> dict:
        """The example in OpenAI's own format (chat or preference), plus label / slice / corrected if set."""
        messages = [dict(m) for m in self.messages]
        if self.kind == "preference":
            record: dict = {
                "input": {"messages": messages},
                "preferred_output": [{"role": "assistant", "content": self.preferred}],
                "non_preferred_output": [{"role": "assistant", "content": self.rejected}],
            }
        else:
            record = {"messages": messages}
        if self.label is not None:
            record["label"] = self.label
        if self.slice is not None:
            record["slice"] = self.slice
        if self.corrected is not None:
            record["corrected"] = self.corrected
        return record

    def to_json(self) -> str:
        return json.dumps(self.to_record(), ensure_ascii=False, sort_keys=True)


def example_from_record(record: dict, line: int) -> Example:
    """Rebuild an example from `Example.to_record()` output (our own spool files; trusted input)."""
    if "input" in record:
        messages = tuple(record["input"]["messages"])
        preferred = record["preferred_output"][0]["content"]
        rejected = record["non_preferred_output"][0]["content"]
    else:
        messages, preferred, rejected = tuple(record["messages"]), None, None
    return Example(
        line=line,
        messages=messages,
        preferred=preferred,
        rejected=rejected,
        label=record.get("label"),
        slice=record.get("slice"),
        corrected=record.get("corrected"),
    )
