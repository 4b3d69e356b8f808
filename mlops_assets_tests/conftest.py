"""Shared fixtures: every test gets its own data folder, DAGSTER_HOME and MLflow store under tmp_path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from mlops_assets.config import DEFAULT_SPEC, Settings
from mlops_assets.defs import names

TOY_SPEC: dict[str, Any] = {
    "name": "toy",
    "task": "classification",
    "metric": "roc_auc",
    "source": {"kind": "folder", "path": "REPLACED", "pattern": "*.csv"},
    "schema": {
        "user": {"type": "string"},
        "ts": {"type": "timestamp"},
        "x": {"type": "float", "min": -100, "max": 100},
        "kind": {"type": "string", "nullable": True},
        "y": {"type": "int", "nullable": True, "min": 0, "max": 1},
    },
    "event_time": "CAST(ts AS TIMESTAMP)",
    "entity": ["user"],
    "target": {"name": "label", "expr": "y", "label_delay_days": 1},
    "features": {
        "columns": {"x": {"type": "numeric"}, "kind": {"type": "categorical"}},
        "label_rates": {"user_rate_7d": {"by": ["user"], "window_days": 7}},
    },
    "replay": {"start": "2024-01-01", "end": "2024-01-10"},
    "search": {
        "trials": 2,
        "seconds": 30,
        "seed": 1,
        "windows": [None],
        "recency_half_lives": [None],
        "families": {"logistic": {"C": [1.0]}},
    },
}


def fast_flights_spec(tmp: Path, **overrides: Any) -> Path:
    """The shipped flights spec with a small search and an early first model, so tests run in seconds."""
    spec = yaml.safe_load(DEFAULT_SPEC.read_text())
    spec["search"].update({"trials": 3, "seconds": 60, "windows": [None], "recency_half_lives": [None]})
    spec["search"]["families"] = {
        "baseline": {},
        "logistic": {"C": [0.1, 1.0]},
        "hist_gradient_boosting": {"max_iter": [60], "learning_rate": [0.1]},
    }
    spec["policy"].update(
        {"decision": "rules", "bootstrap_min_rows": 18000, "cooldown_days": 3, "min_new_labelled_rows": 1000}
    )
    spec["monitoring"]["evidently_every_days"] = 0
    spec["training"].update({"holdout_days": 3, "validation_days": 3})
    for k, v in overrides.items():
        spec[k] = v if not isinstance(v, dict) else {**spec.get(k, {}), **v}
    path = tmp / "flights_fast.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# Where a deployment's state lives (see Settings.from_env): a test clears them all so nothing of the
# developer's own environment leaks in, then points the data folder at its tmp_path.
DEPLOYMENT_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLOPS_LAKE_URI",
    "MLOPS_DUCKDB_PATH",
    "MLOPS_PROFILE",
    "MLOPS_EXECUTOR",
    "MLOPS_MLFLOW_ARTIFACT_ROOT",
    "MLOPS_SPEC",
    "MLOPS_SPECS",
    "MLOPS_FEATURE_STORE",
    "MLOPS_ONLINE_REDIS_URL",
)
FLIGHTS = "flights"  # the shipped spec's dataset name: its assets live under this key prefix


def akey(name: str, dataset: str = FLIGHTS) -> dg.AssetKey:
    """An asset's key in a deployment: under its dataset's prefix."""
    return names.asset_key(dataset, name)


def job(name: str, dataset: str = FLIGHTS) -> str:
    """A job's (sensor's, schedule's) name in a deployment: prefixed by its dataset's."""
    return names.job_name(dataset, name)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "data"
    monkeypatch.setenv("MLOPS_DATA_DIR", str(d))
    monkeypatch.setenv("DAGSTER_HOME", str(d / "dagster_home"))
    (d / "dagster_home").mkdir(parents=True)
    for var in DEPLOYMENT_VARS:
        monkeypatch.delenv(var, raising=False)
    return d


@pytest.fixture
def flights_settings(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    path = fast_flights_spec(tmp_path)
    monkeypatch.setenv("MLOPS_SPEC", str(path))
    return Settings.from_env()


def day(s: str) -> dt.date:
    return dt.date.fromisoformat(s)
