"""Plots attached to assets, where a person would rather look at a trend than read numbers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: assets run in worker processes with no display
import matplotlib.pyplot as plt
import pandas as pd


def drift_over_time(history: pd.DataFrame, path: Path, *, threshold: float, top: int = 5) -> Path:
    """Drift share per day with the threshold, and the statistic of the columns that drift most often.

    `history` has one row per (day, column): day, column, statistic, drifted, drift_share, stattest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    per_day = history.groupby("day")["drift_share"].first()
    ax1.plot(per_day.index, per_day.values, marker=".", lw=1)
    ax1.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax1.set_ylabel("drift share")
    ax1.set_ylim(0, 1)
    ax1.legend(loc="upper left")
    ax1.set_title("Data drift against the champion's training data")
    often = history.groupby("column")["drifted"].mean().sort_values(ascending=False).head(top).index
    for col in often:
        sub = history[history["column"] == col]
        ax2.plot(sub["day"], sub["drifted"].astype(float).rolling(7, min_periods=1).mean(), label=col, lw=1)
    ax2.set_ylabel("drifted (7-day share)")
    ax2.set_ylim(-0.05, 1.05)
    ax2.legend(loc="upper left", fontsize=7, ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def metric_over_time(
    history: pd.DataFrame,
    path: Path,
    *,
    metric: str,
    reference: float | None,
    tolerance: float,
    versions: Sequence[str] = (),
) -> Path:
    """The champion's metric per labelled day and over the rolling window, against its validation score.

    `history` has: day, day_value, window_value, ci_low, ci_high, model_version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(history["day"], history["day_value"], ".", alpha=0.35, label=f"{metric} per day")
    ax.plot(history["day"], history["window_value"], lw=1.5, label=f"{metric}, rolling window")
    ax.fill_between(history["day"], history["ci_low"], history["ci_high"], alpha=0.2, label="95% interval")
    if reference is not None:
        ax.axhline(reference, color="tab:green", ls="--", lw=1, label="champion's hold-out score")
        ax.axhline(reference - tolerance, color="tab:red", ls=":", lw=1, label="decay line")
    changes = history.loc[history["model_version"] != history["model_version"].shift(), ["day", "model_version"]]
    for _, row in changes.iloc[1:].iterrows():
        ax.axvline(row["day"], color="grey", lw=0.8)
        ax.text(row["day"], ax.get_ylim()[1], f" v{row['model_version']}", fontsize=7, va="top")
    ax.set_title("Champion quality on days whose labels have arrived")
    ax.legend(loc="lower left", fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
