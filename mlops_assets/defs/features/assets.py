"""Feature rows for a day, computed point in time in the DuckDB feature store."""

from typing import Any

import dagster as dg
import pandas as pd

from mlops_assets.config import DatasetSpec, Settings
from mlops_assets.defs import names
from mlops_assets.defs.ingestion.assets import load_raw
from mlops_assets.defs.partitions import daily_partitions, partition_day
from mlops_assets.defs.resources import FeatureStoreResource, LakeResource

GROUP = "features"
# A feature missing for every row means a broken join or source: block. Missing for many rows happens in real
# data (a weather station drops out for an afternoon; 2013-02-27 lost `pressure` for 54% of flights): the
# models impute, so it only warns.
WARN_NULL_SHARE = 0.5


def build_features(spec: DatasetSpec, settings: Settings) -> dg.Definitions:
    pool = names.store_pool(spec.name, settings.feature_store)
    partitions = daily_partitions(spec)

    @dg.asset(
        key_prefix=[spec.name],
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"duckdb"},
        deps=["lookup_tables", "labels"],
        pool=pool,
        check_specs=[
            dg.AssetCheckSpec(
                "features_complete",
                asset=names.asset_key(spec.name, "features"),
                blocking=True,
                description="The day has feature rows and no feature is empty on every row; blocks monitoring, "
                "serving and training.",
            ),
            dg.AssetCheckSpec(
                "features_null_share",
                asset=names.asset_key(spec.name, "features"),
                description=f"Warns when a feature is null on more than {WARN_NULL_SHARE:.0%} of the day's rows.",
            ),
        ],
    )
    def features(
        context: dg.AssetExecutionContext,
        raw_batches: dict[str, Any],
        lake: LakeResource,
        feature_store: FeatureStoreResource,
    ) -> dg.MaterializeResult:
        """The day's feature rows: schedule, route and carrier, weather as of the scheduled hour, the plane,
        and late rates from labels that had arrived before the day (so nothing leaks from the future).
        Re-materializing a day replaces its rows exactly once."""
        day = partition_day(context)
        raw = load_raw(lake, raw_batches)
        store = feature_store.store(spec)
        with store.session():  # one open of the store for the whole step
            feats = store.write_features(day, raw) if len(raw) else store.write_features(day, raw.iloc[0:0])
            names = spec.feature_names
            null_share = {c: round(float(feats[c].isna().mean()), 4) for c in names} if len(feats) else {}
            # Target rates are null by design until labels have arrived, window features (lags, rolling means) until
            # an entity has history; every other feature must have values.
            by_design = {*spec.features.label_rates, *spec.features.windows}
            judged = {c: v for c, v in null_share.items() if c not in by_design}
            empty = sorted(c for c, v in judged.items() if v >= 1.0)
            mostly_null = {c: v for c, v in judged.items() if v > WARN_NULL_SHARE}
            missing_rows = len(raw) - len(feats)
            context.log.info(f"{day}: {len(feats)} feature rows from {len(raw)} raw rows")
            problems = []
            if not len(feats):
                problems.append(f"{day}: no feature rows (rule: a day must have feature rows)")
            if empty:
                problems.append(f"{day}: features null on every row: {empty} (rule: a feature must have values)")
            if missing_rows > 0:
                problems.append(f"{day}: {missing_rows} raw rows produced no feature row (duplicate entity+time)")
            if mostly_null:
                context.log.warning(f"{day}: features mostly null: {mostly_null}")
            # the four figures the UI shows, not `describe()`: its quantiles cost ~60 ms a day on 28 columns
            num = feats[spec.numeric_features].select_dtypes("number")
            numeric = (
                pd.DataFrame({"mean": num.mean(), "std": num.std(), "min": num.min(), "max": num.max()})
                if len(feats)
                else None
            )
            checks = [
                dg.AssetCheckResult(
                    check_name="features_complete",
                    passed=bool(len(feats)) and not empty,
                    metadata={"problems": problems or ["none"], "rows": len(feats), "raw_rows": len(raw)},
                ),
                dg.AssetCheckResult(
                    check_name="features_null_share",
                    passed=not mostly_null,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"over_threshold": mostly_null or "none", "threshold": WARN_NULL_SHARE},
                ),
            ]
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": len(feats),
                    "null_share": null_share,
                    "numeric_summary": dg.MetadataValue.md(numeric.round(3).to_markdown())
                    if numeric is not None
                    else "",
                },
                check_results=checks,
            )

    return dg.Definitions(assets=[features])
