"""The recognisers `pii.py` adds to (or puts in place of) Presidio's own.

* `OfflineEmailRecognizer`: Presidio's e-mail recogniser validates the domain with the module-level
  `tldextract.extract`, whose extractor downloads the public suffix list on first use. Ours
  validates with an extractor that has no URLs to fetch and no disk cache, so it reads only the
  snapshot bundled with tldextract: no network, no files written.
* `ValidPhoneRecognizer` / `FormattedPhoneRecognizer`: python-phonenumbers only accepts numbers
  that could be dialled (fictional 555 numbers fail), so a regex adds numbers that are written
  like phone numbers; weak shapes need a context word ("call", "tel", ...). The valid ones are
  found window by window (`phone_numbers`), with the same matches as its matcher on the whole text.
* `DATE_PATTERNS`: dates with month names ("March 5th, 2024", "the 3rd of April") and numeric
  dates, replacing Presidio's list, whose `d.m.yy` pattern also matches version numbers (4.2.17).
* `CuePersonRecognizer` and `NameListRecognizer`: names after titles and cue words, and names
  starting with a known name token (data/person_names.txt), for what the small spaCy model misses.
* `IdCueRecognizer`: passport / driving licence / account numbers named as such in the text.

Every recogniser here but the NER one is `Screened`: `could_match(text)` is a cheap test that
every text the recogniser can find something in passes (an e-mail needs an "@", a card number 13
digits, a name from the list a capitalised word that is on it...). `analyze` returns nothing at
once for a text that fails it, and `PiiAnonymizer` skips Presidio altogether for a text that fails
every one, so screening changes no result, only the time: most sentences hold no candidate.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import phonenumbers
import regex
import tldextract
from presidio_analyzer import (
    AnalysisExplanation,
    EntityRecognizer,
    LocalRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerResult,
)
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    MedicalLicenseRecognizer,
    NhsRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UsItinRecognizer,
    UsSsnRecognizer,
)

from services.dataprep import phone_numbers

NAMES_FILE = Path(__file__).parent / "data" / "person_names.txt"
CASE_SENSITIVE = re.DOTALL | re.MULTILINE

# suffix_list_urls=() -> never fetch; cache_dir=None -> no disk cache; fallback_to_snapshot -> the
# public suffix list bundled in the tldextract wheel.
OFFLINE_TLD_EXTRACTOR = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

# ------------------------------------------------------------------------------------- screening

# Digits as the `regex` module (Presidio's patterns) reads "\d": a superset of the `re` module's
# (python-phonenumbers, our own patterns), whose Unicode tables are older.
_DIGIT = regex.compile(r"\d")


@lru_cache(maxsize=16)
def digit_count(text: str) -> int:
    """How many digits `text` holds (memoised: every screen of one text asks)."""
    return len(_DIGIT.findall(text))


class Screened:
    """Mixin for a recogniser: `could_match(text)` is False only for a text in which the recogniser
    cannot find anything, and `analyze` then returns [] without scanning it.

    `screen(text)` is `could_match(text)`, remembered for the last text: `PiiAnonymizer` screens a
    text with the recognisers before it hands the text to Presidio, whose `analyze` asks again."""

    # (text, verdict), replaced whole, so threads that share the recogniser read a consistent pair.
    _last_screen: tuple[str | None, bool] = (None, False)
    # `could_match` is False for every text with fewer digits (`digit_count`) than this.
    MIN_DIGITS = 0

    def could_match(self, text: str) -> bool:
        return True

    def screen(self, text: str) -> bool:
        last_text, verdict = self._last_screen
        if last_text is not text:
            verdict = self.could_match(text)
            self._last_screen = (text, verdict)
        return verdict

    def analyze(self, text, entities, nlp_artifacts=None):
        if not self.screen(text):
            return []
        return super().analyze(text, entities, nlp_artifacts)


class DigitScreened(Screened):
    """Every match of the recogniser holds at least MIN_DIGITS digits, and HINT (if set) finds
    something in every text with a match."""

    MIN_DIGITS = 1
    HINT: regex.Pattern | re.Pattern | None = None

    def could_match(self, text: str) -> bool:
        return digit_count(text) >= self.MIN_DIGITS and (
            self.HINT is None or self.HINT.search(text) is not None
        )


class ScreenedCreditCardRecognizer(DigitScreened, CreditCardRecognizer):
    MIN_DIGITS = 13  # 4 + 3 + 3 + 3 in the shortest form of the pattern


class ScreenedUsSsnRecognizer(DigitScreened, UsSsnRecognizer):
    MIN_DIGITS = 9


class ScreenedUsItinRecognizer(DigitScreened, UsItinRecognizer):
    MIN_DIGITS = 9


class ScreenedIbanRecognizer(DigitScreened, IbanRecognizer):
    MIN_DIGITS = 2
    HINT = re.compile(r"[A-Z]{2}[0-9]{2}")  # country code and check digits (case-sensitive pattern)


class ScreenedMedicalLicenseRecognizer(DigitScreened, MedicalLicenseRecognizer):
    MIN_DIGITS = 7
    HINT = regex.compile(r"\d{7}")


# IPv4 has a digit, a dot and a digit; every IPv6 form has two colons with at most four hex digits
# between them ("::", ":db8:"). (\w holds every character a hex digit matches case-insensitively.)
_IP_HINT = re.compile(r"[0-9]\.[0-9]|:\w{0,4}:")


class ScreenedIpRecognizer(Screened, IpRecognizer):
    def could_match(self, text: str) -> bool:
        return _IP_HINT.search(text) is not None


class OfflineEmailRecognizer(Screened, EmailRecognizer):
    def could_match(self, text: str) -> bool:
        return "@" in text

    def validate_result(self, pattern_text: str) -> bool:
        return OFFLINE_TLD_EXTRACTOR(pattern_text).fqdn != ""


PHONE_CONTEXT = [
    "phone",
    "tel",
    "call",
    "mobile",
    "cell",
    "fax",
    "whatsapp",
    "text",
    "sms",
    "contact",
    "reach",
    "dial",
    "ring",
    "ext",
]


class ValidPhoneRecognizer(Screened, PhoneRecognizer):
    """Numbers python-phonenumbers finds valid for some region: strong enough on their own.

    Presidio's PhoneRecognizer.analyze, with each region's PhoneNumberMatcher replaced by
    `phone_numbers.ValidNumberFinder`, which finds the same matches in windows of the text around
    its digits, for the regions whose shortest number fits in a window's digits."""

    SCORE = 0.6
    # Numbers written with +country code match in any region; these decide how national numbers are
    # read. More regions find more 9-10 digit IDs (SSNs, passport numbers) "valid" somewhere.
    REGIONS = PhoneRecognizer.DEFAULT_SUPPORTED_REGIONS + ("AU", "IE")

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            context=PHONE_CONTEXT,
            supported_language=supported_language,
            supported_regions=self.REGIONS,
            leniency=1,
        )
        self.finder = phone_numbers.ValidNumberFinder(self.supported_regions, self.leniency)
        self.MIN_DIGITS = self.finder.fewest_digits

    def could_match(self, text: str) -> bool:
        # Counting all digits first is cheaper, and enough for most texts. Then the matches
        # themselves: a text whose only digits are an order number or a year then never reaches
        # Presidio on this recogniser's account, and `analyze` finds them again in the finder's memo.
        return (
            digit_count(text) >= self.MIN_DIGITS
            and self.finder.could_match(text)
            and any(self.finder.matches(text, region) for region in self.supported_regions)
        )

    def analyze(self, text, entities, nlp_artifacts=None):
        if not self.screen(text):
            return []
        results = []
        for region in self.supported_regions:
            for match in self.finder.matches(text, region):
                results.append(
                    self._get_recognizer_result(
                        match, text, _found_in(match.raw_string, region), nlp_artifacts
                    )
                )
        return [
            r
            for r in EntityRecognizer.remove_duplicates(results)
            if not is_numeric_date(text[r.start : r.end])
        ]


