"""A compiled scoring path for the champion: the fitted pipeline rewritten as a few numpy arrays.

`predict_proba` on a one-row DataFrame spends milliseconds in pandas, the ColumnTransformer's validation and
per-tree Python calls; the arithmetic is microseconds. This module reads the *fitted* objects once and keeps
only what the arithmetic needs:

- each input feature's path through the preprocessing: a numeric value is filled where missing (and, for
  linear models, centred and scaled); a categorical value is looked up in a dict built by running the fitted
  encoders themselves on every category they know, on a missing value and on an unseen one, so unknown and
  infrequent categories land exactly where scikit-learn sends them;
- a linear model as its intercept plus one term per feature;
- every tree of a forest or a boosted ensemble packed into flat node arrays, walked for all trees and rows at
  once, level by level (a leaf points at itself, so extra levels are no-ops).

A compiled scorer is never trusted on its construction alone: `prove` scores rows with both paths and the
compiled one serves only when the largest difference is at most `TOLERANCE`. Whatever this module does not
recognise raises `NotCompilable` with the reason, and the model is served by the plain scikit-learn path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

TOLERANCE = 1e-6
UNSEEN = "\x00mlops-unseen-category\x00"  # a value no encoder was fitted on: probes the "unknown" branch
NUMERIC_PROBES = (0.0, 1.5, -2.25, 1e6)

# Version tags written at registration (and read by the API) about how a version can be served.
SCORER_TAG = "mlops.scorer"  # "compiled" or "plain"
SCORER_REASON_TAG = "mlops.scorer_reason"  # why plain (empty when compiled)
SCORER_DIFF_TAG = "mlops.scorer_max_abs_diff"  # the proof: largest |compiled - sklearn| on the rows checked
SCORER_ROWS_TAG = "mlops.scorer_rows"  # how many rows the proof scored


class NotCompilable(ValueError):
    """The model has a part the compiler does not know; it is served by the plain path."""


# --- inputs ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Columns:
    """A request's rows as the model's inputs: one float64 matrix (NaN where missing) for the numeric
    features, one list per categorical feature (str or None). Both scoring paths start from this, so they
    see exactly the same values."""

    n_rows: int
    numeric_names: tuple[str, ...]
    numeric: np.ndarray  # (n_rows, len(numeric_names))
    categorical: dict[str, list[str | None]]

    def to_frame(self, names: Sequence[str]) -> pd.DataFrame:
        data: dict[str, Any] = {}
        pos = {n: i for i, n in enumerate(self.numeric_names)}
        for n in names:
            data[n] = self.numeric[:, pos[n]] if n in pos else pd.Series(self.categorical[n], dtype=object)
        return pd.DataFrame(data, columns=list(names))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> Columns:
        num = np.empty((len(frame), len(numeric)), dtype=np.float64)
        for i, n in enumerate(numeric):
            num[:, i] = frame[n].to_numpy(dtype=np.float64, na_value=np.nan)
        cat: dict[str, list[str | None]] = {}
        for n in categorical:
            cat[n] = [None if _missing(v) else str(v) for v in frame[n].tolist()]
        return cls(len(frame), tuple(numeric), num, cat)


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


# --- the compiled parts ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NumericInput:
    name: str
    col: int
    fill: float  # what a missing value becomes (NaN: left missing, the trees route it)
    mean: float = 0.0
    scale: float = 1.0
    weight: float = 1.0  # linear models only


@dataclass(frozen=True)
class CategoricalInput:
    name: str
    col: int
    table: dict[str, float]  # category -> code (trees) or term (linear)
    missing: float
    unseen: float

    def encode(self, values: list[str | None]) -> list[float]:
        get, missing, unseen = self.table.get, self.missing, self.unseen
        return [missing if v is None else get(v, unseen) for v in values]


ALL_LEAVES = np.uint64(0xFFFFFFFFFFFFFFFF)
ROW_CHUNK = 256  # rows scored at once by the leaf-mask walk: bounds its (rows x nodes) arrays
MAX_MASK_LEAVES = 64  # one uint64 of leaves per tree


@dataclass(frozen=True)
class PackedForest:
    """Every tree of an ensemble in flat arrays.

    Trees of at most 64 leaves (boosting's usual size) are scored without walking them: every split of
    every tree is tested at once, and a split that sends the row right rules out the leaves of its left
    subtree, a 64-bit mask per split; per tree the leftmost leaf that no split ruled out is the one the row
    reaches (the exit leaf lies right of every split on its path that went right, and any leaf left of it
    is in the left subtree of the split where their paths part). That is a fixed dozen numpy calls per
    batch whatever the depth. Bigger trees (a forest grown to purity) are walked level by level for all
    trees and rows at once, a leaf pointing at itself.
    """

    # splits (the mask method) or all nodes (the walk), concatenated tree after tree
    feature: np.ndarray  # intp
    threshold: np.ndarray  # float64; +inf at leaves (walk)
    missing_left: np.ndarray  # bool
    cat_row: np.ndarray | None  # intp per split/node: row of cat_left, -1 for a numeric split
    cat_left: np.ndarray | None  # bool [n_cat_splits, 257]: the side code 0..255 takes; [256]: missing
    leaf_value: np.ndarray  # float64: leaves in left-to-right order per tree (mask), or per node (walk)
    n_trees: int
    # the mask method
    mask: np.ndarray | None = None  # uint64 per split: the leaves still possible if it goes right
    starts: np.ndarray | None = None  # intp [T]: each tree's first split
    leaf_offset: np.ndarray | None = None  # intp [T]: each tree's first leaf in leaf_value
    # the walk
    left: np.ndarray | None = None
    right: np.ndarray | None = None
    roots: np.ndarray | None = None
    depth: int = 0

    def _go_left(self, x: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Which side each (row, node) goes, with scikit-learn's rules: a missing value the side learned
        for it; a category by its split's table (an unknown code the missing side); a number by `<=`."""
        go_left = x <= self.threshold[nodes]
        nan = np.isnan(x)
        if nan.any():
            go_left = np.where(nan, self.missing_left[nodes], go_left)
        if self.cat_row is None or self.cat_left is None:
            return go_left
        cr = self.cat_row[nodes]
        is_cat = cr >= 0
        if is_cat.any():
            go_left[is_cat] = self.cat_left[cr[is_cat], _codes(x[is_cat])]
        return go_left

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """The value of the leaf each row reaches in each tree, shape (rows, trees)."""
        if self.mask is None or self.starts is None or self.leaf_offset is None:
            return self._walk(X)
        if X.shape[0] > ROW_CHUNK:
            return np.concatenate([self.leaves(X[i : i + ROW_CHUNK]) for i in range(0, X.shape[0], ROW_CHUNK)])
        x = X[:, self.feature]
        go_left = x <= self.threshold
        if np.isnan(X).any():  # checked on the row's few columns, not on every split
            go_left = np.where(np.isnan(x), self.missing_left, go_left)
        if self.cat_row is not None and self.cat_left is not None:
            # codes per input column once, then each categorical split's side from its table
            cols, rows = self._cat_split_index
            go_left[:, cols] = self.cat_left[rows, _codes(X)[:, self.feature[cols]]]
        alive = np.where(go_left, ALL_LEAVES, self.mask)
        per_tree = np.bitwise_and.reduceat(alive, self.starts, axis=1)
        lowest = per_tree & (~per_tree + np.uint64(1))
        index = np.frexp(lowest.astype(np.float64))[1] - 1
        return self.leaf_value[self.leaf_offset + index]

    @property
    def _cat_split_index(self) -> tuple[np.ndarray, np.ndarray]:
        cached = self.__dict__.get("_cat_split_cache")
        if cached is None:
            assert self.cat_row is not None
            cols = np.flatnonzero(self.cat_row >= 0)
            cached = (cols, self.cat_row[cols])
            object.__setattr__(self, "_cat_split_cache", cached)
        return cached

    def _walk(self, X: np.ndarray) -> np.ndarray:
        assert self.roots is not None and self.left is not None and self.right is not None
        n = X.shape[0]
        node = np.repeat(self.roots[None, :], n, axis=0)
        rows = np.arange(n)[:, None]
        for _ in range(self.depth):
            go_left = self._go_left(X[rows, self.feature[node]], node)
            node = np.where(go_left, self.left[node], self.right[node])
        return self.leaf_value[node]


def _codes(x: np.ndarray) -> np.ndarray:
    """A categorical split's column index for each value: its code 0..255, or 256 (missing) for NaN and
    negative codes, as `_predictor.pyx` treats them."""
    bad = np.isnan(x) | (x < 0)
    return np.where(bad, 256, np.clip(np.where(bad, 0, x), 0, 255)).astype(np.intp)


def _cat_table(t: dict[str, np.ndarray], i: int) -> np.ndarray:
    row = np.empty(257, dtype=bool)
    row[:256] = t["cat_left"][i]
    row[256] = bool(t["missing_left"][i])
    return row


def _pack(trees: list[dict[str, np.ndarray]]) -> PackedForest:
    n_leaves = [int(t["is_leaf"].sum()) for t in trees]
    has_cat = any("cat_left" in t and (t["is_categorical"] & ~t["is_leaf"]).any() for t in trees)
    if max(n_leaves) <= MAX_MASK_LEAVES:
        return _pack_masks(trees, has_cat)
    return _pack_walk(trees, has_cat)


def _pack_masks(trees: list[dict[str, np.ndarray]], has_cat: bool) -> PackedForest:
    feats: list[int] = []
    thrs: list[float] = []
    miss: list[bool] = []
    masks: list[int] = []
    cat_rows: list[int] = []
    cat_tables: list[np.ndarray] = []
    starts: list[int] = []
    leaf_values: list[float] = []
    leaf_offset: list[int] = []
    full = (1 << 64) - 1
    for t in trees:
        left, right, leaf = t["left"], t["right"], t["is_leaf"]
        starts.append(len(feats))
        leaf_offset.append(len(leaf_values))
        order, first, count = _leaf_ranges(left, right, leaf)
        leaf_values.extend(float(t["value"][i]) for i in order)
        splits = [i for i in range(len(leaf)) if not leaf[i]]
        if not splits:  # a single leaf: one split that always goes left
            feats.append(0)
            thrs.append(math.inf)
            miss.append(True)
            masks.append(full)
            cat_rows.append(-1)
            continue
        for i in splits:
            lo, n = first[int(left[i])], count[int(left[i])]
            feats.append(int(t["feature"][i]))
            thrs.append(float(t["threshold"][i]))
            miss.append(bool(t["missing_left"][i]))
            masks.append(full ^ (((1 << n) - 1) << lo))
            if has_cat and t["is_categorical"][i]:
                cat_rows.append(len(cat_tables))
                cat_tables.append(_cat_table(t, i))
            else:
                cat_rows.append(-1)
    return PackedForest(
        feature=np.asarray(feats, dtype=np.intp),
        threshold=np.asarray(thrs, dtype=np.float64),
        missing_left=np.asarray(miss, dtype=bool),
        cat_row=np.asarray(cat_rows, dtype=np.intp) if cat_tables else None,
        cat_left=np.stack(cat_tables) if cat_tables else None,
        leaf_value=np.asarray(leaf_values, dtype=np.float64),
        n_trees=len(trees),
        mask=np.asarray(masks, dtype=np.uint64),
        starts=np.asarray(starts, dtype=np.intp),
        leaf_offset=np.asarray(leaf_offset, dtype=np.intp),
    )


def _leaf_ranges(left: np.ndarray, right: np.ndarray, leaf: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """The tree's leaves in left-to-right order, and for every node the first of its leaves and how many."""
    n = len(leaf)
    order: list[int] = []
    first, count = [0] * n, [0] * n
    stack: list[tuple[int, bool]] = [(0, False)]
    while stack:  # iterative post-order: a deep tree must not hit the recursion limit
        i, done = stack.pop()
        if done:
            count[i] = len(order) - first[i]
            continue
        first[i] = len(order)
        if leaf[i]:
            order.append(i)
            count[i] = 1
            continue
        stack.append((i, True))
        stack.append((int(right[i]), False))
        stack.append((int(left[i]), False))
    return order, first, count


def _pack_walk(trees: list[dict[str, np.ndarray]], has_cat: bool) -> PackedForest:
    feats, thrs, lefts, rights, miss, vals, roots, cat_rows = [], [], [], [], [], [], [], []
    cat_tables: list[np.ndarray] = []
    offset, depth = 0, 0
    for t in trees:
        n = len(t["feature"])
        leaf = t["is_leaf"]
        idx = np.arange(n)
        feats.append(np.where(leaf, 0, t["feature"]).astype(np.intp))
        thrs.append(np.where(leaf, np.inf, t["threshold"]).astype(np.float64))
        lefts.append(np.where(leaf, idx, t["left"]).astype(np.intp) + offset)
        rights.append(np.where(leaf, idx, t["right"]).astype(np.intp) + offset)
        miss.append(t["missing_left"].astype(bool))
        vals.append(t["value"].astype(np.float64))
        roots.append(offset)
        depth = max(depth, _depth(t["left"], t["right"], leaf))
        cr = np.full(n, -1, dtype=np.intp)
        if has_cat:
            for i in np.flatnonzero(t["is_categorical"] & ~leaf):
                cr[i] = len(cat_tables)
                cat_tables.append(_cat_table(t, int(i)))
        cat_rows.append(cr)
        offset += n
    return PackedForest(
        feature=np.concatenate(feats),
        threshold=np.concatenate(thrs),
        missing_left=np.concatenate(miss),
        cat_row=np.concatenate(cat_rows) if cat_tables else None,
        cat_left=np.stack(cat_tables) if cat_tables else None,
        leaf_value=np.concatenate(vals),
        n_trees=len(trees),
        left=np.concatenate(lefts),
        right=np.concatenate(rights),
        roots=np.asarray(roots, dtype=np.intp),
        depth=depth,
    )


def _depth(left: np.ndarray, right: np.ndarray, leaf: np.ndarray) -> int:
    depth = np.zeros(len(left), dtype=np.intp)
    for i in range(len(left)):  # parents come before children in both sklearn layouts
        if not leaf[i]:
            depth[left[i]] = depth[i] + 1
            depth[right[i]] = depth[i] + 1
    return int(depth.max())


# --- the scorer --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompiledScorer:
    """P(class 1) for a classifier, the prediction for a regressor: the same quantity `predict_scores` gives,
    from arrays instead of a DataFrame."""

    kind: str  # "constant", "linear", "forest_mean", "boosting"
    family: str
    n_cols: int = 0
    numeric: tuple[NumericInput, ...] = ()
    categorical: tuple[CategoricalInput, ...] = ()
    constant: float = 0.0  # the constant score, the linear intercept, or the boosting baseline
    link: str = "identity"  # "identity", "logit" (sigmoid) or "log" (exp)
    forest: PackedForest | None = None
    float32_inputs: bool = False  # scikit-learn's trees read float32
    base_row: np.ndarray | None = None  # what a column no feature moves always holds
    details: dict[str, Any] = field(default_factory=dict)
    # numeric inputs as arrays, in the order of `numeric` (filled by __post_init__)
    _names: tuple[str, ...] = ()
    _fill: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _scale: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _weight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _cols: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "_names", tuple(f.name for f in self.numeric))
        set_(self, "_fill", np.array([f.fill for f in self.numeric], dtype=np.float64))
        set_(self, "_mean", np.array([f.mean for f in self.numeric], dtype=np.float64))
        set_(self, "_scale", np.array([f.scale for f in self.numeric], dtype=np.float64))
        set_(self, "_weight", np.array([f.weight for f in self.numeric], dtype=np.float64))
        set_(self, "_cols", np.array([f.col for f in self.numeric], dtype=np.intp))

    def _numeric(self, cols: Columns) -> np.ndarray:
        if cols.numeric_names == self._names:
            return cols.numeric
        pos = {n: i for i, n in enumerate(cols.numeric_names)}
        return cols.numeric[:, [pos[n] for n in self._names]]

    def score(self, cols: Columns) -> np.ndarray:
        n = cols.n_rows
        if self.kind == "constant":
            return np.full(n, self.constant, dtype=np.float64)
        num = self._numeric(cols)
        nan = np.isnan(num)
        if nan.any():
            num = np.where(nan, self._fill, num)
        if self.kind == "linear":
            raw = ((num - self._mean) / self._scale) @ self._weight + self.constant
            for c in self.categorical:
                raw += np.asarray(c.encode(cols.categorical[c.name]), dtype=np.float64)
            return _inverse_link(self.link, raw)
        if self.base_row is not None:
            X = np.repeat(self.base_row[None, :], n, axis=0)
        else:
            X = np.zeros((n, self.n_cols), dtype=np.float64)
        X[:, self._cols] = num
        for c in self.categorical:
            X[:, c.col] = c.encode(cols.categorical[c.name])
        if self.float32_inputs:
            X = X.astype(np.float32).astype(np.float64)
        assert self.forest is not None
        values = self.forest.leaves(X)
        if self.kind == "forest_mean":
            return values.sum(axis=1) / values.shape[1]
        return _inverse_link(self.link, self.constant + values.sum(axis=1))


def _expit(raw: np.ndarray) -> np.ndarray:
    from scipy.special import expit  # the function scikit-learn's logit link calls

    return np.asarray(expit(raw), dtype=np.float64)


def _inverse_link(link: str, raw: np.ndarray) -> np.ndarray:
    if link == "identity":
        return raw
    if link == "logit":
        return _expit(raw)
    if link == "log":
        return np.exp(raw)
    raise NotCompilable(f"unknown link {link!r}")


# --- compiling a fitted pipeline ---------------------------------------------------------------------------
def compile_model(model: Any, numeric: Sequence[str], categorical: Sequence[str]) -> CompiledScorer:
    """Rewrite a fitted `ml.models` pipeline as a `CompiledScorer`, or raise `NotCompilable` saying why."""
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline):
        raise NotCompilable(f"not a scikit-learn Pipeline: {type(model).__name__}")
    steps = model.steps
    est = steps[-1][1]
    pre = Pipeline(steps[:-1]) if len(steps) > 1 else None
    numeric, categorical = list(numeric), list(categorical)
    name = type(est).__name__
    if name in ("DummyClassifier", "DummyRegressor"):
        return _compile_dummy(model, est, numeric, categorical)
    if pre is None:
        raise NotCompilable(f"{name} without preprocessing is not a family this compiler knows")
    if name in ("LogisticRegression", "Ridge"):
        return _compile_linear(pre, est, numeric, categorical)
    if name in ("RandomForestClassifier", "RandomForestRegressor"):
        return _compile_forest(pre, est, numeric, categorical)
    if name in ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor"):
        return _compile_boosting(pre, est, numeric, categorical)
    raise NotCompilable(f"no compiled path for {name}")


