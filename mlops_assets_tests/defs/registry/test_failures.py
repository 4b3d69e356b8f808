"""A failure anywhere leaves the champion exactly as it was: the alias, the bytes of its artifact and the
history of moves. Each failure is injected into a real retrain on the real flights data, in a state where
the same run without the failure moves the alias (the baseline is champion and the first trained model
beats it), so an unchanged champion means the failure stopped the move, not the gate.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import mlops_assets.defs.ingestion.assets as ingestion_assets
import mlops_assets.ml.automl as automl
from mlops_assets.datasets.sources import SourceError
from mlops_assets.definitions import build_defs
from mlops_assets.defs.monitoring.sensors import training_run_config
from mlops_assets.defs.resources import CHAMPION_MOVE_PREFIX, ModelRegistryResource
from mlops_assets.replay import QUIET
from mlops_assets.storage.models import artifact_digest, load_verified
from mlops_assets_tests.conftest import akey, job
from mlops_assets_tests.defs.registry.project import MODEL, Project, bootstrap_and_ingest, isolated_project

AS_OF = dt.date(2013, 1, 9)
EVALUATE = [akey(k) for k in ("training_dataset", "candidate_models", "evaluation_report")]


World = Project


@dataclass(frozen=True)
class ChampionState:
    """Everything "exactly as it was" covers: where the alias points, the bytes behind it, the recorded
    moves, and which versions exist."""

    version: str
    model_sha256: str
    artifact_sha256: str
    history: str
    versions: frozenset[str]


def snapshot(world: World) -> ChampionState:
    reg = world.registry
    champ = reg.champion_info(MODEL)
    assert champ is not None
    tracking = world.settings.mlflow_tracking_uri
    return ChampionState(
        champ.version,
        champ.model_sha256,
        artifact_digest(f"models:/{MODEL}@champion", tracking),
        json.dumps(reg.history(MODEL)),
        frozenset(str(v.version) for v in reg.client.search_model_versions(f"name='{MODEL}'")),
    )


def failure_message(result: Any) -> str:
    """The failed steps' errors, as the UI shows them."""
    out = []
    for ev in result.all_events:
        if ev.is_step_failure and ev.step_failure_data is not None:
            data = ev.step_failure_data
            out.append(f"{ev.step_key}: {data.error.to_string() if data.error else ''}")
            if data.user_failure_data is not None:
                out.append(str(data.user_failure_data.description))
    return "\n".join(out)


def retrain(world: World, instance: dg.DagsterInstance, selection: list[dg.AssetKey] | None = None) -> Any:
    res = world.defs.resolve_job_def(job("retrain_job")).execute_in_process(
        instance=instance,
        run_config={**training_run_config("flights", AS_OF, "manual"), **QUIET},
        asset_selection=selection,
        raise_on_error=False,
    )
    mlflow.end_run()  # a failed step can leave dagster-mlflow's run active in this process
    return res


def materialize(world: World, instance: dg.DagsterInstance, names: list[str], **resources: Any) -> Any:
    """Materialize a few registry assets (upstream read from the IO manager, as in a re-executed run) with
    some resources replaced: how a failure is injected into one step only."""
    res = dg.materialize(
        list(world.defs.assets or []),
        selection=[akey(n) for n in names],
        resources={**(world.defs.resources or {}), **resources},
        instance=instance,
        raise_on_error=False,
    )
    mlflow.end_run()
    mlflow.set_tracking_uri(world.settings.mlflow_tracking_uri)
    return res


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with isolated_project(tmp_path_factory.mktemp("failures")) as project:
        with dg.DagsterInstance.get() as instance:
            bootstrap_and_ingest(project, instance, AS_OF)
        yield project


@pytest.fixture(scope="module")
def evaluated(world: World) -> dict[str, Any]:
    """A challenger trained and evaluated once; the gate would promote it (first trained model vs baseline)."""
    with dg.DagsterInstance.get() as instance:
        res = retrain(world, instance, EVALUATE)
    assert res.success, failure_message(res)
    report = res.output_for_node(job("evaluation_report"))
    assert report["decision"]["promote"] and report["decision"]["status"] == "first_model", report
    return dict(report)


