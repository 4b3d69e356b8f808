"""Model families as single scikit-learn pipelines, and their safe round trip through MLflow.

Each family is one Pipeline (preprocessing + estimator), so the artifact that is registered, served and
evaluated is exactly the object that was validated: no preprocessing lives outside the model. Models are
saved with skops, never pickle; skops refuses any type not listed as trusted, and the list below is exactly
what our families need (a test logs and loads every family through MLflow to keep it exact).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

FAMILIES = ("baseline", "logistic", "ridge", "random_forest", "hist_gradient_boosting")
ESTIMATOR_STEP = "estimator"

# Exactly the types skops must be told to trust for our families (beyond its own safe defaults): the
# dtype objects the encoders keep, the forests' trees, the boosted trees, and the partial(check_array)
# that HistGradientBoosting's internal categorical preprocessor holds.
SKOPS_TRUSTED_TYPES: list[str] = [
    "functools.partial",
    # the recommenders' one class (ml/ranking/models.py): plain numpy arrays and dicts under a family name
    "mlops_assets.ml.ranking.models.Recommender",
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
    "sklearn.utils.validation.check_array",
]

MAX_HGB_CATEGORIES = 250  # HistGradientBoosting's native categories must fit in its 255 bins


def _ordinal() -> OrdinalEncoder:
    """Categories as codes; unseen or missing become NaN, which the trees send down their learned side."""
    return OrdinalEncoder(
        handle_unknown="use_encoded_value",
        unknown_value=np.nan,
        encoded_missing_value=np.nan,
        max_categories=MAX_HGB_CATEGORIES,
        dtype=np.float64,
    )


def build_model(
    family: str,
    params: Mapping[str, Any],
    *,
    task: str,
    numeric: Sequence[str],
    categorical: Sequence[str],
    seed: int,
) -> Pipeline:
    numeric, categorical = list(numeric), list(categorical)
    params = dict(params)
    classification = task == "classification"
    if family == "baseline":
        est: Any = DummyClassifier(strategy="prior") if classification else DummyRegressor(strategy="mean")
        return Pipeline([(ESTIMATOR_STEP, est)])
    if family in ("logistic", "ridge"):
        if (family == "logistic") != classification:
            raise ValueError(
                f"family {family!r} does not fit task {task!r} (use {'logistic' if classification else 'ridge'})"
            )
        pre = ColumnTransformer(
            [
                (
                    "num",
                    Pipeline(
                        [
                            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                            ("scale", StandardScaler()),
                        ]
                    ),
                    numeric,
                ),
                (
                    "cat",
                    Pipeline(
                        [
                            (
                                "impute",
                                SimpleImputer(strategy="constant", fill_value="missing", keep_empty_features=True),
                            ),
                            ("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20)),
                        ]
                    ),
                    categorical,
                ),
            ]
        )
        est = (
            LogisticRegression(max_iter=2000, random_state=seed, **params)
            if classification
            else Ridge(random_state=seed, **params)
        )
        return Pipeline([("preprocess", pre), (ESTIMATOR_STEP, est)])
    if family == "random_forest":
        pre = ColumnTransformer(
            [
                ("num", SimpleImputer(strategy="median", keep_empty_features=True), numeric),
                (
                    "cat",
                    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1),
                    categorical,
                ),
            ]
        )
        cls = RandomForestClassifier if classification else RandomForestRegressor
        return Pipeline([("preprocess", pre), (ESTIMATOR_STEP, cls(random_state=seed, n_jobs=2, **params))])
    if family == "hist_gradient_boosting":
        pre = ColumnTransformer([("num", "passthrough", numeric), ("cat", _ordinal(), categorical)])
        cat_mask = [False] * len(numeric) + [True] * len(categorical)
        cls = HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
        return Pipeline(
            [
                ("preprocess", pre),
                (ESTIMATOR_STEP, cls(random_state=seed, categorical_features=cat_mask, **params)),
            ]
        )
    raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")


def fit(model: Pipeline, X: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> Pipeline:
    """Fit with optional sample weights routed to the estimator step (recency weighting)."""
    if sample_weight is None:
        return model.fit(X, y)
    return model.fit(X, y, **{f"{ESTIMATOR_STEP}__sample_weight": sample_weight})


def predict_scores(model: Any, X: pd.DataFrame) -> np.ndarray:
    """P(class 1) for a classifier, the prediction for a regressor: what every metric here scores."""
    if hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(X))
        classes = list(getattr(model, "classes_", [0, 1]))
        if 1 in classes:
            return proba[:, classes.index(1)]
        return np.zeros(len(X))  # trained on negatives only: P(1) is 0
    return np.asarray(model.predict(X), dtype=float)


@lru_cache(maxsize=1)
def pip_requirements() -> list[str]:
    """The exact versions the model needs, read from this environment: MLflow would otherwise infer them by
    importing the model in a subprocess, several seconds per logged model."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("scikit-learn", "numpy", "pandas", "scipy", "skops", "mlflow")]


