"""Valid phone numbers in a text: exactly what python-phonenumbers' matcher finds, found faster.

`ValidNumberFinder(regions, leniency).matches(text, region)` is `list(PhoneNumberMatcher(text,
region, leniency=leniency))`, the same matches in the same order (tests/dataprep/test_phone_numbers.py
compares them on hard cases, the PII corpus and generated support tickets). PhoneNumberMatcher
scans the whole text for candidates and parses each one, and the groups inside a candidate that is
not a valid number, for its region; with ten regions a text with one card number costs milliseconds,
most of it on digits that cannot be a number in that region. Here the same matcher runs on small
windows of the text instead, and only where a window's digits are enough for the region:

* **Windows.** No candidate of the matcher's pattern (`phonenumbermatcher._PATTERN`: leading
  brackets or "+", digit blocks joined by punctuation, an optional extension such as "ext. 12" or
  ";ext=12") holds any of the letters in `CUT` (ASCII consonants other than x, t, n and s, which
  extension labels use). So a text is cut into maximal runs without those letters; a run without a
  digit holds no candidate, and each run with one is matched on its own, as a window of the run
  plus the cut letter on each side. Everything the matcher reads outside a candidate lies in that
  window: the character before it and after it (numbers glued to Latin letters are refused), the
  three after it (a time stamp's ":mm") and where its next search starts. Cut letters are Latin
  letters, not digits or ":", so a window answers every one of those checks as the whole text does,
  and the searches of the whole text, which never cross a cut letter, are the windows' searches in
  turn.
* **Too few digits.** A window whose longest run of digits and punctuation (`phone_digits`) has
  fewer digits than the region's shortest number (national, or written with a country code) has no
  match for that region; the whole-text matcher would parse its candidates anyway, because some
  other window has a long number.
* **Memo.** Matches per window and region are remembered (`WINDOW_MEMO` recent windows): a
  window's matches depend on its text alone.
* **Numbers with a country code, parsed once.** The region only tells `parse` how to read a
  number written without one: when `parse(candidate, None)` does not fail for want of a region
  (INVALID_COUNTRY_CODE: no "+", or a "+" with an unknown country code, which `parse` then retries
  as a national number), every region's parse gives the same number, or fails the same way, and
  the matcher's checks around it (the characters before and after the candidate, `is_valid_number`
  and the national-prefix test of Leniency.VALID) read the number, the candidate and the text, not
  the region. So such a candidate's verdict is remembered across regions (`_region_free_verdict`),
  keyed by the candidate and the characters around it.
* **National numbers no region of the country has.** A candidate of ASCII digits and the separators
  `NATIONAL_SEPARATORS`, without a "+" and not starting with the region's international prefix, is
  read as a number of the region's own country: parse strips, at most, the country code and the
  national prefix from its digits (`national_forms`), and the number is valid only if what is left
  fully matches a number type (fixed line, mobile, toll free...) of a region sharing that country
  code (`_number_type_helper`). When none of those forms matches any of those patterns
  (`_type_pattern`, all of them in one expression per length) the candidate is refused without
  parsing it. The 16 digits of a card number, an order number or a US number read in France end
  here. Where the national prefix rewrites digits (`national_prefix_transform_rule`, as in
  Argentina and Brazil) the forms are rewritten as parse rewrites them.
* **Windows no region can read.** Until it parses, a matcher reads only the text, so the candidates
  (and groups inside them) it would parse in a window where nothing matches are the same in every
  region (`window_candidates`, found once). A region that refuses each of them without parsing
  (too few digits, no number type fits) finds nothing there, and runs no matcher on the window.

The matcher gives up after 65,535 failed parses in one text; a window's matcher counts its own. A
text could only come near that if its windows were long: each failed candidate costs at most
1 + 6 x (its length + 1) tries (the first parse, then the groups inside it for six separators) and
candidates do not overlap, so a text whose windows add up to fewer than 65,535 / 13 characters
never gives up, either way. Longer ones (rare: a digit-and-vowel stretch of 5,000 characters) run
the whole-text matcher, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache

import phonenumbers
from phonenumbers import Leniency, PhoneMetadata, PhoneNumberMatch, PhoneNumberMatcher, phonenumberutil

# Letters no candidate of PhoneNumberMatcher's pattern can hold (the pattern is case-insensitive;
# its letters are those of "x", "ext", "extension", "anexo", "int" and the full-width / Cyrillic
# labels). test_phone_numbers checks this against the pattern itself.
CUT = "bcdfghjklmpqruvwyz"
_CUT_CLASS = CUT + CUT.upper()
_CUT_LETTER = re.compile(f"[{_CUT_CLASS}]")
_DIGIT = re.compile(r"\d")  # as the matcher's pattern reads "\d"
MATCHER_MAX_TRIES = 65535  # PhoneNumberMatcher's default
_TRIES_PER_CHARACTER = 13  # 1 + 6 x (length + 1) tries per failed candidate: at most 13 per character
WINDOW_MEMO = 4096

# The matcher's candidates without the pattern's limits on block counts: a run of this covers every
# candidate's number part, so holds every digit of a number found in it (country code, national
# prefix and national number: letters never become digits in a valid match, see PhoneNumberMatcher's
# check of "x" characters).
_PHONE_RUN = re.compile(
    r"\d(?:[" + phonenumberutil._VALID_PUNCTUATION + r"]{0,4}\d)*", re.UNICODE | re.IGNORECASE
)


def _longest_run(text: str) -> int:
    return max((sum(map(str.isdecimal, run)) for run in _PHONE_RUN.findall(text)), default=0)


@lru_cache(maxsize=16)
def phone_digits(text: str) -> int:
    """The most digits in one run of text python-phonenumbers could read as a number (memoised)."""
    return _longest_run(text)


def _possible_lengths(metadata) -> list[int]:
    descs = [metadata.general_desc, metadata.fixed_line, metadata.mobile, metadata.toll_free,
             metadata.premium_rate, metadata.shared_cost, metadata.personal_number, metadata.voip,
             metadata.pager, metadata.uan, metadata.voicemail]  # fmt: skip
    return [n for desc in descs if desc is not None for n in desc.possible_length if n > 0]


@lru_cache(maxsize=1)
def shortest_international_number() -> int:
    """Digits in the shortest valid number written with its country code, over every region."""
    shortest = 1000
    for region in phonenumbers.SUPPORTED_REGIONS:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        lengths = _possible_lengths(metadata) if metadata is not None else []
        if lengths:
            shortest = min(shortest, len(str(metadata.country_code)) + min(lengths))
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        lengths = _possible_lengths(phonenumbers.PhoneMetadata.metadata_for_nongeo_region(code))
        if lengths:
            shortest = min(shortest, len(str(code)) + min(lengths))
    return shortest


@cache
def shortest_number(region: str) -> int:
    """Digits in the shortest valid number a matcher for `region` can find: the shortest national
    number of a region with its country code (a GB number may be valid in Jersey), or the shortest
    one written with a country code, whichever is shorter."""
    country_code = phonenumbers.country_code_for_region(region)
    national = [
        length
        for sibling in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[country_code]
        if (metadata := phonenumbers.PhoneMetadata.metadata_for_region(sibling)) is not None
        for length in _possible_lengths(metadata)
    ]
    return min([shortest_international_number(), *national])


@lru_cache(maxsize=16)
def windows(text: str) -> tuple[tuple[int, str, int], ...]:
    """(offset, window, its `phone_digits`) for each maximal run of `text` without a cut letter that
    holds a digit: the run with the cut letter before and after it, where there is one (memoised:
    each region asks)."""
    found = []
    reversed_text = None
    end = 0  # where the last window's run ended
    for digit in _DIGIT.finditer(text):
        if digit.start() < end:
            continue  # in the last window's run
        if reversed_text is None:
            reversed_text = text[::-1]
        # The nearest cut letter before the digit, found forwards in the reversed text.
        before = _CUT_LETTER.search(reversed_text, len(text) - digit.start())
        start = len(text) - before.end() if before is not None else 0  # the cut letter itself, or 0
        after = _CUT_LETTER.search(text, digit.end())
        end = after.start() if after is not None else len(text)
        window = text[start : end + 1]
        found.append((start, window, _longest_run(window)))
    return tuple(found)


@lru_cache(maxsize=WINDOW_MEMO)
def region_free(candidate: str) -> bool:
    """True if `parse(candidate, region)` is the same for every region: `parse(candidate, None)`
    does not fail for want of a region (see the module's doc). False says only "parse per region",
    so a candidate without a plus sign, which parse cannot read without a region, is not parsed here."""
    if not any(plus in candidate for plus in phonenumberutil._PLUS_CHARS):
        return False
    try:
        phonenumbers.parse(candidate, None, keep_raw_input=True)
    except phonenumbers.NumberParseException as error:
        return error.error_type != phonenumbers.NumberParseException.INVALID_COUNTRY_CODE
    return True


# Characters a candidate may hold, besides ASCII digits, for `could_be_valid` to read it: parse drops
# them (no extension, RFC 3966 or letter-to-digit reading needs anything else: ",", ";", "#", "~",
# letters and "+" all go to the full parse).
NATIONAL_SEPARATORS = " -.()/"
_NATIONAL_CANDIDATE = re.compile(r"[0-9" + re.escape(NATIONAL_SEPARATORS) + r"]+")
_NOT_A_DIGIT = re.compile(r"[^0-9]")
# The number types _number_type_helper tries.
_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan",
          "voicemail", "fixed_line", "mobile")  # fmt: skip


def _fits(desc, length: int) -> bool:
    """`_is_number_matching_desc`'s length test: no lengths listed means any."""
    return not desc.possible_length or length in desc.possible_length


@cache
def _type_pattern(country_code: int, length: int) -> re.Pattern | None:
    """An expression every valid national number of `length` digits of `country_code` fully matches:
    each number type's pattern, of every region with that code, that allows the length (None: no
    number of that length is valid there)."""
    patterns = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ()):
        metadata = PhoneMetadata.metadata_for_region(region)
        if metadata is None or not _fits(metadata.general_desc, length):
            continue
        for name in _TYPES:
            desc = getattr(metadata, name)
            if desc is not None and desc.national_number_pattern and _fits(desc, length):
                patterns.append(desc.national_number_pattern)
    return re.compile("|".join(f"(?:{pattern})" for pattern in dict.fromkeys(patterns))) if patterns else None


