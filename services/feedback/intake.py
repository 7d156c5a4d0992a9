"""What a piece of feedback must look like before it is stored."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.shared.errors import InvalidArgument

_COMPLETION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
RATINGS = ("up", "down")


@dataclass(frozen=True)
class FeedbackIn:
    completion_id: str
    rating: str
    correction: str = ""
    comment: str = ""
    user: str = ""
    idempotency_key: str = ""
    # Optional: the model or deployment the caller believes answered.
    model: str = ""

    @property
    def is_correction(self) -> bool:
        return bool(self.correction)


def validate_feedback(item: FeedbackIn, *, max_correction_chars: int) -> FeedbackIn:
    """Refuse feedback that cannot be tied to a completion or used later as a training example."""
    if not _COMPLETION_ID.match(item.completion_id):
        raise InvalidArgument(f"completion_id {item.completion_id!r} is not a completion id", param="completion_id")
    if item.rating not in RATINGS:
        raise InvalidArgument(f"rating must be one of {', '.join(RATINGS)}", param="rating")
    correction = item.correction.strip()
    if item.correction and not correction:
        raise InvalidArgument("correction is blank", param="correction")
    if len(correction) > max_correction_chars:
        raise InvalidArgument(
            f"correction has {len(correction)} characters; at most {max_correction_chars} are accepted",
            param="correction",
        )
    user = item.user.strip()
    if correction and not user:
        raise InvalidArgument("a correction needs the user who made it: the poisoning guards count per user",
                              param="user")
    if len(user) > 255:
        raise InvalidArgument("user is longer than 255 characters", param="user")
    if len(item.idempotency_key) > 255:
        raise InvalidArgument("idempotency_key is longer than 255 characters", param="idempotency_key")
    if len(item.comment) > max_correction_chars:
        raise InvalidArgument(f"comment is longer than {max_correction_chars} characters", param="comment")
    return FeedbackIn(completion_id=item.completion_id, rating=item.rating, correction=correction,
                      comment=item.comment.strip(), user=user, idempotency_key=item.idempotency_key,
                      model=item.model.strip())
