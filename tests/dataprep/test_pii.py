"""PII anonymisation: measured recall / precision on a labelled corpus, placeholders, API, no network.

data/pii_corpus.jsonl: one sentence a line, {"text", "entities": [{"type", "text"}]}; every occurrence of
an entity's text (not inside a longer word) is a gold span. Labelling policy: PERSON = people's names
(with or without title, a surname after a title counts); DATE_TIME = calendar dates and date-times in
any format (not durations, bare years, weekdays or times of day); LOCATION = cities, countries,
regions, street addresses; every URL, e-mail, phone, card, IP and ID number. The last 62 lines are a
held-out set written after the detector had been tuned on the rest.

A prediction matches a gold span when they overlap and map to the same placeholder (so the ID types,
which all become [ID], match each other).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.dataprep.examples import Example
from services.dataprep.pii import DEFAULT_ENTITIES, DEFAULT_PLACEHOLDERS, Finding, PiiAnonymizer
from services.shared.errors import InvalidArgument

CORPUS = Path(__file__).parent / "data" / "pii_corpus.jsonl"
ROOT = Path(__file__).resolve().parents[2]
RECALL_TARGETS = {
    "EMAIL_ADDRESS": 0.95,
    "PHONE_NUMBER": 0.95,
    "CREDIT_CARD": 0.95,
    "IP_ADDRESS": 0.95,
    "PERSON": 0.85,
    "DATE_TIME": 0.85,
}
PRECISION_TARGET = 0.85
MIN_PREDICTIONS_FOR_TYPE_PRECISION = 10


@pytest.fixture(scope="module")
def ner() -> PiiAnonymizer:
    return PiiAnonymizer()


@pytest.fixture(scope="module")
def fast() -> PiiAnonymizer:
    return PiiAnonymizer(use_ner=False)


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def _gold_spans(row: dict) -> list[tuple[str, int, int]]:
    text, spans = row["text"], set()
    for entity in row["entities"]:
        value, start = entity["text"], 0
        assert value in text, f"corpus entity {value!r} is not in {text!r}"
        while (i := text.find(value, start)) >= 0:
            j = start = i + len(value)
            inside_word = (i > 0 and text[i - 1].isalnum() and value[0].isalnum()) or (
                j < len(text) and text[j].isalnum() and value[-1].isalnum()
            )
            if not inside_word:
                spans.add((entity["type"], i, j))
    return sorted(spans)


def _group(entity: str) -> str:
    return DEFAULT_PLACEHOLDERS.get(entity, entity)


def _measure(anonymizer: PiiAnonymizer, rows: list[dict]):
    found, gold_count, correct, predicted = Counter(), Counter(), Counter(), Counter()
    errors = []
    for row in rows:
        gold = _gold_spans(row)
        predictions = anonymizer.analyze(row["text"])
        for entity, start, end in gold:
            gold_count[entity] += 1
            if any(
                _group(p.entity) == _group(entity) and p.start < end and start < p.end for p in predictions
            ):
                found[entity] += 1
            else:
                errors.append(f"missed {entity} {row['text'][start:end]!r} in {row['text']!r}")
        for p in predictions:
            predicted[p.entity] += 1
            if any(
                _group(p.entity) == _group(entity) and p.start < end and start < p.end
                for entity, start, end in gold
            ):
                correct[p.entity] += 1
            else:
                errors.append(f"false {p.entity} {p.text!r} in {row['text']!r}")
    recall = {entity: found[entity] / gold_count[entity] for entity in gold_count}
    precision = {entity: correct[entity] / predicted[entity] for entity in predicted}
    overall = sum(correct.values()) / max(sum(predicted.values()), 1)
    lines = [f"{'entity':18} {'recall':>14} {'precision':>14}"]
    for entity in sorted(set(gold_count) | set(predicted)):
        lines.append(
            f"{entity:18} {found[entity]:4}/{gold_count[entity]:<4} {recall.get(entity, 0):.3f} "
            f"{correct[entity]:4}/{predicted[entity]:<4} {precision.get(entity, 0):.3f}"
        )
    lines.append(f"overall precision {overall:.3f}")
    report = "\n".join(lines + errors)
    return recall, precision, predicted, overall, report


def test_corpus_is_big_and_varied_enough(corpus):
    assert len(corpus) >= 200
    assert sum(1 for row in corpus if not row["entities"]) >= 40
    types = Counter(entity["type"] for row in corpus for entity in row["entities"])
    for entity in RECALL_TARGETS:
        assert types[entity] >= 15, types


def test_measured_recall_and_precision_with_ner(ner, corpus):
    recall, precision, predicted, overall, report = _measure(ner, corpus)
    print(report)
    for entity, target in RECALL_TARGETS.items():
        assert recall[entity] >= target, f"{entity} recall {recall[entity]:.3f} < {target}\n{report}"
    assert overall >= PRECISION_TARGET, report
    for entity, value in precision.items():
        if predicted[entity] >= MIN_PREDICTIONS_FOR_TYPE_PRECISION:
            assert value >= PRECISION_TARGET, f"{entity} precision {value:.3f}\n{report}"


def test_fast_path_without_ner_still_finds_structured_pii(fast, corpus):
    recall, _, _, overall, report = _measure(fast, corpus)
    print(report)
    for entity in ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS"):
        assert recall[entity] >= 0.95, f"{entity} recall {recall[entity]:.3f}\n{report}"
    assert overall >= PRECISION_TARGET, report


def test_anonymize_is_idempotent_on_the_corpus(ner, fast, corpus):
    for anonymizer in (ner, fast):
        for row in corpus:
            once = anonymizer.anonymize(row["text"]).text
            assert anonymizer.anonymize(once).text == once, (row["text"], once)


@pytest.mark.parametrize(
    "text, value, placeholder",
    [
        ("Patient Tomasz Chaudhry asked for a copy.", "Tomasz Chaudhry", "[PERSON]"),
        ("Born on 6/07/1991 in a small town.", "6/07/1991", "[DATE]"),
        ("Write to jane.roe@example.com today.", "jane.roe@example.com", "[EMAIL]"),
        ("Call +44 20 7946 0958 after five.", "+44 20 7946 0958", "[PHONE]"),
        ("She moved to Toronto last year.", "Toronto", "[LOCATION]"),
        ("See https://example.com/a/b?c=1 for details.", "https://example.com/a/b?c=1", "[URL]"),
        ("Blocked 203.0.113.42 at the edge.", "203.0.113.42", "[IP_ADDRESS]"),
        ("Blocked 2001:db8::8a2e:370:7334 at the edge.", "2001:db8::8a2e:370:7334", "[IP_ADDRESS]"),
        ("Card 4111-1111-1111-1111 was charged.", "4111-1111-1111-1111", "[CREDIT_CARD]"),
        ("Her SSN is 536-22-1943.", "536-22-1943", "[ID]"),
        ("Send it to IBAN DE89 3704 0044 0532 0130 00 please.", "DE89 3704 0044 0532 0130 00", "[ID]"),
        ("Passport number 912803456 was scanned.", "912803456", "[ID]"),
        ("Driver's licence no. D1234567 on file.", "D1234567", "[ID]"),
        ("Prescriber DEA number BB1388568 is on the form.", "BB1388568", "[ID]"),
    ],
)
def test_each_placeholder(ner, text, value, placeholder):
    result = ner.anonymize(text)
    assert value not in result.text and placeholder in result.text, result
    finding = next(f for f in result.findings if f.text == value)
    assert DEFAULT_PLACEHOLDERS[finding.entity] == placeholder
    assert text[finding.start : finding.end] == finding.text  # findings point into the original text


def test_findings_refer_to_the_original_text(ner):
    text = "Dr. Aisha Bello (aisha@example.org) saw the patient on 2024-03-05 in Lagos."
    result = ner.anonymize(text)
    assert result.text == "Dr. [PERSON] ([EMAIL]) saw the patient on [DATE] in [LOCATION]."
    assert [f.entity for f in result.findings] == ["PERSON", "EMAIL_ADDRESS", "DATE_TIME", "LOCATION"]
    assert all(
        isinstance(f, Finding) and text[f.start : f.end] == f.text and 0 < f.score <= 1
        for f in result.findings
    )


def test_custom_entity_list_only_replaces_those():
    anonymizer = PiiAnonymizer(entities=["EMAIL_ADDRESS", "PHONE_NUMBER"], use_ner=False)
    result = anonymizer.anonymize("Mr. Kofi Mensah, kofi@example.com, (555) 123-4567, 2024-03-05")
    assert result.text == "Mr. Kofi Mensah, [EMAIL], [PHONE], 2024-03-05"
    assert {f.entity for f in result.findings} == {"EMAIL_ADDRESS", "PHONE_NUMBER"}


def test_custom_placeholders():
    anonymizer = PiiAnonymizer(placeholders={"PERSON": "<name>", "EMAIL_ADDRESS": "<email>"}, use_ner=False)
    result = anonymizer.anonymize("Dear Ms. Ingrid Johansson, reply to ingrid@example.se by 05.03.2024.")
    assert result.text == "Dear Ms. <name>, reply to <email> by [DATE]."
    assert anonymizer.anonymize(result.text).text == result.text


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"entities": ["PERSON", "FAVOURITE_COLOUR"]}, "pii_entities"),
        ({"placeholders": {"NOT_AN_ENTITY": "[X]"}}, "pii_placeholders"),
        ({"entities": ["EMAIL_ADDRESS"], "placeholders": {"PERSON": "[P]"}}, "pii_placeholders"),
    ],
)
def test_invalid_arguments(kwargs, param):
    with pytest.raises(InvalidArgument) as caught:
        PiiAnonymizer(use_ner=False, **kwargs)
    assert caught.value.param == param
    if param == "pii_entities":
        assert "FAVOURITE_COLOUR" in caught.value.message


def test_default_entities_all_have_placeholders():
    assert set(DEFAULT_ENTITIES) == set(DEFAULT_PLACEHOLDERS)
    for entity in ("US_SSN", "IBAN_CODE", "US_PASSPORT", "US_DRIVER_LICENSE", "MEDICAL_LICENSE"):
        assert DEFAULT_PLACEHOLDERS[entity] == "[ID]"


def test_use_ner_false_catches_structured_pii(fast):
    text = (
        "ops@example.com called from 555.123.4567 and +49 30 901820, paid with 5555 5555 5555 4444 "
        "from 192.168.1.24 and fe80::1ff:fe23:4567:890a"
    )
    result = fast.anonymize(text)
    assert result.text == (
        "[EMAIL] called from [PHONE] and [PHONE], paid with [CREDIT_CARD] from [IP_ADDRESS] and [IP_ADDRESS]"
    )


def test_text_without_pii_is_unchanged(ner):
    for text in ("May I help you?", "Apple released Python 3.10.2 in 10 minutes.", "", "   "):
        assert ner.anonymize(text).text == text and ner.anonymize(text).findings == ()


def test_anonymize_example_counts_every_text(ner):
    chat = Example(
        line=1,
        messages=(
            {"role": "system", "content": "You are a support agent."},
            {
                "role": "user",
                "content": "I'm Priya Raghunathan, email priya@example.com, card 4111 1111 1111 1111.",
            },
            {"role": "assistant", "content": "Thanks Priya, I have sent the receipt to priya@example.com."},
        ),
    )
    anonymized, counts = ner.anonymize_example(chat)
    assert counts == Counter({"PERSON": 2, "EMAIL_ADDRESS": 2, "CREDIT_CARD": 1})
    assert anonymized.messages[1]["content"] == "I'm [PERSON], email [EMAIL], card [CREDIT_CARD]."
    assert anonymized.messages[2]["content"] == "Thanks [PERSON], I have sent the receipt to [EMAIL]."
    assert anonymized.messages[0] == chat.messages[0] and anonymized.line == 1

    pair = Example(
        line=2,
        messages=({"role": "user", "content": "Who signed?"},),
        preferred="It was signed by Hiroshi Tanaka on 12 January 2023.",
        rejected="I don't know.",
    )
    anonymized, counts = ner.anonymize_example(pair)
    assert counts == Counter({"PERSON": 1, "DATE_TIME": 1})
    assert (
        anonymized.preferred == "It was signed by [PERSON] on [DATE]."
        and anonymized.rejected == "I don't know."
    )

    clean = Example(
        line=3, messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    )
    assert ner.anonymize_example(clean) == (clean, Counter())


def test_one_instance_is_safe_to_share_between_threads(ner, corpus):
    texts = [row["text"] for row in corpus[:80]]
    expected = [ner.anonymize(text) for text in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(ner.anonymize, texts)) == expected


def test_no_network_access_is_attempted(tmp_path):
    """Presidio's e-mail recogniser would make tldextract fetch the public suffix list. In a fresh
    process with an empty cache, an audit hook records (and refuses) every DNS lookup and connect.
    The anonymiser must make none; plain tldextract, the control, does try."""
    script = textwrap.dedent("""
        import sys
        attempts = []
        def hook(event, args):
            if event in ("socket.getaddrinfo", "socket.connect", "socket.gethostbyname"):
                attempts.append(event)
                raise OSError("network disabled in this test")
        sys.addaudithook(hook)

        from services.dataprep.pii import PiiAnonymizer
        for use_ner in (False, True):
            text = PiiAnonymizer(use_ner=use_ner).anonymize(
                "Mail bob@example.co.uk or visit https://shop.example.com/cart now").text
            assert text == "Mail [EMAIL] or visit [URL] now", text
        print("anonymizer attempts", len(attempts))
        assert not attempts, attempts

        import tldextract
        tldextract.TLDExtract(cache_dir=sys.argv[1])("bob@example.co.uk")
        print("control attempts", len(attempts))
        assert attempts, "the audit hook saw no network use by plain tldextract: the test proves nothing"
    """)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "psl")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "anonymizer attempts 0" in completed.stdout


def test_the_context_word_screen_changes_no_finding_or_score(corpus, monkeypatch):
    """Without NER, findings whose recogniser has no context word in the text, or that have the
    maximum score already, skip Presidio's context enhancer (and so the tokenizer); with the
    enhancer on every finding the results are the same."""
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

    screened, plain = PiiAnonymizer(use_ner=False), PiiAnonymizer(use_ner=False)
    plain._analyzer.context_aware_enhancer = LemmaContextAwareEnhancer(context_prefix_count=5, context_suffix_count=1)
    tokenized = Counter()
    for name, anonymizer in (("screened", screened), ("plain", plain)):
        process_text = anonymizer._nlp_engine.process_text

        def counted(text, language, name=name, process_text=process_text):
            tokenized[name] += 1
            return process_text(text, language)

        monkeypatch.setattr(anonymizer._nlp_engine, "process_text", counted)
    texts = [row["text"] for row in corpus] + [
        "Call 020 7946 0958 today.",  # a weak pattern that needs its context word
        "The number 020 7946 0958 is on the invoice.",  # and without one
        "Ring me on 07700 900123, my tel is below.",
        "Born on 5 March 1990, patient Anna Berg was seen by Dr. Omar Novak.",
        "I paid with the card 4111 1111 1111 1111 so please check that one.",  # at the maximum score
        "Visa card 4111-1111-1111-1111, call 020 7946 0958.",
        "Hi there. Thanks, Wei Chen (phone 555-123-4567). Please call me back on +1 650 253 0000.",
        "My name is Anna Smith and the account is under my name; the payment went out on March 5, 2024.",
        "Dear Omar Novak, your appointment date is 2024-03-05. Reply by text or ring 07700 900123.",
    ]
    assert [screened.analyze(text) for text in texts] == [plain.analyze(text) for text in texts]
    assert 0 < tokenized["screened"] < tokenized["plain"], tokenized  # the screen did skip some


def test_the_tokenizer_engine_remembers_the_vocabularys_flags(fast, corpus):
    """Stop-word and punctuation flags, remembered per lemma, are the vocabulary's."""
    engine = fast._nlp_engine
    vocab = engine.nlp["en"].vocab
    lemmas = {lemma for row in corpus for lemma in engine.process_text(row["text"], "en").lemmas}
    lemmas |= {"the", "The", "THE", ".", "...", "-", "be", "", " ", "\n"}
    for _ in range(2):  # read from the vocabulary, then from the memo
        assert [engine.is_stopword(w, "en") for w in sorted(lemmas)] == [vocab[w].is_stop for w in sorted(lemmas)]
        assert [engine.is_punct(w, "en") for w in sorted(lemmas)] == [vocab[w].is_punct for w in sorted(lemmas)]


