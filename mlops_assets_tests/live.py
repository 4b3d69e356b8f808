"""A live deployment for the tests and benchmarks that need the daemon: `dagster dev` (webserver, daemon, code
server) and the online API as real processes over one embedded data folder, driven only the way a user drives
them: files dropped into a folder source, jobs and backfills asked for through the webserver's GraphQL API
(what the UI sends), the API asked over HTTP.

Everything runs in its own process group so that teardown kills the daemon's run workers too, and every wait
has a deadline; on a timeout the daemon's log and the failed runs' error events go into the exception, since
a live failure is otherwise hard to read after the fact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pandas as pd
import yaml

from mlops_assets.config import DatasetSpec, load_spec
from mlops_assets.datasets.sources import META_COLUMNS, read_day
from mlops_assets.replay import install_instance_yaml
from mlops_assets_tests.conftest import DEPLOYMENT_VARS, fast_flights_spec
from mlops_assets_tests.services import free_port

T = TypeVar("T")
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
BAD = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
FINISHED_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionSetNotFoundError { message }
    ... on UnauthorizedError { message }
  }
}
"""
LOCATIONS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name locationOrLoadError {
    __typename ... on RepositoryLocation { repositories { name } } ... on PythonError { message } } } } } }
"""
SENSOR_TICKS = """
query($sel: SensorSelector!) { sensorOrError(sensorSelector: $sel) { __typename
  ... on Sensor { sensorState { ticks(limit: 1000) { timestamp status runIds cursor skipReason } } } } }
"""
BACKFILL_STATUS = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status numPartitions } } }
"""


class LiveTimeout(AssertionError):
    """A live wait ran past its deadline; the message carries what the deployment logged."""


def drop_days(folder: Path, days: list[dt.date], shipped: DatasetSpec | None = None) -> dict[dt.date, int]:
    """Write each day's real flights as one CSV drop into `folder` (what an upstream system delivers), and
    return the rows with a label (a known arrival delay) per day, from which a test sizes its thresholds."""
    shipped = shipped or load_spec(fast_flights_spec(folder.parent))
    folder.mkdir(parents=True, exist_ok=True)
    labelled: dict[dt.date, int] = {}
    for day in days:
        rows, _ = read_day(shipped, day)
        rows = rows.drop(columns=[c for c in META_COLUMNS if c in rows])
        rows.to_csv(folder / f"flights-{day:%Y%m%d}.csv", index=False)
        labelled[day] = int(rows["arr_delay"].notna().sum())
    return labelled


def folder_spec(tmp: Path, folder: Path, **overrides: Any) -> Path:
    """The fast flights spec reading its days from a folder of drops instead of the shipped package."""
    raw = yaml.safe_load(fast_flights_spec(tmp, **overrides).read_text())
    raw["source"] = {"kind": "folder", "path": str(folder), "pattern": "*.csv"}
    path = tmp / "flights_live.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def deployment_env(data_dir: Path, spec_path: Path) -> dict[str, str]:
    """The environment of every process of the deployment: this machine's, minus whatever deployment variables
    the developer has set, plus the embedded profile under `data_dir`."""
    env = {k: v for k, v in os.environ.items() if k not in DEPLOYMENT_VARS}
    env.update(
        MLOPS_DATA_DIR=str(data_dir),
        DAGSTER_HOME=str(data_dir / "dagster_home"),
        MLOPS_SPEC=str(spec_path),
        PYTHONUNBUFFERED="1",
    )
    return env


