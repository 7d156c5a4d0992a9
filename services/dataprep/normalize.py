"""Text normalisation: the same visible text becomes the same string before PII, dedup and training.

Unicode form is NFC, not NFKC. NFC only merges canonically equivalent sequences (a precomposed
"é" and "e" + combining acute look identical and mean the same), so it never changes what a reader
sees. NFKC also folds *compatibility* characters, which changes content the model should learn as
written: "x²" becomes "x2", "½" becomes "1⁄2", "ﬁ" becomes "fi", full-width CJK punctuation and
letters become ASCII, "㎏" becomes "kg". Matching code that wants those folded (the dedup keys in
`dedup.py`) applies NFKC itself, on a copy.

Whitespace rules keep code and tables intact: indentation at the start of a line is kept (only
the indentation common to every line is removed, as `textwrap.dedent` does, so " Paris" becomes
"Paris" but a code block keeps its relative indentation); inside ``` / ~~~ fences interior
spacing is kept too; a run of tabs alone is kept (TSV columns, Makefiles), while any other run of
two or more blanks becomes one space.

Zero-width characters that carry meaning are kept: ZERO WIDTH JOINER / NON-JOINER (emoji
sequences, Persian and Indic scripts), bidirectional marks (mixed Arabic/Hebrew text) and tag
characters (flag emoji). Removed are the C0/C1 control characters except "\\n" and "\\t", zero-width
space, word joiner, byte-order mark, soft hyphen, Mongolian vowel separator, the invisible math
operators and lone surrogates (left by broken decoding; they cannot be written as UTF-8).
"""

from __future__ import annotations

import re
import textwrap
import unicodedata
from dataclasses import replace

from services.dataprep.examples import Example

# \r\n first (one newline, not two), then every other line or paragraph separator.
_NEWLINES = re.compile("\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_REMOVE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f"  # C0 / C1 controls except \t \n (and those mapped above)
    "\u00ad\u180e\u200b\u2060-\u2064\ufeff"  # soft hyphen, zero-width / invisible characters, BOM
    "\ud800-\udfff]"  # lone surrogates
)
# Every Unicode space separator (category Zs) other than the ASCII space.
_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INDENT = re.compile(r"[ \t]*")
# A run of blanks with at least one space in it (a run of tabs alone is left as it is).
_BLANK_RUN = re.compile(r"[ \t]*[ ][ \t]*")
_FENCE = re.compile(r"[ \t]*(```|~~~)")
_ASCII_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # every ASCII control character but "\n"


def _ascii_needs_work(s: str) -> bool:
    """For ASCII text, whether any rule of `normalize_text` could change it: a control character
    other than "\n", two blanks in a row, a blank at the end of a line or of the text, a newline at
    either end, or an indented line (the indentation might be common to every line). Most texts
    have none of these. Substring tests, not one regex of alternatives, which tries each of them at
    every position (3x slower); in ASCII text `isprintable` is False exactly when there is a control
    character ("\n" included), so the search for one runs only then."""
    return (
        "  " in s
        or " \n" in s
        or "\n " in s
        or s.startswith((" ", "\n"))
        or s.endswith((" ", "\n"))
        or (not s.isprintable() and _ASCII_CONTROL.search(s) is not None)
    )


def normalize_text(s: str) -> str:
    """The text with newlines, spaces, invisible characters and Unicode form normalised."""
    if s.isascii() and not _ascii_needs_work(s):
        return s  # already normal: the rules below would return it unchanged
    return _apply_rules(s)


def _apply_rules(s: str) -> str:
    s = _NEWLINES.sub("\n", s)
    s = _REMOVE.sub("", s)
    s = _SPACES.sub(" ", s)
    lines = s.split("\n")
    in_fence = False
    for i, line in enumerate(lines):
        line = line.rstrip(" \t")
        fence = _FENCE.match(line)
        if not in_fence and ("  " in line or "\t" in line):
            indent = _INDENT.match(line).end()
            line = line[:indent] + _BLANK_RUN.sub(" ", line[indent:])
        if fence:
            in_fence = not in_fence
        lines[i] = line
    start, end = 0, len(lines)
    while start < end and not lines[start]:
        start += 1
    while end > start and not lines[end - 1]:
        end -= 1
    s = textwrap.dedent("\n".join(lines[start:end]))
    # NFC last: removing an invisible character can bring a base letter next to its combining mark.
    return unicodedata.normalize("NFC", s)


def _normalize_name(value: str | None) -> str | None:
    if value is None:
        return None
    value = normalize_text(value).strip()
    return value or None


def normalize_example(ex: Example) -> Example:
    """A copy with every text normalised and label / slice stripped (an empty one becomes None); the
    example itself when that changes nothing."""
    texts = ex.texts()
    normalized = [normalize_text(t) for t in texts]
    label, slice_ = _normalize_name(ex.label), _normalize_name(ex.slice)
    if normalized == texts and label == ex.label and slice_ == ex.slice:
        return ex  # already normal (the usual case): the copy would be equal to it
    out = ex.with_texts(normalized)
    # with_texts turns a missing rejected answer into ""; keep it missing for validation to report.
    rejected = out.rejected if ex.rejected is not None else None
    return replace(out, rejected=rejected, label=label, slice=slice_)
