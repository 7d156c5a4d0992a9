"""Duplicates and conflicting labels: exact copies, near-duplicates (MinHash + LSH), same prompt / other answer.

All three compare *folded* text: NFKC, case-folded, runs of whitespace collapsed to one space, so
"Hello  World" and "hello world" are the same. Folding is only for comparing; examples keep their
text.

Memory is bounded per example, not per character: the exact index keeps a 16-byte digest per
distinct example, the near-duplicate index one MinHash signature (num_perm 32-bit values in one
matrix) plus one 64-bit key per LSH band per kept example, and the conflict detector a prompt digest, an
output digest and the first answer (at most 500 characters) per distinct prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH
from datasketch import minhash as _minhash  # its permutation scheme, for MinHasher.signatures

from services.dataprep.examples import Example
from services.shared.errors import InvalidArgument

_TOKEN = re.compile(r"\w+")
# For ASCII text, what `_TOKEN` reads as words are the runs of [A-Za-z0-9_]: every other ASCII
# character becomes a space, and `split` then gives the same words about twice as fast. On the
# encoded text: bytes.translate reads a table where str.translate looks each character up in a dict.
_ASCII_NON_WORD = bytes(c for c in range(128) if not (chr(c).isalnum() or chr(c) == "_"))
_ASCII_NON_WORD_TO_SPACE = bytes.maketrans(_ASCII_NON_WORD, b" " * len(_ASCII_NON_WORD))
_KEEP_CHARS = 500


def fold(text: str) -> str:
    """The comparison form of a text: NFKC, case-folded, whitespace runs collapsed, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def record_digest(ex: Example) -> bytes:
    """16 bytes, equal for examples that are exact duplicates up to case and spacing."""
    # Everything `Example.to_record()` writes (so two rows are duplicates exactly when they would
    # give the same training record up to case and spacing). Label and slice are part of it: two
    # rows that differ only in label are a labelling question for a person, not a copy to drop.
    # `corrected` is not: it marks an example for evaluation and changes nothing that is trained.
    messages = [sorted((k, fold(v) if k == "content" else v) for k, v in m.items()) for m in ex.messages]
    parts = [ex.kind, messages]
    if ex.kind == "preference":
        parts += [fold(ex.preferred or ""), fold(ex.rejected or "")]
    parts += [ex.label and fold(ex.label), ex.slice and fold(ex.slice)]
    return _digest(json.dumps(parts, ensure_ascii=False, separators=(",", ":")))


def content_key(ex: Example) -> str:
    """Hex key of the folded example: equal for exact duplicates (up to case and spacing)."""
    return record_digest(ex).hex()


class ExactDeduplicator:
    """Remembers a 16-byte digest (and the line) of every distinct example it has seen."""

    def __init__(self) -> None:
        self._lines: dict[bytes, int] = {}

    def first_seen(self, ex: Example) -> int | None:
        """The line of an earlier copy of `ex`, or None (and `ex` is remembered) if it is new."""
        return self.first_seen_digest(record_digest(ex), ex.line)

    def first_seen_digest(self, digest: bytes, line: int) -> int | None:
        """`first_seen` for an example whose `record_digest` is already computed."""
        earlier = self._lines.get(digest)
        if earlier is None:
            self._lines[digest] = line
        return earlier

    def __len__(self) -> int:
        return len(self._lines)


def example_text(ex: Example) -> str:
    """The full text of an example as the near-duplicate index reads it (every text, in order)."""
    return "\n".join(ex.texts())


def word_bytes(text: str) -> list[bytes]:
    """The runs of word characters (`_TOKEN.findall(text)`), each as UTF-8."""
    if text.isascii():
        return text.encode().translate(_ASCII_NON_WORD_TO_SPACE).split()
    return [word.encode() for word in _TOKEN.findall(text)]


