"""The online API against a real MLflow registry (SQLite store, local artifacts) and a real DuckDB store.

Models are registered the way the registry assets register them: logged with `log_model`, their artifact
digested with `artifact_digest(...)` into the `mlops.model_sha256` version tag, the alias moved
with `ModelRegistryResource.move_champion`. Nothing from MLflow is mocked, so a swap, a refused checksum
or a locked feature store behave here as they do in production.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from mlops_assets.config import DatasetSpec, Settings, load_spec
from mlops_assets.defs.resources import CHAMPION_ALIAS, ModelRegistryResource, ensure_experiment
from mlops_assets.ml.models import build_model, log_model, predict_scores
from mlops_assets.serving.app import create_app
from mlops_assets.serving.model_watcher import ChampionWatcher, verified_loader
from mlops_assets.storage.models import artifact_digest
from mlops_assets.storage.stores import store_for
from mlops_assets_tests.conftest import TOY_SPEC

PAYLOAD: list[dict[str, Any]] = [
    {"x": -2.0, "kind": "a", "user_rate_7d": 0.1},
    {"x": 0.5, "kind": "b", "user_rate_7d": None},
    {"x": 3.0, "kind": None, "user_rate_7d": 0.9},
    {"x": 1, "kind": "a", "user_rate_7d": 0.5},
]


@dataclass
class World:
    """One registry with three versions: a baseline, a logistic model, and a copy whose artifact was
    altered after registration."""

    settings: Settings
    spec: DatasetSpec
    registry: ModelRegistryResource
    baseline: str
    logistic: str
    tampered: str
    expected: dict[str, np.ndarray]  # version -> scores for PAYLOAD, computed from the in-memory model

    def move(self, version: str) -> None:
        self.registry.move_champion(self.spec.model_name, version, reason="test", actor="test_api")


def _training_frame(spec: DatasetSpec) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 200
    x = rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "x": x,
            "kind": rng.choice(["a", "b"], size=n),
            "user_rate_7d": np.where(rng.random(n) < 0.2, np.nan, rng.random(n)),
        }
    )[spec.feature_names]
    y = (x + rng.normal(scale=0.5, size=n) > 0).astype(int)
    return frame, y


def _register(
    world_registry: ModelRegistryResource,
    spec: DatasetSpec,
    experiment_id: str,
    model: Any,
    X: pd.DataFrame,
    tags: dict[str, str],
) -> tuple[str, str]:
    """Log, digest and register exactly as `baseline_model` / `registered_model_version` do."""
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = log_model(model, name="model", input_example=X.head(2))
    sha = artifact_digest(info.model_uri, world_registry.tracking_uri)
    world_registry.ensure_model(spec.model_name)
    mv = world_registry.client.create_model_version(
        spec.model_name,
        source=info.model_uri,
        run_id=run.info.run_id,
        tags={"mlops.model_sha256": sha, "mlops.metric": spec.metric, **tags},
    )
    return str(mv.version), str(info.model_id)


def _local(file_uri: str) -> Path:
    return Path(unquote(urlparse(file_uri).path))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("serving")
    spec_path = root / "toy.yaml"
    spec_path.write_text(yaml.safe_dump({**TOY_SPEC, "source": {"kind": "folder", "path": str(root)}}))
    settings = Settings.from_env({"MLOPS_DATA_DIR": str(root / "data"), "MLOPS_SPEC": str(spec_path)})
    spec = load_spec(spec_path)
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    experiment_id = ensure_experiment(settings.mlflow_tracking_uri, spec.name, settings.mlflow_artifact_root)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    X, y = _training_frame(spec)
    payload = pd.DataFrame(PAYLOAD)[spec.feature_names].astype({"x": float, "user_rate_7d": float})

    def fit(family: str, params: dict[str, Any]) -> Any:
        return build_model(
            family,
            params,
            task=spec.task,
            numeric=spec.numeric_features,
            categorical=spec.categorical_features,
            seed=0,
        ).fit(X, y)

    base, logistic = fit("baseline", {}), fit("logistic", {"C": 1.0})
    v_base, _ = _register(registry, spec, experiment_id, base, X, {"mlops.is_baseline": "true"})
    v_log, log_id = _register(
        registry,
        spec,
        experiment_id,
        logistic,
        X,
        {"mlops.is_baseline": "false", "mlops.holdout_metric": "0.912345"},
    )
    # The third version is a byte copy of the logistic model's artifact stored under another run (logging
    # it once more would cost MLflow's ~8 s requirements inference for nothing new), registered the same way,
    # then altered after its checksum was recorded (a bad copy, a tampered bucket). The edit keeps the model
    # loadable, so only the checksum can refuse it.
    logistic_dir = _local(registry.client.get_logged_model(log_id).artifact_location)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifacts(str(logistic_dir), artifact_path="model")
    source = f"runs:/{run.info.run_id}/model"
    mv = registry.client.create_model_version(
        spec.model_name,
        source=source,
        run_id=run.info.run_id,
        tags={
            "mlops.model_sha256": artifact_digest(source, settings.mlflow_tracking_uri),
            "mlops.metric": spec.metric,
            "mlops.is_baseline": "false",
        },
    )
    mlmodel = _local(run.info.artifact_uri) / "model" / "MLmodel"
    mlmodel.write_text(mlmodel.read_text() + "# edited after registration\n")
    return World(
        settings=settings,
        spec=spec,
        registry=registry,
        baseline=v_base,
        logistic=v_log,
        tampered=str(mv.version),
        expected={v_base: predict_scores(base, payload), v_log: predict_scores(logistic, payload)},
    )


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    """The app with the baseline as champion; the poll interval is long so that only the test swaps."""
    world.move(world.baseline)
    app = create_app(world.settings, poll_seconds=3600, lock_wait_seconds=0.3)
    with TestClient(app) as c:
        yield c


def _scores_match(world: World, body: dict[str, Any]) -> bool:
    return bool(np.allclose(body["scores"], world.expected[body["model_version"]]))


def test_serves_the_champion_and_follows_the_alias(world: World, client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["model_version"] == world.baseline
    info = client.get("/model").json()
    assert info["version"] == world.baseline and info["is_baseline"] is True and info["loaded_at"]
    assert info["last_refresh_error"] is None

    first = client.post("/predict", json={"rows": PAYLOAD})
    assert first.status_code == 200
    assert first.json()["model_version"] == world.baseline and _scores_match(world, first.json())

    world.move(world.logistic)
    watcher = client.app.state.watcher  # type: ignore[attr-defined]
    assert watcher.refresh() is True
    assert watcher.refresh() is False  # nothing moved since
    second = client.post("/predict", json={"rows": PAYLOAD}).json()
    assert second["model_version"] == world.logistic and _scores_match(world, second)
    assert not np.allclose(second["scores"], first.json()["scores"])
    info = client.get("/model").json()
    assert info["version"] == world.logistic and info["is_baseline"] is False
    assert info["holdout_metric"] == pytest.approx(0.912345) and info["tags"]["mlops.metric"] == "roc_auc"


def test_no_request_fails_while_the_model_is_swapped(world: World, client: TestClient) -> None:
    watcher = client.app.state.watcher  # type: ignore[attr-defined]
    stop = threading.Event()
    failures: list[str] = []
    seen: list[str] = []

    def hammer() -> None:
        while not stop.is_set():
            r = client.post("/predict", json={"rows": PAYLOAD})
            if r.status_code != 200:
                failures.append(f"{r.status_code}: {r.text}")
                continue
            body = r.json()
            if body["model_version"] not in world.expected or not _scores_match(world, body):
                failures.append(f"scores do not belong to v{body['model_version']}: {body}")
            seen.append(body["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        # six swaps: promotions and rollbacks, each recorded as the registry records them
        for i, target in enumerate([world.logistic, world.baseline] * 3):
            time.sleep(0.15)
            kind = "promote" if i % 2 == 0 else "rollback"
            world.registry.move_champion(world.spec.model_name, target, reason="swap", actor="test_api", kind=kind)
            assert watcher.refresh() is True
        time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not failures, failures[:3]
    assert len(seen) > 20 and set(seen) == {world.baseline, world.logistic}


def test_a_tampered_artifact_is_refused_and_the_old_one_serves(world: World, client: TestClient) -> None:
    world.move(world.tampered)
    watcher = client.app.state.watcher  # type: ignore[attr-defined]
    assert watcher.refresh() is False
    assert client.get("/health").json()["model_version"] == world.baseline
    r = client.post("/predict", json={"rows": PAYLOAD}).json()
    assert r["model_version"] == world.baseline and _scores_match(world, r)
    info = client.get("/model").json()
    assert info["version"] == world.baseline and info["alias_version"] == world.tampered
    assert "checksum" in info["last_refresh_error"] and f"v{world.tampered}" in info["last_refresh_error"]
    # Once the alias points at a good version again, the error clears.
    world.move(world.logistic)
    assert watcher.refresh() is True
    assert client.get("/model").json()["last_refresh_error"] is None


def test_a_slow_load_blocks_nobody_and_loses_to_a_newer_lookup(world: World) -> None:
    """While one refresh is stuck loading, requests keep reading the served model and another refresh runs;
    when the alias moved back meanwhile, the slow load finishing late must not install the stale version."""
    real = verified_loader(world.registry)
    entered, release = threading.Event(), threading.Event()

    def slow(info: Any) -> Any:
        if info.version == world.logistic:
            entered.set()
            assert release.wait(10)
        return real(info)

    world.move(world.baseline)
    watcher = ChampionWatcher(world.registry, world.spec.model_name, interval=3600, loader=slow)
    assert watcher.refresh() is True
    world.move(world.logistic)
    result: list[bool] = []
    stuck = threading.Thread(target=lambda: result.append(watcher.refresh()))
    stuck.start()
    assert entered.wait(10)
    served = watcher.current
    assert served is not None and served.version == world.baseline  # readable mid-load, no lock held
    world.move(world.baseline)
    assert watcher.refresh() is False  # the alias is back on what serves: confirmed, nothing to load
    release.set()
    stuck.join(10)
    assert result == [False]
    served = watcher.current
    assert served is not None and served.version == world.baseline


def test_the_background_thread_follows_the_alias_and_stops(world: World) -> None:
    world.move(world.baseline)
    app = create_app(world.settings, poll_seconds=0.1)
    watcher = app.state.watcher
    with TestClient(app) as c:
        assert c.get("/health").json()["model_version"] == world.baseline
        world.move(world.logistic)
        deadline = time.monotonic() + 10
        while c.get("/health").json()["model_version"] != world.logistic:
            assert time.monotonic() < deadline, "the watcher did not pick up the alias move"
            time.sleep(0.05)
        assert watcher.running
    assert not watcher.running


def test_health_is_503_until_a_model_is_loaded(world: World) -> None:
    world.registry.client.delete_registered_model_alias(world.spec.model_name, CHAMPION_ALIAS)
    try:
        with TestClient(create_app(world.settings, poll_seconds=3600)) as c:
            r = c.get("/health")
            assert r.status_code == 503 and r.json()["model_version"] is None
            assert "not set" in r.json()["last_refresh_error"]
            assert c.post("/predict", json={"rows": PAYLOAD}).status_code == 503
            assert c.get("/model").json()["loaded"] is False
    finally:
        world.move(world.baseline)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"x": 1.0, "kind": "a"}], "missing feature 'user_rate_7d'"),
        ([{**PAYLOAD[0], "colour": "red"}], "unknown feature 'colour'"),
        ([{**PAYLOAD[0], "x": "high"}], "feature 'x' is numeric"),
        ([{**PAYLOAD[0], "x": True}], "feature 'x' is numeric"),
        ([{**PAYLOAD[0], "kind": [1]}], "feature 'kind' is categorical"),
        ([], "at least 1 item"),
    ],
)
def test_a_bad_payload_is_a_422_naming_the_problem(
    client: TestClient, rows: list[dict[str, Any]], expected: str
) -> None:
    r = client.post("/predict", json={"rows": rows})
    assert r.status_code == 422
    assert any(expected in e["msg"] for e in r.json()["detail"]), r.json()


def test_predict_by_entity_from_the_online_store(world: World, client: TestClient) -> None:
    store = store_for(world.settings, world.spec)
    day = dt.date(2024, 1, 1)
    raw = pd.DataFrame(
        {
            "user": ["u", "v"],
            "ts": [pd.Timestamp("2024-01-01 10:00")] * 2,
            "x": [2.0, -1.0],
            "kind": ["a", None],
            "y": [1, 0],
        }
    )
    store.write_features(day, raw)

    r = client.get("/predict/u")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == world.baseline and body["entity_id"] == "u"
    assert body["features"] == {"x": 2.0, "kind": "a", "user_rate_7d": None}  # no label had arrived yet
    direct = client.post("/predict", json={"rows": [body["features"]]}).json()
    assert body["score"] == pytest.approx(direct["scores"][0])

    missing = client.get("/predict/nobody")
    assert missing.status_code == 404 and "nobody" in missing.json()["detail"]

    # Another process holds DuckDB's write lock: the API waits briefly, then answers 503 with the reason.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); sys.stdin.read()",
            str(store_for(world.settings, world.spec).path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        locked = client.get("/predict/u")
        assert locked.status_code == 503 and "locked" in locked.json()["detail"]
        assert locked.headers["retry-after"] == "1" and time.monotonic() - t0 < 5
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert client.get("/predict/u").status_code == 200


def test_predict_by_entity_from_redis_over_the_parquet_store(world: World, tmp_path: Path) -> None:
    """The production store: Parquet partitions with each entity's newest row in Redis. Before any day is
    written the API says so (503), not "unknown entity"; afterwards it answers from Redis by key."""
    import redis

    from mlops_assets_tests.storage.conftest import redis_client

    redis_client()  # skips where no Redis listens (fails on CI)
    url = f"redis://127.0.0.1:6379/{2 + int(time.time_ns()) % 14}"
    settings = world.settings.model_copy(
        update={
            "feature_store": "parquet",
            "lake_uri": str(tmp_path / "lake"),
            "online_redis_url": url,
        }
    )
    store = store_for(settings, world.spec)
    namespace = f"mlops:{world.spec.name}:online:*"
    keys = redis.Redis.from_url(url)
    for k in keys.scan_iter(match=namespace):
        keys.delete(k)
    world.move(world.baseline)
    try:
        with TestClient(create_app(settings, poll_seconds=3600)) as client:
            empty = client.get("/predict/u")
            assert empty.status_code == 503 and "no feature partitions" in empty.json()["detail"], empty.text
            raw = pd.DataFrame(
                {"user": ["u"], "ts": [pd.Timestamp("2024-01-01 10:00")], "x": [2.0], "kind": ["a"], "y": [1]}
            )
            store.write_features(dt.date(2024, 1, 1), raw)
            assert list(keys.scan_iter(match=namespace)), "no online row in Redis"
            r = client.get("/predict/u")
            assert r.status_code == 200, r.text
            assert r.json()["features"] == {"x": 2.0, "kind": "a", "user_rate_7d": None}
            assert client.get("/predict/nobody").status_code == 404
    finally:
        for k in keys.scan_iter(match=namespace):
            keys.delete(k)


# --- speed path, exposure, degraded service ------------------------------------------------------------------
TOKEN = "t0ken-for-tests-0123456789"


def test_the_champion_is_scored_by_its_proven_compiled_path(world: World, client: TestClient) -> None:
    world.move(world.logistic)
    assert client.app.state.watcher.refresh() is True  # type: ignore[attr-defined]
    info = client.get("/model").json()
    assert info["scorer"] == "compiled" and "proven" in info["scorer_note"], info
    assert client.get("/health").json()["scorer"] == "compiled"
    body = client.post("/predict", json={"rows": PAYLOAD}).json()
    assert body["model_version"] == world.logistic
    np.testing.assert_allclose(body["scores"], world.expected[world.logistic], rtol=0, atol=1e-6)
    plain = create_app(world.settings, poll_seconds=3600, compile_models=False)
    with TestClient(plain) as c:
        assert c.get("/model").json()["scorer"] == "plain"
        np.testing.assert_allclose(c.post("/predict", json={"rows": PAYLOAD}).json()["scores"], body["scores"])


def test_every_bad_request_is_a_4xx_that_names_the_problem(world: World) -> None:
    world.move(world.baseline)
    app = create_app(world.settings, poll_seconds=3600, token=TOKEN, max_body_bytes=4096)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(app) as c:
        assert c.post("/predict", json={"rows": PAYLOAD}, headers=auth).status_code == 200
        missing = c.post("/predict", json={"rows": PAYLOAD})
        assert missing.status_code == 401 and "missing bearer token" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = c.get("/model", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid bearer token"
        assert c.get("/health").status_code == 401  # nothing answers without the token once one is set

        big = c.post("/predict", json={"rows": PAYLOAD * 100}, headers=auth)
        assert big.status_code == 413 and "over the 4096-byte limit" in big.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the cap counts what streams in
            yield b'{"rows": ['
            for _ in range(100):
                yield json.dumps(PAYLOAD[0]).encode() + b","
            yield b"{}]}"

        streamed = c.post("/predict", content=chunks(), headers={**auth, "Content-Type": "application/json"})
        assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]

        many = {**PAYLOAD[0], **{f"k{i}": 1 for i in range(40)}}
        keys = c.post("/predict", json={"rows": [many]}, headers=auth)
        assert keys.status_code == 422
        assert any("43 keys; at most 19 are read" in e["msg"] for e in keys.json()["detail"]), keys.json()
        for row, expected in [
            ({**PAYLOAD[0], "colour": "red"}, "unknown feature 'colour'"),
            ({**PAYLOAD[0], "x": "high"}, "feature 'x' is numeric"),
        ]:
            r = c.post("/predict", json={"rows": [row]}, headers=auth)
            assert r.status_code == 422 and any(expected in e["msg"] for e in r.json()["detail"])


def test_serving_beyond_loopback_needs_a_token(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlops_assets.cli import main
    from mlops_assets.serving.app import ExposureError, check_exposure

    check_exposure("127.0.0.1", None)
    check_exposure("::1", None)
    check_exposure("0.0.0.0", TOKEN)
    for host in ("0.0.0.0", "10.1.2.3", "serving.example"):
        with pytest.raises(ExposureError, match="MLOPS_SERVE_TOKEN"):
            check_exposure(host, None)
    with pytest.raises(ExposureError, match="at least 16 characters"):
        check_exposure("127.0.0.1", "short")
    monkeypatch.delenv("MLOPS_SERVE_TOKEN", raising=False)
    spec = str(world.settings.spec_path)
    assert main(["serve", "--spec", spec, "--host", "0.0.0.0", "--port", "8190"]) == 2  # refused before binding


def test_model_and_errors_leak_no_paths_or_run_ids(world: World, client: TestClient) -> None:
    client_ = world.registry.client
    client_.set_model_version_tag(world.spec.model_name, world.logistic, "mlops.dagster_run_id", "abc123run")
    client_.set_model_version_tag(world.spec.model_name, world.logistic, "mlops.training_dataset_key", "/lake/x")
    try:
        world.move(world.logistic)
        watcher = client.app.state.watcher  # type: ignore[attr-defined]
        assert watcher.refresh() is True
        world.move(world.tampered)
        assert watcher.refresh() is False
        text = client.get("/model").text + client.get("/health").text
        assert "checksum" in text and f"v{world.tampered} refused" in text
        data_dir = str(world.settings.data_dir)
        for secret in ("abc123run", "/lake/x", data_dir, "file:", "runs:/", "Traceback"):
            assert secret not in text, secret
        info = client.get("/model").json()
        assert "mlops.dagster_run_id" not in info["tags"] and info["tags"]["mlops.metric"] == "roc_auc"
    finally:
        client_.delete_model_version_tag(world.spec.model_name, world.logistic, "mlops.dagster_run_id")
        client_.delete_model_version_tag(world.spec.model_name, world.logistic, "mlops.training_dataset_key")
        world.move(world.baseline)


def test_a_model_that_cannot_score_is_refused_and_the_last_good_one_serves(world: World, client: TestClient) -> None:
    """A version fitted on other columns than the spec's (a model registered under the wrong name) loads
    and passes its checksum, but cannot score the spec's rows: refused, with the reason, and never served."""
    X, y = _training_frame(world.spec)
    renamed = X[["x", "kind"]].rename(columns={"x": "speed"})
    other = build_model("logistic", {}, task="classification", numeric=["speed"], categorical=["kind"], seed=0)
    other.fit(renamed, y)
    experiment_id = ensure_experiment(
        world.settings.mlflow_tracking_uri, world.spec.name, world.settings.mlflow_artifact_root
    )
    mlflow.set_tracking_uri(world.settings.mlflow_tracking_uri)
    wrong, _ = _register(world.registry, world.spec, experiment_id, other, renamed, {"mlops.is_baseline": "false"})
    watcher = client.app.state.watcher  # type: ignore[attr-defined]
    world.move(wrong)
    try:
        assert watcher.refresh() is False
        health = client.get("/health").json()
        assert health["model_version"] == world.baseline and health["status"] == "degraded"
        assert any(f"v{wrong} refused: it cannot score a row of the spec's features" in p for p in health["problems"])
        assert client.post("/predict", json={"rows": PAYLOAD}).json()["model_version"] == world.baseline
    finally:
        world.move(world.baseline)