@lru_cache(maxsize=256)
def _found_in(number: str, region: str) -> str:
    """The region a match's number belongs to, for the finding's explanation (as PhoneRecognizer):
    its own when written with a country code, else the matcher's."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(number))
    except phonenumbers.NumberParseException:
        return region


class FormattedPhoneRecognizer(DigitScreened, PatternRecognizer):
    """Numbers written the way phone numbers are written, whether or not the number exists."""

    MIN_DIGITS = 7  # validate_result refuses fewer

    PATTERNS = [
        # (555) 123-4567, 555.123.4567, 555-867-5309, +1 555 123 4567
        Pattern(
            "NANP",
            r"(?<![\w+.-])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![\w-]|\.\d)",
            0.5,
        ),
        # +CC then 2-6 groups of digits
        Pattern("International", r"(?<![\w+])\+\d{1,3}(?:[\s.-]?\(?\d{1,5}\)?){2,6}(?![\w-])", 0.5),
        # 07700 900123, 020 7946 0958: national trunk prefix; needs a context word
        Pattern("National", r"(?<![\w+.-])0\d{2,4}[\s-]\d{3,6}(?:[\s-]\d{3,4})?(?![\w-]|\.\d)", 0.3),
    ]

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            "PHONE_NUMBER",
            name="FormattedPhoneRecognizer",
            patterns=self.PATTERNS,
            context=PHONE_CONTEXT,
            supported_language=supported_language,
            global_regex_flags=CASE_SENSITIVE,
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        digits = sum(ch.isdigit() for ch in pattern_text)
        return None if 7 <= digits <= 15 and not is_numeric_date(pattern_text) else False


class ContextNhsRecognizer(DigitScreened, NhsRecognizer):
    """NHS numbers look like US phone numbers (3-3-4 digits) and one in eleven passes the checksum by
    chance, so a valid checksum keeps the pattern's score (0.5) instead of 1.0: "NHS" nearby decides."""

    MIN_DIGITS = 10

    def validate_result(self, pattern_text: str) -> bool | None:
        return None if super().validate_result(pattern_text) else False


