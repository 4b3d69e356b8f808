"""The cost-aware retrain decision: retrain when staleness has cost what a retrain costs, refit or sweep,
the first model as soon as a hold-out exists, and the storm guards kept."""

import datetime as dt

import pytest

from mlops_assets.ml.cost_policy import (
    CostPolicy,
    DayGap,
    PastRetrain,
    choose_kind,
    decay_gap,
    decide_cost,
    expected_cpu,
    gain_rate,
)
from mlops_assets.ml.policy import PolicyState, RetrainPolicy, Signal

D0 = dt.date(2013, 3, 1)
RULES = RetrainPolicy(cooldown_days=0, min_new_labelled_rows=100, max_per_day=1, max_per_week=3)
COST = CostPolicy(staleness_price=100.0, cpu_second_price=1.0, bootstrap_min_days=15)


def _state(today: dt.date, last: dt.date | None = D0, baseline: bool = False, new_rows: int = 1000) -> PolicyState:
    return PolicyState(
        today=today,
        last_retrain_day=last,
        retrain_days=(last,) if last else (),
        labelled_rows_since_last_retrain=new_rows,
        total_labelled_rows=50_000,
        champion_is_baseline=baseline,
        run_in_flight=False,
    )


def _history(refit_cpu: float = 2.0) -> list[PastRetrain]:
    return [
        PastRetrain(D0 - dt.timedelta(days=30), "sweep", 10.0, None, True),
        PastRetrain(D0, "refit", refit_cpu, 0.004, True),
    ]


def _days(n: int, gap: float, drifted: bool = False) -> list[DayGap]:
    return [DayGap(D0 + dt.timedelta(days=i + 1), gap, drifted) for i in range(n)]


def _decay(day: dt.date) -> list[Signal]:
    return [Signal("decay", day, 0.68, False)]


def test_cumulative_waits_until_staleness_has_paid_for_a_refit() -> None:
    # a measured gap of 0.005 costs 0.5 a day at price 100; the refit costs 2 CPU-s: the 4th day pays for it
    fired = []
    for n in range(1, 8):
        today = D0 + dt.timedelta(days=n)
        d = decide_cost(_decay(today), _state(today), RULES, COST, _history()[:1], _days(n, 0.005), 40)
        fired.append(d.retrain)
        if d.retrain:
            assert d.kind == "sweep" or d.kind == "refit"
            assert "cost (cumulative)" in d.reason and d.staleness_cost is not None
    assert fired.index(True) >= 2 and any(fired)


def test_cheap_retrains_fire_sooner_than_dear_ones() -> None:
    today = D0 + dt.timedelta(days=3)
    cheap = decide_cost(_decay(today), _state(today), RULES, COST, _history(0.5), _days(3, 0.002), 40)
    dear = decide_cost(_decay(today), _state(today), RULES, COST, _history(50.0), _days(3, 0.002), 40)
    assert cheap.retrain and cheap.kind == "refit"
    assert not dear.retrain and "against 50.0 for a refit" in dear.reason and "below a retrain" in dear.reason


def test_threshold_variant_looks_at_today_only() -> None:
    cost = CostPolicy(staleness_price=100.0, variant="threshold", horizon_days=2, bootstrap_min_days=15)
    today = D0 + dt.timedelta(days=5)
    quiet = [*_days(4, 0.0), DayGap(today, 0.001, False)]
    d = decide_cost(_decay(today), _state(today), RULES, cost, _history(), quiet, 40)
    assert not d.retrain and "today's staleness 0.0010 x 2 days" in d.reason


def test_a_stable_champion_is_not_retrained() -> None:
    today = D0 + dt.timedelta(days=20)
    history = [
        PastRetrain(D0 - dt.timedelta(days=30), "sweep", 10.0, None, True),
        PastRetrain(D0, "refit", 2, -0.01, False),
    ]
    d = decide_cost(_decay(today), _state(today), RULES, COST, history, _days(20, 0.0), 40)
    assert not d.retrain and d.reason.startswith("skip: staleness cost below a retrain's")


