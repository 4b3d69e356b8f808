"""The recommender's data: MovieLens 100K read from the recbole wheel as files, the ranking spec's rules on
bad interactions, and `init --task ranking` writing a spec that loads and fits its data."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pandas as pd
import pytest

from mlops_assets.cli import main
from mlops_assets.config import SPECS_DIR, SpecError, load_spec
from mlops_assets.datasets.sources import package_file, read_delivery, read_source_file, read_table
from mlops_assets.datasets.validate import REASON_COLUMN, validate_day

MOVIELENS = SPECS_DIR / "movielens.yaml"


def test_movielens_files_come_from_the_wheel_without_importing_recbole() -> None:
    sys.modules.pop("recbole", None)
    inter = read_source_file(package_file("recbole", "dataset_example/ml-100k/ml-100k.inter"))
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp"] and len(inter) == 100_000
    items = read_source_file(package_file("recbole", "dataset_example/ml-100k/ml-100k.item"))
    assert list(items.columns) == ["item_id", "movie_title", "release_year", "class"] and len(items) == 1682
    assert items.loc[items["item_id"] == "1", "movie_title"].item() == "Toy Story"
    assert "recbole" not in sys.modules  # located and read as files, never imported (it would pull torch)


def test_the_shipped_spec_derives_its_tabular_keys() -> None:
    spec = load_spec(MOVIELENS)
    assert spec.task == "ranking" and spec.ranking is not None and spec.ranking.k == 10
    assert spec.entity == ["user_id", "item_id"] and spec.target.label_delay_days == 0
    assert spec.target.expr == 'CAST("rating" >= 4 AS INTEGER)'
    assert {"user_id", "item_id", "release_year", "genre", "age"} <= set(spec.feature_names)
    day = read_delivery(spec, dt.date(1997, 9, 20)).rows
    assert len(day) == 915  # the first day's ratings, by the UTC day of their Unix time


def test_bad_interactions_are_quarantined_with_their_reason() -> None:
    spec = load_spec(MOVIELENS)
    day = dt.date(1997, 9, 20)
    rows = read_delivery(spec, day).rows.head(5).copy()
    rows = pd.concat([rows, rows.iloc[[0]]], ignore_index=True)  # a duplicate
    rows.loc[1, "item_id"] = "99999"  # a film the catalogue does not list
    rows.loc[2, "user_id"] = None  # no user
    rows.loc[3, "rating"] = 9  # off the scale
    out = validate_day(spec, day, rows, ["test"])
    reasons = out.quarantined[REASON_COLUMN].tolist()
    assert len(out.accepted) == 2 and len(reasons) == 4, reasons  # rows 0 and 4 are good
    assert any("item_id: not in the films table" in r for r in reasons)
    assert any("user_id: null" in r for r in reasons)
    assert any("rating: above max 5" in r for r in reasons)
    assert any("duplicate row" in r for r in reasons)


def test_a_ranking_spec_names_columns_and_side_tables_that_exist(tmp_path: Path) -> None:
    text = MOVIELENS.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("  items: films", "  items: catalogue").replace("  k: 10", "  k: 0"))
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    assert "ranking.k" in str(err.value)
    bad.write_text(text.replace("  items: films", "  items: catalogue"))
    with pytest.raises(SpecError, match=r"ranking\.items names 'catalogue'"):
        load_spec(bad)
    bad.write_text(text.replace("metric: ndcg ", "metric: roc_auc "))
    with pytest.raises(SpecError, match="does not fit task 'ranking'"):
        load_spec(bad)


def test_init_writes_a_ranking_spec_that_validates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inter = read_source_file(package_file("recbole", "dataset_example/ml-100k/ml-100k.inter"))
    first = inter[inter["timestamp"] < inter["timestamp"].min() + 86400 * 20]
    csv = tmp_path / "ratings.csv"
    first.rename(columns={"user_id": "buyer", "item_id": "product", "rating": "stars", "timestamp": "ts"}).to_csv(
        csv, index=False
    )
    out = tmp_path / "shop.yaml"
    args = ["init", str(csv), "--task", "ranking", "--user", "buyer", "--item", "product", "--time", "ts"]
    assert main([*args, "--target", "stars", "-o", str(out)]) == 0, capsys.readouterr().err
    spec = load_spec(out)
    assert spec.ranking is not None and spec.ranking.relevance_threshold == 4.0 and spec.metric == "ndcg"
    assert set(spec.search["families"]) == {"popularity", "item_knn", "ease", "als"}
    # blends of recent popularity tried on the best collaborative trial, over a window the 20 days can hold
    assert spec.search["blends"] == [2.0, 4.0] and spec.search["blend_windows"] == [5]
    # the cost-aware policy, priced on NDCG@10's scale: 0.01 lost for a day costs one CPU-second
    assert spec.policy.decision == "cost" and spec.policy.cost.staleness_price == 100.0
    assert spec.policy.cooldown_days == 0 and spec.policy.max_per_week == 7
    assert main(["validate", str(out)]) == 0
    assert main(["init", str(csv), "--task", "ranking", "--time", "ts", "--user", "buyer"]) == 2
    assert "--task ranking needs --user and --item" in capsys.readouterr().err


def test_side_tables_read_as_lookups() -> None:
    spec = load_spec(MOVIELENS)
    films = next(lk for lk in spec.features.lookups if lk.name == "films")
    assert len(read_table(films.source)) == 1682
