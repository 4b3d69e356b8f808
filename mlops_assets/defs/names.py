"""Names of one dataset's definitions in a deployment that holds several.

Every dataset's assets live under its own key prefix (`flights/raw_batches`), and its jobs, sensor and
schedules carry its name (`flights__daily_job`), so N specs load side by side in one instance and UI and no
run, sensor cursor or materialization of one dataset is ever read as another's.
"""

import dagster as dg

SEP = "__"


def asset_key(dataset: str, name: str) -> dg.AssetKey:
    return dg.AssetKey([dataset, name])


def job_name(dataset: str, base: str) -> str:
    """`flights__daily_job`; also used for sensors and schedules."""
    return f"{dataset}{SEP}{base}"


def pool(dataset: str, what: str) -> str:
    """A Dagster concurrency pool of one dataset (limit 1 by the instance's default): steps that write the
    dataset's embedded feature store, or that move its champion, never run two at a time."""
    return f"{dataset}{SEP}{what}"


def store_pool(dataset: str, store_kind: str) -> str | None:
    """The pool of steps that open the dataset's embedded DuckDB file (one writing process at a time, and a
    reader cannot open it while a writer holds it). The Parquet store has no single writer: no pool."""
    return pool(dataset, "feature_store") if store_kind == "duckdb" else None
