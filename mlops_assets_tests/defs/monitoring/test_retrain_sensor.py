"""The real retrain sensor against a real instance: reports are recorded as materializations, exactly what
the sensor reads in production, and each test asserts both the run requests and the cursor."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.utils import make_new_run_id

from mlops_assets.config import Settings, load_spec
from mlops_assets.defs.monitoring.sensors import RETRAIN_JOB, TAG_AS_OF, build_retrain_sensor
from mlops_assets_tests.conftest import akey, job


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def sensor(flights_settings: Settings) -> dg.SensorDefinition:
    return build_retrain_sensor(load_spec(flights_settings.spec_path))


def report(
    instance: dg.DagsterInstance,
    day: str,
    *,
    drift: float | None = None,
    decay: bool | None = None,
    baseline: bool = False,
    labelled: int | None = None,
) -> None:
    if labelled is not None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(akey("labels"), partition=day, metadata={"total_labelled_rows": labelled})
        )
    if drift is not None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                akey("drift_report"),
                partition=day,
                metadata={
                    "drift_share": drift,
                    "drift_detected": drift >= 0.5,
                    "tested": True,
                    "champion_is_baseline": baseline,
                    "champion_version": "1" if baseline else "2",
                },
            )
        )
    if decay is not None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                akey("performance_report"),
                partition=day,
                metadata={"window_value": 0.6 if decay else 0.7, "decay_detected": decay},
            )
        )


def tick(instance: dg.DagsterInstance, sensor: dg.SensorDefinition, cursor: str | None) -> dg.SensorResult:
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def record_run(instance: dg.DagsterInstance, request: dg.RunRequest) -> None:
    """What the daemon does with a request: a run of the retrain job carrying the request's tags."""
    instance.add_run(
        dg.DagsterRun(
            job_name=job(RETRAIN_JOB),
            run_id=make_new_run_id(),
            tags=request.tags,
            status=dg.DagsterRunStatus.SUCCESS,
        )
    )


def test_first_tick_with_nothing_reported_skips_and_keeps_an_empty_cursor(instance, sensor) -> None:
    result = tick(instance, sensor, None)
    assert not result.run_requests
    assert result.skip_reason and "no new" in result.skip_reason.skip_message
    assert json.loads(result.cursor or "{}") == {"through": None}


def test_drifted_day_requests_one_run_and_a_second_evaluation_does_not_repeat_it(instance, sensor) -> None:
    report(instance, "2013-02-01", labelled=30000)
    report(instance, "2013-02-01", drift=0.8, decay=False)
    first = tick(instance, sensor, None)
    assert len(first.run_requests) == 1
    req = first.run_requests[0]
    assert req.run_key == "retrain:flights:2013-02-01:drift"
    assert req.tags[TAG_AS_OF] == "2013-02-01" and "drift" in req.tags["mlops/reason"]
    assert req.run_config["ops"][job("training_dataset")]["config"]["as_of"] == "2013-02-01"
    assert json.loads(first.cursor or "{}") == {"through": "2013-02-01"}
    again = tick(instance, sensor, first.cursor)
    assert not again.run_requests and again.cursor == first.cursor


def test_quiet_day_skips_with_its_reason(instance, sensor) -> None:
    report(instance, "2013-02-01", labelled=30000)
    report(instance, "2013-02-01", drift=0.05, decay=False)
    result = tick(instance, sensor, None)
    assert not result.run_requests
    assert result.skip_reason is not None and result.skip_reason.skip_message.startswith("skip")


def test_cool_down_after_a_retrain_then_fires_again(instance, sensor, flights_settings: Settings) -> None:
    report(instance, "2013-02-01", labelled=30000)
    report(instance, "2013-02-01", drift=0.9)
    r1 = tick(instance, sensor, None)
    record_run(instance, r1.run_requests[0])
    report(instance, "2013-02-02", labelled=31000, drift=0.9)
    r2 = tick(instance, sensor, r1.cursor)
    reason = r2.skip_reason.skip_message if r2.skip_reason else ""
    assert not r2.run_requests and ("cool-down" in reason or "weekly ceiling" in reason), reason
    report(instance, "2013-02-10", labelled=45000, drift=0.9)
    r3 = tick(instance, sensor, r2.cursor)
    assert len(r3.run_requests) == 1 and r3.run_requests[0].tags[TAG_AS_OF] == "2013-02-10"


