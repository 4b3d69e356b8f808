"""Ranking metrics, evaluated honestly in time, and the comparisons built on them.

A user's list for day D is the one a model serves from the interactions before D; items the user had
already interacted with are excluded; it is judged against the relevant items the user interacted with on D
(that they had not seen before). Users with no relevant new item on D are not judged that day (nothing could
be hit). Per user and day: NDCG@k, recall@k, AP@k (MAP@k averaged) and hit@k; per day, the lists' catalogue
coverage, novelty (mean self-information of recommended items under the history's popularity) and
popularity bias (mean share of history interactions of the recommended items, ARP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.ml.ranking.models import ITEM, TIME, USER, Recommender, recommend_ids

RELEVANT = "relevant"
DAY = "event_day"
METRIC_COLUMNS = {"ndcg": "ndcg", "recall": "recall", "map": "ap", "hit_rate": "hit"}


def ndcg_at_k(recommended: Sequence[str], relevant: set[str], k: int) -> float:
    """Binary-gain NDCG@k: DCG over the list's first k, divided by the DCG of a perfect list of the same
    length (min(|relevant|, k) hits on top)."""
    if not relevant:
        return float("nan")
    dcg = sum(1.0 / math.log2(i + 2) for i, x in enumerate(recommended[:k]) if x in relevant)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / idcg


def recall_at_k(recommended: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        return float("nan")
    return len(set(recommended[:k]) & relevant) / len(relevant)


def ap_at_k(recommended: Sequence[str], relevant: set[str], k: int) -> float:
    """Average precision at the ranks of the hits, over min(|relevant|, k) (the best a list of k can do)."""
    if not relevant:
        return float("nan")
    hits, total = 0, 0.0
    for i, x in enumerate(recommended[:k]):
        if x in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(len(relevant), k)


def hit_at_k(recommended: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        return float("nan")
    return float(bool(set(recommended[:k]) & relevant))


def judged_users(history: pd.DataFrame, today: pd.DataFrame) -> dict[str, set[str]]:
    """The users judged on a day, each with the relevant items they interacted with that day and had never
    interacted with before."""
    rel = today[today[RELEVANT] > 0]
    if rel.empty:
        return {}
    seen = set(zip(history[USER].astype(str), history[ITEM].astype(str), strict=True))
    out: dict[str, set[str]] = {}
    for u, i in zip(rel[USER].astype(str), rel[ITEM].astype(str), strict=True):
        if (u, i) not in seen:
            out.setdefault(u, set()).add(i)
    return out


def score_lists(
    day: Any, lists: dict[str, list[str]], truth: dict[str, set[str]], returning: set[str], k: int
) -> pd.DataFrame:
    """One row per judged user: the four metrics of the list they were served, and whether they had a
    history (returning) or not (new)."""
    rows = []
    for u, rel in truth.items():
        rec = lists.get(u, [])
        rows.append(
            {
                "day": day,
                "user": u,
                "ndcg": ndcg_at_k(rec, rel, k),
                "recall": recall_at_k(rec, rel, k),
                "ap": ap_at_k(rec, rel, k),
                "hit": hit_at_k(rec, rel, k),
                "n_relevant": len(rel),
                "segment": "returning" if u in returning else "new",
            }
        )
    return pd.DataFrame(rows, columns=["day", "user", "ndcg", "recall", "ap", "hit", "n_relevant", "segment"])


def list_quality(lists: Sequence[Sequence[str]], history: pd.DataFrame, catalogue_size: int) -> dict[str, float]:
    """Coverage, novelty and popularity bias of a day's lists, against the history's item popularity."""
    items = [x for lst in lists for x in lst]
    if not items:
        return {"coverage": 0.0, "novelty": float("nan"), "popularity_bias": float("nan")}
    counts = history[ITEM].astype(str).value_counts()
    n = max(len(history), 1)
    share = np.array([counts.get(x, 0) / n for x in items], dtype=float)
    novelty = float(np.mean(-np.log2(np.clip(share, 1.0 / (n + 1), None))))
    return {
        "coverage": len(set(items)) / max(catalogue_size, 1),
        "novelty": novelty,
        "popularity_bias": float(share.mean()),
    }


def evaluate_days(
    model: Recommender, interactions: pd.DataFrame, days: Sequence[Any], k: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per user and day metrics, per day summary) of `model` over `days`: each day's lists from the
    interactions before it. `interactions` needs user, item, event_time, event_day (dates) and relevant."""
    day_col = pd.to_datetime(interactions[DAY]).dt.date
    per_user, per_day = [], []
    catalogue = interactions[ITEM].astype(str).nunique()
    for day in days:
        d = pd.Timestamp(day).date()
        history = interactions[day_col < d]
        today = interactions[day_col == d]
        truth = judged_users(history, today)
        if not truth:
            continue
        users = sorted(truth)
        lists = dict(zip(users, recommend_ids(model, history, users, k, as_of=d), strict=True))
        returning = set(history[USER].astype(str)) & set(users)
        scored = score_lists(d, lists, truth, returning, k)
        per_user.append(scored)
        per_day.append(
            {
                "day": d,
                "users": len(users),
                **scored[["ndcg", "recall", "ap", "hit"]].mean().to_dict(),
                **list_quality(list(lists.values()), history, catalogue),
            }
        )
    cols = ["day", "user", "ndcg", "recall", "ap", "hit", "n_relevant", "segment"]
    return (
        pd.concat(per_user, ignore_index=True) if per_user else pd.DataFrame(columns=cols),
        pd.DataFrame(per_day),
    )


