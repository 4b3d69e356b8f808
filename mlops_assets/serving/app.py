"""The online prediction service: scores from whatever model the registry's `champion` alias names.

A `ChampionWatcher` follows the alias and swaps models between requests, never during one: every handler
reads the served (version, model) pair once and answers with that version's name beside its scores, so a
client can always tell which model produced what it got. Inputs are checked against the dataset spec, the
same contract the training pipeline uses, so a client sending a misspelt or missing feature gets a 422 that
names it instead of a silently imputed score. Lookups by entity read the DuckDB feature store read-only, one
short connection per request, because the pipeline (another process) writes to the same file and DuckDB
lets a writer lock readers out for the length of a write.

Speed: a request's rows become one float matrix and one list per categorical feature (`Columns`), and the
version's compiled scorer (proven equal to the scikit-learn model, see `serving.compiled`) scores them in a
few numpy calls on the event loop; the plain path (a DataFrame through the pipeline) runs in a worker thread.
`serve` runs several processes on one port, each following the alias on its own.

Exposure: a bearer token (`MLOPS_SERVE_TOKEN`) is required on every route whenever it is set, and the service
refuses to bind anything but loopback without one; bodies and rows are capped; what a client reads (errors,
`/health`, `/model`) names versions and rules, never a local path, a run id or an exception's text.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import hmac
import ipaddress
import json
import logging
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from anyio import to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlops_assets.config import DatasetSpec, Settings, load_spec
from mlops_assets.defs.resources import CHAMPION_ALIAS, ModelRegistryResource
from mlops_assets.serving.compiled import SCORER_DIFF_TAG, SCORER_REASON_TAG, SCORER_ROWS_TAG, SCORER_TAG, Columns
from mlops_assets.serving.model_watcher import ChampionWatcher, ServedModel
from mlops_assets.storage.feature_sql import FeatureStoreApi
from mlops_assets.storage.feature_store import FeatureStore, is_lock_error
from mlops_assets.storage.parquet_store import ParquetFeatureStore
from mlops_assets.storage.stores import store_for

log = logging.getLogger(__name__)

MAX_ROWS = 10_000  # one request is one DataFrame in memory; bigger jobs belong to batch_predictions
MAX_REPORTED_ERRORS = 20
DEFAULT_LOCK_WAIT_SECONDS = 1.0
TOKEN_ENV = "MLOPS_SERVE_TOKEN"
MIN_TOKEN_LENGTH = 16
MAX_BODY_ENV = "MLOPS_SERVE_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # about 10,000 rows of 15 features; bigger jobs are batch jobs
MAX_EXTRA_KEYS = 16  # a row may carry this many keys beyond the spec's features (each one then a 422)
INLINE_ROWS = 64  # up to this many rows the compiled scorer runs on the event loop; more go to a thread
STALE_CHECKS = 3  # /health reports the registry once this many polls in a row have not reached it
# Version tags a client may read on /model: what the model is and how it scores, not where its files, runs
# and training data live.
PUBLIC_TAGS = frozenset(
    {
        "mlops.is_baseline",
        "mlops.metric",
        "mlops.holdout_metric",
        "mlops.valid_metric",
        "mlops.family",
        "mlops.window_days",
        "mlops.half_life_days",
        "mlops.training_as_of",
        "mlops.gate",
        "mlops.model_sha256",
        "mlops.code_version",
        "mlops.spec_hash",
        SCORER_TAG,
        SCORER_REASON_TAG,
        SCORER_DIFF_TAG,
        SCORER_ROWS_TAG,
    }
)


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
    status: str  # "ok", "degraded" (serving, but something is wrong: see problems) or "no model loaded"
    model_name: str
    model_version: str | None
    scorer: str | None = None
    problems: list[str] = []
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
    scorer: str | None
    scorer_note: str | None
    alias_version: str | None
    last_checked_at: dt.datetime | None
    last_refresh_error: str | None
    last_refresh_error_at: dt.datetime | None
    poll_seconds: float


# --- validation against the spec ---------------------------------------------------------------------------
def _error(kind: str, loc: Sequence[str | int], msg: str, value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}


@dataclasses.dataclass(frozen=True)
class FeatureContract:
    """The spec's feature lists, computed once (the spec derives them on every access)."""

    names: list[str]
    expected: frozenset[str]
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @classmethod
    def of(cls, spec: DatasetSpec) -> FeatureContract:
        names = list(spec.feature_names)
        return cls(names, frozenset(names), tuple(spec.numeric_features), tuple(spec.categorical_features))


