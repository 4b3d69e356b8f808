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
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd

MAX_ATOMS = 2000
SMALL_REFERENCE_ROWS = 1000  # Evidently: reference_data.shape[0] <= 1000 picks the "small sample" tests
KS_EXACT_MAX_N = 10000  # scipy.stats.ks_2samp(method="auto") is exact up to this sample size
PROFILE_VERSION = 1
PARALLEL_MIN_CELLS = 2_000_000  # below this many values a thread pool costs more than it saves
_T = TypeVar("_T")

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


def _native(v: Any) -> Any:
    """Category keys as plain JSON values, so a profile read back from disk matches the live data."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str | bool | int | float):
        return v
    return str(v)


def _counts_dict(keys: Sequence[Any], counts: Sequence[int]) -> tuple[dict[Any, int], int]:
    """Non-missing keys with a positive count, as JSON-native values; +/-inf is missing (as in Evidently)."""
    out: dict[Any, int] = {}
    for k, c in zip(keys, counts, strict=True):
        if c == 0 or k is None or (isinstance(k, float | np.floating) and not math.isfinite(k)):
            continue
        key = _native(k)
        out[key] = out.get(key, 0) + int(c)
    return out, sum(out.values())


def _category_counts(s: pd.Series) -> tuple[dict[Any, int], int]:
    """Counts per non-missing category of a pandas column and their total, by the cheapest exact route for
    its dtype: codes for categoricals, two counts for booleans, a bincount for small integer ranges, Arrow's
    hash for Arrow-backed strings; pandas' hash table only for object columns."""
    dtype = s.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy()
        counts_arr = np.bincount(codes[codes >= 0], minlength=len(s.cat.categories))
        return _counts_dict(list(s.cat.categories), counts_arr.tolist())
    if dtype == np.bool_:
        t = int(np.count_nonzero(s.to_numpy()))
        return _counts_dict([False, True], [len(s) - t, t])
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":
        got = _int_counts(s.to_numpy())
        if got is not None:
            return got
    if hasattr(s.array, "__arrow_array__"):
        import pyarrow as pa

        return _arrow_category_counts(pa.chunked_array([pa.array(s.array)]))
    vc = s.value_counts(dropna=True, sort=False)
    return _counts_dict(list(vc.index), vc.to_numpy().tolist())


def _int_counts(x: np.ndarray) -> tuple[dict[Any, int], int] | None:
    """Integer codes over a range no wider than the column: a bincount, no hashing. None otherwise."""
    if len(x) == 0:
        return {}, 0
    lo, hi = int(x.min()), int(x.max())
    if hi - lo > max(len(x), 1024):
        return None
    counts_arr = np.bincount((x - lo).astype(np.intp, copy=False), minlength=hi - lo + 1)
    nz = np.flatnonzero(counts_arr)
    return _counts_dict((nz + lo).tolist(), counts_arr[nz].tolist())


