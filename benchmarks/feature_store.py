"""The feature store's point-in-time join against `pandas.merge_asof` doing the same join: speed, peak memory,
and the same result.

    .venv/bin/python benchmarks/feature_store.py                               # 10M feature rows x 1M labels
    .venv/bin/python benchmarks/feature_store.py --rows 1000000 --labels 100000  # a quick run

The parent generates seeded synthetic data once (about 100k string entity keys with skewed activity,
irregular event times over a year, rows in time order as a store filled day by day holds them; 8 numeric
features of which two have gaps, 2 categorical features; labels at random times, some before their
entity's first feature row and some for entities never seen, so they have no match; some exactly at a
feature row's time, which "as of" must include) and writes two Parquet files. Each side then runs in its
own child process that reads those same files:

- duckdb: builds a `FeatureStore` on a fresh DuckDB file with a synthetic `DatasetSpec` and the store's own
  connection settings (its `memory_limit`, DuckDB's default threads: both cores), bulk-loads the Parquet
  rows into the store's `features` and `labels` tables (the one step that bypasses the store's per-day
  `write_features`, whose feature SQL is not what is measured here), then calls the store's real
  `training_frame`: its as-of join, its ordering, and the conversion to a pandas frame.
- pandas: `pd.read_parquet` both files, then the sorting `merge_asof` requires and
  `merge_asof(labels, features, on="event_time", by="entity_id", direction="backward")`, keeping the labels
  that found a feature row (the store's training set leaves the others out; a marker column tells them).

Time is the join step only (load times are printed beside it). Memory is read from /proc/self in the child:
"process peak" is the peak resident memory of the whole child (load + join) above what its interpreter and
imports held before the load; "join peak" is the peak during the join above the memory resident when the
join started (the peak counter is reset through /proc/self/clear_refs). The goal is judged on the join
time and the process peak, since both sides start from the same files. The parent checks that both sides
return the same labels with the same feature values (nulls where a feature had a gap), and that the labels
the store left out are exactly those merge_asof found nothing for.

On a shared machine both children suffer the same neighbours, but not at the same moment: run it when the
box is quiet, and read the ratio with the load average printed beside it.
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


def child(side: str, folder: Path, as_of: dt.date) -> dict[str, Any]:
    feats_path, labels_path = folder / "features.parquet", folder / "labels.parquet"
    sys.path.insert(0, str(ROOT))
    if side == "duckdb":
        from mlops_assets.storage.feature_store import FeatureStore

        store = FeatureStore(folder / "store.duckdb", bench_spec(folder))
    resettable = reset_peak()
    base_kb = rss_kb("VmRSS")
    t0 = time.perf_counter()
    if side == "duckdb":
        with store.connect() as con:  # creates the store's tables from the spec
            con.execute(
                "INSERT INTO features BY NAME SELECT *, CAST(event_time AS DATE) AS event_day FROM read_parquet(?)",
                [str(feats_path)],
            )
            con.execute("INSERT INTO labels BY NAME SELECT * FROM read_parquet(?)", [str(labels_path)])
    else:
        features = pd.read_parquet(feats_path)
        labels = pd.read_parquet(labels_path)
    load_s = time.perf_counter() - t0
    load_peak_kb = _peak_kb(resettable)
    if resettable:
        reset_peak()
    join_base_kb = rss_kb("VmRSS")
    t1 = time.perf_counter()
    unmatched = 0
    if side == "duckdb":
        out = store.training_frame(as_of)
    else:
        lab = labels[labels["arrival_day"] <= as_of].sort_values("event_time", kind="stable")
        feat = features.assign(_matched=True).sort_values("event_time", kind="stable")
        out = pd.merge_asof(lab, feat, on="event_time", by="entity_id", direction="backward")
        unmatched = int(out["_matched"].isna().sum())
        out = out[out["_matched"].notna()].drop(columns="_matched")  # the store keeps matched labels only
    join_s = time.perf_counter() - t1
    join_peak_kb = _peak_kb(resettable)
    out.to_parquet(folder / f"result_{side}.parquet")
    return {
        "side": side,
        "load_s": load_s,
        "join_s": join_s,
        "rows_out": len(out),
        "unmatched": unmatched if side == "pandas" else None,
        "base_mb": base_kb / 1024,
        "process_peak_mb": max(load_peak_kb, join_peak_kb) / 1024,
        "process_extra_mb": max(max(load_peak_kb, join_peak_kb) - base_kb, 0) / 1024,
        "join_start_mb": join_base_kb / 1024,
        "join_extra_mb": max(join_peak_kb - join_base_kb, 0) / 1024,
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


def same_result(folder: Path, labels: int, pandas_unmatched: int) -> tuple[bool, str]:
    """Both results keyed by (entity, label time): the same labels with the same feature values, floats
    compared exactly (nothing is computed) and gaps as nulls on both sides; and the labels the store left
    out are exactly those merge_asof found no feature row for (all nulls there)."""
    cols = ["entity_id", "event_time", "event_day", "arrival_day", *NUMERIC, *CATEGORICAL, "target"]
    frames = []
    for side in ("duckdb", "pandas"):
        f = pd.read_parquet(folder / f"result_{side}.parquet", columns=cols)
        f["event_time"] = f["event_time"].astype("datetime64[us]")
        for c in ("event_day", "arrival_day"):
            f[c] = pd.to_datetime(f[c]).astype("datetime64[us]")
        for c in CATEGORICAL:
            f[c] = f[c].astype(object).where(f[c].notna(), None)
        frames.append(f.sort_values(["entity_id", "event_time"]).reset_index(drop=True))
    duck, pan = frames
    gaps = int(duck[sorted(WITH_GAPS)].isna().any(axis=1).sum())
    try:
        pd.testing.assert_frame_equal(duck, pan, check_exact=True)
    except AssertionError as exc:
        return False, " ".join(str(exc).split())[:300]
    if len(duck) + pandas_unmatched != labels:
        return False, f"{len(duck):,} matched + {pandas_unmatched:,} unmatched != {labels:,} labels"
    return True, (
        f"{len(duck):,} labelled rows identical, {gaps:,} of them with a null feature value on both sides; "
        f"{pandas_unmatched:,} labels with no feature row at or before them: all-null in merge_asof, "
        "left out by the store (inner as-of join), the same labels on both sides"
    )


def report(counts: dict[str, int], duck: dict[str, Any], pan: dict[str, Any], same: tuple[bool, str]) -> None:
    speed = pan["join_s"] / duck["join_s"]
    mem = duck["process_extra_mb"] / max(pan["process_extra_mb"], 1e-9)
    join_mem = duck["join_extra_mb"] / max(pan["join_extra_mb"], 1e-9)
    print(
        f"\n== point-in-time join: {counts['features']:,} feature rows ({counts['entities']:,} entities, "
        f"{len(NUMERIC)} numeric + {len(CATEGORICAL)} categorical) x {counts['labels']:,} label events"
    )
    print("  duckdb: the store's training_frame (as-of join in a FeatureStore on a DuckDB file, result to pandas)")
    print("  pandas: read_parquet, sort_values('event_time') both, merge_asof(by='entity_id', direction='backward')")
    print(f"  {'':7s} {'load s':>8s} {'join s':>8s} {'base MB':>8s} {'process peak':>13s} {'join peak':>10s}")
    for r in (duck, pan):
        print(
            f"  {r['side']:7s} {r['load_s']:8.2f} {r['join_s']:8.2f} {r['base_mb']:8.0f} "
            f"{r['process_extra_mb']:10.0f} MB {r['join_extra_mb']:7.0f} MB"
        )
    print(
        "  machine load average (1 min) before/after each child: "
        + ", ".join(f"{r['side']} {r['load_avg'][0]:.1f}/{r['load_avg'][1]:.1f}" for r in (duck, pan))
        + f" on {os.cpu_count()} cores"
    )
    print(
        "  (process peak: whole child, load + join, above its interpreter and imports; join peak: during the "
        "join, above what was resident when it started)"
    )
    print(f"  same result: {same[0]} ({same[1]})")
    print(f"  join time: duckdb {speed:.1f}x faster than pandas")
    print(f"  memory: duckdb process peak {mem:.2f} of pandas' (join step alone: {join_mem:.2f})")
    met = same[0] and speed >= GOAL_SPEED and mem <= GOAL_MEMORY
    print(
        f"  goal (>= {GOAL_SPEED:.0f}x faster at <= {GOAL_MEMORY:.1f} of the memory, same result): "
        f"{'met' if met else 'NOT met'}"
        + ("" if duck["peak_exact"] and pan["peak_exact"] else " (peaks from ru_maxrss: not resettable here)")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="feature rows (default 10M)")
    ap.add_argument("--labels", type=int, default=1_000_000, help="label events (default 1M)")
    ap.add_argument("--entities", type=int, help="distinct entities (default: one per 100 feature rows)")
    ap.add_argument("--child", choices=["duckdb", "pandas"])
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
        duck = run_child("duckdb", folder, as_of)
        pan = run_child("pandas", folder, as_of)
        report(counts, duck, pan, same_result(folder, counts["labels"], pan["unmatched"]))


if __name__ == "__main__":
    main()
