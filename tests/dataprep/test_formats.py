"""Streaming ingest: format detection, the four formats, line numbers, and what cannot be parsed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import count, islice

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dataprep import formats
from services.dataprep.examples import LineError
from services.dataprep.formats import Record, detect_format, iter_examples, iter_records
from services.shared.errors import InvalidArgument

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
PREFERENCE = {
    "input": {"messages": [{"role": "user", "content": "Hi"}]},
    "preferred_output": [{"role": "assistant", "content": "Hello"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away"}],
}
ALPACA = {"instruction": "Add", "input": "1 and 2", "output": "3"}


def pieces(data: bytes, size: int = 5) -> list[bytes]:
    """The file cut into small chunks, so that lines and characters straddle chunk boundaries."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def jsonl(*objects: object) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objects).encode()


def records(data: bytes, format: str | None = None, size: int = 5) -> list[Record | LineError]:
    return list(iter_records(pieces(data, size), format))


def lines_and_codes(items: list) -> list[tuple[int, str]]:
    return [(i.line, "record" if isinstance(i, Record) else i.code) for i in items]


# --- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (jsonl(CHAT), "chat"),
        (jsonl(PREFERENCE), "preference"),
        (jsonl(ALPACA), "alpaca"),
        (json.dumps([ALPACA], indent=2).encode(), "alpaca"),
        (b"  \n[]", "alpaca"),
        (json.dumps([CHAT]).encode(), "chat"),
        (b"\xef\xbb\xbf" + jsonl(CHAT), "chat"),
        (b"\n\n" + jsonl(CHAT), "chat"),
        (b"prompt,completion\nhi,there\n", "csv"),
        (b"Question,Answer,label\n", "csv"),
        (b"id,input,output\n", "csv"),
        (b"instruction,response\n", "csv"),
        (b'"instruction","input","output"\n', "csv"),
        (b"\xef\xbb\xbfprompt,completion\n", "csv"),
    ],
)
def test_detect_format(head: bytes, expected: str) -> None:
    assert detect_format(head) == expected


def test_detect_format_reads_a_first_line_longer_than_the_head() -> None:
    line = json.dumps({"messages": [{"role": "user", "content": "x" * 100_000}]}).encode()
    assert detect_format(line[: formats.HEAD_BYTES]) == "chat"


