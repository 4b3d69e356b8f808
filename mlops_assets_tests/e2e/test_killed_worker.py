"""A run worker killed with `kill -9`, under the daemon, on the embedded profile as shipped: the run monitor must
notice the dead process and fail the run, the daemon's run retries must launch it again, the retry must
complete it without writing anything twice, and the champion must not move until a run completes.

Two kills, the two kinds of run a deployment has: a day's run in its features step (the raw batch stored, the
feature-store pool's one slot held by the dead step: the retry needs it back), and a retrain in the middle of
its sweep.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterRun, DagsterRunStatus

from mlops_assets.config import Settings, load_spec
from mlops_assets.defs.monitoring.sensors import TAG_DATASET, training_run_config
from mlops_assets.defs.resources import ModelRegistryResource
from mlops_assets.run_launcher import run_worker_pid
from mlops_assets.storage.stores import store_for
from mlops_assets_tests.conftest import akey, job
from mlops_assets_tests.live import Live, dagster_dev, drop_days, folder_spec, poll

pytestmark = pytest.mark.e2e

DAYS = [dt.date(2013, 1, 1) + dt.timedelta(days=i) for i in range(4)]
KILLED_DAY = DAYS[-1]


def step_event(live: Live, run_id: str, step: str, kind: DagsterEventType) -> bool:
    return any(r.step_key == step for r in live.instance.all_logs(run_id, of_type=kind))


def kill_worker_at(live: Live, run_id: str, step: str, kind: DagsterEventType, timeout: float) -> int:
    """SIGKILL the run's worker process as soon as `step` logs `kind`; returns the pid killed."""

    def reached() -> int | None:
        run = live.instance.get_run_by_id(run_id)
        assert run is not None and run.status not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE), (
            f"run {run_id} ended ({run and run.status}) before it could be killed at {step}"
        )
        worker = run_worker_pid(live.instance, run_id)
        return worker[0] if worker is not None and step_event(live, run_id, step, kind) else None

    pid = poll(reached, timeout, f"{step} to log {kind.value} in run {run_id}", every=0.05, dump=live.dump)
    os.kill(pid, signal.SIGKILL)
    return pid


def failed_then_retried(live: Live, run_id: str, timeout: float) -> DagsterRun:
    """Wait for the monitor to fail the killed run and for the daemon's retry of it to succeed."""

    def retried() -> DagsterRun | None:
        run = live.instance.get_run_by_id(run_id)
        assert run is not None
        if run.status != DagsterRunStatus.FAILURE:
            return None
        children = live.runs(tags={"dagster/parent_run_id": run_id})
        return children[0] if children and children[0].status == DagsterRunStatus.SUCCESS else None

    retry = poll(retried, timeout, f"run {run_id} to be failed and retried", every=0.5, dump=live.dump)
    assert retry.tags.get("dagster/retry_number") == "1", retry.tags
    return retry


def test_a_killed_run_worker_is_failed_retried_and_nothing_is_written_twice(tmp_path: Path) -> None:
    t0 = time.monotonic()
    drop_days(tmp_path / "drops", DAYS)
    spec_path = folder_spec(
        tmp_path,
        tmp_path / "drops",
        policy={"bootstrap_min_rows": 10**9},  # the sensor stays quiet: the test launches the retrain itself
        training={"holdout_days": 1, "validation_days": 1},
    )
    spec = load_spec(spec_path)
    with dagster_dev(tmp_path / "data", spec_path, cwd=tmp_path) as live:
        settings = Settings.from_env(live.env)
        registry = ModelRegistryResource(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
        )
        live.wait_run(live.submit_job(job("bootstrap_job")), timeout=180)
        baseline = registry.champion_info(spec.model_name)
        assert baseline is not None and baseline.is_baseline
        for day in DAYS[:-1]:
            live.wait_run(live.submit_job(job("daily_job"), tags={"dagster/partition": day.isoformat()}), 180)

        # --- a day's run, killed in its features step: after the raw batch is stored, holding the pool -------
        day_run = live.submit_job(job("daily_job"), tags={"dagster/partition": KILLED_DAY.isoformat()})
        raw_step = job("raw_batches")
        kill_worker_at(live, day_run, job("features"), DagsterEventType.STEP_START, timeout=180)
        killed_at = time.monotonic()
        retry = failed_then_retried(live, day_run, timeout=240)
        day_recovered = time.monotonic() - killed_at
        # The code server's note (an engine event naming SIGKILL) or the run monitor's (the run's failure naming
        # the worker that is gone), whichever saw it first: on a loaded machine the monitor can win the race.
        told = {DagsterEventType.ENGINE_EVENT, DagsterEventType.RUN_FAILURE}
        said = [r.message for r in live.instance.all_logs(day_run, of_type=told)]
        assert any("SIGKILL" in m or "is gone" in m for m in said), said
        # The retry re-executes from the failure: the stored raw batch is not read or written again.
        assert not step_event(live, retry.run_id, raw_step, DagsterEventType.STEP_START)
        raws = live.instance.fetch_materializations(akey("raw_batches"), limit=1000).records
        assert [r.partition_key for r in raws].count(KILLED_DAY.isoformat()) == 1
        features = store_for(settings, spec).features_for_day(KILLED_DAY)
        assert len(features) > 0 and not features.duplicated().any(), "the retry wrote a day's features twice"

        # --- a retrain, killed in the middle of its sweep ---------------------------------------------------
        moves_before = registry.history(spec.model_name)
        retrain = live.submit_job(
            job("retrain_job"),
            tags={TAG_DATASET: spec.name},
            run_config=training_run_config(spec.name, DAYS[-1], "manual"),
        )
        kill_worker_at(live, retrain, job("candidate_models"), DagsterEventType.STEP_START, timeout=240)
        killed_at = time.monotonic()

        # While the killed run is dead and its retry has not reached the champion step, nothing moves.
        def champion_untouched_until_the_retry() -> DagsterRun | None:
            moved = registry.history(spec.model_name)[len(moves_before) :]
            retries = live.runs(tags={"dagster/parent_run_id": retrain})
            assert all(retries and m["actor"] == f"dagster run {retries[0].run_id[:8]}" for m in moved), moved
            return retries[0] if retries and retries[0].status == DagsterRunStatus.SUCCESS else None

        retrain_retry = poll(
            champion_untouched_until_the_retry, 300, "the killed retrain's retry", every=0.5, dump=live.dump
        )
        killed = live.instance.get_run_by_id(retrain)
        assert killed is not None and killed.status == DagsterRunStatus.FAILURE
        retrain_recovered = time.monotonic() - killed_at
        assert not live.failed_runs() or {r.run_id for r in live.failed_runs()} == {day_run, retrain}
        moves = registry.history(spec.model_name)[len(moves_before) :]
        assert len(moves) <= 1, moves  # one retrain, at most one move, made by the run that completed
        versions = registry.client.search_model_versions(f"name='{spec.model_name}'")
        by_run = [v for v in versions if v.tags.get("mlops.dagster_run_id") in (retrain, retrain_retry.run_id)]
        assert len(by_run) <= 1, [(v.version, v.tags) for v in by_run]
        print(
            f"\nkill -9: day {KILLED_DAY} failed by the monitor and completed by its retry in {day_recovered:.0f}s; "
            f"retrain killed mid-sweep, completed by its retry in {retrain_recovered:.0f}s "
            f"({len(moves)} champion move); test wall {time.monotonic() - t0:.0f}s"
        )
