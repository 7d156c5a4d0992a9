"""Content-addressed blob store: uploaded files, datasets and adapters, named by their sha256.

Naming a blob by its digest makes writes idempotent (the same bytes land on the same path) and
lets any process verify what it reads. A blob is streamed to a temporary file on the same
filesystem, flushed to disk, then renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.shared.errors import InvalidArgument, NotFound

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class Artifact:
    sha256: str
    size: int


def validate_digest(sha256: str) -> str:
    """Refuse anything but 64 lower-case hex digits: a digest becomes a path, so it must not
    carry separators or '..'."""
    if not isinstance(sha256, str) or not _DIGEST.match(sha256):
        raise InvalidArgument(
            f"sha256 {sha256!r} is not a digest: expected 64 lower-case hex characters", param="sha256"
        )
    return sha256


class ArtifactStore:
    """Blobs under `root/sha256/<first two hex>/<remaining 62 hex>`.

    Calls block on disk I/O; async callers run them in a thread (`asyncio.to_thread`).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self._blobs = self.root / "sha256"
        # Temporary files live beside the blobs so the final rename never crosses filesystems.
        self._tmp = self.root / "tmp"

    def _blob_path(self, sha256: str) -> Path:
        validate_digest(sha256)
        return self._blobs / sha256[:2] / sha256[2:]

    def writer(self) -> ArtifactWriter:
        """A blob written piece by piece (for example from an upload stream), then committed."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        return ArtifactWriter(self)

    def put_stream(self, chunks: Iterable[bytes]) -> Artifact:
        """Store a stream of bytes; storing content that is already there changes nothing."""
        writer = self.writer()
        try:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()
        finally:
            writer.abort()

    def put_bytes(self, data: bytes) -> Artifact:
        return self.put_stream([data])

    def exists(self, sha256: str) -> bool:
        return self._blob_path(sha256).is_file()

    def path(self, sha256: str) -> Path:
        """The blob's file, for readers that need a path (for example a dataset loader)."""
        path = self._blob_path(sha256)
        if not path.is_file():
            raise NotFound(f"artifact sha256:{sha256} not found", param="sha256")
        return path

    def open(self, sha256: str) -> BinaryIO:
        path = self._blob_path(sha256)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"artifact sha256:{sha256} not found", param="sha256") from None

    def iter_chunks(self, sha256: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """Stream a blob. The file is opened now, so a missing blob raises here, not on first
        iteration."""
        if chunk_size <= 0:
            raise InvalidArgument(f"chunk_size must be positive, got {chunk_size}", param="chunk_size")
        handle = self.open(sha256)
        return _read_chunks(handle, chunk_size)

    def delete(self, sha256: str) -> bool:
        """Remove a blob; returns False when it was not there (deleting twice is not an error)."""
        try:
            self._blob_path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True


class ArtifactWriter:
    """Hashes and spools bytes to a temporary file; `commit` moves it into place under its digest."""

    def __init__(self, store: ArtifactStore):
        self._store = store
        self._digest = hashlib.sha256()
        self.size = 0
        fd, name = tempfile.mkstemp(dir=store._tmp, prefix="put-")
        self._file = os.fdopen(fd, "wb")
        self._tmp_path = Path(name)
        self._done = False

    def write(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self.size += len(chunk)
        self._file.write(chunk)

    def commit(self) -> Artifact:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._done = True
        sha256 = self._digest.hexdigest()
        final = self._store._blob_path(sha256)
        if final.exists():
            self._tmp_path.unlink()
            return Artifact(sha256=sha256, size=self.size)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Blobs are immutable; read-only files make an accidental in-place edit fail loudly.
        self._tmp_path.chmod(0o444)
        os.replace(self._tmp_path, final)
        _fsync_dir(final.parent)
        return Artifact(sha256=sha256, size=self.size)

    def abort(self) -> None:
        """Drop what was written unless committed; safe to call after commit."""
        if not self._done:
            self._file.close()
            self._tmp_path.unlink(missing_ok=True)
            self._done = True


def _read_chunks(handle: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself, not only the file's bytes."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
