"""Exact duplicates, near-duplicates (MinHash + LSH) and conflicting labels."""

import random
import re
import unicodedata
import zlib

import pytest

from services.dataprep.dedup import (
    Conflict,
    ConflictDetector,
    ExactDeduplicator,
    MinHasher,
    NearDuplicateIndex,
    content_key,
    example_text,
    word_bytes,
)
from services.dataprep.examples import Example
from services.shared.errors import InvalidArgument

THIRTY_WORDS = (
    "the quarterly report shows that revenue in the northern region grew by twelve percent while costs "
    "stayed flat because the new warehouse opened early and shipping deals were renegotiated again"
)


def chat(line, user, answer, label=None, system=None):
    messages = ({"role": "system", "content": system},) if system else ()
    messages += ({"role": "user", "content": user}, {"role": "assistant", "content": answer})
    return Example(line=line, messages=messages, label=label)


@pytest.mark.parametrize("shingle_size,num_perm", [(2, 128), (1, 64), (3, 256)])
def test_batched_signatures_are_datasketchs_minhash_values(shingle_size, num_perm):
    from datasketch import MinHash

    rng = random.Random(shingle_size)
    vocab = [f"w{i}" for i in range(300)] + ["Ünïcode", "ﬁne", "ß"]
    texts = ["", "  ", "one", "two words"] + [random_text(rng, rng.randint(1, 90), vocab) for _ in range(150)]
    hasher = MinHasher(shingle_size=shingle_size, num_perm=num_perm, seed=7)
    batched = hasher.signatures(texts)
    assert batched.shape == (len(texts), num_perm)
    hasher.CHUNK_SHINGLES = 100  # many chunks, cut after a text
    assert (hasher.signatures(texts) == batched).all()
    for row, text in zip(batched, texts, strict=True):
        reference = MinHash(num_perm=num_perm, seed=7, hashfunc=zlib.crc32)
        reference.update_batch(hasher.shingles(text))
        assert (row == reference.hashvalues).all()
        assert (row == hasher.signature(text).hashvalues).all()
    assert hasher.signatures([]).shape == (0, num_perm)


def random_text(rng, words, vocab):
    return " ".join(rng.choice(vocab) for _ in range(words))


@pytest.fixture(scope="module")
def vocab():
    rng = random.Random(7)
    return [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
        for _ in range(5000)
    ]


# -- exact -------------------------------------------------------------------------------------


def test_content_key_ignores_case_and_spacing_only():
    a = chat(1, "What is  the capital of France?", "Paris.")
    assert content_key(a) == content_key(chat(2, "what is the CAPITAL of france?\n", "  paris."))
    assert content_key(a) == content_key(chat(3, "What is the capital of France?", "Ｐａｒｉｓ."))  # NFKC
    assert content_key(a) != content_key(chat(4, "What is the capital of France?", "Paris!"))
    assert content_key(a) != content_key(chat(5, "What is the capital of France?", "Paris.", label="geo"))
    assert content_key(a) != content_key(
        chat(6, "What is the capital of France?", "Paris.", system="Be brief.")
    )
    # Text cannot leak from one field into the next.
    assert content_key(chat(7, "a b", "c")) != content_key(chat(8, "a", "b c"))
    assert len(content_key(a)) == 32  # 16 bytes, hex


def test_content_key_preference_pairs():
    prompt = ({"role": "user", "content": "Say hi"},)
    a = Example(line=1, messages=prompt, preferred="Hi!", rejected="No.")
    assert content_key(a) == content_key(Example(line=2, messages=prompt, preferred="hi!", rejected="no."))
    assert content_key(a) != content_key(Example(line=3, messages=prompt, preferred="No.", rejected="Hi!"))


def test_exact_deduplicator_returns_line_of_first_copy():
    dedup = ExactDeduplicator()
    assert dedup.first_seen(chat(1, "Hi", "Hello")) is None
    assert dedup.first_seen(chat(2, "Bye", "Goodbye")) is None
    assert dedup.first_seen(chat(3, "hi ", "hello")) == 1
    assert dedup.first_seen(chat(4, "HI", "HELLO")) == 1
    assert dedup.first_seen(chat(5, "bye", "goodbye")) == 2
    assert len(dedup) == 2


