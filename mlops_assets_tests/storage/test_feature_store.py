"""Point-in-time correctness on data built to catch leakage."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlops_assets.config import load_spec
from mlops_assets.storage.feature_store import FeatureStore
from mlops_assets_tests.conftest import TOY_SPEC


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    p = tmp_path / "toy.yaml"
    p.write_text(yaml.safe_dump({**TOY_SPEC, "source": {"kind": "folder", "path": str(tmp_path)}}))
    return FeatureStore(tmp_path / "fs.duckdb", load_spec(p))


def rows(day: str, user: str, y: int, x: float, n: int = 3) -> pd.DataFrame:
    ts = [pd.Timestamp(f"{day} {10 + i}:00") for i in range(n)]
    return pd.DataFrame({"user": user, "ts": ts, "x": x, "kind": "a", "y": y})


def test_label_rates_use_only_labels_that_had_arrived(store: FeatureStore) -> None:
    # Day 1: user u is always 0. Day 2: always 1. Labels arrive one day late.
    d1, d2, d3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
    r1, r2, r3 = (
        rows("2024-01-01", "u", 0, 1.0),
        rows("2024-01-02", "u", 1, 2.0),
        rows("2024-01-03", "u", 1, 3.0),
    )
    store.write_labels(d1, pd.DataFrame())  # nothing arrives on day 1
    f1 = store.write_features(d1, r1)
    store.write_labels(d2, r1)  # day 1's labels (all 0) arrive on day 2
    f2 = store.write_features(d2, r2)
    store.write_labels(d3, r2)  # day 2's labels (all 1) arrive on day 3
    f3 = store.write_features(d3, r3)
    assert f1["user_rate_7d"].isna().all()  # no label known yet
    assert (f2["user_rate_7d"] == 0.0).all()  # only day 1's zeros: day 2's ones are still in the future
    assert (f3["user_rate_7d"] > 0.45).all() and (f3["user_rate_7d"] < 0.55).all()


def test_training_set_joins_each_label_to_the_features_known_at_its_time(store: FeatureStore) -> None:
    d1, d2, d3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
    r1 = rows("2024-01-01", "u", 0, 1.0, n=1)
    r2 = rows("2024-01-02", "u", 1, 99.0, n=1)  # a later feature value that must not reach day 1's label
    store.write_features(d1, r1)
    store.write_features(d2, r2)
    store.write_labels(d2, r1)
    store.write_labels(d3, r2)
    t2 = store.training_frame(d2)
    assert len(t2) == 1 and t2["x"].iloc[0] == 1.0 and t2["label"].iloc[0] == 0
    t3 = store.training_frame(d3)
    assert list(t3["x"]) == [1.0, 99.0] and list(t3["label"]) == [0, 1]


def test_rematerializing_a_day_replaces_it_exactly_once(store: FeatureStore) -> None:
    d1 = dt.date(2024, 1, 1)
    store.write_features(d1, rows("2024-01-01", "u", 0, 1.0))
    store.write_features(d1, rows("2024-01-01", "u", 0, 5.0))
    store.write_features(d1, rows("2024-01-01", "u", 0, 5.0))
    got = store.features_for_day(d1)
    assert len(got) == 3 and (got["x"] == 5.0).all()


def test_online_features_return_the_latest_row_per_entity(store: FeatureStore) -> None:
    store.write_features(dt.date(2024, 1, 1), rows("2024-01-01", "u", 0, 1.0))
    store.write_features(dt.date(2024, 1, 2), rows("2024-01-02", "u", 0, 7.0))
    store.write_features(
        dt.date(2024, 1, 2), pd.concat([rows("2024-01-02", "u", 0, 7.0), rows("2024-01-02", "v", 0, 4.0)])
    )
    online = store.online_features(["u", "v", "nobody"]).set_index("entity_id")
    assert online.loc["u", "x"] == 7.0 and online.loc["v", "x"] == 4.0 and "nobody" not in online.index