class MinHasher:
    """MinHash signatures of texts over word n-gram shingles: datasketch's `MinHash` values, computed
    for many texts at once.

    `signatures` hashes a few dozen texts' shingles in one numpy pass (datasketch's own permutation
    scheme and the same numbers as `MinHash.update_batch`, checked by a test) instead of one
    `MinHash` object per text: 27 us instead of 68 us per 60-word text, measured in
    bench/dataprep.py (since then ~26 us per ~80-word example: the permuted values are laid out
    per permutation, and shingles are joined as bytes). Shingles are hashed with CRC-32 instead of datasketch's SHA-1 (7x cheaper per
    shingle, same estimator accuracy in our measurement: datasketch mixes every value with
    murmur3's finaliser before permuting).
    """

    # Shingles whose hashes are permuted in one array (at least; a text's shingles stay together):
    # enough that numpy's per-call work is small beside the arithmetic, few enough that the array
    # (4 bytes x num_perm per shingle) stays small.
    CHUNK_SHINGLES = 8192

    def __init__(self, shingle_size: int = 2, num_perm: int = 128, seed: int = 1):
        if shingle_size < 1:
            raise InvalidArgument(
                f"shingle_size must be at least 1, got {shingle_size}", param="shingle_size"
            )
        if num_perm < 16:
            raise InvalidArgument(f"num_perm must be at least 16, got {num_perm}", param="num_perm")
        self.shingle_size = shingle_size
        self.num_perm = num_perm
        self.seed = seed
        self._template = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
        self._scheme_width = _minhash._SCHEME_WIDTHS[self._template.scheme]

    def shingles(self, text: str) -> list[bytes]:
        """The word n-grams of the folded text, as UTF-8 bytes."""
        # Joined as bytes: the UTF-8 of the words joined by spaces, without encoding each shingle.
        tokens = word_bytes(unicodedata.normalize("NFKC", text).casefold())
        k = self.shingle_size
        if len(tokens) <= k:
            return [b" ".join(tokens)]
        if k == 1:
            return tokens
        if k == 2:
            return [first + b" " + second for first, second in zip(tokens, tokens[1:], strict=False)]
        return [b" ".join(gram) for gram in zip(*(tokens[i:] for i in range(k)), strict=False)]

    def signature(self, text: str) -> LeanMinHash:
        """The MinHash of one text, as datasketch computes it."""
        m = self._template.copy()
        m.update_batch(self.shingles(text))
        return LeanMinHash(m)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """One row of hash values per text: `signature(text).hashvalues`, for many texts at once."""
        rows = []
        shingled: list[list[bytes]] = []
        pending = 0
        for text in texts:
            shingled.append(self.shingles(text))
            pending += len(shingled[-1])
            if pending >= self.CHUNK_SHINGLES:
                rows.append(self._minima(shingled))
                shingled, pending = [], 0
        if shingled:
            rows.append(self._minima(shingled))
        if not rows:
            return np.empty((0, self.num_perm), dtype=self._template.hashvalues.dtype)
        return np.concatenate(rows).astype(self._template.hashvalues.dtype, copy=False)

    def _minima(self, shingled: list[list[bytes]]) -> np.ndarray:
        """[texts x num_perm]: the least permuted hash of each text's shingles, per permutation."""
        a, b = (values.reshape(-1, 1) for values in self._template.permutations)
        hashes = [zlib.crc32(shingle) for shingles in shingled for shingle in shingles]
        mixed = _minhash._fmix(self._template._hash_input_array(hashes), self._scheme_width)
        offsets = np.cumsum([0] + [len(shingles) for shingles in shingled[:-1]])
        # [num_perm x shingles]: a permutation's values of one text lie side by side, so the
        # minimum reads contiguous memory (3x faster than [shingles x num_perm]).
        permuted = mixed * a
        permuted += b
        return np.minimum.reduceat(permuted, offsets, axis=1).T