def _positive_class(est: Any) -> int | None:
    classes = list(getattr(est, "classes_", []))
    if len(classes) > 2:
        raise NotCompilable(f"{len(classes)} classes: only binary classifiers and regressors are compiled")
    return classes.index(1) if 1 in classes else None


def _compile_dummy(model: Any, est: Any, numeric: list[str], categorical: list[str]) -> CompiledScorer:
    # The prior does not look at the row: its score is whatever the model says for any row.
    probe = Columns(1, tuple(numeric), np.zeros((1, len(numeric))), {n: [None] for n in categorical})
    from mlops_assets.ml.models import predict_scores

    value = float(np.asarray(predict_scores(model, probe.to_frame([*numeric, *categorical])))[0])
    if getattr(est, "strategy", None) not in ("prior", "mean"):
        raise NotCompilable(f"{type(est).__name__}(strategy={est.strategy!r}) depends on more than the prior")
    return CompiledScorer(kind="constant", family="baseline", constant=value)


def _reference(numeric: list[str], categorical: list[str], cats: Mapping[str, list[str]]) -> dict[str, Any]:
    ref: dict[str, Any] = {n: 0.0 for n in numeric}
    for n in categorical:
        ref[n] = cats[n][0] if cats[n] else None
    return ref


def _known_categories(pre: Any, categorical: list[str]) -> dict[str, list[str]]:
    """The categories each categorical feature's fitted encoder knows (strings only: a missing value is
    probed on its own)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    ct = pre.steps[-1][1] if isinstance(pre, Pipeline) else pre
    if not isinstance(ct, ColumnTransformer):
        raise NotCompilable(f"preprocessing is {type(ct).__name__}, not a ColumnTransformer")
    found: dict[str, list[str]] = {}
    for _, trans, cols in ct.transformers_:
        if not isinstance(cols, list | tuple) or isinstance(trans, str):
            continue
        enc = trans.steps[-1][1] if isinstance(trans, Pipeline) else trans
        if not hasattr(enc, "categories_"):
            continue
        for i, col in enumerate(cols):
            if col in categorical:
                found[col] = [str(c) for c in enc.categories_[i] if isinstance(c, str)]
    missing = [c for c in categorical if c not in found]
    if missing:
        raise NotCompilable(f"no fitted encoder found for categorical feature(s) {missing}")
    return found


def _probe(
    transform: Any, names: list[str], ref: dict[str, Any], groups: Sequence[tuple[str, list[Any]]]
) -> list[np.ndarray]:
    """The fitted transform's output for each group of probe rows (the reference row with one feature set to
    each of the group's values). Every group goes through one call: a fitted transform works row by row, and
    a call of a ColumnTransformer costs ~15-40 ms whatever its rows, once per feature before."""
    rows = [{**ref, feature: v} for feature, values in groups for v in values]
    out = transform(pd.DataFrame(rows, columns=names))
    if hasattr(out, "toarray"):
        out = out.toarray()
    out = np.asarray(out, dtype=np.float64)
    bounds = np.cumsum([0, *(len(values) for _, values in groups)])
    return [out[a:b] for a, b in itertools.pairwise(bounds)]


def _changed_columns(out: np.ndarray) -> np.ndarray:
    same = np.all((out == out[0]) | (np.isnan(out) & np.isnan(out[0])), axis=0)
    return np.flatnonzero(~same)


def _feature_map(
    transform: Any, numeric: list[str], categorical: list[str], cats: dict[str, list[str]]
) -> tuple[int, list[NumericInput], list[CategoricalInput], np.ndarray]:
    """Where each feature lands in the matrix the trees read, learned by running the fitted transform on
    probe rows that differ in one feature only. A numeric feature must reach one column unchanged (filled
    where missing); a categorical one one column, through a table of its codes."""
    names = [*numeric, *categorical]
    ref = _reference(numeric, categorical, cats)
    groups: list[tuple[str, list[Any]]] = [(names[0], [ref[names[0]]])]
    groups += [(n, [*NUMERIC_PROBES, None]) for n in numeric] + [(c, [*cats[c], None, UNSEEN]) for c in categorical]
    outs = _probe(transform, names, ref, groups)
    base = outs[0][0]
    owner: dict[int, str] = {}
    nums: list[NumericInput] = []
    for n, out in zip(numeric, outs[1 : 1 + len(numeric)], strict=True):
        changed = _changed_columns(out)
        if len(changed) != 1:
            raise NotCompilable(f"numeric feature {n!r} reaches {len(changed)} columns of the model's input")
        col = int(changed[0])
        if not np.array_equal(out[: len(NUMERIC_PROBES), col], np.asarray(NUMERIC_PROBES)):
            raise NotCompilable(f"numeric feature {n!r} is transformed before the trees; only filling is compiled")
        owner[col] = n
        nums.append(NumericInput(n, col, float(out[-1, col])))
    cat_inputs: list[CategoricalInput] = []
    for c, out in zip(categorical, outs[1 + len(numeric) :], strict=True):
        changed = _changed_columns(out)
        if len(changed) == 0:
            continue  # the model cannot tell this feature's values apart
        if len(changed) != 1:
            raise NotCompilable(f"categorical feature {c!r} reaches {len(changed)} columns of the model's input")
        col = int(changed[0])
        owner[col] = c
        codes = out[:, col]
        table = {v: float(codes[i]) for i, v in enumerate(cats[c])}
        cat_inputs.append(CategoricalInput(c, col, table, float(codes[-2]), float(codes[-1])))
    return len(base), nums, cat_inputs, base


def _compile_linear(pre: Any, est: Any, numeric: list[str], categorical: list[str]) -> CompiledScorer:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    classification = type(est).__name__ == "LogisticRegression"
    pos = _positive_class(est) if classification else None
    coef = np.asarray(est.coef_, dtype=np.float64).reshape(-1)
    intercept = float(np.asarray(est.intercept_, dtype=np.float64).reshape(-1)[0])
    if classification and pos is None:
        return CompiledScorer(kind="constant", family="logistic", constant=0.0)
    if classification and pos == 0:
        coef, intercept = -coef, -intercept  # P(1) where class 1 is the "negative" column
    ct = pre.steps[-1][1]
    if not isinstance(ct, ColumnTransformer):
        raise NotCompilable("linear model without a ColumnTransformer")
    # Numeric terms from the fitted imputer and scaler themselves: (fill(x) - mean) / scale * weight.
    nums: list[NumericInput] = []
    used: set[int] = set()
    for tname, trans, cols in ct.transformers_:
        if tname == "remainder" or isinstance(trans, str) or not isinstance(trans, Pipeline):
            continue
        parts = dict(trans.steps)
        imp, scale = parts.get("impute"), parts.get("scale")
        if not (isinstance(imp, SimpleImputer) and isinstance(scale, StandardScaler)):
            continue
        if len(trans.steps) != 2 or any(c not in numeric for c in cols):
            raise NotCompilable(f"numeric transformer {tname!r} has steps this compiler does not know")
        start = ct.output_indices_[tname].start
        for i, c in enumerate(cols):
            mean = float(scale.mean_[i]) if scale.mean_ is not None else 0.0
            sc = float(scale.scale_[i]) if scale.scale_ is not None else 1.0
            nums.append(NumericInput(c, start + i, float(imp.statistics_[i]), mean, sc, float(coef[start + i])))
            used.add(start + i)
    if sorted(n.name for n in nums) != sorted(numeric):
        raise NotCompilable("not every numeric feature goes through an imputer and a scaler")

    # Categorical terms by running the fitted categorical transformer on every known value.
    def transform(frame: pd.DataFrame) -> Any:
        return ct.transform(frame)

    cats = _known_categories(pre, categorical)
    names = [*numeric, *categorical]
    ref = _reference(numeric, categorical, cats)
    groups: list[tuple[str, list[Any]]] = [(names[0], [ref[names[0]]])]
    groups += [(c, [*cats[c], None, UNSEEN]) for c in categorical]
    outs = _probe(transform, names, ref, groups)
    base = outs[0][0]
    cat_inputs: list[CategoricalInput] = []
    for (c, values), out in zip(groups[1:], outs[1:], strict=True):
        changed = _changed_columns(out)
        if used.intersection(changed.tolist()):
            raise NotCompilable(f"categorical feature {c!r} changes a numeric column")
        terms = out[:, changed] @ coef[changed] if len(changed) else np.zeros(len(values))
        # columns the feature can move are its own: count them once, from the probe, not from `base`
        used.update(int(k) for k in changed)
        table = {v: float(terms[i]) for i, v in enumerate(cats[c])}
        cat_inputs.append(CategoricalInput(c, -1, table, float(terms[-2]), float(terms[-1])))
    rest = [k for k in range(len(base)) if k not in used]
    constant = intercept + float(base[rest] @ coef[rest]) if rest else intercept
    return CompiledScorer(
        kind="linear",
        family="logistic" if classification else "ridge",
        numeric=tuple(nums),
        categorical=tuple(cat_inputs),
        constant=constant,
        link="logit" if classification else "identity",
    )


def _compile_forest(pre: Any, est: Any, numeric: list[str], categorical: list[str]) -> CompiledScorer:
    classification = hasattr(est, "classes_")
    pos = _positive_class(est) if classification else None
    if classification and pos is None:
        return CompiledScorer(kind="constant", family="random_forest", constant=0.0)
    cats = _known_categories(pre, categorical)
    n_cols, nums, cat_inputs, base = _feature_map(pre.transform, numeric, categorical, cats)
    trees = []
    for tree in est.estimators_:
        t = tree.tree_
        leaf = t.children_left == -1
        value = np.asarray(t.value, dtype=np.float64)
        if classification:
            totals = value[:, 0, :].sum(axis=1)
            totals[totals == 0] = 1.0
            v = value[:, 0, pos] / totals
        else:
            if value.shape[1] != 1:
                raise NotCompilable("multi-output regression is not compiled")
            v = value[:, 0, 0]
        trees.append(
            {
                "feature": t.feature,
                "threshold": t.threshold,
                "left": t.children_left,
                "right": t.children_right,
                "missing_left": np.asarray(getattr(t, "missing_go_to_left", np.zeros(len(leaf))), dtype=bool),
                "is_leaf": leaf,
                "value": v,
            }
        )
    return CompiledScorer(
        kind="forest_mean",
        family="random_forest",
        n_cols=n_cols,
        numeric=tuple(nums),
        categorical=tuple(cat_inputs),
        forest=_pack(trees),
        float32_inputs=True,
        base_row=base,
        details={"trees": len(trees)},
    )


def _compile_boosting(pre: Any, est: Any, numeric: list[str], categorical: list[str]) -> CompiledScorer:
    classification = hasattr(est, "classes_")
    pos = _positive_class(est) if classification else None
    if classification and pos is None:
        return CompiledScorer(kind="constant", family="hist_gradient_boosting", constant=0.0)
    if est.n_trees_per_iteration_ != 1:
        raise NotCompilable("multiclass boosting is not compiled")
    inner = getattr(est, "_preprocessor", None)

    def transform(frame: pd.DataFrame) -> Any:
        X = pre.transform(frame)
        return inner.transform(X) if inner is not None else X

    link = {"IdentityLink": "identity", "LogitLink": "logit", "LogLink": "log"}.get(type(est._loss.link).__name__)
    if link is None:
        raise NotCompilable(f"boosting loss with a {type(est._loss.link).__name__} is not compiled")
    cats = _known_categories(pre, categorical)
    n_cols, nums, cat_inputs, base = _feature_map(transform, numeric, categorical, cats)
    known, f_idx_map = est._bin_mapper.make_known_categories_bitsets()
    codes = np.arange(256)
    trees = []
    for predictors in est._predictors:
        p = predictors[0]
        nodes = p.nodes
        leaf = nodes["is_leaf"].astype(bool)
        is_cat = nodes["is_categorical"].astype(bool)
        t: dict[str, np.ndarray] = {
            "feature": nodes["feature_idx"],
            "threshold": nodes["num_threshold"],
            "left": nodes["left"],
            "right": nodes["right"],
            "missing_left": nodes["missing_go_to_left"].astype(bool),
            "is_leaf": leaf,
            "value": nodes["value"],
            "is_categorical": is_cat,
        }
        # Per categorical split, the side every code 0..255 takes: left if in the split's bitset, right if
        # a known category, else (an unknown code) the side missing values take, as `_predictor.pyx` does.
        table = np.zeros((len(nodes), 256), dtype=bool)
        bitsets = p.raw_left_cat_bitsets
        for i in np.flatnonzero(is_cat & ~leaf):
            in_left = (bitsets[nodes["bitset_idx"][i], codes // 32] >> (codes % 32)) & 1
            fk = known[f_idx_map[nodes["feature_idx"][i]]]
            in_known = (fk[codes // 32] >> (codes % 32)) & 1
            missing_side = bool(nodes["missing_go_to_left"][i])
            table[i] = np.where(in_left == 1, True, np.where(in_known == 1, False, missing_side))
        t["cat_left"] = table
        trees.append(t)
    if not any((t["is_categorical"] & ~t["is_leaf"]).any() for t in trees):
        for t in trees:
            t.pop("cat_left")
    baseline = float(np.asarray(est._baseline_prediction, dtype=np.float64).reshape(-1)[0])
    return CompiledScorer(
        kind="boosting",
        family="hist_gradient_boosting",
        n_cols=n_cols,
        numeric=tuple(nums),
        categorical=tuple(cat_inputs),
        constant=baseline,
        link=link,
        forest=_pack(trees),
        base_row=base,
        details={"trees": len(trees)},
    )


# --- proving it --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proof:
    """The outcome of scoring the same rows with both paths."""

    compiled: CompiledScorer | None
    rows: int
    max_abs_diff: float | None
    reason: str  # empty when the compiled scorer may serve

    @property
    def ok(self) -> bool:
        return self.compiled is not None and not self.reason

    def tags(self) -> dict[str, str]:
        return {
            SCORER_TAG: "compiled" if self.ok else "plain",
            SCORER_REASON_TAG: self.reason[:500],
            SCORER_DIFF_TAG: "" if self.max_abs_diff is None else f"{self.max_abs_diff:.3e}",
            SCORER_ROWS_TAG: str(self.rows),
        }


def probe_rows(
    scorer: CompiledScorer, numeric: Sequence[str], categorical: Sequence[str], n: int = 256
) -> pd.DataFrame:
    """Rows that exercise every branch the compiler built: each known category, a missing and an unseen
    value of each categorical feature; missing, zero and the thresholds' neighbourhood for numeric ones.
    Used where no hold-out is at hand (a version registered before this check existed)."""
    rng = np.random.default_rng(0)
    thresholds: dict[int, np.ndarray] = {}
    if scorer.forest is not None:
        f = scorer.forest
        split = np.isfinite(f.threshold)
        for col in np.unique(f.feature[split]):
            thresholds[int(col)] = f.threshold[split & (f.feature == col)]
    data: dict[str, list[Any]] = {}
    for num in scorer.numeric:
        pool = thresholds.get(num.col, np.array([num.mean - num.scale, num.mean, num.mean + num.scale]))
        picks = rng.choice(pool, size=n) + rng.choice([-1e-3, 0.0, 1e-3], size=n)
        values: list[Any] = picks.tolist()
        for i in rng.choice(n, size=max(1, n // 10), replace=False):
            values[int(i)] = None
        data[num.name] = values
    for c in scorer.categorical:
        choices: list[Any] = [*c.table, None, UNSEEN[1:-1]]
        data[c.name] = [choices[int(i)] for i in rng.integers(0, len(choices), size=n)]
    for name in numeric:
        data.setdefault(name, rng.normal(size=n).tolist())
    for name in categorical:
        data.setdefault(name, [None] * n)
    frame = pd.DataFrame(data, columns=[*numeric, *categorical])
    for name in numeric:
        frame[name] = frame[name].astype("float64")
    return frame


def prove(
    model: Any, frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str], *, probes: bool = True
) -> Proof:
    """Compile `model` and score `frame` (plus probe rows) both ways; the compiled scorer may serve only if
    every score matches within `TOLERANCE` (missing where sklearn's is missing)."""
    from mlops_assets.ml.models import predict_scores

    try:
        compiled = compile_model(model, numeric, categorical)
    except NotCompilable as exc:
        return Proof(None, 0, None, f"not compilable: {exc}")
    except Exception as exc:  # an unexpected shape of a fitted object: plain path, with the reason
        return Proof(None, 0, None, f"not compilable: {type(exc).__name__}: {exc}")
    names = [*numeric, *categorical]
    parts = [frame[names]]
    if probes:
        parts.append(probe_rows(compiled, numeric, categorical))
    rows = pd.concat(parts, ignore_index=True)
    expected = np.asarray(predict_scores(model, rows), dtype=np.float64)
    try:
        got = compiled.score(Columns.from_frame(rows, numeric, categorical))
    except Exception as exc:
        return Proof(compiled, len(rows), None, f"compiled scorer failed: {type(exc).__name__}: {exc}")
    both_nan = np.isnan(expected) & np.isnan(got)
    diff = np.where(both_nan, 0.0, np.abs(expected - got))
    worst = float(np.nanmax(diff)) if len(diff) else 0.0
    if np.isnan(diff).any():
        worst = math.inf
    if worst > TOLERANCE:
        return Proof(compiled, len(rows), worst, f"compiled scores differ from scikit-learn's by {worst:.3e}")
    return Proof(compiled, len(rows), worst, "")


def registration_tags(
    model: Any, holdout: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]
) -> dict[str, str]:
    """The version tags saying how this model will be served, proven on the gate's own hold-out (and probe
    rows that reach every branch): `mlops.scorer` is `compiled` only when every score matched."""
    return prove(model, holdout, numeric, categorical).tags()
