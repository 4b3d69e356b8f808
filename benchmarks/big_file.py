"""A big drop is streamed, not loaded: one day read from a 2 GB CSV, peak memory against the file's size.

    python benchmarks/big_file.py                 # 2 GB in /tmp, one day read, the file deleted afterwards
    python benchmarks/big_file.py --size-mb 300   # what the test runs
    python benchmarks/big_file.py --compare       # also pandas.read_csv of the whole file (the usual way)

Each read runs in its own process, so its peak RSS (resource.getrusage) is its own. The file holds ten days of
a toy dataset; the day read is a small part of it, as one day is of a history file.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADER = "user,ts,x,kind,y\n"
DAY = "2024-01-02"


def write_big_csv(path: Path, size_bytes: int) -> int:
    """Ten days of rows; the day read gets one row in 400, as a day does in a year-long history file.
    Returns the number of rows of that day."""
    lines = []
    ours = 0
    for i in range(20_000):
        d = 2 if i % 400 == 0 else 3 + i % 8  # about one day in a year of history
        ours += d == 2
        lines.append(
            f"u@@@@@@{i:05d},2024-01-{d:02d} {i % 24:02d}:{i % 60:02d}:00,{(i % 199) - 99}.25,kind{i % 7},{i % 2}\n"
        )
    block = "".join(lines).encode()
    rows = 0
    with open(path, "wb") as fh:
        fh.write(HEADER.encode())
        for k in range(size_bytes // len(block) + 1):
            fh.write(block.replace(b"@@@@@@", f"{k:06d}".encode()))  # every row unique: no duplicates
            rows += ours
    return rows


def spec_for(folder: Path, spec_path: Path) -> None:
    import yaml

    from mlops_assets_tests.conftest import TOY_SPEC

    raw = copy.deepcopy(TOY_SPEC)
    raw["source"] = {"kind": "folder", "path": str(folder), "pattern": "*.csv"}
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))


def child_ours(spec_path: str) -> dict[str, float]:
    """Runs in its own process: read one day through the real source and validator."""
    import datetime as dt
    import resource

    from mlops_assets.config import load_spec
    from mlops_assets.datasets.sources import read_delivery
    from mlops_assets.datasets.validate import validate_day

    spec = load_spec(spec_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    d = read_delivery(spec, dt.date.fromisoformat(DAY))
    out = validate_day(spec, d.day, d.rows, [f.describe() for f in d.files], d.file_columns)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rows": len(out.accepted), "seconds": seconds, "rss_before": before, "rss_peak": peak}


def child_pandas(csv_path: str) -> dict[str, float]:
    import resource

    import pandas as pd

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    df = pd.read_csv(csv_path)
    rows = int(pd.to_datetime(df["ts"]).dt.date.astype(str).eq(DAY).sum())
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rows": rows, "seconds": seconds, "rss_before": before, "rss_peak": peak}


def in_subprocess(kind: str, arg: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, arg], check=True, capture_output=True, text=True, cwd=ROOT
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size-mb", type=int, default=2048)
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--compare", action="store_true", help="also read the whole file with pandas")
    p.add_argument("--json", action="store_true", help="print one JSON line (for the test)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, arg = args.child
        print(json.dumps(child_ours(arg) if kind == "ours" else child_pandas(arg)))
        return

    work = Path(tempfile.mkdtemp(prefix="big_file_", dir=args.dir))
    folder = work / "drops"
    folder.mkdir()
    csv_path = folder / "history.csv"
    spec_path = work / "toy.yaml"
    try:
        t = time.perf_counter()
        expected = write_big_csv(csv_path, args.size_mb << 20)
        size = csv_path.stat().st_size
        gen = time.perf_counter() - t
        spec_for(folder, spec_path)
        ours = in_subprocess("ours", str(spec_path))
        assert ours["rows"] == expected, (ours, expected)
        growth = ours["rss_peak"] - ours["rss_before"]
        report = {
            "file_bytes": size,
            "day_rows": expected,
            "seconds": round(ours["seconds"], 2),
            "peak_rss_bytes": int(ours["rss_peak"]),
            "rss_growth_bytes": int(growth),
            "growth_over_file": round(growth / size, 4),
        }
        if args.json:
            print(json.dumps(report))
        else:
            mb = 1 << 20
            print(f"file: {csv_path} {size / mb:,.0f} MB (written in {gen:.1f} s); the day {DAY}: {expected:,} rows")
            print(
                f"ours (streamed, DuckDB over pyarrow blocks): {ours['seconds']:.1f} s, "
                f"peak RSS {ours['rss_peak'] / mb:,.0f} MB (+{growth / mb:,.0f} MB while reading, "
                f"{growth / size:.1%} of the file)"
            )
        if args.compare:
            pd_res = in_subprocess("pandas", str(csv_path))
            pd_growth = pd_res["rss_peak"] - pd_res["rss_before"]
            print(
                f"pandas.read_csv (whole file): {pd_res['seconds']:.1f} s, "
                f"peak RSS {pd_res['rss_peak'] / (1 << 20):,.0f} MB (+{pd_growth / (1 << 20):,.0f} MB); "
                f"ours uses {growth / pd_growth:.3f}x its extra memory and "
                f"{ours['seconds'] / pd_res['seconds']:.2f}x its time"
            )
    finally:
        for f in sorted(work.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        work.rmdir()
        os.sync()


if __name__ == "__main__":
    main()
