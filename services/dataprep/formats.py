"""Streaming ingest of uploaded training files: bytes in, one record (or one problem) per line out.

Four formats are read, all without holding the whole file in memory:

- ``chat``: OpenAI chat JSONL, ``{"messages": [...]}`` per line, optional ``label`` / ``slice``.
- ``preference``: OpenAI DPO JSONL, ``{"input": {"messages": [...]}, "preferred_output": [...],
  "non_preferred_output": [...]}``.
- ``alpaca``: ``{"instruction", "input", "output", "system"?}`` objects, as JSONL or as one JSON
  array (the array is parsed object by object, never loaded whole).
- ``csv``: a header row naming a prompt and a completion column (``prompt``/``completion``,
  ``question``/``answer``, ``input``/``output``, ``instruction``/``response``, or Alpaca's
  ``instruction``/``input``/``output``), optional ``system``, ``label`` and ``slice`` columns.

The container (JSON lines, one JSON array, CSV) is told apart from the record format: a JSON array
of chat objects is read as well as one of Alpaca objects.

This module only parses: it reports what stops a line from being read at all (bytes that are not
UTF-8, text that is not JSON, JSON that is not an object, a malformed CSV row). Whether a record is
a usable training example is `validation`'s job; `iter_examples` chains the two.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Any

from services.dataprep.examples import Example, LineError
from services.shared.errors import InvalidArgument

FORMATS = ("chat", "preference", "alpaca", "csv")
# How much of the file format detection reads.
HEAD_BYTES = 64 * 1024
# The most one line (JSONL) or one record (a JSON array element, a CSV row) may hold. Past it the
# record is reported and skipped, so a file with no newlines cannot make us buffer all of it.
MAX_RECORD_BYTES = 16 * 1024 * 1024

# The `field` of a problem with the line as a whole rather than one of its fields.
LINE_FIELD = "(line)"

_BOM = b"\xef\xbb\xbf"
_JSON_WS = " \t\r\n"
_DECODER = json.JSONDecoder()

# CSV column pairs, in order of preference: (prompt column, completion column).
CSV_COLUMN_PAIRS = (
    ("prompt", "completion"),
    ("question", "answer"),
    ("input", "output"),
    ("instruction", "response"),
)
CSV_OPTIONAL_COLUMNS = ("system", "label", "slice")

_EXPECTED = (
    'expected one of: OpenAI chat JSONL (one {"messages": [...]} object per line), OpenAI '
    'preference JSONL ({"input": {"messages": [...]}, "preferred_output": [...], '
    '"non_preferred_output": [...]}), Alpaca JSON or JSONL ({"instruction", "input", '
    '"output"}), or CSV with a header naming prompt and completion columns ('
    + ", ".join(f"{p}/{c}" for p, c in CSV_COLUMN_PAIRS)
    + ")"
)


@dataclass(frozen=True, slots=True)
class Record:
    """One parsed record: the JSON object (or CSV row as {column: cell}) that starts on `line`."""

    line: int
    data: Any
    format: str


@dataclass(frozen=True, slots=True)
class CsvColumns:
    """Which header names of a CSV file hold what. `input` is set only for Alpaca-style headers."""

    prompt: str
    completion: str
    input: str | None = None
    system: str | None = None
    label: str | None = None
    slice: str | None = None

    def known(self) -> frozenset[str]:
        names = (self.prompt, self.completion, self.input, self.system, self.label, self.slice)
        return frozenset(n for n in names if n is not None)


@lru_cache(maxsize=64)
def resolve_csv_columns(header: tuple[str, ...]) -> CsvColumns | None:
    """The roles of a CSV header's columns (matched case-insensitively), or None if it has no pair."""
    by_name: dict[str, str] = {}
    for name in header:
        by_name.setdefault(name.strip().lower(), name)
    optional = {key: by_name.get(key) for key in CSV_OPTIONAL_COLUMNS}
    if "instruction" in by_name and "output" in by_name:
        return CsvColumns(by_name["instruction"], by_name["output"], input=by_name.get("input"), **optional)
    for prompt, completion in CSV_COLUMN_PAIRS:
        if prompt in by_name and completion in by_name:
            return CsvColumns(by_name[prompt], by_name[completion], **optional)
    return None


