"""Data drift over every row of a day, with the same per-column decisions as Evidently's DataDriftPreset.

Why our own engine: Evidently recomputes the reference side (and renders histograms, correlations and
plots) on every run, which costs about a minute and a gigabyte at a million rows. The champion's training
data does not change between days, so we summarise it once into a `ReferenceProfile` (stored next to the
champion) and each day only pays one sort of that day's values per column.

Test choice and thresholds copy Evidently 0.7.23 (`evidently.legacy.calculations.stattests.registry.
_get_default_stattest` and each stattest's `default_threshold`), so a user who switches gets the same
answers:

==============  ===============================  ===============================================
reference rows  numeric column                   categorical column
==============  ===============================  ===============================================
<= 1000         n_values <= 2: Z-test p < 0.05   n_values <= 2: Z-test p < 0.05
                n_values 3..5: chi-square p<0.05 otherwise chi-square p < 0.05
                otherwise: K-S p <= 0.05
> 1000          n_values <= 5: Jensen-Shannon    Jensen-Shannon distance >= 0.1
                distance >= 0.1; otherwise
                Wasserstein / std(ref) >= 0.1
==============  ===============================  ===============================================

`n_values` is the number of distinct values over reference and current together. Like Evidently, NaN
and +/-inf are dropped from both sides before anything is counted, and a column left empty on either side
is an error rather than a silent "no drift". (Evidently 0.7.23 is not consistent here: its per-column
ValueDrift always drops +/-inf, but DriftedColumnsCount drops them only from a column that also holds a
NaN, so a column with inf and no NaN gets a NaN statistic and counts as not drifted in its share. We follow
ValueDrift everywhere, so our share can be higher than Evidently's in exactly that case.)

The sketch: a numeric column keeps its exact value counts while it has at most `MAX_ATOMS` distinct
values (always the case when the reference has <= 1000 rows, so K-S, chi-square and the Z-test are exact).
Above that it keeps `MAX_ATOMS` equal-mass slices of the sorted reference, each as (mean, count). The
Wasserstein distance from the current data to that sketch differs from the exact one by at most the
distance from the reference to its own sketch (triangle inequality); that bound is computed once and
stored (`sketch_error`, already divided by the reference's std), so a decision can only differ from
Evidently's when the statistic lies within that bound of the threshold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

MAX_ATOMS = 2000
SMALL_REFERENCE_ROWS = 1000  # Evidently: reference_data.shape[0] <= 1000 picks the "small sample" tests
KS_EXACT_MAX_N = 10000  # scipy.stats.ks_2samp(method="auto") is exact up to this sample size
PROFILE_VERSION = 1

# Evidently's default thresholds, and whether the statistic is a p-value (drift when small).
THRESHOLDS: dict[str, float] = {
    "ks": 0.05,
    "chisquare": 0.05,
    "z": 0.05,
    "wasserstein": 0.1,
    "jensenshannon": 0.1,
}
P_VALUE_TESTS = frozenset({"ks", "chisquare", "z"})


@dataclass(frozen=True)
class ColumnDrift:
    """One column's test: which test (Evidently's choice), its statistic, and the decision."""

    column: str
    kind: str
    stattest: str
    statistic: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    """All columns of one comparison; `drift_detected` follows Evidently's DriftedColumnsCount test."""

    columns: list[ColumnDrift]
    drift_share: float
    drift_detected: bool
    n_reference: int
    n_current: int

    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_frame(self) -> pd.DataFrame:
        """One row per column; the drift history table and the UI's markdown table are built from it."""
        cols = ["column", "kind", "stattest", "statistic", "threshold", "drifted"]
        return pd.DataFrame([asdict(c) for c in self.columns], columns=cols)

    def to_dict(self) -> dict[str, Any]:
        """Strictly JSON-serialisable (NaN becomes None), since it ends up in metadata and files."""
        return {
            "drift_share": float(self.drift_share),
            "drift_detected": bool(self.drift_detected),
            "n_reference": int(self.n_reference),
            "n_current": int(self.n_current),
            "drifted_columns": self.drifted_columns(),
            "columns": [
                {**asdict(c), "statistic": _finite_or_none(c.statistic), "drifted": bool(c.drifted)}
                for c in self.columns
            ],
        }


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------------------
# per-column summaries
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _NumericSketch:
    """A numeric reference column. `values`/`counts` are exact value counts when `exact`, else the
    means and sizes of equal-mass slices of the sorted reference."""

    n: int
    std: float
    exact: bool
    values: np.ndarray
    counts: np.ndarray
    sketch_error: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "numeric",
            "n": self.n,
            "std": self.std,
            "exact": self.exact,
            "values": self.values.tolist(),
            "counts": self.counts.tolist(),
            "sketch_error": self.sketch_error,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _NumericSketch:
        return cls(
            n=int(d["n"]),
            std=float(d["std"]),
            exact=bool(d["exact"]),
            values=np.asarray(d["values"], dtype=np.float64),
            counts=np.asarray(d["counts"], dtype=np.int64),
            sketch_error=float(d.get("sketch_error", 0.0)),
        )