# Bare domains only with TLDs that are not also common file extensions (setup.py, deploy.sh, README.md).
_COMMON_TLDS = (
    "com|org|net|edu|gov|mil|int|io|co|info|biz|app|dev|me|tv|cloud|online|site|tech|legal|health|"
    "uk|de|fr|es|it|nl|be|ch|at|se|no|dk|fi|ie|pt|pl|cz|ru|ua|jp|cn|kr|in|au|nz|ca|us|br|mx|ar|za|ng|ke|eu"
)
_URL_END = r"[^\s<>\"'()\[\]{}]*[^\s<>\"'()\[\]{}.,;:!?]"
URL_PATTERNS = [
    Pattern("Scheme URL", rf"\b(?:https?|ftp)://{_URL_END}", 0.6),
    Pattern("www URL", rf"\bwww\d{{0,3}}\.[a-z0-9-]+(?:\.[a-z0-9-]+)+(?:/{_URL_END})?", 0.6),
    Pattern(
        "Domain URL",
        rf"(?<![\w.@/-])(?:[a-z0-9-]+\.)+(?:{_COMMON_TLDS})(?![\w-]|\.\w)(?:/{_URL_END}|/)?",
        0.5,
    ),
]


# Every URL pattern holds "://" or a dot before a domain label ([a-z0-9-] case-insensitively: \w
# holds every character that matches).
_URL_HINT = re.compile(r"://|\.[\w-]")


