"""A folder of daily drops: does a day's read cost the same on day 400 as on day 1?

    python benchmarks/folder_source.py              # 400 drops of 30 rows; old and new side by side
    python benchmarks/folder_source.py --days 100   # quicker
    python benchmarks/folder_source.py --json       # one JSON line at the end

Through the real reader (`read_delivery`, what `raw_batches` calls), in two ways the folder fills:

- *arrival*: one drop a day, as in production: day k's read runs when its drop has just arrived beside the
  k - 1 earlier ones (whose days the manifest already knows).
- *replay*: every drop is there before the first day, as when a replay starts on an existing folder: the first
  day reads every file whole once (the manifest learns their days), the following days only their own file.

"new" keeps the source manifest in a lake folder, as the ingestion asset does; "old" reads without one, that
is every file of the folder every day (the reader before the manifest).

The machine is shared, so the early and the late days are measured *interleaved*: two folders, one at days
1..w and one at days n-w+1..n, a day of each in turn, so that a change of load hits both alike. The figure is
the ratio of their medians.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADER = "user,ts,x,kind,y\n"
START = dt.date(2024, 1, 1)


def drop(folder: Path, day: dt.date, rows: int) -> None:
    body = "".join(f"u{i},{day} {i % 24:02d}:{i % 60:02d}:00,{i % 50}.5,k{i % 3},{i % 2}\n" for i in range(rows))
    (folder / f"drop_{day:%Y%m%d}.csv").write_text(HEADER + body)


def make_spec(root: Path, folder: Path, days: int) -> Path:
    import yaml

    from mlops_assets_tests.conftest import TOY_SPEC

    raw = copy.deepcopy(TOY_SPEC)
    raw["source"] = {"kind": "folder", "path": str(folder), "pattern": "*.csv"}
    raw["replay"] = {"start": START.isoformat(), "end": (START + dt.timedelta(days=days - 1)).isoformat()}
    path = root / f"{folder.name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def timed_read(spec: object, day: dt.date, lake: Path | None) -> tuple[float, int]:
    from mlops_assets.datasets.manifest import SourceManifest
    from mlops_assets.datasets.sources import read_delivery
    from mlops_assets.storage.lake import LocalBackend

    t = time.perf_counter()
    manifest = SourceManifest(spec, LocalBackend(lake)) if lake is not None else None  # type: ignore[arg-type]
    d = read_delivery(spec, day, manifest)  # type: ignore[arg-type]
    took = time.perf_counter() - t
    assert len(d.rows) > 0 and not d.problems, (day, d.problems)
    return took, len(d.files)


def run(days: int, rows: int, window: int) -> dict[str, float]:
    from mlops_assets.config import load_spec

    out: dict[str, float] = {}
    all_days = [START + dt.timedelta(days=i) for i in range(days)]
    early, late = all_days[:window], all_days[-window:]
    with tempfile.TemporaryDirectory(prefix="folder_source_") as tmp:
        root = Path(tmp)
        # --- arrival: a small folder at days 1..w, a big one at days n-w+1..n ------------------------------------
        small, big = root / "small", root / "big"
        small.mkdir()
        big.mkdir()
        spec_small, spec_big = load_spec(make_spec(root, small, days)), load_spec(make_spec(root, big, days))
        for day in all_days[: days - window]:
            drop(big, day, rows)
        timed_read(spec_big, all_days[0], root / "lake_big")  # the manifest of the days so far
        new_s, new_b, old_s, old_b = [], [], [], []
        for i, (d_small, d_big) in enumerate(zip(early, late, strict=True)):
            drop(small, d_small, rows)
            drop(big, d_big, rows)
            pair = [(new_s, spec_small, d_small, root / "lake_small"), (new_b, spec_big, d_big, root / "lake_big")]
            for bucket, spec, day, lake in pair if i % 2 == 0 else pair[::-1]:
                bucket.append(timed_read(spec, day, lake)[0])
            pair_old = [(old_s, spec_small, d_small), (old_b, spec_big, d_big)]
            for bucket, spec, day in pair_old if i % 2 == 0 else pair_old[::-1]:
                bucket.append(timed_read(spec, day, None)[0])
        out["arrival_new_first_s"] = statistics.median(new_s)
        out["arrival_new_last_s"] = statistics.median(new_b)
        out["arrival_old_first_s"] = statistics.median(old_s)
        out["arrival_old_last_s"] = statistics.median(old_b)
        # --- replay: the full folder (a manifest of its own); early and late days in turn ----------------------
        lake = root / "lake_replay"
        t0, _ = timed_read(spec_big, all_days[0], lake)  # reads every file whole once
        rep_e, rep_l = [], []
        for i, (d_e, d_l) in enumerate(zip(all_days[1 : window + 1], late, strict=True)):
            pair_r = [(rep_e, d_e), (rep_l, d_l)]
            for bucket, day in pair_r if i % 2 == 0 else pair_r[::-1]:
                bucket.append(timed_read(spec_big, day, lake)[0])
        out["replay_first_day_s"] = t0
        out["replay_new_early_s"] = statistics.median(rep_e)
        out["replay_new_last_s"] = statistics.median(rep_l)
    out["arrival_new_ratio"] = out["arrival_new_last_s"] / out["arrival_new_first_s"]
    out["arrival_old_ratio"] = out["arrival_old_last_s"] / out["arrival_old_first_s"]
    out["replay_new_ratio"] = out["replay_new_last_s"] / out["replay_new_early_s"]
    out["old_over_new_last"] = out["arrival_old_last_s"] / out["arrival_new_last_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=400)
    ap.add_argument("--rows", type=int, default=30, help="rows per daily drop")
    ap.add_argument("--window", type=int, default=10, help="days at each end whose median is compared")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = run(args.days, args.rows, args.window)
    w, n = args.window, args.days
    print(f"a folder of {n} daily drops of {args.rows} rows; medians of {w} days; read_delivery per day")
    print(f"{'':34}{'days 1-' + str(w):>14}{f'days {n - w + 1}-{n}':>16}{'late/early':>12}")
    print(
        f"{'arrival, with the manifest (new)':34}{r['arrival_new_first_s'] * 1000:>11.1f} ms"
        f"{r['arrival_new_last_s'] * 1000:>13.1f} ms{r['arrival_new_ratio']:>11.2f}x"
    )
    print(
        f"{'arrival, every file a day (old)':34}{r['arrival_old_first_s'] * 1000:>11.1f} ms"
        f"{r['arrival_old_last_s'] * 1000:>13.1f} ms{r['arrival_old_ratio']:>11.2f}x"
    )
    print(
        f"{'replay of a full folder (new)':34}{r['replay_new_early_s'] * 1000:>11.1f} ms"  # days 2..w+1
        f"{r['replay_new_last_s'] * 1000:>13.1f} ms{r['replay_new_ratio']:>11.2f}x"
        f"   (first day, every file read whole once: {r['replay_first_day_s']:.2f} s)"
    )
    print(f"on the last days the old reader costs {r['old_over_new_last']:.0f}x the new one")
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
