"""The retrain sensor: turns drift and performance reports into one retrain decision, with its reason.

State that must survive a restart (past retrains, runs in flight, labelled rows) is read from the Dagster
instance itself, not kept in memory; the cursor only records which report materializations were already
counted, so each report counts once and a restarted daemon resumes exactly where it stopped.
"""

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import dagster as dg

from mlops_assets.config import DatasetSpec
from mlops_assets.defs import names
from mlops_assets.ml.cost_policy import CostPolicy, DayGap, PastRetrain, decay_gap, decide_cost
from mlops_assets.ml.policy import Decision, PolicyState, RetrainPolicy, Signal, decide

RETRAIN_JOB = "retrain_job"
SENSOR_NAME = "retrain_sensor"
TAG_AS_OF = "mlops/as_of"
TAG_TRIGGER = "mlops/trigger"
TAG_REASON = "mlops/reason"
TAG_LABELLED = "mlops/labelled_rows"
TAG_DATASET = "mlops/dataset"
TAG_KIND = "mlops/retrain_kind"
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
REPORTS = {"drift": "drift_report", "decay": "performance_report"}


def _aware(ts: dt.datetime) -> dt.datetime:
    """Run records carry naive UTC timestamps in SQLite and aware ones in PostgreSQL."""
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)


def policy_from_spec(spec: DatasetSpec) -> RetrainPolicy:
    rules = spec.policy.model_dump(exclude={"decision", "cost", "bootstrap_min_days"})
    return RetrainPolicy(**rules)


def cost_policy_from_spec(spec: DatasetSpec) -> CostPolicy:
    c = spec.policy.cost
    # hold-out + validation + training days; a single training day has no past labels for its label-rate and
    # window features (they need the label delay behind them), so the first training window is one longer
    t = spec.training
    min_days = spec.policy.bootstrap_min_days or (t.holdout_days + t.validation_days + spec.target.label_delay_days + 1)
    return CostPolicy(
        staleness_price=c.staleness_price,
        cpu_second_price=c.cpu_second_price,
        variant=c.variant,
        horizon_days=c.horizon_days,
        sweep_every_days=c.sweep_every_days,
        bootstrap_min_days=min_days,
    )


def _value(record: Any, key: str, default: Any = None) -> Any:
    md = record.asset_materialization.metadata if record.asset_materialization else {}
    v = md.get(key)
    return getattr(v, "value", default) if v is not None else default


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation saw and decided; the demo prints these, the UI shows them as skip reasons/tags."""

    decision: Decision
    today: dt.date | None
    run_request: dg.RunRequest | None
    cursor: str


def training_run_config(dataset: str, as_of: dt.date, trigger: str, kind: str = "sweep") -> dict[str, Any]:
    """The retrain job's configuration: train as of the data's clock, saying what asked for it and which kind
    of retrain (a sweep, or a refit of the champion's recipe)."""
    op = names.job_name(dataset, "training_dataset")  # the asset's op, named under its dataset's prefix
    return {"ops": {op: {"config": {"as_of": as_of.isoformat(), "trigger": trigger, "kind": kind}}}}


def retrain_tags(
    spec: DatasetSpec, as_of: dt.date, trigger: str, reason: str, labelled: int, kind: str = "sweep"
) -> dict[str, str]:
    return {
        TAG_KIND: kind,
        # The queue is first in, first out; a retrain the monitors asked for must not wait behind a backfill's
        # daily runs while a drifted model keeps serving.
        "dagster/priority": "10",
        TAG_DATASET: spec.name,
        TAG_AS_OF: as_of.isoformat(),
        TAG_TRIGGER: trigger,
        TAG_REASON: reason[:250],
        TAG_LABELLED: str(labelled),
    }


def labels_so_far(instance: dg.DagsterInstance, dataset: str) -> tuple[dt.date | None, int]:
    """(the newest day whose labels have arrived, every labelled row so far), from the labels asset's newest
    materialization: the data's clock, which both the sensor and the retrain schedule go by."""
    latest = instance.get_latest_materialization_event(names.asset_key(dataset, "labels"))
    mat = latest.asset_materialization if latest is not None else None
    if mat is None:
        return None, 0
    total = int(getattr(mat.metadata.get("total_labelled_rows"), "value", 0) or 0)
    return (dt.date.fromisoformat(mat.partition) if mat.partition else None), total


def policy_state(
    instance: dg.DagsterInstance,
    spec: DatasetSpec,
    today: dt.date,
    champion_is_baseline: bool,
    now: dt.datetime | None = None,
) -> PolicyState:
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=names.job_name(spec.name, RETRAIN_JOB), tags={TAG_DATASET: spec.name})
    )
    runs = [r.dagster_run for r in records]
    days = sorted(dt.date.fromisoformat(r.tags[TAG_AS_OF]) for r in runs if TAG_AS_OF in r.tags)
    # A killed training process leaves its run STARTED for ever; one silent for stale_run_hours is dead and must
    # not block every later retrain.
    now = now or dt.datetime.now(dt.UTC)
    horizon = now - dt.timedelta(hours=spec.policy.stale_run_hours)
    in_flight = any(rec.dagster_run.status in IN_FLIGHT and _aware(rec.update_timestamp) >= horizon for rec in records)
    last_rows = max((int(r.tags.get(TAG_LABELLED, 0)) for r in runs), default=0)
    _, total = labels_so_far(instance, spec.name)
    return PolicyState(
        today=today,
        last_retrain_day=days[-1] if days else None,
        retrain_days=tuple(days),
        labelled_rows_since_last_retrain=max(total - last_rows, 0),
        total_labelled_rows=total,
        champion_is_baseline=champion_is_baseline,
        run_in_flight=in_flight,
    )