def test_degraded_not_down_when_the_registry_and_the_store_are_unreachable(
    world: World, client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = client.app.state.watcher  # type: ignore[attr-defined]
    assert client.get("/health").json()["status"] == "ok"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    good = watcher.registry
    watcher.registry = ModelRegistryResource(tracking_uri="http://127.0.0.1:8197", artifact_root=str(tmp_path))
    try:
        assert watcher.refresh() is False
        health = client.get("/health")
        assert health.status_code == 200, health.text  # still serving: a balancer keeps sending traffic
        body = health.json()
        assert body["status"] == "degraded" and body["model_version"] == world.baseline
        assert any(p.startswith("registry: registry unreachable") for p in body["problems"]), body
        assert "8197" not in health.text  # where the registry lives is not the client's business
        assert client.post("/predict", json={"rows": PAYLOAD}).status_code == 200
    finally:
        watcher.registry = good
    assert watcher.refresh() is False and client.get("/health").json()["status"] == "ok"

    # The production store with its Redis gone: entity lookups are a 503 naming it, /health says so,
    # full-row predictions go on.
    settings = world.settings.model_copy(
        update={
            "feature_store": "parquet",
            "lake_uri": str(tmp_path / "lake"),
            "online_redis_url": "redis://127.0.0.1:8196/0",
        }
    )
    with TestClient(create_app(settings, poll_seconds=3600)) as c:
        r = c.get("/predict/u")
        assert r.status_code == 503 and "unreachable" in r.json()["detail"] and "8196" not in r.text
        health = c.get("/health").json()
        assert health["status"] == "degraded" and any(p.startswith("feature store:") for p in health["problems"])
        assert c.post("/predict", json={"rows": PAYLOAD}).status_code == 200
