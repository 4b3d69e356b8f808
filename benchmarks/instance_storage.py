"""Dagster's default SQLite storages against the project's pooled ones (mlops_assets/instance_storage.py), on
the fixed cost every replay day and every daemon run pays: a run of a small partitioned asset graph.

    python benchmarks/instance_storage.py [--runs 20] [--assets 8] [--rounds 2]

Each round runs the same job `--runs` times, one partition a run, in a fresh DAGSTER_HOME per storage, each
storage in its own process, the two alternating so that a noisy neighbour hits both. The assets do nothing:
what is left is Dagster writing the run, its events and its materializations. Prints seconds per run and the
ratio default / pooled per round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

POOLED_YAML = """
telemetry:
  enabled: false
run_storage:
  module: mlops_assets.instance_storage
  class: PooledSqliteRunStorage
  config: {dagster_home: {env: DAGSTER_HOME}}
event_log_storage:
  module: mlops_assets.instance_storage
  class: PooledSqliteEventLogStorage
  config: {dagster_home: {env: DAGSTER_HOME}}
schedule_storage:
  module: mlops_assets.instance_storage
  class: PooledSqliteScheduleStorage
  config: {dagster_home: {env: DAGSTER_HOME}}
"""
DEFAULT_YAML = "telemetry:\n  enabled: false\n"

CHILD = """
import os, sys, time
import dagster as dg
runs, n_assets = int(sys.argv[1]), int(sys.argv[2])
parts = dg.DailyPartitionsDefinition(start_date="2019-12-01")
assets, prev = [], None
for i in range(n_assets):
    @dg.asset(name=f"a{i}", partitions_def=parts, deps=[prev] if prev is not None else [])
    def _asset() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 1})
    assets.append(_asset)
    prev = _asset
job = dg.Definitions(assets=assets, jobs=[dg.define_asset_job("j")]).resolve_job_def("j")
quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
with dg.DagsterInstance.get() as instance:
    job.execute_in_process(instance=instance, partition_key="2019-12-31", run_config=quiet)  # warm-up
    t = time.perf_counter()
    for d in range(runs):
        day = f"2020-{1 + d // 28:02d}-{1 + d % 28:02d}"
        assert job.execute_in_process(instance=instance, partition_key=day, run_config=quiet).success
    print((time.perf_counter() - t) / runs)
"""


def per_run(yaml_text: str, runs: int, assets: int) -> float:
    with tempfile.TemporaryDirectory() as home:
        Path(home, "dagster.yaml").write_text(yaml_text)
        env = {**os.environ, "DAGSTER_HOME": home, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(runs), str(assets)], env=env, capture_output=True, text=True
        )
        if out.returncode != 0:
            raise SystemExit(f"the benchmark's run failed:\n{out.stderr[-3000:]}")
        return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--assets", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    ratios = []
    for r in range(args.rounds):
        default = per_run(DEFAULT_YAML, args.runs, args.assets)
        pooled = per_run(POOLED_YAML, args.runs, args.assets)
        ratios.append(default / pooled)
        print(
            f"round {r + 1}: {args.assets} assets, {args.runs} runs: default {default:.3f} s/run, "
            f"pooled {pooled:.3f} s/run, {default / pooled:.2f}x"
        )
    print(f"median: pooled storage is {statistics.median(ratios):.2f}x faster per run")


if __name__ == "__main__":
    main()
