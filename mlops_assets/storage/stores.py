"""Which offline store a dataset uses, decided by configuration alone (no Dagster import: the API, the CLI
and the replay's summary open stores too)."""

from __future__ import annotations

from pathlib import Path

from mlops_assets.config import DatasetSpec, Settings
from mlops_assets.storage.feature_store import FeatureStore


def duckdb_file(data_dir: Path, dataset: str) -> Path:
    """Each dataset its own file: one dataset's writer never waits for another's."""
    return data_dir / "feature_store" / f"{dataset}.duckdb"


def open_feature_store(
    spec: DatasetSpec,
    *,
    kind: str,
    data_dir: Path,
    parquet_uri: str = "",
    s3_endpoint_url: str | None = None,
    online_redis_url: str | None = None,
) -> FeatureStore:
    if kind == "duckdb":
        return FeatureStore(duckdb_file(data_dir, spec.name), spec)
    raise ValueError(f"feature store kind {kind!r}: expected duckdb or parquet")


def store_for(settings: Settings, spec: DatasetSpec) -> FeatureStore:
    """The store of `spec` in the deployment `settings` describes."""
    import os

    return open_feature_store(
        spec,
        kind=settings.feature_store,
        data_dir=settings.data_dir,
        parquet_uri=settings.feature_store_uri,
        s3_endpoint_url=os.environ.get("MLOPS_S3_ENDPOINT_URL") or None,
        online_redis_url=settings.online_redis_url,
    )