@pytest.mark.parametrize(
    ("head", "needle"),
    [
        (b"", "empty"),
        (b"   \n ", "empty"),
        (b"hello world\nsecond line\n", "could not tell"),
        (b"a,b\n1,2\n", "could not tell"),
        (jsonl({"foo": 1}), "match no known format"),
        (jsonl({"prompt": "a", "completion": "b"}), "legacy"),
        ("prompt,completion\n".encode("utf-16"), "UTF-16"),
    ],
)
def test_detect_format_refuses_what_it_cannot_read(head: bytes, needle: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        detect_format(head)
    assert info.value.param == "format"
    assert needle in info.value.message
    assert "expected one of" in info.value.message or needle == "UTF-16"


def test_an_unknown_format_name_is_refused() -> None:
    with pytest.raises(InvalidArgument) as info:
        list(iter_records([jsonl(CHAT)], "parquet"))
    assert info.value.param == "format"


def test_detection_is_used_when_no_format_is_given_and_an_override_wins() -> None:
    data = jsonl(ALPACA)
    assert [r.format for r in records(data)] == ["alpaca"]
    assert [r.format for r in records(data, "chat")] == ["chat"]
    # Read as chat, the Alpaca object is not a usable example: validation says why.
    [*errors] = iter_examples(pieces(data), "chat")
    assert {(e.field, e.code) for e in errors} >= {
        ("messages", "missing_messages_list"),
        ("instruction", "unrecognized_key"),
    }


def test_an_empty_file_has_no_records() -> None:
    assert records(b"") == []
    assert records(b"\n \n\r\n") == []
    assert records(b"\xef\xbb\xbf") == []


# --- JSON lines --------------------------------------------------------------------------------


def test_jsonl_reports_line_numbers_and_skips_blank_lines() -> None:
    data = (
        b"\n" + jsonl(CHAT) + b"   \n\r\n" + jsonl(CHAT) + b"\t\n" + json.dumps(CHAT).encode()
    )  # no final newline
    assert lines_and_codes(records(data, size=3)) == [(2, "record"), (5, "record"), (7, "record")]


def test_jsonl_with_crlf_line_ends() -> None:
    data = jsonl(CHAT, CHAT).replace(b"\n", b"\r\n")
    assert [r.data for r in records(data)] == [CHAT, CHAT]


def test_not_json_and_not_an_object() -> None:
    data = jsonl(CHAT) + b'{"messages": [\n' + b"[1, 2]\n" + b'"text"\n' + b"null\n" + jsonl(CHAT)
    items = records(data)
    assert lines_and_codes(items) == [
        (1, "record"),
        (2, "invalid_json"),
        (3, "data_type"),
        (4, "data_type"),
        (5, "data_type"),
        (6, "record"),
    ]
    assert all(i.field == "(line)" for i in items if isinstance(i, LineError))
    assert "not valid JSON" in items[1].message and "an array" in items[2].message


def test_a_bom_is_dropped() -> None:
    items = records(b"\xef\xbb\xbf" + jsonl(CHAT), size=2)
    assert [(r.line, r.data) for r in items] == [(1, CHAT)]


def test_invalid_utf8_spoils_only_its_own_line() -> None:
    bad = json.dumps({"messages": [{"role": "user", "content": "caf"}]}).encode().replace(b"caf", b"caf\xe9")
    data = jsonl(CHAT) + bad + b"\n" + "é".encode() * 3 + b"\n" + jsonl(CHAT)
    items = records(data, size=3)  # "é" is split across chunks: still fine
    assert lines_and_codes(items) == [
        (1, "record"),
        (2, "invalid_encoding"),
        (3, "invalid_json"),
        (4, "record"),
    ]
    assert items[1].field == "(line)" and "UTF-8" in items[1].message


def test_a_line_past_the_size_limit_is_reported_and_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_RECORD_BYTES", 100)
    long_line = json.dumps({"messages": [{"role": "user", "content": "x" * 500}]}).encode()
    data = jsonl(CHAT) + long_line + b"\n" + jsonl(CHAT) + long_line
    assert lines_and_codes(records(data, "chat", size=7)) == [
        (1, "record"),
        (2, "record_too_large"),
        (3, "record"),
        (4, "record_too_large"),
    ]


def endless(prefix: bytes, element: bytes, separator: bytes) -> Iterator[bytes]:
    yield prefix
    for _ in count():
        yield element + separator


def test_jsonl_is_streamed() -> None:
    stream = endless(b"", json.dumps(CHAT).encode(), b"\n")
    assert [r.line for r in islice(iter_records(stream, "chat"), 3)] == [1, 2, 3]


# --- JSON array (Alpaca) ------------------------------------------------------------------------


def test_a_json_array_is_streamed_element_by_element() -> None:
    stream = endless(b"[\n", json.dumps(ALPACA, indent=2).encode(), b",\n")
    first = list(islice(iter_records(stream), 3))  # an endless array: must not read it all
    assert [(r.line, r.format, r.data) for r in first] == [
        (2, "alpaca", ALPACA),
        (7, "alpaca", ALPACA),
        (12, "alpaca", ALPACA),
    ]


def test_json_array_line_numbers_are_where_each_object_starts() -> None:
    data = (
        b"[\n"
        b'  {"instruction": "a", "output": "b"},\n'  # line 2
        b"\n"
        b"  {\n"  # line 4
        b'    "instruction": "c",\n'
        b'    "output": "d"\n'
        b'  }, {"instruction": "e",\n'  # line 7: two elements on one line
        b'  "output": "f"},\n'
        b'  {"instruction": "g", "output": "h"}]\n'  # line 9
    )
    for size in (1, 4, 1000):
        items = records(data, size=size)
        assert [(r.line, r.data["instruction"]) for r in items] == [(2, "a"), (4, "c"), (7, "e"), (9, "g")]
    assert [e.line for e in iter_examples(pieces(data))] == [2, 4, 7, 9]


def test_a_one_line_json_array() -> None:
    data = json.dumps([ALPACA, ALPACA, ALPACA]).encode()
    assert [r.line for r in records(data)] == [1, 1, 1]


def test_json_array_problems_are_reported_and_reading_goes_on() -> None:
    data = (
        b"[\n"
        b'  {"instruction": "a", "output": "b"},\n'  # 2
        b"  [1, 2],\n"  # 3: not an object
        b"  17,\n"  # 4
        b"  {\n"  # 5
        b'    "instruction": "broken,\n'  # 6: an unterminated string
        b'    "output": "d"\n'
        b"  },\n"
        b'  {"instruction": "e", "output": "f"}\n'  # 9: reading resumes at the next line opening an object
        b"]\n"
    )
    items = records(data, size=3)
    assert lines_and_codes(items) == [
        (2, "record"),
        (3, "data_type"),
        (4, "data_type"),
        (5, "invalid_json"),
        (9, "record"),
    ]
    assert "line 6" in items[3].message


def test_json_array_missing_comma_trailing_text_and_unclosed_arrays() -> None:
    missing_comma = b'[{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}]\n'
    assert lines_and_codes(records(missing_comma)) == [(1, "record"), (2, "invalid_json"), (2, "record")]
    trailing = b'[{"instruction": "a", "output": "b"}]\n[{"instruction": "c"}]\n'
    assert lines_and_codes(records(trailing)) == [(1, "record"), (2, "invalid_json")]
    unclosed = b'[\n{"instruction": "a", "output": "b"},\n'
    assert lines_and_codes(records(unclosed)) == [(2, "record"), (2, "invalid_json")]
    cut = b'[\n{"instruction": "a", "output": "b"},\n{"instruction":\n'
    assert lines_and_codes(records(cut)) == [(2, "record"), (3, "invalid_json")]
    assert "ends before" in records(cut)[-1].message


def test_json_array_with_invalid_utf8_inside_an_object() -> None:
    data = b'[\n{"instruction": "a",\n "output": "b\xff"},\n{"instruction": "c", "output": "d"}\n]'
    assert lines_and_codes(records(data)) == [(3, "invalid_encoding"), (4, "record")]


def test_json_array_element_past_the_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_RECORD_BYTES", 60)
    big = json.dumps({"instruction": "x" * 30, "output": "y" * 30}, indent=1).encode()
    data = b"[\n" + big + b",\n" + json.dumps(ALPACA).encode() + b"\n]\n"
    assert lines_and_codes(records(data)) == [(2, "record_too_large"), (6, "record")]


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_with_multi_line_quoted_fields() -> None:
    data = (
        b"prompt,completion,label,slice,system\n"
        b'"What is\nthe answer?","It is\n""42"", of course",math,eval,Be brief\n'  # starts on line 2
        b"\n"
        b"Hi,Hello,,,\n"  # line 6
    )
    items = records(data, size=4)
    assert [(r.line, r.data["prompt"], r.data["completion"]) for r in items] == [
        (2, "What is\nthe answer?", 'It is\n"42", of course'),
        (6, "Hi", "Hello"),
    ]
    [first, second] = iter_examples(pieces(data))
    assert first.messages == (
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "What is\nthe answer?"},
        {"role": "assistant", "content": 'It is\n"42", of course'},
    )
    assert (first.line, first.label, first.slice) == (2, "math", "eval")
    assert (second.line, second.label, second.slice, len(second.messages)) == (6, None, None, 2)


