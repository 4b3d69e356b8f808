"""Which columns a reference profile can describe: an early model's training rows have lags and rates with no
value yet, and profiling them must leave them out (recorded), not fail the retrain."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlops_assets.config import DEFAULT_SPEC, load_spec
from mlops_assets.defs.monitoring.assets import profiled_columns
from mlops_assets.ml.drift import ReferenceProfile


def test_columns_without_a_finite_value_are_left_out_of_the_profile() -> None:
    spec = load_spec(DEFAULT_SPEC)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({c: rng.normal(size=50) for c in spec.numeric_features})
    for c in spec.categorical_features:
        frame[c] = ["a", "b"] * 25
    empty_num, inf_num = spec.numeric_features[0], spec.numeric_features[1]
    frame[empty_num] = np.nan
    frame[inf_num] = np.inf
    frame[spec.categorical_features[0]] = None
    numeric, categorical = profiled_columns(frame, spec)
    assert numeric == [c for c in spec.numeric_features if c not in (empty_num, inf_num)]
    assert categorical == spec.categorical_features[1:]
    profile = ReferenceProfile.from_frame(frame, numeric=numeric, categorical=categorical)
    assert profile.compare(frame[[*numeric, *categorical]]).drift_share == 0.0
