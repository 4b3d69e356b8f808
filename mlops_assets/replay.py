"""Replay a dataset day by day through the real Dagster machinery on a persistent instance.

Each day runs the same `daily_job` the schedule would launch, then evaluates the real `retrain_sensor` with
its cursor, and runs the `retrain_job` it requests with the sensor's tags. The daemon is not involved, so a
replay is deterministic and needs no server, but everything lands in DAGSTER_HOME exactly as in production:
`dagster dev` on the same home afterwards shows the whole history.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType

from mlops_assets import stopping
from mlops_assets.config import PROJECT_ROOT, DatasetSpec, Settings, load_spec
from mlops_assets.defs import names
from mlops_assets.defs.monitoring.sensors import RETRAIN_JOB, SENSOR_NAME, TAG_KIND, TAG_REASON, TAG_TRIGGER
from mlops_assets.storage.stores import duckdb_file, store_for

RUN_KEY_TAG = "dagster/run_key"
# Every event still goes to the instance (the UI shows it all); only the console is kept for warnings.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

SENSOR_TAG = "dagster/sensor_name"

# How a replay executes one run: (instance, job name, run config, tags, partition key) -> (run id, success). In process
# by default (the embedded profile); a production replay passes `execute_on_workers`, so the same loop (days,
# the sensor with its cursor, the retrains it asks for) runs on the deployment's executor and stores.
Execute = Callable[[dg.DagsterInstance, str, dict[str, Any], dict[str, str], str | None], tuple[str, bool]]


@dataclass
class DayRecord:
    day: dt.date
    ok: bool
    wall_seconds: float
    step_seconds: float
    drift_share: float | None
    drift_detected: bool
    decay_detected: bool
    window_metric: float | None
    champion_version: str | None
    decision: str
    retrain: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class ReplayResult:
    spec: DatasetSpec
    settings: Settings
    days: list[DayRecord]
    retrains: list[dict[str, Any]]
    wall_seconds: float
    home: Path
    stopped: str = ""  # the signal that stopped the replay early ("SIGTERM", "SIGINT"); "" when it ran to the end
    # the comparison's daily refits made while the replay ran, by morning (strategies.ShadowRefits)
    shadow: dict[dt.date, Any] = field(default_factory=dict)


def instance_template() -> Path:
    """The embedded `dagster.yaml`: shipped inside the package (a wheel has no checkout around it), or the
    checkout's own when running from one."""
    shipped = Path(__file__).resolve().parent / "deploy" / "dagster.yaml"
    return shipped if shipped.exists() else PROJECT_ROOT / "dagster.yaml"


# How the shipped yaml names the home of the instance's SQLite storages (mlops_assets/instance_storage.py).
HOME_FROM_ENV = "dagster_home:\n      env: DAGSTER_HOME"


def install_instance_yaml(home: Path) -> Path:
    """Copy the embedded `dagster.yaml` into `home`, with the storages' home written out: a process that opens
    the instance by its folder (`DagsterInstance.from_config(home)`, without DAGSTER_HOME set) finds its files."""
    text = instance_template().read_text()
    path = home / "dagster.yaml"
    path.write_text(text.replace(HOME_FROM_ENV, "dagster_home: " + json.dumps(str(home.resolve()))))
    return path