def _arrow_category_counts(arr: Any) -> tuple[dict[Any, int], int]:
    """Counts of an Arrow column: a bincount for integer codes, else Arrow's own hash kernel (no Python
    object per row either way)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if arr.null_count == len(arr):
        return {}, 0
    if pa.types.is_boolean(arr.type):
        n_valid, n_true = len(arr) - arr.null_count, int(pc.sum(arr).as_py() or 0)
        return _counts_dict([False, True], [n_valid - n_true, n_true])
    if pa.types.is_integer(arr.type):
        valid = arr.drop_null() if arr.null_count else arr
        parts = [c.to_numpy() for c in valid.chunks if len(c)]
        got = _int_counts(parts[0] if len(parts) == 1 else np.concatenate(parts))
        if got is not None:
            return got
    vc = pc.value_counts(arr)
    keys = vc.field("values")
    if hasattr(keys, "dictionary_decode"):
        keys = keys.dictionary_decode()
    return _counts_dict(keys.to_pylist(), vc.field("counts").to_pylist())


def _finite(x: np.ndarray, owned: bool) -> tuple[np.ndarray, bool]:
    """Drop NaN and +/-inf (Evidently treats inf as missing); `owned` says whether `x` may be sorted in place."""
    if x.dtype != np.float64:
        x, owned = x.astype(np.float64), True
    finite = np.isfinite(x)
    if finite.all():
        return x, owned
    return x[finite], True


def _pandas_numeric(s: pd.Series, column: str, side: str) -> tuple[np.ndarray, bool]:
    dtype = s.dtype
    if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
        raise ValueError(f"column {column!r} in {side} should hold numbers only (dtype {dtype})")
    if isinstance(dtype, np.dtype):
        return _finite(s.to_numpy(), False)
    return _finite(s.to_numpy(dtype=np.float64, na_value=np.nan), True)


def _arrow_numeric(arr: Any, column: str, side: str) -> tuple[np.ndarray, bool]:
    """Chunk by chunk: a chunk without nulls is a zero-copy view of Arrow's buffer; nulls become NaN (and
    are dropped with NaN and inf), so no Arrow kernel and no pandas conversion runs."""
    import pyarrow as pa

    t = arr.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)):
        raise ValueError(f"column {column!r} in {side} should hold numbers only (type {t})")
    if pa.types.is_decimal(t) or pa.types.is_boolean(t) or pa.types.is_float16(t):
        arr = arr.cast(pa.float64())
    parts = [
        c.to_numpy(zero_copy_only=False) if c.null_count else c.to_numpy(zero_copy_only=True)
        for c in arr.chunks
        if len(c)
    ]
    if not parts:
        return np.empty(0), True
    if len(parts) == 1:
        x = parts[0]
        return _finite(x, bool(x.flags.writeable) and arr.null_count > 0)
    return _finite(np.concatenate([p.astype(np.float64, copy=False) for p in parts]), True)


class _Buffers:
    """The tested columns of one input as flat numpy buffers (numbers) or category counts, taken straight
    from the frame's blocks or the Arrow columns: no copy of the frame, no per-row Python objects except
    for pandas object columns (which hold them already)."""

    def __init__(self, data: Any, columns: Sequence[str], side: str) -> None:
        self.side = side
        module = type(data).__module__
        if isinstance(data, pd.DataFrame):
            self.kind, self.names = "pandas", set(data.columns)
        elif module.startswith(("duckdb", "_duckdb")):
            present = [c for c in columns if c in data.columns]
            rel = data.select(", ".join(f'"{c}"' for c in present)) if present else data
            data = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.fetch_arrow_table()
            self.kind, self.names = "arrow", set(data.column_names)
        elif module.startswith("pyarrow") and hasattr(data, "column_names"):
            self.kind, self.names = "arrow", set(data.column_names)
        else:
            raise TypeError(f"expected a pandas DataFrame, pyarrow Table or DuckDB relation: {type(data).__name__}")
        self.data = data
        self.n_rows = len(data) if self.kind == "pandas" else data.num_rows

    def _arrow_column(self, c: str) -> Any:
        import pyarrow as pa

        col = self.data.column(c)
        return col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])

    def numeric(self, c: str) -> tuple[np.ndarray, bool]:
        """(finite float64 values, whether the array is a private copy that may be sorted in place)."""
        if self.kind == "pandas":
            return _pandas_numeric(self.data[c], c, self.side)
        return _arrow_numeric(self._arrow_column(c), c, self.side)

    def categorical(self, c: str) -> tuple[dict[Any, int], int]:
        if self.kind == "pandas":
            return _category_counts(self.data[c])
        return _arrow_category_counts(self._arrow_column(c))


def _numeric_values(s: pd.Series, column: str, side: str) -> np.ndarray:
    """Finite float64 values of a column, as Evidently keeps them (inf counts as missing)."""
    return _pandas_numeric(s, column, side)[0]


def _distinct_sorted(x: np.ndarray) -> np.ndarray:
    """Distinct values of a non-decreasing array (np.unique would hash or sort again)."""
    if len(x) < 2:
        return x
    keep = np.empty(len(x), dtype=bool)
    keep[0] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def _segment_sums(xs: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of xs[starts[m]:starts[m+1]] (the last one to the end) for non-decreasing `starts`, empty
    segments included, in one pass (`np.add.reduceat` alone gives xs[i] for an empty segment and refuses
    an index equal to len(xs))."""
    n = len(xs)
    ends = np.append(starts[1:], n)
    out = np.zeros(len(starts))
    live = starts < ends
    if not live.any():
        return out
    u = _distinct_sorted(starts[live])
    sums = np.add.reduceat(xs, u)
    out[live] = sums[np.searchsorted(u, starts[live])]
    return out


