"""The online prediction service: scores from whatever model the registry's `champion` alias names.

A `ChampionWatcher` follows the alias and swaps models between requests, never during one: every handler
reads the served (version, model) pair once and answers with that version's name beside its scores, so a
client can always tell which model produced what it got. Inputs are checked against the dataset spec, the
same contract the training pipeline uses, so a client sending a misspelt or missing feature gets a 422 that
names it instead of a silently imputed score. Lookups by entity read the DuckDB feature store read-only, one
short connection per request, because the pipeline (another process) writes to the same file and DuckDB
lets a writer lock readers out for the length of a write.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from anyio import to_thread
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from mlops_assets.config import DatasetSpec, Settings, load_spec
from mlops_assets.defs.resources import CHAMPION_ALIAS, ModelRegistryResource
from mlops_assets.serving.model_watcher import ChampionWatcher, ServedModel
from mlops_assets.storage.feature_sql import FeatureStoreApi
from mlops_assets.storage.feature_store import FeatureStore, is_lock_error
from mlops_assets.storage.parquet_store import ParquetFeatureStore
from mlops_assets.storage.stores import store_for

log = logging.getLogger(__name__)

MAX_ROWS = 10_000  # one request is one DataFrame in memory; bigger jobs belong to batch_predictions
MAX_REPORTED_ERRORS = 20
DEFAULT_LOCK_WAIT_SECONDS = 1.0


# --- request and response bodies ---------------------------------------------------------------------------
class PredictRequest(BaseModel):
    """Rows of feature values, one mapping per row, keyed by the spec's feature names."""

    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ROWS)


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    scores: list[float | None]


class EntityPredictResponse(BaseModel):
    model_name: str
    model_version: str
    entity_id: str
    event_time: str | None
    features: dict[str, Any]
    score: float | None


class HealthResponse(BaseModel):
    status: str
    model_name: str
    model_version: str | None
    last_refresh_error: str | None = None


class ModelResponse(BaseModel):
    name: str
    alias: str
    loaded: bool
    version: str | None
    is_baseline: bool | None
    model_uri: str | None
    model_sha256: str | None
    metric: str | None
    holdout_metric: float | None
    tags: dict[str, str]
    loaded_at: dt.datetime | None
    alias_version: str | None
    last_checked_at: dt.datetime | None
    last_refresh_error: str | None
    last_refresh_error_at: dt.datetime | None
    poll_seconds: float


# --- validation against the spec ---------------------------------------------------------------------------
def _error(kind: str, loc: Sequence[str | int], msg: str, value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}