def prepare_home(settings: Settings, spec: DatasetSpec, *, fresh: bool) -> Path:
    """Lay out the embedded profile under the data folder. A fresh replay starts the dataset from nothing and
    leaves every other dataset of the same folder and instance as it was."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.data_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        install_instance_yaml(home)
    os.environ["DAGSTER_HOME"] = str(home)
    if fresh:
        forget_dataset(settings, spec)
    return home


def forget_dataset(settings: Settings, spec: DatasetSpec) -> None:
    """Remove one dataset's state: its feature store, its lake folders, IO outputs and reports, its registered
    model, and its runs and materializations in the instance."""
    from mlflow.exceptions import MlflowException

    from mlops_assets.defs.resources import mlflow_client

    store = duckdb_file(settings.data_dir, spec.name)
    doomed = [store, store.with_suffix(".duckdb.wal"), store.with_suffix(".duckdb.tmp")]
    doomed += [stopping.state_path(settings.data_dir, spec.name)]
    doomed += [settings.data_dir / "io" / spec.name]
    lake = settings.data_dir / "lake"
    if not settings.lake_uri.startswith("s3://") and lake.is_dir():
        doomed += [area / spec.name for area in lake.iterdir() if area.is_dir()]
        doomed += [lake / "feature_store" / spec.name]
    for p in doomed:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        db = Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///"))
        if db.exists():
            client = mlflow_client(settings.mlflow_tracking_uri)
            with contextlib.suppress(MlflowException):  # never registered
                client.delete_registered_model(spec.model_name)
    with dg.DagsterInstance.get() as instance:
        prefix = names.job_name(spec.name, "")  # every job of the dataset carries its name
        for run in instance.get_runs():
            if run.job_name.startswith(prefix):
                instance.delete_run(run.run_id)
        keys = [k for k in instance.get_asset_keys() if k.path and k.path[0] == spec.name]
        if keys:
            instance.wipe_assets(keys)


def _step_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    conn = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_SUCCESS)
    total = 0.0
    for rec in conn.records:
        data = rec.event_log_entry.dagster_event.event_specific_data if rec.event_log_entry.dagster_event else None
        total += getattr(data, "duration_ms", 0.0) / 1000.0
    return total


def _latest_metadata(instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str) -> dict[str, Any]:
    ev = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition]), limit=1
    ).records
    if not ev or ev[0].asset_materialization is None:
        return {}
    return {k: getattr(v, "value", v) for k, v in ev[0].asset_materialization.metadata.items()}


def _run_metadata(instance: dg.DagsterInstance, run_id: str, asset: dg.AssetKey) -> dict[str, Any]:
    conn = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    for rec in conn.records:
        mat = rec.event_log_entry.asset_materialization
        if mat is not None and mat.asset_key == asset:
            return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return {}


def replay(
    spec_path: Path,
    settings: Settings,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    fresh: bool = True,
    on_day: Callable[[DayRecord], None] | None = None,
    execute: Execute | None = None,
    resume: bool = False,
    shadow_refits: bool = False,
) -> ReplayResult:
    """Replay the days; SIGTERM or Ctrl-C stops it at once, leaving the instance consistent (see `stopping`),
    and `resume` continues after the last complete day of a replay that was stopped. `shadow_refits` fits the
    comparison's daily refits on the idle core as the days go (tabular tasks; see strategies.ShadowRefits)."""
    import uuid

    import mlflow

    from mlops_assets.definitions import build_defs

    spec = load_spec(spec_path)
    settings = settings.with_spec(spec_path)
    home = prepare_home(settings, spec, fresh=fresh)
    defs = build_defs(settings)
    daily = defs.resolve_job_def(names.job_name(spec.name, "daily_job"))
    retrain = defs.resolve_job_def(names.job_name(spec.name, RETRAIN_JOB))
    sensor_name = names.job_name(spec.name, SENSOR_NAME)
    sensor = defs.resolve_sensor_def(sensor_name)
    days_range = [d for d in _days(start or spec.replay.start, end or spec.replay.end)]

    def in_process(
        instance: dg.DagsterInstance, job_name: str, run_config: dict[str, Any], tags: dict[str, str], pk: str | None
    ) -> tuple[str, bool]:
        res = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, run_config=run_config, tags=tags, partition_key=pk, raise_on_error=False
        )
        return res.run_id, res.success

    def evaluate_sensor(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, sensor_name=sensor_name)
        ctx.log.setLevel(logging.WARNING)  # the decision goes to the summary and the bar, not a line a day
        result = sensor(ctx)
        assert isinstance(result, dg.SensorResult)
        return result

    session = uuid.uuid4().hex[:12]  # tags every run this replay launches: what a stop has to settle

    def run(
        instance: dg.DagsterInstance, job_name: str, run_config: dict[str, Any], tags: dict[str, str], pk: str | None
    ) -> tuple[str, bool]:
        return (execute or in_process)(instance, job_name, run_config, {**tags, stopping.SESSION_TAG: session}, pk)

    records: list[DayRecord] = []
    retrains: list[dict[str, Any]] = []
    launched: set[str] = set()
    cursor: str | None = None
    state_file = stopping.state_path(settings.data_dir, spec.name)
    state = stopping.load_state(state_file) if resume else None
    if state is not None:  # continue after the last complete day, with the sensor's cursor as it was then
        records = [DayRecord(**r) for r in state["days"]]
        retrains = [r.retrain for r in records if r.retrain]
        launched, cursor = set(state["launched"]), state["cursor"]
        days_range = [d for d in days_range if d > state["last_complete_day"]]

    def hold_store() -> contextlib.AbstractContextManager[None]:
        """The feature store held open for a day's daily runs when they execute in this process: each of their
        steps then works on a cursor of one open database instead of opening and checkpointing the file itself
        (five opens a day at ~35 ms each). The retrain is left out: the file is not held for a sweep's length."""
        return store_for(settings, spec).session() if execute is None else contextlib.nullcontext()

    shadow = None
    if shadow_refits and spec.task != "ranking":
        from mlops_assets.strategies import ShadowRefits

        shadow = ShadowRefits(spec, settings)
    t0 = time.perf_counter()
    with dg.DagsterInstance.get() as instance, stopping.stop_on_signals() as stop:
        # A recommender's bandage is fit on the interactions so far: the bootstrap loads the side tables before
        # the first day and registers the bandage after it (that day has nothing before it to recommend from);
        # a tabular baseline needs no data.
        boot_after_first_day = spec.task == "ranking" and state is None

        def bootstrap() -> None:
            _, booted = run(instance, names.job_name(spec.name, "bootstrap_job"), QUIET, {}, None)
            if not booted and not stop.requested():
                raise RuntimeError(f"{spec.name}: the bootstrap run failed; see its run in the instance")

        try:
            if state is None:
                bootstrap()
            for n, day in enumerate(days_range):
                if stop.requested():  # a signal Dagster took while a run executed: stop at the day boundary
                    break
                pk = day.isoformat()
                with hold_store():
                    t = time.perf_counter()
                    run_id, ok = run(instance, daily.name, QUIET, {}, pk)
                    wall = time.perf_counter() - t
                    if stop.requested():  # the day's run was interrupted, or the rest of the day would be
                        break
                    if boot_after_first_day and n == 0:
                        bootstrap()
                    steps = _step_seconds(instance, run_id)
                    raw_md = _latest_metadata(instance, names.asset_key(spec.name, "raw_batches"), pk)
                    drift_md = _latest_metadata(instance, names.asset_key(spec.name, "drift_report"), pk)
                    perf_md = _latest_metadata(instance, names.asset_key(spec.name, "performance_report"), pk)
                    result = evaluate_sensor(instance, cursor)
                    cursor = result.cursor
                    for _ in range(3):  # a day scored by a champion that has moved since is re-scored, then decided
                        refresh = [r for r in result.run_requests or [] if r.job_name == daily.name]
                        if not refresh:
                            break
                        for r in refresh:
                            run(instance, daily.name, QUIET, dict(r.tags), r.partition_key)
                        result = evaluate_sensor(instance, cursor)
                        cursor = result.cursor
                retrain_info = None
                wanted = [r for r in result.run_requests or [] if r.job_name in (None, retrain.name)]
                if wanted:
                    rr = wanted[0]
                    decision = rr.tags.get(TAG_REASON, "retrain")
                    if rr.run_key not in launched:
                        launched.add(rr.run_key or "")
                        retrain_info = _run_retrain(instance, run, retrain.name, rr, day, spec.name, sensor_name)
                        retrains.append(retrain_info)
                        mlflow.end_run()  # dagster-mlflow leaves the run active in this process on a skipped step
                else:
                    decision = (result.skip_reason.skip_message if result.skip_reason else None) or "skip"
                if stop.requested():  # the retrain was interrupted: the day is not complete
                    break
                rec = DayRecord(
                    day=day,
                    ok=ok,
                    wall_seconds=wall,
                    step_seconds=steps,
                    drift_share=drift_md.get("drift_share") if drift_md.get("tested") else None,
                    drift_detected=bool(drift_md.get("drift_detected", False)),
                    decay_detected=bool(perf_md.get("decay_detected", False)),
                    window_metric=perf_md.get("window_value"),
                    champion_version=drift_md.get("champion_version"),
                    decision=decision or "",
                    retrain=retrain_info,
                    problems=list(raw_md.get("problems") or []),
                )
                records.append(rec)
                if shadow is not None:
                    shadow.after_day(day)
                stopping.save_state(state_file, last_day=day, cursor=cursor, launched=launched, records=records)
                if on_day:
                    on_day(rec)
        except KeyboardInterrupt:
            stop.requested()
        if stop.signal is not None:
            stopping.settle_in_flight(instance, session, stop.name)
    wall = time.perf_counter() - t0
    fits = {}
    if shadow is not None and stop.signal is None:
        fits = shadow.results()  # waits for the last refits, then lets the worker go
    elif shadow is not None:
        shadow.close()
    return ReplayResult(spec, settings, records, retrains, wall, home, stop.name, fits)


