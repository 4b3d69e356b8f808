"""The gate judges a champion only on rows it did not train on: a champion refit on its own hold-out would
otherwise win every comparison on its training rows."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from mlops_assets.defs.registry.gate import TRAINED_THROUGH_TAG, trained_through, unseen_by_champion
from mlops_assets.defs.resources import ChampionInfo


def champion(tags: dict[str, str]) -> ChampionInfo:
    return ChampionInfo("m", "3", "run", "models:/m/3", {"mlops.is_baseline": "false", **tags})


def holdout() -> pd.DataFrame:
    days = pd.date_range("2013-03-01", periods=6, freq="D")
    return pd.DataFrame({"event_day": days, "arrival_day": days + pd.Timedelta(days=1), "x": range(6)})


def test_only_the_rows_arrived_after_the_champions_training_are_judged() -> None:
    served = champion({TRAINED_THROUGH_TAG: "2013-03-04"})
    assert trained_through(served) == dt.date(2013, 3, 4)
    rows = unseen_by_champion(holdout(), served)
    assert list(rows["x"]) == [3, 4, 5], "arrived on 03-05 and later: labels the champion never had"
    assert rows.index.tolist() == [0, 1, 2]


def test_a_champion_that_never_saw_its_hold_out_is_judged_on_all_of_it() -> None:
    for c in (champion({}), None):
        assert trained_through(c) is None
        assert len(unseen_by_champion(holdout(), c)) == 6


def test_a_champion_trained_through_the_whole_hold_out_leaves_nothing_to_judge() -> None:
    assert unseen_by_champion(holdout(), champion({TRAINED_THROUGH_TAG: "2013-03-07"})).empty
