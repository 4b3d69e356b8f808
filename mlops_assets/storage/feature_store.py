"""The feature store: feature rows by entity and event time in DuckDB, built from the dataset spec.

Point-in-time correctness is the whole point. Feature rows are computed from what was known at the event:
side tables are joined *as of* the event's time, and target rates use only labels that had arrived before
the event's day. A training row is a label joined to the newest feature row of its entity at or before the
label's event time, so no value from the future reaches the past. A partition is replaced as a unit (delete
+ insert in one transaction), so re-materializing a day never duplicates rows.

The training rows are kept materialized, not joined on demand: an as-of join over the whole history sorts
every feature row, and every retrain would pay it again for rows that have not changed. Instead each write
re-matches only the labels it can affect, in the same transaction: a day of labels is matched when it
arrives, and a corrected or late day of features re-matches the labels of the entities it touches at or
after its start. A retrain then reads a table (benchmarks/feature_store.py measures both sides).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from mlops_assets.config import DatasetSpec
from mlops_assets.storage.feature_sql import (
    ENTITY_KEY,
    PREDICTIONS_DDL,
    RATE_PRIOR_WEIGHT,
    TARGET,
    FeatureSql,
    Range,
    _q,
    row_ddl,
)

__all__ = ["ENTITY_KEY", "LATEST", "RATE_PRIOR_WEIGHT", "TARGET", "TRAINING", "FeatureStore"]

LATEST = "features_latest"  # newest feature row per entity, maintained with every write of a day
TRAINING = "training_rows"  # every matched label with its point-in-time feature values
# A label first looks for its entity's rows in this many days before it (a few row groups of a table filled
# in time order); only the labels that find none there search the older history.
RECENT_DAYS = 7
_ENSURED: set[tuple[str, str]] = set()  # (file, spec) pairs whose tables this process has already created
_HELD: dict[str, tuple[int, duckdb.DuckDBPyConnection]] = {}  # file -> (pid, connection) of an open `session`


def is_lock_error(exc: duckdb.Error) -> bool:
    """Another process holds the file's write lock (IOException), or this process has the file open with
    another configuration (ConnectionException); both clear when that connection closes."""
    text = str(exc).lower()
    return (isinstance(exc, duckdb.IOException) and "lock" in text) or (
        isinstance(exc, duckdb.ConnectionException) and "different configuration" in text
    )


@dataclass
class FeatureStore(FeatureSql):
    path: Path
    spec: DatasetSpec
    # DuckDB's own default is 80% of the machine's memory, much of it then kept as a cache of the file's
    # blocks: a store sharing a box with the run workers and the model sweep must not take that. Beyond the
    # limit DuckDB spills to `<file>.tmp`. The one-shot training-set join of 10M feature rows x 1M labels (the
    # back-fill) peaked at 2.9 GB resident without a limit and at 1.3 GB with this one, for about a fifth more
    # time (benchmarks/feature_store.py). None leaves DuckDB's defaults.
    memory_limit: str | None = "1GB"
    threads: int | None = None
    # How long an open waits for another process's lock. The steps that open the file are serialized by the
    # dataset's Dagster pool, so a wait happens only around that (a CLI command, the first claim of a new
    # pool by two runs at once) and lasts one short transaction; a run must not fail on it.
    lock_wait_seconds: float = 300.0

    # --- connection and schema ---------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[None]:
        """Hold the file open for a block of several reads and writes (one asset step): every `connect` inside
        it is a cursor on the held database instead of a new open. Opening a DuckDB database costs 30-40 ms here
        whatever its size (the instance's start-up, then a checkpoint on close), and a day's monitoring step
        used to pay it three or four times. A step, not a run: the steps that open the file hold the dataset's
        feature-store pool, so the file is held exactly while the pool is, and another process's step waits
        on the pool rather than on the lock."""
        key = str(self.path.resolve())
        held = _HELD.get(key)
        if held is not None and held[0] == os.getpid():
            yield  # nested: the outer block holds it
            return
        with self.connect() as con:
            _HELD[key] = (os.getpid(), con)
            try:
                yield
            finally:
                _HELD.pop(key, None)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Short-lived connections: DuckDB allows one writer process, and the UI process must not be locked
        out for the length of a replay. Inside a `session`, a cursor on the held connection."""
        held = _HELD.get(str(self.path.resolve()))
        if held is not None and held[0] == os.getpid():
            cursor = held[1].cursor()
            try:
                yield cursor
            finally:
                cursor.close()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        if read_only and fresh:
            read_only = False
        con = self._open(read_only)
        try:
            if self.memory_limit:
                con.execute("SET memory_limit = " + "'" + self.memory_limit.replace("'", "''") + "'")
            if self.threads:
                con.execute(f"SET threads = {int(self.threads)}")
            key = (str(self.path.resolve()), self.spec.spec_hash)
            if not read_only and (fresh or key not in _ENSURED):
                self.ensure_tables(con)
                _ENSURED.add(key)
            yield con
        finally:
            con.close()

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_wait_seconds
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                remaining = deadline - time.monotonic()
                if not is_lock_error(exc) or remaining <= 0:
                    raise
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)

    def _reading(self, **ranges: Range) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """Every table holds every day: the ranges of a read need no pruning here."""
        return self.connect(read_only=True)

    @staticmethod
    def _has(con: duckdb.DuckDBPyConnection, table: str, column: str | None = None) -> bool:
        q = "SELECT count(*) FROM duckdb_columns() WHERE database_name = current_database() AND table_name = ?"
        args: list[object] = [table]
        if column is not None:
            q += " AND column_name = ?"
            args.append(column)
        return bool(con.execute(q, args).fetchall()[0][0])

    def ensure_tables(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create what is missing, in one transaction: a store of an earlier version gains its entity keys and
        its derived tables (filled from the history) the first time it is opened for writing, or not at all."""
        con.execute("BEGIN")
        con.execute(f"CREATE TABLE IF NOT EXISTS features ({row_ddl(self.spec)}, ekey UBIGINT)")
        if not self._has(con, "features", "ekey"):
            con.execute("ALTER TABLE features ADD COLUMN ekey UBIGINT")
            con.execute(f"UPDATE features SET ekey = {ENTITY_KEY}")
        # The online side: each entity's newest feature row, kept beside the history so that a lookup by key
        # reads one small table instead of ranking every row of every entity.
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {LATEST} AS SELECT {self._row_columns()} FROM features "
            "QUALIFY row_number() OVER (PARTITION BY entity_id ORDER BY event_time DESC) = 1"
        )
        con.execute(f"CREATE TABLE IF NOT EXISTS labels ({self._labels_ddl()})")
        if not self._has(con, TRAINING):
            con.execute(f"CREATE TABLE {TRAINING} ({self._training_ddl()})")
            con.execute(f"INSERT INTO {TRAINING} BY NAME {self._one_shot(con, 'true', [])}")
            con.execute("DROP TABLE _one_shot")
        con.execute(f"CREATE TABLE IF NOT EXISTS predictions ({PREDICTIONS_DDL})")
        if self.spec.features.windows:
            con.execute(f"CREATE TABLE IF NOT EXISTS window_rows ({self._window_rows_ddl()})")
        con.execute("COMMIT")

    # --- side tables ---------------------------------------------------------------------------------------
    def load_lookup(self, name: str, df: pd.DataFrame) -> int:
        """Store a side table projected to what the feature query joins (see `_lookup_sql`)."""
        with self.connect() as con:
            con.register("side", df)
            con.execute(f"CREATE OR REPLACE TABLE {_q('lookup_' + name)} AS {self._lookup_sql(name)}")
            n = con.execute(f"SELECT count(*) FROM {_q('lookup_' + name)}").fetchone()
        return int(n[0]) if n else 0

    # --- features ------------------------------------------------------------------------------------------
    def write_features(self, day: dt.date, raw: pd.DataFrame) -> pd.DataFrame:
        """Compute and store the day's feature rows, replacing any earlier version of the day.

        In the same transaction, the newest row of every entity the old or the new version of the day
        touches is taken again from the history: a corrected day changes what the online side serves, and
        an entity whose rows were withdrawn falls back to its newest row of an earlier day. For the same
        reason the training rows of those entities' labels at or after the day's start are matched again: a
        late or corrected day can change which feature row was the newest at such a label's time, and no
        other label's. In the usual order (a day's features before its labels arrive) there are none.
        """
        with self.connect() as con:
            con.register("raw", raw)
            feats = con.execute(self._feature_sql(day)).df()
            con.register("newrows", feats)
            start = dt.datetime.combine(day, dt.time())
            first = con.execute("SELECT min(event_time) FROM newrows").fetchone()
            if first is not None and first[0] is not None:
                start = min(start, first[0])  # rows outside their day (never in a well-formed batch)
            con.execute("BEGIN")
            con.execute(
                "CREATE OR REPLACE TEMP TABLE touched AS SELECT entity_id FROM newrows "
                "UNION SELECT entity_id FROM features WHERE event_day = ?",
                [day],
            )
            con.execute("DELETE FROM features WHERE event_day = ?", [day])
            con.execute(f"INSERT INTO features BY NAME SELECT *, {ENTITY_KEY} AS ekey FROM newrows")
            if self.spec.features.windows:
                con.execute("DELETE FROM window_rows WHERE event_day = ?", [day])
                con.execute(f"INSERT INTO window_rows BY NAME {self._window_rows_sql()}")
            con.execute(f"DELETE FROM {LATEST} WHERE entity_id IN (SELECT entity_id FROM touched)")
            con.execute(
                f"INSERT INTO {LATEST} BY NAME SELECT {self._row_columns('f')} FROM features f "
                "SEMI JOIN touched USING (entity_id) "
                "QUALIFY row_number() OVER (PARTITION BY f.entity_id ORDER BY f.event_time DESC) = 1"
            )
            affected = "event_time >= ? AND entity_id IN (SELECT entity_id FROM touched)"
            con.execute(f"DELETE FROM {TRAINING} WHERE {affected}", [start])
            self._match_labels(con, affected, [start])
            con.execute("DROP TABLE touched")
            con.execute("COMMIT")
        return feats

    def online_features(self, entity_ids: list[str]) -> pd.DataFrame:
        """Latest feature row per entity: what the online API looks up by key. A store written by an earlier
        version and not yet opened for writing has no latest-row table: the history answers, more slowly."""
        with self.connect(read_only=True) as con:
            con.register("ids", pd.DataFrame({"entity_id": entity_ids}))
            try:
                return con.execute(f"SELECT f.* FROM {LATEST} f SEMI JOIN ids USING (entity_id)").df()
            except duckdb.CatalogException:
                return con.execute(self._latest_sql("ids")).df()

    # --- labels ------------------------------------------------------------------------------------------
    def write_labels(self, arrival_day: dt.date, raw_event_day: pd.DataFrame) -> pd.DataFrame:
        """Publish the labels that arrive on `arrival_day`, replacing any earlier delivery of that day, and
        their training rows with them; rows whose target is unknown (e.g. cancelled flights) carry no label
        and are left out.

        Matching a day's labels as they arrive is what lets a retrain read its training set instead of
        joining the whole history: at 10M feature rows a day of 2,700 labels took about 150 ms in all (a
        fifth of it opening and checkpointing the file), where the whole join takes 4 s and a retrain then
        reads its 1M rows in 0.4 s (benchmarks/feature_store.py).
        """
        with self.connect() as con:
            if raw_event_day.empty:
                con.execute("BEGIN")
                con.execute("DELETE FROM labels WHERE arrival_day = ?", [arrival_day])
                con.execute(f"DELETE FROM {TRAINING} WHERE arrival_day = ?", [arrival_day])
                con.execute("COMMIT")
                return pd.DataFrame()
            con.register("raw", raw_event_day)
            rows = con.execute(self._labels_sql(arrival_day)).df()
            con.register("newrows", rows)
            con.execute("BEGIN")
            con.execute("DELETE FROM labels WHERE arrival_day = ?", [arrival_day])
            con.execute("INSERT INTO labels BY NAME SELECT * FROM newrows")
            con.execute(f"DELETE FROM {TRAINING} WHERE arrival_day = ?", [arrival_day])
            self._match_labels(con, "arrival_day = ?", [arrival_day])
            con.execute("COMMIT")
        return rows

    # --- training sets -------------------------------------------------------------------------------------
    def _one_shot(self, con: duckdb.DuckDBPyConnection, where: str, args: list[object]) -> str:
        """The training rows of the labels `where` selects, joined against the whole history at once: what
        fills the training rows of a store of an earlier version, and what a read-only open of such a store
        answers with. Returns the query over a temp table of the matched keys, which this connection holds.

        Keys are hashed on the fly (no stored keys needed, and hash() is the fastest); the values are fetched
        by the table's own row ids (see `_join_labels`).
        """
        return self._join_labels(
            con,
            f"(SELECT *, hash(entity_id) AS ekey FROM labels WHERE {where})",
            "(SELECT hash(entity_id) AS ekey, event_time, rowid AS rid FROM features)",
            args,
            row_id="rowid",
        )

    def _match_labels(self, con: duckdb.DuckDBPyConnection, where: str, args: list[object]) -> None:
        """Add the training rows of the labels `where` selects (the caller has deleted their old ones).

        Only those labels' entities are searched, by their stored keys, in two steps. First the feature rows
        from RECENT_DAYS before the oldest label to the newest label: a label that finds a row of its entity
        there has its newest row at or before it there too. The rest (quiet entities, unseen ones) then
        search everything older, which costs a scan of the key column but sorts only their own rows. On a
        freshly opened file most of the time goes to reading blocks: that key column, and the blocks holding
        the scattered old rows the quiet entities matched (about 50 ms each at 10M feature rows, where the
        same steps on a warm cache take 30 ms in all).
        """
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _todo AS SELECT *, {ENTITY_KEY} AS ekey FROM labels WHERE {where}", args
        )
        bounds = con.execute(
            f"SELECT min(event_time) - INTERVAL {RECENT_DAYS} DAY, max(event_time) FROM _todo"
        ).fetchone()
        if bounds is not None and bounds[1] is not None:
            recent, newest = bounds

            def keys(todo: str, when: str) -> str:
                return (
                    f"(SELECT ekey, event_time, rowid AS rid FROM features WHERE {when} "
                    f"AND ekey IN (SELECT ekey FROM {todo}))"
                )

            con.execute(
                "CREATE OR REPLACE TEMP TABLE _matched AS "
                + self._asof_sql("_todo", keys("_todo", "event_time BETWEEN ? AND ?")),
                [recent, newest],
            )
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _rest AS "
                "SELECT * FROM _todo ANTI JOIN _matched USING (entity_id, event_time, arrival_day)"
            )
            con.execute(
                "INSERT INTO _matched " + self._asof_sql("_rest", keys("_rest", "event_time < ?")),
                [recent],
            )
            # Materialized before the check: a filter across the join would become a join condition.
            con.execute(f"CREATE OR REPLACE TEMP TABLE _fetched AS {self._fetch_sql('_matched')}")
            con.execute(f"INSERT INTO {TRAINING} BY NAME {self._checked('_fetched')}")
        for temp in ("_todo", "_matched", "_rest", "_fetched"):
            con.execute(f"DROP TABLE IF EXISTS {temp}")

    def training_frame(
        self,
        as_of: dt.date,
        since: dt.date | None = None,
        from_scratch: bool = False,
        arrived_after: dt.date | None = None,
    ) -> pd.DataFrame:
        """Every label that had arrived by `as_of` (of an event on or after `since`), joined to the feature
        row its entity had at the label's event time (as of, never after). A label whose entity had no
        feature row yet is left out: there is nothing to learn from it.

        Read from the maintained training rows. `from_scratch` joins the whole history instead, as a store
        of an earlier version opened read-only must: the same frame, for checks and benchmarks.
        """
        where, args = self._training_where(as_of, since, arrived_after)
        with self.connect(read_only=True) as con:
            rows = f"(SELECT * FROM {TRAINING} WHERE {where})"
            if from_scratch or not self._has(con, TRAINING):
                rows = f"({self._one_shot(con, where, args)})"
                args = []  # the labels were selected into the temp table
            return self._training_table(con, rows, args)

    # --- predictions -------------------------------------------------------------------------------------
    def write_predictions(self, day: dt.date, preds: pd.DataFrame) -> None:
        with self.connect() as con:
            con.register("newrows", preds)
            con.execute("BEGIN")
            con.execute("DELETE FROM predictions WHERE event_day = ?", [day])
            con.execute("INSERT INTO predictions BY NAME SELECT * FROM newrows")
            con.execute("COMMIT")

    # --- monitoring history --------------------------------------------------------------------------------
    def save_history(self, table: str, day: dt.date, rows: pd.DataFrame) -> None:
        """Keep one row set per day of a monitoring series (drift, performance): the source of the
        over-time plots, replaced as a unit like every other partition."""
        rows = rows.assign(day=pd.Timestamp(day))
        with self.connect() as con:
            con.register("newrows", rows)
            con.execute(f"CREATE TABLE IF NOT EXISTS {_q(table)} AS SELECT * FROM newrows WHERE false")
            con.execute("BEGIN")
            con.execute(f"DELETE FROM {_q(table)} WHERE day = ?", [pd.Timestamp(day)])
            con.execute(f"INSERT INTO {_q(table)} BY NAME SELECT * FROM newrows")
            con.execute("COMMIT")

    def read_history(self, table: str) -> pd.DataFrame:
        with self.connect(read_only=True) as con:
            exists = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
            ).fetchone()
            if not exists or not exists[0]:
                return pd.DataFrame()
            return con.execute(f"SELECT * FROM {_q(table)} ORDER BY day").df()
