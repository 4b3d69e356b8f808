"""The drift engine on small real arrays: exactness against scipy, Evidently's test choice, edge cases.

The cross-check against Evidently itself lives in test_evidently_reports.py (it pays Evidently's import)."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats
from scipy.spatial import distance

from mlops_assets.ml.drift import (
    ColumnDrift,
    DriftResult,
    ReferenceProfile,
    _sketch_numeric,
    _wasserstein,
    compute_drift,
)


def _frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(shift, 1.0, n),
            "k": rng.integers(0, 3, n),
            "c": rng.choice(["a", "b", "c"], n),
        }
    )


def _by_column(result: DriftResult) -> dict[str, ColumnDrift]:
    return {c.column: c for c in result.columns}


# --- the statistics themselves ----------------------------------------------------------------------------


def test_wasserstein_is_exact_for_an_exact_reference() -> None:
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 300, 5000).astype(float)
    cur = rng.normal(150, 80, 3000)  # values between and beyond the reference's atoms
    sk = _sketch_numeric(ref, 2000)
    assert sk.exact
    ours = _wasserstein(sk.values, sk.counts, np.sort(cur))
    assert ours == pytest.approx(stats.wasserstein_distance(ref, cur), rel=1e-10)


def test_sketch_wasserstein_stays_within_its_stored_bound() -> None:
    rng = np.random.default_rng(1)
    ref = rng.lognormal(0, 1, 200_000)
    cur = rng.lognormal(0.05, 1.1, 50_000)
    sk = _sketch_numeric(ref, 2000)
    assert not sk.exact and len(sk.values) == 2000
    exact = stats.wasserstein_distance(ref, cur) / np.std(ref)
    ours = _wasserstein(sk.values, sk.counts, np.sort(cur)) / sk.std
    assert abs(ours - exact) <= sk.sketch_error + 1e-12
    assert sk.sketch_error < 0.005  # far below the 0.1 threshold


@pytest.mark.parametrize("n_cur", [400, 30_000])  # scipy's exact method, then its asymptotic one
def test_ks_pvalue_matches_scipy_for_small_references(n_cur: int) -> None:
    rng = np.random.default_rng(2)
    ref = pd.DataFrame({"x": np.round(rng.normal(0, 1, 800), 2)})  # ties on purpose
    cur = pd.DataFrame({"x": np.round(rng.normal(0.1, 1, n_cur), 2)})
    col = compute_drift(ref, cur).columns[0]
    assert col.stattest == "ks"
    expected = stats.ks_2samp(ref["x"], cur["x"]).pvalue
    assert col.statistic == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert col.drifted == (expected <= 0.05)


def test_jensenshannon_matches_scipy_on_category_shares() -> None:
    ref = pd.DataFrame({"c": ["a"] * 3000 + ["b"] * 2000})
    cur = pd.DataFrame({"c": ["a"] * 100 + ["b"] * 300 + ["new"] * 100})
    col = compute_drift(ref, cur).columns[0]
    expected = distance.jensenshannon([0.6, 0.4, 0.0], [0.2, 0.6, 0.2])
    assert col.stattest == "jensenshannon"
    assert col.statistic == pytest.approx(expected, rel=1e-12)
    assert col.drifted


# --- Evidently's test choice --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_ref", "values", "kind", "expected"),
    [
        (500, 10, "numeric", "ks"),
        (500, 4, "numeric", "chisquare"),
        (500, 2, "numeric", "z"),
        (1000, 10, "numeric", "ks"),  # <= 1000 rows is still "small"
        (1001, 10, "numeric", "wasserstein"),
        (5000, 5, "numeric", "jensenshannon"),
        (5000, 6, "numeric", "wasserstein"),
        (500, 3, "categorical", "chisquare"),
        (500, 2, "categorical", "z"),
        (5000, 2, "categorical", "jensenshannon"),
    ],
)
def test_test_choice_follows_evidently(n_ref: int, values: int, kind: str, expected: str) -> None:
    rng = np.random.default_rng(3)
    ref_vals = np.arange(n_ref) % values
    cur_vals = rng.integers(0, values, 300)
    if kind == "categorical":
        ref = pd.DataFrame({"v": [f"v{i}" for i in ref_vals]})
        cur = pd.DataFrame({"v": [f"v{i}" for i in cur_vals]})
    else:
        ref, cur = pd.DataFrame({"v": ref_vals.astype(float)}), pd.DataFrame({"v": cur_vals.astype(float)})
    col = compute_drift(ref, cur).columns[0]
    assert (col.kind, col.stattest) == (kind, expected)
    assert col.threshold == (0.05 if expected in ("ks", "chisquare", "z") else 0.1)


def test_n_values_counts_both_sides() -> None:
    """5 values in the reference and a 6th only in the current: 6 distinct values, so Wasserstein."""
    ref = pd.DataFrame({"v": (np.arange(5000) % 5).astype(float)})
    cur = pd.DataFrame({"v": np.r_[np.arange(100) % 5, [7.0]]})
    assert compute_drift(ref, cur).columns[0].stattest == "wasserstein"
    cur_same = pd.DataFrame({"v": (np.arange(100) % 5).astype(float)})
    assert compute_drift(ref, cur_same).columns[0].stattest == "jensenshannon"


# --- edge cases --------------------------------------------------------------------------------------------


def test_nan_and_inf_are_dropped_like_evidently() -> None:
    ref, cur = _frame(1500, 4), _frame(800, 5, shift=0.2)  # 1500 distinct values: an exact profile
    dirty = cur.copy()
    dirty.loc[::7, "x"] = np.nan
    dirty.loc[::11, "x"] = np.inf
    dirty.loc[::5, "c"] = None
    clean_x = dirty["x"].replace([np.inf, -np.inf], np.nan).dropna()
    got = _by_column(compute_drift(ref, dirty, categorical=["c"]))
    expected_w = stats.wasserstein_distance(ref["x"], clean_x) / np.std(ref["x"])
    assert got["x"].statistic == pytest.approx(expected_w)
    shares = dirty["c"].dropna().value_counts(normalize=True)
    ref_shares = ref["c"].value_counts(normalize=True)
    keys = sorted(set(shares.index) | set(ref_shares.index))
    expected_js = distance.jensenshannon(ref_shares.reindex(keys, fill_value=0), shares.reindex(keys, fill_value=0))
    assert got["c"].statistic == pytest.approx(expected_js)


def test_constant_column_does_not_drift_and_a_changed_constant_does() -> None:
    ref = pd.DataFrame({"one": np.ones(2000)})
    same = compute_drift(ref, pd.DataFrame({"one": np.ones(50)})).columns[0]
    assert (same.stattest, same.statistic, same.drifted) == ("jensenshannon", 0.0, False)
    moved = compute_drift(ref, pd.DataFrame({"one": np.full(50, 2.0)})).columns[0]
    assert moved.drifted and moved.statistic == pytest.approx(np.sqrt(np.log(2)))


def test_unseen_category_in_a_small_reference_gives_chisquare_p_zero() -> None:
    ref = pd.DataFrame({"c": ["a", "b", "c"] * 100})
    cur = pd.DataFrame({"c": ["a", "b", "c", "zzz"] * 20})
    col = compute_drift(ref, cur).columns[0]
    assert col.stattest == "chisquare" and col.statistic == 0.0 and col.drifted


def test_impossible_inputs_raise_naming_the_column() -> None:
    ref = _frame(2000, 6)
    with pytest.raises(ValueError, match="no rows"):
        compute_drift(ref, ref.iloc[:0])
    nulls = ref.iloc[:100].assign(x=np.nan)
    with pytest.raises(ValueError, match=r"'x'.*current"):
        compute_drift(ref, nulls)
    with pytest.raises(ValueError, match=r"'x'.*reference"):
        ReferenceProfile.from_frame(ref.assign(x=np.nan), numeric=["x"], categorical=[])
    with pytest.raises(ValueError, match=r"'c'.*current"):
        compute_drift(ref, ref.iloc[:100].assign(c=None), categorical=["c"])
    with pytest.raises(ValueError, match=r"'c'.*numbers"):
        ReferenceProfile.from_frame(ref, numeric=["c"], categorical=[])
    with pytest.raises(ValueError, match=r"missing columns \['k'\]"):
        compute_drift(ref, ref.drop(columns="k"))


def test_dtypes_choose_the_kind_when_categorical_is_not_given() -> None:
    ref = _frame(2000, 7).assign(flag=lambda d: d["k"] > 0, cat=lambda d: d["c"].astype("category"))
    kinds = {c.column: c.kind for c in compute_drift(ref, ref.iloc[:300]).columns}
    assert kinds == {
        "x": "numeric",
        "k": "numeric",
        "c": "categorical",
        "flag": "categorical",
        "cat": "categorical",
    }


# --- profile and result plumbing ----------------------------------------------------------------------------


def test_profile_round_trips_through_json_and_stays_small() -> None:
    big, small = _frame(200_000, 8), _frame(20_000, 9)
    profile = ReferenceProfile.from_frame(big, numeric=["x", "k"], categorical=["c"])
    restored = ReferenceProfile.from_json(profile.to_json())
    cur = _frame(5000, 10, shift=0.3)
    assert restored.compare(cur).to_dict() == profile.compare(cur).to_dict()
    size_small = len(ReferenceProfile.from_frame(small, numeric=["x", "k"], categorical=["c"]).to_json())
    assert len(profile.to_json()) < 1.2 * size_small  # bounded by the sketch, not by the rows


def test_pyarrow_and_duckdb_inputs_give_the_same_result() -> None:
    ref, cur = _frame(3000, 11), _frame(900, 12, shift=0.15)
    profile = ReferenceProfile.from_frame(ref, numeric=["x", "k"], categorical=["c"])
    expected = profile.compare(cur).to_dict()
    assert profile.compare(pa.Table.from_pandas(cur)).to_dict() == expected
    con = duckdb.connect()
    con.register("cur", cur)
    assert profile.compare(con.sql("SELECT * FROM cur")).to_dict() == expected


def test_result_share_decision_and_serialisation() -> None:
    ref = _frame(3000, 13)
    cur = _frame(1000, 14, shift=1.0).assign(c=lambda d: d["c"].replace("a", "new"))
    res = compute_drift(ref, cur, categorical=["c"], drift_share=2 / 3)
    assert res.drifted_columns() == ["x", "c"]
    assert res.drift_share == pytest.approx(2 / 3) and res.drift_detected  # >=, as Evidently
    assert not compute_drift(ref, cur, categorical=["c"], drift_share=0.7).drift_detected
    assert (res.n_reference, res.n_current) == (3000, 1000)
    frame = res.to_frame()
    assert list(frame.columns) == ["column", "kind", "stattest", "statistic", "threshold", "drifted"]
    assert frame["drifted"].tolist() == [True, False, True]
    payload = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert payload["drifted_columns"] == ["x", "c"]


def test_compare_subset_and_unknown_columns() -> None:
    profile = ReferenceProfile.from_frame(_frame(2000, 15), numeric=["x", "k"], categorical=["c"])
    assert [c.column for c in profile.compare(_frame(300, 16), columns=["c"]).columns] == ["c"]
    with pytest.raises(ValueError, match="not in the reference profile"):
        profile.compare(_frame(300, 16), columns=["nope"])


def test_wasserstein_does_not_assume_sorted_atoms() -> None:
    """Regression (replay of 2013-11-11): slice means that come out of order by a last-bit difference made
    the merge put two atoms on one index and the day's drift report crash."""
    from scipy.stats import wasserstein_distance

    from mlops_assets.ml.drift import _wasserstein

    rng = np.random.default_rng(0)
    atoms = np.array([1.0, 2.0, 2.0 + 1e-15, 2.0, 3.0, 5.0])
    counts = np.array([3, 2, 2, 1, 4, 1])
    cur = np.sort(rng.normal(2.5, 1.0, 500))
    expected = wasserstein_distance(cur, atoms, v_weights=counts)
    assert _wasserstein(atoms, counts, cur) == pytest.approx(expected, rel=1e-9)