class ScreenedPatternRecognizer(Screened, PatternRecognizer):
    """A PatternRecognizer with a screen: `hint` must find something, and at least `min_digits` digits."""

    def __init__(self, *args, hint: re.Pattern | regex.Pattern | None = None, min_digits: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.hint = hint
        self.MIN_DIGITS = min_digits

    def could_match(self, text: str) -> bool:
        if self.MIN_DIGITS and digit_count(text) < self.MIN_DIGITS:
            return False
        return self.hint is None or self.hint.search(text) is not None


def url_recognizer(supported_language: str = "en") -> PatternRecognizer:
    return ScreenedPatternRecognizer(
        "URL",
        name="UrlRecognizer",
        patterns=URL_PATTERNS,
        context=["url", "website", "link", "site"],
        supported_language=supported_language,
        hint=_URL_HINT,
    )


_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_DAY = r"(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?"
_YEAR = r"(?:1[89]\d\d|20\d\d)"
_WEEKDAY = r"(?:(?:Mon|Tue|Tues|Wed|Thu|Thur|Thurs|Fri|Sat|Sun)(?:day|nesday|sday|urday)?\.?,?\s+)?"
_TIME = r"(?:[ T](?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?(?:Z|[+-][0-2]\d:?[0-5]\d)?)?"
_NUM_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_NUM_MONTH = r"(?:0?[1-9]|1[0-2])"

DATE_PATTERNS = [
    Pattern("Month day[, year]", rf"\b{_WEEKDAY}{_MONTH}\s+{_DAY}\b(?:,?\s+{_YEAR}\b)?", 0.6),
    Pattern(
        "[the] day [of] month[, year]",
        rf"\b{_WEEKDAY}(?:the\s+)?{_DAY}(?:\s+of)?\s+{_MONTH}(?:,?\s+{_YEAR}\b)?(?![\w])",
        0.6,
    ),
    Pattern("Month year", rf"\b{_MONTH}\s+{_YEAR}\b", 0.6),
    Pattern("yyyy-mm-dd[ time]", rf"\b{_YEAR}([-/.]){_NUM_MONTH}\1{_NUM_DAY}{_TIME}(?![\w:])", 0.6),
    Pattern("d/m/y or m/d/y", rf"\b{_NUM_DAY}([/-]){_NUM_DAY}\1(?:{_YEAR}|\d\d)\b(?![/-]\d)", 0.6),
    Pattern("d.m.yyyy", rf"\b{_NUM_DAY}\.{_NUM_MONTH}\.{_YEAR}\b(?!\.\d)", 0.6),
    # Two-digit years with dots look like version numbers: only with two-digit day and month.
    Pattern("dd.mm.yy", r"\b(?:0[1-9]|[12]\d|3[01])\.(?:0[1-9]|1[0-2])\.\d\d\b(?!\.\d)", 0.5),
    Pattern(
        "dd-MON-yyyy",
        rf"\b{_NUM_DAY}-(?:JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|{_MONTH})-(?:{_YEAR}|\d\d)\b",
        0.6,
    ),
]


# Every numeric date pattern has a digit, a separator, one or two digits (a day or month), a
# separator and a digit; every other one a month's name (case-sensitive: _MONTH or JAN..DEC) that
# a character other than a letter, digit or "_" follows, or the end of the text (a space or "," in
# the month-first patterns, "-" in dd-MON-yyyy, anything but \w after "[the] day [of] month";
# _MONTH takes a month's dot in). So "Maria", "Market" or "Decided" do not pass, nor a phone
# number such as 555-123-4567.
_DATE_HINT = regex.compile(
    rf"\d[-/.]\d\d?[-/.]\d|(?:{_MONTH}|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)(?!\w)"
)


def date_recognizer(supported_language: str = "en") -> PatternRecognizer:
    return ScreenedPatternRecognizer(
        "DATE_TIME",
        name="DateRecognizer",
        patterns=DATE_PATTERNS,
        context=["date", "born", "birth", "dob"],
        supported_language=supported_language,
        global_regex_flags=CASE_SENSITIVE,
        hint=_DATE_HINT,
        min_digits=1,  # every pattern has a day or a year
    )


_NUMERIC_DATE = re.compile(
    rf"\b(?:{_YEAR}[-/.]{_NUM_MONTH}[-/.]{_NUM_DAY}|{_NUM_DAY}[-/.]{_NUM_DAY}[-/.](?:{_YEAR}|\d\d))\b"
)
_MONTH_NAME = re.compile(rf"\b{_MONTH}(?![^\W\d_])")


def is_numeric_date(text: str) -> bool:
    return bool(_NUMERIC_DATE.fullmatch(text.strip()))


def looks_like_date(text: str) -> bool:
    """What NER calls a date is kept only when it names a calendar day or month of a year, not
    "10 minutes", "2027", "March" or "every Tuesday"."""
    return bool(_NUMERIC_DATE.search(text) or (_MONTH_NAME.search(text) and re.search(r"\d", text)))


# ---------------------------------------------------------------------------------------- persons


@lru_cache(maxsize=1)
def load_names() -> tuple[frozenset[str], frozenset[str]]:
    """(names, ambiguous names: also English words, which need a second name token after them)."""
    names, ambiguous = set(), set()
    for line in NAMES_FILE.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith("?"):
            ambiguous.add(line[:-1])
        elif line:
            names.add(line)
    return frozenset(names), frozenset(ambiguous)


# Capitalised words that are not names, so a name never runs into them.
_NOT_NAMES_TEXT = """
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July
August September October November December The A An This That These Those It I We You He She They My
Our Your His Her Their Its If In On At For From To Of And Or But By With As Is Are Was Were Be Not No
Yes Ok OK Us Please Note Subject Re Fwd Date Name Phone Email Address Tel Fax Mobile Customer Customers
Client Clients Service Services Support Team Portal Department Dept Office Hospital Clinic Centre Center
University College School Street St Road Rd Avenue Ave Lane Way Drive Boulevard Square Station Airport
Bank Inc Ltd LLC GmbH Corp Company Group Foundation Institute Ministry Council City County State
Republic Kingdom North South East West New Old Great General Head Chief Account Accounts Billing Sales
Marketing Finance Legal Admin Administrator User Users Member Members Everyone All There Folks Sir Madam
Dear Hi Hello Hey Thanks Thank Regards Best Sincerely Cheers Manager Director Officer Agent Nurse Doctor
Patient Ward Room Bed Floor Building Unit Suite Apartment Project Product Premium Pro Plus Free Basic
Standard Enterprise Model Version Release Update App Service Desk Help Guest Valued Reviewer Owner
Today Tomorrow Yesterday Morning Afternoon Evening Night Court Judge Justice Honour Honor Ref Order
Invoice Ticket Case Team Summary Passport Licence License Driver Card Visa Mastercard Amex
Mr Mrs Ms Miss Mx Dr Prof Dame Mme Mlle Herr Frau Rev Pt
"""
_PARTICLES_TEXT = "van von der den de del della di da dos das du le la bin binti ibn al el ben ter ten"
NOT_NAMES = frozenset(_NOT_NAMES_TEXT.split())
PARTICLES = frozenset(_PARTICLES_TEXT.split())
WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")


def _name_like(word: str) -> bool:
    return word[0].isupper() and not (len(word) > 1 and word.isupper()) and word not in NOT_NAMES


def _words(text: str) -> list[re.Match]:
    return list(WORD.finditer(text))


def _name_run(text: str, words: list[re.Match], i: int, max_tokens: int = 4) -> int:
    """Index past the last word of the name that starts at words[i] (words[i] must be name-like)."""
    j = i + 1
    while j < len(words) and j - i < max_tokens:
        gap = text[words[j - 1].end() : words[j].start()]
        if gap not in (" ", "  ", "\t"):
            break
        word = words[j].group()
        if _name_like(word):
            j += 1
        elif (
            word in PARTICLES
            and j + 1 < len(words)
            and _name_like(words[j + 1].group())
            and text[words[j].end() : words[j + 1].start()] == " "
        ):
            j += 2
        else:
            break
    return j


# A word starting with a letter other than a-z (every known name does: see `_capitalised_names`), as
# WORD reads words: a known name in the text is one of these, or the part of one before a hyphen.
_CAPITALISED_WORD = re.compile(r"[^\W\d_a-z][^\W\d_]*(?:['’\-][^\W\d_]+)*")
# The same in ASCII text, where a letter is [A-Za-z] (about twice as fast: a class of Unicode
# categories is looked up for every character it tests).
_ASCII_CAPITALISED_WORD = re.compile(r"[A-Z][A-Za-z]*(?:['\-][A-Za-z]+)*")


@lru_cache(maxsize=1)
def _capitalised_names() -> bool:
    names, ambiguous = load_names()
    return all(name[0].isalpha() and not "a" <= name[0] <= "z" for name in names | ambiguous)


def has_known_name(text: str, names: frozenset[str], ambiguous: frozenset[str]) -> bool:
    """True if a word of `text` is, or starts with, a known name: what NameListRecognizer looks for."""
    if not _capitalised_names():
        words = set(WORD.findall(text))
    else:
        words = set((_ASCII_CAPITALISED_WORD if text.isascii() else _CAPITALISED_WORD).findall(text))
    if not (names.isdisjoint(words) and ambiguous.isdisjoint(words)):
        return True
    return any("-" in word and word.split("-")[0] in names for word in words)


def _sentence_start(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'(")
    return not before or before[-1] in ".!?\n:;"


class NameListRecognizer(Screened, LocalRecognizer):
    """A known name token plus the capitalised name tokens after it."""

    CONTEXT = [
        "name",
        "patient",
        "customer",
        "client",
        "contact",
        "dear",
        "hi",
        "hello",
        "thank",
        "signed",
        "regard",
        "ask",
        "ping",
        "tell",
        "mr",
        "ms",
        "mrs",
        "dr",
        "from",
        "by",
        "with",
    ]

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            supported_entities=["PERSON"],
            supported_language=supported_language,
            name="NameListRecognizer",
            context=self.CONTEXT,
        )

    def load(self) -> None:
        self.names, self.ambiguous = load_names()

    def could_match(self, text: str) -> bool:
        return has_known_name(text, self.names, self.ambiguous)

    def analyze(self, text, entities, nlp_artifacts=None):
        if not self.screen(text):
            return []
        words = _words(text)
        results, i = [], 0
        while i < len(words):
            word = words[i].group()
            first = word.split("-")[0] if "-" in word and word not in self.names else word
            if first not in self.names and word not in self.ambiguous:
                i += 1
                continue
            end = _name_run(text, words, i)
            if end - i >= 2:
                score = 0.85
            elif word in self.ambiguous:
                i += 1
                continue
            else:
                next_lower = i + 1 < len(words) and words[i + 1].group()[0].islower()
                score = 0.4 if _sentence_start(text, words[i].start()) and next_lower else 0.6
            results.append(_result(self, words[i].start(), words[end - 1].end(), score))
            i = end
        return results


TITLES = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame|Mme|Mlle|Herr|Frau|Rev)(?![^\W\d_])\.?"
ROLES = (
    r"(?:[Pp]atient|[Pp]t\.|[Cc]ustomer|[Cc]lient|[Cc]aller|[Aa]gent|[Nn]urse|[Dd]octor|[Dd]river|[Tt]enant|"
    r"[Ll]andlord|[Pp]laintiff|[Dd]efendant|[Ww]itness|[Aa]pplicant|[Ee]mployee|[Gg]uardian|[Hh]older|"
    r"[Cc]ounsel|[Aa]ttorney|[Oo]fficer|[Jj]udge|[Ww]ife|[Hh]usband|[Ss]on|[Dd]aughter|[Mm]other|[Ff]ather|"
    r"[Bb]rother|[Ss]ister|[Cc]olleague|[Mm]anager|[Aa]uthor|[Mm]aintainer|[Kk]in|[Cc]ontact(?: person)?|"
    r"[Cc]andidate|[Dd]eceased)(?![^\W\d_])"
)
PHRASES = (
    r"(?:[Mm]y name is|[Nn]ame is|[Ss]igned(?: by)?|[Ss]incerely|[Rr]egards|[Bb]est wishes|[Dd]ear|"
    r"(?:[Pp]repared|[Rr]eviewed|[Aa]pproved|[Ss]ubmitted|[Ww]ritten|[Rr]eported|[Rr]eferred|[Ee]xecuted|"
    r"[Gg]iven|[Ss]ent|[Ii]ssued|[Rr]epresented) by|[Aa]ssigned to|[Ss]poke (?:with|to)|[Tt]alked to|"
    r"[Mm]et with|[Mm]eeting with|[Aa]ppointment with|[Ii]nterview with|[Mm]arried to|"
    r"(?:[Ff]rom|[Tt]o|[Cc][Cc]|[Bb]cc|[Aa]ttn|[Nn]ame)\s*:)(?![^\W\d_])"
)
CUE = re.compile(
    rf"(?:(?<![\w.])(?P<title>{TITLES})|\b(?P<role>{ROLES})|\b(?P<phrase>{PHRASES}))"
    r"(?:,|:|\s*[:,-])?[ \t]*\n?[ \t]*(?=[^\W\d_])"
)
LIST_JOIN = re.compile(r"\s*(?:,|&|\band\b|;)\s*")
EMAIL_AFTER = re.compile(r"\s*[<(][^\s<>()@]+@")


