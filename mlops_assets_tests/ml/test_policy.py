"""The retrain policy, including the acceptance criteria of its issue: bounded retrains under persistent
drift, none on a noisy but stable stream, a bootstrap once enough rows exist, and a reason for every skip."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable

import numpy as np
import pytest

from mlops_assets.ml.policy import Decision, PolicyState, RetrainPolicy, Signal, decide

D0 = dt.date(2013, 3, 1)
POLICY = RetrainPolicy()


def _state(
    today: dt.date = D0,
    *,
    last: dt.date | None = None,
    days: tuple[dt.date, ...] = (),
    since: int = 10_000,
    total: int = 50_000,
    baseline: bool = False,
    in_flight: bool = False,
) -> PolicyState:
    return PolicyState(
        today=today,
        last_retrain_day=last,
        retrain_days=days or ((last,) if last else ()),
        labelled_rows_since_last_retrain=since,
        total_labelled_rows=total,
        champion_is_baseline=baseline,
        run_in_flight=in_flight,
    )


def _drift(day: dt.date = D0, share: float = 0.6) -> Signal:
    return Signal("drift", day, share, share >= 0.5)


def _decay(day: dt.date = D0, detected: bool = True, value: float = 0.70) -> Signal:
    return Signal("decay", day, value, detected)


SignalsForDay = Callable[[dt.date, int], list[Signal]]


def _simulate(
    days: int,
    signals_for_day: SignalsForDay,
    *,
    policy: RetrainPolicy = POLICY,
    rows_per_day: int = 1500,
    baseline: bool = False,
    trained_after_retrain: bool = True,
) -> list[tuple[dt.date, Decision]]:
    """Day by day, feeding every decision back into the state the way the sensor reads it back."""
    retrains: list[dt.date] = []
    total, at_last = 0, 0
    out = []
    for i in range(days):
        today = D0 + dt.timedelta(days=i)
        total += rows_per_day
        state = PolicyState(
            today=today,
            last_retrain_day=retrains[-1] if retrains else None,
            retrain_days=tuple(retrains),
            labelled_rows_since_last_retrain=total - at_last,
            total_labelled_rows=total,
            champion_is_baseline=baseline,
            run_in_flight=False,
        )
        decision = decide(signals_for_day(today, i), state, policy)
        out.append((today, decision))
        if decision.retrain:
            retrains.append(today)
            at_last = total
            if trained_after_retrain:
                baseline = False
    return out


def test_thirty_drifted_days_give_a_bounded_number_of_retrains() -> None:
    history = _simulate(30, lambda day, i: [_drift(day, 0.8), _decay(day, True)])
    fired = [d for d, dec in history if dec.retrain]
    # cool-down of 7 days: day 0, 7, 14, 21, 28 at most; never two within the cool-down or a week's ceiling
    assert 1 <= len(fired) <= 5
    assert all((b - a).days >= POLICY.cooldown_days for a, b in itertools.pairwise(fired))
    assert {dec.trigger for _, dec in history if dec.retrain} == {"drift+decay"}
    skips = [dec.reason for _, dec in history if not dec.retrain]
    assert all(r.startswith(("skip: cool-down", "skip: only")) for r in skips)
    assert all("drift+decay would fire" in r for r in skips)


def test_ceilings_bound_retrains_even_without_a_cool_down() -> None:
    policy = RetrainPolicy(cooldown_days=0, min_new_labelled_rows=0, max_per_day=1, max_per_week=2)
    history = _simulate(30, lambda day, i: [_drift(day, 0.9)], policy=policy)
    fired = [d for d, dec in history if dec.retrain]
    for d in fired:  # no rolling 7-day window holds more than 2
        assert sum(0 <= (d - e).days < 7 for e in fired) <= 2
    assert len(fired) <= 2 * 5
    assert any("weekly ceiling reached" in dec.reason for _, dec in history)


def test_noisy_but_stable_stream_never_retrains() -> None:
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.0, 0.29, 60)  # drift share wanders below the 0.3 threshold
    metric = 0.80 + rng.normal(0, 0.01, 60)
    history = _simulate(60, lambda day, i: [_drift(day, float(noise[i])), _decay(day, False, float(metric[i]))])
    assert not any(dec.retrain for _, dec in history)
    assert all(dec.reason.startswith("skip: no drift and no decay") for _, dec in history)


def test_bootstrap_fires_once_enough_labelled_rows_exist() -> None:
    policy = RetrainPolicy(bootstrap_min_rows=20_000)
    history = _simulate(30, lambda day, i: [_drift(day, 0.1)], policy=policy, rows_per_day=3000, baseline=True)
    fired = [(d, dec) for d, dec in history if dec.retrain]
    assert len(fired) == 1
    day, dec = fired[0]
    assert dec.trigger == "bootstrap" and (day - D0).days == 6  # 7 days x 3000 rows >= 20000
    assert "21000 labelled rows (>= 20000)" in dec.reason
    before = [dec for d, dec in history if d < day]
    assert all("baseline serving" in dec.reason and "of the 20000 needed" in dec.reason for dec in before)


def test_bootstrap_retries_only_after_cool_down_and_new_rows_if_the_baseline_stays() -> None:
    policy = RetrainPolicy(bootstrap_min_rows=20_000, cooldown_days=7, min_new_labelled_rows=5000)
    history = _simulate(
        20, lambda day, i: [], policy=policy, rows_per_day=3000, baseline=True, trained_after_retrain=False
    )  # the gate kept the baseline
    fired = [(d - D0).days for d, dec in history if dec.retrain]
    assert fired == [6, 13]


@pytest.mark.parametrize(
    ("signals", "state", "policy", "reason"),
    [
        ([_drift()], _state(in_flight=True), POLICY, "skip: a retrain run is already in flight"),
        ([], _state(), POLICY, "skip: no drift or performance report to act on"),
        (
            [_drift(D0 - dt.timedelta(days=3))],
            _state(),
            POLICY,
            "skip: reports are stale, newest drift report is for 2013-02-26 (3 days ago, max age 2)",
        ),
        (
            [_drift()],
            _state(days=(D0,), last=D0),
            RetrainPolicy(cooldown_days=0),
            "skip: daily ceiling reached, 1 retrain(s) on 2013-03-01 (max 1)",
        ),
        (
            [_drift()],
            _state(days=(D0 - dt.timedelta(days=5), D0 - dt.timedelta(days=2)), last=D0 - dt.timedelta(days=2)),
            RetrainPolicy(cooldown_days=0),
            "skip: weekly ceiling reached, 2 retrains from 2013-02-23 to 2013-03-01 (max 2)",
        ),
        (
            [_drift()],
            _state(last=D0 - dt.timedelta(days=3)),
            POLICY,
            "skip: cool-down, last retrain 2013-02-26 (3 days ago, needs 7)",
        ),
        (
            [_drift()],
            _state(since=1200),
            POLICY,
            "skip: only 1200 new labelled rows since the last retrain (needs 5000)",
        ),
        ([_drift(share=0.1), _decay(detected=False)], _state(), POLICY, "skip: no drift and no decay"),
        ([_decay(detected=True)], _state(), RetrainPolicy(decay=False), "decay trigger disabled"),
        (
            [],
            _state(baseline=True, total=100),
            POLICY,
            "skip: baseline serving, 100 labelled rows of the 20000 needed for a first model",
        ),
    ],
)
def test_every_skip_has_its_reason(
    signals: list[Signal], state: PolicyState, policy: RetrainPolicy, reason: str
) -> None:
    decision = decide(signals, state, policy)
    assert not decision.retrain and decision.trigger == "none"
    assert reason in decision.reason
    assert decision.to_dict() == {"retrain": False, "trigger": "none", "reason": decision.reason}


def test_skips_name_the_trigger_that_was_held_back() -> None:
    held = decide([_drift(share=0.45)], _state(last=D0 - dt.timedelta(days=3)), POLICY)
    assert "drift would fire (drift share 0.45 >= 0.30 (2013-03-01))" in held.reason


@pytest.mark.parametrize(
    ("signals", "trigger"),
    [
        ([_drift()], "drift"),
        ([_decay()], "decay"),
        ([_drift(), _decay()], "drift+decay"),
        ([_drift(share=0.3)], "drift"),
    ],  # the threshold itself fires (>=)
)
def test_triggers(signals: list[Signal], trigger: str) -> None:
    decision = decide(signals, _state(), POLICY)
    assert decision.retrain and decision.trigger == trigger
    assert decision.reason.startswith(f"{trigger}: ")


def test_newest_report_supersedes_older_ones_and_stale_kinds_are_ignored() -> None:
    older_drifted, newer_calm = _drift(D0 - dt.timedelta(days=1), 0.9), _drift(D0, 0.05)
    assert not decide([older_drifted, newer_calm], _state(), POLICY).retrain
    stale_drift, fresh_decay = _drift(D0 - dt.timedelta(days=5), 0.9), _decay(D0, False)
    decision = decide([stale_drift, fresh_decay], _state(), POLICY)
    assert not decision.retrain and "drift share" not in decision.reason


def test_unknown_signal_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown signal kinds"):
        decide([Signal("weather", D0, 1.0, True)], _state(), POLICY)
