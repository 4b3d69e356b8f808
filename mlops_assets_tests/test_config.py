from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops_assets.config import DEFAULT_SPEC, Settings, SpecError, load_spec


def test_shipped_spec_loads_with_every_feature_typed() -> None:
    spec = load_spec(DEFAULT_SPEC)
    assert spec.task == "classification" and spec.metric == "roc_auc"
    assert set(spec.feature_names) == set(spec.numeric_features) | set(spec.categorical_features)
    assert "temp" in spec.numeric_features and "carrier_late_rate_7d" in spec.numeric_features
    assert "plane_year" not in spec.feature_names  # keep: false
    assert len(spec.spec_hash) == 16


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["colour"] = "blue"
    raw["policy"]["cooldown_days"] = -1
    raw["schema"]["distance"]["min"] = 10
    raw["schema"]["distance"]["max"] = 1
    del raw["task"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    msg = str(err.value)
    assert str(bad) in msg
    assert "colour: unknown key" in msg
    assert "policy.cooldown_days" in msg
    assert "schema.distance" in msg and "greater than max" in msg
    assert "task: required key is missing" in msg


def test_metric_must_fit_the_task(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["metric"] = "rmse"
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="does not fit task"):
        load_spec(p)


def test_settings_default_under_data_dir_and_follow_the_environment(tmp_path: Path) -> None:
    s = Settings.from_env({"MLOPS_DATA_DIR": str(tmp_path)})
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert s.profile == "embedded"
    p = Settings.from_env(
        {
            "MLOPS_DATA_DIR": str(tmp_path),
            "MLOPS_PROFILE": "production",
            "MLOPS_LAKE_URI": "s3://bucket/lake",
            "MLFLOW_TRACKING_URI": "postgresql://db/mlflow",
        }
    )
    assert (p.profile, p.lake_uri, p.mlflow_tracking_uri) == (
        "production",
        "s3://bucket/lake",
        "postgresql://db/mlflow",
    )
    assert p.feature_store == "parquet" and p.feature_store_uri == "s3://bucket/lake/feature_store"


def test_the_data_folder_is_the_working_folders_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a user's folder, the state lands in ./data there, never beside the installed package."""
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    assert s.data_dir == tmp_path / "data"
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'data' / 'mlflow' / 'mlflow.db'}"
    assert s.lake_uri == str(tmp_path / "data" / "lake")
    assert s.feature_store == "duckdb"


def test_a_deployment_lists_its_datasets_and_a_command_narrows_to_one(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    s = Settings.from_env({"MLOPS_DATA_DIR": str(tmp_path), "MLOPS_SPECS": f"{a}, {b}", "MLOPS_SPEC": "ignored"})
    assert s.spec_paths == (a, b) and s.spec_path == a
    assert s.with_spec(b).spec_paths == (b,)