def evaluate(instance: dg.DagsterInstance, spec: DatasetSpec, cursor: str | None) -> Evaluation:
    """One evaluation of the policy over the reports materialized since `cursor`."""
    seen = {"drift": 0, "decay": 0, **(json.loads(cursor) if cursor else {})}
    signals: list[Signal] = []
    latest_drift: Any = None
    new_seen = dict(seen)
    for kind, asset in REPORTS.items():
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=names.asset_key(spec.name, asset), after_storage_id=seen[kind] or None),
            limit=1000,
            ascending=True,
        )
        for rec in result.records:
            new_seen[kind] = max(new_seen[kind], rec.storage_id)
            day = dt.date.fromisoformat(rec.partition_key) if rec.partition_key else None
            if day is None:
                continue
            if kind == "drift":
                latest_drift = rec
                if not _value(rec, "tested", False):
                    continue
                signals.append(
                    Signal(
                        "drift",
                        day,
                        float(_value(rec, "drift_share", 0.0)),
                        bool(_value(rec, "drift_detected", False)),
                    )
                )
            else:
                if _value(rec, "window_value") is None:
                    continue
                signals.append(
                    Signal(
                        "decay",
                        day,
                        float(_value(rec, "window_value", 0.0)),
                        bool(_value(rec, "decay_detected", False)),
                    )
                )
    new_cursor = json.dumps(new_seen, sort_keys=True)
    if new_seen == seen:
        return Evaluation(Decision(False, "none", "skip: no new drift or performance report"), None, None, new_cursor)
    days = [s.day for s in signals]
    if latest_drift is not None and latest_drift.partition_key:
        days.append(dt.date.fromisoformat(latest_drift.partition_key))
    today = max(days) if days else None
    if today is None:
        return Evaluation(Decision(False, "none", "skip: new reports carry no partition"), None, None, new_cursor)
    baseline = bool(_value(latest_drift, "champion_is_baseline", True)) if latest_drift is not None else True
    state = policy_state(instance, spec, today, baseline)
    if spec.policy.decision == "cost":
        history = past_retrains(instance, spec)
        decision = decide_cost(
            signals,
            state,
            policy_from_spec(spec),
            cost_policy_from_spec(spec),
            history,
            staleness_evidence(instance, spec, state.last_retrain_day, today),
            labelled_days(instance, spec),
        )
    else:
        decision = decide(signals, state, policy_from_spec(spec))
    request = None
    if decision.retrain:
        request = dg.RunRequest(
            run_key=f"retrain:{spec.name}:{today.isoformat()}:{decision.trigger}",
            run_config=training_run_config(spec.name, today, decision.trigger, decision.kind or "sweep"),
            tags=retrain_tags(
                spec, today, decision.trigger, decision.reason, state.total_labelled_rows, decision.kind or "sweep"
            ),
        )
    return Evaluation(decision, today, request, new_cursor)