# --- the fast paths: one pass over column buffers, Arrow input, threads ----------------------------------------


def test_wasserstein_quantile_form_matches_scipy_on_random_small_samples() -> None:
    """Many atoms per current value and many values per atom, ties on both sides, shares cut by boundaries:
    the exact integer grid of the quantile form must give scipy's distance every time."""
    rng = np.random.default_rng(20)
    for _ in range(300):
        k, n = int(rng.integers(1, 40)), int(rng.integers(1, 50))
        atoms = np.round(rng.normal(0, 1, k), int(rng.integers(0, 3)))
        counts = rng.integers(1, 15, k)
        cur = np.sort(np.round(rng.normal(0.3, 1.3, n), int(rng.integers(0, 3))))
        expected = stats.wasserstein_distance(cur, atoms, v_weights=counts)
        assert _wasserstein(atoms, counts, cur) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_sketch_error_is_the_exact_mean_distance_to_the_slice_means() -> None:
    rng = np.random.default_rng(21)
    x = np.concatenate([rng.lognormal(0, 1.2, 90_000), np.full(10_000, 3.0)])  # a long run of one value
    sk = _sketch_numeric(x.copy(), 500, owned=True)
    xs = np.sort(x)
    direct = np.abs(xs - np.repeat(sk.values, sk.counts)).sum() / len(xs) / np.std(xs)
    assert sk.sketch_error == pytest.approx(direct, rel=1e-9)


