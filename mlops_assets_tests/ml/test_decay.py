"""Decay detection on late-labelled predictions: metrics against scikit-learn, the window, the interval,
and that noise does not fire while a real drop does."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mlops_assets.ml.decay import DecayResult, detect_decay, higher_is_better, score

DAY0 = pd.Timestamp("2013-03-01")


def _classification_days(
    n_days: int, rows_per_day: int, separation: float, seed: int, first_day: pd.Timestamp = DAY0
) -> pd.DataFrame:
    """Scores whose AUC is set by `separation` (positives' mean score above negatives')."""
    rng = np.random.default_rng(seed)
    n = n_days * rows_per_day
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + separation * y - separation / 2)))
    day = first_day + pd.to_timedelta(np.repeat(np.arange(n_days), rows_per_day), unit="D")
    return pd.DataFrame({"day": day, "y_true": y, "y_score": s})


@pytest.mark.parametrize("metric", ["roc_auc", "log_loss", "accuracy"])
def test_classification_metrics_match_scikit_learn(metric: str) -> None:
    df = _classification_days(1, 3000, 1.2, seed=0)
    y, s = df["y_true"].to_numpy(), np.round(df["y_score"].to_numpy(), 2)  # ties for AUC
    expected = {
        "roc_auc": skm.roc_auc_score(y, s),
        "log_loss": skm.log_loss(y, s),
        "accuracy": skm.accuracy_score(y, s >= 0.5),
    }[metric]
    assert score(metric, y, s) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("metric", ["rmse", "mae", "r2"])
def test_regression_metrics_match_scikit_learn(metric: str) -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(10, 3, 2000)
    pred = y + rng.normal(0, 1, 2000)
    expected = {
        "rmse": np.sqrt(skm.mean_squared_error(y, pred)),
        "mae": skm.mean_absolute_error(y, pred),
        "r2": skm.r2_score(y, pred),
    }[metric]
    assert score(metric, y, pred) == pytest.approx(expected, rel=1e-12)


def test_direction_per_metric_and_unknown_metric() -> None:
    assert [higher_is_better(m) for m in ("roc_auc", "accuracy", "r2")] == [True, True, True]
    assert [higher_is_better(m) for m in ("log_loss", "rmse", "mae")] == [False, False, False]
    with pytest.raises(ValueError, match="unknown metric"):
        higher_is_better("f1")


def test_auc_undefined_with_one_class() -> None:
    assert np.isnan(score("roc_auc", [1, 1, 1], [0.2, 0.5, 0.9]))


def test_too_few_rows_never_fires() -> None:
    df = _classification_days(3, 50, 0.0, seed=2)  # AUC 0.5 against a 0.8 validation: would be decay
    res = detect_decay(df, metric="roc_auc", reference_value=0.8, tolerance=0.02)
    assert not res.decay_detected
    assert res.reason == "not enough labelled rows (150 < 200)"
    assert res.n_rows == 150 and res.n_days == 3
    assert json.loads(json.dumps(res.to_dict(), allow_nan=False))["ci_low"] is None


def test_stable_quality_does_not_fire_and_a_real_drop_does() -> None:
    stable = _classification_days(7, 1000, 1.2, seed=3)
    validation = score("roc_auc", stable["y_true"], stable["y_score"])
    res = detect_decay(stable, metric="roc_auc", reference_value=validation, tolerance=0.02)
    assert not res.decay_detected and res.reason.startswith("no decay")
    assert res.ci_low < res.window_value < res.ci_high
    dropped = _classification_days(7, 1000, 0.6, seed=4)  # AUC about 0.66 instead of about 0.80
    res = detect_decay(dropped, metric="roc_auc", reference_value=validation, tolerance=0.02)
    assert res.decay_detected and res.ci_high < validation - 0.02
    assert res.reason.startswith("decay: roc_auc")


def test_noise_around_the_validation_metric_rarely_fires() -> None:
    """20 independent weeks of a model exactly as good as validated: the rule should stay quiet."""
    fired = 0
    for seed in range(20):
        week = _classification_days(7, 300, 1.2, seed=100 + seed)
        fired += detect_decay(week, metric="roc_auc", reference_value=0.80, tolerance=0.02).decay_detected
    assert fired == 0


def test_one_thin_bad_day_in_a_good_week_does_not_fire() -> None:
    """A day with few labels and a poor score reads as a bad day, not as decay of the model."""
    good = _classification_days(6, 1000, 1.2, seed=5)
    bad = _classification_days(1, 200, 0.0, seed=6, first_day=DAY0 + pd.Timedelta(days=6))
    res = detect_decay(pd.concat([good, bad]), metric="roc_auc", reference_value=0.80, tolerance=0.02)
    assert res.day_value is not None and res.day_value < 0.6
    assert not res.decay_detected


def test_window_is_the_last_labelled_days() -> None:
    old_bad = _classification_days(10, 500, 0.0, seed=7)
    recent_good = _classification_days(7, 500, 1.2, seed=8, first_day=DAY0 + pd.Timedelta(days=20))
    res = detect_decay(
        pd.concat([old_bad, recent_good]),
        metric="roc_auc",
        reference_value=0.80,
        tolerance=0.02,
        window_days=7,
    )
    assert (res.n_days, res.n_rows) == (7, 3500)
    assert not res.decay_detected


def test_lower_is_better_metrics_fire_upwards() -> None:
    rng = np.random.default_rng(9)
    y = rng.normal(0, 1, 4000)
    df = pd.DataFrame(
        {
            "day": DAY0 + pd.to_timedelta(np.arange(4000) % 7, unit="D"),
            "y_true": y,
            "y_score": y + rng.normal(0, 1.5, 4000),
        }
    )
    res = detect_decay(df, metric="rmse", reference_value=1.0, tolerance=0.1)
    assert res.decay_detected and res.ci_low > 1.1
    assert "entirely above" in res.reason
    assert not detect_decay(df, metric="rmse", reference_value=1.5, tolerance=0.1).decay_detected


def test_seeded_and_fast() -> None:
    df = _classification_days(7, 1000, 1.0, seed=10)

    def run(seed: int = 0) -> DecayResult:
        return detect_decay(df, metric="roc_auc", reference_value=0.75, tolerance=0.02, seed=seed)

    run()  # warm-up
    t0 = time.perf_counter()
    a = run()
    elapsed = time.perf_counter() - t0
    assert a == run()
    assert a != run(seed=1)
    assert elapsed < 0.5  # aim is < 100 ms for 7k rows x 500 replicates; generous on a shared machine
    assert isinstance(a, DecayResult)


def test_missing_columns_and_nulls() -> None:
    with pytest.raises(ValueError, match="missing columns"):
        detect_decay(pd.DataFrame({"day": [], "y_true": []}), metric="roc_auc", reference_value=0.8, tolerance=0.0)
    df = _classification_days(7, 100, 1.2, seed=11)
    df.loc[::2, "y_true"] = np.nan  # labels not arrived yet
    res = detect_decay(df, metric="roc_auc", reference_value=0.8, tolerance=0.02, min_rows=100)
    assert res.n_rows == 350