def metric_column(metric: str) -> str:
    try:
        return METRIC_COLUMNS[metric]
    except KeyError:
        raise ValueError(f"unknown ranking metric {metric!r}; expected one of {sorted(METRIC_COLUMNS)}") from None


def per_user_mean(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Each user's mean over the days they were judged: the unit the paired bootstrap resamples."""
    return rows.groupby("user")[metric_column(metric)].mean()


@dataclass(frozen=True)
class PairedResult:
    challenger: float
    champion: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, n_boot: int, confidence: float, seed: int) -> PairedResult:
    """Mean of a - b over users with a bootstrap interval over users (same resample for both sides)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n == 0:
        nan = float("nan")
        return PairedResult(nan, nan, nan, nan, nan, 1.0, 0)
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    means = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return PairedResult(
        float(a.mean()), float(b.mean()), float(d.mean()), float(lo), float(hi), float(np.mean(means <= 0)), n
    )


def compare_rankings(
    challenger_rows: pd.DataFrame,
    champion_rows: pd.DataFrame,
    *,
    metric: str,
    confidence: float,
    min_slice_users: int = 20,
    n_boot: int = 2000,
    seed: int = 0,
) -> Any:
    """Challenger vs champion on the same users and days: a paired bootstrap over users, and the same per
    segment (new vs returning users). Returns the tabular gate's `Comparison`, so one gate rule decides."""
    from mlops_assets.ml.evaluate import Comparison

    col = metric_column(metric)
    keys = ["day", "user"]
    both = challenger_rows[[*keys, col, "segment"]].merge(
        champion_rows[[*keys, col]], on=keys, suffixes=("_a", "_b"), validate="one_to_one"
    )
    users = both.groupby("user")[[f"{col}_a", f"{col}_b"]].mean()
    res = paired_bootstrap(
        users[f"{col}_a"].to_numpy(), users[f"{col}_b"].to_numpy(), n_boot=n_boot, confidence=confidence, seed=seed
    )
    slices = []
    for seg, g in both.groupby("segment"):
        u = g.groupby("user")[[f"{col}_a", f"{col}_b"]].mean()
        if len(u) < min_slice_users:
            continue
        sa, sb = float(u[f"{col}_a"].mean()), float(u[f"{col}_b"].mean())
        slices.append(
            {
                "slice_column": "user",
                "slice_value": seg,
                "n": len(u),
                "challenger": sa,
                "champion": sb,
                "delta": sa - sb,
            }
        )
    table = pd.DataFrame(slices, columns=["slice_column", "slice_value", "n", "challenger", "champion", "delta"])
    return Comparison(
        f"{metric}@k",
        res.challenger,
        res.champion,
        res.delta,
        res.ci_low,
        res.ci_high,
        res.p_value,
        res.n,
        n_boot,
        table.sort_values("delta").reset_index(drop=True),
        confidence,
    )


