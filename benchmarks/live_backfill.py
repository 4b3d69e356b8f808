"""A backfill under the daemon against the sequential replay of the same days (issue 15's first goal).

Embedded profile, the shipped `dagster.yaml` (queued runs, two at a time, the feature-store pool), `dagster dev`:
a backfill of N days of `daily_job`, launched as the UI launches it, while the retrain sensor runs and the
retrains it requests run beside the daily runs. The same N days are replayed sequentially (`mlops-assets
replay`: each day, then the sensor, then the retrain it asks for) in another data folder. Both read the same
folder of daily CSV drops of the real flights data, with the same spec.

Printed for each: failed runs, daily partitions materialized per asset, retrains (day, trigger, gate), the
champion moves, the champion and its hold-out metric, and on how many days drift share, decay and the
champion that monitored the day agree; the exit status is 0 only with no failed run and everything equal.
The backfill runs days side by side and out of order; the sensor still decides them in day order, each
against the champion the sequential loop would have had (it waits for retrains in flight and re-scores a
day computed under a champion that has since moved), so nothing may differ.

    python benchmarks/live_backfill.py --days 60   # fast flights spec; replay 16 min, backfill ~1 day/min, 2 busy cores
    python benchmarks/live_backfill.py --days 20 --keep     # keep the two data folders to open in the UI
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402

from mlops_assets.config import DatasetSpec, Settings, load_spec  # noqa: E402
from mlops_assets.definitions import DAILY_ASSETS  # noqa: E402
from mlops_assets.defs import names  # noqa: E402
from mlops_assets.defs.monitoring.sensors import TAG_AS_OF, TAG_REFRESH, TAG_TRIGGER  # noqa: E402
from mlops_assets.defs.resources import ModelRegistryResource  # noqa: E402
from mlops_assets_tests.live import (  # noqa: E402
    BAD,
    DONE,
    Live,
    dagster_dev,
    deployment_env,
    drop_days,
    folder_spec,
    materialization_times,
    poll,
)

START = dt.date(2013, 1, 1)


def run_replay(spec_path: Path, data_dir: Path, days: int, cwd: Path) -> float:
    """The sequential reference: `mlops-assets replay` in its own process over its own data folder."""
    env = deployment_env(data_dir, spec_path)
    cmd = [sys.executable, "-m", "mlops_assets.cli", "replay", "--spec", str(spec_path), "--data-dir", str(data_dir)]
    cmd += ["--days", str(days), "--no-compare", "--quiet"]
    t = time.perf_counter()
    with (cwd / "replay.log").open("wb") as out:
        subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t


def sensor_caught_up(live: Live, spec: DatasetSpec, last_day: dt.date) -> bool:
    """True once the sensor's newest finished tick has decided the backfill's last day and nothing it
    requested is still queued or running: the retrains the backfill's last days call for have happened."""
    if any(r.status not in DONE for r in live.runs()):
        return False
    ticks = [t for t in live.sensor_ticks(names.job_name(spec.name, "retrain_sensor")) if t["cursor"]]
    if not ticks:
        return False
    through = json.loads(ticks[0]["cursor"]).get("through")
    return through is not None and dt.date.fromisoformat(through) >= last_day


def run_live(spec_path: Path, data_dir: Path, days: int, cwd: Path, timeout: float) -> tuple[float, float]:
    """The backfill under the daemon; returns (seconds to bootstrap, seconds from launch to all settled)."""
    spec = load_spec(spec_path)
    with dagster_dev(data_dir, spec_path, cwd=cwd) as live:
        t = time.perf_counter()
        live.wait_run(live.submit_job(names.job_name(spec.name, "bootstrap_job")), timeout=300)
        boot = time.perf_counter() - t
        partitions = [(START + dt.timedelta(days=i)).isoformat() for i in range(days)]
        t = time.perf_counter()
        backfill = live.launch_backfill(names.job_name(spec.name, "daily_job"), partitions)
        print(f"live: backfill {backfill} of {days} days launched", flush=True)
        last = [0.0]
        quiet_since: list[float | None] = [None]

        def settled() -> bool:
            if time.perf_counter() - last[0] > 60:
                last[0] = time.perf_counter()
                by: dict[str, int] = {}
                for r in live.runs():
                    key = f"{r.job_name.split('__')[-1]} {r.status.value}"
                    by[key] = by.get(key, 0) + 1
                print(f"  {time.perf_counter() - t:5.0f}s runs {by}", flush=True)
            if not live.backfill_finished(backfill) or any(r.status not in DONE for r in live.runs()):
                quiet_since[0] = None
                return False
            if sensor_caught_up(live, spec, START + dt.timedelta(days=days - 1)):
                return True
            # Every run has ended; the sensor's next tick (every 30 s) may still ask for a retrain. Three
            # minutes without one and it has nothing left to ask.
            quiet_since[0] = quiet_since[0] or time.perf_counter()
            return time.perf_counter() - quiet_since[0] > 180

        poll(settled, timeout, "the backfill to finish and the sensor to catch up", every=5.0, dump=live.dump)
        return boot, time.perf_counter() - t


