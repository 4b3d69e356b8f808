"""The daily partitions every day-shaped asset shares, spanning the spec's replay window."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from mlops_assets.config import DatasetSpec


def daily_partitions(spec: DatasetSpec) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(
        start_date=spec.replay.start.isoformat(),
        end_date=(spec.replay.end + dt.timedelta(days=1)).isoformat(),
    )


def partition_day(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> dt.date:
    return dt.date.fromisoformat(context.partition_key)
