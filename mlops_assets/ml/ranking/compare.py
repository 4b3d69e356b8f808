"""The replay's comparison for a recommender: what was served against the fixed strategies a team would
otherwise run, on the same judged users and days.

Rows: continuous (the lists actually served, champion by champion), the bandage never retrained, item-KNN
(the bandage's recipe) refit every morning, popularity of all time and of the last 30 days refit every
morning, EASE refit every morning. Each day's lists come from the interactions before that day; every row is
judged on exactly the same (user, day) pairs. Training CPU is measured per row in the process that fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlops_assets.ml.cost import Stopwatch
from mlops_assets.ml.ranking.metrics import DAY, USER, judged_users, score_lists
from mlops_assets.ml.ranking.models import BANDAGE_FAMILY, BANDAGE_PARAMS, Recommender, recommend_ids

# (row name, family, params, window days) refit every morning on the interactions before the day
DAILY_RECIPES: list[tuple[str, str, dict[str, Any], int | None]] = [
    ("item-KNN refit daily", BANDAGE_FAMILY, BANDAGE_PARAMS, None),
    ("popularity all time", "popularity", {}, None),
    ("popularity 30 days, daily", "popularity", {}, 30),
    ("EASE refit daily", "ease", {"l2": 500.0}, None),
]


def judge_fixed_rows(
    interactions: pd.DataFrame,
    days: Sequence[Any],
    k: int,
    frozen: dict[str, Recommender],
    recipes: Sequence[tuple[str, str, dict[str, Any], int | None]] = DAILY_RECIPES,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per (row, user, day) metrics of frozen models and of recipes refit each morning, and each recipe's
    training CPU seconds. Runs in a worker process: no Dagster, no store, only the frame it is given."""
    day_col = pd.to_datetime(interactions[DAY]).dt.date
    out: list[pd.DataFrame] = []
    cpu = {name: 0.0 for name, *_ in recipes}
    for day in days:
        d = pd.Timestamp(day).date()
        history = interactions[day_col < d]
        truth = judged_users(history, interactions[day_col == d])
        if not truth:
            continue
        users = sorted(truth)
        returning = set(history[USER].astype(str)) & set(users)
        models: dict[str, Recommender] = dict(frozen)
        for name, fam, params, window in recipes:
            with Stopwatch() as sw:
                models[name] = Recommender(fam, params, window_days=window).fit(history, pd.Timestamp(d))
            cpu[name] += sw.cpu_seconds
        for name, model in models.items():
            lists = dict(zip(users, recommend_ids(model, history, users, k, as_of=d), strict=True))
            out.append(score_lists(d, lists, truth, returning, k).assign(row=name))
    return (pd.concat(out, ignore_index=True) if out else pd.DataFrame()), cpu


@dataclass
class RankingComparison:
    metric: str
    k: int
    weekly: pd.DataFrame
    totals: pd.DataFrame
    note: str

    def render(self) -> str:
        return "\n".join(
            [
                f"Continuous training vs fixed strategies ({self.metric}@{self.k}, same users and days, by week)",
                self.weekly.round(4).to_string(),
                "",
                self.totals.to_string(),
                self.note,
            ]
        )


def summarize(rows: pd.DataFrame, metric_col: str, cpu: dict[str, float], retrains: dict[str, int]) -> pd.DataFrame:
    """Totals per row: the metric over every judged (user, day), over returning users only, recall and hit
    rate, with retrains and training CPU."""
    g = rows.groupby("row")
    ret = rows[rows["segment"] == "returning"].groupby("row")
    table = pd.DataFrame(
        {
            metric_col: g[metric_col].mean(),
            f"{metric_col} returning": ret[metric_col].mean(),
            "recall": g["recall"].mean(),
            "hit": g["hit"].mean(),
            "retrains": pd.Series(retrains),
            "training CPU s": pd.Series(cpu).round(1),
        }
    )
    order = ["continuous", "bandage never retrained", *(n for n, *_ in DAILY_RECIPES)]
    return table.reindex([o for o in order if o in table.index]).round(4)


def beats(totals: pd.DataFrame, metric_col: str) -> str:
    """The goal's verdict: continuous above every fixed row, and cheaper than the cheapest daily row it beats
    by less than 2 %."""
    if "continuous" not in totals.index:
        return "no continuous row"
    c = float(totals.loc["continuous", metric_col])
    others = totals.drop(index="continuous")
    lost = [str(n) for n, v in others[metric_col].items() if not c > float(v)]
    close = [
        str(n) for n, v in others[metric_col].items() if n in dict(DAILY_RECIPES_BY_NAME) and c > v and c < v * 1.02
    ]
    parts = [
        "continuous beats every fixed row" if not lost else f"continuous does NOT beat: {', '.join(lost)}",
    ]
    if close:
        cheapest = min(close, key=lambda n: float(totals.loc[n, "training CPU s"]))
        cc, oc = float(totals.loc["continuous", "training CPU s"]), float(totals.loc[cheapest, "training CPU s"])
        parts.append(
            f"beats {', '.join(close)} by < 2 %; cheapest of them {cheapest}: {oc:.1f} CPU s vs continuous {cc:.1f}"
            f" ({'less' if cc < oc else 'NOT less'})"
        )
    else:
        parts.append("no daily row within 2 % of continuous")
    return "; ".join(parts)


DAILY_RECIPES_BY_NAME = [(n, (f, p, w)) for n, f, p, w in DAILY_RECIPES]


def weekly(rows: pd.DataFrame, metric_col: str) -> pd.DataFrame:
    w = rows.assign(week=pd.to_datetime(rows["day"]).dt.to_period("W-SUN").map(lambda p: str(p.start_time.date())))
    table = w.pivot_table(index="week", columns="row", values=metric_col, aggfunc="mean")
    order = ["continuous", "bandage never retrained", *(n for n, *_ in DAILY_RECIPES)]
    return table[[o for o in order if o in table.columns]]


def split_days(days: Sequence[Any], parts: int) -> list[list[Any]]:
    """Days dealt to workers in turn, so each gets early (cheap) and late (costly) days alike."""
    return [list(days[i::parts]) for i in range(parts) if list(days[i::parts])]


__all__ = ["DAILY_RECIPES", "RankingComparison", "beats", "judge_fixed_rows", "split_days", "summarize", "weekly"]
