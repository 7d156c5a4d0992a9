"""Line-by-line validation of training files, with problems a person can find and fix.

`formats` turns bytes into records; this module decides whether each record is a usable training
example and says exactly what is wrong when it is not: every problem of a line at once, each with
the line it starts on and the precise field (``messages[2].role``, ``preferred_output[0].content``).

The checks include those of OpenAI's data-preparation cookbook (``data_type``,
``missing_messages_list``, ``message_missing_key``, ``message_unrecognized_key``,
``unrecognized_role``, ``missing_content``, ``example_missing_assistant_message``) and ours:
``unrecognized_key``, ``last_message_not_assistant``, ``invalid_weight``,
``invalid_preference_output``, ``identical_preference_outputs``, ``missing_field``, and with a
`TokenCounter` (the base model's tokenizer and chat template, in batches) ``too_many_tokens`` and
``chat_template_error``. Parse-level codes come from `formats`: ``invalid_encoding``,
``invalid_json``, ``invalid_csv``, ``missing_columns``, ``record_too_large``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from services.dataprep.examples import ROLES, Example, LineError
from services.dataprep.formats import LINE_FIELD, check_format, iter_records, resolve_csv_columns
from services.dataprep.tokens import TokenCounter

CHAT_KEYS = frozenset({"messages", "label", "slice", "corrected"})
PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output", "label", "slice"})
ALPACA_KEYS = frozenset({"instruction", "input", "output", "system", "label", "slice"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "function_call", "tool_call_id"})
ANSWER_KEYS = frozenset({"role", "content"})
_ROLES = frozenset(ROLES)
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

def key_path(prefix: str, key: str) -> str:
    """`prefix.key`, or `prefix["key"]` for a key that is not a plain name."""
    if _PLAIN_KEY.match(key):
        return f"{prefix}.{key}" if prefix else key
    return f"{prefix}[{json.dumps(key, ensure_ascii=False)}]"


def _type_name(value: Any) -> str:
    return {
        str: "a string",
        list: "an array",
        dict: "an object",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _known_role(value: Any) -> bool:
    return isinstance(value, str) and value in _ROLES


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and not value.isspace() and value != ""


def _check_messages(line: int, messages: Any, path: str, errors: list[LineError]) -> list[dict] | None:
    """The messages of `path`, checked one by one; None (with errors added) if it is not a usable list."""
    if not isinstance(messages, list) or not messages:
        what = (
            "is missing"
            if messages is None
            else ("is empty" if messages == [] else f"is {_type_name(messages)}")
        )
        errors.append(
            LineError(
                line, path, "missing_messages_list", f"{path} {what}; it must be a non-empty list of messages"
            )
        )
        return None
    clean: list[dict] = []
    for i, message in enumerate(messages):
        at = f"{path}[{i}]"
        if not isinstance(message, dict):
            errors.append(
                LineError(line, at, "data_type", f"each message must be an object, not {_type_name(message)}")
            )
            continue
        _check_message(line, message, at, MESSAGE_KEYS, errors)
        clean.append(message)
    return clean


def _check_message(
    line: int, message: dict, at: str, allowed: frozenset[str], errors: list[LineError]
) -> None:
    for key in message:
        if key not in allowed:
            errors.append(
                LineError(
                    line,
                    key_path(at, key),
                    "message_unrecognized_key",
                    f"unrecognized message key {key!r}; a message may have: {', '.join(sorted(allowed))}",
                )
            )
    if "role" not in message:
        errors.append(LineError(line, f"{at}.role", "message_missing_key", "the message has no role"))
    elif not _known_role(message["role"]):
        errors.append(
            LineError(
                line,
                f"{at}.role",
                "unrecognized_role",
                f"role {message['role']!r} is not one of: {', '.join(ROLES)}",
            )
        )
    if "content" not in message:
        errors.append(LineError(line, f"{at}.content", "message_missing_key", "the message has no content"))
    elif not _is_text(message["content"]):
        content = message["content"]
        what = "is empty" if isinstance(content, str) else f"is {_type_name(content)}"
        errors.append(
            LineError(
                line, f"{at}.content", "missing_content", f"the content {what}; it must be non-empty text"
            )
        )
    if "name" in message and not isinstance(message["name"], str):
        errors.append(
            LineError(
                line, f"{at}.name", "data_type", f"name must be a string, not {_type_name(message['name'])}"
            )
        )
    if "weight" in message:
        weight = message["weight"]
        if isinstance(weight, bool) or weight not in (0, 1):
            errors.append(
                LineError(line, f"{at}.weight", "invalid_weight", f"weight must be 0 or 1, not {weight!r}")
            )
        elif message.get("role") != "assistant":
            errors.append(
                LineError(line, f"{at}.weight", "invalid_weight", "only assistant messages take a weight")
            )


def _check_keys(
    line: int, record: dict, allowed: frozenset[str], errors: list[LineError], prefix: str = ""
) -> None:
    for key in record:
        if key not in allowed:
            errors.append(
                LineError(
                    line,
                    key_path(prefix, key),
                    "unrecognized_key",
                    f"unrecognized key {key!r}; allowed here: {', '.join(sorted(allowed))}",
                )
            )


def _optional_text(line: int, record: dict, key: str, errors: list[LineError]) -> str | None:
    """label / slice: a string (a whole number is taken as its text), or None when absent or empty."""
    value = record.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        errors.append(LineError(line, key, "data_type", f"{key} must be a string, not {_type_name(value)}"))
        return None
    return value


def _optional_flag(line: int, record: dict, key: str, errors: list[LineError]) -> bool | None:
    """corrected: true or false, or None when absent (null counts as absent, as for label / slice)."""
    value = record.get(key)
    if value is None or isinstance(value, bool):
        return value
    errors.append(LineError(line, key, "data_type", f"{key} must be true or false, not {_type_name(value)}"))
    return None


def _validate_chat(line: int, record: dict) -> Example | list[LineError]:
    errors: list[LineError] = []
    _check_keys(line, record, CHAT_KEYS, errors)
    messages = _check_messages(line, record.get("messages"), "messages", errors)
    roles = [m.get("role") for m in messages or ()]
    # Only once every role is readable: a bad role is reported already and may be the answer's.
    if messages and len(messages) == len(record["messages"]) and all(map(_known_role, roles)):
        if "assistant" not in roles:
            errors.append(
                LineError(
                    line,
                    "messages",
                    "example_missing_assistant_message",
                    "the conversation has no assistant message",
                )
            )
        elif roles[-1] != "assistant":
            errors.append(
                LineError(
                    line,
                    f"messages[{len(roles) - 1}].role",
                    "last_message_not_assistant",
                    f"the last message is from the {roles[-1]}; it must be the assistant's answer",
                )
            )
    label = _optional_text(line, record, "label", errors)
    slice_ = _optional_text(line, record, "slice", errors)
    corrected = _optional_flag(line, record, "corrected", errors)
    if errors:
        return errors
    return Example(line=line, messages=tuple(messages or ()), label=label, slice=slice_, corrected=corrected)


def _answer(line: int, record: dict, key: str, errors: list[LineError]) -> str | None:
    value = record.get(key)
    if not isinstance(value, list) or len(value) != 1:
        what = (
            "is missing"
            if value is None
            else (f"has {len(value)} messages" if isinstance(value, list) else f"is {_type_name(value)}")
        )
        errors.append(
            LineError(
                line,
                key,
                "invalid_preference_output",
                f"{key} {what}; it must be a list of exactly one assistant message",
            )
        )
        return None
    message, at = value[0], f"{key}[0]"
    if not isinstance(message, dict):
        errors.append(
            LineError(
                line, at, "data_type", f"the answer must be a message object, not {_type_name(message)}"
            )
        )
        return None
    before = len(errors)
    _check_message(line, message, at, ANSWER_KEYS, errors)
    if _known_role(message.get("role")) and message["role"] != "assistant":
        errors.append(
            LineError(
                line,
                f"{at}.role",
                "invalid_preference_output",
                f"the answer's role is {message['role']!r}; it must be 'assistant'",
            )
        )
    return message["content"] if len(errors) == before else None


def _validate_preference(line: int, record: dict) -> Example | list[LineError]:
    errors: list[LineError] = []
    _check_keys(line, record, PREFERENCE_KEYS, errors)
    prompt = record.get("input")
    messages = None
    if prompt is None:
        errors.append(
            LineError(
                line,
                "input",
                "missing_messages_list",
                'input is missing; it must be {"messages": [...]}, the prompt',
            )
        )
    elif not isinstance(prompt, dict):
        errors.append(
            LineError(
                line,
                "input",
                "data_type",
                f'input must be an object {{"messages": [...]}}, not {_type_name(prompt)}',
            )
        )
    else:
        _check_keys(line, prompt, frozenset({"messages"}), errors, prefix="input")
        messages = _check_messages(line, prompt.get("messages"), "input.messages", errors)
    preferred = _answer(line, record, "preferred_output", errors)
    rejected = _answer(line, record, "non_preferred_output", errors)
    if preferred is not None and preferred == rejected:
        errors.append(
            LineError(
                line,
                "non_preferred_output[0].content",
                "identical_preference_outputs",
                "the preferred and non-preferred answers are the same, so the pair teaches nothing",
            )
        )
    label = _optional_text(line, record, "label", errors)
    slice_ = _optional_text(line, record, "slice", errors)
    if errors:
        return errors
    return Example(
        line=line,
        messages=tuple(messages or ()),
        preferred=preferred,
        rejected=rejected,
        label=label,
        slice=slice_,
    )


def _required_text(line: int, record: dict, key: str, errors: list[LineError], what: str) -> str | None:
    if key not in record:
        errors.append(LineError(line, key, "missing_field", f"{key} is missing; it holds {what}"))
        return None
    value = record[key]
    if not isinstance(value, str):
        errors.append(LineError(line, key, "data_type", f"{key} must be a string, not {_type_name(value)}"))
        return None
    if not _is_text(value):
        errors.append(LineError(line, key, "missing_content", f"{key} is empty; it holds {what}"))
        return None
    return value


def _optional_str(line: int, record: dict, key: str, errors: list[LineError]) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.append(LineError(line, key, "data_type", f"{key} must be a string, not {_type_name(value)}"))
        return ""
    return value


def _prompt_messages(system: str, instruction: str, extra_input: str) -> list[dict]:
    user = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages.append({"role": "user", "content": user})
    return messages


def _validate_alpaca(line: int, record: dict) -> Example | list[LineError]:
    errors: list[LineError] = []
    _check_keys(line, record, ALPACA_KEYS, errors)
    instruction = _required_text(line, record, "instruction", errors, "the task for the model")
    extra_input = _optional_str(line, record, "input", errors)
    output = _required_text(line, record, "output", errors, "the answer the model should learn")
    system = _optional_str(line, record, "system", errors)
    label = _optional_text(line, record, "label", errors)
    slice_ = _optional_text(line, record, "slice", errors)
    if errors:
        return errors
    messages = _prompt_messages(system, instruction or "", extra_input)
    messages.append({"role": "assistant", "content": output or ""})
    return Example(line=line, messages=tuple(messages), label=label, slice=slice_)


def _validate_csv(line: int, record: dict) -> Example | list[LineError]:
    columns = resolve_csv_columns(tuple(record))
    if columns is None:
        return [
            LineError(
                line, "(header)", "missing_columns", "the CSV header names no prompt and completion columns"
            )
        ]
    errors: list[LineError] = []
    prompt = _required_text(line, record, columns.prompt, errors, "the prompt")
    completion = _required_text(line, record, columns.completion, errors, "the answer the model should learn")
    if errors:
        return errors
    extra_input = record.get(columns.input, "") if columns.input else ""
    system = record.get(columns.system, "") if columns.system else ""
    messages = _prompt_messages(system, prompt or "", extra_input)
    messages.append({"role": "assistant", "content": completion or ""})
    known = columns.known()
    return Example(
        line=line,
        messages=tuple(messages),
        label=(record.get(columns.label) or None) if columns.label else None,
        slice=(record.get(columns.slice) or None) if columns.slice else None,
        extra={name: value for name, value in record.items() if name not in known},
    )


_VALIDATORS = {
    "chat": _validate_chat,
    "preference": _validate_preference,
    "alpaca": _validate_alpaca,
    "csv": _validate_csv,
}


def validate_record(line: int, record: Any, format: str) -> Example | list[LineError]:
    """An Example, or every problem that keeps `record` (parsed from `line`) from being one."""
    check_format(format)
    if not isinstance(record, dict):
        return [
            LineError(
                line, LINE_FIELD, "data_type", f"each record must be a JSON object, not {_type_name(record)}"
            )
        ]
    return _VALIDATORS[format](line, record)


def iter_validated(
    chunks: Iterable[bytes], format: str | None = None, token_counter: TokenCounter | None = None
) -> Iterator[Example | list[LineError]]:
    """Per record, in file order: an Example, or the list of every problem found on that line.

    `token_counter` adds the token limit; examples are then checked in batches (so results come a
    batch at a time). InvalidArgument if `format` is unknown or cannot be detected.
    """
    if token_counter is None:
        for item in iter_records(chunks, format):
            if isinstance(item, LineError):
                yield [item]
            else:
                yield validate_record(item.line, item.data, item.format)
        return
    pending: list[Example | list[LineError]] = []
    batch: list[Example] = []
    for item in iter_records(chunks, format):
        result = [item] if isinstance(item, LineError) else validate_record(item.line, item.data, item.format)
        pending.append(result)
        if isinstance(result, Example):
            batch.append(result)
        if len(batch) >= token_counter.batch_size or len(pending) >= 4 * token_counter.batch_size:
            yield from _flush(pending, batch, token_counter)
            pending, batch = [], []
    yield from _flush(pending, batch, token_counter)


def _flush(
    pending: list[Example | list[LineError]], batch: list[Example], counter: TokenCounter
) -> Iterator[Example | list[LineError]]:
    problems = iter(counter.check_many(batch))
    for result in pending:
        if isinstance(result, Example):
            problem = next(problems)
            yield result if problem is None else [problem]
        else:
            yield result


def summarize_errors(
    errors: Iterable[LineError | Sequence[LineError]], cap: int = 100
) -> tuple[list[LineError], int]:
    """For strict mode: the first `cap` problems, in file order, and how many there are in all."""
    kept: list[LineError] = []
    total = 0
    for item in errors:
        group = [item] if isinstance(item, LineError) else item
        total += len(group)
        if len(kept) < cap:
            kept.extend(islice(group, cap - len(kept)))
    return kept, total