# Every word of the cue patterns, lower-cased ("[Pp]atient" -> "patient"; a few letters of regex
# syntax come along, which only makes the screen below pass more often).
_CUE_WORDS = frozenset(
    word.lower()
    for word in re.findall(
        r"[A-Za-z]+",
        re.sub(r"\\[A-Za-z]", " ", re.sub(r"\[([A-Za-z])[A-Za-z]\]", r"\1", TITLES + ROLES + PHRASES)),
    )
)
_LONGEST_CUE_WORD = max(map(len, _CUE_WORDS))
# Between a cue's last word and the name after it there are only these characters (a title's dot,
# a phrase's colon, the separators of CUE), at least one of them; the name starts with a capital
# (here: any letter but a-z). Read in the reversed text: a capital, then the whole run of
# separators before it, then the whole run of letters before them (the word), captured only if it
# is no longer than a cue word. The lookahead consumes only the capital, so a word that is itself
# capitalised still starts the next match ("dear Xavier Smith").
_CAPITAL_AFTER_WORD_REVERSED = re.compile(
    rf"[^\W\d_a-z](?=[.\s,:\-]+([^\W\d_]{{1,{_LONGEST_CUE_WORD}}})(?![^\W\d_]))"
)
# The same in ASCII text, where a capital is [A-Z] and a letter [A-Za-z] (twice as fast).
_ASCII_CAPITAL_AFTER_WORD_REVERSED = re.compile(
    rf"[A-Z](?=[.\s,:\-]+([A-Za-z]{{1,{_LONGEST_CUE_WORD}}})(?![A-Za-z]))"
)
_CUE_WORDS_REVERSED = frozenset(word[::-1] for word in _CUE_WORDS)


