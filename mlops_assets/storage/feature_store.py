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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from mlops_assets.config import WINDOW_AGGS, DatasetSpec

LATEST = "features_latest"  # newest feature row per entity, maintained with every write of a day
TRAINING = "training_rows"  # every matched label with its point-in-time feature values
TARGET = "_target"  # the label's value in TRAINING (the frame renames it to the spec's target name)
# The entity's 64-bit key, stored with each feature row so that a few labels find their entity's rows by
# scanning one fixed-width column instead of hashing every entity string of the history. MD5 rather than
# DuckDB's hash(): stored keys must still equal the keys a later DuckDB computes for new labels.
ENTITY_KEY = "CAST(md5_number(entity_id) >> 64 AS UBIGINT)"
# A label first looks for its entity's rows in this many days before it (a few row groups of a table filled
# in time order); only the labels that find none there search the older history.
RECENT_DAYS = 7
RATE_PRIOR_WEIGHT = 20.0  # pseudo-count pulling a sparse group's rate towards the window's overall rate
_ENSURED: set[tuple[str, str]] = set()  # (file, spec) pairs whose tables this process has already created


def is_lock_error(exc: duckdb.Error) -> bool:
    """Another process holds the file's write lock (IOException), or this process has the file open with
    another configuration (ConnectionException); both clear when that connection closes."""
    text = str(exc).lower()
    return (isinstance(exc, duckdb.IOException) and "lock" in text) or (
        isinstance(exc, duckdb.ConnectionException) and "different configuration" in text
    )


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class FeatureStore:
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
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Short-lived connections: DuckDB allows one writer process, and the UI process must not be locked
        out for the length of a replay."""
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

    @property
    def _rate_keys(self) -> list[str]:
        keys: list[str] = []
        for rate in self.spec.features.label_rates.values():
            keys += [k for k in rate.by if k not in keys]
        return keys

    def _entity_id_sql(self, alias: str = "") -> str:
        """The entity's columns joined by '|'. A spec with no entity makes every row its own entity, named by a
        hash of its raw values: features and labels of the same row then meet in the as-of join, and rows
        sharing a timestamp (a single series, or keyless events) are never collapsed into one."""
        pre = f"{alias}." if alias else ""
        if not self.spec.entity:
            cols = ", ".join(f"coalesce(CAST({pre}{_q(c)} AS VARCHAR), '\\N')" for c in self.spec.schema_)
            return f"md5(concat_ws('|', {cols}))"
        return "concat_ws('|', " + ", ".join(f"CAST({pre}{_q(c)} AS VARCHAR)" for c in self.spec.entity) + ")"

    # --- window features (lags, rolling aggregates over previous days) -------------------------------------
    def _window_keys(self) -> list[str]:
        keys: list[str] = []
        for w in self.spec.features.windows.values():
            keys += [k for k in (w.by if w.by is not None else self.spec.entity) if k not in keys]
        return keys

    def _window_rows_sql(self) -> str:
        """One history row per raw row of the day: its group keys and each window's value, what later days'
        window features aggregate (raw values, not features: a window reads the past as it was delivered)."""
        keys = "".join(f", CAST({_q(k)} AS VARCHAR) AS {_q('k_' + k)}" for k in self._window_keys())
        vals = "".join(
            f", CAST(({w.expr}) AS DOUBLE) AS {_q('v_' + name)}" for name, w in self.spec.features.windows.items()
        )
        return (
            f"WITH ev AS (SELECT *, {self.spec.event_time} AS event_time FROM raw) "
            f"SELECT CAST(event_time AS DATE) AS event_day{keys}{vals} FROM ev"
        )

    def _row_columns(self, alias: str = "") -> str:
        """A feature row's columns as the store hands them out: without the internal entity key."""
        pre = f"{alias}." if alias else ""
        return ", ".join(pre + _q(c) for c in ["entity_id", "event_time", "event_day", *self.spec.feature_names])

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
        types = {k: ("DOUBLE" if v.type == "numeric" else "VARCHAR") for k, v in self.spec.feature_columns.items()}
        cols = ", ".join(f"{_q(k)} {t}" for k, t in types.items())
        con.execute("BEGIN")
        con.execute(
            "CREATE TABLE IF NOT EXISTS features (entity_id VARCHAR, event_time TIMESTAMP, event_day DATE, "
            f"{cols}, ekey UBIGINT)"
        )
        if not self._has(con, "features", "ekey"):
            con.execute("ALTER TABLE features ADD COLUMN ekey UBIGINT")
            con.execute(f"UPDATE features SET ekey = {ENTITY_KEY}")
        # The online side: each entity's newest feature row, kept beside the history so that a lookup by key
        # reads one small table instead of ranking every row of every entity.
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {LATEST} AS SELECT {self._row_columns()} FROM features "
            "QUALIFY row_number() OVER (PARTITION BY entity_id ORDER BY event_time DESC) = 1"
        )
        keys = "".join(f", {_q(k)} VARCHAR" for k in self._rate_keys)
        con.execute(
            "CREATE TABLE IF NOT EXISTS labels (entity_id VARCHAR, event_time TIMESTAMP, event_day DATE, "
            f"arrival_day DATE, target DOUBLE{keys})"
        )
        if not self._has(con, TRAINING):
            con.execute(
                f"CREATE TABLE {TRAINING} (entity_id VARCHAR, event_time TIMESTAMP, event_day DATE, "
                f"arrival_day DATE, {cols}, {TARGET} DOUBLE)"
            )
            con.execute(f"INSERT INTO {TRAINING} BY NAME {self._one_shot(con, 'true', [])}")
            con.execute("DROP TABLE _one_shot")
        con.execute(
            "CREATE TABLE IF NOT EXISTS predictions (entity_id VARCHAR, event_time TIMESTAMP, event_day DATE, "
            "model_version VARCHAR, score DOUBLE)"
        )
        if self.spec.features.windows:
            wkeys = "".join(f", {_q('k_' + k)} VARCHAR" for k in self._window_keys())
            wvals = "".join(f", {_q('v_' + n)} DOUBLE" for n in self.spec.features.windows)
            con.execute(f"CREATE TABLE IF NOT EXISTS window_rows (event_day DATE{wkeys}{wvals})")
        con.execute("COMMIT")

    # --- side tables ---------------------------------------------------------------------------------------
    def load_lookup(self, name: str, df: pd.DataFrame) -> int:
        """Project a side table to its keys, as-of time and declared columns (expressions evaluated in the
        side table's own namespace, so a `year` there never shadows the event's `year`)."""
        lookup = next(lk for lk in self.spec.features.lookups if lk.name == name)
        select = [f"CAST({_q(src)} AS VARCHAR) AS {_q('k_' + left)}" for left, src in lookup.keys.items()]
        if lookup.asof:
            select.append(f"CAST({_q(lookup.asof.right)} AS TIMESTAMPTZ) AS _asof_time")
        select += [
            f"CAST(({c.expr or _q(k)}) AS DOUBLE) AS {_q(k)}"
            if c.type == "numeric"
            else f"CAST(({c.expr or _q(k)}) AS VARCHAR) AS {_q(k)}"
            for k, c in lookup.columns.items()
        ]
        with self.connect() as con:
            con.register("side", df)
            con.execute(f"CREATE OR REPLACE TABLE {_q('lookup_' + name)} AS SELECT {', '.join(select)} FROM side")
            n = con.execute(f"SELECT count(*) FROM {_q('lookup_' + name)}").fetchone()
        return int(n[0]) if n else 0

    # --- features ------------------------------------------------------------------------------------------
    def _feature_sql(self, day: dt.date) -> str:
        spec = self.spec
        base_exprs = [f"({c.expr or _q(k)}) AS {_q(k)}" for k, c in spec.features.columns.items()]
        sql = [
            "WITH ev AS (SELECT *, " + spec.event_time + " AS event_time FROM raw),",
            "base AS (SELECT ev.*, "
            + self._entity_id_sql("ev")
            + " AS entity_id, "
            + ", ".join(base_exprs)
            + " FROM ev)",
        ]
        prev = "base"
        for i, lk in enumerate(spec.features.lookups):
            t = _q("lookup_" + lk.name)
            on = " AND ".join(f"CAST({prev}.{_q(left)} AS VARCHAR) = s.{_q('k_' + left)}" for left in lk.keys)
            cols = ", ".join(f"s.{_q(k)}" for k in lk.columns)
            join = "LEFT JOIN"
            if lk.asof:
                join = "ASOF LEFT JOIN"
                on += f" AND CAST({prev}.{_q(lk.asof.left)} AS TIMESTAMPTZ) >= s._asof_time"
            sql.append(f", j{i} AS (SELECT {prev}.*, {cols} FROM {prev} {join} {t} s ON {on})")
            prev = f"j{i}"
        derived = [f"({c.expr}) AS {_q(k)}" for k, c in spec.features.derived.items()]
        sql.append(f", der AS (SELECT {prev}.*{', ' if derived else ''}{', '.join(derived)} FROM {prev})")
        prev = "der"
        start = f"TIMESTAMP '{day.isoformat()} 00:00:00'"
        for i, (name, rate) in enumerate(spec.features.label_rates.items()):
            by = ", ".join(_q(b) for b in rate.by)
            window = (
                f"l.arrival_day <= DATE '{day.isoformat()}' "
                f"AND l.event_time >= {start} - INTERVAL {rate.window_days} DAY"
            )
            sql.append(
                f", r{i} AS (SELECT {by}, sum(target) AS s, count(*) AS n FROM labels l WHERE {window} GROUP BY {by})"
                f", g{i} AS (SELECT avg(target) AS p FROM labels l WHERE {window})"
                f", x{i} AS (SELECT {prev}.*, CASE WHEN g{i}.p IS NULL THEN NULL ELSE "
                f"(coalesce(r{i}.s, 0) + {RATE_PRIOR_WEIGHT} * g{i}.p) / (coalesce(r{i}.n, 0) + {RATE_PRIOR_WEIGHT}) "
                f"END AS {_q(name)} FROM {prev} CROSS JOIN g{i} LEFT JOIN r{i} USING ({by}))"
            )
            prev = f"x{i}"
        for i, (name, w) in enumerate(spec.features.windows.items()):
            keys = w.by if w.by is not None else spec.entity
            last = day - dt.timedelta(days=w.lag_days)
            first = last - dt.timedelta(days=w.days - 1)
            agg = f"{WINDOW_AGGS[w.agg]}({_q('v_' + name)})"
            group = ", ".join(_q("k_" + k) for k in keys)
            sel = f"{group + ', ' if keys else ''}{agg} AS {_q(name)}"
            sql.append(
                f", wa{i} AS (SELECT {sel} FROM window_rows WHERE event_day BETWEEN DATE '{first.isoformat()}' "
                f"AND DATE '{last.isoformat()}'{' GROUP BY ' + group if keys else ''})"
            )
            on = " AND ".join(f"CAST({prev}.{_q(k)} AS VARCHAR) = wa{i}.{_q('k_' + k)}" for k in keys) or "true"
            sql.append(f", w{i} AS (SELECT {prev}.*, wa{i}.{_q(name)} FROM {prev} LEFT JOIN wa{i} ON {on})")
            prev = f"w{i}"
        out_cols = []
        for k, c in spec.feature_columns.items():
            cast = "DOUBLE" if c.type == "numeric" else "VARCHAR"
            out_cols.append(f"CAST({_q(k)} AS {cast}) AS {_q(k)}")
        sql.append(
            f"SELECT entity_id, CAST(event_time AS TIMESTAMP) AS event_time, CAST(event_time AS DATE) AS event_day, "
            f"{', '.join(out_cols)} FROM {prev} "
            "QUALIFY row_number() OVER (PARTITION BY entity_id, event_time ORDER BY entity_id) = 1"
        )
        return "\n".join(sql)

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

    def features_for_day(self, day: dt.date) -> pd.DataFrame:
        return self.features_between(day, day)

    def features_between(self, first: dt.date, last: dt.date) -> pd.DataFrame:
        with self.connect(read_only=True) as con:
            return con.execute(
                f"SELECT {self._row_columns()} FROM features WHERE event_day BETWEEN ? AND ? "
                "ORDER BY event_time, entity_id",
                [first, last],
            ).df()

    def online_features(self, entity_ids: list[str]) -> pd.DataFrame:
        """Latest feature row per entity: what the online API looks up by key. A store written by an earlier
        version and not yet opened for writing has no latest-row table: the history answers, more slowly."""
        with self.connect(read_only=True) as con:
            con.register("ids", pd.DataFrame({"entity_id": entity_ids}))
            try:
                return con.execute(f"SELECT f.* FROM {LATEST} f SEMI JOIN ids USING (entity_id)").df()
            except duckdb.CatalogException:
                return con.execute(
                    f"SELECT {self._row_columns('f')} FROM features f SEMI JOIN ids USING (entity_id) "
                    "QUALIFY row_number() OVER (PARTITION BY entity_id ORDER BY event_time DESC) = 1"
                ).df()

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
        keys = "".join(f", CAST({_q(k)} AS VARCHAR) AS {_q(k)}" for k in self._rate_keys)
        with self.connect() as con:
            if raw_event_day.empty:
                con.execute("BEGIN")
                con.execute("DELETE FROM labels WHERE arrival_day = ?", [arrival_day])
                con.execute(f"DELETE FROM {TRAINING} WHERE arrival_day = ?", [arrival_day])
                con.execute("COMMIT")
                return pd.DataFrame()
            con.register("raw", raw_event_day)
            rows = con.execute(
                f"WITH ev AS (SELECT *, {self.spec.event_time} AS event_time FROM raw) "
                f"SELECT {self._entity_id_sql()} AS entity_id, CAST(event_time AS TIMESTAMP) AS event_time, "
                f"CAST(event_time AS DATE) AS event_day, DATE '{arrival_day.isoformat()}' AS arrival_day, "
                f"CAST(({self.spec.target.expr}) AS DOUBLE) AS target{keys} FROM ev "
                f"WHERE ({self.spec.target.expr}) IS NOT NULL "
                "QUALIFY row_number() OVER (PARTITION BY entity_id, event_time ORDER BY entity_id) = 1"
            ).df()
            con.register("newrows", rows)
            con.execute("BEGIN")
            con.execute("DELETE FROM labels WHERE arrival_day = ?", [arrival_day])
            con.execute("INSERT INTO labels BY NAME SELECT * FROM newrows")
            con.execute(f"DELETE FROM {TRAINING} WHERE arrival_day = ?", [arrival_day])
            self._match_labels(con, "arrival_day = ?", [arrival_day])
            con.execute("COMMIT")
        return rows

    def labelled_rows(self, as_of: dt.date, since: dt.date | None = None) -> int:
        with self.connect(read_only=True) as con:
            q = "SELECT count(*) FROM labels WHERE arrival_day <= ?"
            args: list[object] = [as_of]
            if since is not None:
                q += " AND arrival_day > ?"
                args.append(since)
            r = con.execute(q, args).fetchone()
        return int(r[0]) if r else 0

    # --- training sets -------------------------------------------------------------------------------------
    def _asof_sql(self, labels: str, keys: str) -> str:
        """Each label of `labels` with the row id of the newest row of `keys` (entity key, event time, row id)
        of its entity at or before its event time; labels with none are left out.

        The join is done on keys only: a 64-bit key of the entity (a number sorts and partitions faster than
        a string) and the event time, carrying the row id; `_fetch_sql` then fetches the values of the matched
        rows alone. Dragging ten feature columns through the sort of the whole history instead took about
        1.4 times as long at 10M feature rows, and 10% more memory (benchmarks/feature_store.py).
        """
        return (
            f"SELECT l.*, k.rid FROM {labels} l ASOF JOIN {keys} k ON l.ekey = k.ekey AND l.event_time >= k.event_time"
        )

    def _fetch_sql(self, matched: str) -> str:
        """Training rows of `matched` labels, the feature values fetched by row id, with the entity of the
        fetched row (`_entity`) for `_checked`. Joined on the row id alone, DuckDB reads only the blocks
        holding those rows; with the entity check in the join it read every block of the history (2,700
        labels: 50 ms against 135 ms at 10M feature rows), hence the separate check."""
        feats = ", ".join(f"f.{_q(k)}" for k in self.spec.feature_names)
        return (
            f"SELECT m.entity_id, m.event_time, m.event_day, m.arrival_day, {feats}, m.target AS {TARGET}, "
            f"f.entity_id AS _entity FROM {matched} m JOIN features f ON f.rowid = m.rid"
        )

    @staticmethod
    def _checked(fetched: str) -> str:
        """Fetched rows whose feature row is of the label's own entity: an entity whose key collided with
        another's loses its label rather than take the other's values."""
        return f"SELECT * EXCLUDE (_entity) FROM {fetched} WHERE _entity = entity_id"

    def _one_shot(self, con: duckdb.DuckDBPyConnection, where: str, args: list[object]) -> str:
        """The training rows of the labels `where` selects, joined against the whole history at once: what
        fills the training rows of a store of an earlier version, and what a read-only open of such a store
        answers with. Returns the query over a temp table of the matched keys, which this connection holds.

        Keys are hashed on the fly (no stored keys needed, and hash() is the fastest). The matched keys are
        materialized before the values are fetched: as one query, DuckDB cannot know that the as-of join
        yields only as many rows as there are labels, and builds its hash table on the whole history instead
        (at 10M feature rows and 1M labels: 7.1 s and 1.2 GB, against 2.9 s this way).
        """
        matched = self._asof_sql(
            f"(SELECT *, hash(entity_id) AS ekey FROM labels WHERE {where})",
            "(SELECT hash(entity_id) AS ekey, event_time, rowid AS rid FROM features)",
        )
        con.execute(f"CREATE OR REPLACE TEMP TABLE _one_shot AS {matched}", args)
        return self._checked(f"({self._fetch_sql('_one_shot')})")

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

    def training_frame(self, as_of: dt.date, since: dt.date | None = None, from_scratch: bool = False) -> pd.DataFrame:
        """Every label that had arrived by `as_of` (of an event on or after `since`), joined to the feature
        row its entity had at the label's event time (as of, never after). A label whose entity had no
        feature row yet is left out: there is nothing to learn from it.

        Read from the maintained training rows. `from_scratch` joins the whole history instead, as a store
        of an earlier version opened read-only must: the same frame, for checks and benchmarks.
        """
        where = "arrival_day <= ?"
        args: list[object] = [as_of]
        if since is not None:
            where += " AND event_day >= ?"
            args.append(since)
        feats = ", ".join(_q(k) for k in self.spec.feature_names)
        with self.connect(read_only=True) as con:
            rows = f"(SELECT * FROM {TRAINING} WHERE {where})"
            if from_scratch or not self._has(con, TRAINING):
                rows = f"({self._one_shot(con, where, args)})"
                args = []  # the labels were selected into the temp table
            # Through Arrow: pyarrow builds each distinct string once, where `.df()` builds one per row (a
            # third of the time at 1M rows). Days leave as TIMESTAMP so the frame's dtypes stay `.df()`'s.
            table = con.sql(
                "SELECT entity_id, event_time, CAST(event_day AS TIMESTAMP) AS event_day, "
                f"CAST(arrival_day AS TIMESTAMP) AS arrival_day, {feats}, {TARGET} AS {_q(self.spec.target.name)} "
                f"FROM {rows} t ORDER BY event_time, entity_id, arrival_day",
                params=args,
            ).to_arrow_table()
        return table.to_pandas()

    # --- predictions -------------------------------------------------------------------------------------
    def write_predictions(self, day: dt.date, preds: pd.DataFrame) -> None:
        with self.connect() as con:
            con.register("newrows", preds)
            con.execute("BEGIN")
            con.execute("DELETE FROM predictions WHERE event_day = ?", [day])
            con.execute("INSERT INTO predictions BY NAME SELECT * FROM newrows")
            con.execute("COMMIT")

    def scored_labels(self, first_day: dt.date, last_arrival_day: dt.date) -> pd.DataFrame:
        """The prediction log joined with labels that have arrived: what the performance report scores."""
        with self.connect(read_only=True) as con:
            return con.execute(
                "SELECT p.event_day AS day, l.target AS y_true, p.score AS y_score, p.model_version "
                "FROM predictions p JOIN labels l USING (entity_id, event_time) "
                "WHERE p.event_day >= ? AND l.arrival_day <= ? ORDER BY p.event_day",
                [first_day, last_arrival_day],
            ).df()

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