def test_no_second_training_run_while_one_is_in_flight(instance, sensor) -> None:
    report(instance, "2013-02-01", labelled=30000, drift=0.9)
    instance.add_run(
        dg.DagsterRun(
            job_name=job(RETRAIN_JOB),
            run_id=make_new_run_id(),
            tags={"mlops/dataset": "flights", TAG_AS_OF: "2013-01-20"},
            status=dg.DagsterRunStatus.STARTED,
        )
    )
    result = tick(instance, sensor, None)
    assert not result.run_requests
    assert result.skip_reason is not None and "flight" in result.skip_reason.skip_message


RESUME = """
import json, sys
import dagster as dg
from mlops_assets.config import load_spec
from mlops_assets.defs.monitoring.sensors import build_retrain_sensor
home, spec, cursor = sys.argv[1:4]
with dg.DagsterInstance.from_config(home) as inst:
    ctx = dg.build_sensor_context(instance=inst, cursor=cursor)
    r = build_retrain_sensor(load_spec(spec))(ctx)
    print(json.dumps({"requests": [dict(rr.tags) for rr in r.run_requests], "cursor": r.cursor}))
"""


def resume_in_new_process(home: Path, spec: Path, cursor: str | None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", RESUME, str(home), str(spec), cursor or ""],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_restarted_sensor_resumes_from_its_cursor(tmp_path: Path, sensor, flights_settings: Settings) -> None:
    """The daemon restarted: a new process on the same DAGSTER_HOME, handed the stored cursor."""
    home = tmp_path / "home"
    home.mkdir()
    with dg.DagsterInstance.local_temp(str(home)) as inst:
        report(inst, "2013-02-01", labelled=30000, drift=0.9)
        first = tick(inst, sensor, None)
        assert len(first.run_requests) == 1
        record_run(inst, first.run_requests[0])
    resumed = resume_in_new_process(home, flights_settings.spec_path, first.cursor)
    assert resumed["requests"] == [] and resumed["cursor"] == first.cursor
    with dg.DagsterInstance.local_temp(str(home)) as inst:
        report(inst, "2013-02-20", labelled=60000, drift=0.9)
    later = resume_in_new_process(home, flights_settings.spec_path, first.cursor)
    assert len(later["requests"]) == 1 and later["requests"][0][TAG_AS_OF] == "2013-02-20"


def test_bootstrap_trains_the_first_model_once_enough_labels_exist(instance, sensor) -> None:
    report(instance, "2013-01-05", labelled=3000, drift=0.0, baseline=True)
    r1 = tick(instance, sensor, None)
    assert not r1.run_requests
    report(instance, "2013-01-22", labelled=19000, drift=0.0, baseline=True)
    r2 = tick(instance, sensor, r1.cursor)
    assert len(r2.run_requests) == 1 and r2.run_requests[0].tags["mlops/trigger"] == "bootstrap"


def test_weekly_schedule_trains_as_of_the_newest_labels_and_counts_for_the_cool_down(
    instance, sensor, flights_settings: Settings
) -> None:
    """The periodic retrain uses the data's clock, not the wall clock, and the sensor sees it as a retrain."""
    from mlops_assets.definitions import build_defs

    schedule = build_defs(flights_settings).resolve_schedule_def(job("weekly_retrain_schedule"))
    empty = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    assert not empty.run_requests and "no labels" in (empty.skip_message or "")
    report(instance, "2013-02-03", labelled=40000)
    data = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    assert data.run_requests is not None and len(data.run_requests) == 1
    req = data.run_requests[0]
    assert req.tags[TAG_AS_OF] == "2013-02-03" and req.tags["mlops/trigger"] == "schedule"
    assert req.run_config["ops"][job("training_dataset")]["config"]["as_of"] == "2013-02-03"
    record_run(instance, req)
    report(instance, "2013-02-04", labelled=41000, drift=0.9)
    after = tick(instance, sensor, None)
    reason = after.skip_reason.skip_message if after.skip_reason else ""
    assert not after.run_requests and ("cool-down" in reason or "weekly ceiling" in reason), reason


def test_a_run_killed_long_ago_no_longer_blocks_retraining(instance, flights_settings: Settings) -> None:
    """A SIGKILLed training process cannot mark its run failed; after stale_run_hours it is treated as dead."""
    import datetime as dt

    from mlops_assets.defs.monitoring.sensors import policy_state

    report(instance, "2013-02-01", labelled=30000, drift=0.9)
    instance.add_run(
        dg.DagsterRun(
            job_name=job(RETRAIN_JOB),
            run_id=make_new_run_id(),
            tags={"mlops/dataset": "flights", TAG_AS_OF: "2013-01-02"},
            status=dg.DagsterRunStatus.STARTED,
        )
    )
    ds = load_spec(flights_settings.spec_path)
    day = dt.date(2013, 2, 1)
    assert policy_state(instance, ds, day, False).run_in_flight
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=ds.policy.stale_run_hours + 1)
    assert not policy_state(instance, ds, day, False, now=later).run_in_flight


