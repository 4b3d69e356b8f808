"""Bad deliveries through the real daily job: the day's blocking check fails with the day, column and rule;
nothing of that day reaches features, monitoring or serving; the champion is untouched; the next day runs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets.config import Settings, load_spec
from mlops_assets.datasets.sources import read_day
from mlops_assets.definitions import build_defs
from mlops_assets.defs.resources import ModelRegistryResource
from mlops_assets_tests.conftest import fast_flights_spec

DAYS = [dt.date(2013, 1, d) for d in (1, 2, 3, 4)]


@pytest.fixture
def drops(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A folder source: day 1 fine, day 2 missing, day 3 with a column renamed, day 4 fine."""
    shipped = load_spec(fast_flights_spec(tmp_path))
    folder = tmp_path / "drops"
    folder.mkdir()
    for day in DAYS:
        rows, _ = read_day(shipped, day)
        rows = rows.drop(columns=["_source_file"])
        if day == DAYS[1]:
            continue
        if day == DAYS[2]:
            rows = rows.rename(columns={"dest": "destination"})
        rows.to_csv(folder / f"flights-{day:%Y%m%d}.csv", index=False)
    raw = yaml.safe_load(fast_flights_spec(tmp_path).read_text())
    raw["source"] = {"kind": "folder", "path": str(folder), "pattern": "*.csv"}
    spec_path = tmp_path / "drops.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLOPS_SPEC", str(spec_path))
    return Settings.from_env()


def check_result(instance: dg.DagsterInstance, run_id: str, name: str) -> tuple[bool, str]:
    for rec in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records:
        ev = rec.event_log_entry.dagster_event.event_specific_data  # type: ignore[union-attr]
        if ev.check_name == name:
            return ev.passed, str(ev.description or "") + str(ev.metadata)
    raise AssertionError(f"no {name} check in run {run_id}")


def materialized(instance: dg.DagsterInstance, asset: str, day: dt.date) -> bool:
    recs = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[day.isoformat()]), limit=1
    ).records
    return bool(recs)


def test_missing_and_changed_days_are_blocked_and_the_next_day_runs(drops: Settings) -> None:
    defs = build_defs(drops)
    daily = defs.resolve_job_def("daily_job")
    registry = ModelRegistryResource(tracking_uri=drops.mlflow_tracking_uri, artifact_root=drops.mlflow_artifact_root)
    with dg.DagsterInstance.get() as instance:
        defs.resolve_job_def("bootstrap_job").execute_in_process(instance=instance)
        champion_before = registry.champion_info("flights_model")
        results = {
            d: daily.execute_in_process(instance=instance, partition_key=d.isoformat(), raise_on_error=False)
            for d in DAYS
        }

        ok1, _ = check_result(instance, results[DAYS[0]].run_id, "delivery_valid")
        assert ok1 and results[DAYS[0]].success

        ok2, msg2 = check_result(instance, results[DAYS[1]].run_id, "delivery_valid")
        assert not ok2 and "2013-01-02" in msg2 and "no rows" in msg2

        ok3, msg3 = check_result(instance, results[DAYS[2]].run_id, "delivery_valid")
        assert not ok3 and "2013-01-03" in msg3
        assert "'dest' is missing" in msg3 and "'destination' is not in the schema" in msg3

        for bad in DAYS[1:3]:
            assert not results[bad].success
            for downstream in ("features", "drift_report", "batch_predictions"):
                assert not materialized(instance, downstream, bad), (downstream, bad)

        assert results[DAYS[3]].success and materialized(instance, "batch_predictions", DAYS[3])
        after = registry.champion_info("flights_model")
        assert champion_before is not None and after is not None and after.version == champion_before.version

    lake = drops.data_dir / "lake"
    assert list((lake / "raw" / "flights").glob("date=2013-01-01/*.parquet"))
    assert not (lake / "raw" / "flights" / "date=2013-01-03").exists()  # nothing of a bad day in the raw area
    kept = list((lake / "quarantine" / "flights").glob("date=2013-01-03/*.parquet"))
    assert kept, "the rejected delivery is kept whole in quarantine"