def test_storm_guards_hold_even_when_the_cost_fires() -> None:
    today = D0 + dt.timedelta(days=10)
    few = decide_cost(_decay(today), _state(today, new_rows=5), RULES, COST, _history(), _days(10, 0.05), 40)
    assert not few.retrain and "only 5 new labelled rows" in few.reason and "cost would fire" in few.reason
    ceiling = RetrainPolicy(cooldown_days=0, min_new_labelled_rows=0, max_per_day=1, max_per_week=1)
    capped = decide_cost(
        _decay(today), _state(today, last=today - dt.timedelta(days=2)), ceiling, COST, _history(), _days(10, 0.5), 40
    )
    assert not capped.retrain and "weekly ceiling" in capped.reason
    busy = PolicyState(today, D0, (D0,), 1000, 5000, False, True)
    assert "in flight" in decide_cost(_decay(today), busy, RULES, COST, _history(), _days(10, 0.5), 40).reason


def test_first_model_as_soon_as_a_hold_out_exists_and_again_while_the_baseline_serves() -> None:
    today = D0
    early = decide_cost([], _state(today, last=None, baseline=True), RULES, COST, [], [], 14)
    assert not early.retrain and "14 labelled days of the 15" in early.reason
    first = decide_cost([], _state(today, last=None, baseline=True), RULES, COST, [], [], 15)
    assert first.retrain and first.trigger == "bootstrap" and first.kind == "sweep"
    # the gate kept the baseline: try again the next day, once new labels came in
    again = decide_cost([], _state(today + dt.timedelta(days=1), last=today, baseline=True), RULES, COST, [], [], 16)
    assert again.retrain and "again" in again.reason


def test_kind_sweeps_when_the_recipe_is_old_or_refits_stop_winning() -> None:
    sweep = PastRetrain(D0, "sweep", 10.0, None, True)
    assert choose_kind(D0 + dt.timedelta(days=10), [sweep], False, COST)[0] == "refit"
    assert choose_kind(D0 + dt.timedelta(days=90), [sweep], False, COST)[0] == "sweep"
    lost = [sweep, PastRetrain(D0, "refit", 1, -0.01, False), PastRetrain(D0, "refit", 1, 0.001, False)]
    kind, why = choose_kind(D0 + dt.timedelta(days=10), lost, False, COST)
    assert kind == "sweep" and "lost at the gate" in why
    assert choose_kind(D0, [], True, COST)[0] == "sweep"


def test_retrain_cost_is_measured_and_decay_is_billed_only_when_sure() -> None:
    assert expected_cpu([PastRetrain(D0, "sweep", 12.0, None, True)], "refit") == pytest.approx(12.0 * 0.15)
    assert expected_cpu(_history(3.0), "refit") == 3.0
    # ROC AUC: window 0.66 but its interval reaches 0.71 >= the reference 0.70: no sure decay
    assert decay_gap("roc_auc", 0.70, 0.66, 0.62, 0.71) == 0.0
    assert decay_gap("roc_auc", 0.70, 0.66, 0.64, 0.68) == pytest.approx(0.02)
    assert decay_gap("rmse", 2.0, 2.6, 2.3, 2.9) == pytest.approx(0.3)


def test_after_a_rejected_refit_only_the_decay_since_counts() -> None:
    """A fresh model lost at the gate on the retrain day: the decay measured then is the data, not staleness."""
    today = D0 + dt.timedelta(days=1)
    history = [
        PastRetrain(D0 - dt.timedelta(days=30), "sweep", 10.0, None, True),
        PastRetrain(D0, "refit", 2, -0.004, False),
    ]
    flat = [DayGap(D0, 0.03, False), DayGap(today, 0.03, False)]
    held = decide_cost(_decay(today), _state(today), RULES, COST, history, flat, 40)
    assert not held.retrain and held.staleness_cost == 0.0
    worse = [DayGap(D0, 0.03, False), DayGap(today, 0.06, False)]
    assert decide_cost(_decay(today), _state(today), RULES, COST, history, worse, 40).retrain