def daily_run(instance: dg.DagsterInstance, day: str, status: dg.DagsterRunStatus) -> None:
    instance.add_run(
        dg.DagsterRun(
            job_name=job("daily_job"), run_id=make_new_run_id(), tags={"dagster/partition": day}, status=status
        )
    )


def champion_moved(instance: dg.DagsterInstance, version: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(akey("champion"), metadata={"champion_version": version, "moved": True})
    )


def test_a_backfill_is_decided_in_day_order_whatever_order_its_days_finish_in(instance, sensor) -> None:
    """Day 2 finished first while day 1's run is still going: nothing is decided until day 1 is in."""
    daily_run(instance, "2013-02-01", dg.DagsterRunStatus.STARTED)
    report(instance, "2013-02-02", labelled=31000, drift=0.9, decay=False)
    waiting = tick(instance, sensor, None)
    assert not waiting.run_requests
    assert waiting.skip_reason and "waiting" in waiting.skip_reason.skip_message
    assert "2013-02-01" in waiting.skip_reason.skip_message
    report(instance, "2013-02-01", labelled=30000, drift=0.9, decay=False)
    for r in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        instance.report_run_failed(r)  # day 1's run has ended (how does not matter: it no longer holds the day)
    first = tick(instance, sensor, waiting.cursor)
    assert [r.tags[TAG_AS_OF] for r in first.run_requests] == ["2013-02-01"]  # day 1 first, as in a replay
    assert json.loads(first.cursor or "{}") == {"through": "2013-02-01"}


def test_a_day_scored_by_a_champion_that_moved_since_is_rescored_before_it_is_decided(instance, sensor) -> None:
    champion_moved(instance, "3")
    report(instance, "2013-02-01", labelled=30000, drift=0.9, decay=False)  # computed with v2
    result = tick(instance, sensor, None)
    assert result.skip_reason is None or "re-scoring" in result.skip_reason.skip_message
    [refresh] = result.run_requests
    assert refresh.job_name == job("daily_job") and refresh.partition_key == "2013-02-01"
    assert set(refresh.asset_selection or []) == {
        akey("batch_predictions"),
        akey("drift_report"),
        akey("performance_report"),
    }
    assert json.loads(result.cursor or "{}") == {"through": "2013-01-31"}  # the day is not decided yet
    # the re-scored day: the reports now carry the champion that serves
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            akey("drift_report"),
            partition="2013-02-01",
            metadata={"drift_share": 0.9, "drift_detected": True, "tested": True, "champion_version": "3"},
        )
    )
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            akey("performance_report"),
            partition="2013-02-01",
            metadata={"window_value": 0.7, "decay_detected": False, "champion_version": "3"},
        )
    )
    decided = tick(instance, sensor, result.cursor)
    assert [r.tags[TAG_AS_OF] for r in decided.run_requests] == ["2013-02-01"]


def test_no_day_is_decided_while_a_retrain_of_the_dataset_is_in_flight(instance, sensor) -> None:
    """Its outcome is the champion the next day is judged with: deciding before it would judge another."""
    report(instance, "2013-02-01", labelled=30000, drift=0.05, decay=False)
    report(instance, "2013-02-02", labelled=31000, drift=0.05, decay=False)
    quiet = tick(instance, sensor, None)
    assert json.loads(quiet.cursor or "{}") == {"through": "2013-02-02"}
    instance.add_run(
        dg.DagsterRun(
            job_name=job("approve_job"),
            run_id=make_new_run_id(),
            tags={"mlops/dataset": "flights"},
            status=dg.DagsterRunStatus.STARTED,
        )
    )
    report(instance, "2013-02-03", labelled=32000, drift=0.9, decay=False)
    held = tick(instance, sensor, quiet.cursor)
    assert not held.run_requests and held.cursor == quiet.cursor
    assert held.skip_reason and "in flight" in held.skip_reason.skip_message


def test_a_day_whose_run_failed_for_good_is_passed_over(instance, sensor) -> None:
    report(instance, "2013-02-01", labelled=30000, drift=0.05, decay=False)
    daily_run(instance, "2013-02-02", dg.DagsterRunStatus.FAILURE)
    report(instance, "2013-02-03", labelled=32000, drift=0.05, decay=False)
    result = tick(instance, sensor, None)
    assert json.loads(result.cursor or "{}") == {"through": "2013-02-03"}