def test_arrow_input_with_nulls_chunks_and_dictionaries_matches_pandas() -> None:
    """The same data as a chunked Arrow table (nulls in numbers, dictionary-encoded strings, booleans with
    nulls) and as pandas gives the same statistics, so the buffers read from either agree."""
    rng = np.random.default_rng(22)
    n = 6000
    x = rng.normal(0, 1, n)
    x[::13] = np.nan
    ints = rng.poisson(4, n).astype(float)
    ints[::17] = np.nan
    cats = rng.choice(np.array(["a", "b", "c", "d"], dtype=object), n)
    cats[::19] = None
    frame = pd.DataFrame({"x": x, "i": ints, "c": cats, "b": rng.random(n) < 0.3})
    ref_frame = (
        _frame(5000, 23)
        .rename(columns={"k": "i"})
        .assign(i=lambda d: rng.poisson(4, len(d)).astype(float), b=lambda d: rng.random(len(d)) < 0.35)
    )
    profile = ReferenceProfile.from_frame(ref_frame, numeric=["x", "i"], categorical=["c", "b"])
    table = pa.Table.from_pandas(frame, preserve_index=False)
    arrow_ints = pa.array(frame["i"].to_numpy(), from_pandas=True).cast(pa.int64())
    table = table.set_column(1, "i", arrow_ints)
    table = table.set_column(2, "c", pa.array(cats, from_pandas=True).dictionary_encode())
    chunked = pa.concat_tables([table.slice(0, 2500), table.slice(2500)])
    assert chunked.column("x").num_chunks == 2
    expected = profile.compare(frame).to_dict()
    assert profile.compare(chunked).to_dict() == expected
    assert profile.compare(frame.astype({"c": "string[pyarrow]"})).to_dict() == expected
    assert profile.compare(frame.astype({"c": "category"})).to_dict() == expected


