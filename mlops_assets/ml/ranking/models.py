"""Recommenders: popularity, item-item cosine KNN (the bandage), EASE and implicit ALS, one class.

One class with a `family` keeps the artifact to a single trusted type for skops (models are never pickled):
every fitted state is a numpy array of numbers or fixed-width strings, which skops stores as `.npy`. The
fitted object answers one question, `scores(history)`: a history is a sparse user x item matrix of weights
over the model's catalogue (the items it saw in training); items born after the fit are unknown to its
collaborative state, which is what retraining fixes. What is counted rather than learnt (popularity, a
blend's recent shares) is counted on the day served instead (`live_catalogue`), new items included.

Training rows are interactions (user, item, event time) within `window_days` before the cut-off, each
weighted by 0.5 ** (age / half_life_days) when a recency half-life is set: the two knobs the tabular sweep
also searches ("which history to learn from").
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

FAMILIES = ("popularity", "item_knn", "ease", "als")
USER, ITEM, TIME = "user", "item", "event_time"  # the columns `fit` and `history_matrix` read
SKOPS_TRUSTED_TYPES = ["mlops_assets.ml.ranking.models.Recommender"]
POPULARITY_TIE_BREAK = 1e-6  # popularity added to every score: ties and unscored items fall back to it
# what `fit` learns, shared (never copied) by a blended twin; `prior` is the twin's own
FITTED_STATE = (
    "item_ids",
    "popularity",
    "n_train",
    "cutoff",
    "neighbour_idx",
    "neighbour_sim",
    "weights",
    "item_factors",
)
MAX_ITEMS = 20_000  # dense item x item state (KNN, EASE): beyond this, keep the most popular items


def recency_weights(times: pd.Series, cutoff: pd.Timestamp, half_life_days: float | None) -> np.ndarray:
    """0.5 ** (age in days / half-life) relative to the cut-off; 1 everywhere without a half-life."""
    if not half_life_days:
        return np.ones(len(times))
    age = (cutoff - pd.to_datetime(times)).dt.total_seconds().to_numpy() / 86400.0
    return np.power(0.5, np.clip(age, 0.0, None) / float(half_life_days))


def window(interactions: pd.DataFrame, cutoff: pd.Timestamp, window_days: int | None) -> pd.DataFrame:
    """Interactions strictly before `cutoff` and, with a window, within its last `window_days` days."""
    t = pd.to_datetime(interactions[TIME])
    keep = t < cutoff
    if window_days:
        keep &= t >= cutoff - pd.Timedelta(days=int(window_days))
    return interactions[keep]


@dataclass(frozen=True)
class LiveCatalogue:
    """What a counting model scores on the day it serves (`Recommender.live_catalogue`): the items and their
    shares, taken from the interactions before that day, like a user's history."""

    item_ids: np.ndarray
    prior: np.ndarray

    @cached_property
    def index(self) -> dict[str, int]:
        """Item id -> column, for the online path (built once per catalogue, never by the batch lists)."""
        return {str(x): i for i, x in enumerate(self.item_ids)}


def _weighted_counts(
    rows: pd.DataFrame, cutoff: pd.Timestamp, half_life_days: float | None, w: np.ndarray | None = None
) -> pd.Series:
    """Each item's recency-weighted interactions, most popular first, the catalogue capped at `MAX_ITEMS`."""
    if w is None:
        w = recency_weights(rows[TIME], cutoff, half_life_days)
    pop = pd.Series(w, index=rows[ITEM].astype(str).to_numpy()).groupby(level=0).sum().sort_values(ascending=False)
    return pop.head(MAX_ITEMS)


def _shares(counts: pd.Series, ids: np.ndarray | None = None) -> np.ndarray:
    """`counts` (over `ids`, 0 where absent) as shares summing to 1, float32 as the artifact stores them."""
    values = (counts if ids is None else counts.reindex(ids, fill_value=0)).to_numpy(dtype=np.float64)
    return (values / max(float(values.sum()), 1e-12)).astype(np.float32)