def test_a_first_models_freshness_probe_bills_staleness_before_any_decay_is_measured() -> None:
    """Nothing has decayed surely yet and no refit has measured a gain: the sweep's probe (its winner fit some
    days earlier lost 0.002 a day on the hold-out) is the staleness rate, so a cheap refit fires in days."""
    first = [PastRetrain(D0, "sweep", 10.0, None, True, freshness_rate=0.002)]
    assert gain_rate(first) == pytest.approx(0.002)
    without = [PastRetrain(D0, "sweep", 10.0, None, True)]
    day = D0 + dt.timedelta(days=3)
    quiet = _days(3, 0.0)
    assert not decide_cost(_decay(day), _state(day), RULES, COST, without, quiet, 30).retrain
    d = decide_cost(_decay(day), _state(day), RULES, COST, first, quiet, 30)
    # 100 x 0.002 x (1 + 2 + 3) = 1.2 of staleness against 1.5 for a refit (0.15 of a 10 CPU-s sweep): not yet
    assert not d.retrain and d.staleness_cost == pytest.approx(1.2)
    later = D0 + dt.timedelta(days=4)
    d = decide_cost(_decay(later), _state(later), RULES, COST, first, _days(4, 0.0), 30)
    assert d.retrain and d.kind == "refit" and d.trigger == "cost"


def test_the_gain_rate_divides_by_the_age_of_the_champion_that_was_compared() -> None:
    """A rejected retrain leaves the champion in place: the next gain was won against a champion promoted
    before it, and is divided by that champion's age, not by the days since the rejection."""
    history = [
        PastRetrain(D0, "sweep", 10.0, None, True),
        PastRetrain(D0 + dt.timedelta(days=5), "refit", 1.0, -0.001, False),
        PastRetrain(D0 + dt.timedelta(days=10), "refit", 1.0, 0.01, True),
    ]
    # the rejection measured nothing gained after 5 days (0), the promotion 0.01 over 10 days (not over 5)
    assert gain_rate(history) == pytest.approx((0.0 + 0.001) / 2)


def test_a_recommenders_metrics_have_a_direction_for_the_staleness_bill() -> None:
    """NDCG@k and its kin are better higher: a champion's NDCG below its hold-out value is decay."""
    assert decay_gap("ndcg", 0.20, 0.15, 0.14, 0.16) == pytest.approx(0.04)
    assert decay_gap("hit_rate", 0.50, 0.60, 0.58, 0.62) == 0.0


def test_a_sweep_runs_when_due_even_if_staleness_has_not_paid_for_one() -> None:
    """Refits that gained nothing silence the staleness bill; the periodic sweep still runs (the policy's
    exploration), through the same storm guards, and says why."""
    flat = [PastRetrain(D0 - dt.timedelta(days=40), "sweep", 10.0, None, True)] + [
        PastRetrain(D0 - dt.timedelta(days=d), "refit", 1.0, -0.001, True) for d in (20, 10, 0)
    ]
    cost = CostPolicy(staleness_price=100.0, sweep_every_days=30)
    day = D0 + dt.timedelta(days=1)
    d = decide_cost(_decay(day), _state(day), RULES, cost, flat, _days(1, 0.0), 60)
    assert d.retrain and d.trigger == "sweep_due" and d.kind == "sweep", d.reason
    assert "last sweep 2013-01-20 is 41 days old (sweep every 30)" in d.reason
    held = decide_cost(_decay(day), _state(day, new_rows=10), RULES, cost, flat, _days(1, 0.0), 60)
    assert not held.retrain and "new labelled rows" in held.reason
    young = CostPolicy(staleness_price=100.0, sweep_every_days=90)
    assert not decide_cost(_decay(day), _state(day), RULES, young, flat, _days(1, 0.0), 60).retrain
