"""Ten datasets in one deployment: how long the Definitions take to load, and how long one evaluation of a
dataset's retrain sensor takes when every dataset has a year of history in the instance.

    python benchmarks/many_datasets.py [--datasets 10] [--days 365]

The specs are copies of the shipped flights spec under other names (what matters here is the number of
datasets, not their data). The history is what a year of daily runs leaves for the sensor to read: per
dataset and day a `labels`, `drift_report` and `performance_report` materialization with the metadata the
sensor reads, and a retrain run every fourth day. The sensor is evaluated as the daemon does, first from no
cursor (a new deployment over old history) and then ticking with its cursor after one new day. The goal in
issue 15 is under 5 s to load and under 200 ms per evaluation; the ratio to those goals is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.utils import make_new_run_id

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops_assets.config import DEFAULT_SPEC, load_spec  # noqa: E402
from mlops_assets.defs import names  # noqa: E402
from mlops_assets.defs.monitoring.sensors import RETRAIN_JOB, TAG_AS_OF, TAG_DATASET, build_retrain_sensor  # noqa: E402

LOAD_GOAL_S = 5.0
TICK_GOAL_S = 0.2

LOAD = """
import sys, time
t = time.perf_counter()
from mlops_assets.definitions import defs
repo = defs().get_repository_def()
repo.get_all_jobs()
print(len(repo.asset_graph.get_all_asset_keys()), len(repo.sensor_defs), time.perf_counter() - t)
"""


def write_specs(folder: Path, n: int) -> list[Path]:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    paths = []
    for i in range(n):
        raw["name"] = f"flights_{i:02d}"
        p = folder / f"flights_{i:02d}.yaml"
        p.write_text(yaml.safe_dump(raw, sort_keys=False))
        paths.append(p)
    return paths


def load_seconds(specs: list[Path], data: Path) -> tuple[int, int, float]:
    """A fresh interpreter, as the webserver's code server starts one: the import is counted too."""
    env = {"MLOPS_SPECS": ",".join(map(str, specs)), "MLOPS_DATA_DIR": str(data), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    assets, sensors, seconds = out.stdout.split()[-3:]
    return int(assets), int(sensors), float(seconds)


def fill_history(instance: dg.DagsterInstance, dataset: str, start: dt.date, days: int, first: int = 0) -> None:
    for i in range(first, first + days):
        day = (start + dt.timedelta(days=i)).isoformat()
        for asset, md in (
            ("labels", {"total_labelled_rows": 900 * (i + 1)}),
            (
                "drift_report",
                {"drift_share": 0.6, "drift_detected": True, "tested": True, "champion_is_baseline": False},
            ),
            ("performance_report", {"window_value": 0.7, "decay_detected": False}),
        ):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(names.asset_key(dataset, asset), partition=day, metadata=md)
            )
        if i % 4 == 0:
            instance.add_run(
                dg.DagsterRun(
                    job_name=names.job_name(dataset, RETRAIN_JOB),
                    run_id=make_new_run_id(),
                    tags={TAG_DATASET: dataset, TAG_AS_OF: day},
                    status=dg.DagsterRunStatus.SUCCESS,
                )
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=10)
    ap.add_argument("--days", type=int, default=365)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        specs = write_specs(Path(tmp), args.datasets)
        loads = [load_seconds(specs, Path(tmp) / "data") for _ in range(3)]
        assets, sensors, _ = loads[0]
        load = statistics.median(s for *_, s in loads)
        print(
            f"{args.datasets} datasets: {assets} assets, {sensors} sensors; Definitions load (import included, "
            f"median of 3) {load:.2f} s = {load / LOAD_GOAL_S:.2f}x the 5 s goal"
        )
        start = dt.date(2013, 1, 1)
        (Path(tmp) / "home").mkdir()
        with dg.instance_for_test(temp_dir=str(Path(tmp) / "home")) as instance:
            t = time.perf_counter()
            for p in specs:
                fill_history(instance, load_spec(p).name, start, args.days)
            print(f"history: {args.days} days x {args.datasets} datasets written in {time.perf_counter() - t:.0f} s")
            spec = load_spec(specs[0])
            sensor = build_retrain_sensor(spec)
            t = time.perf_counter()
            first = sensor(dg.build_sensor_context(instance=instance))
            cold = time.perf_counter() - t
            assert isinstance(first, dg.SensorResult)
            print(f"first evaluation: {first.skip_reason.skip_message if first.skip_reason else first.run_requests}")
            fill_history(instance, spec.name, start, 1, first=args.days)
            ticks = []
            cursor = first.cursor
            for _ in range(5):
                t = time.perf_counter()
                result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
                ticks.append(time.perf_counter() - t)
                assert isinstance(result, dg.SensorResult)
            print(f"with its cursor: {result.skip_reason.skip_message if result.skip_reason else 'retrain requested'}")
            tick = statistics.median(ticks)
            print(
                f"sensor evaluation, no cursor over {args.days} days: {cold * 1000:.0f} ms = "
                f"{cold / TICK_GOAL_S:.2f}x the 200 ms goal"
            )
            print(
                f"sensor evaluation with its cursor, one new day (median of 5): {tick * 1000:.0f} ms = "
                f"{tick / TICK_GOAL_S:.2f}x the 200 ms goal"
            )


if __name__ == "__main__":
    main()
