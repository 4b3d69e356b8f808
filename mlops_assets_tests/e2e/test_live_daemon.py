"""The live path, driven by the daemon and nothing else: `dagster dev` on the embedded profile (queued runs, two
at a time, the feature-store pool), days of real flights dropped into a folder source, a backfill of their
daily partitions launched as the UI launches it. The daemon's own retrain sensor must then launch the retrain,
the champion must move off the baseline, and the online API must answer with the new version, with no run
failing on the way. The replay tests evaluate the sensor in-process; only this one proves the deployment a
user starts does it by itself.

It also measures what the issue asks of the live path: from the report materialization that fired the sensor
to the first API answer naming the new champion (goal: under 2 minutes on 2 cores).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest

from mlops_assets.config import Settings, load_spec
from mlops_assets.defs.monitoring.sensors import TAG_REFRESH, TAG_TRIGGER, _aware
from mlops_assets.defs.resources import ModelRegistryResource
from mlops_assets_tests.conftest import akey, job
from mlops_assets_tests.live import (
    DONE,
    Live,
    api_server,
    dagster_dev,
    drop_days,
    example_row,
    folder_spec,
    materialization_times,
    poll,
)

pytestmark = pytest.mark.e2e

DAYS = [dt.date(2013, 1, 1) + dt.timedelta(days=i) for i in range(7)]
HOLDOUT_DAYS = VALIDATION_DAYS = 1  # the gate and the sweep each on one day: the first model comes early
SENSOR = job("retrain_sensor")
GOAL_SECONDS = 120.0  # issue 15: drift report to the new champion serving, on 2 cores
STALL_SECONDS = 5 * GOAL_SECONDS  # what the test fails on: a machine busy with other work may miss the goal


def bootstrap_rows(labelled: dict[dt.date, int]) -> int:
    """The labelled rows that ask for the first model, sized so that the sensor fires in the middle of the
    backfill and the training set then has enough whole days, whatever order the days' runs finish in.

    The sensor decides the days in order and counts the labels arrived by the day it decides, which the
    retrain then trains on; one row more than the largest `hold-out + validation + 2` days of labels means
    the first model is asked for once at least `hold-out + validation + 3` days are labelled: enough whole
    days for the sweep and the gate, and still before the last day."""
    arrived = sorted((labelled[d] for d in DAYS[:-1]), reverse=True)  # the last day's labels arrive after it
    return sum(arrived[: HOLDOUT_DAYS + VALIDATION_DAYS + 2]) + 1


def firing_report(live: Live, run_id: str) -> tuple[str, str | None, float]:
    """(asset, partition, timestamp) of the report that completed the evidence for the retrain: the newest
    drift or performance report, of the day the firing tick decided (its cursor), written before the tick."""
    tick = next(t for t in live.sensor_ticks(SENSOR) if run_id in t["runIds"])
    day = json.loads(tick["cursor"])["through"]
    newest: tuple[str, str | None, float] | None = None
    for asset in ("drift_report", "performance_report"):
        mats = materialization_times(live.instance, akey(asset))
        hit = mats[(mats["partition"] == day) & (mats["timestamp"] <= tick["timestamp"])]
        if len(hit) and (newest is None or hit["timestamp"].max() > newest[2]):
            newest = (asset, day, float(hit["timestamp"].max()))
    assert newest is not None, f"no report of the day the firing tick decided: {tick}"
    return newest


def test_the_daemon_retrains_and_the_api_serves_the_new_champion(tmp_path: Path) -> None:
    t_start = time.monotonic()
    labelled = drop_days(tmp_path / "drops", DAYS)
    spec_path = folder_spec(
        tmp_path,
        tmp_path / "drops",
        policy={"decision": "rules", "bootstrap_min_rows": bootstrap_rows(labelled)},
        training={"holdout_days": HOLDOUT_DAYS, "validation_days": VALIDATION_DAYS},
    )
    spec = load_spec(spec_path)
    data_dir = tmp_path / "data"
    with dagster_dev(data_dir, spec_path, cwd=tmp_path) as live:
        settings = Settings.from_env(live.env)
        registry = ModelRegistryResource(
            tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
        )
        boot = live.submit_job(job("bootstrap_job"))
        with api_server(live.env, tmp_path) as api:  # starts while the baseline is made: it waits for a model
            live.wait_run(boot, timeout=180)
            baseline = registry.champion_info(spec.model_name)
            assert baseline is not None and baseline.is_baseline
            row = example_row(spec)
            backfill = live.launch_backfill(job("daily_job"), [d.isoformat() for d in DAYS], submit_now=True)
            api.wait_ready(timeout=120)
            served: list[str] = []  # the versions the API answered with, in order

            def serves_new() -> tuple[dict[str, Any], float] | None:
                got = api.predict(row)
                if live.failed_runs():
                    raise AssertionError(f"a run failed\n{live.dump()}")
                if got is None:
                    return None
                if not served or served[-1] != got["model_version"]:
                    served.append(got["model_version"])
                return (got, time.time()) if got["model_version"] != baseline.version else None

            answer, served_at = poll(
                serves_new, 420, "the API to serve a new champion", every=0.25, dump=lambda: api.dump() + live.dump()
            )

        def all_done() -> bool:
            mine = live.runs(tags={"dagster/backfill": backfill})
            return len(mine) == len(DAYS) and all(r.status in DONE for r in live.runs())

        poll(all_done, 240, "the backfill's runs and every other run to finish", every=1.0, dump=live.dump)
        runs = live.runs()
        failed = live.failed_runs()
        assert not failed, live.dump()

        daily = [r for r in runs if r.job_name == job("daily_job")]
        # The backfill ran each day once; the sensor may also have re-scored a day it had run ahead of a promotion
        # (its own run of that partition, tagged with why), depending on how far ahead the backfill was.
        rescored = [r for r in daily if TAG_REFRESH in r.tags]
        backfilled = [r for r in daily if TAG_REFRESH not in r.tags]
        assert sorted(r.tags["dagster/partition"] for r in backfilled) == [d.isoformat() for d in DAYS]
        assert all(r.tags.get("dagster/backfill") == backfill for r in backfilled)
        assert all(r.tags["dagster/partition"] in {d.isoformat() for d in DAYS} for r in rescored)
        assert all(r.tags.get("dagster/sensor_name") == SENSOR for r in rescored)
        retrains = [r for r in runs if r.job_name == job("retrain_job")]
        assert retrains, "the daemon's sensor launched no retrain"
        first_retrain = min(retrains, key=lambda r: live.instance.get_run_record_by_id(r.run_id).create_timestamp)
        assert first_retrain.tags["dagster/sensor_name"] == SENSOR
        assert first_retrain.tags[TAG_TRIGGER] == "bootstrap"

        champion = registry.champion_info(spec.model_name)
        assert champion is not None and not champion.is_baseline
        assert answer["model_version"] == champion.version and served[-1] == champion.version
        moves = registry.history(spec.model_name)
        assert [m["kind"] for m in moves][:2] == ["baseline", "promote"], moves
        assert moves[0]["version"] == baseline.version and moves[-1]["version"] == champion.version

        asset, partition, fired_at = firing_report(live, first_retrain.run_id)
        latency = served_at - fired_at
        tick = next(t for t in live.sensor_ticks(SENSOR) if first_retrain.run_id in t["runIds"])
        rec = live.instance.get_run_record_by_id(first_retrain.run_id)
        assert rec is not None and rec.start_time is not None and rec.end_time is not None
        steps = {
            "sensor tick": tick["timestamp"],
            "run queued": _aware(rec.create_timestamp).timestamp(),
            "run started": rec.start_time,
            "champion moved": rec.end_time,
            "API served": served_at,
        }
        wall = time.monotonic() - t_start
        print(
            f"\nlive: {len(daily)} daily runs, {len(retrains)} retrain(s) by the sensor, 0 failed; "
            f"{asset} {partition} fired the sensor; champion v{baseline.version} -> v{champion.version} "
            f"(hold-out {spec.metric} {champion.holdout_metric}); the API answered with versions {served}\n"
            f"from the report to the new version serving: {latency:.1f}s (goal {GOAL_SECONDS:.0f}s on 2 cores): "
            + ", ".join(f"{k} +{v - fired_at:.0f}s" for k, v in steps.items())
            + f"; test wall {wall:.0f}s"
        )
        # The goal is a measurement on an otherwise idle machine; what the test guards is that the retrain does not
        # sit behind the whole backfill (the queue gives it priority, the pool lets it in between two days' steps).
        assert 0 < latency < STALL_SECONDS, f"from report to serving took {latency:.1f}s"
