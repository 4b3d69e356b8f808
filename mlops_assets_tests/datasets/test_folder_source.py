"""A folder of daily drops read through the source manifest: a day reads only the files that hold it, a
changed file is noticed by its checksum, and `validate` finds every broken file of the folder.

The folder is the issue's trial: 40 daily CSV drops of 30 rows, four of them broken (a missing column, a
changed type, a file cut off mid-row, an empty file).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from pathlib import Path

import pytest
import yaml

from mlops_assets.cli import main
from mlops_assets.config import DatasetSpec, load_spec
from mlops_assets.datasets.manifest import SourceManifest, manifest_key
from mlops_assets.datasets.sources import read_delivery
from mlops_assets.storage.lake import LocalBackend
from mlops_assets_tests.conftest import TOY_SPEC

START = dt.date(2024, 1, 1)
DAYS = [START + dt.timedelta(days=i) for i in range(40)]
HEADER = "user,ts,x,kind,y\n"


def rows(day: dt.date, n: int = 30) -> str:
    return "".join(f"u{i},{day} {i % 24:02d}:{i % 60:02d}:00,{i % 50}.5,k{i % 3},{i % 2}\n" for i in range(n))


def make_folder(root: Path, *, broken: bool) -> tuple[Path, Path]:
    """40 drops named by day; with `broken`, days 5, 12, 20 and 33 arrive broken."""
    folder = root / "drops"
    folder.mkdir(parents=True)
    for day in DAYS:
        (folder / f"drop_{day:%Y%m%d}.csv").write_text(HEADER + rows(day))
    if broken:
        d = DAYS
        (folder / f"drop_{d[5]:%Y%m%d}.csv").write_text(
            "user,ts,x,y\n"
            + "".join(",".join(r.split(",")[:3] + r.split(",")[4:]) for r in rows(d[5]).splitlines(True))
        )
        (folder / f"drop_{d[12]:%Y%m%d}.csv").write_text(
            HEADER + rows(d[12]).replace(".5,", " units,")  # x written as text
        )
        full = HEADER + rows(d[20])
        (folder / f"drop_{d[20]:%Y%m%d}.csv").write_text(full[: len(full) // 2 + 7])  # the upload stopped mid-row
        (folder / f"drop_{d[33]:%Y%m%d}.csv").write_text("")
    raw = copy.deepcopy(TOY_SPEC)
    raw["source"] = {"kind": "folder", "path": str(folder), "pattern": "*.csv"}
    raw["replay"] = {"start": DAYS[0].isoformat(), "end": DAYS[-1].isoformat()}
    spec_path = root / "drops.yaml"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder, spec_path


def test_validate_finds_every_broken_file_of_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, spec_path = make_folder(tmp_path, broken=True)
    assert main(["validate", str(spec_path)]) == 2
    err = capsys.readouterr().err
    d = DAYS
    named = {f"drop_{x:%Y%m%d}.csv" for x in (d[5], d[12], d[20], d[33])}
    assert f"schema.kind: column missing in {folder}/drop_{d[5]:%Y%m%d}.csv" in err
    assert f"schema.x.type: declared float, but 30 of 30 values in {folder}/drop_{d[12]:%Y%m%d}.csv are not" in err
    assert f"{folder}/drop_{d[20]:%Y%m%d}.csv: it ends mid-row: line 17 has" in err and "whole rows" in err
    assert f"source: {folder}/drop_{d[33]:%Y%m%d}.csv: empty file (0 bytes): it holds no rows" in err
    listed = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(listed) == 4 and all(any(n in line for n in named) for line in listed), listed


def test_validate_passes_the_same_folder_unbroken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, spec_path = make_folder(tmp_path, broken=False)
    assert main(["validate", str(spec_path)]) == 0
    assert "checked against its data" in capsys.readouterr().out


def _read(spec: DatasetSpec, lake: Path, day: dt.date) -> tuple[int, int, list[str], str, list[str]]:
    d = read_delivery(spec, day, SourceManifest(spec, LocalBackend(lake)))
    return len(d.rows), d.files_indexed, [Path(f.path).name for f in d.files], d.elsewhere, d.problems


def test_a_day_reads_only_its_files_and_a_changed_file_is_noticed(tmp_path: Path) -> None:
    folder, spec_path = make_folder(tmp_path, broken=False)
    spec = load_spec(spec_path)
    lake = tmp_path / "lake"
    # first sight: every file is read whole once (the manifest learns the days each holds)
    n, indexed, files, _, _ = _read(spec, lake, DAYS[0])
    assert n == 30 and indexed == 40 and len(files) == 40
    assert (lake / manifest_key("toy")).is_file()
    # from then on a day reads only the file that holds it
    n, indexed, files, _, _ = _read(spec, lake, DAYS[7])
    assert (n, indexed, files) == (30, 0, [f"drop_{DAYS[7]:%Y%m%d}.csv"])
    # a corrected re-delivery (same name, other bytes) is read whole again, and routes its rows by their days
    changed = folder / f"drop_{DAYS[3]:%Y%m%d}.csv"
    changed.write_text(HEADER + rows(DAYS[3], 10) + rows(DAYS[9], 5).replace("u", "late"))
    n, indexed, files, _, _ = _read(spec, lake, DAYS[9])
    assert (n, indexed) == (35, 1) and sorted(files) == sorted([changed.name, f"drop_{DAYS[9]:%Y%m%d}.csv"])
    # a touched file (same bytes, new time) keeps its entry: its checksum says nothing changed
    os.utime(changed, ns=(1, 1))
    n, indexed, files, _, _ = _read(spec, lake, DAYS[9])
    assert (n, indexed) == (35, 0)
    # an empty drop: the day has no rows, and the message names that file only
    (folder / f"drop_{DAYS[15]:%Y%m%d}.csv").write_text("")
    n, indexed, files, elsewhere, problems = _read(spec, lake, DAYS[15])
    assert (n, indexed, files, problems) == (0, 1, [f"drop_{DAYS[15]:%Y%m%d}.csv"], [])
    assert (
        elsewhere
        == "no file of the source's 40 holds rows of this day; they hold 39 other days, 2024-01-01..2024-02-09"
    )
    n, indexed, files, elsewhere, _ = _read(spec, lake, DAYS[15])
    assert (n, indexed, files) == (0, 0, [f"drop_{DAYS[15]:%Y%m%d}.csv"])
    # a file cut off mid-row blocks the days it holds, and only those
    full = HEADER + rows(DAYS[20])
    (folder / f"drop_{DAYS[20]:%Y%m%d}.csv").write_text(full[: len(full) // 2 + 7])
    for _ in range(2):  # when first seen, and from the manifest
        n, _, files, _, problems = _read(spec, lake, DAYS[20])
        assert n > 0 and len(problems) == 1 and "ends mid-row" in problems[0] and "whole rows" in problems[0]
    assert _read(spec, lake, DAYS[21])[4] == []


def test_the_manifest_is_plain_json_and_a_write_by_another_process_is_seen(tmp_path: Path) -> None:
    """A process keeps what it parsed and serialized (so a day touches only changed entries); the stored
    file stays the JSON document any reader parses, and other bytes there are parsed anew."""
    _, spec_path = make_folder(tmp_path, broken=False)
    spec = load_spec(spec_path)
    lake = tmp_path / "lake"
    _read(spec, lake, DAYS[0])
    path = lake / manifest_key("toy")
    doc = json.loads(path.read_bytes())
    assert set(doc) == {"fingerprint", "files"} and len(doc["files"]) == 40
    assert SourceManifest(spec, LocalBackend(lake)).entries == doc["files"]
    # another process forgot one file's entry: this process reads the new bytes, not what it kept
    name = next(iter(doc["files"]))
    del doc["files"][name]
    path.write_text(json.dumps(doc))
    again = SourceManifest(spec, LocalBackend(lake))
    assert name not in again.entries and len(again.entries) == 39


def test_a_small_file_is_scanned_once_per_process_and_answers_every_day_as_a_scan_of_that_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One file holding every day (a whole-history export): each day used to stream it whole. The day index
    gives each day the same rows in the same order, the same rows of no day, cut line and file record."""
    import pandas as pd

    from mlops_assets.datasets import sources

    history = "".join(rows(d, 7) for d in DAYS[:12])
    outside = "early,2023-06-01 00:00:00,1.5,k0,1\n"  # before the dataset's days: a row of no day
    malformed = "short,2024-01-03 01:00:00\n"
    text = HEADER + history + outside + malformed + rows(DAYS[12], 3)
    path = tmp_path / "history.csv"
    path.write_text(text[:-9])  # the export stopped mid-row
    raw = copy.deepcopy(TOY_SPEC)
    raw["source"] = {"kind": "file", "path": str(path)}
    raw["replay"] = {"start": DAYS[0].isoformat(), "end": DAYS[-1].isoformat()}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_spec(tmp_path / "s.yaml")
    scans: list[dt.date | None] = []
    real_scan = sources.scan_file

    def counted(*args: object, **kwargs: object) -> sources.FileScan:
        scans.append(args[2])  # type: ignore[arg-type]
        return real_scan(*args, **kwargs)  # type: ignore[arg-type]

    for day in [*DAYS[:14], DAYS[2]]:
        expected = real_scan(spec, path, day)
        monkeypatch.setattr(sources, "scan_file", counted)
        got = sources._scan_or_problem(spec, path, day)
        monkeypatch.setattr(sources, "scan_file", real_scan)
        assert len(got.rows) == len(expected.rows)
        pd.testing.assert_frame_equal(got.rows, expected.rows)
        pd.testing.assert_frame_equal(got.orphans, expected.orphans)
        pd.testing.assert_frame_equal(got.cut, expected.cut)
        assert got.info == expected.info
    assert scans == [None]  # one scan of the whole file for fifteen days
    assert len(got.orphans) == 2 and "ends mid-row" in (got.info.problem or "")
    path.write_text(HEADER + rows(DAYS[0], 2))  # changed: scanned again
    monkeypatch.setattr(sources, "scan_file", counted)
    assert len(sources._scan_or_problem(spec, path, DAYS[0]).rows) == 2
    assert scans == [None, None]