def poll(
    check: Callable[[], T | None], timeout: float, what: str, every: float = 0.5, dump: Callable[[], str] = str
) -> T:
    """`check()` until it returns something other than None or False, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got is not None and got is not False:
            return got
        if time.monotonic() > deadline:
            raise LiveTimeout(f"timed out after {timeout:.0f}s waiting for {what}\n{dump()}")
        time.sleep(every)


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM the process group (dagster dev shuts its children down on it), SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # run workers the group leader left behind
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} missing)"


@dataclass
class Live:
    """One running `dagster dev` over an embedded data folder."""

    data_dir: Path
    env: dict[str, str]
    url: str
    log: Path
    proc: subprocess.Popen[bytes]
    location: str = ""
    _instance: dg.DagsterInstance | None = field(default=None, repr=False)

    @property
    def home(self) -> Path:
        return self.data_dir / "dagster_home"

    # --- GraphQL: what the UI sends -----------------------------------------------------------------------
    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            out = json.loads(resp.read())
        if out.get("errors"):
            raise RuntimeError(f"GraphQL errors: {out['errors']}")
        return dict(out["data"])

    def submit_job(
        self, job_name: str, tags: dict[str, str] | None = None, run_config: dict[str, Any] | None = None
    ) -> str:
        """Queue one run of a job, as the UI's Launchpad does: the daemon dequeues and launches it."""
        from dagster_graphql import DagsterGraphQLClient

        host, port = self.url.removeprefix("http://").split(":")
        client = DagsterGraphQLClient(host, port_number=int(port))
        return client.submit_job_execution(
            job_name, repository_location_name=self.location, tags=tags, run_config=run_config
        )

    def launch_backfill(self, job_name: str, partitions: list[str], *, submit_now: bool = False) -> str:
        """A backfill of a partitioned job over `partitions`, as the UI launches it: the backfill daemon
        submits the runs (on its next pass, up to 30 s later), the run queue launches them two at a time.
        `submit_now` has the webserver submit them to the queue itself (the GraphQL API's
        `forceSynchronousSubmission`), which saves a test that wait; such a backfill keeps no record of its
        own, only its runs carry its id (tag `dagster/backfill`)."""
        params = {
            "selector": {
                "partitionSetName": f"{job_name}_partition_set",
                "repositorySelector": {"repositoryName": "__repository__", "repositoryLocationName": self.location},
            },
            "partitionNames": partitions,
            "fromFailure": False,
            "forceSynchronousSubmission": submit_now,
        }
        got = self.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if got["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"backfill refused: {got}")
        return str(got["backfillId"])

    def backfill_status(self, backfill_id: str) -> str:
        got = self.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        return str(got.get("status"))

    def backfill_finished(self, backfill_id: str) -> bool:
        """The backfill submitted every run and each has ended (COMPLETED_SUCCESS, or COMPLETED_FAILED when a
        run failed: finished either way; the caller asserts on the runs)."""
        return self.backfill_status(backfill_id) in FINISHED_BACKFILL

    def sensor_ticks(self, sensor_name: str) -> list[dict[str, Any]]:
        """The sensor's ticks as the daemon recorded them (newest first): time, runs requested, cursor, and the
        skip reason, i.e. each retrain decision with its reason."""
        sel = {"repositoryName": "__repository__", "repositoryLocationName": self.location, "sensorName": sensor_name}
        got = self.graphql(SENSOR_TICKS, {"sel": sel})["sensorOrError"]
        if got["__typename"] != "Sensor":
            raise RuntimeError(f"no sensor {sensor_name}: {got}")
        return list(got["sensorState"]["ticks"])

    # --- the instance, read directly (SQLite; readers never block the daemon) -----------------------------
    @property
    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = dg.DagsterInstance.from_config(str(self.home))
        return self._instance

    def runs(self, job_name: str | None = None, tags: dict[str, str] | None = None) -> list[dg.DagsterRun]:
        return list(self.instance.get_runs(filters=dg.RunsFilter(job_name=job_name, tags=tags or {})))

    def wait_run(self, run_id: str, timeout: float) -> dg.DagsterRun:
        def done() -> dg.DagsterRun | None:
            run = self.instance.get_run_by_id(run_id)
            return run if run is not None and run.status in DONE else None

        run = poll(done, timeout, f"run {run_id}", dump=self.dump)
        if run.status != dg.DagsterRunStatus.SUCCESS:
            raise AssertionError(f"run {run_id} ({run.job_name}) ended {run.status}\n{self.dump()}")
        return run

    def failed_runs(self) -> list[dg.DagsterRun]:
        return [r for r in self.runs() if r.status in BAD]

    def dump(self) -> str:
        """The daemon's log tail and every failed run's errors: what a person would open the UI for."""
        parts = [f"--- dagster dev log ({self.log}) ---", _tail(self.log)]
        try:
            for run in self.failed_runs():
                parts.append(f"--- failed run {run.run_id} {run.job_name} {run.tags.get('dagster/partition', '')}")
                for rec in self.instance.all_logs(run.run_id):
                    if rec.is_dagster_event and rec.dagster_event and rec.dagster_event.is_failure:
                        parts.append(str(rec.dagster_event.event_specific_data)[:3000])
                    elif rec.level >= 40:
                        parts.append(rec.user_message[:1000])
        except Exception as exc:  # a dump must never hide the failure it reports
            parts.append(f"(could not read the runs: {exc!r})")
        return "\n".join(parts)

    def close(self) -> None:
        if self._instance is not None:
            self._instance.dispose()
            self._instance = None
        _stop_group(self.proc)


def prepare_data_dir(data_dir: Path) -> None:
    """The embedded profile's instance: the shipped `dagster.yaml` (queued runs, two at a time, the feature
    store pools) in DAGSTER_HOME, as `mlops-assets replay` lays it out."""
    home = data_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    install_instance_yaml(home)


@contextlib.contextmanager
def dagster_dev(data_dir: Path, spec_path: Path, cwd: Path, timeout: float = 120.0) -> Iterator[Live]:
    """`dagster dev -m mlops_assets.definitions` over `data_dir`, ready (code location loaded) when yielded."""
    prepare_data_dir(data_dir)
    port = free_port()
    env = deployment_env(data_dir, spec_path)
    log = cwd / "dagster_dev.log"
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "mlops_assets.definitions", "-h", "127.0.0.1"]
    cmd += ["-p", str(port), "--log-format", "colored"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    live = Live(data_dir=data_dir, env=env, url=f"http://127.0.0.1:{port}", log=log, proc=proc)
    try:

        def loaded() -> str | None:
            if proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {proc.returncode}\n{_tail(log)}")
            try:
                ws = live.graphql(LOCATIONS)["workspaceOrError"]
            except (OSError, urllib.error.URLError, RuntimeError):
                return None
            for entry in ws.get("locationEntries", []):
                loc = entry.get("locationOrLoadError") or {}
                if loc.get("__typename") == "PythonError":
                    raise RuntimeError(f"code location failed to load: {loc.get('message')}")
                if loc.get("__typename") == "RepositoryLocation":
                    return str(entry["name"])
            return None

        live.location = poll(loaded, timeout, "dagster dev to load the code location", every=1.0, dump=live.dump)
        yield live
    finally:
        live.close()


@dataclass
class Api:
    """The online API (`mlops-assets serve`) in its own process group."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def predict(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """One scoring request; None while the service cannot answer yet (starting, no model loaded)."""
        req = urllib.request.Request(
            f"{self.url}/predict", json.dumps({"rows": [row]}).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            if exc.code == 503:
                return None
            raise AssertionError(f"/predict answered {exc.code}: {exc.read()[:2000]!r}") from exc
        except OSError:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited with {self.proc.returncode}\n{_tail(self.log)}") from None
            return None

    def wait_ready(self, timeout: float) -> None:
        """Until the service answers at all (a 503 "no model loaded" counts: it is up and says so)."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited with {self.proc.returncode}\n{_tail(self.log)}")
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False

        poll(up, timeout, "the API to answer", dump=lambda: _tail(self.log))

    def dump(self) -> str:
        """What the service says about the model it follows (alias seen, last check, last error) and its log."""
        try:
            with urllib.request.urlopen(f"{self.url}/model", timeout=10) as resp:
                model = json.loads(resp.read())
            model.pop("tags", None)
        except Exception as exc:  # a dump must never hide the failure it reports
            model = {"error": repr(exc)}
        return f"--- API /model ---\n{json.dumps(model, default=str)}\n--- API log ---\n{_tail(self.log, 3000)}"


