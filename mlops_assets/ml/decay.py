"""Has the champion's quality decayed, judged on the predictions whose labels have arrived?

Rule: take the last `window_days` days that have labels, compute the metric over all their rows, and a
seeded percentile-bootstrap confidence interval for it. Decay is declared only when the *whole* interval
is worse than the champion's validation metric by more than `tolerance`.

Why a bootstrap interval over a rolling window rather than CUSUM or Page–Hinkley:
- ROC AUC is not a mean of per-row terms, while CUSUM / Page–Hinkley accumulate per-observation deviations
  from a known in-control mean and variance. The bootstrap works for any metric, ranking metrics included.
- Labels arrive late and in uneven batches (a day may carry 300 rows or 3,000). The interval's width
  follows the rows actually available, so a thin day cannot fire the rule on noise; a fixed CUSUM drift
  allowance and threshold would have to be re-tuned per dataset and per label volume.
- It is stateless: the decision is a pure function of the table, so a replay or a restarted sensor gets
  the same answer, and there is no accumulator to reset after a retrain or a champion swap.
- The cost: a slow, gradual decline is seen a few days later than a tuned CUSUM would see it. With a
  retrain cool-down of days anyway, that latency does not change when a retrain can happen.

The bootstrap is vectorised: one index matrix (n_boot x rows) and every replicate's metric from gathers
and one bincount (ROC AUC through Mann–Whitney counts per tie group of the scores), so 7k rows x 500
replicates takes tens of milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

METRICS = ("roc_auc", "log_loss", "accuracy", "rmse", "mae", "r2")
_HIGHER_IS_BETTER = {
    "roc_auc": True,
    "accuracy": True,
    "r2": True,
    "log_loss": False,
    "rmse": False,
    "mae": False,
    # a recommender's metrics at k (ml/ranking/metrics.py scores them): their direction is all the cost-aware
    # policy and the comparisons need from here
    "ndcg": True,
    "recall": True,
    "map": True,
    "hit_rate": True,
}


def higher_is_better(metric: str) -> bool:
    """Direction of each metric, so "worse than the reference" can be stated once for all of them."""
    try:
        return _HIGHER_IS_BETTER[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; expected one of {tuple(_HIGHER_IS_BETTER)}") from None


@dataclass(frozen=True)
class DecayResult:
    """The window's metric with its interval, against the validation metric, and the decision's reason."""

    metric: str
    day_value: float | None
    window_value: float
    ci_low: float
    ci_high: float
    reference_value: float
    tolerance: float
    n_rows: int
    n_days: int
    decay_detected: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON (NaN becomes None), because it is written into the report's metadata."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
        out["decay_detected"] = bool(self.decay_detected)
        return out


# --------------------------------------------------------------------------------------------------------
# metrics over resamples: `idx` is an index matrix (one row of row indices per bootstrap replicate); the
# plain metric is the single replicate arange(n).
# --------------------------------------------------------------------------------------------------------


def _binary(y_true: np.ndarray, metric: str) -> np.ndarray:
    values = np.unique(y_true)
    if not np.isin(values, [0, 1]).all():
        raise ValueError(f"{metric} needs binary labels 0/1, got values {values[:10].tolist()}")
    return y_true.astype(np.int64)


def _auc_replicates(idx: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """ROC AUC per replicate: P(score_pos > score_neg) + 0.5 P(tie), from per-replicate counts of
    (class, tie group) obtained with a single bincount; no per-replicate sort."""
    uniq, group = np.unique(s, return_inverse=True)
    n_groups = len(uniq)
    n_boot = idx.shape[0]
    code = (y * n_groups + group)[idx] + (np.arange(n_boot) * 2 * n_groups)[:, None]
    counts = np.bincount(code.ravel(), minlength=n_boot * 2 * n_groups).reshape(n_boot, 2, n_groups)
    gn, gp = counts[:, 0, :], counts[:, 1, :]
    neg_below = np.cumsum(gn, axis=1) - gn
    num = np.einsum("ij,ij->i", gp, neg_below) + 0.5 * np.einsum("ij,ij->i", gp, gn)
    den = gp.sum(axis=1).astype(np.float64) * gn.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _metric_replicates(metric: str, idx: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    if metric == "roc_auc":
        return _auc_replicates(idx, _binary(y, metric), s)
    if metric == "log_loss":
        yb = _binary(y, metric)
        eps = np.finfo(np.float64).eps
        p = np.clip(s.astype(np.float64), eps, 1 - eps)
        per_row = -(yb * np.log(p) + (1 - yb) * np.log1p(-p))
        return per_row[idx].mean(axis=1)
    if metric == "accuracy":
        # scores in [0, 1] against 0/1 labels are probabilities (cut at 0.5); otherwise they are labels
        is_prob = bool(
            np.issubdtype(s.dtype, np.floating)
            and s.min() >= 0
            and s.max() <= 1
            and np.isin(np.unique(y), [0, 1]).all()
        )
        pred = (s >= 0.5).astype(y.dtype) if is_prob else s
        return (pred == y).astype(np.float64)[idx].mean(axis=1)
    e = s.astype(np.float64) - y.astype(np.float64)
    if metric == "rmse":
        return np.sqrt((e * e)[idx].mean(axis=1))
    if metric == "mae":
        return np.abs(e)[idx].mean(axis=1)
    if metric == "r2":
        yi = y.astype(np.float64)[idx]
        ss_tot = ((yi - yi.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        ss_res = (e * e)[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(ss_tot > 0, 1 - ss_res / ss_tot, np.nan)
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


BOOT_CHUNK_CELLS = 400_000


def score(metric: str, y_true: Any, y_score: Any) -> float:
    """The metric on one set of rows (NaN when undefined, e.g. ROC AUC with a single class)."""
    higher_is_better(metric)  # validates the name
    y = np.asarray(y_true)
    s = np.asarray(y_score)
    if len(y) != len(s):
        raise ValueError(f"y_true has {len(y)} rows but y_score has {len(s)}")
    if len(y) == 0:
        return float("nan")
    return float(_metric_replicates(metric, np.arange(len(y))[None, :], y, s)[0])


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"


def detect_decay(
    scored: pd.DataFrame,
    *,
    metric: str,
    reference_value: float,
    tolerance: float,
    window_days: int = 7,
    n_boot: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
    min_rows: int = 200,
) -> DecayResult:
    """Decay when the bootstrap interval of the metric over the last `window_days` labelled days lies
    entirely beyond `reference_value` -/+ `tolerance` (on the worse side for this metric)."""
    higher = higher_is_better(metric)
    missing = {"day", "y_true", "y_score"} - set(scored.columns)
    if missing:
        raise ValueError(f"scored predictions are missing columns {sorted(missing)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if window_days < 1 or n_boot < 1:
        raise ValueError("window_days and n_boot must be >= 1")
    rows = scored.loc[scored["y_true"].notna() & scored["y_score"].notna(), ["day", "y_true", "y_score"]]
    days = pd.to_datetime(rows["day"]).dt.normalize()
    last_days = np.sort(days.unique())[-window_days:]
    in_window = days.isin(last_days).to_numpy()
    y = rows["y_true"].to_numpy()[in_window]
    s = rows["y_score"].to_numpy()[in_window]
    n, n_days = len(y), len(last_days)
    limit = reference_value - tolerance if higher else reference_value + tolerance
    nan = float("nan")

    def result(window: float, lo: float, hi: float, day: float | None, detected: bool, reason: str) -> DecayResult:
        return DecayResult(
            metric, day, window, lo, hi, float(reference_value), float(tolerance), n, n_days, detected, reason
        )

    if n < min_rows:
        window = score(metric, y, s) if n else nan
        return result(window, nan, nan, None, False, f"not enough labelled rows ({n} < {min_rows})")
    latest = days.to_numpy()[in_window] == last_days[-1]
    day_value = score(metric, y[latest], s[latest])
    day_out = day_value if math.isfinite(day_value) else None
    window = score(metric, y, s)
    if not math.isfinite(window):
        return result(
            window,
            nan,
            nan,
            day_out,
            False,
            f"{metric} is undefined on the window ({n} rows, e.g. a single class)",
        )
    rng = np.random.default_rng(seed)
    # replicates in chunks: the same numbers as one big index matrix, but the working set stays in cache
    chunk = max(1, min(n_boot, BOOT_CHUNK_CELLS // n))
    boots = np.concatenate(
        [
            _metric_replicates(metric, rng.integers(0, n, size=(min(chunk, n_boot - start), n)), y, s)
            for start in range(0, n_boot, chunk)
        ]
    )
    alpha = (1 - confidence) / 2
    lo, hi = (float(v) for v in np.nanquantile(boots, [alpha, 1 - alpha]))
    detected = hi < limit if higher else lo > limit
    side = "below" if higher else "above"
    span = (
        f"{metric} {window:.4f} over the last {n_days} labelled days ({n} rows, {confidence:.0%} CI {lo:.4f}–{hi:.4f})"
    )
    if detected:
        reason = (
            f"decay: {span} lies entirely {side} {limit:.4f} (validation {reference_value:.4f}, "
            f"tolerance {tolerance:g})"
        )
    else:
        reason = (
            f"no decay: {span} is not entirely {side} {limit:.4f} (validation {reference_value:.4f}, "
            f"tolerance {tolerance:g}); latest day {_fmt(day_out)}"
        )
    return result(window, lo, hi, day_out, detected, reason)
