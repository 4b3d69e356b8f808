"""Datasets of one data folder and instance keep their state apart: a fresh replay of one forgets only its own."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from mlflow import MlflowClient

from mlops_assets.config import Settings, load_spec
from mlops_assets.definitions import build_defs
from mlops_assets.replay import QUIET, forget_dataset
from mlops_assets.storage.stores import duckdb_file
from mlops_assets_tests.conftest import job


@pytest.fixture
def two(flights_settings: Settings, tmp_path: Path) -> tuple[Settings, Path]:
    raw = yaml.safe_load(flights_settings.spec_path.read_text())
    raw["name"] = "flights_b"
    other = tmp_path / "flights_b.yaml"
    other.write_text(yaml.safe_dump(raw, sort_keys=False))
    return flights_settings.model_copy(update={"spec_paths": (flights_settings.spec_path, other)}), other


def test_forgetting_one_dataset_leaves_the_other(two: tuple[Settings, Path], tmp_path: Path) -> None:
    settings, other = two
    a, b = load_spec(settings.spec_path), load_spec(other)
    defs = build_defs(settings)
    with dg.DagsterInstance.get() as instance:
        for name in (a.name, b.name):
            boot = defs.resolve_job_def(job("bootstrap_job", name))
            assert boot.execute_in_process(instance=instance, run_config=QUIET).success
            daily = defs.resolve_job_def(job("daily_job", name))
            assert daily.execute_in_process(instance=instance, run_config=QUIET, partition_key="2013-01-01").success
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    assert {m.name for m in client.search_registered_models()} == {a.model_name, b.model_name}

    forget_dataset(settings, b)

    assert duckdb_file(settings.data_dir, a.name).exists() and not duckdb_file(settings.data_dir, b.name).exists()
    assert {m.name for m in client.search_registered_models()} == {a.model_name}
    with dg.DagsterInstance.get() as instance:
        jobs = {r.job_name for r in instance.get_runs()}
        assert jobs == {job("bootstrap_job", a.name), job("daily_job", a.name)}
        datasets = {k.path[0] for k in instance.get_asset_keys()}
        assert datasets == {a.name}
    lake = settings.data_dir / "lake"
    assert not any((area / b.name).exists() for area in lake.iterdir())
    assert any((area / a.name).exists() for area in lake.iterdir())
