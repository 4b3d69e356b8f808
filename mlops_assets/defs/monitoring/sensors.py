"""The retrain sensor: turns each day's drift and performance reports into one retrain decision, with its reason.

State that must survive a restart (past retrains, runs in flight, labelled rows) is read from the Dagster
instance itself, not kept in memory; the cursor only records the last day decided, so each day is decided
once, in day order, and a restarted daemon resumes exactly where it stopped.
"""

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from mlops_assets.config import DatasetSpec
from mlops_assets.defs import names
from mlops_assets.ml.cost_policy import CostPolicy, DayGap, PastRetrain, decay_gap, decide_cost
from mlops_assets.ml.policy import Decision, PolicyState, RetrainPolicy, Signal, decide

RETRAIN_JOB = "retrain_job"
DAILY_JOB = "daily_job"
PARTITION_TAG = "dagster/partition"
WILL_RETRY_TAG = "dagster/will_retry"  # set by Dagster on a failed run that run retries will launch again
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
    refresh: tuple[dg.RunRequest, ...] = ()

    @property
    def run_requests(self) -> list[dg.RunRequest]:
        return [self.run_request] if self.run_request is not None else list(self.refresh)


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
    labelled: int | None = None,
) -> PolicyState:
    """The policy's view on `today`: retrains of earlier days only (a backfill may have trained on later ones
    already), and `labelled` rows as of that day when the caller knows them."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=names.job_name(spec.name, RETRAIN_JOB), tags={TAG_DATASET: spec.name})
    )
    runs = [r.dagster_run for r in records]
    runs = [r for r in runs if TAG_AS_OF in r.tags and dt.date.fromisoformat(r.tags[TAG_AS_OF]) <= today]
    days = sorted(dt.date.fromisoformat(r.tags[TAG_AS_OF]) for r in runs)
    # A killed training process leaves its run STARTED for ever; one silent for stale_run_hours is dead and must
    # not block every later retrain.
    now = now or dt.datetime.now(dt.UTC)
    horizon = now - dt.timedelta(hours=spec.policy.stale_run_hours)
    in_flight = any(rec.dagster_run.status in IN_FLIGHT and _aware(rec.update_timestamp) >= horizon for rec in records)
    last_rows = max((int(r.tags.get(TAG_LABELLED, 0)) for r in runs), default=0)
    total = labelled if labelled is not None else labels_so_far(instance, spec.name)[1]
    return PolicyState(
        today=today,
        last_retrain_day=days[-1] if days else None,
        retrain_days=tuple(days),
        labelled_rows_since_last_retrain=max(total - last_rows, 0),
        total_labelled_rows=total,
        champion_is_baseline=champion_is_baseline,
        run_in_flight=in_flight,
    )


REFRESHED = ("batch_predictions", "drift_report", "performance_report")
TAG_REFRESH = "mlops/refresh"
CHUNK_DAYS = 31  # days of reports fetched per query: a backfill that ran far ahead is decided in a few queries
MAX_REFRESH = 4  # stale days re-scored at once after a champion move; the queue runs them beside each other


def _version(v: Any) -> str:
    return "none" if v in (None, "", "none") else str(v)


def _day(key: str | None) -> dt.date | None:
    return dt.date.fromisoformat(key) if key else None


def _newest_by_day(instance: dg.DagsterInstance, dataset: str, asset: str, days: list[dt.date]) -> dict[dt.date, Any]:
    """The newest materialization of each day (a refreshed day has several), in one query."""
    if not days:
        return {}
    recs = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=names.asset_key(dataset, asset), asset_partitions=[d.isoformat() for d in days]
        ),
        limit=len(days) * 8,
        ascending=False,
    ).records
    out: dict[dt.date, Any] = {}
    for rec in recs:
        day = _day(rec.partition_key)
        if day is not None and day not in out:
            out[day] = rec
    return out


def current_champion(instance: dg.DagsterInstance, dataset: str) -> str | None:
    """The version the alias names, from the newest `champion` materialization (every move, by the gate, an
    approval or a rollback, materializes it); None before the first."""
    latest = instance.get_latest_materialization_event(names.asset_key(dataset, "champion"))
    mat = latest.asset_materialization if latest is not None else None
    if mat is None:
        return None
    return _version(getattr(mat.metadata.get("champion_version"), "value", None))


def dataset_run_in_flight(instance: dg.DagsterInstance, spec: DatasetSpec, now: dt.datetime | None = None) -> Any:
    """A retrain, approval or rollback of this dataset still queued or running (one silent for
    `stale_run_hours` is a dead process, not a run), or None."""
    horizon = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(hours=spec.policy.stale_run_hours)
    for rec in instance.get_run_records(
        filters=dg.RunsFilter(tags={TAG_DATASET: spec.name}, statuses=IN_FLIGHT), limit=20
    ):
        if _aware(rec.update_timestamp) >= horizon:
            return rec.dagster_run
    return None


def daily_runs_pending(instance: dg.DagsterInstance, spec: DatasetSpec) -> set[dt.date]:
    """Days whose daily run is queued or running, or failed and about to be retried: their reports are coming."""
    job = names.job_name(spec.name, DAILY_JOB)
    out: set[dt.date] = set()
    for rec in instance.get_run_records(filters=dg.RunsFilter(job_name=job, statuses=IN_FLIGHT)):
        day = _day(rec.dagster_run.tags.get(PARTITION_TAG))
        if day is not None:
            out.add(day)
    # a run failed by run monitoring is retried by the daemon a moment later (`run_retries`)
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3)
    retrying = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.FAILURE], tags={WILL_RETRY_TAG: "true"}),
        limit=50,
    )
    for rec in retrying:
        if _aware(rec.update_timestamp) < recent:
            continue
        day = _day(rec.dagster_run.tags.get(PARTITION_TAG))
        if day is not None:
            out.add(day)
    return out


def _load_cursor(instance: dg.DagsterInstance, spec: DatasetSpec, cursor: str | None) -> dt.date | None:
    """The last day decided. A cursor of the earlier form (storage ids of the reports counted) maps to the day
    of the newest drift report it had counted."""
    if not cursor:
        return None
    data = json.loads(cursor)
    if "through" in data:
        return _day(data["through"])
    seen = int(data.get("drift", 0) or 0)
    if not seen:
        return None
    recs = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=names.asset_key(spec.name, "drift_report"), before_storage_id=seen + 1),
        limit=1,
        ascending=False,
    ).records
    return _day(recs[0].partition_key) if recs else None


def _first_day(
    instance: dg.DagsterInstance, spec: DatasetSpec, known: set[dt.date], pending: set[dt.date]
) -> dt.date | None:
    """Where a sensor with no cursor starts: after the newest retrain's day (what came before it was decided
    already), else at the first day that has reports or a daily run on its way."""
    runs = instance.get_run_records(
        filters=dg.RunsFilter(job_name=names.job_name(spec.name, RETRAIN_JOB), tags={TAG_DATASET: spec.name}),
        limit=50,
    )
    retrained = [d for r in runs if (d := _day(r.dagster_run.tags.get(TAG_AS_OF))) is not None]
    if retrained:
        return max(retrained) + dt.timedelta(days=1)
    days = known | pending
    return min(days) if days else None


def _stale(spec: DatasetSpec, day: dt.date, reports: dict[str, dict[dt.date, Any]], champion: str | None) -> str:
    """Why a day's champion-dependent assets do not show what the sequential loop would have computed (empty
    when they do): scored by another champion than the one the alias names now, or a performance report
    older than a prediction log of its window that was re-scored since."""
    if champion is None:
        return ""
    for asset, key in (("drift_report", "champion_version"), ("batch_predictions", "model_version")):
        rec = reports[asset].get(day)
        got = _version(_value(rec, key)) if rec is not None else "none"
        if rec is not None and got != "none" and got != champion:
            return f"{asset} of {day} was computed with v{got}, the champion is v{champion}"
    perf = reports["performance_report"].get(day)
    if perf is None:
        return ""
    got = _version(_value(perf, "champion_version"))
    if got != "none" and got != champion:
        return f"performance_report of {day} judged v{got}, the champion is v{champion}"
    lookback = spec.monitoring.decay_window_days + spec.target.label_delay_days
    for d in (day - dt.timedelta(days=i) for i in range(lookback + 1)):
        pred = reports["batch_predictions"].get(d)
        if pred is not None and pred.storage_id > perf.storage_id:
            return f"performance_report of {day} predates the re-scored predictions of {d}"
    return ""


def _refresh_request(spec: DatasetSpec, day: dt.date, champion: str | None, why: str, token: int) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"refresh:{spec.name}:{day.isoformat()}:v{champion}:{token}",
        job_name=names.job_name(spec.name, DAILY_JOB),
        partition_key=day.isoformat(),
        asset_selection=[names.asset_key(spec.name, a) for a in REFRESHED],
        tags={"dagster/priority": "5", TAG_REFRESH: why[:250]},
    )


def evaluate(
    instance: dg.DagsterInstance,
    spec: DatasetSpec,
    cursor: str | None,
    on_day: Callable[[Evaluation], None] | None = None,
) -> Evaluation:
    """Decide the days whose reports are in, one at a time in day order, each against the champion the
    sequential loop would have had on it.

    A backfill runs days side by side and out of order, while retrains move the champion. Decisions are kept
    identical to a day-by-day replay by three rules: a day is decided only after every earlier day (a day
    with no reports and no run on its way is passed over); never while a retrain, approval or rollback of the
    dataset is in flight (its outcome is the champion the next day is judged with); and a day whose
    predictions and reports were computed under another champion is re-scored first (`refresh` runs of its
    three champion-dependent assets). The cursor is the last day decided."""
    through = _load_cursor(instance, spec, cursor)
    same = json.dumps({"through": through.isoformat() if through else None})
    drift_key, perf_key = (names.asset_key(spec.name, a) for a in REPORTS.values())
    known = {
        d for k in (drift_key, perf_key) for p in instance.get_materialized_partitions(k) if (d := _day(p)) is not None
    }
    pending = daily_runs_pending(instance, spec)
    day = through + dt.timedelta(days=1) if through else _first_day(instance, spec, known, pending)
    newest = max(known, default=None)
    if day is None or newest is None or day > newest:
        return Evaluation(Decision(False, "none", "skip: no new drift or performance report"), None, None, same)
    busy = dataset_run_in_flight(instance, spec)
    champion = current_champion(instance, spec.name)
    lookback = spec.monitoring.decay_window_days + spec.target.label_delay_days
    last: Evaluation | None = None
    while day <= newest:
        chunk = [day + dt.timedelta(days=i) for i in range(min(CHUNK_DAYS, (newest - day).days + 1))]
        reports = {a: _newest_by_day(instance, spec.name, a, chunk) for a in REPORTS.values()}
        early = [chunk[0] - dt.timedelta(days=i) for i in range(lookback, 0, -1)]
        reports["batch_predictions"] = _newest_by_day(instance, spec.name, "batch_predictions", early + chunk)
        for d in chunk:
            at = json.dumps({"through": (d - dt.timedelta(days=1)).isoformat()})
            drift, perf = reports["drift_report"].get(d), reports["performance_report"].get(d)
            if (drift is None or perf is None) and d in pending:
                why = f"waiting: the daily run of {d} has not written both reports yet"
                return Evaluation(Decision(False, "none", why), None, None, at)
            if drift is None and perf is None:
                if not any(k > d for k in known):
                    return Evaluation(Decision(False, "none", f"waiting: no reports of {d} yet"), None, None, at)
                last = Evaluation(
                    Decision(False, "none", f"skip: day {d} has no reports (its run failed or never ran)"),
                    d,
                    None,
                    json.dumps({"through": d.isoformat()}),
                )
                continue
            if busy is not None:
                why = (
                    f"waiting: {busy.job_name} ({busy.run_id[:8]}) of {spec.name} is in flight; day {d} is "
                    "decided against the champion it leaves"
                )
                return Evaluation(Decision(False, "none", why), None, None, at)
            stale = _stale(spec, d, reports, champion)
            if stale:
                requests: list[dg.RunRequest] = []
                for e in (x for x in chunk if x >= d):
                    why_e = stale if e == d else _stale(spec, e, reports, champion)
                    if not why_e or e in pending or len(requests) >= MAX_REFRESH:
                        break
                    token = max(r[e].storage_id for r in reports.values() if e in r)
                    requests.append(_refresh_request(spec, e, champion, why_e, token))
                why = f"waiting: re-scoring day {d} first ({stale})"
                return Evaluation(Decision(False, "none", why), None, None, at, tuple(requests))
            last = decide_day(instance, spec, d, drift, perf)
            if on_day is not None:
                on_day(last)
            if last.run_request is not None:
                return last
        day = chunk[-1] + dt.timedelta(days=1)
    assert last is not None
    return last


def decide_day(
    instance: dg.DagsterInstance, spec: DatasetSpec, day: dt.date, drift: Any | None, perf: Any | None
) -> Evaluation:
    """The policy on one day's reports, with the state as it was on that day."""
    signals: list[Signal] = []
    if drift is not None and _value(drift, "tested", False):
        signals.append(
            Signal("drift", day, float(_value(drift, "drift_share", 0.0)), bool(_value(drift, "drift_detected", False)))
        )
    if perf is not None and _value(perf, "window_value") is not None:
        signals.append(
            Signal("decay", day, float(_value(perf, "window_value", 0.0)), bool(_value(perf, "decay_detected", False)))
        )
    baseline = bool(_value(drift if drift is not None else perf, "champion_is_baseline", True))
    state = policy_state(instance, spec, day, baseline, labelled=labelled_as_of(instance, spec.name, day))
    if spec.policy.decision == "cost":
        decision = decide_cost(
            signals,
            state,
            policy_from_spec(spec),
            cost_policy_from_spec(spec),
            [r for r in past_retrains(instance, spec) if r.day <= day],
            staleness_evidence(instance, spec, state.last_retrain_day, day),
            labelled_days(instance, spec, day),
        )
    else:
        decision = decide(signals, state, policy_from_spec(spec))
    request = None
    if decision.retrain:
        kind = decision.kind or "sweep"
        request = dg.RunRequest(
            run_key=f"retrain:{spec.name}:{day.isoformat()}:{decision.trigger}",
            job_name=names.job_name(spec.name, RETRAIN_JOB),
            run_config=training_run_config(spec.name, day, decision.trigger, kind),
            tags=retrain_tags(spec, day, decision.trigger, decision.reason, state.total_labelled_rows, kind),
        )
    return Evaluation(decision, day, request, json.dumps({"through": day.isoformat()}))


