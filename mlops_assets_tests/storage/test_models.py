"""Verified loads: every URI's bytes are checked against the recorded checksum, each checksum deserialized once.

A retrain meets the same model under several names (the logged model's URI, then `models:/name/version`); the
bytes behind each name are downloaded and verified, but skops runs once per checksum per process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops_assets.ml import models as ml_models
from mlops_assets.storage import models as storage_models
from mlops_assets.storage.models import ArtifactIntegrityError, artifact_digest, forget_loaded, load_verified


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[str]:
    import mlflow

    from mlops_assets.defs.resources import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, "t", str(tmp_path / "art")))
    forget_loaded()
    yield uri
    forget_loaded()


def _fitted() -> tuple[Any, pd.DataFrame]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=200), "c": rng.choice(list("xyz"), 200)})
    model = ml_models.build_model(
        "hist_gradient_boosting", {}, task="regression", numeric=["a"], categorical=["c"], seed=0
    )
    return ml_models.fit(model, X, X["a"].to_numpy() * 3), X


def _count(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls = [0]
    original = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_each_uri_is_verified_and_each_checksum_deserialized_once(
    tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    model, X = _fitted()
    with mlflow.start_run() as run:
        info = ml_models.log_model(model, name="model", input_example=X.head(3))
    client = mlflow.MlflowClient(tracking)
    client.create_registered_model("m")
    version = client.create_model_version("m", info.model_uri, run.info.run_id).version
    loads = _count(monkeypatch, ml_models, "load_model")
    digests = _count(monkeypatch, storage_models, "directory_digest")

    # the fit just logged is kept under its artifact's checksum: the gate's load deserializes nothing
    sha = artifact_digest(info.model_uri, tracking, logged=model)
    assert load_verified(info.model_uri, sha, tracking).model is model
    assert (loads[0], digests[0]) == (0, 2)  # the digest at logging, then the gate's own verification

    # the same bytes under the registry's name: downloaded and verified again, not deserialized again
    by_version = load_verified(f"models:/m/{version}", sha, tracking)
    assert by_version.model is model and by_version.sha256 == sha
    assert (loads[0], digests[0]) == (0, 3)

    # a checksum the bytes do not have is refused, whatever is already in memory
    with pytest.raises(ArtifactIntegrityError, match="refusing to load it"):
        load_verified(f"models:/m/{version}", "0" * 64, tracking)

    # a fresh process deserializes once, then shares it between the two names
    forget_loaded()
    first = load_verified(info.model_uri, sha, tracking).model
    second = load_verified(f"models:/m/{version}", sha, tracking).model
    assert loads[0] == 1 and first is second and first is not model
    np.testing.assert_allclose(ml_models.predict_scores(first, X), ml_models.predict_scores(model, X))
