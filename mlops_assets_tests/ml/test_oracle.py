"""The hindsight oracle against brute force: the cheapest schedule of refits, and each schedule's cost."""

import itertools

import numpy as np
import pytest

from mlops_assets.ml.oracle import hindsight_schedule, schedule_cost


def _gaps(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A model decays linearly with its age, plus noise; NaN before it exists."""
    g = np.full((n, n), np.nan)
    for i in range(n):
        for b in range(i, n):
            g[i, b] = rate * (b - i) + rng.normal(0, rate / 3)
    return g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dynamic_programming_finds_the_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 9
    gaps, days, cpu = _gaps(n, 0.002, rng), np.full(n, 7.0), rng.uniform(1, 4, n)
    best = hindsight_schedule(gaps, days, cpu, staleness_price=100.0, cpu_second_price=1.0)
    brute = min(
        schedule_cost((0, *rest), gaps, days, cpu, 100.0, 1.0).total_cost
        for k in range(n)
        for rest in itertools.combinations(range(1, n), k)
    )
    assert best.total_cost == pytest.approx(brute)
    assert best.refits[0] == 0


def test_prices_move_the_schedule_between_never_and_always() -> None:
    n = 12
    age = np.arange(n)[None, :] - np.arange(n)[:, None]
    gaps = np.where(age >= 0, 0.003 * age, np.nan)  # noiseless linear decay
    days, cpu = np.full(n, 7.0), np.full(n, 2.0)
    assert hindsight_schedule(gaps, days, cpu, 0.0, 1.0).refits == (0,)
    assert hindsight_schedule(gaps, days, cpu, 1e6, 1.0).refits == tuple(range(n))
    mid = hindsight_schedule(gaps, days, cpu, 20.0, 1.0)
    assert 1 < len(mid.refits) < n
    weekly = schedule_cost(range(n), gaps, days, cpu, 20.0, 1.0)
    assert mid.total_cost <= weekly.total_cost and weekly.cpu_seconds == 24.0


def test_a_schedule_must_start_serving() -> None:
    with pytest.raises(ValueError, match="block 0"):
        schedule_cost([2], np.zeros((3, 3)), np.ones(3), np.ones(3), 1.0, 1.0)
