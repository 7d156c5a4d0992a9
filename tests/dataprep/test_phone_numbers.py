"""ValidNumberFinder finds exactly what one PhoneNumberMatcher per region finds, on hard cases,
random digit-and-punctuation soup and the PII corpus; and it does skip the work it claims to skip."""

from __future__ import annotations

import json
import random
import re

import phonenumbers
import pytest
from phonenumbers import PhoneNumberMatcher, phonenumbermatcher

from services.dataprep import phone_numbers
from services.dataprep.phone_numbers import CUT, ValidNumberFinder, windows
from services.dataprep.pii_recognizers import ValidPhoneRecognizer
from tests.dataprep.test_pii import CORPUS

REGIONS = ValidPhoneRecognizer.REGIONS + ("JP", "CN", "RU", "IT", "AR", "MX", "NZ", "SG")

HARD_CASES = [
    "Call me at +1 425 882-8080 for details.",
    "Call +1 650 253 0000, or +44 20 7946 0958 / +44 20 7946 0959 after six.",
    "abc8005001234 and 8005001234def are glued to letters; 800 500 1234 is not.",
    "b+1 650 253 0000k",
    "650-253-0000 ext. 123, 650-253-0000 x123, 650-253-0000;ext=45, 650 253 0000 - 503#",
    "(650) 223 3345 (754) 223 3321",
    "12345 - 332-445-1234 is my number. 3324451234 8002341234",
    "651-234-2345/332-445-1234 and 3/10/2011 or 31/10/96",
    "Computing Complete Answers. Chen Li. VLDB J. 12(3): 211-227 (2003).",
    "The backup ran 2012-01-02 08:00 and 2012-01-02 08 then 2012-01-02 08:0",
    "Dial 011 44 20 7946 0958 from the US or 0044 20 7946 0958 from Europe, 0049 30 123456.",
    "Full width ６５０ ２５３ ００００ and Arabic-Indic ٠٧٩٤٦٠٩٥٨ digits.",
    "1-800-FLOWERS, 1-800-SIX-FLAG, 1 800 ext ext ext 5",
    "Card 4111 1111 1111 1111, phone 07700 900123, NHS 943 476 5919, SSN 123-45-6789.",
    "a e i o u 650 253 0000 a e i o 020 7946 0958 aaaa",
    "+49 30 901820, +33 1 42 68 53 00, +972 3 123 4567, +91 98765 43210, +55 11 91234 5678",
    "Ring 02 9374 4000 or 0412 345 678 (AU), 01 234 5678 (IE), 030 901820 (DE).",
    "5 people, 12 days, order #48213, 2024, 1999 and 20.5%, $650 253 0000, €300 400 5000",
    "+0 650 253 0000 and +999 650 253 0000 have no country code.",
    "650\u00a0253\u00a00000 ~ 650\u2013253\u20130000 (wide dashes) [650] 253-0000",
    "tel:+1-650-253-0000;ext=7, +1 (650) 253-0000 int 12, 650.253.0000 anexo 9",
    "0",
    "",
    "+",
    "no digits here at all",
    "7946 0958 ",
    " +44 20 7946 0958",
]


def _plain(text: str, region: str) -> list:
    return list(PhoneNumberMatcher(text, region, leniency=1))


@pytest.fixture(scope="module")
def finder() -> ValidNumberFinder:
    return ValidNumberFinder(REGIONS, leniency=1)


def parses(monkeypatch) -> list[tuple[str, str | None]]:
    """From now on, every (candidate, region) the matchers parse, in order."""
    parsed = []
    parse = phonenumbermatcher.parse

    def counted(number, region, **kwargs):
        parsed.append((number, region))
        return parse(number, region, **kwargs)

    monkeypatch.setattr(phonenumbermatcher, "parse", counted)
    return parsed


def test_cut_letters_are_not_in_the_matchers_pattern():
    """The windows rest on this: no candidate holds a cut letter, in either case."""
    pattern = phonenumbermatcher._PATTERN
    assert pattern.flags & re.IGNORECASE
    letters = re.sub(r"\\.", "", pattern.pattern)  # escapes (\d, \t, \[) are not literal letters
    for letter in CUT + CUT.upper():
        assert letter not in letters.lower() and letter not in letters.upper(), letter
    for letter in CUT + CUT.upper():  # and the matcher's pattern agrees: no match contains one
        for text in (f"650{letter}253 0000", f"+1 650 253 0000 e{letter}t 12", f"12{letter}"):
            assert all(letter not in m.group() for m in pattern.finditer(text)), (letter, text)


def test_windows_cover_every_digit_and_end_at_cut_letters():
    text = "Call +1 425 882-8080 (ext 12) or write to box 77, a e i o 5."
    found = windows(text)
    covered = {offset + i for offset, window, _ in found for i in range(len(window))}
    assert all(i in covered for i, ch in enumerate(text) if ch.isdigit())
    for offset, window, _ in found:
        assert text[offset : offset + len(window)] == window
        assert offset == 0 or window[0] in CUT + CUT.upper()
    assert [w for _, w, _ in found] == ["l +1 425 882-8080 (ext 12) or", "box 77, a e i o 5."]


