"""Two retrains and an approval of one dataset racing for the champion, as real Dagster runs in three
processes on one instance whose dagster.yaml is the one the deployment should use (pools with a default
limit of 1 at op granularity, the per-dataset registry tag limit).

The retrains are two `retrain_job` runs of the registration and promotion steps over one evaluated sweep (the
training steps would be the same code in both and cost seconds each; what races is the move), forked from
this process so that they start together: both compared
their challenger with the baseline. The approval is of a version the gate left pending. Whatever the order
the runs happen to take, the champion's history must be a chain (each move's `previous` is the version the
move before it set), no move is lost, no version is promoted against a champion it was not compared with,
and every run that did not move the alias says why.
"""

from __future__ import annotations

import datetime as dt
import itertools
import multiprocessing
import os
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
import pytest

from mlops_assets.config import load_spec
from mlops_assets.defs import names
from mlops_assets.defs.monitoring.sensors import training_run_config
from mlops_assets.replay import QUIET
from mlops_assets_tests.conftest import akey, job
from mlops_assets_tests.defs.registry.project import MODEL, Project, bootstrap_and_ingest, isolated_project

AS_OF = dt.date(2013, 1, 9)
EVALUATED = [akey(k) for k in ("training_dataset", "candidate_models", "evaluation_report")]

# The instance configuration this test runs under, and the one to put in dagster.yaml: with `concurrency:
# pools:` present, Dagster refuses run-queue limits under `run_coordinator: config:`, so they move to
# `concurrency: runs:`. Granularity `op` makes a pool a mutex of steps (also for execute_in_process and
# Celery steps), not a gate on whole runs.
DAGSTER_YAML = """
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: 2
    tag_concurrency_limits:
      # approve, rollback and retrain runs of one dataset one at a time; datasets side by side
      - key: "mlops/dataset"
        value:
          applyLimitPerUniqueValue: true
        limit: 1
  pools:
    # every pool (e.g. flights__registry: the steps that move the champion) is a mutex
    default_limit: 1
    granularity: op
"""


def _dispose_inherited_engines() -> None:
    """A forked child must not use its parent's pooled SQLite connections (SQLAlchemy's advice: dispose of
    them without closing, so the parent's stay valid)."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    for engine in [*SqlAlchemyStore._engine_map.values(), *getattr(TrackingStore, "_engine_map", {}).values()]:
        engine.dispose(close=False)


def _racer(defs: dg.Definitions, kind: str, arg: str, go: str, results: Any) -> None:
    """One run, started when the start line opens: a retrain's registration and promotion, or an approval."""
    try:
        results.put(_run(defs, kind, arg, go))
    except BaseException:  # the parent fails with the child's traceback instead of waiting for a result
        results.put({"kind": kind, "error": traceback.format_exc()})


def _run(defs: dg.Definitions, kind: str, arg: str, go: str) -> dict[str, Any]:
    _dispose_inherited_engines()
    while not Path(go).exists():
        time.sleep(0.005)
    with dg.DagsterInstance.get() as instance:
        if kind == "retrain":
            res = defs.resolve_job_def(job("retrain_job")).execute_in_process(
                instance=instance,
                run_config=QUIET,
                asset_selection=[akey("registered_model_version"), akey("champion")],
                raise_on_error=False,
            )
        else:
            res = defs.resolve_job_def(job("approve_job")).execute_in_process(
                instance=instance,
                run_config={"ops": {job("approve_version"): {"config": {"version": arg, "actor": "carol"}}}, **QUIET},
                raise_on_error=False,
            )
    return {"kind": kind, "run_id": res.run_id, "success": res.success}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    # A one-family search: the race is about the moves, not the sweep.
    search = {"trials": 1, "families": {"logistic": {"C": [1.0]}}}
    with isolated_project(tmp_path_factory.mktemp("race"), search=search) as project:
        Path(os.environ["DAGSTER_HOME"], "dagster.yaml").write_text(DAGSTER_YAML)
        with dg.DagsterInstance.get() as instance:
            bootstrap_and_ingest(project, instance, AS_OF)
        yield project