# -- near --------------------------------------------------------------------------------------


def test_one_changed_word_in_thirty_is_a_near_duplicate():
    assert len(THIRTY_WORDS.split()) == 30
    words = THIRTY_WORDS.split()
    words[15] = "rose"  # a word in the middle changes two bigrams: true Jaccard 27/31 = 0.87
    index = NearDuplicateIndex(threshold=0.85)
    assert index.add_or_match(10, THIRTY_WORDS) is None
    assert index.add_or_match(11, " ".join(words)) == 10
    assert index.add_or_match(12, THIRTY_WORDS.upper() + "!") == 10  # case and punctuation do not count
    assert len(index) == 1


def test_distinct_texts_are_not_matched(vocab):
    rng = random.Random(1)
    index = NearDuplicateIndex()
    results = index.add_or_match_many([(i, random_text(rng, 40, vocab)) for i in range(500)])
    assert results == [None] * 500
    related = (
        "the quarterly report shows that revenue in the southern region fell by three percent as costs rose"
    )
    assert index.add_or_match(1000, THIRTY_WORDS) is None
    assert index.add_or_match(1001, related) is None  # shares words and phrases, but Jaccard ~0.2


def test_word_order_matters():
    index = NearDuplicateIndex()
    assert (
        index.add_or_match(1, "translate: the cat chased the dog around the old red barn -> le chat") is None
    )
    assert (
        index.add_or_match(2, "translate: the dog chased the cat around the old red barn -> le chat") is None
    )


def test_recall_of_one_word_edits_in_forty_word_texts(vocab):
    # The benchmark's text length: one changed word gives true Jaccard 37/41 = 0.90.
    rng = random.Random(3)
    index = NearDuplicateIndex()
    found = 0
    for i in range(100):
        words = random_text(rng, 40, vocab).split()
        assert index.add_or_match(2 * i, " ".join(words)) is None
        words[rng.randrange(40)] = "changed"
        found += index.add_or_match(2 * i + 1, " ".join(words)) == 2 * i
    assert found >= 90


def test_short_and_empty_texts_are_one_shingle():
    index = NearDuplicateIndex(shingle_size=3)
    assert index.shingles("Hello there") == [b"hello there"]
    assert index.shingles("") == [b""]
    assert index.shingles("a b c d") == [b"a b c", b"b c d"]
    assert index.add_or_match(1, "Hello there") is None
    assert index.add_or_match(2, "hello, THERE") == 1
    assert index.add_or_match(3, "Hello where") is None
    assert index.add_or_match(4, "") is None
    assert index.add_or_match(5, "  ") == 4


def test_batched_equals_one_by_one(vocab):
    rng = random.Random(5)
    items = []
    for key in range(400):
        if items and rng.random() < 0.3:  # a near copy of an earlier item, often in the same batch
            words = rng.choice(items)[1].split()
            words[rng.randrange(len(words))] = random_text(rng, 1, vocab)
            items.append((key, " ".join(words)))
        else:
            items.append((key, random_text(rng, rng.randint(1, 60), vocab)))
    one_by_one = NearDuplicateIndex()
    expected = [one_by_one.add_or_match(key, text) for key, text in items]
    batched = NearDuplicateIndex()
    got = []
    for start in range(0, len(items), 64):
        got += batched.add_or_match_many(items[start : start + 64])
    assert got == expected
    assert sum(match is not None for match in got) > 50
    within_batch = [(k, m) for k, m in enumerate(got) if m is not None and m // 64 == k // 64]
    assert within_batch  # matches inside one batch count
    assert batched.add_or_match_many([]) == []


def test_most_similar_kept_text_is_returned(vocab):
    rng = random.Random(11)
    base = random_text(rng, 80, vocab).split()  # 79 bigrams
    far = random_text(rng, 16, vocab).split() + base[16:]  # Jaccard with base 62/96 = 0.65
    close = base[:76] + random_text(rng, 4, vocab).split()  # 74/84 = 0.88 (and 57/101 = 0.56 with far)
    index = NearDuplicateIndex(threshold=0.6, num_perm=512)
    assert index.add_or_match(1, " ".join(far)) is None
    assert index.add_or_match(2, " ".join(close)) is None
    assert index.add_or_match(3, " ".join(base)) == 2


def test_example_text_reads_every_text():
    ex = Example(line=1, messages=({"role": "user", "content": "q"},), preferred="good", rejected="bad")
    assert example_text(ex) == "q\ngood\nbad"


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0}, {"threshold": 1.5}, {"shingle_size": 0}, {"num_perm": 8}]
)
def test_invalid_parameters(kwargs):
    with pytest.raises(InvalidArgument) as err:
        NearDuplicateIndex(**kwargs)
    assert err.value.param == next(iter(kwargs))