def _may_have_cue_before_capital(text: str) -> bool:
    """False only if no CUE match in `text` is followed by a capital: no word before a capital (and
    separators) is a word of the cue patterns. Several times faster than scanning with CUE, and the
    reversed text lets one regex find each such word. (Lower-casing the reversed word gives the
    reversed lower-cased word wherever that can be a cue word: only ASCII letters are.)"""
    pattern = _ASCII_CAPITAL_AFTER_WORD_REVERSED if text.isascii() else _CAPITAL_AFTER_WORD_REVERSED
    reversed_words = pattern.findall(text[::-1])
    return not _CUE_WORDS_REVERSED.isdisjoint(map(str.lower, reversed_words))


@lru_cache(maxsize=16)
def _cues_before_capitals(text: str) -> tuple[re.Match, ...]:
    """The cues a capitalised word follows: only those can come before a name (memoised: the
    screen and `analyze` both ask)."""
    if not _may_have_cue_before_capital(text):
        return ()
    return tuple(cue for cue in CUE.finditer(text) if text[cue.end()].isupper())


class CuePersonRecognizer(Screened, LocalRecognizer):
    """Capitalised names after a title (Mr, Dr...), a role (patient, customer...) or a phrase (my name is,
    Dear, signed by...), names in lists after such a name, and names written before an e-mail address."""

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            supported_entities=["PERSON"], supported_language=supported_language, name="CuePersonRecognizer"
        )

    def load(self) -> None:
        self.names, self.ambiguous = load_names()

    def could_match(self, text: str) -> bool:
        return "@" in text or bool(_cues_before_capitals(text))

    def analyze(self, text, entities, nlp_artifacts=None):
        # A name is name-like, so capitalised; a name before an e-mail address needs an "@".
        cues = _cues_before_capitals(text)
        email = "@" in text
        if not cues and not email:
            return []
        words = _words(text)
        by_start = {m.start(): k for k, m in enumerate(words)}
        results = []
        for cue in cues:
            i = by_start.get(cue.end())
            if i is None or not _name_like(words[i].group()):
                continue
            end = _name_run(text, words, i)
            known = words[i].group() in self.names
            if cue.group("title"):
                score = 0.85
            elif end - i >= 2:
                score = 0.7
            elif known or cue.group("phrase") in ("Dear", "dear"):
                score = 0.6
            else:
                continue
            results.append(_result(self, words[i].start(), words[end - 1].end(), score))
            results += self._listed_after(text, words, by_start, end)
        for i, word in enumerate(words if email else ()):  # Name Surname <email> / (email)
            if _name_like(word.group()):
                end = _name_run(text, words, i)
                if end - i >= 2 and EMAIL_AFTER.match(text, words[end - 1].end()):
                    results.append(_result(self, word.start(), words[end - 1].end(), 0.7))
        return EntityRecognizer.remove_duplicates(results)

    def _listed_after(self, text, words, by_start, end):
        results = []
        while end < len(words):
            join = LIST_JOIN.match(text, words[end - 1].end())
            i = by_start.get(join.end()) if join else None
            if i is None or not _name_like(words[i].group()):
                break
            new_end = _name_run(text, words, i)
            if new_end - i < 2:
                break
            results.append(_result(self, words[i].start(), words[new_end - 1].end(), 0.65))
            end = new_end
        return results


