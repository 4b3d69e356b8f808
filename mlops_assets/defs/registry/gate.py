"""The promotion gate bound to a dataset's spec: the one call that the retrain's `evaluation_report` and a
person's approval both make, so that an approval is judged by the same rule, on the same kind of hold-out,
against whatever the champion is when the person approves."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from mlops_assets.config import DatasetSpec
from mlops_assets.defs.resources import ChampionInfo, ModelRegistryResource
from mlops_assets.ml.promote import GateOutcome, GatePolicy, run_gate
from mlops_assets.storage.feature_sql import FeatureStoreApi

TRAINED_THROUGH_TAG = "mlops.trained_through"
JUDGED_URI_TAG, JUDGED_SHA_TAG = "mlops.judged_model_uri", "mlops.judged_model_sha256"


def judged_model(champion: ChampionInfo, registry: ModelRegistryResource) -> Any:
    """The champion as the gate judged it: fit on the rows before its own hold-out. Its served fit (the same
    recipe on every row through its day, `training.refit_on_holdout`) has trained on part of any later
    hold-out and would win there on its training rows; the judged fit has seen none of a later hold-out, so
    comparing two judged fits compares two recipes and data vintages fairly, as the gate always has, and the
    gains it measures keep meaning what a fresher model wins (what the cost-aware policy learns from). A
    version without a separate judged fit (the baseline, a version awaiting approval) is its own."""
    from mlops_assets.storage.models import load_verified

    uri, sha = champion.tags.get(JUDGED_URI_TAG), champion.tags.get(JUDGED_SHA_TAG)
    if uri and sha and sha != champion.model_sha256:
        return load_verified(uri, sha, registry.tracking_uri).model
    return registry.load_champion(champion)


def judge(
    ds: DatasetSpec,
    holdout: pd.DataFrame,
    challenger: Any,
    champion: ChampionInfo | None,
    registry: ModelRegistryResource,
    *,
    refit_of_champion: bool = False,
) -> GateOutcome:
    """The challenger model against `champion`'s judged fit (its artifact verified against its checksum before
    it scores anything) on `holdout`, with the spec's metric, slices and gate policy."""
    return run_gate(
        challenger,
        judged_model(champion, registry) if champion is not None else None,
        holdout,
        features=ds.feature_names,
        target=ds.target.name,
        metric=ds.metric,
        slice_columns=list(ds.training.slices or []),
        policy=GatePolicy(**ds.gate.model_dump()),
        champion_is_baseline=champion is None or champion.is_baseline,
        refit_of_champion=refit_of_champion,
    )


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
