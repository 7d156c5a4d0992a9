"""The promotion gate: a policy per deployment, and a verdict that lists every rule it applied.

The default policy is the seed's checklist: the candidate beats production by 20% (relative) on the
primary metric over enough held-out examples, forgets at most 2 points of general behaviour, and no
slice of the examples gets worse by more than a margin. Two rules are added because the relative
rule alone is degenerate where production scores 0 (anything beats 0 x 1.2) or the set is small:
the gain must also be at least `min_gain` (absolute) and, with `require_significance`, its paired
bootstrap 95% interval must lie above 0. Each rule can be configured or switched off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.evaluation.metrics import METRICS


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    primary_metric: str = "exact_match"
    # The candidate's primary metric must reach the baseline's times this (1.2: 20% better).
    min_ratio: float = Field(default=1.2, ge=0)
    # ... and exceed it by at least this much (absolute, on the metric's 0-1 scale).
    min_gain: float = Field(default=0.05, ge=0)
    # ... with the paired bootstrap interval of the gain above 0.
    require_significance: bool = True
    # Fewer held-out examples than this decide nothing.
    min_examples: int = Field(default=20, ge=1)
    # The largest drop in agreement with the base model's general answers (0.02: 2 points).
    max_forgetting_drop: float = Field(default=0.02, ge=0)
    # The largest drop of the primary metric in any slice of the examples.
    max_slice_drop: float = Field(default=0.05, ge=0)

    @field_validator("primary_metric")
    @classmethod
    def _known_metric(cls, name: str) -> str:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
        return name


@dataclass(frozen=True)
class Rule:
    name: str
    passed: bool
    measured: float
    threshold: float
    detail: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    rules: tuple[Rule, ...]

    @property
    def reason(self) -> str:
        """The failed rules' details, or what passed."""
        failed = [rule.detail for rule in self.rules if not rule.passed]
        return "; ".join(failed) if failed else f"passed {len(self.rules)} rules"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "rules": [asdict(rule) for rule in self.rules]}


@dataclass(frozen=True)
class Measured:
    """What the gate judges: the primary metric of both models, overall and per slice."""

    examples: int
    baseline: float
    candidate: float
    # The paired bootstrap 95% interval of candidate - baseline.
    gain_low: float
    gain_high: float
    # Agreement with the base model's answers on the general prompts (None: not measured).
    baseline_general: float | None = None
    candidate_general: float | None = None
    # Per slice: (examples, baseline, candidate).
    slices: tuple[tuple[str, int, float, float], ...] = ()


def decide(policy: GatePolicy, measured: Measured) -> Verdict:
    metric = policy.primary_metric
    rules = [
        Rule("min_examples", measured.examples >= policy.min_examples, measured.examples, policy.min_examples,
             f"{measured.examples} held-out examples (at least {policy.min_examples} needed)"),
        Rule("primary_metric", measured.candidate >= measured.baseline * policy.min_ratio,
             measured.candidate, measured.baseline * policy.min_ratio,
             f"{metric} {measured.candidate:.3f} vs baseline {measured.baseline:.3f} (needs >= "
             f"{policy.min_ratio:g}x = {measured.baseline * policy.min_ratio:.3f})"),
        Rule("min_gain", measured.candidate - measured.baseline >= policy.min_gain,
             measured.candidate - measured.baseline, policy.min_gain,
             f"{metric} gain {measured.candidate - measured.baseline:+.3f} (needs >= {policy.min_gain:+.3f})"),
    ]
    if policy.require_significance:
        rules.append(Rule("significant", measured.gain_low > 0, measured.gain_low, 0.0,
                          f"{metric} gain 95% interval [{measured.gain_low:+.3f}, {measured.gain_high:+.3f}] "
                          "(needs to lie above 0)"))
    if measured.baseline_general is None or measured.candidate_general is None:
        rules.append(Rule("forgetting", False, 0.0, policy.max_forgetting_drop,
                          "forgetting was not measured (no general prompts were asked)"))
    else:
        drop = measured.baseline_general - measured.candidate_general
        rules.append(Rule("forgetting", drop <= policy.max_forgetting_drop, drop, policy.max_forgetting_drop,
                          f"general answers agree {measured.candidate_general:.3f} vs baseline "
                          f"{measured.baseline_general:.3f}: a drop of {drop * 100:.1f} points (at most "
                          f"{policy.max_forgetting_drop * 100:.1f})"))
    for name, count, baseline, candidate in measured.slices:
        drop = baseline - candidate
        rules.append(Rule(f"slice:{name}", drop <= policy.max_slice_drop, drop, policy.max_slice_drop,
                          f"slice {name!r} ({count} examples): {metric} {candidate:.3f} vs baseline {baseline:.3f}, "
                          f"a drop of {drop * 100:.1f} points (at most {policy.max_slice_drop * 100:.1f})"))
    return Verdict(all(rule.passed for rule in rules), tuple(rules))
