"""The production profile on real parts, two datasets at once: the same code, with Dagster's storage on
PostgreSQL, the lake (raw batches, the Parquet feature store, reports), the IO manager and MLflow's artifacts on
a real S3 server (SeaweedFS), MLflow's backend store on PostgreSQL, the online feature rows in Redis, and every
step executed by two Celery workers over Redis, each running two steps at a time (dagster-celery).

Nothing is mocked. Two datasets (the flights classification and the Chicago ridership regression, with its
window features) are listed in one deployment (`MLOPS_SPECS`); each is driven by its own process at the same
time (bootstrap, daily runs, a retrain), so steps of both datasets, and a run's independent steps
(`drift_report` and `batch_predictions`), run side by side on both workers. What this guards: no
single-writer file (no lock or write-conflict error anywhere), each dataset's partitions under its own
prefix on S3, its own online rows in Redis and its own champion in the registry.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets.config import PROJECT_ROOT, SPECS_DIR, load_spec
from mlops_assets_tests.conftest import akey, fast_flights_spec
from mlops_assets_tests.services import (
    S3_KEYS,
    celery_worker,
    postgres_databases,
    production_env,
    seaweed_s3,
    stop_group,
)

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
BUCKET = "mlops"
# Five days each: the retrain as of the fifth trains on two labelled days (the first has no earlier labels, so
# its label rates and lags are empty), validates on one and holds one out.
FLIGHTS_DAYS = ["2013-01-01", "2013-01-02", "2013-01-03", "2013-01-04", "2013-01-05"]
CHICAGO_DAYS = ["2001-01-22", "2001-01-23", "2001-01-24", "2001-01-25", "2001-01-26"]
# What a single-writer store says when two writers meet (DuckDB's file lock, its write-write conflict, SQLite's
# busy database): none of it may appear anywhere in the production profile.
CONFLICT = re.compile(
    r"could not set lock|conflicting lock|lock on file|write-write conflict|transactioncontext error|"
    r"database is locked",
    re.IGNORECASE,
)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def services() -> None:
    missing = [name for name, port in (("PostgreSQL", 5432), ("Redis", 6379)) if not _listening(port)]
    if missing and os.environ.get("CI"):
        pytest.fail(f"{', '.join(missing)} not listening on 127.0.0.1: the production profile test needs them")
    if missing:
        pytest.skip(f"{', '.join(missing)} not listening on 127.0.0.1")


@pytest.fixture
def databases(services: None) -> Iterator[list[str]]:
    with postgres_databases("mlops_dagster", "mlops_mlflow") as names:
        yield names


@pytest.fixture
def s3(tmp_path: Path, services: None) -> Iterator[str]:
    """A SeaweedFS S3 endpoint with the deployment's bucket, its data in this test's tmp folder."""
    with seaweed_s3(tmp_path / "seaweed", bucket=BUCKET) as url:
        yield url


def fast_chicago_spec(tmp: Path) -> Path:
    """The shipped Chicago spec (one row a day, lags and rolling means) with a search of seconds and splits of
    a day, so a retrain fits after five daily runs; without the week- and fortnight-old lags, which would
    still be empty."""
    raw = yaml.safe_load((SPECS_DIR / "chicago_ridership.yaml").read_text())
    for name in ("entries_lag_7", "entries_lag_14"):
        del raw["features"]["windows"][name]
    raw["monitoring"].update({"decay_window_days": 3, "decay_min_rows": 1, "window_days": 3})
    # the rule-based policy this test was written for (the shipped spec is cost-aware)
    raw["policy"].update(
        {
            "decision": "rules",
            "cooldown_days": 28,
            "min_new_labelled_rows": 28,
            "max_per_week": 1,
            "bootstrap_min_rows": 90,
        }
    )
    raw["monitoring"]["evidently_every_days"] = 0
    raw["training"].update({"holdout_days": 1, "validation_days": 1})
    raw["search"].update({"trials": 2, "seconds": 20, "windows": [None], "recency_half_lives": [None]})
    raw["search"]["families"] = {"baseline": {}, "ridge": {"alpha": [1.0]}}
    path = tmp / "chicago_fast.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_two_datasets_run_at_once_on_two_celery_workers_with_postgres_seaweedfs_and_redis(
    tmp_path: Path, databases: list[str], s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    import redis
    from mlflow import MlflowClient

    dagster_db, mlflow_db = databases
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "deploy" / "dagster.production.yaml", home / "dagster.yaml")
    redis_db = 2 + uuid.uuid4().int % 14
    redis_url = f"redis://127.0.0.1:6379/{redis_db}"
    flights_spec, chicago_spec = (
        fast_flights_spec(tmp_path, training={"holdout_days": 1, "validation_days": 1}),
        fast_chicago_spec(tmp_path),
    )
    specs = {load_spec(p).name: load_spec(p) for p in (flights_spec, chicago_spec)}
    env = production_env(
        home=home,
        data_dir=tmp_path / "data",
        specs=[flights_spec, chicago_spec],
        dagster_db=dagster_db,
        mlflow_db=mlflow_db,
        s3_url=s3,
        bucket=BUCKET,
        redis_url=redis_url,
    )
    rdb = redis.Redis.from_url(redis_url)
    rdb.flushdb()  # no task or online row left over from another run
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for var in ("MLOPS_SPEC", "MLOPS_FEATURE_STORE", "MLOPS_EXECUTOR"):
        monkeypatch.delenv(var, raising=False)

    # MLflow's store reached straight on PostgreSQL is created by its first client: created here once, as a
    # deployment does (`mlflow db upgrade URI`, or by starting the tracking server), not raced by the first
    # steps of both datasets (alembic's CREATE TABLE twice fails one of them).
    MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).search_experiments()
    worker_logs = {w: tmp_path / f"worker-{w}.log" for w in ("a", "b")}
    workers = [celery_worker(f"mlops-{w}-{redis_db}@%h", env, log, concurrency=2) for w, log in worker_logs.items()]
    drivers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    started = time.monotonic()
    try:
        for dataset, days in (("flights", FLIGHTS_DAYS), ("chicago_ridership", CHICAGO_DAYS)):
            log = tmp_path / f"runs-{dataset}.log"
            args = [sys.executable, "-m", "mlops_assets_tests.production_runs", dataset]
            args += ["--days", ",".join(days), "--retrain-as-of", days[-1]]
            with log.open("wb") as out:
                proc = subprocess.Popen(args, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT)
            drivers[dataset] = (proc, log)
        for dataset, (proc, log) in drivers.items():
            try:
                code = proc.wait(timeout=420)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = -9
            assert code == 0, f"{dataset}'s runs exited {code}:\n{log.read_text()[-6000:]}"
    finally:
        for proc, _ in drivers.values():
            if proc.poll() is None:
                proc.kill()
        for w in workers:
            stop_group(w)
    wall = time.monotonic() - started

    # every run of both datasets succeeded, in PostgreSQL, and no writer ever met another
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = instance.get_runs()
        assert len(runs) == 2 * (1 + len(FLIGHTS_DAYS) + 1), [r.job_name for r in runs]
        failed = [
            (r.job_name, r.tags.get("dagster/partition")) for r in runs if r.status != dg.DagsterRunStatus.SUCCESS
        ]
        assert not failed, failed
        messages = [e.message or "" for r in runs for e in instance.all_logs(r.run_id)]
        for dataset, days in (("flights", FLIGHTS_DAYS), ("chicago_ridership", CHICAGO_DAYS)):
            for name in ("raw_batches", "features", "drift_report", "batch_predictions"):
                got = instance.get_materialized_partitions(akey(name, dataset))
                assert got == set(days), (dataset, name, got)
            assert instance.get_latest_materialization_event(akey("evaluation_report", dataset)) is not None
    logs = {p.name: p.read_text(errors="replace") for p in [*worker_logs.values(), *(lg for _, lg in drivers.values())]}
    conflicts = [(name, m.group(0)) for name, text in logs.items() for m in CONFLICT.finditer(text)]
    conflicts += [("event log", m.group(0)) for msg in messages for m in CONFLICT.finditer(msg)]
    assert not conflicts, conflicts

    # the steps were spread over both workers, each of which ran steps of both datasets
    for w, log in worker_logs.items():
        text = log.read_text(errors="replace")
        done = re.findall(r"Task execute_plan\[[0-9a-f-]+\] succeeded", text)
        assert done, f"worker {w} ran no step:\n{text[-3000:]}"

    # each dataset's day partitions on S3 under its own prefix: feature store, raw batches
    client = boto3.client(
        "s3",
        endpoint_url=s3,
        region_name="us-east-1",
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    keys = {
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    }
    for dataset, days in (("flights", FLIGHTS_DAYS), ("chicago_ridership", CHICAGO_DAYS)):
        for day in days:
            for table in ("features", "predictions"):
                assert f"lake/feature_store/{dataset}/{table}/event_day={day}/part.parquet" in keys, (
                    dataset,
                    table,
                    day,
                )
            assert any(k.startswith(f"lake/raw/{dataset}/date={day}/") for k in keys), (dataset, day)
        for day in days[1:]:
            assert f"lake/feature_store/{dataset}/labels/arrival_day={day}/part.parquet" in keys, (dataset, day)
    assert any(k.startswith("lake/io/") for k in keys)
    assert any(k.startswith("mlflow/") for k in keys)

    # the online rows in Redis, per dataset, answering the API's lookup by key
    from mlops_assets.config import Settings
    from mlops_assets.storage.stores import store_for

    settings = Settings.from_env()
    for dataset, days in (("flights", FLIGHTS_DAYS), ("chicago_ridership", CHICAGO_DAYS)):
        store = store_for(settings, specs[dataset])
        assert store.online is not None
        online_keys = list(rdb.scan_iter(match=f"mlops:{dataset}:online:*", count=1000))
        newest = store.features_for_day(dt.date.fromisoformat(days[-1]))
        assert online_keys and len(newest), dataset
        entity = str(newest["entity_id"].iloc[0])
        row = store.online_features([entity])
        assert len(row) == 1 and str(row["event_day"].iloc[0])[:10] == days[-1], (dataset, row)

    # a champion per dataset in the PostgreSQL-backed MLflow, and the retrain's version registered beside it
    mlflow = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    for spec in specs.values():
        champion = mlflow.get_model_version_by_alias(spec.model_name, "champion")
        assert champion is not None
        versions = mlflow.search_model_versions(f"name = '{spec.model_name}'")
        assert len(versions) >= 2, (spec.model_name, [v.version for v in versions])
    print(f"two datasets, {len(runs)} runs on two workers: {wall:.0f} s")
