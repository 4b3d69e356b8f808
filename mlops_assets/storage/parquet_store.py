"""The feature store as partitioned Parquet on the lake, read by DuckDB: no single-writer file.

`FeatureStore` keeps everything in one DuckDB file, and DuckDB allows one writing process: two Dagster runs
(or two steps of one run under the multiprocess or Celery executor) that write features, labels, predictions
or monitoring history at once fail on its lock. Here every table is a set of partitions, one Parquet file
each, under the dataset's prefix of a local folder or an S3 bucket:

    <root>/<dataset>/features/event_day=2013-01-05/part.parquet
    <root>/<dataset>/labels/arrival_day=2013-01-06/part.parquet
    <root>/<dataset>/predictions/event_day=…   window_rows/event_day=…
    <root>/<dataset>/history/<table>/day=…/part.parquet   lookups/<name>.parquet

A partition is written whole, by whichever worker runs it, and replaces its earlier version atomically (a
local file is written beside it and renamed over it; an S3 object appears only when its upload completes),
so re-materializing a day replaces it exactly once, writers of different days never meet, and two writers
of the same day leave the last complete write, never a torn file. A day withdrawn entirely is written as an
empty partition, not deleted, so a reader that listed it never finds it gone.

DuckDB, in memory and without a file, is the engine: each call opens the partitions of the days it needs (a
local file through DuckDB's own Parquet reader, over a hard link that pins the version it read; an S3 object
fetched whole through pyarrow's S3 filesystem and handed to DuckDB as Arrow; DuckDB's httpfs extension is not
used, as it would be downloaded at run time) and runs the same SQL as the DuckDB file store (`FeatureSql`),
so point-in-time correctness is one piece of code.

What differs: the training set is joined on demand over the partitions instead of read from maintained
training rows (a maintained table is exactly the single-writer state this store avoids); the join is the
file store's one-shot join, keys first and values fetched for the matched rows only, with the entity key and
a row id stored in each feature row so neither is recomputed over the history. The online side is an
optional `RedisOnlineStore`, updated as feature partitions are written; without one the newest rows are
read from the Parquet history.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlops_assets.config import DatasetSpec
from mlops_assets.storage.feature_sql import (
    ENTITY_KEY,
    EVERYTHING,
    PREDICTIONS_DDL,
    FeatureSql,
    FeatureStoreApi,
    Range,
    Scratch,
    _q,
    encode_row,
    row_ddl,
)
from mlops_assets.storage.online_redis import OnlineRow, RedisOnlineStore

if TYPE_CHECKING:
    from mlops_assets.storage.feature_store import FeatureStore

PART = "part.parquet"
# Each table's partition column: the day a writer owns. Features, window rows and predictions by the day
# whose batch produced them; labels by the day they arrived (a late delivery never rewrites an earlier one).
PARTITION = {"features": "event_day", "labels": "arrival_day", "predictions": "event_day", "window_rows": "event_day"}
EPOCH = dt.date(1970, 1, 1)
PIN_TTL_SECONDS = 6 * 3600  # no store call reads for longer; older pins are a killed reader's leftovers
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass
class LakeFiles:
    """A dataset's folder on a local disk or in an S3 bucket, through pyarrow's filesystems: whole-file
    atomic writes and one listing per table."""

    fs: pafs.FileSystem
    base: str  # the dataset's folder as the filesystem names it: an absolute path, or "bucket/prefix/name"
    local: bool

    @classmethod
    def open(
        cls,
        root: str | Path,
        dataset: str,
        *,
        s3_endpoint_url: str | None = None,
        s3_region: str | None = None,
        s3_access_key: str | None = None,
        s3_secret_key: str | None = None,
    ) -> LakeFiles:
        """`root` is a local folder or `s3://bucket/prefix`. For S3 the endpoint is a URL
        (`http://127.0.0.1:8333`; the deployment passes MLOPS_S3_ENDPOINT_URL), None for AWS itself;
        credentials not given come from the AWS environment variables or config, as boto3 reads them."""
        text = str(root)
        if not text.startswith("s3://"):
            folder = Path(text).resolve() / dataset
            return cls(pafs.LocalFileSystem(), folder.as_posix(), local=True)
        parsed = urlparse(text)
        options: dict[str, Any] = {"allow_delayed_open": True}
        if s3_endpoint_url:
            endpoint = urlparse(s3_endpoint_url)
            options["endpoint_override"] = endpoint.netloc or endpoint.path
            options["scheme"] = endpoint.scheme or "https"
        if s3_region:
            options["region"] = s3_region
        if s3_access_key and s3_secret_key:
            options["access_key"], options["secret_key"] = s3_access_key, s3_secret_key
        prefix = "/".join(p for p in (parsed.netloc, parsed.path.strip("/"), dataset) if p)
        return cls(pafs.S3FileSystem(**options), prefix, local=False)

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def uri(self, rel: str) -> str:
        return self.path(rel) if self.local else f"s3://{self.path(rel)}"

    def write(self, rel: str, table: pa.Table) -> str:
        """Replace the file `rel` with `table`, all at once: a reader sees the old file or the new one."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        path = self.path(rel)
        if self.local:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            # A name of this writer's own beside the target: two writers of one partition never share it,
            # and a listing (which looks for `part.parquet` only) never sees it.
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            # An S3 object becomes visible only when its upload completes, whole (one PUT, or the completion
            # of a multipart upload): a writer killed half-way leaves the earlier version in place.
            with self.fs.open_output_stream(path) as out:
                out.write(data)
        return self.uri(rel)

    def pins(self) -> Path:
        """A new folder for one reader's hard links (see `pin`), inside the dataset's folder so that links
        can be made (same filesystem) and outside every table's folder so that no listing sees them."""
        pins = Path(self.base) / ".pins"
        if pins.is_dir():  # a reader killed mid-call leaves its links, which hold old versions' disk space
            stale = time.time() - PIN_TTL_SECONDS
            for old in pins.iterdir():
                with contextlib.suppress(OSError):
                    if old.stat().st_mtime < stale:
                        shutil.rmtree(old, ignore_errors=True)
        folder = pins / f"{os.getpid()}-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        return folder

    def pin(self, paths: list[str], folder: Path) -> list[str]:
        """Local files as they are now: a hard link to each in `folder` keeps this version readable (and
        unchanged) after a writer renames a new one over the name; a copy where links cannot be made."""
        folder.mkdir(parents=True, exist_ok=True)
        pinned = []
        for i, path in enumerate(paths):
            link = folder / f"{i}.parquet"
            try:
                os.link(path, link)
            except OSError:
                shutil.copyfile(path, link)
            pinned.append(str(link))
        return pinned

    def fetch(self, paths: list[str], schema: pa.Schema | None) -> pa.Table:
        """S3 objects read whole, one GET each (several at once), as one Arrow table of `schema` (columns a
        file lacks are null) or, without one, of the files' own columns."""

        def one(path: str) -> pa.Table:
            with self.fs.open_input_stream(path) as f:
                data = f.readall()
            return pq.read_table(pa.BufferReader(data))

        with ThreadPoolExecutor(8) as pool:
            tables = list(pool.map(one, paths))
        if schema is None:
            return pa.concat_tables(tables, promote_options="permissive")
        return pa.concat_tables(
            pa.Table.from_arrays(
                [t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type) for f in schema],
                schema=schema,
            )
            for t in tables
        )

    def exists(self, rel: str) -> bool:
        return bool(self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File)

    def partitions(self, rel_dir: str) -> dict[str, str]:
        """{partition value: file path} of the `<key>=<value>/part.parquet` files under `rel_dir`."""
        selector = pafs.FileSelector(self.path(rel_dir), recursive=True, allow_not_found=True)
        found: dict[str, str] = {}
        for attempt in range(5):
            # A local listing walks the tree while other workers create and rename partition folders in it:
            # a folder seen by one call and gone (or not yet there) at the next is a race, not a missing table.
            try:
                infos = self.fs.get_file_info(selector)
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise
                time.sleep(0.01 * (attempt + 1))
        for info in infos:
            if info.type != pafs.FileType.File or info.base_name != PART:
                continue
            folder = info.path.rsplit("/", 2)[-2]
            if "=" in folder:
                found[folder.split("=", 1)[1]] = info.path
        return found


