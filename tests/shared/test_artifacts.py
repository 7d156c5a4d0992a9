import hashlib
from pathlib import Path

import pytest

from services.shared.artifacts import ArtifactStore
from services.shared.errors import InvalidArgument, NotFound


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def test_put_stream_names_the_blob_by_its_digest(store: ArtifactStore) -> None:
    chunks = [b"hello ", b"world", b""]
    artifact = store.put_stream(iter(chunks))
    expected = hashlib.sha256(b"hello world").hexdigest()
    assert artifact.sha256 == expected
    assert artifact.size == 11
    assert store.path(expected) == store.root / "sha256" / expected[:2] / expected[2:]
    with store.open(expected) as handle:
        assert handle.read() == b"hello world"
    assert list(store.iter_chunks(expected, chunk_size=4)) == [b"hell", b"o wo", b"rld"]


def test_storing_the_same_content_twice_is_a_no_op(store: ArtifactStore) -> None:
    first = store.put_bytes(b"same")
    mtime = store.path(first.sha256).stat().st_mtime_ns
    second = store.put_stream([b"sa", b"me"])
    assert second == first
    assert store.path(first.sha256).stat().st_mtime_ns == mtime
    assert list((store.root / "tmp").iterdir()) == []


def test_empty_content_is_a_blob_too(store: ArtifactStore) -> None:
    artifact = store.put_bytes(b"")
    assert artifact.size == 0
    assert store.exists(artifact.sha256)


def test_a_failing_stream_leaves_nothing_behind(store: ArtifactStore) -> None:
    def broken():
        yield b"partial"
        raise OSError("client went away")

    with pytest.raises(OSError):
        store.put_stream(broken())
    assert list((store.root / "tmp").iterdir()) == []
    assert not (store.root / "sha256").exists() or not any((store.root / "sha256").rglob("*"))


def test_delete(store: ArtifactStore) -> None:
    artifact = store.put_bytes(b"gone soon")
    assert store.delete(artifact.sha256) is True
    assert not store.exists(artifact.sha256)
    assert store.delete(artifact.sha256) is False


def test_unknown_digest_is_not_found_and_named(store: ArtifactStore) -> None:
    digest = "ab" * 32
    for call in (store.open, store.path, store.iter_chunks):
        with pytest.raises(NotFound, match=digest):
            call(digest)
    assert not store.exists(digest)


@pytest.mark.parametrize(
    "digest", ["../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "/etc/passwd", "a" * 62 + "/x", ""]
)
def test_malformed_digest_never_becomes_a_path(store: ArtifactStore, digest: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        store.open(digest)
    assert caught.value.param == "sha256"
    with pytest.raises(InvalidArgument):
        store.exists(digest)
    with pytest.raises(InvalidArgument):
        store.delete(digest)