def check_format(format: str | None) -> str | None:
    if format is not None and format not in FORMATS:
        raise InvalidArgument(
            f"unknown format {format!r}; use one of: {', '.join(FORMATS)} (or leave it out to detect it)",
            param="format",
        )
    return format


def _format_of_object(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "messages" in obj:
        return "chat"
    if "preferred_output" in obj or "non_preferred_output" in obj or isinstance(obj.get("input"), dict):
        return "preference"
    if "instruction" in obj or "output" in obj:
        return "alpaca"
    return None


def _sniff_keys(text: str) -> str | None:
    """Last resort for a first record longer than the head: look for the format's key names."""
    for key, format in (
        ('"preferred_output"', "preference"),
        ('"non_preferred_output"', "preference"),
        ('"messages"', "chat"),
        ('"instruction"', "alpaca"),
    ):
        if key in text:
            return format
    return None


def detect_format(head: bytes) -> str:
    """The format of a file from its first bytes (say 64 KiB); InvalidArgument if none fits."""
    if head.startswith(_BOM):
        head = head[len(_BOM) :]
    elif head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidArgument("the file is UTF-16; save it as UTF-8", param="format")
    text = head.decode("utf-8", errors="replace").lstrip(_JSON_WS + "\ufeff")
    if not text:
        raise InvalidArgument(f"the file is empty; {_EXPECTED}", param="format")
    if text[0] == "[":
        # A JSON array: Alpaca's own layout; a chat or preference array is read too.
        try:
            first, _ = _DECODER.raw_decode(text, len(text) - len(text[1:].lstrip(_JSON_WS)))
        except (ValueError, RecursionError):
            return _sniff_keys(text[:HEAD_BYTES]) or "alpaca"
        return _format_of_object(first) or "alpaca"
    if text[0] == "{":
        lines = [line for line in text.splitlines()[:20] if line.strip()]
        complete = lines[:-1] if len(head) >= HEAD_BYTES else lines  # the last may be cut short
        for line in complete[:10]:
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                continue
            format = _format_of_object(obj)
            if format is not None:
                return format
            if isinstance(obj, dict):
                keys = ", ".join(sorted(map(str, obj))[:10])
                hint = (
                    " (prompt/completion JSONL is OpenAI's legacy format: upload it as CSV with "
                    "prompt and completion columns, or convert it to chat messages)"
                    if "prompt" in obj and "completion" in obj
                    else ""
                )
                raise InvalidArgument(
                    f"the first JSON object has keys {keys}, which match no known format{hint}; {_EXPECTED}",
                    param="format",
                )
        format = _sniff_keys(text)
        if format is not None:
            return format
        raise InvalidArgument(
            f"the file starts with '{{' but is not readable JSON lines; {_EXPECTED}", param="format"
        )
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    try:
        header = next(csv.reader([first_line]))
    except csv.Error:
        header = []
    if resolve_csv_columns(tuple(header)) is not None:
        return "csv"
    raise InvalidArgument(
        f"could not tell the file's format from its first line {first_line[:80]!r}; {_EXPECTED}",
        param="format",
    )


def _iter_raw_lines(chunks: Iterable[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, line without its newline) for every line; None for a line past `max_bytes`."""
    pending: list[bytes] = []
    pending_size = 0
    overflow = False
    lineno = 0
    for chunk in chunks:
        if not chunk:
            continue
        parts = chunk.split(b"\n")
        for part in parts[:-1]:
            lineno += 1
            if overflow:
                yield lineno, None
                overflow = False
            elif pending:
                pending.append(part)
                line = b"".join(pending)
                pending, pending_size = [], 0
                yield lineno, (line if len(line) <= max_bytes else None)
            else:
                yield lineno, (part if len(part) <= max_bytes else None)
        tail = parts[-1]
        if tail and not overflow:
            pending.append(tail)
            pending_size += len(tail)
            if pending_size > max_bytes:
                pending, pending_size, overflow = [], 0, True
    if overflow:
        yield lineno + 1, None
    elif pending:
        yield lineno + 1, b"".join(pending)


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def _too_long(lineno: int) -> LineError:
    return LineError(
        lineno, LINE_FIELD, "record_too_large", f"the line is longer than {_size(MAX_RECORD_BYTES)}"
    )


def _decode_line(
    lineno: int, raw: bytes | None, *, skip_blank: bool
) -> tuple[str | None, LineError | None] | None:
    """(text, problem) of one line, None for a blank one when `skip_blank`: text is None past
    MAX_RECORD_BYTES (`raw` None); bad UTF-8 is replaced."""
    if raw is None:
        return None, _too_long(lineno)
    if lineno == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if skip_blank and not raw.strip():
        return None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        error = LineError(
            lineno,
            LINE_FIELD,
            "invalid_encoding",
            f"not valid UTF-8 (byte {exc.start + 1} of the line, {raw[exc.start : exc.start + 4]!r}); "
            "save the file as UTF-8",
        )
        return raw.decode("utf-8", errors="replace"), error


def _iter_lines(
    chunks: Iterable[bytes], *, skip_blank: bool
) -> Iterator[tuple[int, str | None, LineError | None]]:
    """(line number, text, problem) per line, as `_decode_line` reads it."""
    for lineno, raw in _iter_raw_lines(chunks, MAX_RECORD_BYTES):
        decoded = _decode_line(lineno, raw, skip_blank=skip_blank)
        if decoded is not None:
            yield lineno, *decoded


def _json_error(lineno: int, exc: Exception) -> LineError:
    if isinstance(exc, json.JSONDecodeError):
        where = (
            f"line {lineno + exc.lineno - 1}, column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
        )
        message = f"not valid JSON: {exc.msg.removesuffix(' at')} at {where}"
    else:
        message = "not valid JSON: nested too deeply"
    return LineError(lineno, LINE_FIELD, "invalid_json", message)


def _not_an_object(lineno: int, value: Any) -> LineError:
    kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
    return LineError(lineno, LINE_FIELD, "data_type", f"each record must be a JSON object, not {kind}")


def _jsonl_record(lineno: int, text: str | None, error: LineError | None, format: str) -> Record | LineError:
    if error is not None:
        return error
    try:
        data = json.loads(text)  # type: ignore[arg-type]
    except (ValueError, RecursionError) as exc:
        return _json_error(lineno, exc)
    return Record(lineno, data, format) if isinstance(data, dict) else _not_an_object(lineno, data)


def _iter_jsonl(
    lines: Iterator[tuple[int, str | None, LineError | None]], format: str
) -> Iterator[Record | LineError]:
    for lineno, text, error in lines:
        yield _jsonl_record(lineno, text, error, format)


def parse_jsonl_line(lineno: int, raw: bytes | None, format: str) -> Record | LineError | None:
    """One line of a JSON-lines file (a `RawLine` of `iter_units`) as `iter_records` reads it; None
    for a blank line, which is skipped."""
    decoded = _decode_line(lineno, raw, skip_blank=True)
    return None if decoded is None else _jsonl_record(lineno, *decoded, format)


def _iter_json_array(
    lines: Iterator[tuple[int, str | None, LineError | None]], format: str
) -> Iterator[Record | LineError]:
    """The elements of one JSON array, parsed one at a time with `raw_decode` over a small buffer.

    JSON strings cannot hold a raw newline, so a buffer of whole lines that fails to parse at its
    very end is an element still open (read more lines: it can only close on a line with '}' or
    ']'); a failure earlier is a real syntax error, after which the parser resumes at the next line
    that starts with '{'.
    """
    buf = ""  # text not yet consumed; it starts on line `buf_line`
    buf_line = 0
    state = "start"  # start | value | after | end | recover | done
    waiting = False  # `buf` holds an element that is still open
    bad_lines: list[int] = []  # lines of the open element that were not UTF-8 (reported already)
    last_line = 0

    def line_at(pos: int) -> int:
        return buf_line + buf.count("\n", 0, pos)

    for lineno, text, error in lines:
        last_line = lineno
        if error is not None:
            yield error
            if text is None:  # too long to read: drop the element it belongs to
                state = "done" if state in ("end", "done") else "recover"
                buf, waiting, bad_lines = "", False, []
                continue
            bad_lines.append(lineno)
        assert text is not None
        if state == "done":
            continue
        if state == "recover":
            if not text.lstrip().startswith("{"):
                continue
            state = "value"
        if not buf:
            buf_line = lineno
        buf += text + "\n"
        if waiting:
            if len(buf) > MAX_RECORD_BYTES:
                yield LineError(
                    buf_line,
                    LINE_FIELD,
                    "record_too_large",
                    f"the record is longer than {_size(MAX_RECORD_BYTES)}",
                )
                state, buf, waiting, bad_lines = "recover", "", False, []
                continue
            if "}" not in text and "]" not in text:
                continue
        waiting = False
        while True:
            pos = len(buf) - len(buf.lstrip(_JSON_WS))
            if pos == len(buf):
                buf = ""
                break
            char = buf[pos]
            if state == "start":  # the file starts with '[' (that is how this parser was chosen)
                state = "value"
                buf_line, buf = line_at(pos), buf[pos + 1 :]
                continue
            if state == "end":
                yield LineError(
                    line_at(pos),
                    LINE_FIELD,
                    "invalid_json",
                    "text after the end of the JSON array: a file holds one JSON array or one JSON object per line",
                )
                state, buf = "done", ""
                break
            if state == "after":
                if char in ",]":
                    state = "value" if char == "," else "end"
                    buf_line, buf = line_at(pos), buf[pos + 1 :]
                    continue
                yield LineError(
                    line_at(pos), LINE_FIELD, "invalid_json", "expected ',' or ']' after an array element"
                )
                if char == "{":  # a missing comma: read the object that follows all the same
                    state = "value"
                    continue
                state, buf, bad_lines = "recover", "", []
                break
            # state == "value"
            if char == "]":
                state = "end"
                buf_line, buf = line_at(pos), buf[pos + 1 :]
                continue
            start = line_at(pos)
            try:
                value, end = _DECODER.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if exc.pos >= len(buf):  # still open
                    buf_line, buf, waiting = start, buf[pos:], True
                    break
                yield _json_error(start, _shift(exc, buf, pos))
                state, buf, bad_lines = "recover", "", []
                break
            except RecursionError as exc:
                yield _json_error(start, exc)
                state, buf, bad_lines = "recover", "", []
                break
            stop = line_at(end - 1)
            if any(start <= b <= stop for b in bad_lines):
                pass  # its bytes that were not UTF-8 are reported already
            elif isinstance(value, dict):
                yield Record(start, value, format)
            else:
                yield _not_an_object(start, value)
            bad_lines = [b for b in bad_lines if b > stop]
            state = "after"
            buf_line, buf = stop, buf[end:]
    if waiting:
        yield LineError(
            buf_line, LINE_FIELD, "invalid_json", "the file ends before this JSON array element is closed"
        )
    elif state in ("start", "value", "after"):
        yield LineError(
            max(last_line, 1), LINE_FIELD, "invalid_json", "the JSON array is not closed with ']'"
        )


def _shift(exc: json.JSONDecodeError, buf: str, pos: int) -> json.JSONDecodeError:
    """The error with its line counted from the element's first line, not the buffer's."""
    before = buf.count("\n", 0, pos)
    shifted = json.JSONDecodeError(exc.msg, buf, exc.pos)
    shifted.lineno = exc.lineno - before
    return shifted


def _iter_csv(lines: Iterator[tuple[int, str | None, LineError | None]]) -> Iterator[Record | LineError]:
    errors: list[LineError] = []
    bad_lines: list[int] = []

    def feed() -> Iterator[str]:
        for lineno, text, error in lines:
            if error is not None:
                errors.append(error)
                bad_lines.append(lineno)
            yield (text or "") + "\n"

    # Only ever raised, never lowered: a long completion is not an error.
    if csv.field_size_limit() < MAX_RECORD_BYTES:
        csv.field_size_limit(MAX_RECORD_BYTES)
    reader = csv.reader(feed())
    header: list[str] | None = None
    previous = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield from errors
            errors.clear()
            yield LineError(previous + 1, LINE_FIELD, "invalid_csv", f"not a readable CSV row: {exc}")
            previous = reader.line_num
            bad_lines.clear()
            continue
        start, previous = previous + 1, reader.line_num
        spans_bad = any(start <= b <= previous for b in bad_lines)
        yield from errors
        errors.clear()
        bad_lines.clear()
        if spans_bad or not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [name.strip() for name in row]
            if resolve_csv_columns(tuple(header)) is None:
                yield LineError(
                    start,
                    "(header)",
                    "missing_columns",
                    f"the CSV header {', '.join(header)[:200]!r} names no prompt and completion columns; "
                    "use one of: " + ", ".join(f"{p}/{c}" for p, c in CSV_COLUMN_PAIRS),
                )
                return
            continue
        if len(row) > len(header):
            yield LineError(
                start,
                LINE_FIELD,
                "invalid_csv",
                f"the row has {len(row)} cells but the header has {len(header)} columns "
                "(quote cells that contain commas)",
            )
            continue
        data = {name: cell for name, cell in zip(header, row, strict=False) if name}
        for name in header[len(row) :]:
            if name:
                data.setdefault(name, "")
        yield Record(start, data, "csv")


def _open(chunks: Iterable[bytes], format: str | None) -> tuple[str, str, Iterator[bytes]]:
    """(format, layout, the file's chunks): layout is "empty", "csv", "array" (one JSON array) or "jsonl"."""
    format = check_format(format)
    chunks = iter(chunks)
    head_parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        head_parts.append(chunk)
        size += len(chunk)
        if size >= HEAD_BYTES:
            break
    head = b"".join(head_parts)
    stripped = head[len(_BOM) :] if head.startswith(_BOM) else head
    stripped = stripped.lstrip()
    if not stripped and size < HEAD_BYTES:
        return format or "", "empty", iter(())
    if format is None:
        format = detect_format(head)
    stream = chain([head], chunks)
    layout = "csv" if format == "csv" else ("array" if stripped.startswith(b"[") else "jsonl")
    return format, layout, stream


def iter_records(chunks: Iterable[bytes], format: str | None = None) -> Iterator[Record | LineError]:
    """Parse a file, given as pieces of its bytes, into records and the lines that could not be read.

    `format` is one of FORMATS, or None to detect it from the first 64 KiB (InvalidArgument when no
    format fits). Blank lines are skipped; line numbers are 1-based and name where a record starts.
    """
    format, layout, stream = _open(chunks, format)
    if layout == "csv":
        yield from _iter_csv(_iter_lines(stream, skip_blank=False))
    elif layout == "array":
        yield from _iter_json_array(_iter_lines(stream, skip_blank=True), format)
    elif layout == "jsonl":
        yield from _iter_jsonl(_iter_lines(stream, skip_blank=True), format)


# A line of a JSON-lines file, not yet parsed: (line number, its bytes, None past MAX_RECORD_BYTES).
RawLine = tuple[int, bytes | None]


def iter_units(chunks: Iterable[bytes], format: str) -> Iterator[RawLine | Record | LineError]:
    """`iter_records` in two halves, so that the parsing can run elsewhere (in worker processes): a
    JSON-lines file yields its lines unparsed (`parse_jsonl_line` reads one); a JSON array or CSV,
    whose records can span lines, yields its records and problems."""
    format, layout, stream = _open(chunks, format)
    if layout == "jsonl":
        yield from _iter_raw_lines(stream, MAX_RECORD_BYTES)
    elif layout != "empty":
        yield from iter_records(stream, format)


def iter_examples(chunks: Iterable[bytes], format: str | None = None) -> Iterator[Example | LineError]:
    """Examples and problems, in file order; a line with several problems yields each of them.

    This is `iter_records` followed by `validation.validate_record`, without the token limit;
    `validation.iter_validated` is the same with problems grouped per line and the token limit.
    """
    from services.dataprep.validation import validate_record

    for item in iter_records(chunks, format):
        if isinstance(item, LineError):
            yield item
            continue
        result = validate_record(item.line, item.data, item.format)
        if isinstance(result, list):
            yield from result
        else:
            yield result