def _run_retrain(
    instance: dg.DagsterInstance,
    run: Execute,
    job_name: str,
    rr: dg.RunRequest,
    day: dt.date,
    dataset: str,
    sensor_name: str,
) -> dict[str, Any]:
    tags = {**rr.tags, SENSOR_TAG: sensor_name, RUN_KEY_TAG: rr.run_key or ""}
    t = time.perf_counter()
    run_id, success = run(instance, job_name, {**rr.run_config, **QUIET}, tags, None)
    wall = time.perf_counter() - t
    cand = _run_metadata(instance, run_id, names.asset_key(dataset, "candidate_models"))
    ev = _run_metadata(instance, run_id, names.asset_key(dataset, "evaluation_report"))
    champ = _run_metadata(instance, run_id, names.asset_key(dataset, "champion"))
    failure = _failure(instance, run_id) if not success else None
    return {
        "day": day,
        "run_id": run_id,
        "success": success,
        "trigger": rr.tags.get(TAG_TRIGGER),
        "reason": rr.tags.get(TAG_REASON),
        "kind": rr.tags.get(TAG_KIND, "sweep"),
        "wall_seconds": wall,
        # the evaluation's figure includes the promoted recipe's served fit; the candidate's alone otherwise
        "cpu_seconds": float(
            ev.get("cpu_seconds") or cand.get("cpu_seconds", 0.0) or (failure or {}).get("cpu_seconds", 0.0) or 0.0
        ),
        "family": cand.get("best_family"),
        "window": cand.get("best_window_days"),
        "decision": ev.get("decision", "failed"),
        "gate_reason": ev.get("reason", (failure or {}).get("message") or "the run failed before the gate"),
        "delta": ev.get("delta"),
        "champion_version": champ.get("champion_version"),
        "candidate_version": champ.get("candidate_version"),
        "moved": bool(champ.get("moved", False)),
    }


