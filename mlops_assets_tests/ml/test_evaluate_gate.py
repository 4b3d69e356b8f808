"""The paired bootstrap and the gate: correct numbers, and decisions that say why."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mlops_assets.ml.evaluate import compare_models, weighted_scores
from mlops_assets.ml.promote import GatePolicy, decide_promotion


def synth(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = y + rng.normal(0, 0.8, n)
    weak = y + rng.normal(0, 2.0, n)
    return y, good, weak


@pytest.mark.parametrize("metric", ["roc_auc", "rmse", "mae", "r2", "log_loss", "accuracy"])
def test_unit_weights_reproduce_the_plain_metric(metric: str) -> None:
    from mlops_assets.ml.decay import score

    y, good, _ = synth(500)
    s = 1 / (1 + np.exp(-good)) if metric in ("log_loss", "accuracy") else good
    s[::7] = s[3]  # ties
    got = weighted_scores(metric, y, s, np.ones((1, len(y))))[0]
    assert got == pytest.approx(score(metric, y, s), rel=1e-9)


def test_weighted_auc_equals_auc_of_the_resample() -> None:
    y, good, _ = synth(300)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 300, 300)
    W = np.bincount(idx, minlength=300)[None, :].astype(float)
    assert weighted_scores("roc_auc", y, good, W)[0] == pytest.approx(roc_auc_score(y[idx], good[idx]))


def test_a_clearly_better_model_has_an_interval_above_zero() -> None:
    y, good, weak = synth()
    c = compare_models(y, good, weak, metric="roc_auc", n_boot=500)
    assert c.delta > 0.1 and c.ci_low > 0 and c.p_value < 0.01


def test_the_same_model_is_not_better() -> None:
    y, good, _ = synth()
    c = compare_models(y, good, good.copy(), metric="roc_auc", n_boot=300)
    assert c.delta == 0 and c.ci_low <= 0 <= c.ci_high


def test_lower_is_better_metrics_are_oriented() -> None:
    y, good, weak = synth()
    c = compare_models(y.astype(float), good, weak, metric="rmse", n_boot=300)
    assert c.delta > 0 and c.ci_low > 0  # lower rmse => positive delta


def test_slices_with_enough_rows_are_scored() -> None:
    y, good, weak = synth()
    seg = pd.DataFrame({"origin": np.where(np.arange(len(y)) < 3900, "EWR", "JFK")})
    c = compare_models(y, good, weak, metric="roc_auc", slices=seg, min_slice_rows=200, n_boot=100)
    assert list(c.slices["slice_value"]) == ["EWR"]


def test_gate_rules_each_say_which_rule_failed() -> None:
    y, good, weak = synth()
    better = compare_models(y, good, weak, metric="roc_auc", n_boot=300)
    same = compare_models(y, good, good.copy(), metric="roc_auc", n_boot=300)
    policy = GatePolicy(min_delta=0.01, max_slice_regression=0.02)
    assert decide_promotion(better, policy, champion_is_baseline=False).status == "promoted"
    rej = decide_promotion(same, policy, champion_is_baseline=False)
    assert not rej.promote and "not better than the champion" in rej.reason
    huge_margin = decide_promotion(better, GatePolicy(min_delta=0.5), champion_is_baseline=False)
    assert not huge_margin.promote and "0.5" in huge_margin.reason
    assert decide_promotion(better, policy, champion_is_baseline=True).status == "first_model"
    pending = decide_promotion(better, GatePolicy(require_approval=True), champion_is_baseline=False)
    assert pending.promote and pending.status == "pending_approval"


def test_gate_refuses_a_slice_regression_even_when_better_overall() -> None:
    y, good, weak = synth(6000)
    seg = np.where(np.arange(len(y)) < 1000, "JFK", "EWR")
    challenger = good.copy()
    challenger[:1000] = weak[:1000] * 3  # much worse on JFK
    c = compare_models(
        y,
        challenger,
        np.where(seg == "JFK", good, weak),
        metric="roc_auc",
        slices=pd.DataFrame({"origin": seg}),
        n_boot=200,
    )
    d = decide_promotion(c, GatePolicy(min_delta=0.0, max_slice_regression=0.02), champion_is_baseline=False)
    assert not d.promote and "origin=JFK regresses" in d.reason