def ranking_decay(
    rows: pd.DataFrame,
    *,
    metric: str,
    reference_value: float,
    tolerance: float,
    window_days: int,
    min_users: int,
    seed: int = 0,
) -> Any:
    """Decay of the served lists' metric over the window's days against the champion's hold-out value: the
    same rule and result as the tabular decay (window value with a bootstrap interval over users; decay when
    the whole interval is below reference - tolerance and enough users were judged)."""
    from mlops_assets.ml.decay import DecayResult

    col = metric_column(metric)
    if rows.empty:
        return DecayResult(
            metric,
            None,
            float("nan"),
            float("nan"),
            float("nan"),
            reference_value,
            tolerance,
            0,
            0,
            False,
            "no judged users in the window",
        )
    days = sorted(pd.to_datetime(rows["day"]).dt.date.unique())[-window_days:]
    win = rows[pd.to_datetime(rows["day"]).dt.date.isin(days)]
    per_user = win.groupby("user")[col].mean().to_numpy()
    last = win[pd.to_datetime(win["day"]).dt.date == days[-1]][col]
    res = paired_bootstrap(per_user, np.zeros(len(per_user)), n_boot=1000, confidence=0.95, seed=seed)
    limit = reference_value - tolerance
    n_users = len(per_user)
    detected = n_users >= min_users and res.ci_high < limit
    if n_users < min_users:
        reason = f"only {n_users} users judged in the window (< {min_users}): no decision"
    elif detected:
        reason = (
            f"{metric}@k {res.challenger:.4f} over {len(days)} days, 95% CI [{res.ci_low:.4f}, {res.ci_high:.4f}] "
            f"entirely below the champion's hold-out {reference_value:.4f} - {tolerance:g}"
        )
    else:
        reason = (
            f"{metric}@k {res.challenger:.4f} over {len(days)} days (CI high {res.ci_high:.4f}) not below {limit:.4f}"
        )
    return DecayResult(
        metric,
        float(last.mean()) if len(last) else None,
        res.challenger,
        res.ci_low,
        res.ci_high,
        reference_value,
        tolerance,
        n_users,
        len(days),
        bool(detected),
        reason,
    )


def interaction_drift(
    reference_items: dict[Any, int], reference_users: set[str] | dict[Any, int], current: pd.DataFrame
) -> dict[str, float]:
    """What moved in the interactions: Jensen-Shannon distance (base 2) of item popularity against the
    reference, the share of interactions on items and by users the reference never saw, and user activity
    (interactions per active user)."""
    items = current[ITEM].astype(str)
    cur = items.value_counts()
    keys = sorted(set(map(str, reference_items)) | set(cur.index))
    ref_map = {str(k): v for k, v in reference_items.items()}
    p = np.array([ref_map.get(x, 0) for x in keys], float)
    q = np.array([cur.get(x, 0) for x in keys], float)
    js = float("nan")
    if p.sum() > 0 and q.sum() > 0:
        from scipy.spatial.distance import jensenshannon

        js = float(jensenshannon(p / p.sum(), q / q.sum(), base=2))
    known_users = {str(u) for u in reference_users}
    users = current[USER].astype(str)
    return {
        "item_popularity_js": js,
        "new_item_share": float((~items.isin(set(ref_map))).mean()) if len(items) else 0.0,
        "new_user_share": float((~users.isin(known_users)).mean()) if len(users) else 0.0,
        "interactions_per_user": float(len(users) / max(users.nunique(), 1)),
    }


__all__ = [
    "DAY",
    "RELEVANT",
    "TIME",
    "ap_at_k",
    "compare_rankings",
    "evaluate_days",
    "hit_at_k",
    "interaction_drift",
    "ndcg_at_k",
    "ranking_decay",
    "recall_at_k",
]
