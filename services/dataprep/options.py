"""Preparation options with their defaults resolved and checked, as the pipeline sees them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from services.shared.errors import InvalidArgument

FORMATS = ("chat", "alpaca", "preference", "csv")
PII_DETECTORS = ("ner", "regex")
DEFAULT_PRICE_PER_1K_TOKENS = 0.008
MAX_REVIEW_SAMPLE = 1000


@dataclass(frozen=True)
class PrepareConfig:
    base_model: str
    format: str | None = None
    validation_fraction: float = 0.1
    seed: int = 0
    drop_invalid: bool = False
    anonymize_pii: bool = True
    pii_entities: tuple[str, ...] = ()
    pii_placeholders: dict[str, str] = field(default_factory=dict)
    pii_detector: str = "ner"
    near_duplicate_threshold: float = 0.85
    n_epochs: int | None = None
    price_per_1k_tokens: float = DEFAULT_PRICE_PER_1K_TOKENS
    review_sample_size: int = 50

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise InvalidArgument(
                f"format {self.format!r} is not supported; use one of {', '.join(FORMATS)} (or leave it empty to detect)",
                param="format",
            )
        if self.pii_detector not in PII_DETECTORS:
            raise InvalidArgument(
                f"pii_detector {self.pii_detector!r}: use one of {', '.join(PII_DETECTORS)}", param="pii_detector"
            )
        if not 0 <= self.validation_fraction < 1:
            raise InvalidArgument(
                f"validation_fraction must be at least 0 and below 1, got {self.validation_fraction}",
                param="validation_fraction",
            )
        if not 0 < self.near_duplicate_threshold <= 1:
            raise InvalidArgument(
                f"near_duplicate_threshold must be in (0, 1], got {self.near_duplicate_threshold}",
                param="near_duplicate_threshold",
            )
        if self.n_epochs is not None and not 1 <= self.n_epochs <= 50:
            raise InvalidArgument(f"n_epochs must be between 1 and 50, got {self.n_epochs}", param="n_epochs")
        if self.price_per_1k_tokens < 0:
            raise InvalidArgument("price_per_1k_tokens must not be negative", param="price_per_1k_tokens")
        if not 0 <= self.review_sample_size <= MAX_REVIEW_SAMPLE:
            raise InvalidArgument(
                f"review_sample_size must be between 0 and {MAX_REVIEW_SAMPLE}, got {self.review_sample_size}",
                param="review_sample_size",
            )
        from services.dataprep.pii import DEFAULT_ENTITIES  # Presidio is imported by the service anyway

        unknown = [entity for entity in (*self.pii_entities, *self.pii_placeholders) if entity not in DEFAULT_ENTITIES]
        if unknown:
            raise InvalidArgument(
                f"unknown PII entity {unknown[0]!r}; known: {', '.join(DEFAULT_ENTITIES)}", param="pii_entities"
            )
        unknown = [key for key in self.pii_placeholders if key not in self.pii_entities and self.pii_entities]
        if unknown:
            raise InvalidArgument(
                f"pii_placeholders names {unknown[0]!r}, which is not in pii_entities",
                param="pii_placeholders",
            )

    def to_json(self) -> str:
        """Canonical JSON: the same options always give the same text (and dataset id)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PrepareConfig:
        values = json.loads(text)
        values["pii_entities"] = tuple(values.get("pii_entities", ()))
        return cls(**values)