def test_profile_from_arrow_equals_profile_from_pandas() -> None:
    ref = _frame(30_000, 24)  # 30k distinct floats: a sketched profile
    from_pandas = ReferenceProfile.from_frame(ref, numeric=["x", "k"], categorical=["c"])
    from_arrow = ReferenceProfile.from_frame(pa.Table.from_pandas(ref), numeric=["x", "k"], categorical=["c"])
    assert from_arrow.to_json() == from_pandas.to_json()


def test_threads_give_the_same_result_as_one_thread() -> None:
    ref, cur = _frame(40_000, 25), _frame(30_000, 26, shift=0.05)
    one = ReferenceProfile.from_frame(ref, numeric=["x", "k"], categorical=["c"], workers=1)
    two = ReferenceProfile.from_frame(ref, numeric=["x", "k"], categorical=["c"], workers=2)
    assert one.to_json() == two.to_json()
    assert one.compare(cur, workers=1).to_dict() == two.compare(cur, workers=2).to_dict()


def test_current_buffers_are_not_modified() -> None:
    """Sorting happens in place only on private copies: the caller's frame and Arrow buffers stay as given."""
    ref, cur = _frame(3000, 27), _frame(2000, 28)
    before = cur["x"].to_numpy().copy()
    profile = ReferenceProfile.from_frame(ref, numeric=["x", "k"], categorical=["c"])
    profile.compare(cur)
    profile.compare(pa.Table.from_pandas(cur))
    assert np.array_equal(cur["x"].to_numpy(), before)


@pytest.mark.parametrize("as_arrow", [False, True])
def test_small_reference_tests_match_scipy_through_both_input_paths(as_arrow: bool) -> None:
    """K-S and chi-square on random data, with counts taken by the new paths (integer bincount, Arrow hash,
    Arrow numbers with nulls): the same p-values as scipy on the raw values."""
    rng = np.random.default_rng(29)
    for trial in range(5):
        ref = pd.DataFrame({"x": np.round(rng.normal(0, 1, 700), 1), "k": rng.integers(0, 6, 700)})
        cur = pd.DataFrame({"x": np.round(rng.normal(0.1 * trial, 1, 900), 1), "k": rng.integers(0, 6, 900)})
        cur.loc[::9, "x"] = np.nan
        profile = ReferenceProfile.from_frame(ref, numeric=["x"], categorical=["k"])
        res = _by_column(profile.compare(pa.Table.from_pandas(cur) if as_arrow else cur))
        assert res["x"].stattest == "ks"
        assert res["x"].statistic == pytest.approx(stats.ks_2samp(ref["x"], cur["x"].dropna()).pvalue, rel=1e-9)
        f_obs = cur["k"].value_counts().sort_index().to_numpy(dtype=float)
        f_exp = ref["k"].value_counts().sort_index().to_numpy(dtype=float) * len(cur) / len(ref)
        assert res["k"].stattest == "chisquare"
        assert res["k"].statistic == pytest.approx(stats.chisquare(f_obs, f_exp).pvalue, rel=1e-9)