def test_the_analyzers_shortcuts_change_nothing(fast, corpus):
    """The registry that remembers its selection and the analyzer that skips enhancing no findings
    give what Presidio's own registry and analyzer give, in the same order."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in fast._analyzer.registry.recognizers:
        registry.add_recognizer(recognizer)
    plain = AnalyzerEngine(
        registry=registry,
        nlp_engine=fast._nlp_engine,
        supported_languages=["en"],
        context_aware_enhancer=fast._analyzer.context_aware_enhancer,
    )
    entities = fast._query_entities
    assert fast._analyzer.registry.get_recognizers("en", entities) == registry.get_recognizers("en", entities)
    texts = [row["text"] for row in corpus] + ["No findings here at all.", "Call 020 7946 0958 today."]

    def analyzed(analyzer):
        return [
            [(r.entity_type, r.start, r.end, r.score) for r in analyzer.analyze(t, "en", entities, score_threshold=0.5)]
            for t in texts
        ]

    assert analyzed(fast._analyzer) == analyzed(plain)


def test_screens_skipped_for_too_few_digits_change_nothing(fast, corpus):
    """Without NER, a text is screened only by the recognisers whose screens its digits allow; with
    every text sent to Presidio the findings are the same. Each recogniser's `MIN_DIGITS` is its
    screen's: no text with fewer digits passes it."""
    from services.dataprep import pii_recognizers as rec
    from tests.dataprep.test_pii_recognizers import TICKETS, _texts

    texts = [row["text"] for row in corpus] + TICKETS + _texts()[-3000:]
    texts += ["IP ::1 and fe80::1", "On March 5 at 10:30", "a.b.co", "x@y.io", "Dear Anna Smith", "9 or 12 digits"]
    unscreened = PiiAnonymizer(use_ner=False)
    unscreened._screens = None
    assert [fast._analyze(text) for text in texts] == [unscreened._analyze(text) for text in texts]
    for recognizer in fast._analyzer.registry.recognizers:
        for text in texts:
            if rec.digit_count(text) < recognizer.MIN_DIGITS:
                assert not recognizer.could_match(text), (recognizer.name, text)


def test_the_tokenizer_engine_remembers_each_lemmas_keywords(fast, corpus):
    """The keywords of a tokenized text, remembered per lemma, are Presidio's for the whole text."""
    from presidio_analyzer.nlp_engine import NlpArtifacts

    engine = fast._nlp_engine
    texts = [row["text"] for row in corpus] + ["Be the -PRON- a:b:c, mr.:x ... IS be: BE", ""]
    for _ in range(2):  # computed, then remembered
        for text in texts:
            artifacts = engine.process_text(text, "en")
            assert artifacts.keywords == NlpArtifacts.set_keywords(engine, artifacts.lemmas, "en"), text
