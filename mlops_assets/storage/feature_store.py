"""The feature store: feature rows by entity and event time in DuckDB, built from the dataset spec.

Point-in-time correctness is the whole point. Feature rows are computed from what was known at the event:
side tables are joined *as of* the event's time, and target rates use only labels that had arrived before
the event's day. Training sets join each label to the newest feature row of its entity at or before the
label's event time (DuckDB's ASOF JOIN), so no value from the future reaches the past. A partition is
replaced as a unit (delete + insert in one transaction), so re-materializing a day never duplicates rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from mlops_assets.config import WINDOW_AGGS, DatasetSpec

LATEST = "features_latest"  # newest feature row per entity, maintained with every write of a day
RATE_PRIOR_WEIGHT = 20.0  # pseudo-count pulling a sparse group's rate towards the window's overall rate
_ENSURED: set[tuple[str, str]] = set()  # (file, spec) pairs whose tables this process has already created


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class FeatureStore:
    path: Path
    spec: DatasetSpec
    # DuckDB's own default is 80% of the machine's memory, much of it then kept as a cache of the file's
    # blocks: a store sharing a box with the run workers and the model sweep must not take that. Beyond the
    # limit DuckDB spills to `<file>.tmp`. The training set of 10M feature rows x 1M labels peaked at 2.9 GB
    # resident without a limit and at 1.3 GB with this one, for about a fifth more time
    # (benchmarks/feature_store.py). None leaves DuckDB's defaults.
    memory_limit: str | None = "1GB"
    threads: int | None = None

    # --- connection and schema ---------------------------------------------------------------------------
    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Short-lived connections: DuckDB allows one writer process, and the UI process must not be locked
        out for the length of a replay."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        if read_only and fresh:
            read_only = False
        con = duckdb.connect(str(self.path), read_only=read_only)
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

    def ensure_tables(self, con: duckdb.DuckDBPyConnection) -> None:
        types = {k: ("DOUBLE" if v.type == "numeric" else "VARCHAR") for k, v in self.spec.feature_columns.items()}
        cols = ", ".join(f"{_q(k)} {t}" for k, t in types.items())
        con.execute(
            f"CREATE TABLE IF NOT EXISTS features (entity_id VARCHAR, event_time TIMESTAMP, event_day DATE, {cols})"
        )
        # The online side: each entity's newest feature row, kept beside the history so that a lookup by key
        # reads one small table instead of ranking every row of every entity. Created (and filled from the
        # history) the first time a store of an earlier version is opened for writing.
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {LATEST} AS SELECT * FROM features "
            "QUALIFY row_number() OVER (PARTITION BY entity_id ORDER BY event_time DESC) = 1"
        )
        keys = "".join(f", {_q(k)} VARCHAR" for k in self._rate_keys)
        con.execute(
            "CREATE TABLE IF NOT EXISTS labels (entity_id VARCHAR, event_time TIMESTAMP, event_day DATE, "
            f"arrival_day DATE, target DOUBLE{keys})"
        )
        con.execute(
            "CREATE TABLE IF NOT EXISTS predictions (entity_id VARCHAR, event_time TIMESTAMP, event_day DATE, "
            "model_version VARCHAR, score DOUBLE)"
        )
        if self.spec.features.windows:
            wkeys = "".join(f", {_q('k_' + k)} VARCHAR" for k in self._window_keys())
            wvals = "".join(f", {_q('v_' + n)} DOUBLE" for n in self.spec.features.windows)
            con.execute(f"CREATE TABLE IF NOT EXISTS window_rows (event_day DATE{wkeys}{wvals})")

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
        an entity whose rows were withdrawn falls back to its newest row of an earlier day.
        """
        with self.connect() as con:
            con.register("raw", raw)
            feats = con.execute(self._feature_sql(day)).df()
            con.register("newrows", feats)
            con.execute("BEGIN")
            con.execute(
                "CREATE OR REPLACE TEMP TABLE touched AS SELECT entity_id FROM newrows "
                "UNION SELECT entity_id FROM features WHERE event_day = ?",
                [day],
            )
            con.execute("DELETE FROM features WHERE event_day = ?", [day])
            con.execute("INSERT INTO features BY NAME SELECT * FROM newrows")
            if self.spec.features.windows:
                con.execute("DELETE FROM window_rows WHERE event_day = ?", [day])
                con.execute(f"INSERT INTO window_rows BY NAME {self._window_rows_sql()}")
            con.execute(f"DELETE FROM {LATEST} WHERE entity_id IN (SELECT entity_id FROM touched)")
            con.execute(
                f"INSERT INTO {LATEST} BY NAME SELECT f.* FROM features f SEMI JOIN touched USING (entity_id) "
                "QUALIFY row_number() OVER (PARTITION BY f.entity_id ORDER BY f.event_time DESC) = 1"
            )
            con.execute("DROP TABLE touched")
            con.execute("COMMIT")
        return feats

    def features_for_day(self, day: dt.date) -> pd.DataFrame:
        return self.features_between(day, day)

    def features_between(self, first: dt.date, last: dt.date) -> pd.DataFrame:
        with self.connect(read_only=True) as con:
            return con.execute(
                "SELECT * FROM features WHERE event_day BETWEEN ? AND ? ORDER BY event_time, entity_id",
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
                    "SELECT f.* FROM features f SEMI JOIN ids USING (entity_id) "
                    "QUALIFY row_number() OVER (PARTITION BY entity_id ORDER BY event_time DESC) = 1"
                ).df()

    # --- labels ------------------------------------------------------------------------------------------
    def write_labels(self, arrival_day: dt.date, raw_event_day: pd.DataFrame) -> pd.DataFrame:
        """Publish the labels that arrive on `arrival_day`; rows whose target is unknown (e.g. cancelled
        flights) carry no label and are left out."""
        keys = "".join(f", CAST({_q(k)} AS VARCHAR) AS {_q(k)}" for k in self._rate_keys)
        with self.connect() as con:
            if raw_event_day.empty:
                con.execute("DELETE FROM labels WHERE arrival_day = ?", [arrival_day])
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
    def training_frame(self, as_of: dt.date, since: dt.date | None = None) -> pd.DataFrame:
        """Every label that had arrived by `as_of`, joined to the feature row its entity had at the label's
        event time (as of, never after). A label whose entity had no feature row yet is left out: there is
        nothing to learn from it.

        The as-of join sorts every feature row, so it is done on keys only: a 64-bit hash of the entity (a
        number sorts and partitions faster than a string) and the event time, carrying the row id. The
        feature values are then fetched for the matched rows alone, by row id, checking the entity string;
        an entity that collided with another's hash would lose its label rather than take another's values.
        Dragging ten feature columns through the sort instead took about 1.4 times as long at 10M feature
        rows, and 10% more memory (benchmarks/feature_store.py).
        """
        feats = ", ".join(f"f.{_q(k)}" for k in self.spec.feature_names)
        where = "arrival_day <= ?"
        args: list[object] = [as_of]
        if since is not None:
            where += " AND event_day >= ?"
            args.append(since)
        with self.connect(read_only=True) as con:
            # Through Arrow: pyarrow builds each distinct string once, where `.df()` builds one per row (a
            # third of the time at 1M rows). Days leave as TIMESTAMP so the frame's dtypes stay `.df()`'s.
            table = con.sql(
                f"WITH l AS (SELECT * FROM labels WHERE {where}), "
                "m AS (SELECT l.*, k.rid FROM l ASOF JOIN "
                "(SELECT hash(entity_id) AS ekey, event_time, rowid AS rid FROM features) k "
                "ON hash(l.entity_id) = k.ekey AND l.event_time >= k.event_time) "
                "SELECT m.entity_id, m.event_time, CAST(m.event_day AS TIMESTAMP) AS event_day, "
                f"CAST(m.arrival_day AS TIMESTAMP) AS arrival_day, {feats}, "
                f"m.target AS {_q(self.spec.target.name)} "
                "FROM m JOIN features f ON f.rowid = m.rid AND f.entity_id = m.entity_id "
                "ORDER BY m.event_time, m.entity_id",
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