@dataclass(frozen=True)
class _CategoricalCounts:
    """A categorical reference column: exact counts per category (NaN excluded)."""

    n: int
    counts: dict[Any, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "categorical", "n": self.n, "counts": [[k, v] for k, v in self.counts.items()]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _CategoricalCounts:
        return cls(n=int(d["n"]), counts={k: int(v) for k, v in d["counts"]})


def _numeric_values(s: pd.Series, column: str, side: str) -> np.ndarray:
    """Finite float64 values of a column, as Evidently keeps them (inf counts as missing)."""
    if not (pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)):
        raise ValueError(f"column {column!r} in {side} should hold numbers only (dtype {s.dtype})")
    x = s.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(x)
    return x if finite.all() else x[finite]


def _native(v: Any) -> Any:
    """Category keys as plain JSON values, so a profile read back from disk matches the live data."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str | bool | int | float):
        return v
    return str(v)


def _category_counts(s: pd.Series) -> tuple[dict[Any, int], int]:
    """Counts per non-missing category and their total; categorical dtypes count by code (fast path)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy()
        counts_arr = np.bincount(codes[codes >= 0], minlength=len(s.cat.categories))
        raw = zip(s.cat.categories, counts_arr.tolist(), strict=True)
    else:
        vc = s.value_counts(dropna=True, sort=False)
        raw = zip(vc.index, vc.to_numpy().tolist(), strict=True)
    out: dict[Any, int] = {}
    for k, c in raw:
        if c == 0 or (isinstance(k, float) and not math.isfinite(k)):
            continue  # Evidently drops +/-inf together with NaN
        key = _native(k)
        out[key] = out.get(key, 0) + int(c)
    return out, sum(out.values())


