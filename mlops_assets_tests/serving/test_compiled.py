"""The compiled scorer against scikit-learn, for every family the sweep can pick, on a hold-out it never saw.

The data has what breaks naive compilers: missing numeric values, missing categories, a category too rare
for the one-hot encoder (grouped as infrequent), categories seen only in the hold-out (unknown), integers
that thresholds fall right next to, and deep trees (forests grown to purity take the level-by-level walk;
boosted trees of at most 64 leaves the leaf-mask one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import yaml

from mlops_assets.ml.models import SKOPS_TRUSTED_TYPES, UnsafeModelError, build_model, load_model, predict_scores
from mlops_assets.serving.compiled import (
    SCORER_TAG,
    TOLERANCE,
    Columns,
    compile_model,
    prove,
    registration_tags,
)

NUM = ["a", "b", "n"]
CAT = ["k", "m"]
FAMILIES = {
    "classification": ["baseline", "logistic", "random_forest", "hist_gradient_boosting"],
    "regression": ["baseline", "ridge", "random_forest", "hist_gradient_boosting"],
}
PARAMS: dict[str, dict[str, Any]] = {
    "random_forest": {"n_estimators": 15},  # grown to purity: hundreds of leaves per tree
    "hist_gradient_boosting": {"max_iter": 25, "max_leaf_nodes": 63, "learning_rate": 0.3},
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """scikit-learn's OpenMP threads spin against each other on a shared 2-core machine (a 30 s fit)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _data(n: int, seed: int, *, unseen: bool) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    kinds = [*"abcdefgh", "rare"]
    p = np.array([0.124] * 8 + [0.008])
    k = rng.choice(kinds, p=p / p.sum(), size=n).astype(object)
    if unseen:
        k[rng.random(n) < 0.05] = "never-seen"
    k[rng.random(n) < 0.05] = None
    m = rng.choice(["x", "y", "z"], size=n).astype(object)
    m[rng.random(n) < 0.1] = None
    X = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
            "n": rng.integers(0, 40, size=n).astype(float),  # integers: thresholds sit at x.5
            "k": k,
            "m": m,
        }
    )
    signal = X["a"] + np.nan_to_num(X["b"]) + (X["k"] == "c") * 1.2 - (X["m"] == "y") * 0.7 + X["n"] / 20
    y_cls = (signal + rng.normal(size=n) > 0.8).astype(int).to_numpy()
    y_reg = (signal * 3 + rng.normal(size=n)).to_numpy()
    return X, y_cls, y_reg


@pytest.fixture(scope="module")
def splits() -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame]:
    X, y_cls, y_reg = _data(2000, 0, unseen=False)
    holdout, _, _ = _data(800, 1, unseen=True)
    return X, y_cls, y_reg, holdout


@pytest.mark.parametrize(("task", "family"), [(t, f) for t, fs in FAMILIES.items() for f in fs])
def test_compiled_scores_equal_sklearn_on_the_holdout(
    splits: tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame], task: str, family: str
) -> None:
    X, y_cls, y_reg, holdout = splits
    model = build_model(family, PARAMS.get(family, {}), task=task, numeric=NUM, categorical=CAT, seed=0)
    model.fit(X, y_cls if task == "classification" else y_reg)
    proof = prove(model, holdout, NUM, CAT)
    assert proof.ok, proof.reason
    assert proof.max_abs_diff is not None and proof.max_abs_diff <= TOLERANCE
    assert proof.rows > len(holdout)  # the hold-out plus the probe rows
    # the scorer itself, on the hold-out alone, row by row as requests arrive and all at once
    assert proof.compiled is not None
    expected = predict_scores(model, holdout)
    cols = Columns.from_frame(holdout, NUM, CAT)
    np.testing.assert_allclose(proof.compiled.score(cols), expected, rtol=0, atol=TOLERANCE)
    one = Columns.from_frame(holdout.iloc[[7]], NUM, CAT)
    assert abs(proof.compiled.score(one)[0] - expected[7]) <= TOLERANCE
    if family == "random_forest":
        assert proof.compiled.forest is not None and proof.compiled.forest.mask is None  # the walk
    if family == "hist_gradient_boosting":
        assert proof.compiled.forest is not None and proof.compiled.forest.mask is not None  # the masks
    tags = registration_tags(model, holdout, NUM, CAT)
    assert tags[SCORER_TAG] == "compiled"


