"""`GET /recommend/{user_id}?k=`: the champion recommender's top k for one user, next to the prediction
endpoints of the same service.

The list is the one `batch_predictions` would serve: the model the `champion` alias names (swapped between
requests by the service's watcher, never during one), scoring the user's interactions so far read from the
feature store, items the user already interacted with excluded. A user the store has never seen is a cold
start and gets the popular items of the model's training window (popularity and a blend count their window as
of today, as the batch lists do). The answer names the model version.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import duckdb
import pandas as pd
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from mlops_assets.config import DatasetSpec
from mlops_assets.ml.ranking.models import ITEM, TIME, LiveCatalogue, Recommender, recommend_for_user
from mlops_assets.serving.model_watcher import ChampionWatcher
from mlops_assets.storage.feature_sql import EVERYTHING, FeatureStoreApi, _q
from mlops_assets.storage.feature_store import FeatureStore, is_lock_error

MAX_K = 100
LOCK_WAIT_SECONDS = 1.0


class RecommendedItem(BaseModel):
    rank: int
    item: str


class RecommendResponse(BaseModel):
    model_name: str
    model_version: str
    user_id: str
    k: int
    cold_start: bool
    history_items: int
    items: list[RecommendedItem]


def _query(store: FeatureStoreApi, sql: str, lock_wait: float) -> list[tuple[Any, ...]]:
    """Rows of `sql` over the feature store, waiting briefly for the pipeline's writer on the DuckDB file;
    past the wait the client gets a 503 to retry, never a request held for a write."""
    if isinstance(store, FeatureStore) and not store.path.exists():
        raise HTTPException(503, f"no feature store at {store.path} yet: materialize the features first")
    deadline, delay = time.monotonic() + lock_wait, 0.02
    while True:
        try:
            with store._reading(features=EVERYTHING) as con:  # type: ignore[attr-defined]
                return con.execute(sql).fetchall()
        except duckdb.CatalogException as exc:
            raise HTTPException(503, f"the feature store has no interactions yet ({exc})") from exc
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not is_lock_error(exc) or time.monotonic() >= deadline:
                raise HTTPException(503, f"the feature store is busy ({exc}); retry shortly") from exc
            time.sleep(delay)
            delay *= 2


def all_histories(spec: DatasetSpec, store: FeatureStoreApi, lock_wait: float) -> dict[str, list[str]]:
    """Every user's items so far."""
    assert spec.ranking is not None
    user, item = _q(spec.ranking.user), _q(spec.ranking.item)
    sql = (
        f"SELECT CAST({user} AS VARCHAR) AS u, list(DISTINCT CAST({item} AS VARCHAR)) AS items FROM features GROUP BY 1"
    )
    return {str(u): list(items) for u, items in _query(store, sql, lock_wait)}


def recent_interactions(spec: DatasetSpec, store: FeatureStoreApi, lock_wait: float, days: int | None) -> pd.DataFrame:
    """The items and times of the last `days` days of interactions (None: all), which a popularity or blended
    champion counts (`Recommender.live_catalogue`) as the batch lists do."""
    assert spec.ranking is not None
    item = _q(spec.ranking.item)
    sql = f"SELECT CAST({item} AS VARCHAR), event_time FROM features"
    if days is not None:
        sql += f" WHERE event_day > (SELECT max(event_day) FROM features) - INTERVAL {int(days)} DAY"
    rows = _query(store, sql, lock_wait)
    return pd.DataFrame(
        {ITEM: [r[0] for r in rows], TIME: pd.to_datetime(pd.Series([r[1] for r in rows], dtype=object))}
    )


class HistoryIndex:
    """Users' histories in memory, reloaded when the store changes: a DuckDB file connection costs 100+ ms
    (more while the pipeline writes), which no per-request latency budget affords. The DuckDB file is checked
    by its modification time at most every `check_seconds`; another backend is reloaded on that period. A
    champion's live catalogue (what popularity or a blend counts, as of the day after the newest interaction)
    is built once per reload and model."""

    def __init__(self, spec: DatasetSpec, store: FeatureStoreApi, lock_wait: float, check_seconds: float = 1.0):
        self.spec, self.store, self.lock_wait, self.check_seconds = spec, store, lock_wait, check_seconds
        self._histories: dict[str, list[str]] | None = None
        self._live: tuple[Recommender, LiveCatalogue | None] | None = None
        self._stamp: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def _version(self) -> float:
        if isinstance(self.store, FeatureStore):
            return max(
                (
                    p.stat().st_mtime
                    for p in (self.store.path, self.store.path.with_suffix(".duckdb.wal"))
                    if p.exists()
                ),
                default=0.0,
            )
        return time.monotonic() // max(self.check_seconds, 1e-3)

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._histories is None or now - self._checked >= self.check_seconds:
            self._checked = now
            stamp = self._version()
            if self._histories is None or stamp != self._stamp:
                self._histories = all_histories(self.spec, self.store, self.lock_wait)
                self._live = None
                self._stamp = stamp

    def items_of(self, user_id: str) -> list[str]:
        with self._lock:
            self._refresh()
            assert self._histories is not None
            return self._histories.get(user_id, [])

    def live_catalogue(self, model: Recommender) -> LiveCatalogue | None:
        """What `model` counts today (popularity, a blend's shares), as of the day after the newest interaction;
        None for a model that counts nothing."""
        with self._lock:
            self._refresh()
            if self._live is not None and self._live[0] is model:
                return self._live[1]
            live = None
            if model.counts_live:
                recent = recent_interactions(self.spec, self.store, self.lock_wait, model.live_window_days)
                if len(recent):
                    as_of = pd.Timestamp(recent[TIME].max()).normalize() + pd.Timedelta(days=1)
                    live = model.live_catalogue(recent, as_of)
            self._live = (model, live)
            return live


def recommend_router(
    spec: DatasetSpec, watcher: ChampionWatcher, store: FeatureStoreApi, lock_wait: float = LOCK_WAIT_SECONDS
) -> APIRouter:
    """The recommender's endpoint for the service of `spec` (a ranking spec; any other answers 404)."""
    router = APIRouter(tags=["recommend"])
    index = HistoryIndex(spec, store, lock_wait)

    @router.get("/recommend/{user_id}", response_model=RecommendResponse)
    def recommend(user_id: str, k: int = Query(10, ge=1, le=MAX_K)) -> Any:
        """The champion's top k for `user_id`, seen items excluded; cold-start users get popular items."""
        if spec.task != "ranking":
            raise HTTPException(404, f"{spec.name} is a {spec.task} dataset, not a recommender: use /predict")
        served = watcher.current
        if served is None:
            raise HTTPException(
                503, "no model loaded yet" + (f": {watcher.status.error}" if watcher.status.error else "")
            )
        model = served.model
        if not isinstance(model, Recommender):
            raise HTTPException(500, f"model v{served.version} is not a recommender ({type(model).__name__})")
        seen = index.items_of(user_id)
        items = recommend_for_user(model, seen, k, index.live_catalogue(model))
        return RecommendResponse(
            model_name=served.name,
            model_version=served.version,
            user_id=user_id,
            k=k,
            cold_start=not seen,
            history_items=len(seen),
            items=[RecommendedItem(rank=i + 1, item=x) for i, x in enumerate(items)],
        )

    return router