def step_failures(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    out = []
    for rec in records:
        data = rec.dagster_event.step_failure_data if rec.dagster_event else None
        if data is not None and data.user_failure_data is not None:
            out.append(str(data.user_failure_data.description))
        elif data is not None and data.error is not None:
            out.append(data.error.to_string())
    return "\n".join(out)


def champion_materialization(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    recs = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    (rec,) = [r for r in recs if r.asset_materialization and r.asset_materialization.asset_key == akey("champion")]
    assert rec.asset_materialization is not None
    return {k: getattr(v, "value", v) for k, v in rec.asset_materialization.metadata.items()}


def gate_applied(instance: dg.DagsterInstance, run_id: str) -> Any:
    recs = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    (check,) = [r.dagster_event.event_specific_data for r in recs if r.dagster_event is not None
                and r.dagster_event.event_specific_data.check_name == "gate_applied"]  # fmt: skip
    return check


def test_two_retrains_and_an_approval_racing_leave_a_chain_of_moves(world: Project) -> None:
    reg = world.registry
    baseline = reg.champion_info(MODEL)
    assert baseline is not None and baseline.is_baseline
    # One evaluated sweep (the challenger beats the baseline), and a version waiting for a person's approval.
    with dg.DagsterInstance.get() as instance:
        res = world.defs.resolve_job_def(job("retrain_job")).execute_in_process(
            instance=instance,
            run_config={**training_run_config("flights", AS_OF, "manual"), **QUIET},
            asset_selection=[*EVALUATED, akey("registered_model_version")],
        )
        mlflow.end_run()
    assert res.output_for_node(job("evaluation_report"))["decision"]["status"] == "first_model"
    pending = res.output_for_node(job("registered_model_version"))["version"]
    reg.client.set_model_version_tag(MODEL, pending, "mlops.gate", "pending_approval")

    # Forked, not spawned: the three runs start together instead of importing Dagster and MLflow for seconds.
    ctx = multiprocessing.get_context("fork")
    go, results = world.tmp / "go", ctx.Queue()
    racers = [("retrain", "-"), ("retrain", "-"), ("approve", pending)]
    procs = [
        ctx.Process(target=_racer, args=(world.defs, kind, arg, str(go), results), daemon=True) for kind, arg in racers
    ]
    for p in procs:
        p.start()
    go.touch()
    runs = [results.get(timeout=180) for _ in racers]
    assert not [r["error"] for r in runs if "error" in r]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    history = reg.history(MODEL)
    assert history[0]["version"] == baseline.version
    # A chain: no move lost, each against the champion it was compared with.
    for before, move in itertools.pairwise(history):
        assert move["previous"] == before["version"], f"a move was lost between {before} and {move}"
        assert move["compared_with"] == move["previous"], f"{move} replaced a champion it was not compared with"
        if move["kind"] == "promote":
            compared = reg.client.get_model_version(MODEL, move["version"]).tags["mlops.compared_with"]
            assert compared == move["previous"]
    # All three compared with the baseline (the approval re-ran the gate against the champion it found, and
    # a copy of the same model is not better than itself): exactly one of them moved the alias.
    assert len(history) == 2, history
    winner = history[1]
    assert reg.champion_info(MODEL).version == winner["version"]  # type: ignore[union-attr]

    dataset = load_spec(world.settings.spec_path).name
    with dg.DagsterInstance.get() as instance:
        # The moving steps claimed the dataset's registry pool (created on first claim with the default limit
        # of 1: a mutex), and every claim was released.
        pool = instance.event_log_storage.get_concurrency_info(names.pool(dataset, "registry"))
        assert pool.slot_count == 1 and not pool.claimed_slots and not pool.pending_steps
        for run in runs:
            record = instance.get_run_by_id(run["run_id"])
            assert record is not None
            if run["kind"] == "approve":
                assert record.tags["mlops/dataset"] == dataset
                if winner["kind"] == "approve":
                    assert run["success"] and winner["version"] == pending
                else:
                    msg = step_failures(instance, run["run_id"])
                    assert not run["success"]
                    assert "no longer passes the gate" in msg or "since the evaluation" in msg, msg
                continue
            assert run["success"], step_failures(instance, run["run_id"])
            md = champion_materialization(instance, run["run_id"])
            check = gate_applied(instance, run["run_id"])
            assert md["compared_with"] == baseline.version
            if md["moved"]:
                assert md["decision"] == "first_model" and md["candidate_version"] == winner["version"]
                assert check.passed
            else:
                # refused, said so in the metadata and in a warning check; the version is marked stale
                assert md["decision"] == "stale", md
                assert md["reason"] == (
                    f"champion moved from v{baseline.version} to v{winner['version']} since the evaluation; "
                    f"v{md['candidate_version']} not promoted"
                )
                assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
                assert md["champion_version"] == winner["version"]
                tags = reg.client.get_model_version(MODEL, md["candidate_version"]).tags
                assert tags["mlops.gate"] == "stale"
    assert sum(not r["success"] for r in runs) <= 1, "only an approval may fail, and only with its reason"