@pytest.mark.parametrize(
    ("header", "prompt", "completion"),
    [
        ("question,answer", "question", "answer"),
        ("Input,Output", "Input", "Output"),
        ("instruction,response", "instruction", "response"),
    ],
)
def test_csv_column_aliases(header: str, prompt: str, completion: str) -> None:
    data = f"{header}\nq,a\n".encode()
    [record] = records(data)
    assert record.data == {prompt: "q", completion: "a"} and record.format == "csv"
    [example] = iter_examples(pieces(data))
    assert [m["content"] for m in example.messages] == ["q", "a"]


def test_csv_alpaca_columns_and_extra_columns() -> None:
    data = b"id,instruction,input,output\n7,Add,1 and 2,3\n8,Say hi,,hi\n"
    [first, second] = iter_examples(pieces(data))
    assert first.messages[0] == {"role": "user", "content": "Add\n\n1 and 2"}
    assert first.extra == {"id": "7"}
    assert second.messages[0] == {"role": "user", "content": "Say hi"}


def test_csv_bom_crlf_and_invalid_utf8() -> None:
    data = b"\xef\xbb\xbfprompt,completion\r\nq1,a1\r\nq2,a\xff\r\nq3,a3\r\n"
    items = records(data, size=3)
    assert lines_and_codes(items) == [(2, "record"), (3, "invalid_encoding"), (4, "record")]
    assert items[0].data == {"prompt": "q1", "completion": "a1"}


def test_csv_rows_with_too_many_cells_and_a_header_without_known_columns() -> None:
    data = b"prompt,completion\nq,a,oops\nq,\n"
    items = records(data)
    assert lines_and_codes(items) == [(2, "invalid_csv"), (3, "record")]
    assert items[1].data == {"prompt": "q", "completion": ""}
    [error] = records(b"a,b\n1,2\n", "csv")
    assert (error.line, error.field, error.code) == (1, "(header)", "missing_columns")


def test_csv_short_rows_are_padded() -> None:
    [record] = records(b"prompt,completion,label\nq,a\n")
    assert record.data == {"prompt": "q", "completion": "a", "label": ""}


# --- properties --------------------------------------------------------------------------------


@settings(database=None, max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
            st.integers(),
            st.text(max_size=5),
        ),
        max_size=8,
    ),
    st.integers(min_value=1, max_value=40),
    st.booleans(),
)
def test_chunking_never_changes_the_result(values: list, size: int, as_array: bool) -> None:
    data = (
        json.dumps(values, indent=1).encode()
        if as_array
        else b"\n".join(json.dumps(v).encode() for v in values)
    )
    whole = list(iter_records([data], "alpaca"))
    assert list(iter_records(pieces(data, size), "alpaca")) == whole