@contextlib.contextmanager
def api_server(env: dict[str, str], cwd: Path, poll_seconds: float = 1.0) -> Iterator[Api]:
    """`mlops-assets serve` following the champion alias every `poll_seconds`. Yielded as soon as it is started
    (it imports for a while; `wait_ready` waits for it), so that it can start while something else runs."""
    port = free_port()
    log = cwd / "api.log"
    cmd = [sys.executable, "-m", "mlops_assets.cli", "serve", "--port", str(port), "--poll-seconds", str(poll_seconds)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Api(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    finally:
        _stop_group(proc, grace=10.0)


def example_row(spec: DatasetSpec) -> dict[str, Any]:
    """A plausible request row: every feature of the spec, numbers for numeric ones, a real carrier/airport
    for the categorical ones (an unknown category would score too, but this reads like a real flight)."""
    categorical = {"carrier": "UA", "origin": "JFK", "dest": "LAX", "day_of_week": "2"}
    return {name: (1.0 if name in spec.numeric_features else categorical.get(name, "x")) for name in spec.feature_names}


def materialization_times(instance: dg.DagsterInstance, key: dg.AssetKey) -> pd.DataFrame:
    """Every materialization of an asset: partition, storage id, wall-clock timestamp, metadata values."""
    recs = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key), limit=10_000
    ).records  # the storage's ceiling per fetch; a year is 365
    rows = []
    for rec in recs:
        mat = rec.asset_materialization
        md = {k: getattr(v, "value", v) for k, v in (mat.metadata.items() if mat else [])}
        rows.append({"partition": rec.partition_key, "storage_id": rec.storage_id, "timestamp": rec.timestamp, **md})
    return pd.DataFrame(rows)
