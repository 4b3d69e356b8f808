"""The retrain sensor in cost mode (the shipped flights spec with `decision: cost`) against a real instance: the
first model as soon as a hold-out exists, then refits once measured decay has cost what a refit costs, each
with its reason, kind and cost in the request's tags and config."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import dagster as dg
import pytest
from dagster._core.utils import make_new_run_id

from mlops_assets.config import DEFAULT_SPEC, load_spec
from mlops_assets.defs import names
from mlops_assets.defs.monitoring.sensors import RETRAIN_JOB, TAG_KIND, build_retrain_sensor

_SHIPPED = load_spec(DEFAULT_SPEC)
# the cost decides; the guards stay as safety (a day of flights of new labels, three retrains a week at most)
COST = {"decision": "cost", "cooldown_days": 0, "max_per_week": 3, "min_new_labelled_rows": 800}
SPEC = _SHIPPED.model_copy(update={"policy": _SHIPPED.policy.model_copy(update=COST)})
D0 = dt.date(2013, 1, 1)


def key(asset: str) -> dg.AssetKey:
    return names.asset_key(SPEC.name, asset)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def day_reports(
    instance: dg.DagsterInstance, day: dt.date, *, baseline: bool, window: float | None = None, labelled: int = 0
) -> None:
    pk = day.isoformat()
    instance.report_runless_asset_event(
        dg.AssetMaterialization(key("labels"), partition=pk, metadata={"total_labelled_rows": labelled})
    )
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            key("drift_report"),
            partition=pk,
            metadata={"drift_share": 0.1, "tested": True, "champion_is_baseline": baseline},
        )
    )
    if window is not None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                key("performance_report"),
                partition=pk,
                metadata={
                    "window_value": window,
                    "ci_low": window - 0.01,
                    "ci_high": window + 0.01,
                    "reference_value": 0.72,
                    "decay_detected": window < 0.70,
                },
            )
        )


def tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    result = build_retrain_sensor(SPEC)(dg.build_sensor_context(instance=instance, cursor=cursor))
    assert isinstance(result, dg.SensorResult)
    return result


def test_first_model_is_tried_once_a_hold_out_exists(instance: dg.DagsterInstance) -> None:
    need = SPEC.training.holdout_days + SPEC.training.validation_days + SPEC.target.label_delay_days + 1
    for i in range(need):  # label partitions 0..need-1: need-1 labelled days (labels arrive a day late)
        day_reports(instance, D0 + dt.timedelta(days=i), baseline=True, labelled=900 * i)
    result = tick(instance, None)
    cursor = result.cursor
    assert not result.run_requests
    assert result.skip_reason and f"{need - 1} labelled days of the {need}" in result.skip_reason.skip_message
    day_reports(instance, D0 + dt.timedelta(days=need), baseline=True, labelled=900 * need)
    fired = tick(instance, cursor)
    assert len(fired.run_requests) == 1
    req = fired.run_requests[0]
    assert req.tags[TAG_KIND] == "sweep" and req.tags["mlops/trigger"] == "bootstrap"
    assert req.run_config["ops"][names.job_name(SPEC.name, "training_dataset")]["config"]["kind"] == "sweep"


def test_decay_fires_a_refit_once_it_has_cost_what_a_refit_costs(instance: dg.DagsterInstance) -> None:
    last = D0 + dt.timedelta(days=40)
    # a sweep that made the champion, as the evaluation report and the run record it
    instance.add_run(
        dg.DagsterRun(
            job_name=names.job_name(SPEC.name, RETRAIN_JOB),
            run_id=make_new_run_id(),
            tags={"mlops/dataset": SPEC.name, "mlops/as_of": last.isoformat(), "mlops/labelled_rows": "30000"},
            status=dg.DagsterRunStatus.SUCCESS,
        )
    )
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            key("evaluation_report"),
            metadata={
                "as_of": last.isoformat(),
                "retrain_kind": "sweep",
                "cpu_seconds": 10.0,
                "delta": 0.05,
                "promote": True,
            },
        )
    )
    cursor, fired_on, reasons = None, None, []
    for i in range(1, 15):
        day = last + dt.timedelta(days=i)
        # sure decay of 0.72 - (0.70 + 0.01) = 0.01 a day: 1.0 of cost a day at price 100; a refit ~1.5 CPU-s
        day_reports(instance, day, baseline=False, window=0.70, labelled=30000 + 900 * i)
        result = tick(instance, cursor)
        cursor = result.cursor
        if result.run_requests:
            fired_on = i
            req = result.run_requests[0]
            break
        reasons.append(result.skip_reason.skip_message if result.skip_reason else "")
    assert fired_on == 2, reasons
    assert reasons[0].startswith("skip: staleness cost below") and "for a refit" in reasons[0]
    assert req.tags[TAG_KIND] == "refit" and req.tags["mlops/trigger"] == "cost"
    assert "cost (cumulative)" in req.tags["mlops/reason"]