def test_training_error_leaves_the_champion(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(world)

    def broken_fit(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError("injected: the estimator ran out of memory")

    monkeypatch.setattr(automl, "_fit_and_score", broken_fit)  # every fit of every trial
    with dg.DagsterInstance.get() as instance:
        res = retrain(world, instance)
    assert not res.success
    msg = failure_message(res)
    assert "candidate_models" in msg and "every trial of the sweep failed" in msg and "injected" in msg
    assert snapshot(world) == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_registry_unreachable_at_registration_leaves_the_champion(
    world: World, evaluated: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(world)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = ModelRegistryResource(
        tracking_uri=f"http://127.0.0.1:{_closed_port()}", artifact_root=world.settings.mlflow_artifact_root
    )
    with dg.DagsterInstance.get() as instance:
        res = materialize(world, instance, ["registered_model_version", "champion"], registry=down)
    assert not res.success
    msg = failure_message(res)
    assert "registered_model_version" in msg and ("Connection" in msg or "connect" in msg), msg
    assert snapshot(world) == before


def test_registry_failing_between_alias_and_history_puts_the_alias_back(
    world: World, evaluated: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias and its history are two writes; the second one fails (the registry went away mid-move)."""
    before = snapshot(world)
    real = MlflowClient.set_registered_model_tag

    def flaky(self: MlflowClient, name: str, key: str, value: Any) -> None:
        if key.startswith(CHAMPION_MOVE_PREFIX):
            raise MlflowException("injected: the registry went away")
        real(self, name, key, value)

    monkeypatch.setattr(MlflowClient, "set_registered_model_tag", flaky)
    with dg.DagsterInstance.get() as instance:
        res = materialize(world, instance, ["registered_model_version", "champion"])
    assert not res.success
    assert "champion" in failure_message(res) and "the registry went away" in failure_message(res)
    after = snapshot(world)
    assert after.versions > before.versions, "the challenger was registered; only the move failed"
    assert (after.version, after.model_sha256, after.artifact_sha256, after.history) == (
        before.version,
        before.model_sha256,
        before.artifact_sha256,
        before.history,
    )


def test_a_challenger_failing_its_checksum_never_becomes_champion(world: World, evaluated: dict[str, Any]) -> None:
    """The champion's integrity check runs before the move: a tampered candidate fails the step."""
    with dg.DagsterInstance.get() as instance:
        reg = materialize(world, instance, ["registered_model_version"])
        assert reg.success, failure_message(reg)
        version = reg.output_for_node(job("registered_model_version"))["version"]
        before = snapshot(world)
        uri = world.registry.client.get_model_version_download_uri(MODEL, version)
        (path,) = Path(uri.removeprefix("file://")).rglob("*.skops")
        original = path.read_bytes()
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        try:
            load_verified.cache_clear()  # the candidate was verified before it was tampered with
            res = materialize(world, instance, ["champion"])
        finally:
            path.write_bytes(original)
    assert not res.success
    msg = failure_message(res)
    assert f"v{version} does not load" in msg and "refusing to load it" in msg, msg
    assert snapshot(world) == before


def test_a_blocking_check_failing_on_a_bad_day_leaves_the_champion(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(world)

    def unreadable(spec: Any, day: dt.date, manifest: Any = None) -> Any:
        raise SourceError(f"flights-{day:%Y%m%d}.csv: truncated file (injected)")

    monkeypatch.setattr(ingestion_assets, "read_delivery", unreadable)
    day = (AS_OF + dt.timedelta(days=1)).isoformat()
    with dg.DagsterInstance.get() as instance:
        res = world.defs.resolve_job_def(job("daily_job")).execute_in_process(
            instance=instance, partition_key=day, run_config=QUIET, raise_on_error=False
        )
        checks = [
            ev.event_specific_data
            for ev in res.all_events
            if ev.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ]
    assert not res.success
    valid = [c for c in checks if c.check_name == "delivery_valid"]
    assert valid and not valid[0].passed
    assert snapshot(world) == before


KILLED_RETRAIN = """
import datetime as dt, sys, time
from pathlib import Path
import dagster as dg
import mlops_assets.ml.automl as automl
from mlops_assets.config import Settings
from mlops_assets.definitions import build_defs
from mlops_assets.defs.monitoring.sensors import training_run_config
from mlops_assets.replay import QUIET

marker, as_of = Path(sys.argv[1]), dt.date.fromisoformat(sys.argv[2])

def fit_then_hang(*args, **kwargs):
    marker.write_text("training")
    time.sleep(600)

automl.fit = fit_then_hang
defs = build_defs(Settings.from_env())
with dg.DagsterInstance.get() as instance:
    defs.resolve_job_def("flights__retrain_job").execute_in_process(
        instance=instance, run_config={**training_run_config("flights", as_of, "manual"), **QUIET}
    )
"""


def test_a_killed_retrain_leaves_the_champion_and_the_next_retrain_works(world: World) -> None:
    before = snapshot(world)
    marker = world.tmp / "training.marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RETRAIN, str(marker), AS_OF.isoformat()],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()[-3000:]
            assert time.monotonic() < deadline, "the retrain never reached training"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert snapshot(world) == before
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job("retrain_job")))
        assert runs[0].status == dg.DagsterRunStatus.STARTED, "killed mid-run: it never reached an end event"

        later = retrain(world, instance)
    assert later.success, failure_message(later)
    after = world.registry.champion_info(MODEL)
    assert after is not None and not after.is_baseline and after.version not in before.versions
    last = world.registry.history(MODEL)[-1]
    assert last["version"] == after.version and last["previous"] == before.version and last["kind"] == "promote"


def test_a_retrain_over_its_cpu_budget_is_stopped_and_the_champion_stays(world: World) -> None:
    """The same deployment with `policy.cost.max_cpu_seconds` no sweep can meet: stopped after its first
    trial, reported with the budget, nothing registered."""
    before = snapshot(world)
    raw = yaml.safe_load(world.settings.spec_path.read_text())
    raw["policy"]["cost"] = {**raw["policy"].get("cost", {}), "max_cpu_seconds": 0.001}
    tight = world.tmp / "tight_budget.yaml"
    tight.write_text(yaml.safe_dump(raw, sort_keys=False))
    defs = build_defs(world.settings.with_spec(tight))
    with dg.DagsterInstance.get() as instance:
        res = defs.resolve_job_def(job("retrain_job")).execute_in_process(
            instance=instance,
            run_config={**training_run_config("flights", AS_OF, "cost", "sweep"), **QUIET},
            raise_on_error=False,
        )
    mlflow.end_run()
    assert not res.success
    msg = failure_message(res)
    assert "candidate_models" in msg and "over the budget of 0.001" in msg and "the champion stays" in msg
    assert snapshot(world) == before
