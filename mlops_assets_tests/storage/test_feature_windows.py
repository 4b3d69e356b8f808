"""Window features (lags, rolling aggregates per entity) read only earlier days; a spec with no entity keeps
every row, even rows that share a timestamp."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlops_assets.config import DatasetSpec
from mlops_assets_tests.storage.conftest import make_store

BACKENDS = ["duckdb", "parquet", "parquet-s3"]

SPEC: dict[str, Any] = {
    "name": "sales",
    "task": "regression",
    "metric": "rmse",
    "source": {"kind": "folder", "path": "/nowhere"},
    "schema": {"shop": {"type": "string"}, "ts": {"type": "timestamp"}, "units": {"type": "float"}},
    "event_time": "CAST(ts AS TIMESTAMP)",
    "entity": ["shop"],
    "target": {"name": "units_target", "expr": "units", "label_delay_days": 1},
    "features": {
        "columns": {"shop": {"type": "categorical"}},
        "windows": {
            "units_lag_1": {"expr": "units", "days": 1, "lag_days": 1},
            "units_sum_2d": {"expr": "units", "agg": "sum", "days": 2},
            "units_all_shops_lag_1": {"expr": "units", "lag_days": 1, "by": []},
        },
    },
    "replay": {"start": "2024-01-01", "end": "2024-01-10"},
    "search": {"families": {"baseline": {}}},
}


def _day(d: int, units: dict[str, float]) -> pd.DataFrame:
    ts = pd.Timestamp(f"2024-01-0{d} 09:00", tz="UTC")
    return pd.DataFrame({"shop": list(units), "ts": [ts] * len(units), "units": list(units.values())})


@pytest.mark.parametrize("backend", BACKENDS)
def test_windows_aggregate_previous_days_per_entity_and_never_the_day_itself(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = make_store(backend, tmp_path, DatasetSpec.model_validate(SPEC), request)
    first = store.write_features(dt.date(2024, 1, 1), _day(1, {"a": 1.0, "b": 10.0}))
    assert first["units_lag_1"].isna().all() and first["units_sum_2d"].isna().all()
    store.write_features(dt.date(2024, 1, 2), _day(2, {"a": 2.0, "b": 20.0}))
    third = store.write_features(dt.date(2024, 1, 3), _day(3, {"a": 300.0, "c": 5.0})).set_index("shop")
    assert third.loc["a", "units_lag_1"] == 2.0  # the day before, not today's 300
    assert third.loc["a", "units_sum_2d"] == 3.0  # days 1 and 2
    assert pd.isna(third.loc["c", "units_lag_1"])  # a new entity has no history
    assert third.loc["a", "units_all_shops_lag_1"] == 11.0 == third.loc["c", "units_all_shops_lag_1"]
    # re-materializing a day replaces its history rows: no double counting
    store.write_features(dt.date(2024, 1, 2), _day(2, {"a": 2.0, "b": 20.0}))
    again = store.write_features(dt.date(2024, 1, 3), _day(3, {"a": 300.0, "c": 5.0})).set_index("shop")
    assert again.loc["a", "units_sum_2d"] == 3.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_entity_keeps_rows_that_share_a_timestamp_and_labels_meet_their_features(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    raw = copy.deepcopy(SPEC)
    raw["entity"] = []
    raw["features"]["windows"] = {}
    store = make_store(backend, tmp_path, DatasetSpec.model_validate(raw), request)
    rows = _day(1, {"a": 1.0, "b": 2.0, "c": 3.0})
    feats = store.write_features(dt.date(2024, 1, 1), rows)
    assert len(feats) == 3 and feats["entity_id"].nunique() == 3
    store.write_labels(dt.date(2024, 1, 2), rows)
    frame = store.training_frame(dt.date(2024, 1, 2)).set_index("shop")
    assert frame["units_target"].to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0}
