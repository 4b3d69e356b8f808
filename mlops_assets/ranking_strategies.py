"""The end of a recommender's replay: the served lists per week, and continuous training against the fixed
strategies (ml/ranking/compare.py) on the same users and days. Like strategies.py for the tabular tasks, it
reads the replay's stores and registry; the fixed rows are refit in two worker processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from joblib import Parallel, delayed

from mlops_assets.ml.ranking.compare import RankingComparison, beats, judge_fixed_rows, split_days, summarize, weekly
from mlops_assets.ml.ranking.metrics import metric_column
from mlops_assets.storage.models import load_verified
from mlops_assets.storage.stores import store_for

MIN_DAYS_PER_WORKER = 10

if TYPE_CHECKING:
    from mlops_assets.replay import ReplayResult


def served_rows(result: ReplayResult) -> pd.DataFrame:
    """Every judged user's metrics on the lists served in the replay, with the version that served them."""
    from mlops_assets.defs.ranking import SCORES

    store = store_for(result.settings, result.spec)
    rows = store.read_history(SCORES)
    if rows.empty:
        return rows
    rows = rows.assign(day=pd.to_datetime(rows["day"]).dt.date)
    first, last = result.days[0].day, result.days[-1].day
    return rows[(rows["day"] >= first) & (rows["day"] <= last)]


def served_metric_by(result: ReplayResult, freq: str) -> pd.Series:
    """The served lists' metric (mean over judged users and days) per period."""
    rows = served_rows(result)
    if rows.empty:
        return pd.Series(dtype=float)
    col = metric_column(result.spec.metric)
    period = pd.to_datetime(rows["day"]).dt.to_period(freq)
    return rows.groupby(period)[col].mean()


def compare_ranking_strategies(result: ReplayResult) -> RankingComparison:
    from mlops_assets.defs.ranking import interactions
    from mlops_assets.defs.resources import ModelRegistryResource

    spec, settings = result.spec, result.settings
    assert spec.ranking is not None
    k, col = spec.ranking.k, metric_column(spec.metric)
    store = store_for(settings, spec)
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    versions = registry.client.search_model_versions(f"name='{spec.model_name}'")
    bandages = [v for v in versions if v.tags.get("mlops.is_baseline") == "true"]
    served = served_rows(result)
    if not bandages or served.empty:
        return RankingComparison(
            spec.metric, k, pd.DataFrame(), pd.DataFrame(), "No lists served yet: nothing to compare."
        )
    first = min(bandages, key=lambda v: int(v.version))
    bandage = load_verified(
        f"models:/{spec.model_name}/{first.version}", first.tags["mlops.model_sha256"], settings.mlflow_tracking_uri
    ).model
    rows = interactions(spec, store.training_frame(result.days[-1].day))
    days = sorted(served["day"].unique())
    # two worker processes once there is enough to refit: starting one costs seconds of imports
    workers = 2 if len(days) >= MIN_DAYS_PER_WORKER * 2 else 1
    outputs = Parallel(n_jobs=workers)(
        delayed(judge_fixed_rows)(rows, chunk, k, {"bandage never retrained": bandage})
        for chunk in split_days(days, workers)
    )
    fixed = pd.concat([o[0] for o in outputs if len(o[0])], ignore_index=True)
    cpu: dict[str, float] = {}
    for _, c in outputs:
        for name, v in c.items():
            cpu[name] = cpu.get(name, 0.0) + v
    fixed = fixed.assign(day=pd.to_datetime(fixed["day"]).dt.date)
    pairs = fixed[["day", "user"]].drop_duplicates()
    cont = served.merge(pairs, on=["day", "user"], how="inner").assign(row="continuous")
    # the same (user, day) pairs in every row: a pair the served log lacks (no list that day) is dropped everywhere
    keep = cont[["day", "user"]]
    fixed = fixed.merge(keep, on=["day", "user"], how="inner")
    every = pd.concat([cont[fixed.columns.intersection(cont.columns)], fixed], ignore_index=True)
    cpu["continuous"] = sum(r["cpu_seconds"] for r in result.retrains)
    cpu["bandage never retrained"] = 0.0
    n_days = len(days)
    retrains = {"continuous": len(result.retrains), "bandage never retrained": 0}
    retrains.update({name: n_days for name in cpu if name not in retrains})
    totals = summarize(every, col, cpu, retrains)
    note = (
        f"Same {len(keep)} judged (user, day) pairs for every row, {min(days)} to {max(days)} ({n_days} days, from "
        f"the bandage's first list): a user is judged on a day when they rated a film they had not rated before "
        f"{spec.ranking.relevance_threshold or 'at all'} or more; lists exclude what they had rated.\n"
        f"continuous = what was served (bandage v{first.version}, then the champions the gate promoted); CPU counts "
        "every sweep trial and refit of every retrain (the bandage's own fit is not counted in any row).\n"
        f"Verdict: {beats(totals, col)}."
    )
    return RankingComparison(spec.metric, k, weekly(every, col), totals, note)