def _sketch_numeric(x: np.ndarray, max_atoms: int) -> _NumericSketch:
    xs = np.sort(x)
    n = len(xs)
    std = float(np.std(xs))
    change = np.flatnonzero(xs[1:] != xs[:-1]) + 1
    if len(change) + 1 <= max_atoms:
        starts = np.concatenate([[0], change])
        counts = np.diff(np.concatenate([starts, [n]]))
        return _NumericSketch(n=n, std=std, exact=True, values=xs[starts], counts=counts.astype(np.int64))
    bounds = np.unique((np.arange(max_atoms) * n) // max_atoms)
    counts = np.diff(np.concatenate([bounds, [n]]))
    means = np.add.reduceat(xs, bounds) / counts
    # W1(reference, its sketch): each value moves to its slice's mean; an upper bound on the sketch's error
    err = float(np.abs(xs - np.repeat(means, counts)).sum() / n)
    return _NumericSketch(
        n=n,
        std=std,
        exact=False,
        values=means,
        counts=counts.astype(np.int64),
        sketch_error=err / max(std, 0.001),
    )


# --------------------------------------------------------------------------------------------------------
# the tests, on (reference summary, current values)
# --------------------------------------------------------------------------------------------------------


def _wasserstein(ref_values: np.ndarray, ref_counts: np.ndarray, cur_sorted: np.ndarray) -> float:
    """First Wasserstein distance between weighted reference atoms and the current sample.

    Integrates |F_ref - F_cur| over the merged breakpoints. The merge is a stable sort of the concatenation
    (current first, so at a tie the current value comes before the atom, as `searchsorted(side="right")`
    would place it); it must not assume the atoms are strictly increasing: slice means of a long run of
    equal values can differ in the last bit and come out of order."""
    n_cur, n_ref = len(cur_sorted), float(ref_counts.sum())
    values = np.concatenate([cur_sorted, ref_values])
    order = np.argsort(values, kind="mergesort")
    merged = values[order]
    is_ref = order >= n_cur
    f_cur = np.cumsum(~is_ref) / n_cur
    ref_mass = np.zeros(len(merged))
    ref_mass[is_ref] = ref_counts[order[is_ref] - n_cur]
    f_ref = np.cumsum(ref_mass) / n_ref
    return float(np.sum(np.abs(f_ref[:-1] - f_cur[:-1]) * np.diff(merged)))


def _ks_pvalue(ref: _NumericSketch, cur_sorted: np.ndarray) -> float:
    """Two-sided K-S p-value exactly as scipy.stats.ks_2samp(method="auto") computes it.

    Only reached with an exact reference (<= 1000 rows). Small samples go through scipy itself (its exact
    method); large ones use the same asymptotic formula on a D computed without re-sorting."""
    from scipy import stats

    n1, n2 = ref.n, len(cur_sorted)
    if max(n1, n2) <= KS_EXACT_MAX_N:
        return float(stats.ks_2samp(np.repeat(ref.values, ref.counts), cur_sorted).pvalue)
    # D is attained at data points; evaluate both right-continuous CDFs at every reference atom and every
    # current value (F_ref at current values only changes at atoms, so checking atoms and the current
    # values just before/after each atom is enough).
    cdf_ref_at_atoms = np.cumsum(ref.counts) / n1
    cdf_cur_at_atoms = np.searchsorted(cur_sorted, ref.values, side="right") / n2
    d = float(np.max(np.abs(cdf_ref_at_atoms - cdf_cur_at_atoms)))
    # just below each atom: F_ref = previous cumulative, F_cur counts values strictly below the atom
    prev_ref = np.concatenate([[0.0], cdf_ref_at_atoms[:-1]])
    below_cur = np.searchsorted(cur_sorted, ref.values, side="left") / n2
    d = max(d, float(np.max(np.abs(prev_ref - below_cur))))
    # above the last atom F_ref = 1 and F_cur only rises towards 1, already covered; below the first atom
    # F_ref = 0 and F_cur(x) <= F_cur(first atom^-), covered by `below_cur`.
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    return float(np.clip(stats.kstwo.sf(d, np.round(en)), 0.0, 1.0))


def _z_pvalue(ref_counts: dict[Any, int], cur_counts: dict[Any, int], n1: int, n2: int) -> float:
    """Evidently's two-proportion Z-test, with its special case for one identical value on both sides."""
    from scipy.stats import norm

    if len(ref_counts) == 1 and len(cur_counts) == 1 and next(iter(ref_counts)) == next(iter(cur_counts)):
        return 1.0
    keys = sorted(set(ref_counts) | set(cur_counts))
    k0 = keys[0]
    p1 = float(n1 - ref_counts.get(k0, 0)) / n1
    p2 = float(n2 - cur_counts.get(k0, 0)) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - norm.cdf(np.abs(z))))


