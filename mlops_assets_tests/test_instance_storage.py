"""The pooled SQLite storages of the embedded instance: the same files as Dagster's own, live updates across
processes (what the UI's run view relies on), and runs that still work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType
from dagster._core.test_utils import create_run_for_test

from mlops_assets.config import PROJECT_ROOT
from mlops_assets.instance_storage import (
    PooledSqliteEventLogStorage,
    PooledSqliteRunStorage,
    PooledSqliteScheduleStorage,
)
from mlops_assets.replay import install_instance_yaml

WRITER = """
import sys, time
import dagster as dg
with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
    run = instance.get_run_by_id(sys.argv[2])
    for i in range(3):
        instance.report_engine_event(f"from another process {i}", run)
        time.sleep(0.2)
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # the installed yaml names its home itself
    install_instance_yaml(tmp_path)
    yield tmp_path


def test_the_shipped_yaml_opens_the_pooled_storages_by_folder(home: Path) -> None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PooledSqliteRunStorage)
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        assert isinstance(instance.schedule_storage, PooledSqliteScheduleStorage)
        assert (home / "history" / "runs.db").exists()


def test_a_watcher_sees_events_written_by_another_process(home: Path) -> None:
    """The UI follows a run through file-system events on its shard; a write on a kept WAL connection does
    not modify the file, so the storage touches it."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = create_run_for_test(instance, job_name="watched")
        instance.report_engine_event("first", run)
        seen: list[str] = []
        instance.event_log_storage.watch(run.run_id, None, lambda ev, _cursor: seen.append(ev.message))
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        subprocess.run([sys.executable, "-c", WRITER, str(home), run.run_id], check=True, env=env, timeout=120)
        deadline = time.monotonic() + 20
        while len(seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen == ["first", *(f"from another process {i}" for i in range(3))]


def test_runs_and_materializations_read_back_with_dagsters_own_storage(home: Path, tmp_path: Path) -> None:
    """Same files, same tables: a home written through the pooled storages opens with Dagster's defaults."""
    parts = dg.DailyPartitionsDefinition(start_date="2024-01-01")

    @dg.asset(partitions_def=parts)
    def daily() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 3})

    with dg.DagsterInstance.from_config(str(home)) as instance:
        for day in ("2024-01-01", "2024-01-02"):
            assert dg.materialize([daily], instance=instance, partition_key=day).success
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as plain:
        assert type(plain.event_log_storage).__name__ == "SqliteEventLogStorage"
        assert len(plain.get_runs()) == 2
        records = plain.fetch_materializations(dg.AssetKey("daily"), limit=10).records
        assert sorted(r.partition_key for r in records) == ["2024-01-01", "2024-01-02"]
        assert records[0].asset_materialization.metadata["rows"].value == 3  # type: ignore[union-attr]


def test_new_run_shards_are_copies_of_an_empty_one_and_hold_only_their_own_events(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its first run a process copies an empty shard instead of creating the schema again; a shard it
    only read (an earlier run, as the UI does) is never what it copies."""
    parts = dg.DailyPartitionsDefinition(start_date="2024-01-01")

    @dg.asset(partitions_def=parts)
    def daily() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 3})

    def own_events_only(instance: dg.DagsterInstance, run_id: str) -> None:
        logs = instance.all_logs(run_id)
        assert logs and {e.run_id for e in logs} == {run_id}
        assert any(e.dagster_event and e.dagster_event.event_type == DagsterEventType.RUN_SUCCESS for e in logs)

    days = ("2024-01-01", "2024-01-02", "2024-01-03")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        first = dg.materialize([daily], instance=instance, partition_key=days[0]).run_id
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, PooledSqliteEventLogStorage)
        own_events_only(instance, first)  # read first: an old shard with events, never a template
        assert storage._shard_template is None
        created: list[str] = []
        initdb = storage._initdb
        monkeypatch.setattr(
            storage, "_initdb", lambda engine, **kw: (created.append(str(engine.url)), initdb(engine, **kw))
        )
        later = [dg.materialize([daily], instance=instance, partition_key=d).run_id for d in days[1:]]
        shards = [url for url in created if not url.endswith("/index.db")]
        assert len(shards) == 1 and later[0] in shards[0]  # the third run's shard was copied, not created
        assert storage._shard_template is not None  # made from the second run's fresh shard, used by the third
        for run_id in (first, *later):
            own_events_only(instance, run_id)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as plain:  # Dagster's own storage reads the copied shards
        for run_id in (first, *later):
            own_events_only(plain, run_id)
        records = plain.fetch_materializations(dg.AssetKey("daily"), limit=10).records
        assert sorted(r.partition_key for r in records) == list(days)
