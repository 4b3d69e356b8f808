"""The run launcher of both profiles: Dagster's own (each run in a process of the code server), plus the one
thing it lacks, a health check of that process.

A run worker killed with `kill -9` or by the out-of-memory killer cannot report its own death: without a
health check the run stays STARTED until `max_runtime_seconds` (hours), it keeps its `dagster/concurrency_key`
slot (our feature-store pool is a mutex, so every later step of the dataset waits behind it) and the
retrain sensor counts it as in flight. Dagster's run monitor asks the launcher whether the worker still lives;
`DefaultRunLauncher` cannot say, so the monitor never asks. This one answers from the worker's process id,
which every run worker writes into the run's event log when it starts ("Started process for run (pid: N)"):
the run is failed by the monitor within one poll interval, `run_retries` launches it again, and the freed
concurrency slots let the retry and everything behind it through.

Only a process on this machine can be checked: when the code server is on another host the answer is
RUNNING (unknown is not dead; the monitor's `max_runtime_seconds` stays the backstop there).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

PID_MESSAGE_PREFIX = "Started process for run (pid: "
# A process started this long after its run worker's "started" event is another process reusing the pid.
START_SLACK_SECONDS = 5.0


def _local_hosts() -> set[str]:
    return {"localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname(), socket.getfqdn()}


def runs_on_this_machine(run: DagsterRun) -> bool:
    """Whether the run's code server (and so its run worker) is a process of this machine."""
    raw = run.tags.get(GRPC_INFO_TAG)
    if not raw:
        return False
    info = json.loads(raw)
    return bool(info.get("socket")) or str(info.get("host", "")) in _local_hosts()


def run_worker_pid(instance: DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, when it reported) of the newest run worker of `run_id`, None before one has started."""
    records = instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
    for entry in reversed(records):
        if entry.message and entry.message.startswith(PID_MESSAGE_PREFIX):
            pid = entry.message[len(PID_MESSAGE_PREFIX) :].rstrip(").")
            if pid.isdigit():
                return int(pid), entry.timestamp
    return None


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def process_alive(pid: int, reported_at: float) -> bool:
    """True while `pid` is the same live process that reported at `reported_at`: a zombie (killed, not yet
    reaped by the code server) is dead, and a live process started after the report reuses the pid."""
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").exists():  # no procfs: all we can ask is whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state, start_ticks = fields[0], int(fields[19])
    if state in ("Z", "X"):
        return False
    started = _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")
    return started <= reported_at + START_SLACK_SECONDS


class MonitoredRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose run workers the run monitor can check (see the module's docstring)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        if not runs_on_this_machine(run):
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker is on another machine")
        worker = run_worker_pid(self._instance, run.run_id)
        if worker is None:  # launched, not yet started: the monitor's start timeout covers this stretch
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker has not reported yet")
        pid, reported_at = worker
        if process_alive(pid, reported_at):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker process {pid} is alive")
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker process {pid} is gone without reporting an end (killed, or out of memory)",
        )
