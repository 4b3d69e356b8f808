"""The promotion gate: the champion changes only when the challenger is better, with confidence, everywhere
that matters. Every refusal names the rule that failed and the numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mlops_assets.ml.evaluate import Comparison


@dataclass(frozen=True)
class GatePolicy:
    min_delta: float = 0.002  # required improvement in metric units (positive = better)
    confidence: float = 0.95  # level of the paired-bootstrap interval whose lower bound must reach min_delta
    max_slice_regression: float = 0.02  # no slice may be worse than the champion by more than this
    require_approval: bool = False
    min_slice_rows: int = 1000  # smaller slices are reported but cannot veto (their metric is mostly noise)


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    status: str  # "promoted" | "rejected" | "pending_approval" | "first_model"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_promotion(
    comparison: Comparison | None, policy: GatePolicy, *, champion_is_baseline: bool
) -> PromotionDecision:
    if comparison is None:
        return PromotionDecision(False, "rejected", "no comparison: the challenger was not evaluated")
    c = comparison
    if not np.isclose(c.confidence, policy.confidence):
        # An interval at another level than the policy's would silently change the rule: fail instead.
        raise ValueError(
            f"the comparison's interval is at {c.confidence:.0%} but the gate requires {policy.confidence:.0%}: "
            "pass confidence=policy.confidence to compare_models"
        )
    if not (np.isfinite(c.delta) and np.isfinite(c.ci_low)):
        return PromotionDecision(
            False,
            "rejected",
            f"{c.metric} could not be computed on the hold-out (delta {c.delta}, CI low {c.ci_low}, n={c.n}): "
            "nothing shows the challenger is better",
        )
    nums = (
        f"{c.metric} {c.challenger:.4f} vs {c.champion:.4f}, delta {c.delta:+.4f}, "
        f"{c.confidence:.0%} CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}], n={c.n}"
    )
    if champion_is_baseline:
        if c.ci_low > 0:
            return _approval(policy, "first_model", f"first trained model beats the baseline: {nums}")
        return PromotionDecision(False, "rejected", f"does not beat even the baseline with confidence: {nums}")
    if c.delta <= 0:
        return PromotionDecision(False, "rejected", f"challenger is not better than the champion: {nums}")
    if c.delta < policy.min_delta:
        return PromotionDecision(False, "rejected", f"improvement below the margin {policy.min_delta:g}: {nums}")
    if not c.ci_low > 0:
        return PromotionDecision(False, "rejected", f"improvement not significant (CI includes 0): {nums}")
    if c.ci_low < policy.min_delta:
        # "Better by the margin, with confidence" is the interval's lower bound at the margin, not the point
        # estimate: a challenger that is only surely better than nothing is a coin toss on the next month.
        # On the flights replay, one promoted this way (CI low +0.0002, margin 0.003) lost October to the
        # champion it replaced.
        return PromotionDecision(
            False,
            "rejected",
            f"improvement not shown to reach the margin {policy.min_delta:g} with {c.confidence:.0%} confidence: "
            f"{nums}",
        )
    judged = c.slices[c.slices["n"] >= policy.min_slice_rows] if len(c.slices) else c.slices
    worst = judged.sort_values("delta").iloc[0] if len(judged) else None
    if worst is not None and worst["delta"] < -policy.max_slice_regression:
        return PromotionDecision(
            False,
            "rejected",
            (
                f"slice {worst['slice_column']}={worst['slice_value']} regresses by {-worst['delta']:.4f} "
                f"(limit {policy.max_slice_regression:g}, n={int(worst['n'])}) although overall {nums}"
            ),
        )
    return _approval(policy, "promoted", f"better with confidence: {nums}")


def _approval(policy: GatePolicy, status: str, reason: str) -> PromotionDecision:
    if policy.require_approval:
        return PromotionDecision(True, "pending_approval", f"{reason}; waiting for a person's approval")
    return PromotionDecision(True, status, reason)