def summarize(data_dir: Path, spec: DatasetSpec) -> dict[str, Any]:
    """What each deployment ended with, read from its instance and its MLflow registry."""
    settings = Settings.from_env(deployment_env(data_dir, Path("unused")))
    out: dict[str, Any] = {}
    with dg.DagsterInstance.from_config(str(data_dir / "dagster_home")) as instance:
        runs = list(instance.get_runs())
        out["failed"] = [(r.job_name, r.tags.get("dagster/partition", "")) for r in runs if r.status in BAD]
        out["runs"] = len(runs)
        out["refreshes"] = sum(TAG_REFRESH in r.tags for r in runs)
        out["partitions"] = {
            a: len(set(materialization_times(instance, names.asset_key(spec.name, a)).get("partition", [])))
            for a in DAILY_ASSETS
        }
        retrains = [r for r in runs if r.job_name == names.job_name(spec.name, "retrain_job")]
        evals = materialization_times(instance, names.asset_key(spec.name, "evaluation_report"))
        decisions = {}
        if len(evals):
            for _, e in evals.iterrows():
                rec = instance.fetch_materializations(
                    dg.AssetRecordsFilter(
                        asset_key=names.asset_key(spec.name, "evaluation_report"), storage_ids=[int(e["storage_id"])]
                    ),
                    limit=1,
                ).records[0]
                decisions[rec.run_id] = e.get("decision")
        out["retrains"] = sorted(
            (r.tags.get(TAG_AS_OF, "?"), r.tags.get(TAG_TRIGGER, "?"), str(decisions.get(r.run_id, r.status.value)))
            for r in retrains
        )
        out["days"] = {}
        for asset, cols in (
            ("drift_report", ["drift_share", "tested"]),
            ("performance_report", ["window_value", "decay_detected"]),
        ):
            mats = materialization_times(instance, names.asset_key(spec.name, asset))
            if not len(mats):
                continue
            # the newest row of each day, as it is: groupby().last() would take each column's newest non-null
            latest = mats.sort_values("storage_id").groupby("partition").tail(1).set_index("partition")
            for day, row in latest.iterrows():
                rec = out["days"].setdefault(day, {})
                for c in cols:
                    rec[c] = row.get(c)
                rec[f"{asset}_champion"] = row.get("champion_version")
        raw = materialization_times(instance, names.asset_key(spec.name, "features"))
        out["feature_rows"] = dict(zip(raw["partition"], raw["dagster/row_count"], strict=True)) if len(raw) else {}
    registry = ModelRegistryResource(
        tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
    )
    champ = registry.champion_info(spec.model_name)
    out["champion"] = (champ.version, champ.tags.get("mlops.family"), champ.holdout_metric) if champ else None
    out["moves"] = [(m.get("kind"), m.get("version"), m.get("data_day")) for m in registry.history(spec.model_name)]
    return out


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _same(a: Any, b: Any) -> bool:
    """Equal values; no value equals no value (a frame column holds it as NaN or None, by what else it holds)."""
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) < 1e-9
    return bool(a == b)