def rows_to_frame(spec: DatasetSpec, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Turn request rows into the frame the model was trained on, or raise a 422 listing what is wrong.

    Every row must carry exactly the spec's features: a missing one would be imputed without the caller
    knowing, an unknown one usually means a misspelling. Numeric values are numbers or null (a null is a
    missing value, as in the feature store); categorical values are strings (integers are accepted and read
    as their decimal text, which is how the feature store casts them) or null.
    """
    names = spec.feature_names
    expected = set(names)
    numeric = set(spec.numeric_features)
    errors: list[dict[str, Any]] = []
    out: dict[str, list[Any]] = {n: [] for n in names}
    for i, row in enumerate(rows):
        for key in sorted(set(row) - expected):
            errors.append(
                _error(
                    "unknown_feature",
                    ["rows", i, key],
                    f"row {i}: unknown feature {key!r}; the model expects {names}",
                    row[key],
                )
            )
        for key in names:
            if key not in row:
                errors.append(_error("missing_feature", ["rows", i, key], f"row {i}: missing feature {key!r}"))
                continue
            value = row[key]
            if value is None:
                out[key].append(np.nan if key in numeric else None)
            elif key in numeric:
                if isinstance(value, bool) or not isinstance(value, int | float) or math.isinf(value):
                    errors.append(
                        _error(
                            "numeric_feature",
                            ["rows", i, key],
                            f"row {i}: feature {key!r} is numeric; got {value!r}",
                            value,
                        )
                    )
                else:
                    out[key].append(float(value))
            elif isinstance(value, str):
                out[key].append(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                out[key].append(str(value))
            else:
                errors.append(
                    _error(
                        "categorical_feature",
                        ["rows", i, key],
                        f"row {i}: feature {key!r} is categorical (a string); got {value!r}",
                        value,
                    )
                )
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
    if errors:
        raise RequestValidationError(errors[:MAX_REPORTED_ERRORS])
    frame = pd.DataFrame(out, columns=names)
    for key in numeric:
        frame[key] = frame[key].astype("float64")
    return frame


def _finite(x: Any) -> float | None:
    """JSON has no NaN: a missing value travels as null."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _jsonable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date):
        return value.isoformat()
    return value


# --- the online store --------------------------------------------------------------------------------------
class FeatureStoreUnavailable(RuntimeError):
    """The feature store cannot be read right now; the client may retry."""


def online_row(store: FeatureStoreApi, entity_id: str, lock_wait: float) -> pd.DataFrame:
    """The entity's newest feature row (empty if unknown), waiting up to `lock_wait` seconds for a writer.

    The DuckDB file's writer is the pipeline, whose transactions are short; a brief retry with backoff rides
    them out, and past that the caller gets a clear 503 rather than a request hanging on someone else's job.
    The Parquet store has no lock to wait for (partitions are replaced whole; Redis answers by key).
    """
    if isinstance(store, ParquetFeatureStore):
        found = store.online_features([entity_id])
        # Only on a miss: is it this entity, or has no day been materialized yet? (one listing, not per hit)
        if found.empty and not store.files.partitions("features"):
            raise FeatureStoreUnavailable(
                f"no feature partitions under {store.files.uri('features')} yet: materialize the features first"
            )
        return found
    if not isinstance(store, FeatureStore):  # a backend with neither listing nor lock
        return store.online_features([entity_id])
    if not store.path.exists():
        # FeatureStore.connect would create an empty store here (and take the write lock to do it).
        raise FeatureStoreUnavailable(f"no feature store at {store.path} yet: materialize the features first")
    deadline = time.monotonic() + lock_wait
    delay = 0.02
    while True:
        try:
            return store.online_features([entity_id])
        except duckdb.CatalogException as exc:
            raise FeatureStoreUnavailable(f"the feature store at {store.path} has no features yet ({exc})") from exc
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            remaining = deadline - time.monotonic()
            if not is_lock_error(exc):
                raise
            if remaining <= 0:
                raise FeatureStoreUnavailable(
                    f"the feature store at {store.path} is locked by a writer (the pipeline is updating it); "
                    f"gave up after {lock_wait:.1f}s, retry shortly"
                ) from exc
            time.sleep(min(delay, remaining))
            delay *= 2


# --- the app -----------------------------------------------------------------------------------------------
def _served(watcher: ChampionWatcher) -> ServedModel:
    served = watcher.current
    if served is None:
        detail = "no model loaded yet"
        if watcher.status.error:
            detail += f": {watcher.status.error}"
        raise HTTPException(status_code=503, detail=detail)
    return served


def _score(served: ServedModel, frame: pd.DataFrame) -> list[float | None]:
    from mlops_assets.ml.models import predict_scores

    try:
        scores = predict_scores(served.model, frame)
    except Exception as exc:
        log.exception("model v%s failed to score %d rows", served.version, len(frame))
        detail = f"model v{served.version} failed to score: {exc}"
        raise HTTPException(status_code=500, detail=detail) from exc
    return [_finite(s) for s in np.asarray(scores).ravel()]


def create_app(
    settings: Settings | None = None,
    *,
    poll_seconds: float = 10.0,
    lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
) -> FastAPI:
    """Build the service for one dataset spec. The spec is read now, so a broken spec stops the service
    from starting instead of failing every request; the first model loads when the app starts (lifespan)."""
    settings = settings or Settings.from_env()
    spec = load_spec(settings.spec_path)
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    watcher = ChampionWatcher(registry, spec.model_name, interval=poll_seconds)
    # the API answers 503 after its own short wait (online_row) rather than hold a request for the pipeline
    store = store_for(settings, spec)
    if isinstance(store, FeatureStore):
        store = dataclasses.replace(store, lock_wait_seconds=0.0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The first load runs before the app reports "started" (off the event loop: it downloads).
        await to_thread.run_sync(watcher.start)
        try:
            yield
        finally:
            await to_thread.run_sync(watcher.stop)

    app = FastAPI(
        title=f"{spec.name} predictions",
        description=f"Scores from `models:/{spec.model_name}@{CHAMPION_ALIAS}`, following the alias.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.spec = spec
    app.state.watcher = watcher
    app.state.feature_store = store
    from mlops_assets.serving.recommend import recommend_router  # GET /recommend/{user_id} (ranking specs)

    app.include_router(recommend_router(spec, watcher, store, lock_wait_seconds))

    @app.get("/health", response_model=HealthResponse)
    def health() -> Any:
        """Ready only once a model is loaded, so a load balancer does not send traffic to a service that can
        only answer 503."""
        served = watcher.current
        if served is None:
            body = HealthResponse(
                status="no model loaded",
                model_name=spec.model_name,
                model_version=None,
                last_refresh_error=watcher.status.error,
            )
            return JSONResponse(status_code=503, content=body.model_dump())
        return HealthResponse(
            status="ok",
            model_name=served.name,
            model_version=served.version,
            last_refresh_error=watcher.status.error,
        )

    @app.get("/model", response_model=ModelResponse)
    def model_info() -> ModelResponse:
        """What serves, where it came from, and whether the last look at the registry went wrong (e.g. a new
        champion refused for a checksum mismatch while the previous one keeps serving)."""
        served, status = watcher.current, watcher.status
        info = served.info if served else None
        return ModelResponse(
            name=spec.model_name,
            alias=CHAMPION_ALIAS,
            loaded=served is not None,
            version=info.version if info else None,
            is_baseline=info.is_baseline if info else None,
            model_uri=info.model_uri if info else None,
            model_sha256=info.tags.get("mlops.model_sha256") if info else None,
            metric=info.tags.get("mlops.metric") if info else None,
            holdout_metric=info.holdout_metric if info else None,
            tags=dict(info.tags) if info else {},
            loaded_at=served.loaded_at if served else None,
            alias_version=status.alias_version,
            last_checked_at=status.checked_at,
            last_refresh_error=status.error,
            last_refresh_error_at=status.error_at,
            poll_seconds=watcher.interval,
        )

    @app.post("/predict", response_model=PredictResponse)
    def predict(body: PredictRequest) -> PredictResponse:
        """Score rows given in full by the caller."""
        frame = rows_to_frame(spec, body.rows)
        served = _served(watcher)  # read once: these scores and this version belong together
        scores = _score(served, frame)
        return PredictResponse(model_name=served.name, model_version=served.version, scores=scores)

    @app.get("/predict/{entity_id:path}", response_model=EntityPredictResponse)
    def predict_entity(entity_id: str) -> EntityPredictResponse:
        """Score an entity from its newest row in the online feature store (entity id as the store writes
        it: the spec's entity columns joined by '|')."""
        served = _served(watcher)
        try:
            found = online_row(store, entity_id, lock_wait_seconds)
        except FeatureStoreUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": "1"}) from exc
        if found.empty:
            detail = f"unknown entity {entity_id!r}: no feature row in the store"
            raise HTTPException(status_code=404, detail=detail)
        row = found.iloc[[0]]
        frame = row[spec.feature_names].reset_index(drop=True)
        score = _score(served, frame)[0]
        event_time = _jsonable(row["event_time"].iloc[0]) if "event_time" in row else None
        return EntityPredictResponse(
            model_name=served.name,
            model_version=served.version,
            entity_id=entity_id,
            event_time=event_time,
            features={k: _jsonable(frame[k].iloc[0]) for k in spec.feature_names},
            score=score,
        )

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, poll_seconds: float = 10.0) -> None:
    """Run the service with uvicorn, settings from the environment (one process: one watcher, one model in
    memory; scale out with more processes behind a balancer, each following the alias on its own)."""
    import uvicorn

    uvicorn.run(create_app(poll_seconds=poll_seconds), host=host, port=port)
