"""The cost-aware retrain decision: retrain when what staying stale costs outweighs what a retrain costs.

After Cara (Mahadevan & Mathioudakis, "Cost-Aware Retraining for Machine Learning", Knowledge-Based Systems
293, 2024). Fixed cool-downs and row counts are one dataset's numbers; a price for staleness and a price for
training CPU are the user's, and everything else is measured:

- how stale the champion is (`gap`, in metric units, >= 0): the larger of its measured decay (its hold-out
  score at promotion against its rolling window on labelled days) and the trend of past retrains (what the
  gate measured a fresh challenger to gain, per day of the champion's age, times the champion's age); a
  drifted feature window adds the typical gain of a retrain, because drift is a reason to expect one;
- what a retrain costs: its measured CPU-seconds (the median of the last retrains of that kind) times the
  price; a cheap refit of the champion's recipe, or a full sweep when the recipe is old, the champion is the
  baseline, or refits have stopped winning the gate.

Two variants, as in the paper: `cumulative` retrains once the staleness cost accumulated since the last
retrain pays for one (the rent-or-buy rule, at most twice the hindsight cost on an adversarial stream);
`threshold` once today's staleness cost, carried over `horizon_days`, pays for one.

The storm guards of `policy.py` (a run in flight, stale reports, ceilings per day and week, new labelled
rows) are safety, not tuning, and run first; pure and on data time like the rest of the policy.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from mlops_assets.ml.decay import higher_is_better
from mlops_assets.ml.policy import Decision, PolicyState, RetrainPolicy, Signal, _budget, _days_ago, _latest

# Before any retrain was measured: a sweep's CPU is unknown, a refit's is a fraction of it (one fit of the
# sweep's several trials). Only used until the first retrain of the kind reports its own.
DEFAULT_SWEEP_CPU = 30.0
REFIT_SHARE_OF_SWEEP = 0.15


@dataclass(frozen=True)
class CostPolicy:
    staleness_price: float  # cost of serving a model worse by 1.0 metric unit for one day
    cpu_second_price: float = 1.0
    variant: str = "cumulative"  # "cumulative" | "threshold"
    horizon_days: int = 7
    sweep_every_days: int = 90
    bootstrap_min_days: int = 15  # labelled days before the first model is tried


@dataclass(frozen=True)
class PastRetrain:
    """One finished retrain, as the sensor reads it back from the instance."""

    day: dt.date  # its as-of (data) day
    kind: str  # "sweep" | "refit"
    cpu_seconds: float
    gain: float | None  # challenger minus champion on the gate's hold-out, oriented so that > 0 is better
    promoted: bool
    failed: bool = False
    # a sweep's freshness probe: what its winner fit `validation_days` earlier lost on the hold-out, per day
    freshness_rate: float | None = None


@dataclass(frozen=True)
class DayGap:
    """One day's measured staleness evidence: the champion's decay (oriented, > 0 worse) and drift."""

    day: dt.date
    decay_gap: float | None
    drifted: bool


def oriented(metric: str, delta: float) -> float:
    """`delta` (new minus old, in the metric's own direction) turned into "how much better"."""
    return delta if higher_is_better(metric) else -delta


def decay_gap(
    metric: str,
    reference: float | None,
    window_value: float | None,
    ci_low: float | None = None,
    ci_high: float | None = None,
) -> float | None:
    """How much worse than its own hold-out score the champion surely serves now, in metric units (>= 0):
    measured to the end of the window's interval nearest the reference, so that a metric that merely wobbles
    from week to week (a seasonal mix of rows) is not billed as staleness."""
    if reference is None or window_value is None:
        return None
    bound = (ci_high if higher_is_better(metric) else ci_low) if None not in (ci_low, ci_high) else window_value
    return max(0.0, oriented(metric, reference - float(bound)))  # type: ignore[arg-type]


def typical_gain(history: Sequence[PastRetrain]) -> float:
    """The median gain the last few trained-on-a-champion retrains measured at the gate (0 if none yet)."""
    gains = [max(0.0, r.gain) for r in history[-5:] if r.gain is not None and not r.failed]
    return statistics.median(gains) if gains else 0.0


def gain_rate(history: Sequence[PastRetrain]) -> float:
    """Gain per day of the champion's age: what a fresh challenger won at the gate, divided by how long the
    champion it was compared with had been serving, and what a sweep's freshness probe measured (the same
    recipe fit some days earlier, on the same hold-out). Staleness grows with age (Cara's premise); the probe
    gives the rate from the first model on, before any refit has measured one."""
    rates = []
    champion_since: dt.date | None = None  # the day the champion a retrain was compared with was promoted
    for cur in history:
        if cur.failed:
            continue
        if cur.freshness_rate is not None:
            rates.append(max(0.0, cur.freshness_rate))
        days = (cur.day - champion_since).days if champion_since is not None else 0
        if cur.gain is not None and days > 0:
            rates.append(max(0.0, cur.gain) / days)
        if cur.promoted:
            champion_since = cur.day
    return statistics.median(rates[-5:]) if rates else 0.0


def day_gap(evidence: DayGap, age_days: int, history: Sequence[PastRetrain]) -> float:
    """The day's staleness estimate in metric units: the largest of what was measured and what the trend
    predicts, plus the typical gain of a retrain on a drifted day."""
    gap = max(evidence.decay_gap or 0.0, gain_rate(history) * age_days)
    if evidence.drifted:
        gap = max(gap, typical_gain(history))
    return gap


def expected_cpu(history: Sequence[PastRetrain], kind: str) -> float:
    """The median CPU of the last three retrains of this kind (what a retrain costs here, measured)."""
    of_kind = [r.cpu_seconds for r in history if r.kind == kind and r.cpu_seconds > 0]
    if of_kind:
        return statistics.median(of_kind[-3:])
    sweeps = [r.cpu_seconds for r in history if r.kind == "sweep" and r.cpu_seconds > 0]
    sweep = statistics.median(sweeps[-3:]) if sweeps else DEFAULT_SWEEP_CPU
    return sweep if kind == "sweep" else sweep * REFIT_SHARE_OF_SWEEP


def sweep_due(today: dt.date, history: Sequence[PastRetrain], cost: CostPolicy) -> bool:
    """The last sweep is `sweep_every_days` old: a sweep runs even when staleness has not paid for one. It is
    the policy's exploration: with no retrain, nothing new is measured, and a run of refits that gained
    nothing on a small hold-out would otherwise silence the staleness bill for good (on MovieLens, four
    months of one champion). The sweep re-measures the recipe and, with its freshness probe, the rate."""
    sweeps = [r for r in history if r.kind == "sweep" and not r.failed]
    return bool(sweeps) and (today - sweeps[-1].day).days >= cost.sweep_every_days


def choose_kind(
    today: dt.date, history: Sequence[PastRetrain], champion_is_baseline: bool, cost: CostPolicy
) -> tuple[str, str]:
    """Refit the champion's recipe (cheap) unless there is no recipe, it is old, or refits stopped winning."""
    if champion_is_baseline:
        return "sweep", "no trained champion: a sweep picks the first recipe"
    sweeps = [r for r in history if r.kind == "sweep" and not r.failed]
    if not sweeps:
        return "sweep", "no sweep on record"
    age = (today - sweeps[-1].day).days
    if sweep_due(today, history, cost):
        return "sweep", f"last sweep {sweeps[-1].day} is {age} days old (sweep every {cost.sweep_every_days})"
    last = [r for r in history if not r.failed][-2:]
    if len(last) == 2 and all(r.kind == "refit" and not r.promoted for r in last):
        return "sweep", "the last two refits lost at the gate: the recipe needs a search"
    return "refit", f"the champion's recipe (last sweep {sweeps[-1].day}, {age} days ago)"


def decide_cost(
    signals: Sequence[Signal],
    state: PolicyState,
    policy: RetrainPolicy,
    cost: CostPolicy,
    history: Sequence[PastRetrain],
    days_since: Sequence[DayGap],
    labelled_days: int,
) -> Decision:
    """Retrain now or not, which kind, and why; `days_since` is the evidence of every day the champion has
    served since the last retrain (the cumulative variant sums over it), `history` the finished retrains in
    day order."""
    if state.run_in_flight:
        return Decision(False, "none", "skip: a retrain run is already in flight")
    today = state.today
    kind, why_kind = choose_kind(today, history, state.champion_is_baseline, cost)
    cpu = expected_cpu(history, kind)
    price = cost.cpu_second_price * cpu
    if state.champion_is_baseline:
        if labelled_days < cost.bootstrap_min_days:
            return Decision(
                False,
                "none",
                f"skip: baseline serving, {labelled_days} labelled days of the {cost.bootstrap_min_days} "
                "a first model needs (training + validation + hold-out)",
            )
        held = _budget(state, policy)
        if held is not None:
            return Decision(False, "none", f"skip: {held}; bootstrap would fire")
        if state.last_retrain_day is not None and state.labelled_rows_since_last_retrain < policy.min_new_labelled_rows:
            return Decision(
                False,
                "none",
                f"skip: baseline still serving after the try of {state.last_retrain_day}, only "
                f"{state.labelled_rows_since_last_retrain} new labelled rows (needs {policy.min_new_labelled_rows})",
            )
        again = " again" if state.last_retrain_day is not None else ""
        return Decision(
            True,
            "bootstrap",
            f"bootstrap: baseline serving and {labelled_days} labelled days are enough for a hold-out; "
            f"try a first model{again} and let the gate decide",
            kind="sweep",
            retrain_cost=round(price, 2),
        )

    fresh_from = today - dt.timedelta(days=policy.max_report_age_days)
    drift, decay = _latest(signals, "drift"), _latest(signals, "decay")
    newest = max((s.day for s in (drift, decay) if s is not None), default=None)
    if newest is None:
        return Decision(False, "none", "skip: no drift or performance report to act on")
    if newest < fresh_from:
        return Decision(
            False,
            "none",
            f"skip: reports are stale, newest is for {newest} ({_days_ago(today, newest)}, "
            f"max age {policy.max_report_age_days})",
        )
    last = state.last_retrain_day
    served = [d for d in days_since if last is None or d.day > last]
    age = lambda d: (d - last).days if last is not None else 0  # noqa: E731
    # A challenger that lost at the gate on the last retrain day showed that a fresh model could not beat the
    # champion then: the decay measured that day was the data getting harder, not the model getting stale.
    # Staleness is what the champion lost since, not the whole gap to its hold-out score.
    floor = 0.0
    rejected = history[-1] if history and history[-1].day == last and not history[-1].promoted else None
    if rejected is not None and not rejected.failed:
        floor = next((d.decay_gap or 0.0 for d in days_since if d.day == last), 0.0)
    gaps = [max(0.0, day_gap(d, age(d.day), history) - floor) for d in served]
    today_gap = gaps[-1] if gaps else 0.0
    daily_cost = cost.staleness_price * today_gap
    accumulated = cost.staleness_price * sum(gaps)
    stale = daily_cost * cost.horizon_days if cost.variant == "threshold" else accumulated
    what = (
        f"today's staleness {today_gap:.4f} x {cost.horizon_days} days"
        if cost.variant == "threshold"
        else f"staleness since {last or 'the start'} ({len(served)} days, today {today_gap:.4f})"
    )
    seen = f"{stale:.1f} against {price:.1f} for a {kind} ({what}; {cpu:.1f} CPU-s)"
    trigger = "cost" if stale >= price and stale > 0 else "none"
    if trigger == "none" and kind == "sweep" and sweep_due(today, history, cost):
        trigger, seen = "sweep_due", f"{seen}; {why_kind}: a sweep re-measures the recipe and its staleness"
    if trigger == "none":
        return Decision(
            False,
            "none",
            f"skip: staleness cost below a retrain's, {seen}",
            kind=kind,
            staleness_cost=stale,
            retrain_cost=price,
        )
    held = _budget(state, policy)
    if held is not None:
        return Decision(
            False,
            "none",
            f"skip: {held}; cost would fire ({seen})",
            kind=kind,
            staleness_cost=stale,
            retrain_cost=price,
        )
    if state.labelled_rows_since_last_retrain < policy.min_new_labelled_rows:
        return Decision(
            False,
            "none",
            f"skip: only {state.labelled_rows_since_last_retrain} new labelled rows since the last retrain "
            f"(needs {policy.min_new_labelled_rows}); cost would fire ({seen})",
            kind=kind,
            staleness_cost=stale,
            retrain_cost=price,
        )
    why = (
        f"sweep due: staleness cost {seen}"
        if trigger == "sweep_due"
        else f"cost ({cost.variant}): staleness cost {seen}; {kind}: {why_kind}"
    )
    return Decision(
        True,
        trigger,
        why,
        kind=kind,
        staleness_cost=round(stale, 2),
        retrain_cost=round(price, 2),
    )