class _SklearnWithoutServingCheck:
    """`mlflow.sklearn` as the flavor `Model.log` saves with, taking the `validate_serving_input` switch that
    `Model.log` reads from its keyword arguments but also hands to the flavor's `save_model`, which does not
    accept it. The check it turns off loads the model back through pyfunc and predicts the example: a third
    deserialization per logged model (the save already round-trips it through skops), ~0.2 s for a boosted
    model, and every serving path here loads through `load_model` and its own proof instead. The artifact is
    exactly `mlflow.sklearn`'s: the flavors in its MLmodel file are written by `mlflow.sklearn.save_model`."""

    @staticmethod
    def save_model(*, validate_serving_input: bool = True, **kwargs: Any) -> Any:
        import mlflow

        return mlflow.sklearn.save_model(**kwargs)


def log_model(
    model: Pipeline, *, name: str, input_example: pd.DataFrame, registered_model_name: str | None = None
) -> Any:
    """Log to the active MLflow run with skops, the trusted-type list, a signature and an input example."""
    from mlflow.models import Model, infer_signature

    signature = infer_signature(input_example, predict_scores(model, input_example))
    return Model.log(
        artifact_path=None,
        name=name,
        flavor=_SklearnWithoutServingCheck,
        sk_model=model,
        serialization_format="skops",
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        signature=signature,
        input_example=input_example,
        registered_model_name=registered_model_name,
        pip_requirements=pip_requirements(),
        validate_serving_input=False,
    )


class UnsafeModelError(ValueError):
    """A model artifact this project will not deserialize: not skops, or skops naming a type outside
    `SKOPS_TRUSTED_TYPES`. The message names the rule, never a local path."""


def load_model(uri: str) -> Any:
    """Load a model logged by `log_model`: through skops with *our* trusted-type list, whatever the MLmodel
    file says. MLflow's own loader takes the list (and the format: pickle, cloudpickle) from the artifact,
    so a crafted artifact could whitelist anything; here the MLmodel file only says where the skops file is.
    `uri` is a local model directory or any URI MLflow can download."""
    from pathlib import Path

    local = Path(uri)
    if local.is_dir():
        return _load_skops_dir(local)
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="mlops-model-") as target:
        return _load_skops_dir(Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=target)))


def _load_skops_dir(local: Any) -> Any:
    import skops.io
    import yaml

    try:
        mlmodel = yaml.safe_load((local / "MLmodel").read_text())
        flavor = mlmodel["flavors"]["sklearn"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise UnsafeModelError(f"not an MLflow scikit-learn model (MLmodel unreadable: {type(exc).__name__})") from exc
    fmt = flavor.get("serialization_format")
    if fmt != "skops":
        raise UnsafeModelError(f"serialization format {fmt!r} refused: only skops is loaded, never pickle")
    name = str(flavor.get("pickled_model", ""))
    path = (local / name).resolve()
    if not name or local.resolve() not in path.parents or not path.is_file():
        raise UnsafeModelError("the MLmodel file names no skops file inside the model directory")
    untrusted = sorted(set(skops.io.get_untrusted_types(file=path)) - set(SKOPS_TRUSTED_TYPES))
    if untrusted:
        raise UnsafeModelError(f"the skops file holds types outside the trusted list: {', '.join(untrusted[:10])}")
    return skops.io.load(path, trusted=SKOPS_TRUSTED_TYPES)