def _result(recognizer: EntityRecognizer, start: int, end: int, score: float) -> RecognizerResult:
    return RecognizerResult(
        entity_type=recognizer.supported_entities[0],
        start=start,
        end=end,
        score=score,
        analysis_explanation=AnalysisExplanation(recognizer=recognizer.name, original_score=score),
        recognition_metadata={
            RecognizerResult.RECOGNIZER_NAME_KEY: recognizer.name,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer.id,
        },
    )


class FilteredSpacyRecognizer(SpacyRecognizer):
    """spaCy's entities, less what the small model gets wrong most: durations and bare years as
    DATE_TIME, URLs / e-mails / numbers as PERSON or LOCATION, single capitalised words (Settings,
    Java) as PERSON unless they are known names. A LOCATION that starts with a known given name is
    relabelled PERSON (the small model often calls unfamiliar names places)."""

    def load(self) -> None:
        self.names, self.ambiguous = load_names()

    def analyze(self, text, entities, nlp_artifacts=None):
        kept = []
        for result in super().analyze(text, entities, nlp_artifacts):
            span = text[result.start : result.end]
            words = WORD.findall(span)
            if result.entity_type == "DATE_TIME":
                if not looks_like_date(span):
                    continue
            elif "@" in span or "://" in span or not words:
                continue
            elif result.entity_type == "PERSON":
                if any(c.isdigit() for c in span) or not all(_name_like(w) or w in PARTICLES for w in words):
                    continue
                if len(words) == 1 and words[0] not in self.names:
                    result.score = min(result.score, 0.4)
            elif result.entity_type == "LOCATION" and re.search(r"\s.*\d", span):
                continue  # "Windows 11"; an address starts with its number ("10 Downing Street")
            elif result.entity_type == "LOCATION" and words[0] in self.names:
                if "PERSON" not in entities:
                    continue
                result.entity_type = "PERSON"
            kept.append(result)
        return kept


