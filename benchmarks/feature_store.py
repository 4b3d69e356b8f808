"""The feature store's training set against `pandas.merge_asof` building the same one: speed, peak memory, and
the same result; and what the store pays, as labels arrive, to keep its training rows ready.

    .venv/bin/python benchmarks/feature_store.py                               # 10M feature rows x 1M labels
    .venv/bin/python benchmarks/feature_store.py --rows 1000000 --labels 100000  # a quick run

The parent generates seeded synthetic data once (about 100k string entity keys with skewed activity,
irregular event times over a year, rows in time order as a store filled day by day holds them; 8 numeric
features of which two have gaps, 2 categorical features; labels at random times, each arriving the day after
its event, some before their entity's first feature row and some for entities never seen, so they have no
match; some exactly at a feature row's time, which "as of" must include) and writes two Parquet files. Each
side then runs in its own child process that reads those same files:

- duckdb: builds a `FeatureStore` on a fresh DuckDB file with a synthetic `DatasetSpec` and the store's own
  connection settings (its `memory_limit`, DuckDB's default threads: both cores).
  - load (not compared): bulk-inserts all the Parquet feature rows into the store's `features` table, with
    the entity key the store keeps beside each row (the one step that bypasses the store's per-day
    `write_features`, whose feature SQL is not what is measured here), and reads the labels file.
  - upkeep (timed, reported beside the goal): delivers the labels one arrival day at a time, in order,
    through the store's real `write_labels(day, raw rows of the day)`: each call opens the store, projects
    the raw rows through the spec, replaces the day's labels and matches them to the feature rows (every
    feature row of the year is already there, so each day searches the whole history), commits and closes.
    Only the `write_labels` calls are timed; slicing the day's rows out of the labels file is not.
  - build (timed, compared): the store's `training_frame(as_of)` with every label arrived, what each
    retrain pays: it reads the maintained training rows, orders them and converts them to a pandas frame.
- pandas: `pd.read_parquet` both files (load), then the build: the sorting `merge_asof` requires and
  `merge_asof(labels, features, on="event_time", by="entity_id", direction="backward")`, keeping the labels
  that found a feature row (the store's training set leaves the others out; a marker column tells them).
- one-shot (a third child, after the duckdb one): opens the same store file read-only and times
  `training_frame(as_of, from_scratch=True)`, the as-of join of all labels against the whole history that
  back-fills the training rows of a store of an earlier version (and answers when such a store is opened
  read-only): what every build would cost without the maintained rows.

Memory is read from /proc/self in each child: "process peak" is the peak resident memory of the whole child
(for duckdb: load + upkeep + build) above what its interpreter and imports held before the load; "build
peak" is the peak during the build above the memory resident when it started (the peak counter is reset
through /proc/self/clear_refs). The goal is judged on the build time and the process peak; the upkeep is
printed next to it, with the number of builds after which the store, counting its upkeep, is ahead of
rebuilding with merge_asof each time. The parent checks that both sides return the same labels with the
same feature values (nulls where a feature had a gap), that the labels the store left out are exactly those
merge_asof found nothing for, and that the one-shot join returns exactly the maintained frame.

On a shared machine the children suffer the same neighbours, but not at the same moment: run it when the
box is quiet, and read the ratios with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from peakmem import reset_peak, rss_kb  # benchmarks/ is on sys.path: these run as scripts

ROOT = Path(__file__).resolve().parents[1]
NUMERIC = [f"num_{i}" for i in range(8)]
CATEGORICAL = ["cat_0", "cat_1"]
WITH_GAPS = {"num_6", "num_7"}  # numeric features missing on some rows, as real sensors and joins are
START = dt.datetime(2024, 1, 1)
SPAN_US = 365 * 86_400 * 1_000_000
SEED = 7
GOAL_SPEED, GOAL_MEMORY = 10.0, 0.5


# ------------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------------


def _string_column(prefix: str, codes: np.ndarray, width: int) -> pa.Array:
    """Plain (not dictionary-encoded) strings, so that neither reader is handed a categorical for free."""
    n = int(codes.max()) + 1 if len(codes) else 0
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(n)], pa.string()).take(pa.array(codes))


def generate(folder: Path, rows: int, labels: int, entities: int) -> dict[str, int]:
    """Feature rows and label events written to Parquet, with (entity, time) unique in each, so that "the
    newest feature row at or before the label" is a single row on both sides."""
    rng = np.random.default_rng(SEED)
    activity = rng.lognormal(0.0, 1.0, entities)  # a few busy entities, a long tail of quiet ones
    activity /= activity.sum()
    ent = rng.choice(entities, rows, p=activity)
    t_us = rng.integers(0, SPAN_US, rows)
    key = ent.astype(np.int64) * (1 << 45) + t_us  # SPAN_US < 2**45
    _, keep = np.unique(key, return_index=True)
    keep = keep[np.argsort(t_us[keep], kind="stable")]  # in time order, as a store filled day by day holds them
    ent, t_us = ent[keep], t_us[keep]
    n = len(ent)
    cols: dict[str, Any] = {
        "entity_id": _string_column("e", ent, 6),
        "event_time": pa.array(np.datetime64(START, "us") + t_us.astype("timedelta64[us]")),
    }
    for i, name in enumerate(NUMERIC):
        values = rng.normal(i, 1.0 + i, n) if i % 2 == 0 else rng.gamma(2.0, 10.0 * (i + 1), n)
        if name in WITH_GAPS:
            values[rng.random(n) < 0.05] = np.nan
        cols[name] = pa.array(values, from_pandas=True)  # NaN becomes a Parquet null, i.e. missing
    cols["cat_0"] = _string_column("c", rng.choice(12, n, p=np.arange(12, 0, -1) / 78), 2)
    cols["cat_1"] = _string_column("k", rng.integers(0, 300, n), 3)
    pq.write_table(pa.table(cols), folder / "features.parquet")

    # Labels: random entities and times; 1% exactly at one of the entity's feature rows (ties must match),
    # 1% for entities that have no feature row at all.
    l_ent = rng.choice(entities, labels, p=activity)
    l_us = rng.integers(0, SPAN_US, labels)
    tie = rng.random(labels) < 0.01
    pick = rng.integers(0, n, int(tie.sum()))
    l_ent[tie], l_us[tie] = ent[pick], t_us[pick]
    unseen = rng.random(labels) < 0.01
    l_ent[unseen] = entities + rng.integers(0, entities // 10 + 1, int(unseen.sum()))
    l_key = l_ent.astype(np.int64) * (1 << 45) + l_us
    _, keep = np.unique(l_key, return_index=True)
    keep = keep[np.argsort(l_us[keep], kind="stable")]
    l_ent, l_us = l_ent[keep], l_us[keep]
    l_time = np.datetime64(START, "us") + l_us.astype("timedelta64[us]")
    day = l_time.astype("datetime64[D]")
    pq.write_table(
        pa.table(
            {
                "entity_id": _string_column("e", l_ent, 6),
                "event_time": pa.array(l_time),
                "event_day": pa.array(day),
                "arrival_day": pa.array(day + 1),
                "target": pa.array((rng.random(len(l_ent)) < 0.3).astype(np.float64)),
            }
        ),
        folder / "labels.parquet",
    )
    return {"features": n, "labels": len(l_ent), "entities": len(np.unique(ent))}


def bench_spec(folder: Path) -> Any:
    """A dataset spec whose feature columns are exactly the Parquet file's, so the store's tables fit it."""
    from mlops_assets.config import DatasetSpec

    schema: dict[str, Any] = {"entity_id": {"type": "string"}, "ts": {"type": "timestamp"}}
    schema |= {c: {"type": "float", "nullable": True} for c in NUMERIC}
    schema |= {c: {"type": "string"} for c in CATEGORICAL}
    schema["y"] = {"type": "int", "nullable": True}
    columns = {c: {"type": "numeric"} for c in NUMERIC} | {c: {"type": "categorical"} for c in CATEGORICAL}
    return DatasetSpec.model_validate(
        {
            "name": "pit_bench",
            "task": "classification",
            "metric": "roc_auc",
            "source": {"kind": "folder", "path": str(folder)},
            "schema": schema,
            "event_time": "CAST(ts AS TIMESTAMP)",
            "entity": ["entity_id"],
            "target": {"name": "target", "expr": "y", "label_delay_days": 1},
            "features": {"columns": columns},
            "replay": {"start": START.date().isoformat(), "end": (START.date() + dt.timedelta(days=365)).isoformat()},
            "search": {},
        }
    )


# ------------------------------------------------------------------------------------------------------------
# children
# ------------------------------------------------------------------------------------------------------------


def _peak_kb(resettable: bool) -> int:
    return rss_kb("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _label_days(labels: pa.Table) -> Iterator[tuple[dt.date, pd.DataFrame]]:
    """The labels as the pipeline delivers them: one frame of raw rows (the spec's entity, time and target
    columns) per arrival day, in order, each made only when it is delivered."""
    labels = labels.sort_by([("arrival_day", "ascending"), ("event_time", "ascending")])
    arrival = labels.column("arrival_day").to_numpy()
    days, starts = np.unique(arrival, return_index=True)
    ends = [*starts[1:], len(arrival)]
    raw = labels.select(["entity_id", "event_time", "target"]).rename_columns(["entity_id", "ts", "y"])
    for day, a, b in zip(days, starts, ends, strict=True):
        yield pd.Timestamp(day).date(), raw.slice(a, b - a).to_pandas()


def child(side: str, folder: Path, as_of: dt.date) -> dict[str, Any]:
    feats_path, labels_path = folder / "features.parquet", folder / "labels.parquet"
    sys.path.insert(0, str(ROOT))
    if side in ("duckdb", "oneshot"):
        from mlops_assets.storage.feature_store import ENTITY_KEY, FeatureStore

        store = FeatureStore(folder / "store.duckdb", bench_spec(folder))
    resettable = reset_peak()
    base_kb = rss_kb("VmRSS")
    t0 = time.perf_counter()
    if side == "duckdb":
        with store.connect() as con:  # creates the store's tables from the spec
            con.execute(
                "INSERT INTO features BY NAME SELECT *, CAST(event_time AS DATE) AS event_day, "
                f"{ENTITY_KEY} AS ekey FROM read_parquet(?)",
                [str(feats_path)],
            )
        label_days = _label_days(pq.read_table(labels_path))
    elif side == "pandas":
        features = pd.read_parquet(feats_path)
        labels = pd.read_parquet(labels_path)
    load_s = time.perf_counter() - t0
    upkeep_ms: list[float] = []
    if side == "duckdb":
        for day, raw in label_days:
            t = time.perf_counter()
            store.write_labels(day, raw)
            upkeep_ms.append((time.perf_counter() - t) * 1000)
    load_peak_kb = _peak_kb(resettable)
    if resettable:
        reset_peak()
    build_base_kb = rss_kb("VmRSS")
    t1 = time.perf_counter()
    unmatched = 0
    if side == "duckdb":
        out = store.training_frame(as_of)
    elif side == "oneshot":
        out = store.training_frame(as_of, from_scratch=True)
    else:
        lab = labels[labels["arrival_day"] <= as_of].sort_values("event_time", kind="stable")
        feat = features.assign(_matched=True).sort_values("event_time", kind="stable")
        out = pd.merge_asof(lab, feat, on="event_time", by="entity_id", direction="backward")
        unmatched = int(out["_matched"].isna().sum())
        out = out[out["_matched"].notna()].drop(columns="_matched")  # the store keeps matched labels only
    build_s = time.perf_counter() - t1
    build_peak_kb = _peak_kb(resettable)
    out.to_parquet(folder / f"result_{side}.parquet")
    return {
        "side": side,
        "load_s": load_s,
        "upkeep_ms": upkeep_ms,
        "build_s": build_s,
        "rows_out": len(out),
        "unmatched": unmatched if side == "pandas" else None,
        "base_mb": base_kb / 1024,
        "process_extra_mb": max(max(load_peak_kb, build_peak_kb) - base_kb, 0) / 1024,
        "build_extra_mb": max(build_peak_kb - build_base_kb, 0) / 1024,
        "peak_exact": resettable,
    }


def run_child(side: str, folder: Path, as_of: dt.date) -> dict[str, Any]:
    out = folder / f"{side}.json"
    cmd = [sys.executable, __file__, "--child", side, "--folder", str(folder), "--out", str(out)]
    before = os.getloadavg()[0]
    subprocess.run([*cmd, "--as-of", as_of.isoformat()], check=True)
    return {**json.loads(out.read_text()), "load_avg": (before, os.getloadavg()[0])}


# ------------------------------------------------------------------------------------------------------------
# comparison
# ------------------------------------------------------------------------------------------------------------


def _read_result(folder: Path, side: str) -> pd.DataFrame:
    cols = ["entity_id", "event_time", "event_day", "arrival_day", *NUMERIC, *CATEGORICAL, "target"]
    f = pd.read_parquet(folder / f"result_{side}.parquet", columns=cols)
    f["event_time"] = f["event_time"].astype("datetime64[us]")
    for c in ("event_day", "arrival_day"):
        f[c] = pd.to_datetime(f[c]).astype("datetime64[us]")
    for c in CATEGORICAL:
        f[c] = f[c].astype(object).where(f[c].notna(), None)
    return f.sort_values(["entity_id", "event_time"]).reset_index(drop=True)


def same_result(folder: Path, labels: int, pandas_unmatched: int) -> tuple[bool, str]:
    """Both results keyed by (entity, label time): the same labels with the same feature values, floats
    compared exactly (nothing is computed) and gaps as nulls on both sides; the labels the store left out
    are exactly those merge_asof found no feature row for (all nulls there); and the one-shot join's frame
    is the maintained one, row for row in the store's order."""
    duck, pan = _read_result(folder, "duckdb"), _read_result(folder, "pandas")
    gaps = int(duck[sorted(WITH_GAPS)].isna().any(axis=1).sum())
    try:
        pd.testing.assert_frame_equal(duck, pan, check_exact=True)
        pd.testing.assert_frame_equal(
            pd.read_parquet(folder / "result_oneshot.parquet"),
            pd.read_parquet(folder / "result_duckdb.parquet"),
            check_exact=True,
        )
    except AssertionError as exc:
        return False, " ".join(str(exc).split())[:300]
    if len(duck) + pandas_unmatched != labels:
        return False, f"{len(duck):,} matched + {pandas_unmatched:,} unmatched != {labels:,} labels"
    return True, (
        f"{len(duck):,} labelled rows identical, {gaps:,} of them with a null feature value on both sides; "
        f"{pandas_unmatched:,} labels with no feature row at or before them: all-null in merge_asof, "
        "left out by the store (inner as-of join), the same labels on both sides; the one-shot join's "
        "frame equal to the maintained one"
    )


def report(counts: dict[str, int], runs: dict[str, dict[str, Any]], same: tuple[bool, str]) -> None:
    duck, pan, one = runs["duckdb"], runs["pandas"], runs["oneshot"]
    speed = pan["build_s"] / duck["build_s"]
    mem = duck["process_extra_mb"] / max(pan["process_extra_mb"], 1e-9)
    build_mem = duck["build_extra_mb"] / max(pan["build_extra_mb"], 1e-9)
    upkeep = np.array(duck["upkeep_ms"])
    upkeep_s = float(upkeep.sum()) / 1000
    saved = pan["build_s"] - duck["build_s"]
    ahead = int(upkeep_s // saved) + 1 if saved > 0 else None
    print(
        f"\n== point-in-time training set: {counts['features']:,} feature rows ({counts['entities']:,} entities, "
        f"{len(NUMERIC)} numeric + {len(CATEGORICAL)} categorical) x {counts['labels']:,} label events"
    )
    print("  duckdb:  load = bulk insert of the feature rows; build = the store's training_frame (maintained rows)")
    print("  pandas:  load = read_parquet; build = sort_values('event_time') both, merge_asof(by='entity_id')")
    print("  oneshot: build = training_frame(from_scratch=True), the as-of join of all labels over the history")
    print(f"  {'':8s} {'load s':>8s} {'build s':>8s} {'base MB':>8s} {'process peak':>13s} {'build peak':>11s}")
    for r in (duck, pan, one):
        load = f"{r['load_s']:8.2f}" if r["side"] != "oneshot" else f"{'-':>8s}"
        print(
            f"  {r['side']:8s} {load} {r['build_s']:8.2f} {r['base_mb']:8.0f} "
            f"{r['process_extra_mb']:10.0f} MB {r['build_extra_mb']:8.0f} MB"
        )
    print(
        "  machine load average (1 min) before/after each child: "
        + ", ".join(f"{r['side']} {r['load_avg'][0]:.1f}/{r['load_avg'][1]:.1f}" for r in (duck, pan, one))
        + f" on {os.cpu_count()} cores"
    )
    print(
        "  (process peak: whole child above its interpreter and imports, for duckdb load + upkeep + build; "
        "build peak: during the build, above what was resident when it started)"
    )
    print(f"  same result: {same[0]} ({same[1]})")
    print(
        f"  build time: duckdb {speed:.1f}x faster than pandas "
        f"(the one-shot join: {pan['build_s'] / one['build_s']:.1f}x, {one['build_s']:.2f} s)"
    )
    print(f"  memory: duckdb process peak {mem:.2f} of pandas' (build step alone: {build_mem:.2f})")
    print(
        f"  upkeep, paid as the labels arrived: {upkeep_s:.1f} s over {len(upkeep)} label days through "
        f"write_labels, {upkeep.mean():.0f} ms per day (median {np.median(upkeep):.0f}, "
        f"last 30 days {upkeep[-30:].mean():.0f}, max {upkeep.max():.0f})"
    )
    print(
        "  counting that upkeep, the store is ahead of rebuilding with merge_asof "
        + (f"after {ahead} training-set builds" if ahead else "never (its build is not faster)")
        + f" (upkeep {upkeep_s:.1f} s / {saved:.2f} s saved per build)"
    )
    met = same[0] and speed >= GOAL_SPEED and mem <= GOAL_MEMORY
    print(
        f"  goal (build >= {GOAL_SPEED:.0f}x faster at <= {GOAL_MEMORY:.1f} of the process peak, same result): "
        f"{'met' if met else 'NOT met'}"
        + ("" if duck["peak_exact"] and pan["peak_exact"] else " (peaks from ru_maxrss: not resettable here)")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="feature rows (default 10M)")
    ap.add_argument("--labels", type=int, default=1_000_000, help="label events (default 1M)")
    ap.add_argument("--entities", type=int, help="distinct entities (default: one per 100 feature rows)")
    ap.add_argument("--child", choices=["duckdb", "pandas", "oneshot"])
    ap.add_argument("--folder")
    ap.add_argument("--out")
    ap.add_argument("--as-of")
    args = ap.parse_args()
    if args.child:
        res = child(args.child, Path(args.folder), dt.date.fromisoformat(args.as_of))
        Path(args.out).write_text(json.dumps(res))
        return
    with tempfile.TemporaryDirectory(prefix="fs_bench_") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        counts = generate(folder, args.rows, args.labels, args.entities or max(args.rows // 100, 1))
        print(
            f"generated {counts['features']:,} feature rows and {counts['labels']:,} labels in "
            f"{time.perf_counter() - t:.1f} s (seed {SEED}; not timed below)"
        )
        as_of = START.date() + dt.timedelta(days=366)  # every label has arrived
        runs = {side: run_child(side, folder, as_of) for side in ("duckdb", "oneshot", "pandas")}
        report(counts, runs, same_result(folder, counts["labels"], runs["pandas"]["unmatched"]))


if __name__ == "__main__":
    main()
