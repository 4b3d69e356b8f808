"""Raw data in: the day's delivery validated and stored immutably, side tables, and labels that arrive late."""

import datetime as dt
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd

from mlops_assets.config import DatasetSpec, Settings
from mlops_assets.datasets import quarantine
from mlops_assets.datasets.manifest import SourceManifest
from mlops_assets.datasets.sources import CUT_RULE, SOURCE_FILE_COLUMN, Delivery, SourceError, read_delivery, read_table
from mlops_assets.datasets.validate import REASON_COLUMN, ValidationOutcome, validate_day
from mlops_assets.defs import names
from mlops_assets.defs.partitions import daily_partitions, partition_day
from mlops_assets.defs.resources import FeatureStoreResource, LakeResource

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


def build_ingestion(spec: DatasetSpec, settings: Settings) -> dg.Definitions:
    pool = names.store_pool(spec.name, settings.feature_store)
    partitions = daily_partitions(spec)
    delay = spec.target.label_delay_days

    @dg.asset(key_prefix=[spec.name], group_name=GROUP, kinds={"duckdb"}, pool=pool)
    def lookup_tables(context: dg.AssetExecutionContext, feature_store: FeatureStoreResource) -> dg.MaterializeResult:
        """Side tables (weather, fleet, ...) projected into the feature store for point-in-time joins."""
        store = feature_store.store(spec)
        with store.session():  # one open of the store for the whole step
            counts = {lk.name: store.load_lookup(lk.name, read_table(lk.source)) for lk in spec.features.lookups}
            for name, n in counts.items():
                context.log.info(f"lookup {name}: {n} rows")
            return dg.MaterializeResult(metadata={f"rows_{k}": v for k, v in counts.items()})

    @dg.asset(
        key_prefix=[spec.name],
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"parquet"},
        check_specs=[
            dg.AssetCheckSpec(
                "delivery_valid",
                asset=names.asset_key(spec.name, "raw_batches"),
                blocking=True,
                description="The day has rows and the schema the spec names; blocks the day.",
            ),
            dg.AssetCheckSpec(
                "quarantine_share",
                asset=names.asset_key(spec.name, "raw_batches"),
                description=f"Warns when more than {QUARANTINE_WARN_SHARE:.0%} of rows are quarantined.",
            ),
        ],
    )
    def raw_batches(
        context: dg.AssetExecutionContext, lake: LakeResource
    ) -> Iterator[dg.Output[dict[str, Any]] | dg.AssetCheckResult]:
        """One day of raw rows as delivered, validated against the spec's schema and written once to the lake.

        Every source file read is kept byte for byte; accepted rows and quarantined rows (with every rule each
        broke, its file and row number) go to separate content-addressed files; nothing is overwritten, so a
        corrected re-delivery sits beside the original. A file that cannot be read blocks the day: its rows
        could be this day's, and a day missing part of its rows would look complete downstream; so does a CSV
        cut off mid-row, for the days it holds.

        The source manifest beside the lake says which files hold which days, so a day reads only those (and
        any file it has not seen yet, or whose bytes changed, whole once).
        """
        ds = spec
        day = partition_day(context)
        store = lake.lake()
        try:
            delivery = read_delivery(ds, day, SourceManifest(ds, store.backend))
        except SourceError as exc:
            delivery = Delivery(day, pd.DataFrame(), [], pd.DataFrame(), [str(exc)])
        kept = {f.path: quarantine.keep_file(store, ds.name, f) for f in delivery.files}
        replay_rows, replay_columns = quarantine.read_replay(store, ds, day.isoformat())
        rows = quarantine.supersede(delivery.rows, replay_rows)
        described = [f.describe() for f in delivery.files] + list(replay_columns)
        if delivery.elsewhere and replay_rows.empty:
            described.append(delivery.elsewhere)
        outcome = validate_day(ds, day, rows, described, {**delivery.file_columns, **replay_columns})
        if delivery.problems:
            problems = [f"{ds.name} {day}: {p}" for p in delivery.problems]
            cut_only = all(CUT_RULE in p for p in delivery.problems)
            what = "is cut off mid-row" if cut_only else "cannot be read"
            refused = rows.assign(**{REASON_COLUMN: f"day rejected: a file of the source {what}"})
            outcome = ValidationOutcome(
                day,
                pd.DataFrame(),
                pd.concat([refused, delivery.cut], ignore_index=True) if not delivery.cut.empty else refused,
                problems + [p for p in outcome.problems if "no rows for this day" not in p],
            )
        key = digest = None
        if outcome.ok:
            key, digest = store.write_frame("raw", ds.name, day.isoformat(), outcome.accepted)
        q_key = q_digest = o_key = None
        if not outcome.quarantined.empty:
            q_key, q_digest = quarantine.write_rows(
                store, quarantine.QUARANTINE_AREA, ds.name, day.isoformat(), outcome.quarantined
            )
        if not delivery.orphans.empty:
            o_key, _ = quarantine.write_rows(
                store, quarantine.QUARANTINE_AREA, ds.name, quarantine.NO_DAY, delivery.orphans
            )
            context.log.warning(
                f"{len(delivery.orphans)} rows of {sorted(set(delivery.orphans[SOURCE_FILE_COLUMN]))} belong to no "
                f"day ({quarantine.summarize(delivery.orphans).to_dict('records')}); kept in {store.uri(o_key)}"
            )
        for p in outcome.problems:
            context.log.error(p)
        context.log.info(
            f"{day}: {len(rows)} rows delivered, {len(outcome.accepted)} accepted, "
            f"{len(outcome.quarantined)} quarantined"
        )
        total = len(outcome.accepted) + len(outcome.quarantined)
        share = len(outcome.quarantined) / total if total else 0.0
        files_table = "\n".join(
            ["| file | rows (all days) | bytes | sha256 | kept as |", "|---|---|---|---|---|"]
            + [
                f"| {f.path} | {f.note or f.rows} | {f.size} | {f.sha256[:16]} | {kept.get(f.path, '')} |"
                for f in delivery.files
            ]
        )
        metadata: dict[str, Any] = {
            "dagster/row_count": len(outcome.accepted),
            "rows_delivered": len(rows),
            "rows_quarantined": len(outcome.quarantined),
            "rows_replayed": int((~quarantine.discarded(replay_rows)).sum()) if len(replay_rows) else 0,
            "rows_discarded_by_replay": int(quarantine.discarded(replay_rows).sum()) if len(replay_rows) else 0,
            "rows_of_no_day": len(delivery.orphans),
            "quarantine_reasons": outcome.reasons,
            "source_files": [f.path for f in delivery.files],
            "source_files_in_source": delivery.files_in_source,
            "source_files_read_whole": delivery.files_indexed,
            "source_files_kept": dg.MetadataValue.md(files_table),
            "problems": outcome.problems,
        }
        if key:
            metadata["path"] = dg.MetadataValue.path(store.uri(key))
            metadata["sha256"] = digest
            metadata["raw_key"] = key
        if q_key:
            metadata["quarantine_path"] = dg.MetadataValue.path(store.uri(q_key))
            metadata["quarantine_key"] = q_key
            metadata["quarantine_sha256"] = q_digest
        if o_key:
            metadata["orphans_key"] = o_key
        yield dg.Output(_raw_batch_pointer(outcome, key, digest), metadata=metadata)
        yield dg.AssetCheckResult(
            check_name="delivery_valid",
            passed=outcome.ok,
            metadata={"problems": outcome.problems or ["none"]},
            description="; ".join(outcome.problems) if outcome.problems else f"{day}: delivery valid",
        )
        yield dg.AssetCheckResult(
            check_name="quarantine_share",
            passed=share <= QUARANTINE_WARN_SHARE and delivery.orphans.empty,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"share": share, "reasons": outcome.reasons, "rows_of_no_day": len(delivery.orphans)},
        )

    @dg.asset(
        key_prefix=[spec.name],
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"duckdb"},
        pool=pool,
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
        store = feature_store.store(spec)
        with store.session():  # one open of the store for the whole step
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