# -- conflicts ---------------------------------------------------------------------------------


def test_conflicting_answers_to_the_same_prompt():
    detector = ConflictDetector()
    detector.add(chat(1, "Is this review positive? Great phone", "positive"))
    detector.add(chat(2, "Tell me a joke", "No."))
    detector.add(chat(3, "is this review positive?  great PHONE", "negative"))
    detector.add(chat(4, "Is this review positive? Great phone", "Positive"))  # same output, folded
    detector.add(chat(5, "Tell me a joke", "no."))  # duplicate, not a conflict
    detector.add(chat(6, "Translate: cat", "chat"))
    detector.add(chat(7, "Translate: cat", "chat", system="You translate to French."))  # other prompt
    assert detector.conflicts() == [
        Conflict(
            prompt="user: is this review positive?  great PHONE",  # as written where the conflict appeared
            outputs=["positive", "negative"],
            lines=[1, 3, 4],
        )
    ]


def test_conflicts_are_ordered_and_truncated():
    detector = ConflictDetector()
    long_answer = "x" * 2000
    detector.add(chat(1, "b", "one"))
    detector.add(chat(2, "a", long_answer))
    detector.add(chat(3, "a", "two"))
    detector.add(chat(4, "b", "three"))
    detector.add(chat(5, "a", "four"))
    conflicts = detector.conflicts()
    assert [c.lines for c in conflicts] == [[1, 4], [2, 3, 5]]
    assert conflicts[1].outputs == ["x" * 500, "two", "four"]
    assert conflicts[0].to_dict() == {"prompt": "user: b", "outputs": ["one", "three"], "lines": [1, 4]}
    assert ConflictDetector().conflicts() == []


def _first_words(text: str) -> list[bytes]:
    return [word.encode() for word in re.findall(r"\w+", text)]


def test_words_are_the_word_pattern_s_runs():
    """The ASCII shortcut of `word_bytes` reads the same words as the \\w+ pattern, on every ASCII
    character (controls, separators, punctuation) and on text that is not ASCII."""
    rng = random.Random(7)
    ascii_chars = [chr(c) for c in range(128)]
    others = ["é", "ß", "東", "\u00a0", "\u2028", "١", "_", "İ"]
    for _ in range(20_000):
        text = "".join(rng.choice(ascii_chars) for _ in range(rng.randrange(30)))
        assert word_bytes(text) == _first_words(text), repr(text)
        mixed = text + rng.choice(others) + text[::-1]
        assert word_bytes(mixed) == _first_words(mixed), repr(mixed)


@pytest.mark.parametrize("shingle_size", [1, 2, 3])
def test_shingles_are_the_folded_words_joined_then_encoded(shingle_size):
    """Shingles joined as bytes are the first form's: the folded text's words, joined, encoded."""
    rng = random.Random(shingle_size)
    chars = [chr(c) for c in range(128)] + ["é", "ß", "東", "\u00a0", "ﬁ", "İ", "Ⅻ"]
    hasher = MinHasher(shingle_size=shingle_size)
    for _ in range(5_000):
        text = "".join(rng.choice(chars) for _ in range(rng.randrange(40)))
        tokens = re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold())
        if len(tokens) <= shingle_size:
            first = [" ".join(tokens).encode()]
        else:
            grams = zip(*(tokens[i:] for i in range(shingle_size)), strict=False)
            first = [" ".join(gram).encode() for gram in grams]
        assert hasher.shingles(text) == first, repr(text)
