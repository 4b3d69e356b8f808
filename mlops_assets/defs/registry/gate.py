"""The promotion gate bound to a dataset's spec: the one call that the retrain's `evaluation_report` and a
person's approval both make, so that an approval is judged by the same rule, on the same kind of hold-out,
against whatever the champion is when the person approves."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pandas as pd

from mlops_assets.config import DatasetSpec
from mlops_assets.defs.resources import ChampionInfo, ModelRegistryResource
from mlops_assets.ml.promote import GateOutcome, GatePolicy, PromotionDecision, run_gate
from mlops_assets.storage.feature_sql import FeatureStoreApi

TRAINED_THROUGH_TAG = "mlops.trained_through"


def trained_through(champion: ChampionInfo | None) -> dt.date | None:
    """The newest arrival day whose labels the champion trained on, when it was fit on its own hold-out too
    (`training.refit_on_holdout`); None for a model that never saw its hold-out (the baseline, older versions)."""
    value = champion.tags.get(TRAINED_THROUGH_TAG) if champion is not None else None
    return dt.date.fromisoformat(value) if value else None


def unseen_by_champion(holdout: pd.DataFrame, champion: ChampionInfo | None) -> pd.DataFrame:
    """The hold-out rows the champion did not train on: a champion refit on its own hold-out would otherwise
    be judged partly on its training rows and win every gate it has no right to win."""
    through = trained_through(champion)
    if through is None or "arrival_day" not in holdout:
        return holdout
    return holdout[pd.to_datetime(holdout["arrival_day"]).dt.date > through].reset_index(drop=True)


def judge(
    ds: DatasetSpec,
    holdout: pd.DataFrame,
    challenger: Any,
    champion: ChampionInfo | None,
    registry: ModelRegistryResource,
    *,
    refit_of_champion: bool = False,
    champion_twin: Any | None = None,
) -> GateOutcome:
    """The challenger model against `champion` (its artifact verified against its checksum before it
    scores anything) on the rows of `holdout` neither has trained on, with the spec's metric, slices and gate
    policy. With no such row left, nothing can show the challenger better: rejected, with the scores on the
    whole hold-out reported for the record.

    `champion_twin`: the champion's recipe fit on the challenger's own training rows. A new recipe is then
    compared with the champion's recipe on the same data and the whole hold-out, which the served champion,
    fit through its own day, has partly trained on and partly outdated."""
    unseen = holdout if champion_twin is not None else unseen_by_champion(holdout, champion)
    if champion_twin is not None:
        champion_model = champion_twin
    else:
        champion_model = registry.load_champion(champion) if champion is not None else None
    outcome = run_gate(
        challenger,
        champion_model,
        unseen if len(unseen) else holdout,
        features=ds.feature_names,
        target=ds.target.name,
        metric=ds.metric,
        slice_columns=list(ds.training.slices or []),
        policy=GatePolicy(**ds.gate.model_dump()),
        champion_is_baseline=champion is None or champion.is_baseline,
        refit_of_champion=refit_of_champion,
    )
    if len(unseen):
        return outcome
    why = (
        f"no hold-out row the champion did not train on (it trained on labels through {trained_through(champion)}): "
        "nothing can show the challenger better"
    )
    return dataclasses.replace(outcome, decision=PromotionDecision(False, "rejected", why))


def current_holdout(
    ds: DatasetSpec, store: FeatureStoreApi, as_of: dt.date | None = None
) -> tuple[pd.DataFrame, dt.date]:
    """The hold-out a retrain started now would be judged on: the newest `holdout_days` of every label arrived
    by `as_of` (default: the newest arrival day), split exactly as `training_dataset` and `evaluation_report`
    split it."""
    from mlops_assets.defs.training.assets import split_days  # training imports this module

    if as_of is None:
        as_of = store.last_arrival_day()
        if as_of is None:
            raise ValueError("no labels in the feature store yet: no hold-out to judge on")
    assert as_of is not None
    holdout = split_days(store.training_frame(as_of), ds)["holdout"].reset_index(drop=True)
    return holdout, as_of