class NearDuplicateIndex:
    """Near-duplicates by MinHash over word n-gram shingles, found with LSH banding and verified.

    Signatures come from a `MinHasher` (datasketch `MinHash` values). The LSH index is ours, with
    datasketch's band / row choice: a `MinHashLSH` keeps a Python set per bucket and a key table
    (4.5 KB per kept example at 128 permutations, 436 MiB for 100,000 examples), while an
    int-keyed dict per band plus one row of a uint32 matrix per signature costs 1.4 KB (125 MiB)
    and is 1.75x faster, with the same answers.

    Defaults, measured on ~40-word chat examples (see tests/dataprep/test_dedup.py):

    - `shingle_size=2` (word bigrams), not 3: the threshold is a Jaccard similarity of shingle
      sets, and one changed word in an n-word text changes k shingles, so its Jaccard is
      (n-2k+1)/(n+1). At 0.85 and n=30 that is 0.87 for bigrams (found) but 0.81 for trigrams
      (missed); with trigrams a one-word edit is only caught from about 40 words up. Bigrams keep
      word order ("the cat chased the dog" / "the dog chased the cat" stay apart), which unigrams
      (bag of words) would not.
    - `num_perm=128`: the standard error of the estimated Jaccard is sqrt(J(1-J)/num_perm), 0.03
      at J=0.87; 64 doubles the variance for a small saving (hashing is not the bottleneck).
    - Bands are chosen with false-negative weight 0.9 (11 bands x 11 rows at 128): banding is only
      a candidate filter and every candidate is verified by estimated Jaccard >= threshold, so it
      should miss few true pairs (P(candidate) 0.87 at J=0.85, 0.98 at J=0.9) while still keeping
      unrelated pairs out (0.5% at J=0.5).

    Texts of at most `shingle_size` words are one shingle of all their words. A text that is a
    near-duplicate of a kept one is not added, so memory grows with the kept examples only.
    Signatures can be computed elsewhere (in worker processes) with an equal `MinHasher` and
    given to `add_or_match_signatures`.
    """

    def __init__(self, threshold: float = 0.85, shingle_size: int = 2, num_perm: int = 128, seed: int = 1):
        if not 0.0 < threshold <= 1.0:
            raise InvalidArgument(f"threshold must be in (0, 1], got {threshold}", param="threshold")
        self.hasher = MinHasher(shingle_size, num_perm, seed)
        self.threshold = threshold
        self.num_perm = num_perm
        # datasketch's optimiser picks bands x rows; weights favour recall (candidates are verified).
        params = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
        self.bands, self.rows = params.b, params.r
        # A band's rows become one 64-bit key by a random multilinear hash (odd coefficients). Two
        # different bands colliding only adds a candidate, which verification then rejects.
        rng = np.random.default_rng(seed)
        self._coefficients = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self._buckets: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self._signatures = np.empty((1024, num_perm), dtype=np.uint32)
        self._keys = array("q")

    def shingles(self, text: str) -> list[bytes]:
        return self.hasher.shingles(text)

    def signature(self, text: str) -> LeanMinHash:
        return self.hasher.signature(text)

    def _band_keys(self, signatures: np.ndarray) -> list[list[int]]:
        bands = signatures[:, : self.bands * self.rows].reshape(len(signatures), self.bands, self.rows)
        return (bands.astype(np.uint64) * self._coefficients).sum(axis=2, dtype=np.uint64).tolist()

    def _match(self, signature: np.ndarray, band_keys: list[int]) -> int | None:
        candidates: set[int] = set()
        for bucket, band_key in zip(self._buckets, band_keys, strict=True):
            found = bucket.get(band_key)
            if found is None:
                continue
            if type(found) is int:
                candidates.add(found)
            else:
                candidates.update(found)
        if not candidates:
            return None
        rows = np.fromiter(sorted(candidates), dtype=np.int64, count=len(candidates))
        similarity = np.count_nonzero(self._signatures[rows] == signature, axis=1) / self.num_perm
        best = int(np.argmax(similarity))  # the most similar; the earliest kept on a tie
        return self._keys[rows[best]] if similarity[best] >= self.threshold else None

    def _insert(self, key: int, signature: np.ndarray, band_keys: list[int]) -> None:
        row = len(self._keys)
        if row == len(self._signatures):
            self._signatures = np.concatenate([self._signatures, np.empty_like(self._signatures)])
        self._signatures[row] = signature
        self._keys.append(key)
        for bucket, band_key in zip(self._buckets, band_keys, strict=True):
            found = bucket.get(band_key)
            if found is None:
                bucket[band_key] = row
            elif type(found) is int:
                bucket[band_key] = [found, row]
            else:
                found.append(row)

    def add_or_match_signatures(self, keys: Sequence[int], signatures: np.ndarray) -> list[int | None]:
        """For each key in order: the key of a kept near-duplicate (the most similar one), or None
        after adding it. `signatures` has one row per key, from an equal `MinHasher`."""
        if len(keys) != len(signatures) or (len(keys) and signatures.shape[1] != self.num_perm):
            raise ValueError(f"{len(keys)} keys need {len(keys)} signatures of {self.num_perm} values")
        results: list[int | None] = []
        for key, signature, band_keys in zip(keys, signatures, self._band_keys(signatures), strict=True):
            match = self._match(signature, band_keys)
            if match is None:
                self._insert(key, signature, band_keys)
            results.append(match)
        return results

    def add_or_match(self, key: int, text: str) -> int | None:
        """The key of a kept near-duplicate of `text` (the most similar one), or None after adding it."""
        return self.add_or_match_signatures([key], self.hasher.signatures([text]))[0]

    def add_or_match_many(self, items: list[tuple[int, str]]) -> list[int | None]:
        """`add_or_match` for each item in order (an item can match an earlier one of the batch)."""
        if not items:
            return []
        signatures = self.hasher.signatures([text for _, text in items])
        return self.add_or_match_signatures([key for key, _ in items], signatures)

    def __len__(self) -> int:
        """How many texts are kept (added rather than matched)."""
        return len(self._keys)