def compare(rep: dict[str, Any], live: dict[str, Any]) -> bool:
    """Prints both side by side; True when the backfill ended where the replay did."""
    print(f"\n{'':32} {'sequential replay':>28} {'daemon backfill':>28}")
    for label, key in (("runs", "runs"), ("of them re-scoring a day", "refreshes")):
        print(f"{label:32} {rep[key]:>28} {live[key]:>28}")
    print(f"{'failed runs':32} {len(rep['failed']):>28} {len(live['failed']):>28}")
    for a in DAILY_ASSETS:
        print(f"{'partitions of ' + a:32} {rep['partitions'][a]:>28} {live['partitions'][a]:>28}")
    print(f"{'retrains':32} {len(rep['retrains']):>28} {len(live['retrains']):>28}")
    print(f"{'champion (version, family, AUC)':32} {rep['champion']!s:>28} {live['champion']!s:>28}")
    print("\nretrains (as-of day, trigger, gate decision):")
    print(f"  replay: {rep['retrains']}")
    print(f"  live:   {live['retrains']}")
    print("champion moves (kind, version, data day):")
    print(f"  replay: {rep['moves']}")
    print(f"  live:   {live['moves']}")
    same_rows = sum(_same(v, live["feature_rows"].get(k)) for k, v in rep["feature_rows"].items())
    print(f"\nfeature rows per day identical: {same_rows} of {len(rep['feature_rows'])} days")
    days = sorted(set(rep["days"]) | set(live["days"]))
    for col in ("drift_share", "decay_detected", "window_value"):
        agree = [d for d in days if _same(rep["days"].get(d, {}).get(col), live["days"].get(d, {}).get(col))]
        differ = [d for d in days if d not in agree]
        print(
            f"{col} agrees on {len(agree)} of {len(days)} days" + (f"; first differs on {differ[0]}" if differ else "")
        )
    champ_differ = [
        d
        for d in days
        if rep["days"].get(d, {}).get("drift_report_champion") != live["days"].get(d, {}).get("drift_report_champion")
    ]
    if champ_differ:
        print(
            f"the champion that monitored the day differs on {len(champ_differ)} days (first {champ_differ[0]}): drift "
            "is measured against the champion's training data and decay on its predictions, so those days differ "
            "because the champion does"
        )
    else:
        print("the same champion version monitored every day in both")
    agree_all = all(
        _same(rep["days"].get(d, {}).get(c), live["days"].get(d, {}).get(c))
        for d in days
        for c in ("drift_share", "decay_detected", "window_value", "drift_report_champion")
    )
    same = (
        rep["retrains"] == live["retrains"]
        and rep["moves"] == live["moves"]
        and rep["champion"] == live["champion"]
        and rep["partitions"] == live["partitions"]
        and agree_all
    )
    print(f"\nsame retrains, gate decisions, champion moves, champion and daily reports: {'yes' if same else 'NO'}")
    return same


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--keep", action="store_true", help="keep the work folder (both data folders, logs)")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds for the backfill to settle")
    p.add_argument("--compare", metavar="WORK", help="only compare the two deployments of a kept work folder")
    args = p.parse_args()
    if args.compare:
        work = Path(args.compare)
        spec = load_spec(work / "flights_live.yaml")
        return 0 if compare(summarize(work / "replay", spec), summarize(work / "live", spec)) else 1
    work = Path(tempfile.mkdtemp(prefix="live_backfill_"))
    try:
        drops = work / "drops"
        drop_days(drops, [START + dt.timedelta(days=i) for i in range(args.days)])
        spec_path = folder_spec(work, drops)
        spec = load_spec(spec_path)
        print(f"spec: the fast flights spec (conftest.fast_flights_spec) over a folder of {args.days} daily drops")
        print(f"work folder: {work}", flush=True)
        replay_s = run_replay(spec_path, work / "replay", args.days, work)
        print(f"replay: {args.days} days in {replay_s:.0f}s", flush=True)
        boot_s, live_s = run_live(spec_path, work / "live", args.days, work, args.timeout)
        print(f"live: bootstrap {boot_s:.0f}s, backfill until settled {live_s:.0f}s", flush=True)
        rep, live = summarize(work / "replay", spec), summarize(work / "live", spec)
        same = compare(rep, live)
        return 1 if live["failed"] or not same else 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    raise SystemExit(main())