def _failure(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    """The first failed step's message and metadata (a retrain stopped by its CPU budget says so)."""
    conn = instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE)
    for rec in conn.records:
        ev = rec.event_log_entry.dagster_event
        data = ev.event_specific_data if ev else None
        user = getattr(data, "user_failure_data", None)
        if user is not None:
            md = {k: getattr(v, "value", v) for k, v in (user.metadata or {}).items()}
            return {"message": user.description or "", **md}
        err = getattr(data, "error", None)
        if err is not None:
            return {"message": str(err.message).strip().splitlines()[-1][:300]}
    return {}


def _days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def execute_on_workers(code_location: str = "mlops_assets.definitions") -> Execute:
    """Runs executed as `dagster job execute -m CODE_LOCATION` executes them: the job reconstructed from the code
    location, so that the deployment's executor (Celery in production) can send its steps to workers."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repo = ReconstructableRepository.for_module(code_location, "defs", working_directory=os.getcwd())

    def execute(
        instance: dg.DagsterInstance, job_name: str, run_config: dict[str, Any], tags: dict[str, str], pk: str | None
    ) -> tuple[str, bool]:
        if pk is not None:
            tags = {**tags, "dagster/partition": pk}
        res = dg.execute_job(
            repo.get_reconstructable_job(job_name),
            instance=instance,
            run_config=run_config,
            tags=tags,
            raise_on_error=False,
        )
        return res.run_id, res.success

    return execute