@pytest.mark.parametrize("text", HARD_CASES)
def test_same_matches_as_one_matcher_per_region_on_hard_cases(finder, text):
    for region in REGIONS:
        assert finder.matches(text, region) == _plain(text, region), region


def test_same_matches_on_random_digit_and_punctuation_soup(finder):
    rng = random.Random(3)
    pieces = ["+", "(", ")", "-", " ", ".", "/", "x", "ext. ", ";ext=", "#", ":", ",", "a", "e", "o", "b", "r",
              "\t", "00", "011", "0", "1", "+44 ", "555", "650", "7946", "2012-01-02 08", ":00", "２", "—",
              "%", "$", "int", "ſ"]  # fmt: skip
    matched = 0
    for _ in range(600):
        text = "".join(
            rng.choice(pieces) if rng.random() < 0.6 else str(rng.randrange(10 ** rng.randrange(1, 12)))
            for _ in range(rng.randrange(1, 25))
        )
        for region in REGIONS:
            plain = _plain(text, region)
            assert finder.matches(text, region) == plain, (region, text)
            matched += bool(plain)
    assert matched > 200  # the soup does hold numbers


def test_same_matches_on_the_pii_corpus(finder):
    texts = [
        json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    for text in texts:
        for region in REGIONS:
            assert finder.matches(text, region) == _plain(text, region), (region, text)


def test_a_long_window_runs_the_whole_text_matcher(finder, monkeypatch):
    """Past 65,535 / 13 characters of windows the matcher's try limit could be reached: no windows."""
    text = "+1 650 253 000 " * 400 + "+1 650 253 0000"
    cut = []
    monkeypatch.setattr(phone_numbers, "_window_matches", lambda *args: cut.append(args) or ())
    assert finder.matches(text, "US") == _plain(text, "US") != []
    assert cut == []


def test_windows_and_regions_with_too_few_digits_are_not_parsed(finder, monkeypatch):
    """A card number lets every region's matcher run on the text; the small numbers beside it, and
    the four-digit groups inside it, are not parsed where they cannot be valid."""
    text = "I paid with 4111 1111 1111 1111 on the 5th, 12 days ago, for 3 seats in row 18."
    parsed = parses(monkeypatch)
    monkeypatch.setattr(phone_numbers, "could_be_valid", lambda candidate, region: True)  # digits alone
    plain = [_plain(text, region) for region in ValidPhoneRecognizer.REGIONS]
    plain_parses, parsed[:] = len(parsed), []
    phone_numbers._window_matches.cache_clear()
    assert [finder.matches(text, region) for region in ValidPhoneRecognizer.REGIONS] == plain
    assert not {number for number, _ in parsed} & {"5", "12", "3", "18"}
    # Four-digit groups of the card only where numbers can be that short (DE: 4 digits).
    assert {region for number, region in parsed if len(number) == 4} == {"DE"}
    assert len(parsed) < plain_parses / 2, (len(parsed), plain_parses)


def test_national_numbers_no_number_type_fits_are_not_parsed(finder, monkeypatch):
    """The card number and the order number are read as national numbers in each region: no number
    type of the region's country has them (Brazil and Argentina, whose national prefixes rewrite
    digits, included), so no region parses them; the US number is parsed where some number type
    has its shape."""
    text = "Card 4111 1111 1111 1111, order 48213, call 650 253 0000."
    parsed = parses(monkeypatch)
    plain = [_plain(text, region) for region in REGIONS]
    assert any(plain)
    parsed.clear()
    phone_numbers._window_matches.cache_clear()
    assert [finder.matches(text, region) for region in REGIONS] == plain
    assert not [region for number, region in parsed if number in ("4111 1111 1111 1111", "48213")]
    us_parsed = {region for number, region in parsed if number == "650 253 0000"}
    assert "US" in us_parsed and "FR" not in us_parsed and len(us_parsed) < len(REGIONS)


def test_a_window_no_region_can_read_runs_no_matcher(finder, monkeypatch):
    """Matchers run only in the regions that would parse one of a window's candidates: the card's
    window runs none; the US number's runs in the regions where it fits some number type."""
    built = []

    class Counted(phone_numbers._ScreenedMatcher):
        def __init__(self, text, region, leniency, min_digits):
            built.append((text, region))
            super().__init__(text, region, leniency, min_digits)

    monkeypatch.setattr(phone_numbers, "_ScreenedMatcher", Counted)
    phone_numbers._window_matches.cache_clear()
    text = "Card 4111 1111 1111 1111; call 650 253 0000."
    assert [finder.matches(text, region) for region in REGIONS] == [_plain(text, region) for region in REGIONS]
    # The whole card, then its groups (the matcher's inner matches), as the matcher would parse them.
    assert phone_numbers.window_candidates("d 4111 1111 1111 1111; c") == ("4111 1111 1111 1111", "4111", *["1111"] * 3)
    assert not [region for window, region in built if "4111" in window]
    regions = {region for window, region in built if "650" in window}
    assert regions == {region for region in REGIONS if phone_numbers.could_be_valid("650 253 0000", region)}
    assert "US" in regions and "FR" not in regions


def _variants(number: phonenumbers.PhoneNumber, rng: random.Random) -> list[str]:
    """The ways a number is written without a "+": national, international, E.164 digits, its national
    number with the country code before it, and its digits regrouped with random separators."""
    forms = [
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL),
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL).lstrip("+"),
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+"),
    ]
    digits = re.sub(r"\D", "", forms[0])
    separated = (ch + (rng.choice(phone_numbers.NATIONAL_SEPARATORS) if rng.random() < 0.3 else "") for ch in digits)
    forms.append("".join(separated))
    return forms


