"""Continuous training against the two strategies a user would otherwise pick, on the same replay.

- continuous: what the system actually served (the prediction log), champion by champion;
- never: the first trained model, kept for the rest of the year;
- daily: the first sweep's winning recipe (family, hyper-parameters) refit every day on the newest
  `DAILY_WINDOW_DAYS` of labels, the blind schedule many teams run.

All three are scored on the same rows (every labelled event after the first trained model existed), with
the same point-in-time features, month by month; cost is training CPU-seconds measured in this process.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.defs.resources import ModelRegistryResource
from mlops_assets.ml.cost import Stopwatch
from mlops_assets.ml.evaluate import score
from mlops_assets.ml.models import build_model, predict_scores
from mlops_assets.replay import ReplayResult
from mlops_assets.storage.feature_store import FeatureStore
from mlops_assets.storage.models import load_verified

DAILY_WINDOW_DAYS = 60


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


def _fit_recipe(frame: pd.DataFrame, spec: Any, family: str, params: dict[str, Any], seed: int) -> Any:
    model = build_model(
        family,
        params,
        task=spec.task,
        numeric=spec.numeric_features,
        categorical=spec.categorical_features,
        seed=seed,
    )
    return model.fit(frame[spec.feature_names], frame[spec.target.name].to_numpy())


def compare_strategies(result: ReplayResult) -> StrategyComparison:
    spec, settings = result.spec, result.settings
    store = FeatureStore(settings.duckdb_path, spec)
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
    with store.connect(read_only=True) as con:
        log = con.execute("SELECT entity_id, event_time, score FROM predictions WHERE event_day > ?", [as_of]).df()
    period = period.merge(log.rename(columns={"score": "continuous"}), on=["entity_id", "event_time"], how="left")

    # never: the first trained model, frozen
    model0 = load_verified(
        f"models:/{spec.model_name}/{first.version}",
        first.tags["mlops.model_sha256"],
        settings.mlflow_tracking_uri,
    ).model
    period["never"] = predict_scores(model0, period[spec.feature_names])

    # daily: the same recipe refit every day on the newest window of labels known that morning
    family = first.tags["mlops.family"]
    params = json.loads(first.tags.get("mlops.params", "{}"))
    daily = np.full(len(period), np.nan)
    cpu = 0.0
    for day in sorted(period["event_day"].unique()):
        known = frame[(frame["arrival_day"] < day) & (frame["event_day"] >= day - dt.timedelta(days=DAILY_WINDOW_DAYS))]
        if known.empty:
            continue
        with Stopwatch() as sw:
            m = _fit_recipe(known, spec, family, params, seed=0)
        cpu += sw.cpu_seconds
        idx = (period["event_day"] == day).to_numpy()
        daily[idx] = predict_scores(m, period.loc[idx, spec.feature_names])
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
    note = (
        f"Scored rows: {len(period)} labelled events from {period['event_day'].min()} to "
        f"{period['event_day'].max()} (after the first trained model, v{first.version}, as of {as_of}). "
        f"continuous = the prediction log; never = v{first.version} frozen; daily = {family} with v{first.version}'s "
        f"hyper-parameters refit every day on the last {DAILY_WINDOW_DAYS} days. Continuous CPU includes every sweep "
        f"trial; served rows before v{first.version} are not compared ({len(served)} scored predictions in the log)."
    )
    return StrategyComparison(spec.metric, monthly, totals, note)
