"""Evidently's DataDriftPreset as an HTML page for people, next to our fast per-column numbers.

The page is what a person opens from the Dagster UI to see the distributions; the decisions that drive
retraining come from `mlops_assets.ml.drift`, which follows the same test choice. The summary returned
here is Evidently's own result, so the two can be cross-checked on the same day.

Evidently is imported inside the function: importing it costs ~7 s, which every Dagster process that
loads the definitions would otherwise pay.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

# Evidently reports a ValueDrift's method by display name; map it back to the stattest names we use.
METHOD_NAMES: dict[str, str] = {
    "K-S p_value": "ks",
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
}


def _drifted(method: str, value: float, threshold: float) -> bool:
    """Evidently's per-test comparison (K-S <=, other p-values <, distances >=)."""
    if method == "ks":
        return value <= threshold
    if method in ("chisquare", "z"):
        return value < threshold
    return value >= threshold


def summarize_snapshot(snapshot_dict: dict[str, Any]) -> dict[str, Any]:
    """Drift share, drifted count and per-column (method, threshold, value, drifted) from `snap.dict()`."""
    summary: dict[str, Any] = {"drift_share": None, "drifted_count": None, "columns": {}}
    for m in snapshot_dict.get("metrics", []):
        cfg = m.get("config", {})
        kind = str(cfg.get("type", ""))
        if kind.endswith("DriftedColumnsCount"):
            summary["drift_share"] = float(m["value"]["share"])
            summary["drifted_count"] = int(m["value"]["count"])
        elif kind.endswith("ValueDrift"):
            display = str(cfg.get("method"))
            method = METHOD_NAMES.get(display, display)
            value, threshold = float(m["value"]), float(cfg.get("threshold"))
            summary["columns"][cfg["column"]] = {
                "method": method,
                "threshold": threshold,
                "value": value,
                "drifted": _drifted(method, value, threshold),
            }
    return summary


def data_drift_html(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    path: Path,
    max_reference_rows: int = 20000,
    seed: int = 0,
) -> dict[str, Any]:
    """Write Evidently's data drift report for `current` against `reference` to `path`; return its summary.

    The reference is sampled down to `max_reference_rows` (seeded, so the same day renders the same page):
    the page is for eyes, and Evidently's cost and HTML size grow with rows. With a sample of more than
    1000 rows the test choice is the same as on the full reference (Wasserstein / Jensen-Shannon)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cols = [*numeric, *categorical]
    missing = [c for c in cols if c not in reference.columns or c not in current.columns]
    if missing:
        raise ValueError(f"columns {missing} are missing from the reference or the current data")
    if len(current) == 0:
        raise ValueError("the current data has no rows: nothing to report")
    ref = reference[cols]
    if len(ref) > max_reference_rows:
        ref = ref.sample(n=max_reference_rows, random_state=seed)
    definition = DataDefinition(numerical_columns=list(numeric), categorical_columns=list(categorical))
    snap = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current[cols], data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    snap.save_html(str(path))
    summary = summarize_snapshot(snap.dict())
    summary.update({"path": str(path), "n_reference": len(ref), "n_current": len(current)})
    return summary
