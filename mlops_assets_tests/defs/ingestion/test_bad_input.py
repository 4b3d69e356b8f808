"""Bad deliveries through the real daily job: the day's blocking check fails with the day, column and rule;
nothing of that day reaches features, monitoring or serving; the champion is untouched; the next day runs."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from mlops_assets.cli import main
from mlops_assets.config import Settings, load_spec
from mlops_assets.datasets.sources import META_COLUMNS, read_day
from mlops_assets.definitions import build_defs
from mlops_assets.defs.resources import ModelRegistryResource
from mlops_assets_tests.conftest import akey, fast_flights_spec, job

DAYS = [dt.date(2013, 1, d) for d in (1, 2, 3, 4, 5, 6)]
LATE = dt.date(2013, 1, 7)


@pytest.fixture
def drops(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A folder source: day 1 fine, day 2 missing, day 3 with a column renamed, day 4 fine, day 5 with a null
    flood, day 6 with numbers written as text; day 7's file arrives truncated (as Parquet) later."""
    shipped = load_spec(fast_flights_spec(tmp_path))
    folder = tmp_path / "drops"
    folder.mkdir()
    for day in [*DAYS, LATE]:
        rows, _ = read_day(shipped, day)
        rows = rows.drop(columns=[c for c in META_COLUMNS if c in rows])
        if day == LATE:
            rows.to_parquet(folder.parent / "late.parquet")
            continue
        if day == DAYS[1]:
            continue
        if day == DAYS[2]:
            rows = rows.rename(columns={"dest": "destination"})
        if day == DAYS[4]:
            rows.loc[: len(rows) * 2 // 3, "carrier"] = None
        if day == DAYS[5]:
            rows["distance"] = "far"
        rows.to_csv(folder / f"flights-{day:%Y%m%d}.csv", index=False)
    raw = yaml.safe_load(fast_flights_spec(tmp_path).read_text())
    raw["source"] = {"kind": "folder", "path": str(folder), "pattern": "*"}  # CSV or Parquet, any names
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
        dg.AssetRecordsFilter(asset_key=akey(asset), asset_partitions=[day.isoformat()]), limit=1
    ).records
    return bool(recs)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_days_are_blocked_the_next_day_runs_and_the_champion_is_untouched(drops: Settings, tmp_path: Path) -> None:
    defs = build_defs(drops)
    daily = defs.resolve_job_def(job("daily_job"))
    registry = ModelRegistryResource(tracking_uri=drops.mlflow_tracking_uri, artifact_root=drops.mlflow_artifact_root)
    with dg.DagsterInstance.get() as instance:
        defs.resolve_job_def(job("bootstrap_job")).execute_in_process(instance=instance)
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
        assert not ok3 and "2013-01-03" in msg3 and "flights-20130103.csv" in msg3
        assert "'dest' is missing" in msg3 and "'destination' is not in the schema" in msg3

        ok5, msg5 = check_result(instance, results[DAYS[4]].run_id, "delivery_valid")
        assert not ok5 and "column 'carrier' is null on 67% of" in msg5 and "at most 50% nulls" in msg5

        ok6, msg6 = check_result(instance, results[DAYS[5]].run_id, "delivery_valid")
        assert not ok6 and "column 'distance' has no value of type int (e.g. 'far'; rule: type int)" in msg6

        # a truncated Parquet file dropped later: the day it would feed is blocked, naming the file
        folder = Path(str(load_spec(drops.spec_path).source.path))
        data = (tmp_path / "late.parquet").read_bytes()
        broken = folder / "flights-20130107.parquet"
        broken.write_bytes(data[: len(data) // 2])
        late = daily.execute_in_process(instance=instance, partition_key=LATE.isoformat(), raise_on_error=False)
        ok7, msg7 = check_result(instance, late.run_id, "delivery_valid")
        assert not ok7 and f"{broken}: cannot be read as Parquet" in msg7 and not late.success

        for bad in [*DAYS[1:3], *DAYS[4:], LATE]:
            assert bad == LATE or not results[bad].success
            for downstream in ("features", "drift_report", "batch_predictions"):
                assert not materialized(instance, downstream, bad), (downstream, bad)

        assert results[DAYS[3]].success and materialized(instance, "batch_predictions", DAYS[3])
        after = registry.champion_info("flights_model")
        assert champion_before is not None and after is not None and after.version == champion_before.version

        # the person removes the broken file (it blocks every day until then: any day's rows could be in it),
        # exports 2013-01-06's quarantine, puts the distances back and replays: the day runs
        kept_copy = sha256(broken)
        broken.unlink()
        exported = tmp_path / "q.csv"
        assert main(["quarantine", "list", DAYS[5].isoformat(), "--out", str(exported)]) == 0
        fixed = pd.read_csv(exported, dtype=str)
        true_rows, _ = read_day(load_spec(fast_flights_spec(tmp_path)), DAYS[5])
        fixed["distance"] = true_rows["distance"].astype(str).to_numpy()
        fixed.to_csv(exported, index=False)
        assert main(["quarantine", "replay", DAYS[5].isoformat(), "--file", str(exported)]) == 0
        assert materialized(instance, "batch_predictions", DAYS[5])
        assert registry.champion_info("flights_model").version == champion_before.version  # type: ignore[union-attr]

    lake = drops.data_dir / "lake"
    assert list((lake / "raw" / "flights").glob("date=2013-01-01/*.parquet"))
    for bad in ("2013-01-03", "2013-01-05", "2013-01-06"):
        if bad != "2013-01-06":  # replayed after the fix
            assert not (lake / "raw" / "flights" / f"date={bad}").exists()  # nothing of a bad day in the raw area
        kept = list((lake / "quarantine" / "flights").glob(f"date={bad}/*.parquet"))
        assert kept, "the rejected delivery is kept whole in quarantine (also after a replay: a new version)"
    assert list((lake / "replay" / "flights").glob("date=2013-01-06/*.parquet"))
    copies = {sha256(p) for p in (lake / "files" / "flights").rglob("*") if p.is_file()}
    assert kept_copy in copies, "the truncated file is kept byte for byte"
    for dropped in [folder / "flights-20130103.csv", folder / "flights-20130106.csv"]:
        assert sha256(dropped) in copies, f"{dropped} kept byte for byte"
