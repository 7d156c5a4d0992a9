"""Validation: every check names the exact code, line and field; the token limit; properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dataprep.examples import ROLES, Example, LineError
from services.dataprep.formats import FORMATS
from services.dataprep.validation import TokenCounter, iter_validated, summarize_errors, validate_record
from services.shared.errors import InvalidArgument

USER = {"role": "user", "content": "What is 2 + 2?"}
ASSISTANT = {"role": "assistant", "content": "4"}


def chunked(data: bytes, size: int = 7) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def validated(lines: list[object], format: str | None = None, counter: TokenCounter | None = None) -> list:
    data = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
    return list(iter_validated(chunked(data), format, counter))


def problems(record: object, format: str = "chat", line: int = 3) -> set[tuple[int, str, str]]:
    """(line, field, code) of every problem of `record` read from line 3 of a file."""
    result = validate_record(line, record, format)
    assert isinstance(result, list), result
    assert all(isinstance(e, LineError) and e.message for e in result)
    return {(e.line, e.field, e.code) for e in result}


def chat(*messages: object, **extra: object) -> dict:
    return {"messages": list(messages), **extra}


# --- chat: OpenAI's cookbook checks and ours ---------------------------------------------------


def test_a_valid_chat_example() -> None:
    example = validate_record(1, chat(USER, ASSISTANT, label="math", slice="easy"), "chat")
    assert example == Example(line=1, messages=(USER, ASSISTANT), label="math", slice="easy")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ([USER, ASSISTANT], {(3, "(line)", "data_type")}),
        ("text", {(3, "(line)", "data_type")}),
        (chat(USER, "hello", ASSISTANT), {(3, "messages[1]", "data_type")}),
        (chat(USER, ASSISTANT, label=["a"]), {(3, "label", "data_type")}),
        (chat(USER, ASSISTANT, slice=1.5), {(3, "slice", "data_type")}),
        (
            chat(USER, {"role": "assistant", "content": "4", "name": 7}),
            {(3, "messages[1].name", "data_type")},
        ),
        ({}, {(3, "messages", "missing_messages_list")}),
        ({"messages": "hi"}, {(3, "messages", "missing_messages_list")}),
        ({"messages": []}, {(3, "messages", "missing_messages_list")}),
        ({"messages": None}, {(3, "messages", "missing_messages_list")}),
        (chat(USER, {"content": "4"}), {(3, "messages[1].role", "message_missing_key")}),
        (chat(USER, {"role": "assistant"}), {(3, "messages[1].content", "message_missing_key")}),
        (chat(USER, {**ASSISTANT, "score": 1}), {(3, "messages[1].score", "message_unrecognized_key")}),
        (chat({"role": "human", "content": "hi"}, ASSISTANT), {(3, "messages[0].role", "unrecognized_role")}),
        (
            chat({"role": ["user"], "content": "hi"}, ASSISTANT),
            {(3, "messages[0].role", "unrecognized_role")},
        ),
        (chat(USER, {"role": "assistant", "content": ""}), {(3, "messages[1].content", "missing_content")}),
        (
            chat(USER, {"role": "assistant", "content": " \n\t"}),
            {(3, "messages[1].content", "missing_content")},
        ),
        (chat(USER, {"role": "assistant", "content": None}), {(3, "messages[1].content", "missing_content")}),
        (
            chat(USER, {"role": "assistant", "content": [{"type": "text", "text": "4"}]}),
            {(3, "messages[1].content", "missing_content")},
        ),
        (chat(USER), {(3, "messages", "example_missing_assistant_message")}),
        (
            chat({"role": "system", "content": "Be nice"}, USER),
            {(3, "messages", "example_missing_assistant_message")},
        ),
        (chat(USER, ASSISTANT, USER), {(3, "messages[2].role", "last_message_not_assistant")}),
        (
            chat(USER, ASSISTANT, {"role": "tool", "content": "{}"}),
            {(3, "messages[2].role", "last_message_not_assistant")},
        ),
        (chat(USER, ASSISTANT, source="web"), {(3, "source", "unrecognized_key")}),
        (chat(USER, ASSISTANT, tools=[]), {(3, "tools", "unrecognized_key")}),
        (chat(USER, {**ASSISTANT, "weight": 2}), {(3, "messages[1].weight", "invalid_weight")}),
        (chat(USER, {**ASSISTANT, "weight": True}), {(3, "messages[1].weight", "invalid_weight")}),
        (chat({**USER, "weight": 1}, ASSISTANT), {(3, "messages[0].weight", "invalid_weight")}),
    ],
)
def test_chat_checks(record: object, expected: set) -> None:
    assert problems(record) == expected


def test_allowed_message_keys_are_kept() -> None:
    answer = {**ASSISTANT, "weight": 0, "name": "bot", "tool_call_id": "x"}
    example = validate_record(1, chat(USER, answer), "chat")
    assert isinstance(example, Example) and example.messages[1] == answer


def test_every_problem_of_a_line_is_reported_at_once() -> None:
    record = {
        "messages": [{"role": "bot", "content": ""}, {"text": "hi", "role": "user"}, 5],
        "meta": {},
    }
    assert problems(record) == {
        (3, "meta", "unrecognized_key"),
        (3, "messages[0].role", "unrecognized_role"),
        (3, "messages[0].content", "missing_content"),
        (3, "messages[1].text", "message_unrecognized_key"),
        (3, "messages[1].content", "message_missing_key"),
        (3, "messages[2]", "data_type"),
    }


@pytest.mark.parametrize("corrected", [True, False])
def test_a_chat_example_may_say_whether_a_user_corrected_it(corrected: bool) -> None:
    example = validate_record(1, chat(USER, ASSISTANT, corrected=corrected), "chat")
    assert example == Example(line=1, messages=(USER, ASSISTANT), corrected=corrected)
    assert example.to_record() == chat(USER, ASSISTANT, corrected=corrected)
    assert "corrected" not in validate_record(1, chat(USER, ASSISTANT), "chat").to_record()


@pytest.mark.parametrize("value", ["true", 1, 0, None])
def test_corrected_must_be_a_json_boolean(value: object) -> None:
    if value is None:  # null is absent, as for label and slice
        assert validate_record(3, chat(USER, ASSISTANT, corrected=None), "chat").corrected is None
        return
    assert problems(chat(USER, ASSISTANT, corrected=value)) == {(3, "corrected", "data_type")}


def test_a_whole_number_label_is_read_as_text() -> None:
    example = validate_record(1, chat(USER, ASSISTANT, label=3), "chat")
    assert isinstance(example, Example) and example.label == "3"


# --- preference pairs --------------------------------------------------------------------------


def pair(**overrides: object) -> dict:
    record = {
        "input": {"messages": [USER]},
        "preferred_output": [{"role": "assistant", "content": "4"}],
        "non_preferred_output": [{"role": "assistant", "content": "5"}],
    }
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not None}


def test_a_valid_preference_pair() -> None:
    example = validate_record(2, pair(label="x"), "preference")
    assert example == Example(line=2, messages=(USER,), preferred="4", rejected="5", label="x")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({k: v for k, v in pair().items() if k != "input"}, {(3, "input", "missing_messages_list")}),
        (pair(input=[USER]), {(3, "input", "data_type")}),
        (pair(input={"messages": []}), {(3, "input.messages", "missing_messages_list")}),
        (pair(input={"messages": [USER], "tools": []}), {(3, "input.tools", "unrecognized_key")}),
        (
            pair(input={"messages": [{"role": "user"}]}),
            {(3, "input.messages[0].content", "message_missing_key")},
        ),
        (
            pair(input={"messages": [{"role": "robot", "content": "x"}]}),
            {(3, "input.messages[0].role", "unrecognized_role")},
        ),
        (pair(messages=[USER]), {(3, "messages", "unrecognized_key")}),
        (
            {k: v for k, v in pair().items() if k != "preferred_output"},
            {(3, "preferred_output", "invalid_preference_output")},
        ),
        (
            pair(preferred_output={"role": "assistant", "content": "4"}),
            {(3, "preferred_output", "invalid_preference_output")},
        ),
        (pair(preferred_output=[]), {(3, "preferred_output", "invalid_preference_output")}),
        (
            pair(non_preferred_output=[ASSISTANT, ASSISTANT]),
            {(3, "non_preferred_output", "invalid_preference_output")},
        ),
        (
            pair(preferred_output=[{"role": "user", "content": "4"}]),
            {(3, "preferred_output[0].role", "invalid_preference_output")},
        ),
        (pair(preferred_output=["4"]), {(3, "preferred_output[0]", "data_type")}),
        (
            pair(preferred_output=[{"role": "assistant", "content": ""}]),
            {(3, "preferred_output[0].content", "missing_content")},
        ),
        (
            pair(non_preferred_output=[{"role": "assistant"}]),
            {(3, "non_preferred_output[0].content", "message_missing_key")},
        ),
        (
            pair(non_preferred_output=[{"content": "5"}]),
            {(3, "non_preferred_output[0].role", "message_missing_key")},
        ),
        (
            pair(preferred_output=[{**ASSISTANT, "weight": 1}]),
            {(3, "preferred_output[0].weight", "message_unrecognized_key")},
        ),
        (
            pair(non_preferred_output=[{"role": "assistant", "content": "4"}]),
            {(3, "non_preferred_output[0].content", "identical_preference_outputs")},
        ),
    ],
)
def test_preference_checks(record: dict, expected: set) -> None:
    assert problems(record, "preference") == expected


def test_only_chat_examples_take_corrected() -> None:
    assert (3, "corrected", "unrecognized_key") in problems(pair(corrected=True), "preference")


# --- Alpaca and CSV ----------------------------------------------------------------------------


def test_a_valid_alpaca_record() -> None:
    example = validate_record(
        1, {"instruction": "Add", "input": "1, 2", "output": "3", "system": "Be exact"}, "alpaca"
    )
    assert isinstance(example, Example)
    assert example.messages == (
        {"role": "system", "content": "Be exact"},
        {"role": "user", "content": "Add\n\n1, 2"},
        {"role": "assistant", "content": "3"},
    )
    example = validate_record(1, {"instruction": "Add", "input": None, "output": "3"}, "alpaca")
    assert isinstance(example, Example) and example.messages[0] == {"role": "user", "content": "Add"}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"output": "3"}, {(3, "instruction", "missing_field")}),
        ({"instruction": "Add"}, {(3, "output", "missing_field")}),
        ({"instruction": "  ", "output": "3"}, {(3, "instruction", "missing_content")}),
        ({"instruction": "Add", "output": ""}, {(3, "output", "missing_content")}),
        ({"instruction": "Add", "output": 3}, {(3, "output", "data_type")}),
        ({"instruction": "Add", "input": ["1"], "output": "3"}, {(3, "input", "data_type")}),
        ({"instruction": "Add", "output": "3", "text": "..."}, {(3, "text", "unrecognized_key")}),
        ({"input": "x"}, {(3, "instruction", "missing_field"), (3, "output", "missing_field")}),
    ],
)
def test_alpaca_checks(record: dict, expected: set) -> None:
    assert problems(record, "alpaca") == expected


def test_csv_checks_name_the_column() -> None:
    data = b"Question,Answer\nq1,a1\n,a2\nq3, \n"
    results = list(iter_validated(chunked(data)))
    assert isinstance(results[0], Example)
    assert [[(e.line, e.field, e.code) for e in r] for r in results[1:]] == [
        [(3, "Question", "missing_content")],
        [(4, "Answer", "missing_content")],
    ]


def test_iter_validated_groups_problems_by_line_in_file_order() -> None:
    results = validated([chat(USER, ASSISTANT), "{oops", chat(USER, USER, x=1), "", chat(USER, ASSISTANT)])
    assert isinstance(results[0], Example) and results[0].line == 1
    assert [(e.line, e.code) for e in results[1]] == [(2, "invalid_json")]
    assert {(e.line, e.field, e.code) for e in results[2]} == {
        (3, "x", "unrecognized_key"),
        (3, "messages", "example_missing_assistant_message"),
    }
    assert isinstance(results[3], Example) and results[3].line == 5


@pytest.mark.parametrize("format", FORMATS)
def test_an_unusable_record_is_never_an_example(format: str) -> None:
    assert isinstance(validate_record(1, {}, format), list)


# --- strict mode -------------------------------------------------------------------------------


def test_summarize_errors_caps_the_list_and_counts_all() -> None:
    groups = [[LineError(i, "messages", "missing_messages_list", "m")] * 2 for i in range(1, 101)]
    kept, total = summarize_errors(iter(groups), cap=5)
    assert total == 200 and [e.line for e in kept] == [1, 1, 2, 2, 3]
    kept, total = summarize_errors([LineError(1, "f", "c", "m")])
    assert total == 1 and len(kept) == 1


# --- the token limit ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def exact_tokens(tokenizer, messages: list[dict]) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    return len(ids)


def test_token_counts_match_the_chat_template(tokenizer) -> None:
    examples = [
        Example(line=1, messages=(USER, ASSISTANT)),
        Example(
            line=2,
            messages=(
                {"role": "system", "content": "Sé breve. 東京"},
                USER,
                {"role": "assistant", "content": "4 " * 50},
            ),
        ),
        Example(
            line=3, messages=(USER,), preferred="four", rejected="It is four, because two and two make four."
        ),
    ]
    counter = TokenCounter(tokenizer, max_tokens=10_000, batch_size=2)
    expected = [
        exact_tokens(tokenizer, [USER, ASSISTANT]),
        exact_tokens(tokenizer, list(examples[1].messages)),
        exact_tokens(tokenizer, [USER, {"role": "assistant", "content": examples[2].rejected}]),
    ]
    assert counter.count_many(examples) == expected
    assert [counter.count(e) for e in examples] == expected
    assert counter.count_many([]) == []


def test_too_many_tokens(tokenizer) -> None:
    limit = exact_tokens(tokenizer, [USER, ASSISTANT])
    counter = TokenCounter(tokenizer, max_tokens=limit)
    assert counter.check(Example(line=1, messages=(USER, ASSISTANT))) is None
    long = {"role": "assistant", "content": "44"}
    error = counter.check(Example(line=7, messages=(USER, long)))
    assert (error.line, error.field, error.code) == (7, "messages", "too_many_tokens")
    assert f"{limit + 1} tokens" in error.message and str(limit) in error.message
    error = counter.check(Example(line=8, messages=(USER,), preferred="4", rejected="4 4 4"))
    assert (error.line, error.field, error.code) == (8, "non_preferred_output", "too_many_tokens")

    results = validated(
        [chat(USER, ASSISTANT), chat(USER, long), "[]", chat(USER, ASSISTANT)], counter=counter
    )
    assert isinstance(results[0], Example) and isinstance(results[3], Example)
    assert [(e.line, e.field, e.code) for e in results[1]] == [(2, "messages", "too_many_tokens")]
    assert [(e.line, e.code) for e in results[2]] == [(3, "data_type")]


def test_the_byte_shortcut_agrees_with_exact_counts(tokenizer) -> None:
    counter = TokenCounter(tokenizer, max_tokens=40, batch_size=8)
    assert counter._bytes_bound  # SmolLM2's tokenizer is byte-level BPE with no normaliser
    texts = ["a", "hello world " * 3, "東京" * 10, "x" * 39, "🙂" * 12, "word " * 30, "\n\n" * 8]
    examples = [
        Example(line=i, messages=(USER, {"role": "assistant", "content": t})) for i, t in enumerate(texts)
    ]
    exact = [n > 40 for n in counter.count_many(examples)]
    assert any(exact) and not all(exact)
    assert [e is not None for e in counter.check_many(examples)] == exact


def test_a_conversation_the_chat_template_refuses(tokenizer) -> None:
    template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    )
    counter = TokenCounter(tokenizer, max_tokens=1000, batch_size=4, chat_template=template)
    system = {"role": "system", "content": "Be brief"}
    examples = [
        Example(line=i, messages=(system, USER, ASSISTANT) if i == 2 else (USER, ASSISTANT))
        for i in range(1, 6)
    ]
    results = counter.check_many(examples)
    assert [r is None for r in results] == [True, False, True, True, True]
    assert (results[1].line, results[1].field, results[1].code) == (2, "messages", "chat_template_error")
    assert "System role not supported" in results[1].message
    with pytest.raises(InvalidArgument, match="line 2"):
        counter.count_many(examples)


# --- properties --------------------------------------------------------------------------------

KEYS = st.sampled_from(
    [
        "messages",
        "role",
        "content",
        "input",
        "preferred_output",
        "non_preferred_output",
        "instruction",
        "output",
        "label",
        "slice",
        "system",
        "name",
        "weight",
        "tool_calls",
        "prompt",
        "completion",
    ]
) | st.text(max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(ROLES)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=20,
)
LINES = st.one_of(
    JSON_VALUES.map(json.dumps),
    st.dictionaries(KEYS, JSON_VALUES, max_size=6).map(json.dumps),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.text(max_size=40).map(lambda s: s.replace("\n", "").replace("\r", "")),
)
KNOWN_CODES = {
    "data_type",
    "missing_messages_list",
    "message_missing_key",
    "message_unrecognized_key",
    "unrecognized_role",
    "missing_content",
    "example_missing_assistant_message",
    "last_message_not_assistant",
    "unrecognized_key",
    "invalid_weight",
    "invalid_preference_output",
    "identical_preference_outputs",
    "missing_field",
    "invalid_encoding",
    "invalid_json",
    "invalid_csv",
    "missing_columns",
    "record_too_large",
}


def _as_bytes(line: str | bytes) -> bytes:
    return line if isinstance(line, bytes) else line.encode()


@settings(database=None, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINES, max_size=12), st.sampled_from(["chat", "preference", "alpaca"]), st.integers(1, 50))
def test_malformed_json_lines_give_one_result_per_line(lines: list, format: str, size: int) -> None:
    raw = [b'{"label": "first"}'] + [_as_bytes(line) for line in lines]  # an object first: read as JSON lines
    data = b"\n".join(raw)
    results = list(iter_validated(chunked(data, size), format))
    expected_lines = [i + 1 for i, line in enumerate(raw) if line.strip()]
    assert len(results) == len(expected_lines)
    for result, line in zip(results, expected_lines, strict=True):
        if isinstance(result, Example):
            assert result.line == line
            continue
        assert result and all(isinstance(e, LineError) for e in result)
        for error in result:
            assert error.line == line and error.field and error.message and error.code in KNOWN_CODES


@settings(database=None, max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINES, max_size=10), st.sampled_from(FORMATS), st.booleans(), st.integers(1, 50))
def test_any_file_gives_results_with_a_line_and_a_field(
    lines: list, format: str, as_array: bool, size: int
) -> None:
    if as_array:
        data = json.dumps(
            [json.loads(x) if isinstance(x, str) and _is_json(x) else str(x) for x in lines], indent=1
        ).encode()
    else:
        data = b"\n".join(_as_bytes(line) for line in lines)
    last_line = data.count(b"\n") + 1
    for result in iter_validated(chunked(data, size), format):
        if isinstance(result, Example):
            assert 1 <= result.line <= last_line
            continue
        for error in result:
            assert 1 <= error.line <= last_line and error.field and error.code in KNOWN_CODES


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


TEXT = st.text(min_size=1, max_size=30).filter(lambda s: s.strip())
OPTIONAL_NAME = st.none() | TEXT


@st.composite
def messages(draw, min_size: int = 0) -> list[dict]:
    return [
        {"role": draw(st.sampled_from(ROLES)), "content": draw(TEXT)}
        for _ in range(draw(st.integers(min_size, 4)))
    ]


@st.composite
def chat_examples(draw) -> Example:
    answer = {"role": "assistant", "content": draw(TEXT)}
    if draw(st.booleans()):
        answer["weight"] = draw(st.sampled_from([0, 1]))
    return Example(
        line=0,
        messages=(*draw(messages()), answer),
        label=draw(OPTIONAL_NAME),
        slice=draw(OPTIONAL_NAME),
        corrected=draw(st.none() | st.booleans()),
    )


@st.composite
def preference_examples(draw) -> Example:
    preferred = draw(TEXT)
    rejected = draw(TEXT.filter(lambda t: t != preferred))
    return Example(
        line=0,
        messages=tuple(draw(messages(min_size=1))),
        preferred=preferred,
        rejected=rejected,
        label=draw(OPTIONAL_NAME),
        slice=draw(OPTIONAL_NAME),
    )


@settings(database=None, max_examples=80, deadline=None)
@given(
    st.lists(chat_examples(), min_size=1, max_size=6)
    | st.lists(preference_examples(), min_size=1, max_size=6),
    st.integers(1, 64),
)
def test_valid_examples_round_trip_through_jsonl(examples: list[Example], size: int) -> None:
    data = "".join(e.to_json() + "\n" for e in examples).encode()
    results = list(iter_validated(chunked(data, size)))
    expected = [Example(**{**e.__dict__, "line": i + 1}) for i, e in enumerate(examples)]
    assert results == expected
    assert [r.to_record() for r in results] == [e.to_record() for e in examples]
