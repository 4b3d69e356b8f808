"""Evidently's HTML report, and our engine cross-checked against Evidently on the same data.

This module pays Evidently's import (~7 s) once; the cases cover every test Evidently picks by default
(K-S, chi-square, Z, Wasserstein, Jensen-Shannon) with NaN, a constant column and an unseen category."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops_assets.ml.drift import ReferenceProfile
from mlops_assets.ml.evidently_reports import data_drift_html, summarize_snapshot

NUMERIC = ["norm", "skewed", "int5", "binary", "const", "wide_int"]
CATEGORICAL = ["c3", "c2", "many"]


def _frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "norm": rng.normal(shift, 1, n),
            "skewed": rng.lognormal(0, 1, n) * (1 + shift),
            "int5": rng.integers(0, 5, n).astype(float),
            "binary": rng.integers(0, 2, n),
            "const": np.ones(n),
            "wide_int": rng.integers(0, 1500, n) + int(shift * 300),
            "c3": rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2] if not shift else [0.3, 0.3, 0.4]),
            "c2": rng.choice(["x", "y"], n),
            "many": rng.choice([f"k{i}" for i in range(40)], n),
        }
    )
    df.loc[rng.random(n) < 0.05, "norm"] = np.nan
    df.loc[rng.random(n) < 0.03, "c3"] = None
    if shift:
        df.loc[rng.random(n) < 0.1, "c3"] = "unseen"
    return df


def _evidently(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, Any]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    dd = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    snap = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=dd), Dataset.from_pandas(reference, data_definition=dd)
    )
    return summarize_snapshot(snap.dict())


@pytest.mark.parametrize(
    ("n_ref", "n_cur", "shift"),
    [
        (400, 300, 0.0),
        (400, 20_000, 0.3),
        (1000, 800, 0.05),
        (1500, 900, 0.3),
        (20_000, 3000, 0.05),
        (20_000, 12_000, 0.3),
    ],
)
def test_same_tests_statistics_and_decisions_as_evidently(n_ref: int, n_cur: int, shift: float) -> None:
    reference, current = _frame(n_ref, seed=n_ref), _frame(n_cur, seed=n_cur + 1, shift=shift)
    profile = ReferenceProfile.from_frame(reference, numeric=NUMERIC, categorical=CATEGORICAL)
    ours = profile.compare(current)
    theirs = _evidently(reference, current)
    for col in ours.columns:
        ev = theirs["columns"][col.column]
        expected = (ev["method"], ev["threshold"], ev["drifted"])
        assert (col.stattest, col.threshold, col.drifted) == expected, col
        sketch = profile.numeric.get(col.column)
        if sketch is not None and not sketch.exact:  # the bound stored with the sketch, and float noise
            assert abs(col.statistic - ev["value"]) <= sketch.sketch_error + 1e-9
        else:
            assert col.statistic == pytest.approx(ev["value"], rel=1e-7, abs=1e-12)
    assert ours.drift_share == pytest.approx(theirs["drift_share"])


def test_html_report_is_written_with_a_summary_that_agrees(tmp_path: Path) -> None:
    reference, current = _frame(30_000, seed=1), _frame(2000, seed=2, shift=0.3)
    path = tmp_path / "reports" / "drift.html"
    summary = data_drift_html(
        reference, current, numeric=NUMERIC, categorical=CATEGORICAL, path=path, max_reference_rows=5000
    )
    html = path.read_text()
    assert len(html) > 100_000 and "<html" in html.lower()
    assert summary["n_reference"] == 5000 and summary["n_current"] == 2000
    assert set(summary["columns"]) == set(NUMERIC + CATEGORICAL)
    assert summary["drifted_count"] == sum(c["drifted"] for c in summary["columns"].values())
    assert summary["drift_share"] == pytest.approx(summary["drifted_count"] / 9)
    # the full reference and Evidently's 5000-row sample reach the same decisions on clear drift
    ours = ReferenceProfile.from_frame(reference, numeric=NUMERIC, categorical=CATEGORICAL).compare(current)
    assert {c.column for c in ours.columns if c.drifted} == {
        name for name, c in summary["columns"].items() if c["drifted"]
    }


def test_html_report_rejects_missing_columns(tmp_path: Path) -> None:
    reference = _frame(2000, seed=3)
    with pytest.raises(ValueError, match="'nope'"):
        data_drift_html(reference, reference, numeric=["nope"], categorical=[], path=tmp_path / "x.html")


def test_benchmark_quick_runs_and_agrees() -> None:
    """Smoke test of `benchmarks/drift.py --quick`: both sides run in their own processes and agree."""
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "drift.py"), "--quick"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    agreement = re.search(r"per-column decisions the same: (\d+)/(\d+)", out)
    assert agreement is not None, out
    same, total = map(int, agreement.groups())
    assert total == 15 and same / total >= 0.95
    assert "injected drift found exactly (ours): True" in out
    speed = re.search(r"speed: ([\d.]+)x faster overall", out)
    assert speed is not None and float(speed.group(1)) > 1.0
