"""The production profile is configuration only: the same code, with Dagster's storage on PostgreSQL, the lake,
the IO manager and MLflow's artifacts on S3 (dagster-aws, against a real S3-compatible server), MLflow's
backend store on PostgreSQL, and every step executed by a Celery worker over Redis (dagster-celery).

Nothing is mocked: the jobs are launched with the `dagster` CLI exactly as a deployment would, a worker is
started with `dagster-celery worker start -y deploy/celery.yaml`, and the test reads the results back from
PostgreSQL, S3 and the MLflow registry.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.config import PROJECT_ROOT
from mlops_assets_tests.conftest import akey, fast_flights_spec, job
from mlops_assets_tests.services import s3_server

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


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
def databases(services: None) -> Iterator[tuple[str, str]]:
    import psycopg2

    names = (f"mlops_dagster_{uuid.uuid4().hex[:8]}", f"mlops_mlflow_{uuid.uuid4().hex[:8]}")
    con = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    con.autocommit = True
    with con.cursor() as cur:
        for n in names:
            cur.execute(f"CREATE DATABASE {n}")
    try:
        yield names
    finally:
        with con.cursor() as cur:
            for n in names:
                cur.execute(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)")
        con.close()


def _run(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("a") as out:
        done = subprocess.run(args, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{log.read_text()[-4000:]}")


def test_production_profile_runs_on_postgres_s3_and_celery(
    tmp_path: Path, databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    import redis
    from mlflow import MlflowClient

    dagster_db, mlflow_db = databases
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "deploy" / "dagster.production.yaml", home / "dagster.yaml")
    redis_db = 10 + uuid.uuid4().int % 5
    with s3_server() as s3:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_PG_DB": dagster_db,
            "MLOPS_PROFILE": "production",
            "MLOPS_SPEC": str(fast_flights_spec(tmp_path)),
            "MLOPS_DATA_DIR": str(tmp_path / "data"),
            "MLOPS_LAKE_URI": "s3://mlops/lake",
            "MLOPS_S3_ENDPOINT_URL": s3,
            "MLFLOW_S3_ENDPOINT_URL": s3,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_TRACKING_URI": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{mlflow_db}",
            "MLOPS_MLFLOW_ARTIFACT_ROOT": "s3://mlops/mlflow",
            "MLOPS_CELERY_BROKER": f"redis://127.0.0.1:6379/{redis_db}",
            "MLOPS_CELERY_BACKEND": f"redis://127.0.0.1:6379/{redis_db}",
            # `dagster-celery worker start` runs `celery` from PATH
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        redis.Redis(host="127.0.0.1", port=6379, db=redis_db).flushdb()  # no task left over from another run
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s3_client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
        s3_client.create_bucket(Bucket="mlops")
        log = tmp_path / "worker.log"
        worker = subprocess.Popen(
            [
                str(BIN / "dagster-celery"),
                "worker",
                "start",
                "-A",
                "dagster_celery.app",
                "-y",
                "deploy/celery.yaml",
                "-n",
                f"mlops-test-{redis_db}",
                "-l",
                "INFO",
                "--",
                "--concurrency=1",
            ],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the CLI starts `celery` as a child: stop the whole group afterwards
        )
        try:
            dagster = str(BIN / "dagster")
            jobs_log = tmp_path / "jobs.log"
            _run(
                [dagster, "job", "execute", "-m", "mlops_assets.definitions", "-j", job("bootstrap_job")], env, jobs_log
            )
            tags = json.dumps({"dagster/partition": "2013-01-01"})
            _run(
                [dagster, "job", "execute", "-m", "mlops_assets.definitions", "-j", job("daily_job"), "--tags", tags],
                env,
                jobs_log,
            )
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)

        # Dagster's runs and events are in PostgreSQL, and the steps ran on the Celery worker
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            runs = {r.job_name: r for r in instance.get_runs()}
            assert runs[job("bootstrap_job")].status == dg.DagsterRunStatus.SUCCESS
            assert runs[job("daily_job")].status == dg.DagsterRunStatus.SUCCESS
            messages = [e.message or "" for e in instance.all_logs(runs[job("daily_job")].run_id)]
            assert any("celery" in m.lower() for m in messages), messages[:20]
            raw = instance.get_latest_materialization_event(akey("raw_batches"))
            assert raw is not None and raw.asset_materialization is not None
            assert raw.asset_materialization.partition == "2013-01-01"
            preds = instance.get_latest_materialization_event(akey("batch_predictions"))
            assert preds is not None
        assert "succeeded" in log.read_text(), log.read_text()[-3000:]

        # the lake and the IO manager wrote to S3
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="mlops").get("Contents", [])]
        assert any(k.startswith("lake/raw/") and k.endswith(".parquet") for k in keys), keys
        assert any(k.startswith("lake/io/") for k in keys), keys

        # the baseline champion is registered in the PostgreSQL-backed MLflow, its model files on S3
        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        champion = client.get_model_version_by_alias("flights_model", "champion")
        assert champion.tags.get("mlops.is_baseline") == "true"
        assert any(k.startswith("mlflow/") for k in keys), keys
