"""Dagster's SQLite instance storage, the embedded profile's default, without a new database engine per query.

Dagster's SQLite storages build a SQLAlchemy engine for every connection and throw it away after one
transaction (`NullPool`), so each of the ~70 events of a replay day pays for an engine, a fresh compile of its
statement (the compiled cache lives on the engine), an open of the file and, on close, a WAL checkpoint with
its fsyncs; a trivial run of eight partitioned assets spent more time there than in Dagster itself
(`benchmarks/instance_storage.py`). These subclasses keep the same files, tables and semantics and change only
how connections are made:

- one engine per database file and process (per run shard: the newest few), whose pool keeps a connection open
  between transactions, so statements compile once and a commit no longer checkpoints;
- `PRAGMA synchronous=NORMAL`: in WAL mode a commit is atomic and survives a crash of the process; only an
  operating-system crash or power loss can lose the last commits, never corrupt the file. The production
  profile (PostgreSQL) is untouched;
- a write to a run's shard touches the file: the UI's live run view learns of new events from file-system
  notifications on `<run_id>.db`, which a WAL write no longer modifies until a checkpoint;
- a forked child never uses its parent's connections.

Every process of one DAGSTER_HOME (the replay, `dagster dev`'s webserver, daemon and run workers) must use the
same classes; the shipped `dagster.yaml` names them for all three storages.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

# Run shards whose engines a process keeps: a run writes to its own shard, the UI reads a few at a time.
MAX_RUN_SHARDS = 8


def sqlite_engine(url: str) -> Engine:
    """An engine that keeps one connection open between transactions (more only while threads overlap)."""
    engine = create_engine(
        url,
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=16,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    return engine


class _Engines:
    """The engines of one process, by database URL; a forked child starts with none of its parent's."""

    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._engines: OrderedDict[str, Engine] = OrderedDict()

    def get(self, url: str) -> Engine:
        with self._lock:
            if os.getpid() != self._pid:  # the parent's pooled connections must not be shared
                for engine in self._engines.values():
                    engine.dispose(close=False)
                self._engines.clear()
                self._pid = os.getpid()
            found = self._engines.get(url)
            if found is not None:
                self._engines.move_to_end(url)
                return found
            engine = self._engines[url] = sqlite_engine(url)
            while self._limit is not None and len(self._engines) > self._limit:
                self._engines.popitem(last=False)[1].dispose()
            return engine

    def dispose(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


@contextmanager
def _transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn, conn.begin():
        yield conn


def _changes(conn: Connection) -> int:
    return int(conn.connection.dbapi_connection.total_changes)  # type: ignore[union-attr]


class _ConfiguredByHome:
    """Configured by DAGSTER_HOME alone: each storage finds its own file under it, as Dagster's default does."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        from dagster import StringSource

        return {"dagster_home": StringSource}


class PooledSqliteEventLogStorage(_ConfiguredByHome, SqliteEventLogStorage):
    """Event log: the index shard and the newest run shards on kept connections."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._index_engines = _Engines()
        self._run_engines = _Engines(limit=MAX_RUN_SHARDS)
        self._shard_template: str | None = None  # an empty run shard to copy (see `_copy_template`)
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, str]
    ) -> PooledSqliteEventLogStorage:
        return cls(os.path.join(config_value["dagster_home"], "history", "runs", ""), inst_data=inst_data)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            url = self.conn_string_for_shard(shard)
            index = shard == INDEX_SHARD_NAME
            engine = (self._index_engines if index else self._run_engines).get(url)
            if shard not in self._initialized_dbs:
                new_run_shard = not index and not os.path.exists(self.path_for_shard(shard))
                if not (new_run_shard and self._copy_template(shard)):
                    self._initdb(engine)
                    if new_run_shard:
                        self._keep_template(shard, engine)
                self._initialized_dbs.add(shard)
            with _transaction(engine) as conn:
                before = _changes(conn)
                yield conn
                wrote = _changes(conn) != before
            if wrote and not index:
                os.utime(self.path_for_shard(shard))  # wakes the UI's watcher of this run (see module docstring)

    def _copy_template(self, shard: str) -> bool:
        """A new run's shard as a copy of the empty one this process made first: `_initdb` (create every table
        and index, stamp alembic) cost about 70 ms of every replay day, a copy under one. Placed with a hard
        link, which never replaces a file another process created meanwhile (then `_initdb` checks it)."""
        template = self._shard_template
        if template is None:
            return False
        path = self.path_for_shard(shard)
        scratch = f"{path}.{os.getpid()}.tmp"
        try:
            shutil.copyfile(template, scratch)
        except OSError:  # the template's folder went away (a forked child outliving its parent)
            self._shard_template = None
            return False
        try:
            os.link(scratch, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(scratch)
        return True

    def _keep_template(self, shard: str, engine: Engine) -> None:
        """Keep the run shard `_initdb` just made, before any event is in it, as this process's template:
        checkpointed, so the main file alone holds the schema (and WAL mode, which lives in its header)."""
        if self._shard_template is not None:
            return
        with engine.connect() as conn:
            busy, log, done = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
            if busy or log != done:  # a reader held the WAL: the main file may lack the schema, try next run
                return
            folder = tempfile.mkdtemp(prefix="mlops-shard-template-")
            atexit.register(shutil.rmtree, folder, True)
            template = os.path.join(folder, "run.db")
            shutil.copyfile(self.path_for_shard(shard), template)
        with closing(sqlite3.connect(template)) as check:  # no event of anyone's run in what every run copies
            if check.execute("SELECT count(*) FROM event_logs").fetchone()[0] == 0:
                self._shard_template = template

    def wipe(self) -> None:
        self._run_engines.dispose()  # the shard files are about to be deleted
        super().wipe()

    def dispose(self) -> None:
        super().dispose()
        self._run_engines.dispose()
        self._index_engines.dispose()


class _OneFile(_ConfiguredByHome):
    """A storage of one database file (`_conn_string`) on a kept connection, configured by the home."""

    _conn_string: str

    def _file_engines(self) -> _Engines:
        engines = self.__dict__.get("_file_engines_")
        if engines is None:
            engines = self.__dict__["_file_engines_"] = _Engines()
        return engines

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with _transaction(self._file_engines().get(self._conn_string)) as conn:
            yield conn


class PooledSqliteRunStorage(_OneFile, SqliteRunStorage):
    """Runs (`history/runs.db`) on a kept connection."""

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, str]
    ) -> PooledSqliteRunStorage:
        return cls.from_local(os.path.join(config_value["dagster_home"], "history", ""), inst_data=inst_data)

    def dispose(self) -> None:
        super().dispose()
        self._file_engines().dispose()


class PooledSqliteScheduleStorage(_OneFile, SqliteScheduleStorage):
    """Schedule and sensor ticks (`schedules/schedules.db`) on a kept connection."""

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, str]
    ) -> PooledSqliteScheduleStorage:
        storage = cls.from_local(os.path.join(config_value["dagster_home"], "schedules"), inst_data=inst_data)
        assert isinstance(storage, cls)
        return storage

    def dispose(self) -> None:
        super().dispose()
        self._file_engines().dispose()