def test_an_unknown_family_is_served_plain_with_the_reason(
    splits: tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame],
) -> None:
    from sklearn.ensemble import ExtraTreesClassifier

    X, y_cls, _, holdout = splits
    model = build_model("random_forest", {}, task="classification", numeric=NUM, categorical=CAT, seed=0)
    model.steps[-1] = ("estimator", ExtraTreesClassifier(n_estimators=5, random_state=0))
    model.fit(X, y_cls)
    proof = prove(model, holdout, NUM, CAT)
    assert not proof.ok and "no compiled path for ExtraTreesClassifier" in proof.reason
    tags = proof.tags()
    assert tags[SCORER_TAG] == "plain" and "ExtraTreesClassifier" in tags["mlops.scorer_reason"]


def test_a_scorer_that_disagrees_is_not_proven(
    splits: tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame],
) -> None:
    """The proof is what protects the service, not the compiler's care: a scorer built from one model must
    fail the proof against another (here: the same family refitted on other labels)."""
    X, y_cls, _, holdout = splits
    fit = build_model("logistic", {}, task="classification", numeric=NUM, categorical=CAT, seed=0).fit(X, y_cls)
    other = build_model("logistic", {}, task="classification", numeric=NUM, categorical=CAT, seed=0).fit(X, 1 - y_cls)
    compiled = compile_model(fit, NUM, CAT)
    got = compiled.score(Columns.from_frame(holdout, NUM, CAT))
    assert np.max(np.abs(got - predict_scores(other, holdout))) > TOLERANCE


def _model_dir(tmp_path: Path, fmt: str, payload: bytes, trusted: list[str]) -> Path:
    d = tmp_path / "model"
    d.mkdir(parents=True)
    (d / "model.skops").write_bytes(payload)
    mlmodel = {"flavors": {"sklearn": {"pickled_model": "model.skops", "serialization_format": fmt}}}
    mlmodel["flavors"]["sklearn"]["skops_trusted_types"] = trusted  # what a crafted artifact would say
    (d / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return d


def test_only_skops_with_our_trusted_list_is_loaded(
    splits: tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame], tmp_path: Path
) -> None:
    from sklearn.preprocessing import FunctionTransformer

    X, y_cls, _, _ = splits
    good = build_model("logistic", {}, task="classification", numeric=NUM, categorical=CAT, seed=0).fit(X, y_cls)
    loaded = load_model(str(_model_dir(tmp_path / "ok", "skops", sio.dumps(good), [])))
    np.testing.assert_allclose(predict_scores(loaded, X.head(20)), predict_scores(good, X.head(20)))

    with pytest.raises(UnsafeModelError, match=r"cloudpickle.*refused"):
        load_model(str(_model_dir(tmp_path / "pickle", "cloudpickle", b"\x80\x04N.", [])))

    # A type outside our list, which the artifact's own MLmodel file claims to trust: refused anyway.
    hostile = FunctionTransformer(func=print)
    untrusted = set(sio.get_untrusted_types(data=sio.dumps(hostile))) - set(SKOPS_TRUSTED_TYPES)
    assert untrusted
    d = _model_dir(tmp_path / "hostile", "skops", sio.dumps(hostile), sorted(untrusted))
    with pytest.raises(UnsafeModelError, match="outside the trusted list") as err:
        load_model(str(d))
    assert str(tmp_path) not in str(err.value)