@dataclass(frozen=True)
class Conflict:
    """One prompt with different answers: the prompt, each distinct answer, every line it is on."""

    prompt: str
    outputs: list[str]
    lines: list[int]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "outputs": list(self.outputs), "lines": list(self.lines)}


@dataclass
class _Group:
    prompt: str
    outputs: dict[bytes, str]
    lines: list[int]


# What ConflictDetector keeps of an example: the digests of its folded prompt and output, and the
# first _KEEP_CHARS characters of its prompt text and output.
ConflictKey = tuple[bytes, bytes, str, str]


def conflict_key(ex: Example) -> ConflictKey:
    prompt = ex.prompt_text()
    output = ex.output
    return _digest(fold(prompt)), _digest(fold(output)), prompt[:_KEEP_CHARS], output[:_KEEP_CHARS]


class ConflictDetector:
    """Examples with the same folded prompt but different folded outputs (conflicting labels).

    Per distinct prompt it keeps the prompt digest, the first output's digest, line and text (at
    most 500 characters); prompts seen more than once become a group that also keeps the prompt
    text (as written on the second line that has it), each distinct output and every line.
    """

    def __init__(self) -> None:
        self._first: dict[bytes, tuple[bytes, int, str]] = {}
        self._groups: dict[bytes, _Group] = {}

    def add(self, ex: Example) -> None:
        self.add_key(conflict_key(ex), ex.line)

    def add_key(self, key: ConflictKey, line: int) -> None:
        """`add` for an example whose `conflict_key` is already computed (in a worker process)."""
        prompt_digest, output_digest, prompt, output = key
        group = self._groups.get(prompt_digest)
        if group is not None:
            group.outputs.setdefault(output_digest, output)
            group.lines.append(line)
            return
        first = self._first.get(prompt_digest)
        if first is None:
            self._first[prompt_digest] = (output_digest, line, output)
            return
        first_digest, first_line, first_output = self._first.pop(prompt_digest)
        outputs = {first_digest: first_output}
        outputs.setdefault(output_digest, output)
        self._groups[prompt_digest] = _Group(prompt, outputs, [first_line, line])

    def conflicts(self) -> list[Conflict]:
        """Every prompt with two or more distinct outputs, in order of its first line."""
        found = [
            Conflict(prompt=g.prompt, outputs=list(g.outputs.values()), lines=list(g.lines))
            for g in self._groups.values()
            if len(g.outputs) > 1
        ]
        return sorted(found, key=lambda c: c.lines[0])