@dataclass(frozen=True)
class _Prefix:
    """How parse takes a region's national prefix (and carrier code) off a number's digits
    (`_maybe_strip_national_prefix_carrier_code`), when it does."""

    pattern: re.Pattern | None
    rule: str | None  # the transform rule that rewrites the digits instead, where the region has one

    def strip(self, digits: str) -> str:
        match = self.pattern.match(digits) if self.pattern is not None else None
        if match is None:
            return digits
        if self.rule and self.pattern.groups and match.group(self.pattern.groups) is not None:
            return self.pattern.sub(self.rule, digits, count=1)
        return digits[match.end() :]


def _prefix(metadata) -> _Prefix:
    pattern = metadata.national_prefix_for_parsing
    return _Prefix(re.compile(pattern) if pattern else None, metadata.national_prefix_transform_rule or None)


@dataclass(frozen=True)
class _Reading:
    """What `could_be_valid` needs of a region: parse strips the region's national prefix, then,
    after a country code, the national prefix of the country's main region."""

    country_code: int
    international_prefix: re.Pattern | None
    own_prefix: _Prefix
    main_prefix: _Prefix


@cache
def _region_reading(region: str) -> _Reading | None:
    """None for a region phonenumbers does not know."""
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None:
        return None
    main = phonenumbers.region_code_for_country_code(metadata.country_code)
    own = _prefix(metadata)
    idd = re.compile(metadata.international_prefix) if metadata.international_prefix else None
    main_prefix = own if main == region else _prefix(PhoneMetadata.metadata_for_region(main))
    return _Reading(metadata.country_code, idd, own, main_prefix)