def rows_to_columns(spec: DatasetSpec | FeatureContract, rows: list[dict[str, Any]]) -> Columns:
    """Turn request rows into the model's inputs, or raise a 422 listing what is wrong.

    Every row must carry exactly the spec's features: a missing one would be imputed without the caller
    knowing, an unknown one usually means a misspelling. Numeric values are numbers or null (a null is a
    missing value, as in the feature store); categorical values are strings (integers are accepted and read
    as their decimal text, which is how the feature store casts them) or null. A row with far more keys than
    the model has features is refused before its keys are read one by one.
    """
    contract = spec if isinstance(spec, FeatureContract) else FeatureContract.of(spec)
    names, expected = contract.names, contract.expected
    numeric_names, categorical_names = contract.numeric, contract.categorical
    max_keys = len(names) + MAX_EXTRA_KEYS
    errors: list[dict[str, Any]] = []
    num = np.empty((len(rows), len(numeric_names)), dtype=np.float64)
    cat: dict[str, list[str | None]] = {n: [] for n in categorical_names}
    for i, row in enumerate(rows):
        if len(row) > max_keys:
            errors.append(
                _error(
                    "too_many_keys",
                    ["rows", i],
                    f"row {i}: {len(row)} keys; at most {max_keys} are read (the model has {len(names)} features)",
                )
            )
            break
        if len(row) != len(names) or not expected.issuperset(row):
            for key in sorted(set(row) - expected):
                errors.append(
                    _error(
                        "unknown_feature",
                        ["rows", i, key],
                        f"row {i}: unknown feature {key!r}; the model expects {names}",
                        row[key],
                    )
                )
        for j, key in enumerate(numeric_names):
            if key not in row:
                errors.append(_error("missing_feature", ["rows", i, key], f"row {i}: missing feature {key!r}"))
                continue
            value = row[key]
            if value is None:
                num[i, j] = np.nan
            elif isinstance(value, bool) or not isinstance(value, int | float) or math.isinf(value):
                msg = f"row {i}: feature {key!r} is numeric; got {value!r}"
                errors.append(_error("numeric_feature", ["rows", i, key], msg, value))
            else:
                num[i, j] = float(value)
        for key in categorical_names:
            if key not in row:
                errors.append(_error("missing_feature", ["rows", i, key], f"row {i}: missing feature {key!r}"))
                continue
            value = row[key]
            if value is None or isinstance(value, str):
                cat[key].append(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                cat[key].append(str(value))
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
    return Columns(len(rows), tuple(numeric_names), num, cat)


def rows_to_frame(spec: DatasetSpec, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The same check, as the DataFrame the scikit-learn pipeline reads."""
    return rows_to_columns(spec, rows).to_frame(spec.feature_names)


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
    """The feature store cannot be read right now; the client may retry. The message is for the client: it
    names the problem, not where the store lives."""


def online_row(store: FeatureStoreApi, entity_id: str, lock_wait: float) -> pd.DataFrame:
    """The entity's newest feature row (empty if unknown), waiting up to `lock_wait` seconds for a writer.

    The DuckDB file's writer is the pipeline, whose transactions are short; a brief retry with backoff rides
    them out, and past that the caller gets a clear 503 rather than a request hanging on someone else's job.
    The Parquet store has no lock to wait for (partitions are replaced whole; Redis answers by key).
    """
    if isinstance(store, ParquetFeatureStore):
        try:
            found = store.online_features([entity_id])
            # Only on a miss: is it this entity, or has no day been materialized yet? (one listing, not per hit)
            if found.empty and not store.files.partitions("features"):
                raise FeatureStoreUnavailable("no feature partitions yet: materialize the features first")
        except FeatureStoreUnavailable:
            raise
        except Exception as exc:  # Redis or the lake down: the client gets a 503, the log gets the cause
            log.warning("online feature lookup failed: %s: %s", type(exc).__name__, exc)
            raise FeatureStoreUnavailable(f"the feature store is unreachable ({type(exc).__name__})") from exc
        return found
    if not isinstance(store, FeatureStore):  # a backend with neither listing nor lock
        return store.online_features([entity_id])
    if not store.path.exists():
        # FeatureStore.connect would create an empty store here (and take the write lock to do it).
        raise FeatureStoreUnavailable("no feature store yet: materialize the features first")
    deadline = time.monotonic() + lock_wait
    delay = 0.02
    while True:
        try:
            return store.online_features([entity_id])
        except duckdb.CatalogException as exc:
            raise FeatureStoreUnavailable("the feature store has no features yet") from exc
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            remaining = deadline - time.monotonic()
            if not is_lock_error(exc):
                log.warning("online feature lookup failed: %s: %s", type(exc).__name__, exc)
                raise FeatureStoreUnavailable(f"the feature store is unreadable ({type(exc).__name__})") from exc
            if remaining <= 0:
                raise FeatureStoreUnavailable(
                    "the feature store is locked by a writer (the pipeline is updating it); "
                    f"gave up after {lock_wait:.1f}s, retry shortly"
                ) from exc
            time.sleep(min(delay, remaining))
            delay *= 2


def store_problem(store: FeatureStoreApi) -> str | None:
    """A cheap look at whether entity lookups can work now (for `/health`): Redis answers a ping, the lake
    lists, the DuckDB file is readable. None when it looks fine."""
    try:
        if isinstance(store, ParquetFeatureStore):
            online = getattr(store, "online", None)
            client = getattr(online, "client", None) or getattr(online, "_client", None)
            if client is not None:
                client.ping()
            else:
                store.files.partitions("features")
            return None
        if isinstance(store, FeatureStore):
            # not materialized yet is not broken (entity lookups say so); a file we cannot read is
            unreadable = store.path.exists() and not os.access(store.path, os.R_OK)
            return "the feature store file is unreadable" if unreadable else None
    except Exception as exc:
        log.warning("feature store check failed: %s: %s", type(exc).__name__, exc)
        return f"unreachable ({type(exc).__name__})"
    return None


# --- guarding the door -------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class ExposureError(RuntimeError):
    """The service was asked to listen where it would be unsafe to."""


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token, and refuse a token too short to resist guessing."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ExposureError(f"{TOKEN_ENV} must be at least {MIN_TOKEN_LENGTH} characters")
    if not token and not is_loopback(host):
        raise ExposureError(
            f"refusing to listen on {host}: set {TOKEN_ENV} (a bearer token of at least {MIN_TOKEN_LENGTH} "
            "characters) to serve beyond loopback, or bind 127.0.0.1"
        )


def _json_error(status: int, detail: str, headers: dict[str, str] | None = None) -> tuple[Message, Message]:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return (
        {"type": "http.response.start", "status": status, "headers": raw},
        {"type": "http.response.body", "body": body},
    )


class Guard:
    """Bearer token and body-size cap, before FastAPI reads anything (pure ASGI: a few microseconds).

    The token is compared in constant time. A body announced bigger than the cap is refused unread; a
    streamed one (no Content-Length) is read here and refused as soon as it passes the cap."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth, length = None, None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
            elif k == b"content-length":
                length = v
        if self.expected is not None and (auth is None or not hmac.compare_digest(auth, self.expected)):
            detail = "invalid bearer token"
            if auth is None:
                detail = "missing bearer token: send 'Authorization: Bearer <token>'"
            for m in _json_error(401, detail, {"www-authenticate": "Bearer"}):
                await send(m)
            return
        limit = self.max_body
        if length is not None:
            try:
                announced = int(length)
            except ValueError:
                announced = -1
            if announced < 0 or announced > limit:
                detail = (
                    f"request body of {announced} bytes is over the {limit}-byte limit"
                    if announced >= 0
                    else "invalid Content-Length"
                )
                for m in _json_error(413 if announced >= 0 else 400, detail):
                    await send(m)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (a chunked upload): read it here, up to the cap, then hand the app what was read.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the app sees an empty body and the disconnect
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                for m in _json_error(413, f"request body is over the {limit}-byte limit"):
                    await send(m)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class FastPredict:
    """`POST /predict` answered from the ASGI layer (every other route goes through FastAPI as usual).

    The route is the service's hot path and its answer is a few hundred bytes; FastAPI's routing, Request
    object, dependency solving and middleware stack cost more CPU than scoring a row. The handler is the same
    function the FastAPI route calls, so both give the same bodies and status codes."""

    def __init__(self, app: ASGIApp, *, handler: Any) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            status, payload = await self.handler(b"".join(chunks))
        except Exception:
            log.exception("POST /predict failed")
            status, payload = 500, b'{"detail": "internal error"}'
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


# --- the app -----------------------------------------------------------------------------------------------
def _served(watcher: ChampionWatcher) -> ServedModel:
    served = watcher.current
    if served is None:
        detail = "no model loaded yet"
        if watcher.status.error:
            detail += f": {watcher.status.error}"
        raise HTTPException(status_code=503, detail=detail)
    return served


def _score_columns(served: ServedModel, cols: Columns, names: list[str]) -> list[float | None]:
    try:
        if served.scoring is not None:
            scores = served.scoring.score(cols)
        else:
            from mlops_assets.ml.models import predict_scores

            scores = predict_scores(served.model, cols.to_frame(names))
    except Exception as exc:
        log.exception("model v%s failed to score %d rows", served.version, cols.n_rows)
        raise HTTPException(status_code=500, detail=f"model v{served.version} failed to score these rows") from exc
    return [_finite(s) for s in np.asarray(scores).ravel()]


def _compiled(served: ServedModel) -> bool:
    return served.scoring is not None and served.scoring.compiled is not None


def create_app(
    settings: Settings | None = None,
    *,
    poll_seconds: float = 10.0,
    lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
    token: str | None = None,
    max_body_bytes: int | None = None,
    compile_models: bool = True,
) -> FastAPI:
    """Build the service for one dataset spec. The spec is read now, so a broken spec stops the service
    from starting instead of failing every request; the first model loads when the app starts (lifespan).

    `token` (default: `MLOPS_SERVE_TOKEN`) is then required on every route; `compile_models=False` serves
    every version by the plain scikit-learn path (for comparison)."""
    settings = settings or Settings.from_env()
    token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
    check_exposure("127.0.0.1", token)  # the token's strength; where it listens is `serve`'s to check
    if max_body_bytes is None:
        max_body_bytes = int(os.environ.get(MAX_BODY_ENV) or DEFAULT_MAX_BODY_BYTES)
    spec = load_spec(settings.spec_path)
    contract = FeatureContract.of(spec)
    names = contract.names
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )

    def prepare(info: Any, model: Any) -> Any:
        from mlops_assets.serving.scoring import Scoring, build_scoring

        if spec.task == "ranking":  # a recommender answers GET /recommend itself: nothing to compile or prove
            return model
        scoring = build_scoring(info, model, spec)
        if not compile_models:
            return Scoring("plain", "plain path (compilation turned off)", None, model, tuple(names))
        return scoring

    watcher = ChampionWatcher(registry, spec.model_name, interval=poll_seconds, prepare=prepare)
    # the API answers 503 after its own short wait (online_row) rather than hold a request for the pipeline
    store = store_for(settings, spec)
    if isinstance(store, FeatureStore):
        store = dataclasses.replace(store, lock_wait_seconds=0.0)
    store_state: dict[str, Any] = {"problem": None, "checked": 0.0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The first load runs before the app reports "started" (off the event loop: it downloads).
        await to_thread.run_sync(watcher.start)
        # Everything loaded so far (MLflow, scikit-learn, the model) lives as long as the worker: out of the
        # collector's generations, a full collection no longer walks millions of objects in the middle of a
        # request (pauses of tens of milliseconds, the whole p99 at moderate load).
        gc.collect()
        gc.freeze()
        # The watcher thread's registry poll holds the GIL for a few milliseconds; with Python's default 5 ms
        # switch interval a request arriving meanwhile waited for all of it.
        sys.setswitchinterval(0.0005)
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

    # Outermost first on the way in: the guard (token, body cap), then the shortcut for POST /predict.
    app.add_middleware(FastPredict, handler=lambda raw: app.state.predict_payload(raw))
    app.add_middleware(Guard, token=token, max_body_bytes=max_body_bytes)

    def problems() -> list[str]:
        out: list[str] = []
        status = watcher.status
        if status.error:
            out.append(f"registry: {status.error}" if status.registry_error else f"model: {status.error}")
        # A poll that hangs (an MLflow server retrying) records nothing: judge by the last lookup that got an
        # answer, so a silent registry shows up too.
        answers = [t for t in (status.ok_at, watcher.last_answer_at) if t is not None]
        last_ok = max(answers) if answers else status.checked_at
        if watcher.running and last_ok is not None:
            age = (dt.datetime.now(dt.UTC) - last_ok).total_seconds()
            if age > max(STALE_CHECKS * watcher.interval, 30.0):
                out.append(f"registry: not reached for {age:.0f}s; the alias may have moved since")
        if store_state["problem"]:
            out.append(f"feature store: {store_state['problem']}")
        return out

    @app.get("/health", response_model=HealthResponse)
    async def health() -> Any:
        """Ready once a model is loaded (a load balancer should not send traffic to a service that can only
        answer 503). `degraded` still serves: the registry or the feature store is unreachable, or the alias
        names a version that was refused; `problems` says which."""
        now = time.monotonic()
        if now - store_state["checked"] > 5.0:  # at most one store check every 5 s, off the event loop
            store_state["checked"] = now
            store_state["problem"] = await to_thread.run_sync(store_problem, store)
        served = watcher.current
        found = problems()
        if served is None:
            body = HealthResponse(
                status="no model loaded",
                model_name=spec.model_name,
                model_version=None,
                problems=found,
                last_refresh_error=watcher.status.error,
            )
            return JSONResponse(status_code=503, content=body.model_dump())
        return HealthResponse(
            status="degraded" if found else "ok",
            model_name=served.name,
            model_version=served.version,
            scorer=served.scoring.path if served.scoring is not None else "plain",
            problems=found,
            last_refresh_error=watcher.status.error,
        )

    @app.get("/model", response_model=ModelResponse)
    def model_info() -> ModelResponse:
        """What serves, how it scores, and whether the last look at the registry went wrong (e.g. a new
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
            tags={k: v for k, v in info.tags.items() if k in PUBLIC_TAGS} if info else {},
            loaded_at=served.loaded_at if served else None,
            scorer=(served.scoring.path if served.scoring is not None else "plain") if served else None,
            scorer_note=served.scoring.note if served and served.scoring is not None else None,
            alias_version=status.alias_version,
            last_checked_at=status.checked_at,
            last_refresh_error=status.error,
            last_refresh_error_at=status.error_at,
            poll_seconds=watcher.interval,
        )

    @app.post(
        "/predict",
        response_model=PredictResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    async def predict(request: Request) -> Response:
        """Score rows given in full by the caller. The response names the version that scored them."""
        status, payload = await predict_payload(await request.body())
        return Response(payload, status_code=status, media_type="application/json")

    async def predict_payload(raw: bytes) -> tuple[int, bytes]:
        """The whole of `POST /predict` on bytes: the same `PredictRequest` model and checks, the same 422,
        503 and 500 bodies FastAPI would send. `FastPredict` calls it straight from the ASGI layer, so the
        route every request takes skips routing, the Request object and the dependency machinery."""
        try:
            body = PredictRequest.model_validate_json(raw)
            cols = rows_to_columns(contract, body.rows)
        except ValidationError as exc:
            errors = [{**e, "loc": ["body", *e["loc"]]} for e in exc.errors(include_url=False)]
            for e in errors:
                e.pop("ctx", None)  # may hold exception objects: not JSON, and not the client's business
            return 422, json.dumps({"detail": jsonable_encoder(errors)}).encode()
        except RequestValidationError as exc:
            return 422, json.dumps({"detail": jsonable_encoder(exc.errors())}).encode()
        try:
            served = _served(watcher)  # read once: these scores and this version belong together
            if _compiled(served) and cols.n_rows <= INLINE_ROWS:
                scores = _score_columns(served, cols, names)  # microseconds: cheaper than a thread hop
            else:
                scores = await to_thread.run_sync(_score_columns, served, cols, names)
        except HTTPException as exc:
            return exc.status_code, json.dumps({"detail": exc.detail}).encode()
        body_out = {"model_name": served.name, "model_version": served.version, "scores": scores}
        return 200, json.dumps(body_out).encode()

    app.state.predict_payload = predict_payload

    @app.get("/predict/{entity_id:path}", response_model=EntityPredictResponse)
    def predict_entity(entity_id: str) -> EntityPredictResponse:
        """Score an entity from its newest row in the online feature store (entity id as the store writes
        it: the spec's entity columns joined by '|')."""
        served = _served(watcher)
        try:
            found = online_row(store, entity_id, lock_wait_seconds)
        except FeatureStoreUnavailable as exc:
            store_state["problem"], store_state["checked"] = str(exc), time.monotonic()
            raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": "1"}) from exc
        if found.empty:
            detail = f"unknown entity {entity_id!r}: no feature row in the store"
            raise HTTPException(status_code=404, detail=detail)
        row = found.iloc[[0]]
        frame = row[names].reset_index(drop=True)
        cols = Columns.from_frame(frame, contract.numeric, contract.categorical)
        score = _score_columns(served, cols, names)[0]
        event_time = _jsonable(row["event_time"].iloc[0]) if "event_time" in row else None
        return EntityPredictResponse(
            model_name=served.name,
            model_version=served.version,
            entity_id=entity_id,
            event_time=event_time,
            features={k: _jsonable(frame[k].iloc[0]) for k in names},
            score=score,
        )

    return app


POLL_ENV = "MLOPS_SERVE_POLL_SECONDS"
WORKER_STARTUP_SECONDS = 120


def app_from_env() -> FastAPI:
    """The factory each worker process calls (`uvicorn --factory`): everything from the environment that
    `serve` prepared, so every worker builds the same service."""
    return create_app(poll_seconds=float(os.environ.get(POLL_ENV) or 10.0))


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    poll_seconds: float = 10.0,
    *,
    workers: int | None = None,
    access_log: bool = False,
) -> None:
    """Run the service with uvicorn: `workers` processes share one listening socket (the kernel spreads
    connections over them), each with its own watcher following the alias and its own copy of the model.
    Settings come from the environment; refuses to start beyond loopback without a token."""
    import uvicorn

    check_exposure(host, os.environ.get(TOKEN_ENV) or None)
    os.environ[POLL_ENV] = str(poll_seconds)
    # One OpenMP thread per worker: the workers already take the cores, and scikit-learn's threads (the plain
    # path, the proof at load) spinning against each other's processes cost more than they give.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    uvicorn.run(
        "mlops_assets.serving.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers or default_workers(),
        access_log=access_log,
        log_level="info",
        # A worker imports MLflow and loads, verifies and compiles the champion before it answers the
        # supervisor's first ping: tens of seconds on a busy machine, where uvicorn's default 5 s killed
        # every worker in a loop.
        timeout_worker_healthcheck=WORKER_STARTUP_SECONDS,
    )
