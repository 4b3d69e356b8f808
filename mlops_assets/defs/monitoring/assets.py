"""Monitoring: the day's data against the champion's training data, and the champion's quality once labels
arrive. Both reports end in metadata (`drift_detected`, `decay_detected`) that the retrain sensor reads."""

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from mlops_assets.config import DatasetSpec, Settings
from mlops_assets.defs import names
from mlops_assets.defs.partitions import daily_partitions, partition_day
from mlops_assets.defs.reports import publish
from mlops_assets.defs.resources import (
    ChampionInfo,
    FeatureStoreResource,
    LakeResource,
    ModelRegistryResource,
)
from mlops_assets.ml.decay import detect_decay
from mlops_assets.ml.drift import ReferenceProfile
from mlops_assets.storage.feature_sql import FeatureStoreApi
from mlops_assets.storage.lake import Lake

GROUP = "monitoring"
WARMUP_DAYS = 14  # before the first trained champion, the first two weeks stand in as the reference


_PROFILES: dict[tuple[str, str], ReferenceProfile] = {}


def _profile_from_lake(key: str, sha: str, lake: Lake) -> ReferenceProfile:
    """Profiles are content-addressed, so (key, checksum) identifies one for good: read it once."""
    if (key, sha) not in _PROFILES:
        _PROFILES[(key, sha)] = ReferenceProfile.from_json(lake.read_blob(key, expected_sha256=sha).decode())
    return _PROFILES[(key, sha)]


def profiled_columns(frame: pd.DataFrame, spec: DatasetSpec) -> tuple[list[str], list[str]]:
    """(numeric, categorical) columns of `frame` a profile can describe: a lag or a target rate has no values in
    a dataset's first days by design, and a column with no reference value has nothing to be tested against."""
    numeric = [c for c in spec.numeric_features if np.isfinite(pd.to_numeric(frame[c], errors="coerce")).any()]
    categorical = [c for c in spec.categorical_features if frame[c].notna().any()]
    return numeric, categorical


def reference_profile(
    spec: DatasetSpec, champion: ChampionInfo | None, store: FeatureStoreApi, lake: Lake, day: dt.date
) -> tuple[ReferenceProfile | None, str]:
    """(profile, what it describes). The champion's training data when there is one; else the warm-up."""
    if champion is not None and champion.tags.get("mlops.reference_profile_key"):
        key, sha = (
            champion.tags["mlops.reference_profile_key"],
            champion.tags["mlops.reference_profile_sha256"],
        )
        return _profile_from_lake(key, sha, lake), f"training data of v{champion.version}"
    first = spec.replay.start
    last = first + dt.timedelta(days=WARMUP_DAYS - 1)
    if day <= last:
        return None, f"warm-up: reference builds from {first} to {last}"
    warm = store.features_between(first, last)
    numeric, categorical = profiled_columns(warm, spec)
    profile = ReferenceProfile.from_frame(warm, numeric=numeric, categorical=categorical)
    return profile, f"warm-up days {first} to {last} ({len(warm)} rows)"


def reference_rows(
    spec: DatasetSpec, champion: ChampionInfo | None, store: FeatureStoreApi, lake: Lake
) -> pd.DataFrame:
    """Rows for Evidently's HTML report (it needs rows, not a sketch): a sample of the same reference."""
    if champion is not None and champion.tags.get("mlops.training_dataset_key"):
        frame = lake.read_frame(
            champion.tags["mlops.training_dataset_key"],
            expected_sha256=champion.tags.get("mlops.training_dataset_sha256"),
        )
    else:
        first = spec.replay.start
        frame = store.features_between(first, first + dt.timedelta(days=WARMUP_DAYS - 1))
    n = min(len(frame), spec.monitoring.reference_max_rows, 20_000)
    return frame.sample(n=n, random_state=0) if n < len(frame) else frame


def report_day(spec: DatasetSpec, day: dt.date) -> bool:
    """Days that get the heavier artifacts for people (plots, Evidently HTML): the spec's cadence (weekly if
    unset). Our statistics run every day regardless; only the pictures follow a cadence."""
    every = spec.monitoring.evidently_every_days or 7
    return (day - spec.replay.start).days % every == 0


