"""The retrain policy: given the new drift/performance reports and what has already happened, retrain or not.

Pure and deterministic on data time (the newest data day, never the wall clock), so a replay of a year
gives the same decisions every time and the sensor can be tested without Dagster. Every outcome carries
one sentence saying why, because "why did (or didn't) it retrain?" is the first question anyone asks.

Order of checks, cheapest to explain first, and each one a reason on its own:
1. a retrain run already in flight (a second one would train on the same data);
2. bootstrap: while the baseline is serving, the only question is whether there are enough labelled rows
   for a first model (drift against a warm-up reference says little about a model that does not exist);
3. stale or missing reports (deciding on old news would retrain for a state that may have passed);
4. ceilings per day and per rolling week (a hard budget, whatever the signals say);
5. cool-down since the last retrain (the new champion needs time to show its own drift and decay);
6. not enough labelled rows since the last retrain (a retrain on the same rows gives the same model);
7. neither drift nor decay: nothing to react to.
The skip reasons of 3–6 still name the trigger that would have fired, so a reader sees what was held back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("drift", "decay")


@dataclass(frozen=True)
class RetrainPolicy:
    drift_share_threshold: float = 0.3  # fire on drift when the report's drift_share >= this
    decay: bool = True  # fire on decay_detected
    cooldown_days: int = 7  # after a retrain, no new retrain for N days of data time
    min_new_labelled_rows: int = 5000  # labelled rows arrived since the last retrain's cut-off
    max_per_day: int = 1
    max_per_week: int = 2
    max_report_age_days: int = 2  # reports older than this (vs the newest data day) are stale -> skip
    bootstrap_min_rows: int = 20000  # with no trained champion yet, train once this many labelled rows exist
    stale_run_hours: float = 6.0  # a run silent this long is dead and no longer counts as in flight


@dataclass(frozen=True)
class Signal:
    """One report materialization."""

    kind: str  # "drift" | "decay"
    day: dt.date  # the data day the report describes
    value: float  # drift_share, or the metric's window value
    detected: bool


@dataclass(frozen=True)
class PolicyState:
    today: dt.date  # newest data day seen (data time, not wall clock: the replay is deterministic)
    last_retrain_day: dt.date | None
    retrain_days: tuple[dt.date, ...]  # days (data time) of past requested retrains
    labelled_rows_since_last_retrain: int
    total_labelled_rows: int
    champion_is_baseline: bool
    run_in_flight: bool


@dataclass(frozen=True)
class Decision:
    retrain: bool
    trigger: str  # "bootstrap" | "drift" | "decay" | "drift+decay" | "cost" | "none"
    reason: str
    # cost mode: "sweep" (a search over families) | "refit" (the champion's recipe on fresh rows); the rules
    # always sweep and leave it empty
    kind: str = ""
    staleness_cost: float | None = None  # cost mode: what staying stale has cost (cost_policy.py)
    retrain_cost: float | None = None  # cost mode: what the retrain is expected to cost

    def to_dict(self) -> dict[str, Any]:
        """Only what was decided: the cost fields appear when the cost-aware policy set them."""
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


def _skip(reason: str) -> Decision:
    return Decision(False, "none", f"skip: {reason}")


def _days_ago(today: dt.date, day: dt.date) -> str:
    n = (today - day).days
    return "today" if n == 0 else f"{n} day{'s' if n != 1 else ''} ago"


def _budget(state: PolicyState, policy: RetrainPolicy) -> str | None:
    """Why the ceilings per day / week or the cool-down forbid a retrain today, or None."""
    today = state.today
    past = [d for d in state.retrain_days if d <= today]
    on_day = sum(d == today for d in past)
    if on_day >= policy.max_per_day:
        return f"daily ceiling reached, {on_day} retrain(s) on {today} (max {policy.max_per_day})"
    week_start = today - dt.timedelta(days=6)
    in_week = sum(week_start <= d for d in past)
    if in_week >= policy.max_per_week:
        return f"weekly ceiling reached, {in_week} retrains from {week_start} to {today} (max {policy.max_per_week})"
    last = state.last_retrain_day if state.last_retrain_day is not None else max(past, default=None)
    if last is not None and (today - last).days < policy.cooldown_days:
        return f"cool-down, last retrain {last} ({_days_ago(today, last)}, needs {policy.cooldown_days})"
    return None


def _latest(signals: Sequence[Signal], kind: str) -> Signal | None:
    """The newest report of a kind: a later report supersedes an earlier one for the same question."""
    of_kind = [s for s in signals if s.kind == kind]
    return max(of_kind, key=lambda s: s.day) if of_kind else None


def decide(signals: Sequence[Signal], state: PolicyState, policy: RetrainPolicy) -> Decision:
    """Retrain now or not, and why (see the module docstring for the order of checks)."""
    unknown = {s.kind for s in signals} - set(KINDS)
    if unknown:
        raise ValueError(f"unknown signal kinds {sorted(unknown)}; expected {KINDS}")
    if state.run_in_flight:
        return _skip("a retrain run is already in flight")

    if state.champion_is_baseline:
        need = policy.bootstrap_min_rows
        if state.total_labelled_rows < need:
            return _skip(
                f"baseline serving, {state.total_labelled_rows} labelled rows of the {need} needed for a first model"
            )
        held = _budget(state, policy)
        if held is not None:
            return _skip(f"{held}; bootstrap would fire")
        if state.last_retrain_day is not None and state.labelled_rows_since_last_retrain < policy.min_new_labelled_rows:
            return _skip(
                f"baseline still serving after the retrain of {state.last_retrain_day}, only "
                f"{state.labelled_rows_since_last_retrain} new labelled rows since "
                f"(needs {policy.min_new_labelled_rows})"
            )
        return Decision(
            True,
            "bootstrap",
            f"bootstrap: baseline serving and {state.total_labelled_rows} labelled rows "
            f"(>= {need}) are enough for a first model",
        )

    today = state.today
    fresh_from = today - dt.timedelta(days=policy.max_report_age_days)
    drift, decay = _latest(signals, "drift"), _latest(signals, "decay")
    if drift is None and decay is None:
        return _skip("no drift or performance report to act on")
    fresh = [s for s in (drift, decay) if s is not None and s.day >= fresh_from]
    if not fresh:
        newest = max((s for s in (drift, decay) if s is not None), key=lambda s: s.day)
        return _skip(
            f"reports are stale, newest {newest.kind} report is for {newest.day} "
            f"({_days_ago(today, newest.day)}, max age {policy.max_report_age_days})"
        )

    if drift is not None and drift.day < fresh_from:
        drift = None  # stale: only the fresh report of the other kind counts
    if decay is not None and decay.day < fresh_from:
        decay = None
    drift_fires = drift is not None and drift.value >= policy.drift_share_threshold
    decay_fires = policy.decay and decay is not None and decay.detected
    parts = []
    if drift is not None:
        cmp = ">=" if drift_fires else "<"
        parts.append(f"drift share {drift.value:.2f} {cmp} {policy.drift_share_threshold:.2f} ({drift.day})")
    if decay is not None:
        state_word = "detected" if decay.detected else "not detected"
        off = "" if policy.decay else ", decay trigger disabled"
        parts.append(f"decay {state_word}, window value {decay.value:.4f} ({decay.day}{off})")
    seen = "; ".join(parts)
    trigger = (
        "drift+decay" if drift_fires and decay_fires else "drift" if drift_fires else "decay" if decay_fires else "none"
    )
    would = f"; {trigger} would fire ({seen})" if trigger != "none" else ""

    held = _budget(state, policy)
    if held is not None:
        return _skip(f"{held}{would}" if would else f"{held}; {seen}")
    if trigger != "none" and state.labelled_rows_since_last_retrain < policy.min_new_labelled_rows:
        return _skip(
            f"only {state.labelled_rows_since_last_retrain} new labelled rows since the last "
            f"retrain (needs {policy.min_new_labelled_rows}){would}"
        )
    if trigger == "none":
        return _skip(f"no drift and no decay ({seen})")
    return Decision(True, trigger, f"{trigger}: {seen}")