def _chisquare_pvalue(ref_counts: dict[Any, int], cur_counts: dict[Any, int], n1: int, n2: int) -> float:
    """Evidently's chi-square: expected counts are the reference's scaled to the current size; a category
    unseen in the reference has expected 0, so the p-value is 0 (drift), as in Evidently."""
    from scipy.stats import chisquare

    keys = list(dict.fromkeys([*ref_counts, *cur_counts]))
    k_norm = n2 / n1
    f_exp = np.array([ref_counts.get(k, 0) * k_norm for k in keys], dtype=np.float64)
    f_obs = np.array([cur_counts.get(k, 0) for k in keys], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(chisquare(f_obs, f_exp)[1])


def _jensenshannon(ref_counts: dict[Any, int], cur_counts: dict[Any, int], n1: int, n2: int) -> float:
    from scipy.spatial import distance

    keys = list(dict.fromkeys([*ref_counts, *cur_counts]))
    p = np.array([ref_counts.get(k, 0) / n1 for k in keys])
    q = np.array([cur_counts.get(k, 0) / n2 for k in keys])
    return float(distance.jensenshannon(p, q))


def _decide(stattest: str, statistic: float, threshold: float) -> bool:
    """Evidently's comparison per test: K-S uses <=, the other p-values <, distances >=; NaN never drifts."""
    if not math.isfinite(statistic):
        return False
    if stattest == "ks":
        return statistic <= threshold
    if stattest in P_VALUE_TESTS:
        return statistic < threshold
    return statistic >= threshold


def _counts_from_sorted(xs: np.ndarray) -> dict[Any, int]:
    change = np.flatnonzero(xs[1:] != xs[:-1]) + 1
    starts = np.concatenate([[0], change])
    counts = np.diff(np.concatenate([starts, [len(xs)]]))
    return {_native(v): int(c) for v, c in zip(xs[starts], counts, strict=True)}


def _compare_numeric(column: str, ref: _NumericSketch, x: np.ndarray) -> ColumnDrift:
    if len(x) == 0:
        raise ValueError(f"column {column!r} has no finite values in the current data: cannot test drift")
    xs = np.sort(x)
    small = ref.n <= SMALL_REFERENCE_ROWS
    # n_values only matters while it is <= 5, so only count it when the reference has <= 5 distinct values
    n_values = 6
    cur_counts: dict[Any, int] = {}
    if ref.exact and len(ref.values) <= 5:
        n_distinct_cur = int(np.count_nonzero(xs[1:] != xs[:-1])) + 1
        if n_distinct_cur <= 5:
            cur_counts = _counts_from_sorted(xs)
            n_values = len(set(ref.values.tolist()) | set(cur_counts))
    if n_values <= 5:
        ref_counts = {_native(v): int(c) for v, c in zip(ref.values, ref.counts, strict=True)}
        if small:
            test = "chisquare" if n_values > 2 else "z"
            fn = _chisquare_pvalue if test == "chisquare" else _z_pvalue
            stat = fn(ref_counts, cur_counts, ref.n, len(xs))
        else:
            test, stat = "jensenshannon", _jensenshannon(ref_counts, cur_counts, ref.n, len(xs))
    elif small:
        test, stat = "ks", _ks_pvalue(ref, xs)
    else:
        test = "wasserstein"
        stat = _wasserstein(ref.values, ref.counts, xs) / max(ref.std, 0.001)
    thr = THRESHOLDS[test]
    return ColumnDrift(column, "numeric", test, float(stat), thr, _decide(test, float(stat), thr))


def _compare_categorical(column: str, ref: _CategoricalCounts, s: pd.Series) -> ColumnDrift:
    cur_counts, n2 = _category_counts(s)
    if n2 == 0:
        raise ValueError(f"column {column!r} has no non-missing values in the current data: cannot test")
    n_values = len(set(ref.counts) | set(cur_counts))
    if ref.n <= SMALL_REFERENCE_ROWS:
        test = "chisquare" if n_values > 2 else "z"
        stat = (_chisquare_pvalue if test == "chisquare" else _z_pvalue)(ref.counts, cur_counts, ref.n, n2)
    else:
        test, stat = "jensenshannon", _jensenshannon(ref.counts, cur_counts, ref.n, n2)
    thr = THRESHOLDS[test]
    return ColumnDrift(column, "categorical", test, float(stat), thr, _decide(test, float(stat), thr))


# --------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------


def _as_frame(data: Any, columns: Sequence[str]) -> pd.DataFrame:
    """Accept what the feature store hands out (pandas, a pyarrow Table, a DuckDB relation), reading only
    the columns that are tested."""
    if isinstance(data, pd.DataFrame):
        return data
    module = type(data).__module__
    if module.startswith("pyarrow"):
        present = [c for c in columns if c in data.column_names]
        return data.select(present).to_pandas()
    if module.startswith("duckdb") or module.startswith("_duckdb"):
        present = [c for c in columns if c in data.columns]
        return data.select(", ".join(f'"{c}"' for c in present)).df() if present else data.df()
    raise TypeError(f"expected a pandas DataFrame, pyarrow Table or DuckDB relation: {type(data).__name__}")


class ReferenceProfile:
    """Reference side summarised once (quantile sketch / histogram per numeric column, category counts),
    stored with the champion."""

    def __init__(
        self, numeric: dict[str, _NumericSketch], categorical: dict[str, _CategoricalCounts], n_rows: int
    ) -> None:
        self.numeric = numeric
        self.categorical = categorical
        self.n_rows = n_rows

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        *,
        numeric: Sequence[str],
        categorical: Sequence[str],
        max_atoms: int = MAX_ATOMS,
    ) -> ReferenceProfile:
        """One pass (a sort per numeric column, a count per categorical) over the reference rows."""
        overlap = set(numeric) & set(categorical)
        if overlap:
            raise ValueError(f"columns listed as both numeric and categorical: {sorted(overlap)}")
        missing = [c for c in [*numeric, *categorical] if c not in df.columns]
        if missing:
            raise ValueError(f"reference is missing columns {missing}")
        num: dict[str, _NumericSketch] = {}
        for c in numeric:
            x = _numeric_values(df[c], c, "reference")
            if len(x) == 0:
                raise ValueError(f"column {c!r} has no finite values in the reference: cannot test drift")
            num[c] = _sketch_numeric(x, max_atoms)
        cat: dict[str, _CategoricalCounts] = {}
        for c in categorical:
            counts, n = _category_counts(df[c])
            if n == 0:
                raise ValueError(f"column {c!r} has no non-missing values in the reference: cannot test")
            cat[c] = _CategoricalCounts(n=n, counts=counts)
        return cls(num, cat, len(df))

    def to_json(self) -> str:
        payload = {
            "version": PROFILE_VERSION,
            "n_rows": self.n_rows,
            "numeric": {c: s.to_json() for c, s in self.numeric.items()},
            "categorical": {c: s.to_json() for c, s in self.categorical.items()},
        }
        return json.dumps(payload, allow_nan=False)

    @classmethod
    def from_json(cls, s: str) -> ReferenceProfile:
        d = json.loads(s)
        if d.get("version") != PROFILE_VERSION:
            raise ValueError(f"unsupported reference profile version {d.get('version')!r}")
        return cls(
            {c: _NumericSketch.from_json(v) for c, v in d["numeric"].items()},
            {c: _CategoricalCounts.from_json(v) for c, v in d["categorical"].items()},
            int(d["n_rows"]),
        )

    def compare(self, current: Any, *, drift_share: float = 0.5, columns: Sequence[str] | None = None) -> DriftResult:
        """Test every profiled column (or `columns`) of `current` against the reference."""
        cols = list(columns) if columns is not None else self.columns
        unknown = [c for c in cols if c not in self.numeric and c not in self.categorical]
        if unknown:
            raise ValueError(f"columns {unknown} are not in the reference profile")
        if not cols:
            raise ValueError("no columns to test")
        frame = _as_frame(current, cols)
        if len(frame) == 0:
            raise ValueError("the current data has no rows: cannot test drift")
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"current data is missing columns {missing}")
        results = [
            _compare_numeric(c, self.numeric[c], _numeric_values(frame[c], c, "current"))
            if c in self.numeric
            else _compare_categorical(c, self.categorical[c], frame[c])
            for c in cols
        ]
        share = sum(r.drifted for r in results) / len(results)
        return DriftResult(results, share, share >= drift_share, self.n_rows, len(frame))


def _infer_categorical(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [
        c for c in columns if not pd.api.types.is_numeric_dtype(df[c].dtype) or pd.api.types.is_bool_dtype(df[c].dtype)
    ]


def compute_drift(
    reference: pd.DataFrame,
    current: Any,
    *,
    columns: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    drift_share: float = 0.5,
) -> DriftResult:
    """One-off comparison of two frames (profiles the reference, then compares).

    Columns default to all of the reference's; those not listed as categorical are numeric, and when
    `categorical` is None the object/category/bool/string columns are."""
    cols = list(columns) if columns is not None else list(reference.columns)
    cats = (
        [c for c in cols if c in set(categorical)]
        if categorical is not None
        else _infer_categorical(reference, [c for c in cols if c in reference.columns])
    )
    nums = [c for c in cols if c not in set(cats)]
    profile = ReferenceProfile.from_frame(reference, numeric=nums, categorical=cats)
    return profile.compare(current, drift_share=drift_share, columns=cols)
