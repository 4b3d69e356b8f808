"""Every family through the real MLflow round trip with skops and exactly the trusted types it needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from mlops_assets.ml.models import (
    SKOPS_TRUSTED_TYPES,
    build_model,
    fit,
    load_model,
    log_model,
    predict_scores,
)

NUM, CAT = ["a", "b"], ["c"]


def data(n: int = 600, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(list("xyzw"), n)})
    X.loc[:10, "a"] = np.nan
    X.loc[11:20, "c"] = None
    y_cls = ((X["a"].fillna(0) + (X["c"] == "x")) > 0.3).astype(int).to_numpy()
    return X, y_cls, X["b"].to_numpy() * 2 + 1


CASES = [("classification", f) for f in ("baseline", "logistic", "random_forest", "hist_gradient_boosting")] + [
    ("regression", f) for f in ("baseline", "ridge", "random_forest", "hist_gradient_boosting")
]


def fitted(task: str, family: str) -> tuple[object, pd.DataFrame]:
    X, y_cls, y_reg = data()
    params = (
        {"n_estimators": 20} if family == "random_forest" else {"max_iter": 30} if family.startswith("hist") else {}
    )
    model = build_model(family, params, task=task, numeric=NUM, categorical=CAT, seed=0)
    return fit(model, X, y_cls if task == "classification" else y_reg), X


def test_trusted_types_are_exactly_what_the_families_need() -> None:
    needed: set[str] = set()
    for task, family in CASES:
        model, _ = fitted(task, family)
        needed |= set(sio.get_untrusted_types(data=sio.dumps(model)))
    # plus the recommenders' one class, whose round trip test_ranking checks
    from mlops_assets.ml.ranking.models import SKOPS_TRUSTED_TYPES as RANKING_TYPES

    assert needed | set(RANKING_TYPES) == set(SKOPS_TRUSTED_TYPES)


@pytest.mark.parametrize(("task", "family"), CASES)
def test_each_family_round_trips_through_mlflow(task: str, family: str, tmp_path: Path) -> None:
    import mlflow

    from mlops_assets.defs.resources import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(uri, "t", str(tmp_path / "art")))
    model, X = fitted(task, family)
    with mlflow.start_run():
        info = log_model(model, name="model", input_example=X.head(3))
    loaded = load_model(info.model_uri)
    np.testing.assert_allclose(predict_scores(loaded, X), predict_scores(model, X))
    mlmodel = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl"))) / "MLmodel"
    text = mlmodel.read_text()
    assert "serialization_format: skops" in text and "cloudpickle" not in text
    assert info.signature is not None
    # logged without MLflow's pyfunc re-load of the example, the example is still there and still serves
    assert (mlmodel.parent / "serving_input_example.json").is_file()
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    served = mlflow.pyfunc.load_model(info.model_uri).predict(X.head(3))
    assert len(np.asarray(served)) == 3


def test_unseen_and_missing_categories_are_scored() -> None:
    model, X = fitted("classification", "hist_gradient_boosting")
    new = X.head(3).assign(c=["never-seen", None, "x"])
    scores = predict_scores(model, new)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))


def test_scores_are_probability_of_the_positive_class_even_for_one_class_training() -> None:
    X, _, _ = data(50)
    only_ones = build_model("baseline", {}, task="classification", numeric=NUM, categorical=CAT, seed=0)
    fit(only_ones, X, np.ones(50, dtype=int))
    assert np.all(predict_scores(only_ones, X) == 1.0)


def test_a_family_that_does_not_fit_the_task_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit task"):
        build_model("logistic", {}, task="regression", numeric=NUM, categorical=CAT, seed=0)
    with pytest.raises(ValueError, match="unknown model family"):
        build_model("xgboost", {}, task="regression", numeric=NUM, categorical=CAT, seed=0)