def test_could_be_valid_never_refuses_a_valid_number():
    """Every region's example number of every type, written every way without a "+", in its own
    region and in the others of REGIONS: whenever parse gives a valid number, could_be_valid says
    it may. And it refuses most random digit strings."""
    rng = random.Random(11)
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    checked = refused = 0
    for region in regions:
        for kind in phonenumbers.PhoneNumberType.values():
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            for candidate in _variants(example, rng):
                for reader in (region, rng.choice(REGIONS), rng.choice(regions)):
                    number = _parsed(candidate, reader)
                    valid = not isinstance(number, int) and phonenumbers.is_valid_number(number)
                    if valid:
                        checked += 1
                        assert phone_numbers.could_be_valid(candidate, reader), (candidate, reader, kind)
    assert checked > 1500
    for _ in range(3000):
        candidate = str(rng.randrange(10 ** rng.randrange(4, 17)))
        region = rng.choice(REGIONS)
        number = _parsed(candidate, region)
        if not isinstance(number, int) and phonenumbers.is_valid_number(number):
            assert phone_numbers.could_be_valid(candidate, region), (candidate, region)
        refused += not phone_numbers.could_be_valid(candidate, region)
    assert refused > 1500


def test_could_be_valid_reads_only_plain_national_candidates():
    """A "+", letters, an extension or another script go to the full parse."""
    for candidate in ["+1 650 253 0000", "1-800-FLOWERS", "650 253 0000 x12", "650 253 0000#", "٠٧٩٤٦٠٩٥٨"]:
        assert phone_numbers.could_be_valid(candidate, "FR")
    assert not phone_numbers.could_be_valid("4111 1111 1111 1111", "FR")
    assert phone_numbers.could_be_valid("011 44 20 7946 0958", "US")  # an international prefix: any country
    assert phone_numbers.could_be_valid("4111 1111 1111 1111", "XX")  # a region phonenumbers does not know


def test_leniency_below_valid_is_refused():
    with pytest.raises(ValueError, match="leniency"):
        ValidNumberFinder(["US"], leniency=phonenumbers.Leniency.POSSIBLE)


def _parsed(candidate: str, region: str | None):
    try:
        return phonenumbers.parse(candidate, region, keep_raw_input=True)
    except phonenumbers.NumberParseException as error:
        return error.error_type


def _candidates(texts: list[str]) -> set[str]:
    """What the matcher would parse in `texts`: its pattern's candidates and their "+" / digit tails."""
    found = set()
    for text in texts:
        for match in phonenumbermatcher._PATTERN.finditer(text):
            candidate = match.group()
            found |= {candidate, candidate.strip(), *(candidate[i:] for i, ch in enumerate(candidate) if ch == "+")}
    return found


def test_region_free_candidates_parse_the_same_in_every_region():
    """The verdict memo rests on this: where parse(candidate, None) does not fail for want of a
    region, parse(candidate, region) gives that number (or that error) in every region."""
    rng = random.Random(5)
    soup = [
        "".join(rng.choice(["+", "+1", "+44", "+49 ", "+0", "+999", "(", ")", " ", "-", "0", "00", "1", "x", "ext ", "５"])
                + str(rng.randrange(10 ** rng.randrange(1, 13))) for _ in range(rng.randrange(1, 5)))
        for _ in range(400)
    ]  # fmt: skip
    candidates = _candidates(HARD_CASES + soup)
    free = [c for c in candidates if phone_numbers.region_free(c)]
    assert len(free) > 100 and len(free) < len(candidates)
    assert not phone_numbers.region_free("650 253 0000") and not phone_numbers.region_free("+999 650 253 0000")
    for candidate in free:
        expected = _parsed(candidate, None)
        for region in REGIONS:
            assert _parsed(candidate, region) == expected, (candidate, region)


def test_a_number_with_a_country_code_is_parsed_once_for_every_region(finder, monkeypatch):
    text = "Please call me back on +1 650 253 0000 or +44 20 7946 0958, not +999 650 253 0000."
    calls = parses(monkeypatch)
    plain = [_plain(text, region) for region in REGIONS]
    calls.clear()
    phone_numbers._window_matches.cache_clear()
    phone_numbers._REGION_FREE_VERDICTS.clear()
    assert [finder.matches(text, region) for region in REGIONS] == plain
    parsed = [number for number, _ in calls]
    assert parsed.count("+1 650 253 0000") == 1 and parsed.count("+44 20 7946 0958") == 1
    assert parsed.count("+999 650 253 0000") == len(REGIONS)  # an unknown country code: per region
