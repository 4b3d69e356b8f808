from __future__ import annotations

import datetime as dt

import pandas as pd

from mlops_assets.config import DEFAULT_SPEC, load_spec
from mlops_assets.datasets.sources import read_day
from mlops_assets.datasets.validate import REASON_COLUMN, validate_day

SPEC = load_spec(DEFAULT_SPEC)
DAY = dt.date(2013, 3, 5)


def real_day() -> tuple[pd.DataFrame, list[str]]:
    return read_day(SPEC, DAY)


def test_a_real_day_passes_whole() -> None:
    rows, files = real_day()
    out = validate_day(SPEC, DAY, rows, files)
    assert out.ok and len(out.accepted) == len(rows) > 800 and out.quarantined.empty
    assert out.accepted["year"].dtype == "int64"


def test_empty_day_names_the_day_and_rule() -> None:
    out = validate_day(SPEC, DAY, pd.DataFrame(), [])
    assert not out.ok
    assert "2013-03-05" in out.problems[0] and "no rows" in out.problems[0]


def test_missing_and_extra_columns_block_the_day_and_keep_the_rows() -> None:
    rows, files = real_day()
    changed = rows.drop(columns=["dest"]).assign(gate="A1")
    out = validate_day(SPEC, DAY, changed, files)
    assert not out.ok
    assert any("'dest' is missing" in p for p in out.problems)
    assert any("'gate' is not in the schema" in p for p in out.problems)
    assert out.accepted.empty and len(out.quarantined) == len(rows)  # nothing lost: all kept in quarantine


def test_a_column_turned_to_text_is_a_type_change() -> None:
    rows, files = real_day()
    out = validate_day(SPEC, DAY, rows.assign(distance="far"), files)
    assert not out.ok and any("'distance'" in p and "type int" in p for p in out.problems)


def test_bad_rows_are_quarantined_with_the_rule_they_broke() -> None:
    rows, files = real_day()
    bad = rows.copy()
    bad.loc[0, "origin"] = "BOS"
    bad.loc[1, "distance"] = -5
    bad.loc[2, "carrier"] = None
    bad = pd.concat([bad, bad.iloc[[10]]], ignore_index=True)  # a duplicate row
    out = validate_day(SPEC, DAY, bad, files)
    assert out.ok
    reasons = out.reasons
    assert reasons["origin: not one of ['EWR', 'JFK', 'LGA']"] == 1
    assert reasons["distance: below min 1"] == 1
    assert reasons["carrier: null (rule: nullable: false)"] == 1
    original = int(rows["_source_row"].iloc[10])  # row numbers count in the whole shipped file
    assert reasons[f"duplicate row (same values as flights.csv.zip row {original})"] == 1
    assert len(out.accepted) + len(out.quarantined) == len(bad)
    assert set(out.quarantined[REASON_COLUMN]) == set(reasons)


def test_a_null_flood_blocks_the_day_but_a_few_nulls_cost_their_rows() -> None:
    rows, files = real_day()
    flood = rows.copy()
    flood.loc[: len(rows) * 3 // 4, "carrier"] = None
    out = validate_day(SPEC, DAY, flood, files)
    assert not out.ok and any(
        "column 'carrier' is null on 75% of" in p and "at most 50% nulls" in p for p in out.problems
    )
    assert out.accepted.empty and len(out.quarantined) == len(rows)
