"""The recognisers' screens: the fast forms pass exactly the texts the plain forms pass, and no
screen refuses a text its recogniser finds something in."""

from __future__ import annotations

import json
import random
import re
import string

import pytest

from services.dataprep import pii_recognizers as rec
from services.dataprep.pii import _recognizers
from tests.dataprep.test_phone_numbers import HARD_CASES as PHONE_CASES
from tests.dataprep.test_pii import CORPUS

# Letters whose case mapping is unusual (dotted capital I lower-cases to two characters, the Kelvin
# sign to "k", final sigma depends on context), separators, digits, cue words and names.
PIECES = ["Dear", "dear", "my", "to", "Mr", "mR", "Anna", "Smith", "name is", "regards", "Patient", "Pt.",
          " ", "  ", ".", ",", ":", "-", "\n", "\t", "x", "İ", "\u212a", "KIN", "ΣΑΣ", "é", "É", "ß", "1", "_",
          "Anne-Marie", "Jean-", "-Luc", "'", "’", "O'Neil", "ümit", "Ümit", "appointment", "Appointmentx"]  # fmt: skip


def _plain_cue_screen(text: str) -> bool:
    """The screen as first written: every separator run before a capital, the word before it."""
    for separators in re.finditer(r"[.\s,:\-]+(?=[^\W\d_a-z])", text):
        end = separators.start()
        word = re.compile(r"[^\W\d_]+\Z").search(text, max(0, end - rec._LONGEST_CUE_WORD - 1), end)
        if word is not None and word.group().lower() in rec._CUE_WORDS:
            return True
    return False


def _plain_known_name(text: str, names, ambiguous) -> bool:
    """The name screen as first written: word by word."""
    words = rec._CAPITALISED_WORD.findall(text) if rec._capitalised_names() else rec.WORD.findall(text)
    for word in words:
        if word in names or word in ambiguous or ("-" in word and word.split("-")[0] in names):
            return True
    return False


def _texts() -> list[str]:
    rng = random.Random(11)
    soup = ["".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 30))) for _ in range(20_000)]
    corpus = [json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return corpus + soup


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _texts()


def _ascii_texts() -> list[str]:
    """Soup of the ASCII pieces and every ASCII letter: the screens read ASCII text with patterns of
    their own."""
    rng = random.Random(13)
    pieces = [piece for piece in PIECES if piece.isascii()] + list(string.ascii_letters)
    return ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 30))) for _ in range(10_000)]


def test_the_cue_screen_passes_what_the_plain_screen_passes(texts):
    assert [rec._may_have_cue_before_capital(t) for t in texts] == [_plain_cue_screen(t) for t in texts]
    assert 1000 < sum(map(rec._may_have_cue_before_capital, texts)) < len(texts) - 1000
    ascii_texts = _ascii_texts()
    passed = [rec._may_have_cue_before_capital(t) for t in ascii_texts]
    assert passed == [_plain_cue_screen(t) for t in ascii_texts]
    assert 200 < sum(passed) < len(passed) - 1000


def test_the_cue_screen_passes_every_cue_before_a_capital(texts):
    for text in texts:
        if any(text[cue.end()].isupper() for cue in rec.CUE.finditer(text)):
            assert rec._may_have_cue_before_capital(text), text


def test_the_name_screen_passes_what_the_plain_screen_passes(texts):
    """(NameListRecognizer.analyze looks for a word that is a name, or starts with one before a
    hyphen: test_pii's corpus tests check that its screen lets those through.)"""
    names, ambiguous = rec.load_names()
    names_in_soup = [*PIECES, *sorted(names)[:50], *sorted(ambiguous)[:20]]
    rng = random.Random(12)
    more = ["".join(rng.choice(names_in_soup) for _ in range(rng.randrange(1, 12))) for _ in range(5000)]
    ascii_names = [piece for piece in names_in_soup if piece.isascii()]
    more += ["".join(rng.choice(ascii_names) for _ in range(rng.randrange(1, 12))) for _ in range(5000)]
    for text in texts + more + _ascii_texts():
        assert rec.has_known_name(text, names, ambiguous) == _plain_known_name(text, names, ambiguous), text


# Support-ticket sentences with the digits that pass the phone screen without a number in them.
TICKETS = [
    "The order number is #48213 if that helps you find it.",
    "I have been a customer for 12 years and never had this problem; it started in 2019.",
    "Please call me back on +1 650 253 0000. My name is Anna Smith.",
    "Thanks, Wei Chen (phone 555-123-4567). I paid with the card 4111 1111 1111 1111.",
    "The payment went out on March 5, 2024; the refund takes 7 business days.",
    "Ref 1234, room 56789, code 123456, PIN 0000, extension x1234, 2024-03-05 08:00",
]


# What the date and ID screens look for, and the near misses they let through or refuse.
DATES_AND_IDS = [
    "Due 5 March, then March 2024, Mar. 5th, 2024, the 3rd of April and 12-MAR-2024 or 12-Mar-24.",
    "Dates 2024-03-05, 2024/3/5 08:00, 5/3/24, 05-03-2024, 5.3.2024, 05.03.24 and Tue, Dec 3",
    "Maria at the Market decided in Maybe; May 2, 2023 and 4 June.",
    "Call 555-123-4567 or 1-800-555-0199, version 4.2.17, ratio 3/4",
    "my account no. 12345678, acct # 1234-5678, bank account number: 9876 5432 10, account 1234",
    "Passport no. A2345678, driver's licence D1234567, driving license: 12-3456-78, DL 99887766",
    "Handle it on my account (order 12345); the ACCOUNT NUMBER 123456789 and Acct No 55667788",
]


def _findings(recognizer, texts: list[str]) -> list[list[tuple]]:
    rec._cues_before_capitals.cache_clear()
    entities = recognizer.supported_entities
    return [[(r.entity_type, r.start, r.end, r.score) for r in recognizer.analyze(t, entities)] for t in texts]


@pytest.mark.parametrize("recognizer", _recognizers(use_ner=False), ids=lambda r: r.name)
def test_screens_refuse_no_text_with_a_finding(texts, recognizer, monkeypatch):
    """Each recogniser with its screen, and with screens that pass everything: the same findings."""
    recognizer.load()
    sample = TICKETS + PHONE_CASES + DATES_AND_IDS + texts[:3000]
    screened = _findings(recognizer, sample)
    monkeypatch.setattr(recognizer, "screen", lambda text: True)
    monkeypatch.setattr(rec, "_may_have_cue_before_capital", lambda text: True)  # CuePerson's inner screen
    assert screened == _findings(recognizer, sample)


def test_the_screens_do_refuse_texts(texts):
    """(So that the test above compares something: most texts pass no screen.)"""
    recognizers = _recognizers(use_ner=False)
    for recognizer in recognizers:
        recognizer.load()
    passed = [any(r.screen(text) for r in recognizers) for text in TICKETS + texts]
    assert passed[: len(TICKETS)] == [False, False, True, True, True, True]
    assert 0.2 < sum(passed) / len(passed) < 0.8