def national_forms(digits: str, reading: _Reading) -> set[str]:
    """Every national significant number parse can make of `digits` in the region (read as one of
    its own country's numbers): as written or without the country code, each with or without the
    national prefix (the region's, then the main region's after a country code). parse chooses among
    them; this is a superset."""
    forms = {digits, reading.own_prefix.strip(digits)}
    code = str(reading.country_code)
    if digits.startswith(code):
        rest = digits[len(code) :]
        stripped = {rest, reading.own_prefix.strip(rest)}
        forms |= stripped | {reading.main_prefix.strip(form) for form in stripped}
    return forms


def could_be_valid(candidate: str, region: str) -> bool:
    """False only if `parse(candidate, region)` cannot give a valid number (see the module's doc)."""
    reading = _region_reading(region)
    if reading is None or not _NATIONAL_CANDIDATE.fullmatch(candidate):
        return True
    digits = _NOT_A_DIGIT.sub("", candidate)
    if reading.international_prefix is not None and reading.international_prefix.match(digits):
        return True  # an international prefix: the number may be any country's
    for form in national_forms(digits, reading):
        pattern = _type_pattern(reading.country_code, len(form))
        if pattern is not None and pattern.fullmatch(form):
            return True
    return False


# (candidate, character before it, character after it, leniency) -> the matched number, or None
# when the matcher refuses the candidate; "" for the start or end of the text. Bounded like
# tokens.PieceCounts: past the limit it starts again.
_REGION_FREE_VERDICTS: dict[tuple[str, str, str, int], phonenumbers.PhoneNumber | None] = {}
REGION_FREE_MEMO = 1 << 14
_UNSEEN = object()


