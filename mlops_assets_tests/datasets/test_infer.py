"""`mlops-assets init` infers a spec that loads and validates as written; `validate` checks a spec against its
data and lists every problem at once, each with the file and the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_assets.cli import main
from mlops_assets.config import SpecError, load_spec


def _frame(days: int = 6, per_day: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * per_day
    ts = pd.Timestamp("2024-05-01") + pd.to_timedelta(np.repeat(np.arange(days), per_day), unit="D")
    ts = ts + pd.to_timedelta(rng.integers(0, 24 * 60, n), unit="min")
    x = rng.normal(0, 1, n)
    return pd.DataFrame(
        {
            "row_id": np.arange(1, n + 1),  # an identifier: never a feature
            "ts": ts,
            "shop": rng.choice(["a", "b", "c"], n),
            "price": rng.uniform(1, 9, n).round(2),
            "qty": rng.integers(0, 20, n),
            "coupon": rng.random(n) < 0.3,
            "note": np.where(rng.random(n) < 0.2, None, "ok"),
            "churned": (x + rng.normal(0, 0.5, n) > 0).astype(int),
            "spend": (3 * x + 10 + rng.normal(0, 1, n)).round(3),
        }
    )


def test_init_on_a_csv_infers_types_and_writes_a_spec_that_validates(tmp_path: Path) -> None:
    csv = tmp_path / "Shop Data.csv"
    df = _frame()
    df.assign(ts=df["ts"].dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(csv, index=False)
    out = tmp_path / "shop.yaml"
    assert main(["init", str(csv), "--target", "churned", "--time", "ts", "-o", str(out)]) == 0
    spec = load_spec(out)
    types = {c: r.type for c, r in spec.schema_.items()}
    assert types == {
        "row_id": "int",
        "ts": "timestamp",
        "shop": "string",
        "price": "float",
        "qty": "int",
        "coupon": "bool",
        "note": "string",
        "churned": "int",
        "spend": "float",
    }
    assert spec.schema_["note"].nullable and not spec.schema_["price"].nullable
    assert spec.schema_["price"].min == 0 and spec.schema_["price"].max is None  # open above: later days may go on
    assert (spec.task, spec.metric, spec.name) == ("classification", "roc_auc", "shop_data")
    assert spec.source.kind == "file" and Path(spec.source.path or "") == csv.resolve()
    assert spec.entity == [] and spec.target.label_delay_days == 1
    assert str(spec.replay.start) == "2024-05-01" and str(spec.replay.end) == "2024-05-06"
    assert "row_id" not in spec.feature_names and "churned" not in spec.feature_names
    assert spec.feature_columns["shop"].type == "categorical" and spec.feature_columns["price"].type == "numeric"
    assert {"day_of_week", "hour"} <= set(spec.feature_names)
    # sized to 40 rows a day, not to the flights' thousands
    assert spec.policy.decision == "cost" and spec.policy.min_new_labelled_rows <= 280
    assert spec.policy.cost.staleness_price == 100.0 and spec.policy.cooldown_days == 0
    assert set(spec.search["families"]) == {"baseline", "logistic", "hist_gradient_boosting"}
    assert main(["validate", str(out)]) == 0


def test_init_on_a_parquet_infers_a_regression_with_an_entity(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pq = tmp_path / "spend.parquet"
    _frame(seed=1).to_parquet(pq)
    out = tmp_path / "spend.yaml"
    rc = main(["init", str(pq), "--target", "spend", "--time", "ts", "--entity", "shop", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    spec = load_spec(out)
    assert (spec.task, spec.metric) == ("regression", "rmse")
    assert spec.entity == ["shop"] and spec.schema_["ts"].type == "timestamp"
    assert spec.schema_["coupon"].type == "bool" and spec.feature_columns["coupon"].type == "numeric"
    assert "ridge" in spec.search["families"] and "logistic" not in spec.search["families"]
    assert "next: mlops-assets replay --spec" in capsys.readouterr().out
    assert main(["validate", str(out)]) == 0


def test_init_refuses_a_multiclass_target_and_a_missing_column(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = tmp_path / "d.csv"
    _frame().assign(churned=lambda d: d["qty"] % 3).to_csv(csv, index=False)
    assert main(["init", str(csv), "--target", "churned", "--time", "ts", "--task", "classification"]) == 2
    assert "3 distinct values" in capsys.readouterr().err
    assert main(["init", str(csv), "--target", "nope", "--time", "ts", "-o", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--target 'nope' is not a column" in err and "d.csv" in err


def test_validate_lists_every_problem_against_the_data_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = tmp_path / "shop.csv"
    _frame().to_csv(csv, index=False)
    good = tmp_path / "good.yaml"
    assert main(["init", str(csv), "--target", "churned", "--time", "ts", "-o", str(good)]) == 0
    raw = yaml.safe_load(good.read_text())
    raw["schema"]["shop_id"] = raw["schema"].pop("shop")  # a column the file does not have (and one unlisted)
    raw["schema"]["qty"] = {"type": "bool"}  # wrong type
    raw["schema"]["price"]["max"] = 2  # most prices are above it
    raw["event_time"] = "CAST(tss AS TIMESTAMP)"  # a misspelt column
    raw["target"]["expr"] = "churned * 5"  # not 0/1
    raw["features"]["columns"]["price"] = {"type": "numeric", "expr": "pricey * 2"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    capsys.readouterr()
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: " in err
    for needle in (
        "schema.shop_id: column not found in",
        "has a column 'shop' the schema does not list",
        "schema.qty.type: declared bool",
        "schema.price.min/max:",
        "event_time: 'CAST(tss AS TIMESTAMP)' does not evaluate",
        "target.expr: a classification target must be 0 or 1",
        "features.columns.price: 'pricey * 2' does not evaluate",
    ):
        assert needle in err, (needle, err)
    assert str(csv) in err


def test_spec_mistakes_name_the_file_the_line_and_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = tmp_path / "shop.csv"
    _frame().to_csv(csv, index=False)
    good = tmp_path / "good.yaml"
    assert main(["init", str(csv), "--target", "churned", "--time", "ts", "-o", str(good)]) == 0
    text = (
        good.read_text()
        .replace("  drift_share: 0.5", "  drift_shar: 0.5")
        .replace("  min_delta: 0.002", "  min_delta: -1")
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    lines = text.splitlines()
    capsys.readouterr()
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    unknown = next(i for i, ln in enumerate(lines, 1) if "drift_shar:" in ln)
    delta = next(i for i, ln in enumerate(lines, 1) if "min_delta:" in ln)
    assert f"{bad}: 2 problem(s)" in err
    assert f"monitoring.drift_shar: unknown key (check its spelling and level) (line {unknown})" in err
    assert f"gate.min_delta: Input should be greater than or equal to 0 (line {delta})" in err


def test_a_window_on_the_target_must_wait_for_the_label(tmp_path: Path) -> None:
    csv = tmp_path / "shop.csv"
    _frame().to_csv(csv, index=False)
    out = tmp_path / "s.yaml"
    assert main(["init", str(csv), "--target", "spend", "--time", "ts", "-o", str(out)]) == 0
    raw = yaml.safe_load(out.read_text())
    raw["target"]["label_delay_days"] = 2
    raw["features"]["windows"] = {"spend_lag_1": {"expr": "spend", "days": 1, "lag_days": 1}}
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SpecError, match="lag_days must be >= 2 or the feature leaks the future"):
        load_spec(out)
    raw["features"]["windows"]["spend_lag_1"]["lag_days"] = 2
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert load_spec(out).feature_columns["spend_lag_1"].type == "numeric"
