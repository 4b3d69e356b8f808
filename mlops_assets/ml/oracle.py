"""The hindsight oracle: the cheapest schedule of refits over a finished stream, under the same prices.

A retrain policy decides online, without the future; after a replay the whole stream is known, so the best
schedule can be computed exactly and any policy judged by how far its total cost is from it (Mahadevan &
Mathioudakis, KBS 2024, judge Cara against the same optimum).

The stream is cut into blocks (a week each in the comparison: refit candidates every week keep the table
small, and weekly blocks average out the noise of a single day's metric). Candidate `i` is a model refit at
the start of block `i`; `gaps[i, b]` is how much worse it serves block `b` than the reference (the freshest
model, refit that very morning), in metric units. A schedule is the set of blocks that start with a refit;
the first block must (something has to serve). Its cost is

    staleness_price * sum over blocks of gap(serving model, block) * days(block)
      + cpu_second_price * sum over refits of their CPU-seconds

and dynamic programming over the last refit before each block finds the minimum in O(K^2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Schedule:
    refits: tuple[int, ...]  # blocks that start with a refit
    staleness_cost: float
    cpu_seconds: float
    total_cost: float


def _segment_costs(gaps: np.ndarray, days: np.ndarray) -> np.ndarray:
    """prefix[i, j] = staleness of model i summed over blocks [i, j) (days-weighted); NaN gaps count 0."""
    weighted = np.where(np.isnan(gaps), 0.0, gaps) * days[None, :]
    return np.concatenate([np.zeros((gaps.shape[0], 1)), np.cumsum(weighted, axis=1)], axis=1)


def schedule_cost(
    refits: Sequence[int],
    gaps: np.ndarray,
    days: np.ndarray,
    cpu: np.ndarray,
    staleness_price: float,
    cpu_second_price: float,
) -> Schedule:
    """The cost of a given schedule (the weekly refit is every block; "refit once" is block 0 alone)."""
    n_blocks = gaps.shape[1]
    starts = sorted(set(refits))
    if not starts or starts[0] != 0:
        raise ValueError("a schedule starts with a refit in block 0: something has to serve")
    prefix = _segment_costs(gaps, days)
    ends = [*starts[1:], n_blocks]
    stale = sum(prefix[i, j] - prefix[i, i] for i, j in zip(starts, ends, strict=True))
    cpu_s = float(sum(cpu[i] for i in starts))
    return Schedule(tuple(starts), staleness_price * stale, cpu_s, staleness_price * stale + cpu_second_price * cpu_s)


def hindsight_schedule(
    gaps: np.ndarray, days: np.ndarray, cpu: np.ndarray, staleness_price: float, cpu_second_price: float
) -> Schedule:
    """The schedule of least total cost. `gaps` is K x B with K == B (a candidate per block); entries below
    the diagonal (a model used before it was trained) are ignored."""
    k, n_blocks = gaps.shape
    if k != n_blocks or len(days) != n_blocks or len(cpu) != k:
        raise ValueError(
            f"gaps must be square (one candidate per block), got {gaps.shape}, {len(days)} days, {len(cpu)}"
        )
    if n_blocks == 0:
        return Schedule((), 0.0, 0.0, 0.0)
    prefix = _segment_costs(gaps, days)
    best = np.full(n_blocks + 1, np.inf)
    best[0] = 0.0
    came_from = np.zeros(n_blocks + 1, dtype=int)
    for j in range(1, n_blocks + 1):
        for i in range(j):
            c = best[i] + cpu_second_price * cpu[i] + staleness_price * (prefix[i, j] - prefix[i, i])
            if c < best[j]:
                best[j], came_from[j] = c, i
    starts = []
    j = n_blocks
    while j > 0:
        i = int(came_from[j])
        starts.append(i)
        j = i
    return schedule_cost(starts[::-1], gaps, days, cpu, staleness_price, cpu_second_price)