def _abs_dev_sums(xs: np.ndarray, lo: np.ndarray, hi: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """sum(|xs[lo_j:hi_j] - centers_j|) for every j, for sorted xs and disjoint, ordered ranges: split
    each range where the center falls, so one pass of segment sums does it (no per-value temporaries)."""
    p = np.clip(np.searchsorted(xs, centers), lo, np.maximum(hi, lo))
    seg = _segment_sums(xs, np.stack([lo, p, np.maximum(hi, lo)], axis=1).ravel()).reshape(-1, 3)
    below, above = seg[:, 0], seg[:, 1]
    dev = centers * (p - lo) - below + above - centers * (np.maximum(hi, lo) - p)
    return np.maximum(dev, 0.0)


def _std(xs: np.ndarray, mean: float, means: np.ndarray, counts: np.ndarray) -> float:
    """np.std(xs) in one pass without a temporary: E[x^2] - mean^2 from one dot product, which loses digits
    only when the mean dwarfs the spread; the slice means tell when, and then it is the two-pass formula."""
    spread = math.sqrt(float(np.dot((means - mean) ** 2, counts)) / len(xs))  # <= std, from the sketch
    if spread > 0 and abs(mean) < 1e3 * spread:
        return math.sqrt(max(float(np.dot(xs, xs)) / len(xs) - mean * mean, 0.0))
    centred = xs - mean
    return math.sqrt(float(np.dot(centred, centred)) / len(xs))


def _sketch_numeric(x: np.ndarray, max_atoms: int, owned: bool = False) -> _NumericSketch:
    if owned:
        x.sort()
        xs = x
    else:
        xs = np.sort(x)
    n = len(xs)
    # Evenly spaced order statistics are a subset of the values: more than max_atoms distinct among them
    # settles "not exact" without comparing every neighbour pair of a million-row column.
    sample = xs[:: max(1, n // (4 * max_atoms))]
    few = len(sample) < 4 * max_atoms or int(np.count_nonzero(sample[1:] != sample[:-1])) < max_atoms
    steps = xs[1:] != xs[:-1] if few else None
    if steps is not None and int(np.count_nonzero(steps)) + 1 <= max_atoms:
        change = np.flatnonzero(steps) + 1
        starts = np.concatenate([[0], change])
        counts = np.diff(np.concatenate([starts, [n]]))
        values = xs[starts]
        mean = float(np.dot(values, counts)) / n
        std = math.sqrt(float(np.dot((values - mean) ** 2, counts)) / n)
        return _NumericSketch(n=n, std=std, exact=True, values=values, counts=counts.astype(np.int64))
    bounds = _distinct_sorted((np.arange(max_atoms) * n) // max_atoms)
    ends = np.append(bounds[1:], n)
    counts = ends - bounds
    sums = np.add.reduceat(xs, bounds)
    means = sums / counts
    std = _std(xs, float(sums.sum()) / n, means, counts)
    # W1(reference, its sketch): each value moves to its slice's mean; an upper bound on the sketch's error
    err = float(_abs_dev_sums(xs, bounds, ends, means).sum() / n)
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
    """First Wasserstein distance between weighted reference atoms and the (sorted) current sample.

    Computed as the integral of |Q_cur(u) - Q_ref(u)| over u in (0, 1], the quantile form: current value
    i owns u in (i/n, (i+1)/n], atom j owns (R_{j-1}/W, R_j/W] (R the cumulative counts, W their total).
    On the common integer grid of 1/(nW) every breakpoint is exact. A current value whose whole share
    lies inside one atom's share contributes |x_i - a_j|/n, and those are summed per atom in one pass of
    segment sums split where the atom falls among the sorted values; the few values whose share straddles
    an atom boundary (at most one per boundary) are cut into pieces exactly. So the cost is the sort
    plus one pass, with no merged copy of the data. Atoms need not arrive sorted: slice means of a long
    run of equal values can differ in the last bit and come out of order."""
    xs = cur_sorted
    n = len(xs)
    order = np.argsort(ref_values, kind="stable")
    a = np.asarray(ref_values, dtype=np.float64)[order]
    c = np.asarray(ref_counts, dtype=np.int64)[order]
    W = int(c.sum())
    R = np.cumsum(c)
    Rn = R * n  # atom j's share ends at Rn[j] on the integer grid where value i's ends at (i + 1) * W
    prev = Rn - c * n
    first_full = -(-prev // W)  # ceil
    end_full = np.maximum(Rn // W, first_full)
    full = float(_abs_dev_sums(xs, first_full, end_full, a).sum())
    # values cut by a boundary strictly inside their share: exact pieces
    inner = Rn[:-1]
    inner = inner[inner % W != 0]
    pieces = 0.0
    if len(inner):
        cut = np.unique(inner // W)
        points = np.unique(np.concatenate([inner, cut * W, (cut + 1) * W]))
        lo, hi = points[:-1], points[1:]
        elem = lo // W
        keep = np.isin(elem, cut)
        lo, hi, elem = lo[keep], hi[keep], elem[keep]
        atom = np.searchsorted(Rn, lo, side="right")
        pieces = float(np.sum((hi - lo).astype(np.float64) * np.abs(xs[elem] - a[atom])))
    return (full * W + pieces) / (float(n) * W)


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


def _compare_numeric(column: str, ref: _NumericSketch, x: np.ndarray, owned: bool = False) -> ColumnDrift:
    if len(x) == 0:
        raise ValueError(f"column {column!r} has no finite values in the current data: cannot test drift")
    if owned:
        x.sort()
        xs = x
    else:
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


def _compare_categorical(column: str, ref: _CategoricalCounts, cur_counts: dict[Any, int], n2: int) -> ColumnDrift:
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


def _workers(n_cells: int, n_columns: int, workers: int | None) -> int:
    """Columns are independent and the heavy steps (sorts, segment sums, Arrow's hash) release the GIL,
    so large inputs go over the process's cores in threads; small ones (a replay day) stay on one thread,
    where a pool would cost more than it saves."""
    if workers is not None:
        return max(1, min(workers, n_columns))
    if n_cells < PARALLEL_MIN_CELLS:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, n_columns))


def _map_columns(fn: Callable[[str], _T], columns: Sequence[str], workers: int) -> list[_T]:
    if workers <= 1:
        return [fn(c) for c in columns]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, columns))


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
        df: Any,
        *,
        numeric: Sequence[str],
        categorical: Sequence[str],
        max_atoms: int = MAX_ATOMS,
        workers: int | None = None,
    ) -> ReferenceProfile:
        """One pass over the reference rows: a sort per numeric column, a count per categorical one.

        `df` may be a pandas DataFrame, a pyarrow Table or a DuckDB relation; `workers` caps the threads
        (default: the process's cores for large inputs, one thread for small ones)."""
        overlap = set(numeric) & set(categorical)
        if overlap:
            raise ValueError(f"columns listed as both numeric and categorical: {sorted(overlap)}")
        cols = [*numeric, *categorical]
        buffers = _Buffers(df, cols, "reference")
        missing = [c for c in cols if c not in buffers.names]
        if missing:
            raise ValueError(f"reference is missing columns {missing}")
        num_set = set(numeric)

        def summarise(c: str) -> _NumericSketch | _CategoricalCounts:
            if c in num_set:
                x, owned = buffers.numeric(c)
                if len(x) == 0:
                    raise ValueError(f"column {c!r} has no finite values in the reference: cannot test drift")
                return _sketch_numeric(x, max_atoms, owned)
            counts, n = buffers.categorical(c)
            if n == 0:
                raise ValueError(f"column {c!r} has no non-missing values in the reference: cannot test")
            return _CategoricalCounts(n=n, counts=counts)

        n_workers = _workers(buffers.n_rows * len(cols), len(cols), workers)
        summaries = dict(zip(cols, _map_columns(summarise, cols, n_workers), strict=True))
        num = {c: summaries[c] for c in numeric}
        cat = {c: summaries[c] for c in categorical}
        return cls(num, cat, buffers.n_rows)  # type: ignore[arg-type]

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

    def compare(
        self,
        current: Any,
        *,
        drift_share: float = 0.5,
        columns: Sequence[str] | None = None,
        workers: int | None = None,
    ) -> DriftResult:
        """Test every profiled column (or `columns`) of `current` against the reference.

        `current` may be a pandas DataFrame, a pyarrow Table or a DuckDB relation; only the tested columns
        are read, each straight from its buffer. `workers` as in `from_frame`."""
        cols = list(columns) if columns is not None else self.columns
        unknown = [c for c in cols if c not in self.numeric and c not in self.categorical]
        if unknown:
            raise ValueError(f"columns {unknown} are not in the reference profile")
        if not cols:
            raise ValueError("no columns to test")
        buffers = _Buffers(current, cols, "current")
        if buffers.n_rows == 0:
            raise ValueError("the current data has no rows: cannot test drift")
        missing = [c for c in cols if c not in buffers.names]
        if missing:
            raise ValueError(f"current data is missing columns {missing}")

        def test(c: str) -> ColumnDrift:
            if c in self.numeric:
                x, owned = buffers.numeric(c)
                return _compare_numeric(c, self.numeric[c], x, owned)
            counts, n = buffers.categorical(c)
            return _compare_categorical(c, self.categorical[c], counts, n)

        results = _map_columns(test, cols, _workers(buffers.n_rows * len(cols), len(cols), workers))
        share = sum(r.drifted for r in results) / len(results)
        return DriftResult(results, share, share >= drift_share, self.n_rows, buffers.n_rows)


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
