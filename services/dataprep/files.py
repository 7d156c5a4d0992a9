"""The rules an uploaded file's metadata must follow."""

from __future__ import annotations

import re

from services.shared.errors import InvalidArgument, NotFound

# The purposes this platform can act on today; OpenAI's others ("assistants", "batch", ...) have
# no consumer here, so accepting them would store files nothing can use.
PURPOSES = ("fine-tune",)
_FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_upload(filename: str, purpose: str) -> None:
    if not filename:
        raise InvalidArgument("filename is required", param="file")
    if len(filename) > 255 or _CONTROL.search(filename):
        raise InvalidArgument("filename must be at most 255 printable characters", param="file")
    if purpose not in PURPOSES:
        raise InvalidArgument(
            f"purpose {purpose!r} is not supported; use one of: {', '.join(PURPOSES)}", param="purpose"
        )


def check_file_id(file_id: str) -> str:
    """A well-formed id, or NotFound: a malformed id can name no file."""
    if not _FILE_ID.match(file_id):
        raise NotFound(f"No such File object: {file_id}", param="file_id", code="file_not_found")
    return file_id
