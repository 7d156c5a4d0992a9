"""Text normalisation: Unicode form, newlines, spaces, invisible characters; examples keep their shape."""

import re
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from services.dataprep.examples import Example
from services.dataprep.normalize import _apply_rules, _ascii_needs_work, normalize_example, normalize_text


def test_nfc_composes_but_keeps_compatibility_characters():
    assert normalize_text("Cafe\u0301") == "Caf\u00e9"
    # NFKC would turn these into x2, fi, A, 1⁄2: they are kept as written.
    assert normalize_text("x\u00b2 \ufb01 \uff21 \u00bd") == "x\u00b2 \ufb01 \uff21 \u00bd"


def test_newlines_become_one_newline_each():
    assert normalize_text("a\r\nb\rc\u2028d\u2029e\x85f") == "a\nb\nc\nd\ne\nf"
    assert normalize_text("a\r\n\r\nb") == "a\n\nb"


def test_odd_spaces_become_one_space_and_runs_collapse():
    assert normalize_text("a\u00a0b\u202fc\u2009d\u3000e") == "a b c d e"
    assert normalize_text("one   two \t three\u00a0 four") == "one two three four"


def test_trailing_spaces_and_outer_blank_lines_go_inner_blank_lines_stay():
    assert normalize_text("\n \n first  \n\n second\t \n\n\n") == "first\n\nsecond"
    # Indentation not shared by every line is kept (it may be code).
    assert normalize_text("  first\nsecond") == "  first\nsecond"


def test_indentation_and_code_survive():
    code = "Here:\n```python\ndef f(x):\n    return  x  +  1   \n```\nDone  now."
    assert normalize_text(code) == "Here:\n```python\ndef f(x):\n    return  x  +  1\n```\nDone now."
    # Only the indentation common to every line is removed.
    assert normalize_text("    if x:\n        y()") == "if x:\n    y()"
    assert normalize_text("  Paris ") == "Paris"
    # A run of tabs alone is a column separator (TSV, Makefile); a mixed run is not.
    assert normalize_text("a\t\tb\tc") == "a\t\tb\tc"
    assert normalize_text("a \t b") == "a b"


def test_invisible_and_control_characters_removed_meaningful_joiners_kept():
    assert normalize_text("\ufeffze\u200bro\u2060wid\u00adth") == "zerowidth"
    assert normalize_text("bell\x07 nul\x00 esc\x1b del\x7f c1\x9b") == "bell nul esc del c1"
    assert normalize_text("tab\tnew\nline") == "tab\tnew\nline"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji held together by ZWJ
    assert normalize_text(family) == family
    assert (
        normalize_text("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645")
        == "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    )
    assert normalize_text("broken\ud800 decode") == "broken decode"


def test_empty_and_blank():
    assert normalize_text("") == ""
    assert normalize_text(" \n\t\u00a0\u200b\n") == ""


@given(st.text(alphabet=" \t\n\r\u00a0\u2028\u200b\u200d\ufeff\x00\x07e\u0301abc`~-é", max_size=60))
def test_normalize_text_is_idempotent_and_clean(s):
    once = normalize_text(s)
    assert normalize_text(once) == once
    assert unicodedata.is_normalized("NFC", once)
    assert "\r" not in once and "\u00a0" not in once and "\u200b" not in once and "\x00" not in once
    assert all(not line.endswith((" ", "\t")) for line in once.split("\n"))
    assert once == "" or (once.split("\n")[0] != "" and once.split("\n")[-1] != "")


def test_normalize_example_chat():
    ex = Example(
        line=3,
        messages=(
            {"role": "system", "content": "  Be  brief. "},
            {"role": "user", "content": "Capital\u00a0of France?\r\n"},
            {"role": "assistant", "content": "\u200bParis  "},
        ),
        label="  geo ",
        slice=" \t ",
    )
    out = normalize_example(ex)
    assert [m["content"] for m in out.messages] == ["Be brief.", "Capital of France?", "Paris"]
    assert [m["role"] for m in out.messages] == ["system", "user", "assistant"]
    assert (out.line, out.label, out.slice, out.kind) == (3, "geo", None, "chat")
    assert ex.messages[2]["content"] == "\u200bParis  "  # the input is not changed


def test_normalize_example_preference():
    ex = Example(
        line=1,
        messages=({"role": "user", "content": "Say  hi"},),
        preferred=" Hi there!\r\n",
        rejected="go   away ",
    )
    out = normalize_example(ex)
    assert (out.messages[0]["content"], out.preferred, out.rejected) == ("Say hi", "Hi there!", "go away")
    assert out.kind == "preference"
    missing = normalize_example(Example(line=2, messages=ex.messages, preferred="yes"))
    assert missing.rejected is None


# The first form of the ASCII shortcut's test: one regex of every case a rule changes.
_ASCII_WORK_REGEX = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]|  | \n| \Z|\A[ \n]|\n\Z|\n ")


@given(
    st.text(
        alphabet=st.sampled_from([" ", "\t", "\n", "\r", "\x00", "\x07", "\x0b", "\x1f", "\x7f", "a", "~"])
    )
)
def test_ascii_shortcut_is_the_regex_and_the_rules_change_nothing_it_passes(s):
    assert _ascii_needs_work(s) == (_ASCII_WORK_REGEX.search(s) is not None)
    if not _ascii_needs_work(s):
        assert _apply_rules(s) == s


def test_ascii_shortcut_on_every_ascii_character():
    for code in range(128):
        for s in (
            chr(code),
            f"a{chr(code)}b",
            f"{chr(code)}ab",
            f"ab{chr(code)}",
            f"a\n{chr(code)}b",
            f"a{chr(code)}\nb",
        ):
            assert _ascii_needs_work(s) == (_ASCII_WORK_REGEX.search(s) is not None), repr(s)
            if not _ascii_needs_work(s):
                assert _apply_rules(s) == s, repr(s)
