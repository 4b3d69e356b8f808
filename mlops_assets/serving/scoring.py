"""What scores a served version: its compiled scorer when proven equal to scikit-learn, else the model.

The proof that matters is the one made at registration on the gate's own hold-out (`mlops.scorer` and its
sibling tags, written by `registration_tags`). The service cannot see that hold-out, so when it loads a
version it repeats the check on probe rows that reach every branch the compiler built, and it serves the
compiled path only when both agree. A version whose tags say `plain` is served plain with the recorded
reason; a version registered before the check existed is judged on the probes alone and says so. A model
that cannot score even by the plain path is refused (`ModelRefused`), so the watcher keeps the last good one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.config import DatasetSpec
from mlops_assets.defs.resources import ChampionInfo
from mlops_assets.serving.compiled import (
    SCORER_REASON_TAG,
    SCORER_TAG,
    Columns,
    CompiledScorer,
    prove,
    registration_tags,
)
from mlops_assets.serving.model_watcher import ModelRefused


@dataclass(frozen=True)
class Scoring:
    """The path a version is scored by, and why (shown by `/model`)."""

    path: str  # "compiled" or "plain"
    note: str
    compiled: CompiledScorer | None
    model: Any
    names: tuple[str, ...]

    def score(self, cols: Columns) -> np.ndarray:
        if self.compiled is not None:
            return self.compiled.score(cols)
        from mlops_assets.ml.models import predict_scores

        return np.asarray(predict_scores(self.model, cols.to_frame(self.names)), dtype=np.float64)


def build_scoring(info: ChampionInfo, model: Any, spec: DatasetSpec) -> Scoring:
    """Decide how `model` serves; raise `ModelRefused` if it cannot serve at all."""
    from mlops_assets.ml.models import predict_scores

    numeric, categorical = list(spec.numeric_features), list(spec.categorical_features)
    names = (*spec.feature_names,)
    smoke = _smoke_rows(numeric, categorical)
    try:
        scores = np.asarray(predict_scores(model, smoke[list(names)]), dtype=np.float64)
    except Exception as exc:
        raise ModelRefused(f"it cannot score a row of the spec's features ({type(exc).__name__})") from exc
    if scores.shape != (len(smoke),):
        raise ModelRefused(f"it returns {scores.shape} scores for {len(smoke)} rows")
    recorded = info.tags.get(SCORER_TAG)
    if recorded == "plain":
        reason = info.tags.get(SCORER_REASON_TAG) or "recorded at registration"
        return Scoring("plain", f"plain path recorded at registration: {reason}", None, model, names)
    proof = prove(model, smoke, numeric, categorical)
    if not proof.ok or proof.compiled is None:
        return Scoring("plain", f"plain path: {proof.reason}", None, model, names)
    where = "on the hold-out at registration and " if recorded == "compiled" else "(no registration proof) "
    note = f"compiled, proven {where}on {proof.rows} probe rows at load (max |diff| {proof.max_abs_diff:.1e})"
    return Scoring("compiled", note, proof.compiled, model, names)


def _smoke_rows(numeric: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame:
    """Four rows of the spec's features: zeros and missing values, known-looking and unseen strings."""
    data: dict[str, list[Any]] = {n: [0.0, 1.0, np.nan, -1.0] for n in numeric}
    for n in categorical:
        data[n] = ["a", None, "unseen", "0"]
    frame = pd.DataFrame(data, columns=[*numeric, *categorical])
    for n in numeric:
        frame[n] = frame[n].astype("float64")
    return frame


def scorer_tags(
    model_uri: str, sha256: str, tracking_uri: str, holdout: pd.DataFrame, spec: DatasetSpec
) -> dict[str, str]:
    """The `mlops.scorer*` version tags for a candidate, proven on the hold-out the gate judged it on.

    Called at registration. A model that does not even load gets `mlops.scorer: unservable` with the reason
    (the champion step then refuses to move the alias to it, since it loads the version before moving)."""
    from mlops_assets.storage.models import load_verified

    try:
        model = load_verified(model_uri, sha256, tracking_uri).model
    except Exception as exc:
        from mlops_assets.serving.model_watcher import public_reason

        return {SCORER_TAG: "unservable", SCORER_REASON_TAG: public_reason(exc)[:500]}
    frame = holdout[list(spec.feature_names)]
    return registration_tags(model, frame, spec.numeric_features, spec.categorical_features)
