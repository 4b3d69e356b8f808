"""Which offline store a dataset uses, decided by configuration alone (no Dagster import: the API, the CLI
and the replay's summary open stores too)."""

from __future__ import annotations

from pathlib import Path

from mlops_assets.config import DatasetSpec, Settings
from mlops_assets.storage.feature_sql import FeatureStoreApi
from mlops_assets.storage.feature_store import FeatureStore
from mlops_assets.storage.parquet_store import ParquetFeatureStore

__all__ = ["FeatureStoreApi", "duckdb_file", "open_feature_store", "store_for"]


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
) -> FeatureStoreApi:
    """`duckdb`: one file per dataset under `data_dir` (the embedded profile: one writing process, so its
    steps share a Dagster pool). `parquet`: the dataset's partitions under `parquet_uri` (a folder or
    `s3://bucket/prefix`, reached through `s3_endpoint_url` when it is not AWS), written by whichever worker
    runs a day, with each entity's newest row also in Redis when `online_redis_url` is set (what the API
    reads by key)."""
    if kind == "duckdb":
        return FeatureStore(duckdb_file(data_dir, spec.name), spec)
    if kind == "parquet":
        if not parquet_uri:
            raise ValueError("the parquet feature store needs a root (MLOPS_LAKE_URI/feature_store): none given")
        online = None
        if online_redis_url:
            import redis

            from mlops_assets.storage.online_redis import RedisOnlineStore

            online = RedisOnlineStore(redis.Redis.from_url(online_redis_url), spec)
        return ParquetFeatureStore(parquet_uri, spec, online=online, s3_endpoint_url=s3_endpoint_url)
    raise ValueError(f"feature store kind {kind!r}: expected duckdb or parquet")


def store_for(settings: Settings, spec: DatasetSpec) -> FeatureStoreApi:
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
