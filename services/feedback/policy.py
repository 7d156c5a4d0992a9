"""A deployment's loop policy: when it retrains, and what guards its training data."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoopPolicy(BaseModel):
    """Every field has the default a deployment gets until someone sets its policy."""

    model_config = ConfigDict(extra="forbid")

    # Corrections since the last retrain that trigger the next one (the seed's 100).
    threshold: int = Field(default=100, ge=1, le=100_000)
    # Seconds after a retrain request before the next may be made, so retrains do not pile up.
    cooldown_s: int = Field(default=3600, ge=0)
    # The largest share of a batch one user may supply (OWASP LLM04: no single source dominates).
    max_user_share: float = Field(default=0.2, gt=0, le=1)
    # Corrections one user may post per hour per deployment.
    user_corrections_per_hour: int = Field(default=120, ge=1)
    # Word-shingle Jaccard similarity at which two corrections of one user are near-duplicates.
    near_duplicate_threshold: float = Field(default=0.9, gt=0, le=1)
    # The drift trigger: the thumbs-up rate over the last `drift_window` ratings of the version in
    # production; below `drift_min_up_rate` (0: off) it retrains, or rolls back when the version was
    # deployed less than `drift_rollback_s` ago in place of another (a first version has none).
    drift_window: int = Field(default=50, ge=1)
    drift_min_up_rate: float = Field(default=0.0, ge=0, le=1)
    drift_rollback_s: int = Field(default=86_400, ge=0)
    # Retrain every this many days when new corrections exist (0: off; the seed suggests 90-180).
    retrain_every_days: float = Field(default=0.0, ge=0)
    # Thumbs-up answers added to each batch as positive examples.
    positives_per_batch: int = Field(default=20, ge=0, le=10_000)
    # False stops the automatic triggers; feedback is still recorded and counted.
    enabled: bool = True

    @property
    def per_user_cap(self) -> int:
        """The most corrections one user may have in a threshold-sized batch (at least 1)."""
        return max(1, int(self.max_user_share * self.threshold + 1e-9))
