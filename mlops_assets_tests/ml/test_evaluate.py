"""The evaluation numbers the gate trusts: metrics equal sklearn's, the bootstrap is fast enough for a real
hold-out, slices are scored only where they mean something, and the Evidently report is actually written."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mlops_assets.ml.evaluate import compare_models, higher_is_better, performance_html, score


def synth(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, y + rng.normal(0, 1.0, n), y + rng.normal(0, 1.4, n)


@pytest.mark.parametrize(
    ("metric", "reference"),
    [
        ("roc_auc", skm.roc_auc_score),
        ("log_loss", skm.log_loss),
        ("accuracy", lambda y, p: skm.accuracy_score(y, p >= 0.5)),
        ("rmse", lambda y, p: np.sqrt(skm.mean_squared_error(y, p))),
        ("mae", skm.mean_absolute_error),
        ("r2", skm.r2_score),
    ],
)
def test_score_is_sklearns_metric(metric: str, reference: object) -> None:
    y, s, _ = synth(800)
    p = 1 / (1 + np.exp(-2 * (s - 0.5)))
    assert score(metric, y, p) == pytest.approx(reference(y, p), rel=1e-9)  # type: ignore[operator]


def test_direction_of_each_metric() -> None:
    assert all(higher_is_better(m) for m in ("roc_auc", "accuracy", "r2"))
    assert not any(higher_is_better(m) for m in ("log_loss", "rmse", "mae"))


def test_bootstrap_of_a_realistic_holdout_is_fast_and_brackets_the_true_gap() -> None:
    y, good, weak = synth(20_000)
    start = time.perf_counter()
    c = compare_models(y, good, weak, metric="roc_auc", n_boot=1000, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 6.0, f"20k x 1000 paired AUC bootstrap took {elapsed:.1f} s"  # ~2 s alone on 2 cores
    assert c.n == 20_000 and c.n_boot == 1000 and c.confidence == 0.95
    assert c.delta == pytest.approx(skm.roc_auc_score(y, good) - skm.roc_auc_score(y, weak))
    assert 0 < c.ci_low < c.delta < c.ci_high and c.p_value < 0.01


def test_the_bootstrap_is_reproducible_and_its_level_is_honoured() -> None:
    y, good, weak = synth(3000, seed=5)
    a = compare_models(y, good, weak, metric="roc_auc", n_boot=400, seed=7)
    b = compare_models(y, good, weak, metric="roc_auc", n_boot=400, seed=7)
    assert a.to_dict() == b.to_dict()
    narrow = compare_models(y, good, weak, metric="roc_auc", n_boot=400, seed=7, confidence=0.5)
    assert narrow.confidence == 0.5
    assert a.ci_low < narrow.ci_low < narrow.ci_high < a.ci_high


def test_slices_skip_small_and_single_class_values_and_orient_the_delta() -> None:
    y, good, weak = synth(3000, seed=2)
    y = y.astype(float)
    origin = np.where(np.arange(3000) < 2500, "EWR", "JFK")  # JFK: 500 rows
    carrier = np.where(np.arange(3000) < 2900, "UA", "AA")  # AA: 100 rows, too few
    c = compare_models(
        y,
        good,
        weak,
        metric="rmse",
        n_boot=50,
        slices=pd.DataFrame({"origin": origin, "carrier": carrier}),
        min_slice_rows=200,
    )
    got = {(r.slice_column, r.slice_value): r for r in c.slices.itertuples()}
    assert set(got) == {("origin", "EWR"), ("origin", "JFK"), ("carrier", "UA")}
    jfk = got[("origin", "JFK")]
    assert jfk.n == 500 and jfk.challenger < jfk.champion and jfk.delta > 0  # lower rmse = positive delta

    only_negatives = np.where(y == 0, "neg", "pos")  # one class per slice: AUC undefined, not a fake 0.5
    c_auc = compare_models(y, good, weak, metric="roc_auc", n_boot=50, slices=pd.DataFrame({"label": only_negatives}))
    assert c_auc.slices.empty


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="equal, non-empty"):
        compare_models(np.array([0, 1, 1]), np.array([0.1, 0.9]), np.array([0.2, 0.8, 0.7]), metric="roc_auc")


def test_classification_report_is_written(tmp_path: Path) -> None:
    y, good, _ = synth(400)
    df = pd.DataFrame({"late": y, "prediction": 1 / (1 + np.exp(-2 * (good - 0.5)))})
    out = performance_html(
        df, target="late", prediction="prediction", task="classification", path=tmp_path / "r" / "cls.html"
    )
    text = out.read_text()
    assert out.exists() and out.stat().st_size > 10_000 and "<html" in text.lower()


def test_regression_report_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    truth = rng.gamma(5.0, 1000.0, 300)
    df = pd.DataFrame({"rides": truth, "prediction": truth + rng.normal(0, 300, 300)})
    out = performance_html(df, target="rides", prediction="prediction", task="regression", path=tmp_path / "reg.html")
    assert out.stat().st_size > 10_000 and "<html" in out.read_text().lower()
