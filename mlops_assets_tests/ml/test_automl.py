"""The sweep: budgets, determinism, failures, pruning and the window search, on small real-shaped data."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import mlops_assets.ml.automl as automl
from mlops_assets.ml.automl import BRACKET, SearchSpace, initial_design, run_sweep, window_rows

NUM, CAT = ["a", "b"], ["c"]


def frame(n: int = 6000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.sort(rng.uniform(0, 60, n)), unit="D")
    a, b = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(list("xyz"), n)
    # the relation flips halfway: recent data tells a different story than old data
    late = np.arange(n) > n // 2
    logit = np.where(late, 1.5 * a, -1.5 * a) + (c == "x")
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"t": t, "a": a, "b": b, "c": c, "y": y})


def space(**kw: object) -> SearchSpace:
    d = {
        "trials": 6,
        "seconds": 120,
        "seed": 3,
        "windows": [None, 20],
        "recency_half_lives": [None],
        "families": {
            "baseline": {},
            "logistic": {"C": {"low": 0.01, "high": 10.0, "log": True}},
            "hist_gradient_boosting": {"max_iter": [30], "learning_rate": [0.1]},
        },
    }
    d.update(kw)
    return SearchSpace.from_dict(d)


def sweep(sp: SearchSpace, f: pd.DataFrame | None = None) -> object:
    f = frame() if f is None else f
    train, valid = f.iloc[:5000], f.iloc[5000:]
    return run_sweep(
        train,
        valid,
        target="y",
        time_column="t",
        numeric=NUM,
        categorical=CAT,
        task="classification",
        metric="roc_auc",
        space=sp,
    )


def test_same_data_and_space_give_the_same_leaderboard() -> None:
    a, b = sweep(space()), sweep(space())
    cols = ["trial", "family", "window_days", "roc_auc", "state", "params"]
    pd.testing.assert_frame_equal(a.leaderboard()[cols], b.leaderboard()[cols])  # type: ignore[attr-defined]


def test_the_leaderboard_does_not_depend_on_the_number_of_cores() -> None:
    one, two = sweep(space(trials=8, n_jobs=1)), sweep(space(trials=8, n_jobs=2))
    cols = ["trial", "family", "window_days", "roc_auc", "state", "n_train", "params"]
    pd.testing.assert_frame_equal(one.leaderboard()[cols], two.leaderboard()[cols])  # type: ignore[attr-defined]
    assert (one.workers, two.workers) == (1, 2)  # type: ignore[attr-defined]


def test_trials_run_side_by_side_in_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first two fits meet at a barrier: were they run one after the other, the first would wait alone
    and the barrier would break."""
    threads: list[str] = []
    met: list[bool] = []
    barrier = threading.Barrier(2, timeout=20)
    original = automl._fit_and_score

    def recording(*args: object) -> object:
        threads.append(threading.current_thread().name)
        if len(threads) <= 2:
            try:
                barrier.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                met.append(False)
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(automl, "_fit_and_score", recording)
    result = sweep(space(trials=6, n_jobs=2))
    assert met == [True, True]
    assert len(set(threads)) == 2 and all(n.startswith("trial") for n in threads)
    assert all(t.cpu_seconds <= t.wall_seconds + 0.05 for t in result.trials)  # type: ignore[attr-defined]


def test_the_first_bracket_covers_every_choice() -> None:
    sp = space(
        windows=[None, 20, 40],
        recency_half_lives=[None, 10],
        families={
            "baseline": {},
            "logistic": {"C": {"low": 0.01, "high": 10.0, "log": True}},
            "hist_gradient_boosting": {"max_leaf_nodes": [7, 15, 31], "learning_rate": {"low": 0.01, "high": 0.3}},
        },
    )
    design = initial_design(sp, BRACKET)
    assert design == initial_design(sp, BRACKET)  # seeded
    fams = [d["family"] for d in design]
    assert set(fams) == {"baseline", "logistic", "hist_gradient_boosting"}
    assert fams.count("hist_gradient_boosting") >= 3  # the biggest space gets the most slots
    hgb = [d for d in design if d["family"] == "hist_gradient_boosting"]
    assert {d["hist_gradient_boosting.max_leaf_nodes"] for d in hgb} == {7, 15, 31}
    rates = sorted(d["hist_gradient_boosting.learning_rate"] for d in hgb)  # one per third of the range
    assert [int((r - 0.01) / (0.29 / len(rates))) for r in rates] == list(range(len(rates)))
    assert {d["window_days"] for d in design} == {None, 20, 40}
    assert {d["half_life_days"] for d in design} == {None, 10}


def test_successive_halving_fits_a_third_in_full() -> None:
    result = sweep(space(trials=6, families={"logistic": {"C": {"low": 1e-4, "high": 10.0, "log": True}}}))
    states = [t.state for t in result.trials]  # type: ignore[attr-defined]
    assert states.count("complete") == 2 and states.count("pruned") == 4
    full = max(t.n_train for t in result.trials)  # type: ignore[attr-defined]
    assert all(t.n_train < full for t in result.trials if t.state == "pruned")  # type: ignore[attr-defined]


def test_a_small_space_is_searched_once_per_configuration() -> None:
    result = sweep(space(trials=10, windows=[None], families={"logistic": {"C": [0.1, 1.0]}}))
    assert sorted(t.params["C"] for t in result.trials) == [0.1, 1.0]  # type: ignore[attr-defined]
    assert any("distinct configurations" in n for n in result.notes)  # type: ignore[attr-defined]


def test_the_window_search_finds_that_recent_data_is_better() -> None:
    result = sweep(space(trials=8))
    assert result.best.window_days == 20  # type: ignore[attr-defined]
    assert result.best.score > 0.7  # type: ignore[attr-defined]
    assert len(result.trials) == 8 and result.cpu_seconds > 0  # type: ignore[attr-defined]


def test_failing_trials_are_recorded_and_the_search_goes_on() -> None:
    sp = space(
        families={"logistic": {"C": [1.0]}, "random_forest": {"n_estimators": [5], "max_depth": ["deep"]}},
        trials=6,
    )
    result = sweep(sp)
    states = {t.state for t in result.trials}  # type: ignore[attr-defined]
    assert "failed" in states and result.best.family == "logistic"  # type: ignore[attr-defined]
    failed = [t for t in result.trials if t.state == "failed"]  # type: ignore[attr-defined]
    assert all(t.error and "max_depth" in t.error for t in failed)


def test_all_failing_raises_with_every_reason() -> None:
    with pytest.raises(RuntimeError, match="every trial"):
        sweep(space(families={"random_forest": {"max_depth": ["deep"]}}, trials=2))


def test_poor_configurations_are_pruned_early() -> None:
    sp = space(trials=12, families={"logistic": {"C": {"low": 1e-6, "high": 10.0, "log": True}}})
    result = sweep(sp)
    pruned = [t for t in result.trials if t.state == "pruned"]  # type: ignore[attr-defined]
    assert pruned and all(t.n_train < 5000 for t in pruned)


def test_spec_mistakes_are_named() -> None:
    with pytest.raises(ValueError, match=r"search\.families\.xgb"):
        SearchSpace.from_dict({"families": {"xgb": {}}})
    with pytest.raises(ValueError, match="impossible range"):
        SearchSpace.from_dict({"families": {"logistic": {"C": {"low": 0, "high": 1, "log": True}}}})


def test_window_rows_keeps_the_newest_days() -> None:
    f = frame()
    w = window_rows(f, "t", 10)
    assert pd.to_datetime(w["t"]).min() > pd.to_datetime(f["t"]).max() - pd.Timedelta(days=10)
