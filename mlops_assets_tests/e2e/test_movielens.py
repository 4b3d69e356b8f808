"""The recommender through the real loop, on a shortened window of MovieLens 100K: the bandage (item-item
CF) is registered after the first day and serves from the second, the sensor's first retrain sweeps the
ranking families and the gate judges the winner against the bandage on the same hold-out users, the
summary compares continuous training with the fixed strategies, and the API recommends with the champion."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from mlops_assets.cli import main
from mlops_assets.config import SPECS_DIR, Settings, load_spec
from mlops_assets.defs.ranking import history_before
from mlops_assets.defs.resources import ModelRegistryResource
from mlops_assets.ml.ranking.models import Recommender, recommend_for_user, recommend_ids
from mlops_assets.serving.app import create_app
from mlops_assets.serving.recommend import HistoryIndex

pytestmark = pytest.mark.e2e
MOVIELENS = SPECS_DIR / "movielens.yaml"
LAST = dt.date(1997, 9, 23)  # the fourth day replayed


def test_movielens_replay_bandage_then_a_better_recommender(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = yaml.safe_load(MOVIELENS.read_text())
    # the shipped spec with one-day validation and hold-out and a small search, so that the first sweep runs
    # after the third day (2,406 ratings) and the test stays short
    raw["policy"].update({"bootstrap_min_rows": 2000})
    raw["training"].update({"holdout_days": 1, "validation_days": 1})
    raw["gate"].update({"confidence": 0.8})
    raw["monitoring"].update({"evidently_every_days": 0})
    raw["search"].update({"trials": 3, "seconds": 20, "windows": [None], "recency_half_lives": [None]})
    raw["search"]["families"] = {"popularity": {}, "item_knn": {"neighbours": [50]}, "ease": {"l2": [200.0]}}
    spec_path = tmp_path / "movielens_fast.yaml"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["replay", "--spec", str(spec_path), "--days", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "== movielens: 4 days replayed" in out and "served ndcg" in out
    assert "Continuous training vs fixed strategies (ndcg@10, same users and days, by week)" in out
    for row in ("continuous", "bandage never retrained", "item-KNN refit daily", "popularity 30 days, daily"):
        assert row in out, out

    settings = Settings.from_env()
    spec = load_spec(spec_path)
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    versions = {str(v.version): v for v in registry.client.search_model_versions(f"name='{spec.model_name}'")}
    bandage = versions["1"]
    assert bandage.tags["mlops.is_baseline"] == "true" and bandage.tags["mlops.family"] == "item_knn"
    assert bandage.tags["mlops.training_as_of"] == "1997-09-20"  # fit on the first day, serving from the second
    trained = [v for v in versions.values() if v.tags.get("mlops.is_baseline") == "false"]
    assert trained, out  # the sensor's first retrain registered its winner, promoted or not, with the gate's reason
    first = min(trained, key=lambda v: int(v.version))  # the cost policy may refit it the next day
    assert first.tags["mlops.gate"] in {"first_model", "rejected"}
    assert "ndcg@k" in first.tags["mlops.gate_reason"] and "n=" in first.tags["mlops.gate_reason"]
    assert all(v.tags["mlops.gate"] in {"first_model", "promoted", "rejected"} for v in trained)

    monkeypatch.setenv("MLOPS_SPEC", str(spec_path))
    champion = registry.champion_info(spec.model_name)
    assert champion is not None
    with TestClient(create_app(Settings.from_env())) as client:
        seen = client.get("/recommend/1?k=5").json()
        assert seen["model_version"] == champion.version and len(seen["items"]) == 5 and not seen["cold_start"]
        cold = client.get("/recommend/no-such-user?k=3").json()
        assert cold["cold_start"] and len(cold["items"]) == 3
        assert client.get("/recommend/1?k=0").status_code == 422
        store = client.app.state.feature_store  # type: ignore[attr-defined]

    # A blend or a popularity champion serves online what the batch lists would serve the next day: what it
    # counts as of the day after the newest interaction, items born after its fit included
    early = history_before(spec, store, LAST)
    after = LAST + dt.timedelta(days=1)
    history = history_before(spec, store, after)
    knn = Recommender("item_knn", {"neighbours": 20}).fit(early, pd.Timestamp(LAST))
    popularity = Recommender("popularity", window_days=2).fit(early, pd.Timestamp(LAST))
    for model in (knn.blended(history, 2.0, 2), popularity):
        live = HistoryIndex(spec, store, 1.0).live_catalogue(model)
        assert live is not None and set(model.item_ids) != set(live.item_ids)
        for user in ("1", "no-such-user", str(history["user"].iloc[-1])):
            seen = sorted(set(history.loc[history["user"] == user, "item"]))
            assert recommend_for_user(model, seen, 5, live) == recommend_ids(model, history, [user], 5, as_of=after)[0]
