"""A folder of daily drops: does a day's read cost the same on day 400 as on day 1?

    python benchmarks/folder_source.py              # 400 drops of 30 rows; old and new side by side
    python benchmarks/folder_source.py --days 100   # quicker
    python benchmarks/folder_source.py --json       # one JSON line at the end

Two ways the folder fills, both through the real reader (`read_delivery`, what `raw_batches` calls):

- *arrival*: one drop a day, as in production; day k's read runs when the folder holds k files.
- *replay*: all the drops are there before the first day, as when a replay starts on an existing folder; the
  first day reads every file whole once (the manifest learns their days), the following days their own file.

"new" keeps the source manifest in a lake folder, as the ingestion asset does; "old" reads without one, i.e.
every file of the folder every day (the reader before the manifest). The old way is timed on the first and last
days only: on day 400 it reads 400 files. Medians over `--window` days; ratios, not absolute seconds, are the
figure (the machine is shared).
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
    path = root / "drops.yaml"
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
    first, last = all_days[:window], all_days[-window:]
    with tempfile.TemporaryDirectory(prefix="folder_source_") as tmp:
        root = Path(tmp)
        # --- arrival: a drop a day --------------------------------------------------------------------------
        folder = root / "arrival"
        folder.mkdir()
        spec = load_spec(make_spec(root, folder, days))
        new: dict[dt.date, float] = {}
        old: dict[dt.date, float] = {}
        for day in all_days:
            drop(folder, day, rows)
            new[day], n_files = timed_read(spec, day, root / "lake_arrival")
            assert n_files == 1, n_files
            if day in first or day in last:
                old[day], n_files = timed_read(spec, day, None)
        out["arrival_new_first_s"] = statistics.median(new[d] for d in first)
        out["arrival_new_last_s"] = statistics.median(new[d] for d in last)
        out["arrival_old_first_s"] = statistics.median(old[d] for d in first)
        out["arrival_old_last_s"] = statistics.median(old[d] for d in last)
        # --- replay: every drop there from the start ----------------------------------------------------------
        spec_path = make_spec(root, folder, days)  # the same full folder
        spec = load_spec(spec_path)
        lake = root / "lake_replay"
        t0, _ = timed_read(spec, all_days[0], lake)  # reads every file whole once
        steady = {d: timed_read(spec, d, lake)[0] for d in all_days[1:]}
        out["replay_first_day_s"] = t0
        out["replay_new_early_s"] = statistics.median(steady[d] for d in all_days[1 : window + 1])
        out["replay_new_last_s"] = statistics.median(steady[d] for d in last)
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
    print(f"{'':34}{'days 1-' + str(w):>14}{f'days {n - w + 1}-{n}':>16}{'last/first':>12}")
    print(
        f"{'arrival, with the manifest (new)':34}{r['arrival_new_first_s'] * 1000:>11.1f} ms"
        f"{r['arrival_new_last_s'] * 1000:>13.1f} ms{r['arrival_new_ratio']:>11.2f}x"
    )
    print(
        f"{'arrival, every file a day (old)':34}{r['arrival_old_first_s'] * 1000:>11.1f} ms"
        f"{r['arrival_old_last_s'] * 1000:>13.1f} ms{r['arrival_old_ratio']:>11.2f}x"
    )
    print(
        f"{'replay of a full folder (new)':34}{r['replay_new_early_s'] * 1000:>11.1f} ms"
        f"{r['replay_new_last_s'] * 1000:>13.1f} ms{r['replay_new_ratio']:>11.2f}x"
        f"   (first day, every file read whole once: {r['replay_first_day_s']:.2f} s)"
    )
    print(f"on the last days the old reader costs {r['old_over_new_last']:.0f}x the new one")
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