def past_retrains(instance: dg.DagsterInstance, spec: DatasetSpec, limit: int = 50) -> list[PastRetrain]:
    """The finished retrains, oldest first, from the evaluation reports (kind, CPU, the gate's gain) and the
    failed runs (a retrain stopped by its CPU budget): what the cost-aware policy learns its prices from."""
    recs = instance.fetch_materializations(
        names.asset_key(spec.name, "evaluation_report"), limit=limit, ascending=False
    ).records
    out = []
    for rec in recs:
        as_of = _value(rec, "as_of")
        if not as_of:
            continue
        delta = _value(rec, "delta")
        out.append(
            PastRetrain(
                day=dt.date.fromisoformat(str(as_of)),
                kind=str(_value(rec, "retrain_kind", "sweep")),
                cpu_seconds=float(_value(rec, "cpu_seconds", 0.0) or 0.0),
                gain=None
                if delta is None or delta != delta or _value(rec, "against_baseline", False)
                else float(delta),
                promoted=bool(_value(rec, "promote", False)),
            )
        )
    failed = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=names.job_name(spec.name, RETRAIN_JOB),
            tags={TAG_DATASET: spec.name},
            statuses=[dg.DagsterRunStatus.FAILURE],
        ),
        limit=limit,
    )
    for r in failed:
        tags = r.dagster_run.tags
        if TAG_AS_OF in tags:
            out.append(
                PastRetrain(dt.date.fromisoformat(tags[TAG_AS_OF]), tags.get(TAG_KIND, "sweep"), 0.0, None, False, True)
            )
    return sorted(out, key=lambda r: r.day)


def staleness_evidence(
    instance: dg.DagsterInstance, spec: DatasetSpec, since: dt.date | None, today: dt.date, max_days: int = 400
) -> list[DayGap]:
    """Every day's decay gap and drift flag from the last retrain's day on (the cumulative variant sums over the
    days after it; the day itself is the level a rejected challenger could not beat)."""
    start = max(since if since else today, today - dt.timedelta(days=max_days - 1))
    keys = [(start + dt.timedelta(days=i)).isoformat() for i in range((today - start).days + 1)]
    perf: dict[str, Any] = {}
    drift: dict[str, Any] = {}
    for asset, into in (("performance_report", perf), ("drift_report", drift)):
        recs = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=names.asset_key(spec.name, asset), asset_partitions=keys),
            limit=len(keys) * 3,
            ascending=True,
        ).records
        for rec in recs:
            if rec.partition_key:
                into[rec.partition_key] = rec  # ascending: the newest materialization of a day wins
    out = []
    for k in keys:
        p, d = perf.get(k), drift.get(k)
        gap = None
        if p is not None:
            got = [_value(p, k) for k in ("reference_value", "window_value", "ci_low", "ci_high")]
            ref, window, low, high = (None if v is None else float(v) for v in got)
            gap = decay_gap(spec.metric, ref, window, low, high)
        drifted = (
            d is not None
            and bool(_value(d, "tested", False))
            and float(_value(d, "drift_share", 0.0)) >= spec.policy.drift_share_threshold
        )
        if p is not None or d is not None:
            out.append(DayGap(dt.date.fromisoformat(k), gap, drifted))
    return out


def labelled_days(instance: dg.DagsterInstance, spec: DatasetSpec) -> int:
    """Event days with labels so far: the label partitions published, less the label delay."""
    parts = instance.get_materialized_partitions(names.asset_key(spec.name, "labels"))
    return max(0, len(parts) - spec.target.label_delay_days)


def build_retrain_sensor(spec: DatasetSpec) -> dg.SensorDefinition:
    """The dataset's own sensor: it reads only its dataset's reports, labels and retrain runs."""

    @dg.sensor(
        name=names.job_name(spec.name, SENSOR_NAME),
        job_name=names.job_name(spec.name, RETRAIN_JOB),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"{spec.name}: requests a retrain when drift or decay crosses the spec's thresholds and the "
        "retrain policy (cool-down, new labelled rows, ceilings per day and week, nothing in flight) allows it.",
    )
    def retrain_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        ev = evaluate(context.instance, spec, context.cursor)
        context.log.info(f"retrain decision ({ev.today}): {ev.decision.reason}")
        if ev.run_request is not None:
            return dg.SensorResult(run_requests=[ev.run_request], cursor=ev.cursor)
        return dg.SensorResult(skip_reason=dg.SkipReason(ev.decision.reason), cursor=ev.cursor)

    return retrain_sensor
