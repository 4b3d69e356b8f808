"""One dataset's runs in a production deployment, in order, from one process: the bootstrap, a daily run per
day, then a retrain as of the newest labelled day.

Each run goes through `dagster.execute_job` on the job reconstructed from the code location
(`replay.execute_on_workers`), which is what `dagster job execute -m mlops_assets.definitions -j ...` calls:
the steps are sent to the Celery workers, the events land in the instance's PostgreSQL. One interpreter per
dataset instead of one `dagster` command per run because loading the code costs 10 s of CPU a time, and the
production-profile test shares two cores with four worker processes.

    python -m mlops_assets_tests.production_runs DATASET --days 2013-01-01,2013-01-02 --retrain-as-of 2013-01-02

Prints one JSON line per run (job, partition, run id, success, seconds) and exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from typing import Any

import dagster as dg

from mlops_assets.defs import names
from mlops_assets.defs.monitoring.sensors import TAG_DATASET, training_run_config
from mlops_assets.replay import Execute, execute_on_workers


def run_job(
    instance: dg.DagsterInstance,
    execute: Execute,
    dataset: str,
    base: str,
    *,
    partition: str | None = None,
    run_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Execute one of the dataset's jobs to the end and say how it went (a failed run is reported, not raised:
    the caller lists every run)."""
    job_name = names.job_name(dataset, base)
    start = time.monotonic()
    run_id, success = execute(instance, job_name, run_config or {}, {TAG_DATASET: dataset}, partition)
    return {
        "dataset": dataset,
        "job": job_name,
        "partition": partition,
        "run_id": run_id,
        "success": success,
        "seconds": round(time.monotonic() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--days", required=True, help="comma-separated ISO days of the daily job, run in order")
    parser.add_argument("--retrain-as-of", default="", help="ISO day: a retrain as of it after the days")
    args = parser.parse_args(argv)
    execute = execute_on_workers()
    runs: list[dict[str, Any]] = []
    with dg.DagsterInstance.get() as instance:

        def record(outcome: dict[str, Any]) -> bool:
            runs.append(outcome)
            print(json.dumps(outcome), flush=True)
            return bool(outcome["success"])

        ok = record(run_job(instance, execute, args.dataset, "bootstrap_job"))
        for day in (d for d in args.days.split(",") if d):
            ok = ok and record(run_job(instance, execute, args.dataset, "daily_job", partition=day))
        if ok and args.retrain_as_of:
            as_of = dt.date.fromisoformat(args.retrain_as_of)
            config = training_run_config(args.dataset, as_of, "manual")
            ok = record(run_job(instance, execute, args.dataset, "retrain_job", run_config=config))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