class _ScreenedMatcher(PhoneNumberMatcher):
    """PhoneNumberMatcher, except that a candidate (or a group inside one) with fewer digits than the
    shortest number valid in the region is refused without parsing it: the matcher would parse it
    and find it invalid. Letters count as digits here, as parsing may read them so ("1-800-FLOWERS").
    A candidate whose parse does not depend on the region is verified once for all regions; one read
    as a national number that no number type of the region's country fits (`could_be_valid`) is
    refused without parsing it."""

    def __init__(self, text: str, region: str, leniency: int, min_digits: int):
        super().__init__(text, region, leniency=leniency)
        self._min_digits = min_digits

    def _parse_and_verify(self, candidate, offset):
        if not may_be_valid(candidate, self.preferred_region, self._min_digits):
            return None
        if not region_free(candidate):
            return super()._parse_and_verify(candidate, offset)
        end = offset + len(candidate)
        key = (candidate, self.text[offset - 1 : offset], self.text[end : end + 1], self.leniency)
        verdicts = _REGION_FREE_VERDICTS
        number = verdicts.get(key, _UNSEEN)  # one lookup: another thread may clear the memo
        if number is not _UNSEEN:
            return None if number is None else PhoneNumberMatch(offset, candidate, number)
        match = super()._parse_and_verify(candidate, offset)
        if len(verdicts) >= REGION_FREE_MEMO:
            verdicts.clear()
        verdicts[key] = None if match is None else match.number
        return match


def may_be_valid(candidate: str, region: str, min_digits: int) -> bool:
    """False where `_ScreenedMatcher` refuses `candidate` without parsing it: too few digits, or a
    national number no number type of the region's country fits. A candidate that parses the same
    in every region (`region_free`) is not refused here."""
    return sum(map(str.isalnum, candidate)) >= min_digits and (
        region_free(candidate) or could_be_valid(candidate, region)
    )


class _Recorder(PhoneNumberMatcher):
    """A matcher that refuses every candidate and keeps them: what PhoneNumberMatcher hands to
    `_parse_and_verify` in a text where nothing matches. Up to that call the matcher reads only the
    text (its pattern, dates, time stamps, groups inside a candidate), never the region."""

    def __init__(self, text: str):
        super().__init__(text, None, leniency=Leniency.VALID)
        self.seen: list[str] = []

    def _parse_and_verify(self, candidate, offset):
        self.seen.append(candidate)
        return None


@lru_cache(maxsize=WINDOW_MEMO)
def window_candidates(window: str) -> tuple[str, ...]:
    """Every candidate and group a matcher parses in `window` when none of them is a number, in
    order; the same in every region (memoised: each region asks)."""
    recorder = _Recorder(window)
    for _ in recorder:
        raise AssertionError("the recorder matched")  # pragma: no cover (it refuses everything)
    return tuple(recorder.seen)


@lru_cache(maxsize=WINDOW_MEMO)
def _window_matches(window: str, region: str, leniency: int) -> tuple[PhoneNumberMatch, ...]:
    min_digits = shortest_number(region)
    # A region that refuses each candidate unparsed finds nothing: its matcher would run the same
    # searches, reach the same candidates and parse none of them. Only the other regions run one.
    if not any(may_be_valid(candidate, region, min_digits) for candidate in window_candidates(window)):
        return ()
    return tuple(_ScreenedMatcher(window, region, leniency, min_digits))


class ValidNumberFinder:
    """PhoneNumberMatcher's matches for each of `regions`, window by window (see the module's doc)."""

    def __init__(self, regions: Iterable[str], leniency: int):
        if leniency < Leniency.VALID:
            raise ValueError(f"leniency {leniency}: numbers need not be valid, so digit counts prove nothing")
        self.regions = tuple(regions)
        self.leniency = leniency
        self.min_digits = {region: shortest_number(region) for region in self.regions}
        self.fewest_digits = min(self.min_digits.values())

    def could_match(self, text: str) -> bool:
        """False only for a text in which no region's matcher finds anything."""
        return phone_digits(text) >= self.fewest_digits

    def matches(self, text: str, region: str) -> list[PhoneNumberMatch]:
        """`list(PhoneNumberMatcher(text, region, leniency=self.leniency))`."""
        if phone_digits(text) < self.min_digits[region]:
            return []  # (the cheaper test when the text's digits are too few)
        parts = windows(text)
        if sum(len(window) for _, window, _ in parts) * _TRIES_PER_CHARACTER >= MATCHER_MAX_TRIES:
            return list(PhoneNumberMatcher(text, region, leniency=self.leniency))
        found = []
        for offset, window, digits in parts:
            if digits < self.min_digits[region]:
                continue
            for match in _window_matches(window, region, self.leniency):
                found.append(
                    match
                    if offset == 0
                    else PhoneNumberMatch(offset + match.start, match.raw_string, match.number)
                )
        return found