class Recommender:
    """A fitted recommender of one family; `params` holds its hyper-parameters as the sweep chose them."""

    def __init__(
        self,
        family: str,
        params: Mapping[str, Any] | None = None,
        *,
        window_days: int | None = None,
        half_life_days: float | None = None,
        seed: int = 0,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown ranking family {family!r}; known: {', '.join(FAMILIES)}")
        self.family = family
        self.params = {k: (float(v) if isinstance(v, float) else v) for k, v in dict(params or {}).items()}
        self.window_days = int(window_days) if window_days else None
        self.half_life_days = float(half_life_days) if half_life_days else None
        self.seed = int(seed)
        self.item_ids = np.array([], dtype=str)
        self.popularity = np.zeros(0, dtype=np.float32)
        self.n_train = 0
        self.cutoff = ""
        # family state: KNN neighbours, EASE weights, ALS item factors (empty arrays when unused)
        self.neighbour_idx = np.zeros((0, 0), dtype=np.int32)
        self.neighbour_sim = np.zeros((0, 0), dtype=np.float32)
        self.weights = np.zeros((0, 0), dtype=np.float32)
        self.item_factors = np.zeros((0, 0), dtype=np.float32)
        # recent popularity blended into a collaborative model's scores (`blend` > 0; see `_fit_prior`)
        self.prior = np.zeros(0, dtype=np.float32)

    # --- fit -------------------------------------------------------------------------------------------------
    def fit(self, interactions: pd.DataFrame, cutoff: pd.Timestamp) -> Recommender:
        """Learn from interactions before `cutoff` (within the window, recency-weighted)."""
        rows = window(interactions, cutoff, self.window_days)
        w = recency_weights(rows[TIME], cutoff, self.half_life_days)
        self.cutoff = str(pd.Timestamp(cutoff))
        self.n_train = len(rows)
        pop = _weighted_counts(rows, cutoff, self.half_life_days, w)
        self.item_ids = np.asarray(pop.index, dtype=str)
        self.popularity = _shares(pop)
        if self.family == "popularity" or len(self.item_ids) == 0:
            return self
        if self.blends:
            self._fit_prior(interactions, cutoff)
        users = rows[USER].astype(str).to_numpy()
        uidx, _ = pd.factorize(users)
        iidx = pd.Index(self.item_ids).get_indexer(rows[ITEM].astype(str).to_numpy())
        ok = iidx >= 0
        X = sp.csr_matrix(
            (w[ok], (uidx[ok], iidx[ok])), shape=(int(uidx.max()) + 1 if len(uidx) else 0, len(self.item_ids))
        )
        X.sum_duplicates()
        if self.params.get("binary", True) and self.family != "als":
            X.data = np.minimum(X.data, 1.0)  # a repeated interaction counts once (recency weight kept)
        getattr(self, f"_fit_{self.family}")(X)
        return self

    def blended(self, interactions: pd.DataFrame, blend: float, blend_window: int) -> Recommender:
        """This fitted model with recent popularity blended in: the same collaborative state (a blend changes
        the scoring, not the fit), the prior taken at the model's own cut-off."""
        twin = Recommender(
            self.family,
            {**self.params, "blend": float(blend), "blend_window": int(blend_window)},
            window_days=self.window_days,
            half_life_days=self.half_life_days,
            seed=self.seed,
        )
        for name in FITTED_STATE:
            setattr(twin, name, getattr(self, name))
        twin._fit_prior(interactions, pd.Timestamp(self.cutoff))
        return twin

    def _fit_prior(self, interactions: pd.DataFrame, cutoff: pd.Timestamp) -> None:
        """What the catalogue's items drew in the last `blend_window` days, as shares. On a split by time a
        collaborative model knows what a user liked and recent popularity knows what is in fashion now
        (MovieLens: popularity of the last 30 days beats item-KNN and EASE refit daily); a blend asks both."""
        recent = window(interactions, cutoff, self.live_window_days)
        self.prior = _shares(recent[ITEM].astype(str).value_counts(), self.item_ids)

    @property
    def blends(self) -> bool:
        return self.family != "popularity" and float(self.params.get("blend", 0.0)) > 0

    @property
    def counts_live(self) -> bool:
        """Whether `live_catalogue` has something to count on the day served (popularity, a blend)."""
        return self.family == "popularity" or self.blends

    @property
    def live_window_days(self) -> int | None:
        """The days before the day served that `live_catalogue` counts (None: all of them)."""
        return self.window_days if self.family == "popularity" else int(self.params.get("blend_window", 30))

    def live_catalogue(self, interactions: pd.DataFrame, as_of: pd.Timestamp | None) -> LiveCatalogue | None:
        """What the model counts on the day served, from the interactions before it: for popularity its whole
        state (the window's recency-weighted counts, exactly what a refit that morning would learn), for a blend
        its recent shares; None for any other model, or without a day.

        Counting the last days' interactions is a query, not a fit, so it is done where the model serves and
        never goes stale between refits. On MovieLens a popularity champion refit only when staleness paid
        for it went ten weeks unrefit and served two weeks at 0.2216 and 0.1111 NDCG@10 (refit daily: 0.2589
        and 0.1803);
        with weekly refits a blend's prior taken each morning serves 0.2137 against 0.2098 frozen at the fit
        (popularity of the last 30 days refit every morning: 0.2086). Films born since the fit are scored too."""
        if as_of is None or not self.counts_live:
            return None
        as_of = pd.Timestamp(as_of)
        rows = window(interactions, as_of, self.live_window_days)
        if self.family == "popularity":
            counts = _weighted_counts(rows, as_of, self.half_life_days)
            ids = np.asarray(counts.index, dtype=str)
        else:
            counts = rows[ITEM].astype(str).value_counts()
            new = counts.index[~counts.index.isin(self.item_ids)]
            ids = np.concatenate([self.item_ids, np.asarray(new, dtype=str)]) if len(new) else self.item_ids
        return LiveCatalogue(ids, _shares(counts, ids))

    def _fit_item_knn(self, X: sp.csr_matrix) -> None:
        """Item-item cosine over the users' interaction vectors, the `neighbours` most similar kept per item;
        `shrink` damps similarities supported by few common users."""
        k = int(self.params.get("neighbours", 50))
        shrink = float(self.params.get("shrink", 0.0))
        G = (X.T @ X).toarray().astype(np.float64)
        norms = np.sqrt(np.clip(np.diag(G), 1e-12, None))
        S = G / (np.outer(norms, norms) + shrink)
        np.fill_diagonal(S, 0.0)
        k = max(1, min(k, S.shape[0] - 1)) if S.shape[0] > 1 else 1
        idx = (
            np.argpartition(-S, kth=min(k, S.shape[1]) - 1, axis=1)[:, :k]
            if S.shape[1] > k
            else np.tile(np.arange(S.shape[1]), (S.shape[0], 1))
        )
        self.neighbour_idx = idx.astype(np.int32)
        self.neighbour_sim = np.take_along_axis(S, idx, axis=1).astype(np.float32)

    def _fit_ease(self, X: sp.csr_matrix) -> None:
        """EASE (Steck 2019): B = I - P diagMat(1 / diag(P)), P = (X'X + lambda I)^-1, diag(B) = 0."""
        lam = float(self.params.get("l2", 500.0))
        G = (X.T @ X).toarray().astype(np.float64)
        G[np.diag_indices_from(G)] += lam
        P = np.linalg.inv(G)
        B = -P / np.diag(P)[None, :]
        np.fill_diagonal(B, 0.0)
        self.weights = B.astype(np.float32)

    def _fit_als(self, X: sp.csr_matrix) -> None:
        """Implicit-feedback ALS (Hu, Koren & Volinsky 2008): confidence 1 + alpha * weight, preference 1 where
        a user interacted, solved exactly user by user and item by item."""
        f = int(self.params.get("factors", 32))
        reg = float(self.params.get("regularization", 0.05))
        alpha = float(self.params.get("alpha", 10.0))
        iters = int(self.params.get("iterations", 10))
        rng = np.random.default_rng(self.seed)
        n_users, n_items = X.shape
        U = rng.normal(0, 0.01, size=(n_users, f))
        V = rng.normal(0, 0.01, size=(n_items, f))
        C = X.tocsr().astype(np.float64)
        Ct = C.T.tocsr()
        for _ in range(iters):
            U = _als_solve(C, V, reg, alpha)
            V = _als_solve(Ct, U, reg, alpha)
        self.item_factors = V.astype(np.float32)

    # --- score -----------------------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def scores(self, history: sp.csr_matrix, prior: np.ndarray | None = None) -> np.ndarray:
        """Scores of every catalogue item for each history row (users x items); users with no history get
        the popularity of the training window. With a live `prior` (a blend's recent shares as of the day
        served, `live_catalogue`) the history may be wider than the catalogue: the columns past it are items
        born after the fit, which only the prior can score."""
        n, width, m = history.shape[0], history.shape[1], self.n_items
        if self.family == "popularity":  # a live prior is the whole model as of the day served
            pop = (self.popularity if prior is None else prior).astype(np.float64)
            if pop.size == 0:
                return np.zeros((n, width))
            return np.tile(pop + POPULARITY_TIE_BREAK * pop / max(float(pop.max()), 1e-12), (n, 1))
        if m == 0:
            return np.zeros((n, width))
        if width > m:
            history = history[:, :m]
        pop = self.popularity.astype(np.float64)
        if self.family == "item_knn":
            out = np.asarray((history @ _neighbour_matrix(self)).todense())
        elif self.family == "ease":
            # float32 on both sides: an upcast would copy the item x item matrix on every call
            out = np.asarray(history.astype(np.float32) @ self.weights, dtype=np.float64)
        else:
            V = self.item_factors.astype(np.float64)
            U = _als_solve(
                history.tocsr().astype(np.float64),
                V,
                float(self.params.get("regularization", 0.05)),
                float(self.params.get("alpha", 10.0)),
            )
            out = U @ V.T
        if width > m:
            out = np.hstack([out, np.zeros((n, width - m))])
            pop = np.concatenate([pop, np.zeros(width - m)])
        cold = np.asarray(history.getnnz(axis=1) == 0)
        if prior is None:
            prior = getattr(self, "prior", None)  # absent from a model saved before blends existed
        if prior is not None and prior.size:
            # each user's collaborative scores on [0, 1] (their best item 1), plus blend x the recent share on
            # the same scale: the weight says how much fashion counts against taste
            top = out.max(axis=1, keepdims=True)
            recent = prior.astype(np.float64) / max(float(prior.max()), 1e-12)
            out = out / np.where(top > 0, top, 1.0) + float(self.params.get("blend", 0.0)) * recent[None, :]
            pop = recent  # a user with no history gets what is in fashion now
        out = out + POPULARITY_TIE_BREAK * pop[None, :] / max(float(pop.max()), 1e-12)
        out[cold] = pop
        return out

    def recommend(
        self, history: sp.csr_matrix, k: int, exclude_seen: bool = True, prior: np.ndarray | None = None
    ) -> np.ndarray:
        """Top-k column indices per history row, best first; items in the history are never recommended."""
        s = self.scores(history, prior)
        if exclude_seen and history.nnz:
            h = history.tocoo()
            s[h.row, h.col] = -np.inf
        k = min(k, s.shape[1])
        if k == 0:
            return np.zeros((s.shape[0], 0), dtype=np.int64)
        top = np.argpartition(-s, kth=k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)

    def describe(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.family}({p}) window={self.window_days or 'all'} half_life={self.half_life_days or 'none'}"


_NEIGHBOURS: weakref.WeakKeyDictionary[Recommender, sp.csr_matrix] = weakref.WeakKeyDictionary()


def _neighbour_matrix(model: Recommender) -> sp.csr_matrix:
    """The KNN's neighbour lists as a sparse item x item matrix, built once per loaded model (kept beside the
    model, not in it, so the artifact stays exactly what was fitted)."""
    S = _NEIGHBOURS.get(model)
    if S is None:
        S = sp.csr_matrix(
            (
                model.neighbour_sim.ravel().astype(np.float64),
                model.neighbour_idx.ravel(),
                np.arange(0, model.neighbour_idx.size + 1, model.neighbour_idx.shape[1]),
            ),
            shape=(model.n_items, model.n_items),
        )
        _NEIGHBOURS[model] = S
    return S


def _als_solve(C: sp.csr_matrix, Y: np.ndarray, reg: float, alpha: float) -> np.ndarray:
    """Each row's factors given the other side's `Y`: (Y'Y + Y_u'(C_u - I)Y_u + reg I) x = Y_u' C_u p_u."""
    f = Y.shape[1]
    YtY = Y.T @ Y + reg * np.eye(f)
    out = np.zeros((C.shape[0], f))
    indptr, indices, data = C.indptr, C.indices, C.data
    for u in range(C.shape[0]):
        lo, hi = indptr[u], indptr[u + 1]
        if lo == hi:
            continue
        Yu = Y[indices[lo:hi]]
        conf = 1.0 + alpha * data[lo:hi]
        A = YtY + (Yu.T * (conf - 1.0)) @ Yu
        out[u] = np.linalg.solve(A, Yu.T @ conf)
    return out


def history_matrix(
    model: Recommender,
    interactions: pd.DataFrame,
    users: Sequence[str],
    item_ids: np.ndarray | None = None,
) -> sp.csr_matrix:
    """The users' histories over the model's catalogue, or over `item_ids` (a live catalogue), 1 per item
    interacted with; other items are dropped: what the model scores. Rows follow `users`."""
    ids = model.item_ids if item_ids is None else item_ids
    uindex = pd.Index([str(u) for u in users])
    rows = interactions[interactions[USER].astype(str).isin(uindex)]
    r = uindex.get_indexer(rows[USER].astype(str).to_numpy())
    c = pd.Index(ids).get_indexer(rows[ITEM].astype(str).to_numpy())
    ok = c >= 0
    M = sp.csr_matrix((np.ones(int(ok.sum())), (r[ok], c[ok])), shape=(len(uindex), len(ids)))
    M.sum_duplicates()
    M.data = np.minimum(M.data, 1.0)
    return M


def recommend_ids(
    model: Recommender,
    interactions: pd.DataFrame,
    users: Sequence[str],
    k: int,
    as_of: Any = None,
) -> list[list[str]]:
    """Each user's top-k item ids given the interactions before `as_of` (the day served), seen items
    excluded. A popularity or blended model counts its window as of that day (`live_catalogue`)."""
    if not len(users):
        return []
    live = model.live_catalogue(interactions, None if as_of is None else pd.Timestamp(as_of))
    ids = model.item_ids if live is None else live.item_ids
    top = model.recommend(
        history_matrix(model, interactions, users, ids), k, prior=None if live is None else live.prior
    )
    return [[str(x) for x in ids[row]] for row in top]


# The bandage: what serves from the first day of data, until the pipeline finds better. Item-item cosine over
# every interaction so far, 50 neighbours kept per item, popularity for users with no history.
BANDAGE_FAMILY = "item_knn"
BANDAGE_PARAMS: dict[str, Any] = {"neighbours": 50, "shrink": 0.0}


def fit_bandage(interactions: pd.DataFrame, cutoff: pd.Timestamp) -> Recommender:
    return Recommender(BANDAGE_FAMILY, BANDAGE_PARAMS).fit(interactions, cutoff)


def log_recommender(model: Recommender, *, name: str) -> Any:
    """Log to the active MLflow run with skops (never pickle), trusting exactly the recommender's type (its
    state is numpy arrays and plain values, which skops trusts already)."""
    import mlflow

    from mlops_assets.ml.models import SKOPS_TRUSTED_TYPES as TABULAR_TYPES
    from mlops_assets.ml.models import pip_requirements

    return mlflow.sklearn.log_model(
        model,
        name=name,
        serialization_format="skops",
        skops_trusted_types=[*TABULAR_TYPES, *SKOPS_TRUSTED_TYPES],
        pip_requirements=pip_requirements(),
    )


_INDEX: weakref.WeakKeyDictionary[Recommender, dict[str, int]] = weakref.WeakKeyDictionary()


def _catalogue_index(model: Recommender) -> dict[str, int]:
    """Item id -> column of the model's own catalogue, built once per loaded model."""
    index = _INDEX.get(model)
    if index is None:
        index = {str(x): i for i, x in enumerate(model.item_ids)}
        _INDEX[model] = index
    return index


def recommend_for_user(
    model: Recommender, items: Sequence[str], k: int, live: LiveCatalogue | None = None
) -> list[str]:
    """One user's top k from the items they interacted with: the online path, without the frames and indexes
    `recommend_ids` builds for a batch (the catalogue's index is built once per loaded model, a live
    catalogue's once per reload of the histories)."""
    if live is not None:
        ids, index, prior = live.item_ids, live.index, live.prior
    else:
        ids, index, prior = model.item_ids, _catalogue_index(model), None
    cols = sorted({index[x] for x in items if x in index})
    hist = sp.csr_matrix((np.ones(len(cols)), (np.zeros(len(cols), dtype=np.int64), cols)), shape=(1, len(ids)))
    return [str(x) for x in ids[model.recommend(hist, k, prior=prior)[0]]]