# -------------------------------------------------------------------------------------- ID numbers

_NO = r"(?:\s+(?:no\.?|number|num\.?|#))?\s*[:#]?\s*"
ID_CUES = [
    ("US_PASSPORT", re.compile(rf"\bpassport{_NO}(?P<id>[A-Z0-9]{{6,12}})\b", re.IGNORECASE)),
    (
        "US_DRIVER_LICENSE",
        re.compile(
            rf"\b(?:driver'?s?\s+licen[cs]e|driving\s+licen[cs]e|DL){_NO}(?P<id>[A-Z0-9][A-Z0-9-]{{4,20}}[A-Z0-9])\b",
            re.IGNORECASE,
        ),
    ),
    (
        "US_BANK_NUMBER",
        re.compile(
            r"\b(?:bank\s+)?(?:account|acct)(?:\s+(?:no\.?|number|#))\s*[:#]?\s*(?P<id>\d[\d -]{5,20}\d)\b",
            re.IGNORECASE,
        ),
    ),
]


class IdCueRecognizer(DigitScreened, LocalRecognizer):
    """An ID number right after the name of the document it comes from ("passport no. A2345678")."""

    MIN_DIGITS = 4
    # What each of ID_CUES starts with: a bank account's cue is "account" / "acct" and then "no",
    # "number" or "#" (the word "account" alone is common in support tickets).
    HINT = re.compile(r"passport|licen[cs]e|\bdl|(?:account|acct)\s+(?:no|number|#)", re.IGNORECASE)

    def __init__(self, supported_language: str = "en"):
        super().__init__(
            supported_entities=[entity for entity, _ in ID_CUES],
            supported_language=supported_language,
            name="IdCueRecognizer",
        )

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        if not self.screen(text):
            return []
        results = []
        for entity, pattern in ID_CUES:
            if entity not in entities:
                continue
            for match in pattern.finditer(text):
                value = match.group("id")
                if sum(c.isdigit() for c in value) >= 4:
                    result = _result(self, match.start("id"), match.end("id"), 0.7)
                    result.entity_type = entity
                    results.append(result)
        return results