def _float_or_none(value: Any) -> float | None:
    return float(value) if value is not None and value == value else None


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
                gain=None if _value(rec, "against_baseline", False) else _float_or_none(delta),
                promoted=bool(_value(rec, "promote", False)),
                freshness_rate=_float_or_none(_value(rec, "freshness_gain_per_day")),
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


def labelled_days(instance: dg.DagsterInstance, spec: DatasetSpec, today: dt.date | None = None) -> int:
    """Event days with labels by `today`: the label partitions published by then, less the label delay."""
    parts = instance.get_materialized_partitions(names.asset_key(spec.name, "labels"))
    if today is not None:
        parts = {p for p in parts if dt.date.fromisoformat(p) <= today}
    return max(0, len(parts) - spec.target.label_delay_days)


def labelled_as_of(instance: dg.DagsterInstance, dataset: str, day: dt.date) -> int | None:
    """Labelled rows in the store as of `day` (its labels partition counts every arrival up to it)."""
    recs = _newest_by_day(instance, dataset, "labels", [day])
    rec = recs.get(day)
    value = _value(rec, "total_labelled_rows") if rec is not None else None
    return int(value) if value is not None else None


def build_retrain_sensor(spec: DatasetSpec, jobs: Sequence[Any] = ()) -> dg.SensorDefinition:
    """The dataset's own sensor: it reads only its dataset's reports, labels and retrain runs. `jobs` are the
    retrain and daily jobs it launches (retrains, and re-scoring of days a backfill ran ahead of a champion
    move); without them it targets the retrain job by name."""
    target: dict[str, Any] = {"jobs": list(jobs)} if jobs else {"job_name": names.job_name(spec.name, RETRAIN_JOB)}

    @dg.sensor(
        name=names.job_name(spec.name, SENSOR_NAME),
        **target,
        minimum_interval_seconds=20,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"{spec.name}: requests a retrain when drift or decay crosses the spec's thresholds and the "
        "retrain policy (cool-down, new labelled rows, ceilings per day and week, nothing in flight) allows it.",
    )
    def retrain_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        ev = evaluate(
            context.instance,
            spec,
            context.cursor,
            on_day=lambda e: context.log.info(f"retrain decision ({e.today}): {e.decision.reason}"),
        )
        if ev.run_requests:
            return dg.SensorResult(run_requests=ev.run_requests, cursor=ev.cursor)
        return dg.SensorResult(skip_reason=dg.SkipReason(ev.decision.reason), cursor=ev.cursor)

    return retrain_sensor
