"""Raw data in: the day's delivery validated and stored immutably, side tables, and labels that arrive late."""

import datetime as dt
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd

from mlops_assets.config import DatasetSpec
from mlops_assets.datasets.sources import SourceError, read_day, read_table
from mlops_assets.datasets.validate import ValidationOutcome, validate_day
from mlops_assets.defs.partitions import daily_partitions, partition_day
from mlops_assets.defs.resources import FeatureStoreResource, LakeResource, SpecResource

GROUP = "ingestion"
QUARANTINE_WARN_SHARE = 0.01


def _raw_batch_pointer(outcome: ValidationOutcome, key: str | None, digest: str | None) -> dict[str, Any]:
    return {
        "day": outcome.day.isoformat(),
        "key": key,
        "sha256": digest,
        "rows": len(outcome.accepted),
        "quarantined": len(outcome.quarantined),
        "ok": outcome.ok,
        "problems": outcome.problems,
    }


def load_raw(lake: LakeResource, pointer: dict[str, Any] | None) -> pd.DataFrame:
    """The accepted rows a raw_batches partition stored, checked against the checksum it recorded."""
    if not pointer or not pointer.get("ok") or not pointer.get("key"):
        return pd.DataFrame()
    return lake.lake().read_frame(pointer["key"], expected_sha256=pointer["sha256"])


def build_ingestion(spec: DatasetSpec) -> dg.Definitions:
    partitions = daily_partitions(spec)
    delay = spec.target.label_delay_days

    @dg.asset(group_name=GROUP, kinds={"duckdb"})
    def lookup_tables(
        context: dg.AssetExecutionContext, spec: SpecResource, feature_store: FeatureStoreResource
    ) -> dg.MaterializeResult:
        """Side tables (weather, fleet, ...) projected into the feature store for point-in-time joins."""
        store = feature_store.store()
        counts = {lk.name: store.load_lookup(lk.name, read_table(lk.source)) for lk in spec.get().features.lookups}
        for name, n in counts.items():
            context.log.info(f"lookup {name}: {n} rows")
        return dg.MaterializeResult(metadata={f"rows_{k}": v for k, v in counts.items()})

    @dg.asset(
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"parquet"},
        check_specs=[
            dg.AssetCheckSpec(
                "delivery_valid",
                asset="raw_batches",
                blocking=True,
                description="The day has rows and the schema the spec names; blocks the day.",
            ),
            dg.AssetCheckSpec(
                "quarantine_share",
                asset="raw_batches",
                description=f"Warns when more than {QUARANTINE_WARN_SHARE:.0%} of rows are quarantined.",
            ),
        ],
    )
    def raw_batches(
        context: dg.AssetExecutionContext, spec: SpecResource, lake: LakeResource
    ) -> Iterator[dg.Output[dict[str, Any]] | dg.AssetCheckResult]:
        """One day of raw rows as delivered, validated against the spec's schema and written once to the lake.

        Accepted rows and quarantined rows (with the rule each broke) go to separate content-addressed
        files; nothing is overwritten, so a corrected re-delivery sits beside the original.
        """
        ds = spec.get()
        day = partition_day(context)
        try:
            rows, files = read_day(ds, day)
        except SourceError as exc:
            rows, files = pd.DataFrame(), []
            context.log.error(str(exc))
            outcome = ValidationOutcome(day, pd.DataFrame(), pd.DataFrame(), [f"{ds.name} {day}: {exc}"])
        else:
            outcome = validate_day(ds, day, rows, files)
        store = lake.lake()
        key = digest = None
        if outcome.ok:
            key, digest = store.write_frame("raw", ds.name, day.isoformat(), outcome.accepted)
        q_key = None
        if not outcome.quarantined.empty:
            q_key, _ = store.write_frame("quarantine", ds.name, day.isoformat(), outcome.quarantined.astype(str))
        for p in outcome.problems:
            context.log.error(p)
        context.log.info(
            f"{day}: {len(rows)} rows delivered, {len(outcome.accepted)} accepted, "
            f"{len(outcome.quarantined)} quarantined"
        )
        total = len(outcome.accepted) + len(outcome.quarantined)
        share = len(outcome.quarantined) / total if total else 0.0
        metadata: dict[str, Any] = {
            "dagster/row_count": len(outcome.accepted),
            "rows_delivered": len(rows),
            "rows_quarantined": len(outcome.quarantined),
            "quarantine_reasons": outcome.reasons,
            "source_files": files,
            "problems": outcome.problems,
        }
        if key:
            metadata["path"] = dg.MetadataValue.path(store.uri(key))
            metadata["sha256"] = digest
        if q_key:
            metadata["quarantine_path"] = dg.MetadataValue.path(store.uri(q_key))
        yield dg.Output(_raw_batch_pointer(outcome, key, digest), metadata=metadata)
        yield dg.AssetCheckResult(
            check_name="delivery_valid",
            passed=outcome.ok,
            metadata={"problems": outcome.problems or ["none"]},
            description="; ".join(outcome.problems) if outcome.problems else f"{day}: delivery valid",
        )
        yield dg.AssetCheckResult(
            check_name="quarantine_share",
            passed=share <= QUARANTINE_WARN_SHARE,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"share": share, "reasons": outcome.reasons},
        )

    @dg.asset(
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"duckdb"},
        ins={
            "raw_batches": dg.AssetIn(
                partition_mapping=dg.TimeWindowPartitionMapping(
                    start_offset=-delay, end_offset=-delay, allow_nonexistent_upstream_partitions=True
                )
            )
        },
    )
    def labels(
        context: dg.AssetExecutionContext,
        raw_batches: dict[str, Any] | None,
        lake: LakeResource,
        feature_store: FeatureStoreResource,
    ) -> dg.MaterializeResult:
        """Labels that arrive on this day: the targets of the events `label_delay_days` before.

        Partitioned by arrival, so that everything a daily tick needs shares the tick's partition key and a
        training set as of day D is simply every label whose arrival day is at most D.
        """
        arrival = partition_day(context)
        event_day = arrival - dt.timedelta(days=delay)
        store = feature_store.store()
        rows = store.write_labels(arrival, load_raw(lake, raw_batches))
        total = store.labelled_rows(arrival)
        positive = float(rows["target"].mean()) if len(rows) else None
        context.log.info(f"{arrival}: {len(rows)} labels for events of {event_day}; {total} labelled rows in store")
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(rows),
                "event_day": event_day.isoformat(),
                "total_labelled_rows": total,
                "target_mean": positive,
            }
        )

    return dg.Definitions(assets=[lookup_tables, raw_batches, labels])
