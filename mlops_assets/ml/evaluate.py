"""Challenger against champion on the same rows, with an interval that says whether the gap is real.

The bootstrap is paired (both models are scored on the same resampled rows), so the interval is of the
*difference*, which is much narrower than two separate intervals would suggest. Resamples are drawn as
count weights over rows and every metric is computed with those weights in one vectorised pass, so a
thousand resamples of tens of thousands of rows take about a second.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.ml.decay import higher_is_better, score

__all__ = ["Comparison", "compare_models", "higher_is_better", "performance_html", "score", "weighted_scores"]


def _auc_weighted(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of count weights W (B x n), ties counted half, via score groups."""
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order].astype(float)
    Ws = W[:, order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    pos = np.add.reduceat(Ws * y_sorted, starts, axis=1)
    neg = np.add.reduceat(Ws, starts, axis=1) - pos
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def weighted_scores(metric: str, y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """The metric under each row of count weights W (B x n)."""
    y, s = np.asarray(y, dtype=float), np.asarray(s, dtype=float)
    total = W.sum(axis=1)
    if metric == "roc_auc":
        return _auc_weighted(y, s, W)
    if metric == "log_loss":
        p = np.clip(s, 1e-15, 1 - 1e-15)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        return (W @ loss) / total
    if metric == "accuracy":
        pred = (s >= 0.5).astype(float) if np.all((s >= 0) & (s <= 1)) else s
        return (W @ (pred == y).astype(float)) / total
    if metric == "rmse":
        return np.sqrt((W @ (y - s) ** 2) / total)
    if metric == "mae":
        return (W @ np.abs(y - s)) / total
    if metric == "r2":
        mean = (W @ y) / total
        ss_tot = (W * (y[None, :] - mean[:, None]) ** 2).sum(axis=1)
        ss_res = W @ (y - s) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            return 1.0 - ss_res / ss_tot
    raise ValueError(f"unknown metric {metric!r}")


# Resample weights are built this many cells at a time (about 16 MB of float64): the whole 1000 x n matrix
# for a 20k-row hold-out took 1 GB and, being far larger than the caches, ran 3-4 times slower.
_CHUNK_CELLS = 2_000_000


def _paired_deltas(metric: str, y: np.ndarray, a: np.ndarray, b: np.ndarray, *, n_boot: int, seed: int) -> np.ndarray:
    """challenger - champion under each bootstrap resample, both models scored on the same resampled rows.

    Each resample is a row of multinomial counts (n draws with replacement), built by a bincount of uniform
    indices, which is the same distribution as `rng.multinomial` and twice as fast at this size."""
    n = len(y)
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(k, n)) + (np.arange(k) * n)[:, None]
        W = np.bincount(idx.ravel(), minlength=k * n).reshape(k, n).astype(float)
        out[start : start + k] = weighted_scores(metric, y, a, W) - weighted_scores(metric, y, b, W)
    return out


@dataclass(frozen=True)
class Comparison:
    metric: str
    challenger: float
    champion: float
    delta: float  # oriented: positive means the challenger is better, whatever the metric's direction
    ci_low: float
    ci_high: float
    p_value: float  # share of resamples in which the challenger was not better (one-sided)
    n: int
    n_boot: int
    slices: pd.DataFrame = field(default_factory=pd.DataFrame)
    confidence: float = 0.95  # level of [ci_low, ci_high]; the gate checks it is the level its policy asks for

    def to_dict(self) -> dict[str, Any]:
        out = {
            k: getattr(self, k)
            for k in (
                "metric",
                "challenger",
                "champion",
                "delta",
                "ci_low",
                "ci_high",
                "p_value",
                "n",
                "n_boot",
                "confidence",
            )
        }
        out["slices"] = self.slices.to_dict(orient="records")
        return out


def compare_models(
    y_true: Any,
    challenger_scores: Any,
    champion_scores: Any,
    *,
    metric: str,
    slices: pd.DataFrame | None = None,
    min_slice_rows: int = 200,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Comparison:
    y = np.asarray(y_true, dtype=float)
    a, b = np.asarray(challenger_scores, dtype=float), np.asarray(champion_scores, dtype=float)
    n = len(y)
    if n == 0 or len(a) != n or len(b) != n:
        raise ValueError(f"compare_models needs equal, non-empty inputs (got {n}, {len(a)}, {len(b)})")
    sign = 1.0 if higher_is_better(metric) else -1.0
    deltas = _paired_deltas(metric, y, a, b, n_boot=n_boot, seed=seed) * sign
    deltas = deltas[np.isfinite(deltas)]
    alpha = 1.0 - confidence
    ca, cb = score(metric, y, a), score(metric, y, b)
    ci_low, ci_high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2]) if len(deltas) else (np.nan, np.nan)
    p_value = float(np.mean(deltas <= 0)) if len(deltas) else 1.0
    rows = []
    if slices is not None:
        for col in slices.columns:
            values = slices[col].astype(str).to_numpy()
            for value in pd.unique(values):
                m = values == value
                if m.sum() < min_slice_rows or (metric == "roc_auc" and len(np.unique(y[m])) < 2):
                    continue
                sa, sb = score(metric, y[m], a[m]), score(metric, y[m], b[m])
                rows.append(
                    {
                        "slice_column": col,
                        "slice_value": value,
                        "n": int(m.sum()),
                        "challenger": sa,
                        "champion": sb,
                        "delta": sign * (sa - sb),
                    }
                )
    table = pd.DataFrame(rows, columns=["slice_column", "slice_value", "n", "challenger", "champion", "delta"])
    return Comparison(
        metric,
        float(ca),
        float(cb),
        float(sign * (ca - cb)),
        float(ci_low),
        float(ci_high),
        p_value,
        n,
        n_boot,
        table.sort_values("delta").reset_index(drop=True),
        confidence,
    )


def performance_html(df: pd.DataFrame, *, target: str, prediction: str, task: str, path: Path) -> Path:
    """Evidently's classification or regression report of one model on the hold-out, for people."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Regression, Report
    from evidently.presets import ClassificationPreset, RegressionPreset

    path.parent.mkdir(parents=True, exist_ok=True)
    data = df[[target, prediction]].copy()
    if task == "classification":
        data[target] = data[target].astype(int)
        definition = DataDefinition(
            classification=[BinaryClassification(target=target, prediction_probas=prediction, pos_label=1)]
        )
        preset: Any = ClassificationPreset()
    else:
        definition = DataDefinition(regression=[Regression(target=target, prediction=prediction)])
        preset = RegressionPreset()
    with warnings.catch_warnings():
        # a hold-out where the model never crosses 0.5 makes sklearn warn about precision once per metric
        from sklearn.exceptions import UndefinedMetricWarning  # scikit-learn's import is paid where it is used

        warnings.simplefilter("ignore", UndefinedMetricWarning)
        snapshot = Report([preset]).run(Dataset.from_pandas(data, data_definition=definition), None)
    snapshot.save_html(str(path))
    return path
