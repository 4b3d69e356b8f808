"""Two datasets replayed at the same time through the production profile on two Celery workers, against each
replayed alone on the embedded profile: are the decisions, champions and metrics the same? (issue 15's goal)

    python benchmarks/production_two_datasets.py [--days 20]

Both sides run the same loop (`replay.replay`: a day's `daily_job`, then the real retrain sensor with its
cursor, then the `retrain_job` it asks for). Embedded: each dataset alone, in process, SQLite and the DuckDB
feature store. Production: both datasets at once in one deployment (`MLOPS_SPECS`), every step on two Celery
workers of two slots each (`execute_on_workers`), Dagster and MLflow on PostgreSQL, the lake, the Parquet feature
store and MLflow's artifacts on SeaweedFS's S3, Celery and the online rows on Redis. Needs PostgreSQL and Redis
on 127.0.0.1; SeaweedFS and the workers are started here.

The specs are the shipped flights and Chicago ones with a search of seconds and an early first model, so that
retrains happen within a few weeks (Chicago without its week- and fortnight-old lags, empty in a short run).
Printed per dataset: wall time of each side, failed runs, lock or write-conflict errors in the workers' logs,
and every day on which the sensor's decision, the champion, the drift share or the performance window differ,
and every retrain whose gate decision, family or delta differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops_assets.config import DEFAULT_SPEC, SPECS_DIR, load_spec  # noqa: E402

CONFLICT = re.compile(
    r"could not set lock|conflicting lock|lock on file|write-write conflict|transactioncontext error|"
    r"database is locked",
    re.IGNORECASE,
)
TOLERANCE = 1e-6  # metrics compared to this (same rows, same seeds: equal up to float summation order)


def fast_specs(folder: Path) -> list[Path]:
    """The two shipped specs with small searches and early first models (see the module)."""
    flights = yaml.safe_load(DEFAULT_SPEC.read_text())
    flights["search"].update({"trials": 3, "seconds": 60, "windows": [None], "recency_half_lives": [None]})
    flights["search"]["families"] = {"baseline": {}, "logistic": {"C": [0.1, 1.0]}}
    flights["policy"].update(
        {"decision": "rules", "bootstrap_min_rows": 6000, "cooldown_days": 4, "min_new_labelled_rows": 1000}
    )
    flights["monitoring"]["evidently_every_days"] = 0
    flights["training"].update({"holdout_days": 2, "validation_days": 2})
    chicago = yaml.safe_load((SPECS_DIR / "chicago_ridership.yaml").read_text())
    for name in ("entries_lag_7", "entries_lag_14"):
        del chicago["features"]["windows"][name]
    chicago["monitoring"].update({"decay_window_days": 5, "decay_min_rows": 3, "window_days": 5})
    chicago["monitoring"]["evidently_every_days"] = 0
    chicago["policy"].update(
        {"decision": "rules", "bootstrap_min_rows": 6, "cooldown_days": 4, "min_new_labelled_rows": 3}
    )
    chicago["training"].update({"holdout_days": 2, "validation_days": 2})
    chicago["search"].update({"trials": 2, "seconds": 20, "windows": [None], "recency_half_lives": [None]})
    chicago["search"]["families"] = {"baseline": {}, "ridge": {"alpha": [1.0]}}
    paths = []
    for raw in (flights, chicago):
        path = folder / f"{raw['name']}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        paths.append(path)
    return paths


def child(profile: str, spec_path: Path, days: int, out: Path) -> int:
    """One replay in this process, written to `out` as JSON: the embedded one in process, the production one
    on the workers (the environment says which deployment)."""
    from mlops_assets.config import Settings
    from mlops_assets.replay import execute_on_workers, replay

    spec = load_spec(spec_path)
    end = spec.replay.start + dt.timedelta(days=days - 1)
    execute = execute_on_workers() if profile == "production" else None
    t = time.perf_counter()
    result = replay(spec_path, Settings.from_env(), end=end, fresh=profile != "production", execute=execute)
    records = [dataclasses.asdict(r) for r in result.days]
    out.write_text(
        json.dumps({"wall": time.perf_counter() - t, "days": records, "retrains": result.retrains}, default=str)
    )
    return 0 if all(r["ok"] for r in records) and all(r["success"] for r in result.retrains) else 1


def _spawn(profile: str, spec: Path, days: int, out: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, __file__, "--child", profile, "--spec", str(spec), "--days", str(days), "--out", str(out)]
    with log.open("wb") as f:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(float(a) - float(b)) > TOLERANCE
    return a != b


def compare(name: str, alone: dict[str, Any], together: dict[str, Any]) -> list[str]:
    """Every difference between the two replays of one dataset, as lines to print."""
    lines = []
    for a, b in zip(alone["days"], together["days"], strict=True):
        for field in ("ok", "decision", "champion_version", "drift_share", "drift_detected", "window_metric"):
            if _differs(a[field], b[field]):
                lines.append(f"  {name} {a['day']} {field}: embedded {a[field]!r} / production {b[field]!r}")
    ra, rb = alone["retrains"], together["retrains"]
    if len(ra) != len(rb):
        lines.append(f"  {name}: {len(ra)} retrains embedded, {len(rb)} in production")
    for a, b in zip(ra, rb, strict=False):
        for field in ("day", "decision", "family", "delta", "moved", "candidate_version", "success"):
            if _differs(a.get(field), b.get(field)):
                lines.append(
                    f"  {name} retrain {a['day']} {field}: embedded {a.get(field)!r} / production {b.get(field)!r}"
                )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--child", choices=["embedded", "production"])
    parser.add_argument("--spec", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.spec, args.days, args.out)

    import socket

    for what, port in (("PostgreSQL", 5432), ("Redis", 6379)):
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                print(f"skipped: the production profile needs {what} on 127.0.0.1:{port}")
                return 0

    import redis
    from mlflow import MlflowClient

    from mlops_assets_tests.services import celery_worker, postgres_databases, production_env, seaweed_s3, stop_group

    work = Path(tempfile.mkdtemp(prefix="prod2_"))
    specs = fast_specs(work)
    names = [load_spec(p).name for p in specs]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DAGSTER_", "MLFLOW_"))}

    # each dataset alone on the embedded profile, one after the other
    for name, spec in zip(names, specs, strict=True):
        out, log = work / f"embedded-{name}.json", work / f"embedded-{name}.log"
        env = {**clean, "MLOPS_DATA_DIR": str(work / "embedded" / name), "MLOPS_SPEC": str(spec)}
        code = _spawn("embedded", spec, args.days, out, env, log).wait()
        if not out.exists():
            print(f"{name}: the embedded replay exited {code}; see {log}")
            return 1
        results[("embedded", name)] = json.loads(out.read_text())

    # both at once on the production profile, two workers of two slots
    with seaweed_s3(work / "seaweed", bucket="mlops") as s3, postgres_databases("bench_dagster", "bench_mlflow") as dbs:
        home = work / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "deploy" / "dagster.production.yaml", home / "dagster.yaml")
        redis_url = f"redis://127.0.0.1:6379/{2 + uuid.uuid4().int % 14}"
        redis.Redis.from_url(redis_url).flushdb()
        env = production_env(
            home=home,
            data_dir=work / "production",
            specs=specs,
            dagster_db=dbs[0],
            mlflow_db=dbs[1],
            s3_url=s3,
            bucket="mlops",
            redis_url=redis_url,
        )
        MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).search_experiments()  # the store, created once
        worker_logs = [work / f"worker-{w}.log" for w in ("a", "b")]
        workers = [celery_worker(f"bench-{i}@%h", env, log) for i, log in enumerate(worker_logs)]
        t = time.perf_counter()
        try:
            procs = {
                name: _spawn(
                    "production",
                    spec,
                    args.days,
                    work / f"production-{name}.json",
                    env,
                    work / f"production-{name}.log",
                )
                for name, spec in zip(names, specs, strict=True)
            }
            codes = {name: p.wait() for name, p in procs.items()}
        finally:
            for w in workers:
                stop_group(w)
        together_wall = time.perf_counter() - t
        for name in names:
            out = work / f"production-{name}.json"
            if not out.exists():
                print(f"{name}: the production replay exited {codes[name]}; see {work}/production-{name}.log")
                return 1
            results[("production", name)] = json.loads(out.read_text())

    conflicts = sum(len(CONFLICT.findall(p.read_text(errors="replace"))) for p in work.glob("*.log"))
    steps = [
        len(re.findall(r"Task execute_plan\[[0-9a-f-]+\] succeeded", p.read_text(errors="replace")))
        for p in worker_logs
    ]
    print(f"== two datasets, {args.days} days each; production both at once: {together_wall:.0f} s wall")
    print(f"steps per worker: {steps}; lock or write-conflict errors in any log: {conflicts}")
    print("| dataset | embedded alone s | production together s | failed runs e/p | retrains e/p | differences |")
    print("|---|---|---|---|---|---|")
    all_diffs: list[str] = []
    for name in names:
        alone, together = results[("embedded", name)], results[("production", name)]
        diffs = compare(name, alone, together)
        all_diffs += diffs
        failed = [
            sum(not d["ok"] for d in r["days"]) + sum(not x["success"] for x in r["retrains"])
            for r in (alone, together)
        ]
        print(
            f"| {name} | {alone['wall']:.0f} | {together['wall']:.0f} | {failed[0]}/{failed[1]} | "
            f"{len(alone['retrains'])}/{len(together['retrains'])} | {len(diffs)} |"
        )
    for line in all_diffs:
        print(line)
    print(f"(state kept in {work})")
    return 0 if conflicts == 0 and not all_diffs else 1


if __name__ == "__main__":
    sys.exit(main())
