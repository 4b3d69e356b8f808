"""The run launcher's worker health check, through Dagster's own run monitor, on real processes: a live worker is
left alone; a killed one (reaped or still a zombie of its code server) fails its run with a reason; a pid now
held by a newer process is not mistaken for the worker; a worker on another machine is not judged."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import EngineEventData
from dagster._core.launcher.base import WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.monitoring.run_monitoring import monitor_started_run

from mlops_assets.run_launcher import MonitoredRunLauncher, process_alive

LOCAL = {GRPC_INFO_TAG: json.dumps({"host": "localhost", "port": 4266})}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    launcher = {"module": "mlops_assets.run_launcher", "class": "MonitoredRunLauncher"}
    with dg.instance_for_test(overrides={"run_launcher": launcher, "run_monitoring": {"enabled": True}}) as inst:
        yield inst


def _worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _started_run(instance: dg.DagsterInstance, pid: int, tags: dict[str, str] = LOCAL) -> dg.DagsterRun:
    run = create_run_for_test(instance, job_name="daily_job", status=dg.DagsterRunStatus.STARTED, tags=tags)
    instance.report_engine_event(f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid))
    return run


def _monitor(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dg.DagsterRun:
    record = instance.get_run_record_by_id(run.run_id)
    assert record is not None
    monitor_started_run(instance, None, record, logging.getLogger("test"))  # type: ignore[arg-type]
    after = instance.get_run_by_id(run.run_id)
    assert after is not None
    return after


def test_the_monitor_asks_and_leaves_a_live_worker_alone(instance: dg.DagsterInstance) -> None:
    assert isinstance(instance.run_launcher, MonitoredRunLauncher)
    assert instance.run_launcher.supports_check_run_worker_health
    proc = _worker()
    try:
        run = _started_run(instance, proc.pid)
        assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        assert _monitor(instance, run).status == dg.DagsterRunStatus.STARTED
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_a_killed_worker_fails_its_run_with_the_reason(instance: dg.DagsterInstance, reaped: bool) -> None:
    proc = _worker()
    run = _started_run(instance, proc.pid)
    proc.kill()
    if reaped:
        proc.wait()
    else:  # killed, not yet waited for by its parent (the code server): the pid still exists, as a zombie
        deadline = time.monotonic() + 10
        stat = Path(f"/proc/{proc.pid}/stat")
        while time.monotonic() < deadline and "Z" not in stat.read_text().split(")")[-1][:3]:
            time.sleep(0.05)
    try:
        health = instance.run_launcher.check_run_worker_health(run)
        assert health.status == WorkerStatus.FAILED and str(proc.pid) in (health.msg or "")
        assert _monitor(instance, run).status == dg.DagsterRunStatus.FAILURE
        said = [e.message for e in instance.all_logs(run.run_id)]
        assert any(f"run worker process {proc.pid} is gone" in m for m in said), said
    finally:
        proc.wait()


def test_a_pid_reused_by_a_newer_process_is_not_the_worker() -> None:
    proc = _worker()
    try:
        assert process_alive(proc.pid, time.time())
        assert not process_alive(proc.pid, time.time() - 3600)  # reported an hour before this process began
    finally:
        proc.kill()
        proc.wait()


def test_a_worker_on_another_machine_is_not_judged(instance: dg.DagsterInstance) -> None:
    remote = {GRPC_INFO_TAG: json.dumps({"host": "code-server.internal", "port": 4000})}
    run = _started_run(instance, 1, tags=remote)  # pid 1 exists here, but it is not that machine's worker
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    assert _monitor(instance, run).status == dg.DagsterRunStatus.STARTED