@dataclass
class ParquetFeatureStore(FeatureSql):
    """`FeatureStore`'s public API over partitioned Parquet on a local folder or S3 (see the module)."""

    root: str | Path
    spec: DatasetSpec
    online: RedisOnlineStore | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    # As in FeatureStore: DuckDB's default would take 80% of the machine, which the workers share.
    memory_limit: str | None = "1GB"
    threads: int | None = None
    files: LakeFiles = field(init=False, repr=False)
    _schemas: dict[str, pa.Schema] = field(init=False, repr=False, default_factory=dict)
    _scratch: Scratch = field(init=False, repr=False)

    def __post_init__(self) -> None:
        config = {"memory_limit": self.memory_limit} if self.memory_limit else {}
        if self.threads:
            config["threads"] = str(int(self.threads))
        self._scratch = Scratch(config)
        self.files = LakeFiles.open(
            self.root,
            self.spec.name,
            s3_endpoint_url=self.s3_endpoint_url,
            s3_region=self.s3_region,
            s3_access_key=self.s3_access_key,
            s3_secret_key=self.s3_secret_key,
        )

    # --- the engine ----------------------------------------------------------------------------------------
    def _ddl(self, table: str) -> str:
        """The columns of a table's partitions: the file store's tables, plus each feature row's entity key
        and row id (see `write_features`)."""
        if table == "features":
            return f"{row_ddl(self.spec)}, ekey UBIGINT, rid BIGINT"
        if table == "labels":
            return self._labels_ddl()
        if table == "window_rows":
            return self._window_rows_ddl()
        return PREDICTIONS_DDL

    def _schema(self, table: str) -> pa.Schema:
        if table not in self._schemas:
            con = self._scratch.connect()
            try:
                con.execute(f"CREATE TEMP TABLE t ({self._ddl(table)})")
                self._schemas[table] = con.sql("SELECT * FROM t").to_arrow_table().schema
            finally:
                con.close()
        return self._schemas[table]

    def _typed(self, con: duckdb.DuckDBPyConnection, table: str, rows: str | None) -> pa.Table:
        """The rows of the query `rows` (none: no rows) as the Arrow table of a partition of `table`: every
        column of its schema in its order and type, whatever the query left out (null) or typed loosely."""
        con.execute(f"CREATE OR REPLACE TEMP TABLE _typed ({self._ddl(table)})")
        if rows is not None:
            con.execute(f"INSERT INTO _typed BY NAME {rows}")
        out = con.sql("SELECT * FROM _typed").to_arrow_table()
        con.execute("DROP TABLE _typed")
        return out

    def _paths(self, table: str, days: Range) -> list[str]:
        first, last = days
        return [
            path
            for value, path in sorted(self.files.partitions(table).items())
            if (first is None or dt.date.fromisoformat(value) >= first)
            and (last is None or dt.date.fromisoformat(value) <= last)
        ]

    @contextmanager
    def _engine(self, ranges: dict[str, Range], lookups: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory DuckDB connection on which each table of `ranges` holds the partitions of its range
        of days, and (with `lookups`) each side table that has been loaded is `lookup_<name>`.

        Each file is read as it was when the connection opened it, however often a query scans it, even if
        a writer replaces it meanwhile: a local file through a hard link taken first (DuckDB opens a file
        more than once, and read a header of one version with the data of the next: "Out of buffer"), an S3
        object fetched whole in one GET (ranged reads of one object could straddle two versions)."""
        con = self._scratch.connect()
        pins = self.files.pins() if self.files.local else None
        try:

            def register(name: str, paths: list[str], schema: pa.Schema | None) -> None:
                if pins is None:
                    con.register(name, self.files.fetch(paths, schema))
                    return
                listed = ", ".join("'" + p.replace("'", "''") + "'" for p in self.files.pin(paths, pins / name))
                con.execute(
                    f"CREATE OR REPLACE TEMP VIEW {_q(name)} AS SELECT * FROM read_parquet([{listed}], "
                    "hive_partitioning = false, union_by_name = true)"
                )

            for table, days in ranges.items():
                paths = self._paths(table, days)
                if paths:
                    register(table, paths, self._schema(table))
                else:
                    con.execute(f"CREATE TEMP TABLE {table} ({self._ddl(table)})")
            if lookups:
                for lk in self.spec.features.lookups:
                    if self.files.exists(f"lookups/{lk.name}.parquet"):
                        register("lookup_" + lk.name, [self.files.path(f"lookups/{lk.name}.parquet")], None)
            yield con
        finally:
            con.close()
            if pins is not None:
                shutil.rmtree(pins, ignore_errors=True)

    def _reading(self, **ranges: Range) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        return self._engine(ranges)

    def _all_tables(self) -> dict[str, Range]:
        tables = {"features": EVERYTHING, "labels": EVERYTHING, "predictions": EVERYTHING}
        if self.spec.features.windows:
            tables["window_rows"] = EVERYTHING
        return tables

    def session(self) -> AbstractContextManager[None]:
        """Nothing to hold: every read opens the partitions it needs, every write is one object."""
        return nullcontext()

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only view of everything, under the file store's table names (`features`, `labels`,
        `predictions`, `window_rows`, `lookup_<name>`), for callers that still query the store's tables
        directly. The store is written only through its `write_*` methods, one partition at a time, so asking
        for a writable connection is an error rather than a connection whose writes would be lost."""
        if not read_only:
            raise ValueError("a ParquetFeatureStore is written through its write_* methods, one partition at a time")
        with self._engine(self._all_tables(), lookups=True) as con:
            yield con

    def _partition(self, table: str, day: dt.date) -> str:
        return f"{table}/{PARTITION[table]}={day.isoformat()}/{PART}"

    # --- side tables ---------------------------------------------------------------------------------------
    def load_lookup(self, name: str, df: pd.DataFrame) -> int:
        """Store a side table projected to what the feature query joins (see `_lookup_sql`), as one file."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"lookup name {name!r} is not a safe file name")
        con = self._scratch.connect()
        try:
            con.register("side", df)
            table = con.sql(self._lookup_sql(name)).to_arrow_table()
        finally:
            con.close()
        self.files.write(f"lookups/{name}.parquet", table)
        return table.num_rows

    # --- features ------------------------------------------------------------------------------------------
    def write_features(self, day: dt.date, raw: pd.DataFrame) -> pd.DataFrame:
        """Compute the day's feature rows point in time and replace the day's partition with them.

        Each row carries its entity key (so the training join never hashes the history's entity strings) and
        a row id unique across partitions (the day's number in its high bits, so ids grow with the days and
        a fetch of matched rows skips the row groups outside their range). The window rows of the day are
        written first: should the worker die between the two files, the day is incomplete and its re-run
        replaces both. Then the online store, if any, takes the day's newest row of each entity."""
        with self._engine(self._feature_reads(day), lookups=True) as con:
            con.register("raw", raw)
            con.execute(f"CREATE TEMP TABLE newrows AS {self._feature_sql(day)}")
            feats = con.execute("SELECT * FROM newrows").df()
            base = (day - EPOCH).days << 32
            table = self._typed(
                con,
                "features",
                f"SELECT *, {ENTITY_KEY} AS ekey, {base} + row_number() OVER () AS rid FROM newrows",
            )
            if self.spec.features.windows:
                history = self._typed(con, "window_rows", self._window_rows_sql())
                self.files.write(self._partition("window_rows", day), history)
            before = self._entities_of(day) if self.online is not None else set()
            self.files.write(self._partition("features", day), table)
            if self.online is not None:
                newest = self._online_rows(con, "newrows")
                self.online.publish(day, newest)
                withdrawn = before - {r.entity_id for r in newest}
                if withdrawn:
                    self.online.withdraw(day, withdrawn, self._newest_rows(withdrawn))
        return feats

    def _entities_of(self, day: dt.date) -> set[str]:
        """The entities of the day's partition as it stands (none if it has never been written)."""
        rel = self._partition("features", day)
        if not self.files.exists(rel):
            return set()
        with self._engine({"features": (day, day)}) as con:
            return {r[0] for r in con.execute("SELECT DISTINCT entity_id FROM features").fetchall()}

    def _online_rows(self, con: duckdb.DuckDBPyConnection, source: str) -> list[OnlineRow]:
        """The newest row of each entity of the feature rows `source`, as the online store keeps them."""
        table = con.sql(
            f"SELECT {self._row_columns()}, epoch_us(event_time) AS _us FROM {source} "
            "QUALIFY row_number() OVER (PARTITION BY entity_id ORDER BY event_time DESC) = 1"
        ).to_arrow_table()
        rows = []
        for rec in table.to_pylist():
            us = rec.pop("_us")
            rows.append(OnlineRow(rec["entity_id"], int(us), rec["event_day"].isoformat(), encode_row(rec)))
        return rows

    def _newest_rows(self, entity_ids: set[str]) -> list[OnlineRow]:
        """Each entity's newest row in the whole history: where an entity withdrawn from a day falls back."""
        with self._engine({"features": EVERYTHING}) as con:
            con.register("ids", pd.DataFrame({"entity_id": sorted(entity_ids)}))
            con.execute(f"CREATE TEMP TABLE latest AS {self._latest_sql('ids')}")
            return self._online_rows(con, "latest")

    def sync_online(self) -> int:
        """Give the online store every entity's newest row from the history, e.g. for a Redis that started
        empty or was flushed; rows it holds that are newer stay. Returns the number of rows written."""
        if self.online is None:
            return 0
        with self._engine({"features": EVERYTHING}) as con:
            con.execute(f"CREATE TEMP TABLE latest AS SELECT {self._row_columns()} FROM features")
            return self.online.publish(None, self._online_rows(con, "latest"))

    def online_features(self, entity_ids: list[str]) -> pd.DataFrame:
        """Latest feature row per entity: from the online store when there is one (what the API should use:
        a lookup by key), else ranked from the Parquet history, which reads every partition's entity column."""
        if self.online is not None:
            return self.online.online_features(entity_ids)
        with self._engine({"features": EVERYTHING}) as con:
            con.register("ids", pd.DataFrame({"entity_id": entity_ids}))
            return con.execute(self._latest_sql("ids")).df()

    # --- labels --------------------------------------------------------------------------------------------
    def write_labels(self, arrival_day: dt.date, raw_event_day: pd.DataFrame) -> pd.DataFrame:
        """Replace the labels that arrived on `arrival_day` (an empty delivery empties the day); rows whose
        target is unknown carry no label. Nothing else is rewritten: training sets are joined on demand."""
        con = self._scratch.connect()
        try:
            if raw_event_day.empty:
                rows = pd.DataFrame()
                table = self._typed(con, "labels", None)
            else:
                con.register("raw", raw_event_day)
                con.execute(f"CREATE TEMP TABLE newrows AS {self._labels_sql(arrival_day)}")
                rows = con.execute("SELECT * FROM newrows").df()
                table = self._typed(con, "labels", "SELECT * FROM newrows")
        finally:
            con.close()
        self.files.write(self._partition("labels", arrival_day), table)
        return rows

    # --- training sets -------------------------------------------------------------------------------------
    def training_frame(
        self,
        as_of: dt.date,
        since: dt.date | None = None,
        from_scratch: bool = False,
        arrived_after: dt.date | None = None,
    ) -> pd.DataFrame:
        """Every label that had arrived by `as_of` (of an event on or after `since`), joined to the feature
        row its entity had at the label's event time (as of, never after); labels with none are left out.

        Always joined on demand over the partitions (`from_scratch` changes nothing here): the as-of join
        sorts the stored entity keys and times of the history, and the values of the matched rows alone are
        then fetched by row id (`FeatureSql._join_labels`)."""
        where, args = self._training_where(as_of, since, arrived_after)
        with self._engine({"labels": (None, as_of), "features": EVERYTHING}) as con:
            rows = self._join_labels(
                con,
                f"(SELECT *, {ENTITY_KEY} AS ekey FROM labels WHERE {where})",
                "(SELECT ekey, event_time, rid FROM features)",
                args,
                row_id="rid",
            )
            return self._training_table(con, f"({rows})", [])

    # --- predictions -------------------------------------------------------------------------------------
    def write_predictions(self, day: dt.date, preds: pd.DataFrame) -> None:
        con = self._scratch.connect()
        try:
            con.register("newrows", preds)
            table = self._typed(con, "predictions", "SELECT * FROM newrows")
        finally:
            con.close()
        self.files.write(self._partition("predictions", day), table)

    # --- monitoring history --------------------------------------------------------------------------------
    def save_history(self, table: str, day: dt.date, rows: pd.DataFrame) -> None:
        """Keep one row set per day of a monitoring series (drift, performance), one file per day."""
        if not _NAME.fullmatch(table):
            raise ValueError(f"history table {table!r} is not a safe file name")
        rows = rows.assign(day=pd.Timestamp(day))
        con = self._scratch.connect()
        try:
            con.register("newrows", rows)
            data = con.sql("SELECT * FROM newrows").to_arrow_table()
        finally:
            con.close()
        self.files.write(f"history/{table}/day={day.isoformat()}/{PART}", data)

    def read_history(self, table: str) -> pd.DataFrame:
        if not _NAME.fullmatch(table):
            raise ValueError(f"history table {table!r} is not a safe file name")
        paths = [p for _, p in sorted(self.files.partitions(f"history/{table}").items())]
        if not paths:
            return pd.DataFrame()
        parts = [_read_as_written(self.files.fs, p) for p in paths]  # days may differ in columns
        with self._engine({}) as con:
            con.register("history", pa.concat_tables(parts, promote_options="permissive"))
            return con.execute("SELECT * FROM history ORDER BY day").df()


def _read_as_written(fs: pafs.FileSystem, path: str) -> pa.Table:
    """A Parquet file as the Arrow table that was written, by the schema pyarrow stored beside the data:
    Parquet has no second-precision timestamp, and a history frame's `pd.Timestamp(day)` column is one
    (the file store keeps it so, and the two stores must read alike)."""
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        table = parquet.read()
        stored = (parquet.metadata.metadata or {}).get(b"ARROW:schema")
    if stored is None:
        return table
    return table.cast(pa.ipc.read_schema(pa.py_buffer(base64.b64decode(stored))))


if TYPE_CHECKING:  # both backends answer to the one interface, checked by mypy

    def _both_backends(a: FeatureStore, b: ParquetFeatureStore) -> list[FeatureStoreApi]:
        return [a, b]
