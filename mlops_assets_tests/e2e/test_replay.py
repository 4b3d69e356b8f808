"""A short stretch of the real flights data through the real loop: jobs, sensor, MLflow, DuckDB."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from mlops_assets.config import Settings
from mlops_assets.defs.resources import ModelRegistryResource
from mlops_assets.replay import replay
from mlops_assets.summary import render_summary
from mlops_assets_tests.conftest import job

pytestmark = pytest.mark.e2e


def test_replay_trains_registers_and_promotes_on_real_data(flights_settings: Settings) -> None:
    result = replay(flights_settings.spec_path, flights_settings, start=dt.date(2013, 1, 1), end=dt.date(2013, 1, 26))
    assert len(result.days) == 26 and all(d.ok for d in result.days)
    # the bootstrap retrain fired once enough labels existed, and produced a registered, promoted model
    assert result.retrains, [d.decision for d in result.days]
    first = result.retrains[0]
    assert first["trigger"] == "bootstrap" and first["success"]
    assert first["decision"] == "first_model" and first["moved"]
    registry = ModelRegistryResource(
        tracking_uri=flights_settings.mlflow_tracking_uri, artifact_root=flights_settings.mlflow_artifact_root
    )
    champ = registry.champion_info("flights_model")
    assert champ is not None and not champ.is_baseline
    assert champ.holdout_metric is not None and 0.6 < champ.holdout_metric < 0.85
    for tag in (
        "mlops.training_dataset_sha256",
        "mlops.spec_hash",
        "mlops.code_version",
        "mlops.dagster_run_id",
    ):
        assert champ.tags.get(tag), tag
    # days after the promotion were served by the trained model
    served_after = [d.champion_version for d in result.days if d.day > first["day"]]
    assert served_after and all(v == champ.version for v in served_after)
    # every sensor evaluation has a reason; the run it launched carries the sensor's tags
    assert all(d.decision for d in result.days)
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job("retrain_job")))
        assert len(runs) == len(result.retrains)
        assert runs[0].tags["dagster/sensor_name"] == job("retrain_sensor") and runs[0].tags["mlops/reason"]
    text = render_summary(result, compare=False)
    assert "Per week" in text and "first_model" in text