def build_monitoring(spec: DatasetSpec, settings: Settings) -> dg.Definitions:
    pool = names.store_pool(spec.name, settings.feature_store)
    partitions = daily_partitions(spec)

    @dg.asset(
        key_prefix=[spec.name],
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"evidently", "duckdb"},
        deps=["features", "champion"],
        pool=pool,
    )
    def drift_report(
        context: dg.AssetExecutionContext,
        feature_store: FeatureStoreResource,
        lake: LakeResource,
        registry: ModelRegistryResource,
    ) -> dg.MaterializeResult:
        """The day's features against the champion's training data: a per-column test over every row
        (our engine, the same test choice as Evidently's DataDriftPreset), plus Evidently's HTML report
        for people on the spec's cadence."""
        ds = spec
        day = partition_day(context)
        store, lk = feature_store.store(spec), lake.lake()
        with store.session():  # one open of the store for the whole step
            champion = registry.champion_info(ds.model_name)
            window = ds.monitoring.window_days
            current = store.features_between(day - dt.timedelta(days=window - 1), day)
            profile, described = reference_profile(ds, champion, store, lk, day)
            meta: dict[str, Any] = {
                "reference": described,
                "current": f"{window} day(s) ending {day}",
                "champion_version": champion.version if champion else None,
                "champion_is_baseline": champion.is_baseline if champion else True,
                "rows": len(current),
            }
            if profile is None or current.empty:
                context.log.info(f"{day}: no drift test ({described if profile is None else 'no rows today'})")
                meta.update({"drift_share": 0.0, "drift_detected": False, "drifted_columns": [], "tested": False})
                return dg.MaterializeResult(metadata=meta)
            columns: list[str] | None = None
            extra: dict[str, Any] = {}
            if ds.task == "ranking":  # item popularity, new items and users (defs/ranking.py)
                from mlops_assets.defs import ranking

                columns, extra = ranking.drift_extras(ds, profile, current)
                meta.update(extra)
            result = profile.compare(current, drift_share=ds.monitoring.drift_share, columns=columns)
            table = result.to_frame()
            store.save_history("drift_history", day, table.assign(drift_share=result.drift_share))
            context.log.info(
                f"{day}: drift share {result.drift_share:.2f} over {len(table)} columns; "
                f"drifted: {result.drifted_columns()}"
            )
            meta.update(
                {
                    "drift_share": float(result.drift_share),
                    "drift_detected": bool(result.drift_detected),
                    "drifted_columns": result.drifted_columns(),
                    "n_drifted": len(result.drifted_columns()),
                    "tested": True,
                    "columns": dg.MetadataValue.md(table.round(4).to_markdown(index=False)),
                }
            )
            # read here, drawn below: the store is not held while matplotlib and Evidently render
            history = store.read_history("drift_history") if report_day(ds, day) else None
            evidently = bool(ds.monitoring.evidently_every_days and report_day(ds, day))
            reference = reference_rows(ds, champion, store, lk) if evidently else None
        if history is not None:
            from mlops_assets.ml.plots import drift_over_time  # matplotlib: paid by the steps that plot

            meta |= publish(
                lk,
                ds.name,
                "drift_over_time",
                f"drift_{day}.png",
                lambda p: drift_over_time(history, p, threshold=ds.monitoring.drift_share),
            )
        if reference is not None:
            from mlops_assets.ml.evidently_reports import data_drift_html

            summary: dict[str, Any] = {}

            def render(path: Path) -> None:
                summary.update(
                    data_drift_html(
                        reference,
                        current,
                        # the columns the profile tests: a lag with no values yet in the warm-up is left out of both
                        numeric=[c for c in ds.numeric_features if c in profile.numeric],
                        categorical=[c for c in ds.categorical_features if c in profile.categorical],
                        path=path,
                    )
                )

            meta |= publish(lk, ds.name, "evidently_report", f"data_drift_{day}.html", render)
            meta["evidently_drift_share"] = summary.get("drift_share")
        return dg.MaterializeResult(metadata=meta)

    @dg.asset(
        key_prefix=[spec.name],
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"duckdb"},
        deps=["labels", "batch_predictions", "champion"],
        pool=pool,
    )
    def performance_report(
        context: dg.AssetExecutionContext,
        feature_store: FeatureStoreResource,
        registry: ModelRegistryResource,
        lake: LakeResource,
    ) -> dg.MaterializeResult:
        """The champion's metric on the days whose labels have now arrived, against its hold-out score.

        Scores the prediction log (what was actually served), only the current champion's predictions, over
        a rolling window with a bootstrap interval so that one bad day does not read as decay."""
        ds = spec
        day = partition_day(context)
        store = feature_store.store(spec)
        with store.session():  # one open of the store for the whole step
            champion = registry.champion_info(ds.model_name)
            if ds.task == "ranking":  # the day's lists against what users did (defs/ranking.py)
                from mlops_assets.defs import ranking

                return dg.MaterializeResult(metadata=ranking.judge_day(context, ds, store, champion, day))
            window = ds.monitoring.decay_window_days
            scored = store.scored_labels(day - dt.timedelta(days=window + ds.target.label_delay_days), day)
            meta: dict[str, Any] = {
                "champion_version": champion.version if champion else None,
                "champion_is_baseline": champion.is_baseline if champion else True,
            }
            if champion is None or scored.empty:
                meta.update({"decay_detected": False, "reason": "no scored predictions with labels yet", "rows": 0})
                return dg.MaterializeResult(metadata=meta)
            all_scored = scored
            scored = scored[scored["model_version"] == champion.version]
            reference = champion.holdout_metric
            latest_day = pd.Timestamp(all_scored["day"].max()).date()
            day_rows = all_scored[pd.to_datetime(all_scored["day"]).dt.date == latest_day]
            if scored.empty or reference is None or champion.is_baseline:
                why = (
                    "champion is the baseline: nothing to decay from"
                    if champion.is_baseline or reference is None
                    else "no labelled predictions of this champion yet"
                )
                meta.update({"decay_detected": False, "reason": why, "rows": len(scored)})
                return dg.MaterializeResult(metadata=meta)
            result = detect_decay(
                scored,
                metric=ds.metric,
                reference_value=reference,
                tolerance=ds.monitoring.decay_tolerance,
                window_days=window,
                min_rows=ds.monitoring.decay_min_rows,
            )
            history_row = pd.DataFrame(
                [
                    {
                        "scored_day": pd.Timestamp(latest_day),
                        "day_value": result.day_value,
                        "window_value": result.window_value,
                        "ci_low": result.ci_low,
                        "ci_high": result.ci_high,
                        "reference": reference,
                        "model_version": champion.version,
                        "decay_detected": result.decay_detected,
                        "n_rows": result.n_rows,
                    }
                ]
            ).astype(  # typed even when the first day has no value: the history table takes its types from it
                {"day_value": "float64", "window_value": "float64", "ci_low": "float64", "ci_high": "float64"}
            )
            store.save_history("performance_history", day, history_row)
            context.log.info(f"{day}: {result.reason}")
            meta.update(result.to_dict())
            meta.update(
                {
                    "decay_detected": bool(result.decay_detected),
                    "scored_day": latest_day.isoformat(),
                    "rows_scored_day": len(day_rows),
                }
            )
            if report_day(ds, day) or result.decay_detected:
                from mlops_assets.ml.plots import metric_over_time

                history = store.read_history("performance_history")
                meta |= publish(
                    lake.lake(),
                    ds.name,
                    "metric_over_time",
                    f"metric_{day}.png",
                    lambda p: metric_over_time(
                        history, p, metric=ds.metric, reference=reference, tolerance=ds.monitoring.decay_tolerance
                    ),
                )
            return dg.MaterializeResult(metadata=meta)

    return dg.Definitions(assets=[drift_report, performance_report])
