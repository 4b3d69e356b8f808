"""One isolated project for the registry tests: its own data folder, DAGSTER_HOME and MLflow store, a baseline
champion from the real `bootstrap_job`, and real January 2013 days through ingestion and the feature store.

Module-scoped on purpose: each registry test file builds its world once (a training run costs seconds) and
its tests read or move the champion of that world.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mlops_assets.config import Settings
from mlops_assets.definitions import build_defs
from mlops_assets.defs.resources import ModelRegistryResource
from mlops_assets.replay import QUIET
from mlops_assets_tests.conftest import DEPLOYMENT_VARS, akey, fast_flights_spec, job

FIRST_DAY = dt.date(2013, 1, 1)
INGEST = [akey("raw_batches"), akey("labels"), akey("features")]
MODEL = "flights_model"


@dataclass
class Project:
    settings: Settings
    defs: dg.Definitions
    registry: ModelRegistryResource
    tmp: Path


def registry_with_versions(tmp: Path, model: str, versions: int) -> ModelRegistryResource:
    """A SQLite registry of its own holding `versions` versions of `model`: what the alias tests move between."""
    reg = ModelRegistryResource(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", artifact_root=str(tmp / "artifacts"))
    reg.ensure_model(model)
    for _ in range(versions):
        reg.client.create_model_version(model, source=(tmp / "artifacts").as_uri())
    return reg


def days_until(last: dt.date) -> list[dt.date]:
    return [FIRST_DAY + dt.timedelta(days=i) for i in range((last - FIRST_DAY).days + 1)]


def ingest(defs: dg.Definitions, instance: dg.DagsterInstance, days: list[dt.date]) -> None:
    """Only what training reads (raw rows, labels, features): monitoring and serving are not under test."""
    daily = defs.resolve_job_def(job("daily_job"))
    for day in days:
        res = daily.execute_in_process(
            instance=instance, partition_key=day.isoformat(), asset_selection=INGEST, run_config=QUIET
        )
        assert res.success, day


@contextmanager
def isolated_project(tmp: Path, **spec_overrides: Any) -> Iterator[Project]:
    """The environment of a fresh embedded deployment under `tmp`, for the length of the block."""
    data = tmp / "data"
    (data / "dagster_home").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        for var in DEPLOYMENT_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("MLOPS_DATA_DIR", str(data))
        mp.setenv("DAGSTER_HOME", str(data / "dagster_home"))
        mp.setenv("MLOPS_SPEC", str(fast_flights_spec(tmp, **spec_overrides)))
        settings = Settings.from_env()
        registry = ModelRegistryResource(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
        )
        yield Project(settings, build_defs(settings), registry, tmp)


def bootstrap_and_ingest(project: Project, instance: dg.DagsterInstance, last_day: dt.date) -> str:
    """A baseline champion, then every day up to `last_day` ingested; returns the baseline's version."""
    project.defs.resolve_job_def(job("bootstrap_job")).execute_in_process(instance=instance, run_config=QUIET)
    baseline = project.registry.champion_info(MODEL)
    assert baseline is not None and baseline.is_baseline
    ingest(project.defs, instance, days_until(last_day))
    return baseline.version
