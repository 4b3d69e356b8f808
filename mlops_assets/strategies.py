"""Continuous training against the two strategies a user would otherwise pick, on the same replay.

- continuous: what the system actually served (the prediction log), champion by champion;
- never: the first trained model, kept for the rest of the year;
- daily: the first sweep's winning recipe (family, hyper-parameters, training window, recency weighting,
  row cap) refit every morning on every label known by then, the blind schedule many teams run.

All three are scored on the same rows (every labelled event after the first trained model existed), with
the same point-in-time features, month by month; cost is training CPU-seconds measured in this process.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from joblib import Memory, Parallel, delayed
from threadpoolctl import threadpool_limits

from mlops_assets.ml.automl import SearchSpace, fit_recipe, window_rows
from mlops_assets.ml.cost import Stopwatch
from mlops_assets.ml.decay import higher_is_better
from mlops_assets.ml.evaluate import score
from mlops_assets.ml.models import predict_scores
from mlops_assets.ml.oracle import hindsight_schedule
from mlops_assets.storage.models import load_verified
from mlops_assets.storage.stores import store_for

if TYPE_CHECKING:  # the daily refits run in worker processes that import this module: keep Dagster out of them
    from mlops_assets.defs.resources import ModelRegistryResource
    from mlops_assets.replay import ReplayResult


@dataclass
class StrategyComparison:
    metric: str
    monthly: pd.DataFrame  # month x strategy
    totals: pd.DataFrame  # strategy x (metric, retrains, cpu_seconds)
    note: str

    def render(self) -> str:
        return "\n".join(
            [
                f"Continuous training vs never retrained, a weekly and a daily refit, and the hindsight oracle "
                f"({self.metric}, same rows, by month)",
                self.monthly.round(4).to_string(),
                "",
                self.totals.to_string(),
                self.note,
            ]
        )


def _first_trained_version(registry: ModelRegistryResource, name: str) -> Any | None:
    versions = registry.client.search_model_versions(f"name='{name}'")
    trained = [v for v in versions if v.tags.get("mlops.is_baseline") == "false"]
    return min(trained, key=lambda v: int(v.version)) if trained else None


def _tag_number(tags: dict[str, str], key: str) -> float | None:
    value = tags.get(key)
    return None if value in (None, "", "None", "nan") else float(value)


def _refit_and_score(rows: pd.DataFrame, today: pd.DataFrame, recipe: dict[str, Any]) -> tuple[np.ndarray, float]:
    with Stopwatch() as sw, threadpool_limits(limits=1):
        model, _ = fit_recipe(rows, **recipe)
    return predict_scores(model, today), sw.cpu_seconds


def compare_strategies(result: ReplayResult) -> StrategyComparison:
    from mlops_assets.defs.resources import ModelRegistryResource

    spec, settings = result.spec, result.settings
    store = store_for(settings, spec)
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    first = _first_trained_version(registry, spec.model_name)
    if first is None:
        return StrategyComparison(
            spec.metric,
            pd.DataFrame(),
            pd.DataFrame(),
            "No trained model in this replay yet: nothing to compare.",
        )
    as_of = dt.date.fromisoformat(first.tags["mlops.training_as_of"])
    last = result.days[-1].day
    frame = store.training_frame(last)
    frame["event_day"] = pd.to_datetime(frame["event_day"]).dt.date
    frame["arrival_day"] = pd.to_datetime(frame["arrival_day"]).dt.date
    period = frame[frame["event_day"] > as_of].reset_index(drop=True)

    # continuous: the prediction log, joined to the same rows
    served = store.scored_labels(as_of + dt.timedelta(days=1), last)
    log = store.predictions_after(as_of)
    period = period.merge(log.rename(columns={"score": "continuous"}), on=["entity_id", "event_time"], how="left")

    # never: the first trained model, frozen
    model0 = load_verified(
        f"models:/{spec.model_name}/{first.version}",
        first.tags["mlops.model_sha256"],
        settings.mlflow_tracking_uri,
    ).model
    period["never"] = predict_scores(model0, period[spec.feature_names])

    # daily: the first model's recipe (family, hyper-parameters, window, weighting, row cap) refit every
    # morning on every label known by then, the blind schedule many teams run
    family = first.tags["mlops.family"]
    params = json.loads(first.tags.get("mlops.params", "{}"))
    window = _tag_number(first.tags, "mlops.window_days")
    half_life = _tag_number(first.tags, "mlops.half_life_days")
    space = SearchSpace.from_dict(spec.search)
    recipe_kwargs: dict[str, Any] = {
        "family": family,
        "params": params,
        "window_days": int(window) if window is not None else None,
        "half_life_days": half_life,
        "target": spec.target.name,
        "time_column": "event_time",
        "numeric": spec.numeric_features,
        "categorical": spec.categorical_features,
        "task": spec.task,
        "seed": space.seed,
        "max_rows": space.max_rows,
    }
    days_sorted = sorted(period["event_day"].unique())
    block_len = 7
    # refit candidates for the weekly row and the oracle: the daily refit of the first day of each week, which
    # then scores every later row too (no extra training: the daily strategy fits that very model anyway)
    n_weeks = (days_sorted[-1] - days_sorted[0]).days // block_len + 1
    candidate_days = {days_sorted[0] + dt.timedelta(days=block_len * k) for k in range(n_weeks)}
    first_arrival = frame["arrival_day"].min()
    jobs = []
    for day in days_sorted:
        if first_arrival >= day:
            continue  # nothing known yet that morning
        scope = period["event_day"] >= day if day in candidate_days else period["event_day"] == day
        jobs.append((day, np.flatnonzero(scope.to_numpy())))

    def tasks() -> Any:
        """Each refit's rows are cut only when a worker is about to take it (joblib pre-dispatches a few):
        a year of training windows held at once would not fit in memory."""
        for day, idx in jobs:
            known = frame[frame["arrival_day"] < day]
            # window and row cap applied here so that each worker receives only the rows it trains on
            rows = window_rows(known, "event_time", recipe_kwargs["window_days"], space.max_rows, space.seed)
            today = period.iloc[idx][spec.feature_names]
            yield delayed(refit)(rows, today, {**recipe_kwargs, "window_days": None, "max_rows": None})

    # one refit per core: the replay is over, both cores are free, and each worker measures its own CPU. Each
    # refit is cached on disk by its inputs: a second comparison of the same replay refits nothing, and reports
    # the CPU measured when the refit ran.
    cache = Memory(location=str(settings.data_dir / "cache" / "strategies" / spec.name), verbose=0)
    refit = cache.cache(_refit_and_score)
    outputs = Parallel(n_jobs=2)(tasks())
    daily = np.full(len(period), np.nan)
    cpu = 0.0
    candidates: dict[dt.date, tuple[np.ndarray, np.ndarray, float]] = {}
    for (day, idx), (scores, seconds) in zip(jobs, outputs, strict=True):
        today_mask = (period["event_day"].to_numpy()[idx]) == day
        daily[idx[today_mask]] = scores[today_mask]
        cpu += seconds
        if day in candidate_days:
            candidates[day] = (idx, scores, seconds)
    period["daily"] = daily

    # blocks of a week from the first day; the weekly refit serves each block with its first day's refit
    period["block"] = (
        (pd.to_datetime(period["event_day"]) - pd.Timestamp(days_sorted[0])).dt.days // block_len
    ).astype(int)
    n_blocks = int(period["block"].max()) + 1 if len(period) else 0
    block_day = {b: days_sorted[0] + dt.timedelta(days=block_len * b) for b in range(n_blocks)}
    cand_scores = np.full((n_blocks, len(period)), np.nan)
    cand_cpu = np.zeros(n_blocks)
    for b in range(n_blocks):
        got = candidates.get(block_day[b])
        if got is None:  # no rows on the block's first day: the nearest earlier candidate stands in
            prev = [c for c in range(b) if block_day[c] in candidates]
            got = candidates[block_day[prev[-1]]] if prev else None
            if got is None:
                cand_cpu[b] = np.inf  # no model to refit here: the oracle cannot pick this week
                continue
            cand_cpu[b] = 0.0
        else:
            cand_cpu[b] = got[2]
        idx, scores, _ = got
        cand_scores[b, idx] = scores
    blocks = period["block"].to_numpy()
    period["weekly"] = cand_scores[blocks, np.arange(len(period))]

    strategies = ["continuous", "never", "weekly", "daily"]
    keep = period[strategies].notna().all(axis=1).to_numpy()
    period, cand_scores = period[keep].reset_index(drop=True), cand_scores[:, keep]
    blocks = period["block"].to_numpy()
    y = period[spec.target.name].to_numpy()
    cost = spec.policy.cost
    sign = 1.0 if higher_is_better(spec.metric) else -1.0

    def block_metric(pred: np.ndarray) -> np.ndarray:
        out = np.full(n_blocks, np.nan)
        for b in range(n_blocks):
            m = blocks == b
            if m.any() and (spec.task == "regression" or len(np.unique(y[m])) > 1):
                with np.errstate(all="ignore"):
                    out[b] = score(spec.metric, y[m], pred[m])
        return out

    ref = block_metric(period["daily"].to_numpy())
    block_days = np.array([len(np.unique(period.loc[blocks == b, "event_day"])) for b in range(n_blocks)], float)
    # staleness of a candidate in a block: how much worse than the morning's refit it serves it, in metric
    # units (negative when it served better); NaN where it does not exist yet
    gaps = np.full((n_blocks, n_blocks), np.nan)
    for i in range(n_blocks):
        later = blocks >= i
        pred = np.where(later, cand_scores[i], np.nan)
        if np.isnan(pred[later]).any():
            continue
        gaps[i, i:] = (sign * (ref - block_metric(np.nan_to_num(pred))))[i:]
    oracle = hindsight_schedule(gaps, block_days, cand_cpu, cost.staleness_price, cost.cpu_second_price)
    starts = [*oracle.refits, n_blocks]
    serving = np.zeros(n_blocks, dtype=int)
    for a, b in itertools.pairwise(starts):
        serving[a:b] = a
    period["oracle"] = cand_scores[serving[blocks], np.arange(len(period))]
    strategies.append("oracle")

    period["month"] = pd.to_datetime(period["event_day"]).dt.to_period("M")
    monthly = pd.DataFrame(
        {
            s: {
                str(m): score(spec.metric, g[spec.target.name].to_numpy(), g[s].to_numpy())
                for m, g in period.groupby("month")
            }
            for s in strategies
        }
    )
    cont_cpu = sum(r["cpu_seconds"] for r in result.retrains)
    first_cpu = next(
        (r["cpu_seconds"] for r in result.retrains if r.get("candidate_version") == str(first.version)),
        float(first.tags.get("mlops.cpu_seconds", 0.0)),
    )
    retrains = {
        "continuous": len(result.retrains),
        "never": 1,
        "weekly": n_blocks,
        "daily": int(period["event_day"].nunique()),
        "oracle": len(oracle.refits),
    }
    cpus = {
        "continuous": cont_cpu,
        "never": first_cpu,
        "weekly": float(cand_cpu[np.isfinite(cand_cpu)].sum()),
        "daily": cpu,
        "oracle": oracle.cpu_seconds,
    }
    stale = {
        s: cost.staleness_price * float(np.nansum(sign * (ref - block_metric(period[s].to_numpy())) * block_days))
        for s in strategies
    }
    totals = pd.DataFrame(
        {
            spec.metric: {s: round(score(spec.metric, y, period[s].to_numpy()), 4) for s in strategies},
            "retrains": retrains,
            "training CPU s": {s: round(cpus[s], 1) for s in strategies},
            "staleness cost": {s: round(stale[s], 1) for s in strategies},
            "total cost": {s: round(stale[s] + cost.cpu_second_price * cpus[s], 1) for s in strategies},
        }
    )
    recipe = f"{family}, window {window or 'all'} days, half-life {half_life or 'none'}, max {space.max_rows} rows"
    note = (
        f"Same rows for all: {len(period)} labelled events from {period['event_day'].min()} to "
        f"{period['event_day'].max()}, after the first trained model (v{first.version}, as of {as_of}).\n"
        f"continuous = what was served (the prediction log); never = v{first.version} frozen; "
        f"weekly / daily = v{first.version}'s recipe ({recipe}) refit on the first day of each 7-day block / "
        "every morning; "
        f"oracle = the cheapest schedule of weekly refits in hindsight ({len(oracle.refits)} of {n_blocks} blocks).\n"
        f"Cost = staleness_price {cost.staleness_price:g} x (metric lost against the morning's refit, per week, "
        f"times its days) + cpu_second_price {cost.cpu_second_price:g} x training CPU-s; the daily refit has no "
        f"staleness by definition, and a negative staleness means better than it.\n"
        f"Training CPU s: continuous counts every sweep trial and refit of every retrain, never counts "
        f"v{first.version}'s sweep, daily counts its {int(period['event_day'].nunique())} refits, weekly and the "
        f"oracle the refits they use. {len(served)} served predictions were scored in this period."
    )
    return StrategyComparison(spec.metric, monthly, totals, note)
