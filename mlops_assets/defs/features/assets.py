"""Feature rows for a day, computed point in time in the DuckDB feature store."""

from typing import Any

import dagster as dg

from mlops_assets.config import DatasetSpec
from mlops_assets.defs.ingestion.assets import load_raw
from mlops_assets.defs.partitions import daily_partitions, partition_day
from mlops_assets.defs.resources import FeatureStoreResource, LakeResource

GROUP = "features"
MAX_NULL_SHARE = 0.5  # a feature that is mostly null on a day means a broken join or source, not weather


def build_features(spec: DatasetSpec) -> dg.Definitions:
    partitions = daily_partitions(spec)

    @dg.asset(
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"duckdb"},
        deps=["lookup_tables", "labels"],
        check_specs=[
            dg.AssetCheckSpec(
                "features_complete",
                asset="features",
                blocking=True,
                description=f"Every raw row has a feature row and no feature is more than "
                f"{MAX_NULL_SHARE:.0%} null; blocks monitoring, serving and training.",
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
        store = feature_store.store()
        feats = store.write_features(day, raw) if len(raw) else store.write_features(day, raw.iloc[0:0])
        names = spec.feature_names
        null_share = {c: round(float(feats[c].isna().mean()), 4) for c in names} if len(feats) else {}
        # Target rates are null by design until labels have arrived; every other feature must be filled.
        too_null = {c: v for c, v in null_share.items() if v > MAX_NULL_SHARE and c not in spec.features.label_rates}
        missing_rows = len(raw) - len(feats)
        context.log.info(f"{day}: {len(feats)} feature rows from {len(raw)} raw rows")
        problems = []
        if not len(feats):
            problems.append(f"{day}: no feature rows")
        if too_null:
            problems.append(f"{day}: mostly null features {too_null} (rule: null share <= {MAX_NULL_SHARE})")
        if missing_rows > 0:
            problems.append(f"{day}: {missing_rows} raw rows produced no feature row (duplicate entity+time)")
        numeric = feats[spec.numeric_features].describe().T[["mean", "std", "min", "max"]] if len(feats) else None
        check = dg.AssetCheckResult(
            check_name="features_complete",
            passed=not (not len(feats) or too_null),
            metadata={"problems": problems or ["none"], "rows": len(feats), "raw_rows": len(raw)},
        )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(feats),
                "null_share": null_share,
                "numeric_summary": dg.MetadataValue.md(numeric.round(3).to_markdown()) if numeric is not None else "",
            },
            check_results=[check],
        )

    return dg.Definitions(assets=[features])
