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
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from mlops_assets.ml.automl import SearchSpace, fit_recipe, window_rows
from mlops_assets.ml.cost import Stopwatch
from mlops_assets.ml.evaluate import score
from mlops_assets.ml.models import predict_scores
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
                f"Continuous training vs never retrained vs retrained daily ({self.metric}, same rows, by month)",
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
    jobs = []
    for day in sorted(period["event_day"].unique()):
        known = frame[frame["arrival_day"] < day]
        if known.empty:
            continue
        # window and row cap applied here so that each worker receives only the rows it trains on
        rows = window_rows(known, "event_time", recipe_kwargs["window_days"], space.max_rows, space.seed)
        idx = np.flatnonzero((period["event_day"] == day).to_numpy())
        jobs.append((idx, rows, period.iloc[idx][spec.feature_names]))
    # one refit per core: the replay is over, both cores are free, and each worker measures its own CPU
    outputs = Parallel(n_jobs=2)(
        delayed(_refit_and_score)(rows, today, {**recipe_kwargs, "window_days": None, "max_rows": None})
        for _, rows, today in jobs
    )
    daily = np.full(len(period), np.nan)
    cpu = 0.0
    for (idx, _, _), (scores, seconds) in zip(jobs, outputs, strict=True):
        daily[idx] = scores
        cpu += seconds
    period["daily"] = daily

    strategies = ["continuous", "never", "daily"]
    period = period.dropna(subset=strategies)
    y = period[spec.target.name].to_numpy()
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
    totals = pd.DataFrame(
        {
            spec.metric: {s: round(score(spec.metric, y, period[s].to_numpy()), 4) for s in strategies},
            "retrains": {
                "continuous": len(result.retrains),
                "never": 1,
                "daily": int(period["event_day"].nunique()),
            },
            "training CPU s": {
                "continuous": round(cont_cpu, 1),
                "never": round(first_cpu, 1),
                "daily": round(cpu, 1),
            },
        }
    )
    recipe = f"{family}, window {window or 'all'} days, half-life {half_life or 'none'}, max {space.max_rows} rows"
    note = (
        f"Same rows for all three: {len(period)} labelled events from {period['event_day'].min()} to "
        f"{period['event_day'].max()}, after the first trained model (v{first.version}, as of {as_of}).\n"
        f"continuous = what was served (the prediction log); never = v{first.version} frozen; "
        f"daily = v{first.version}'s recipe ({recipe}) refit every morning.\n"
        f"Training CPU s: continuous counts every sweep trial and refit of every retrain, never counts "
        f"v{first.version}'s sweep, daily counts its {int(period['event_day'].nunique())} "
        f"refits. {len(served)} served predictions were scored in this period."
    )
    return StrategyComparison(spec.metric, monthly, totals, note)
