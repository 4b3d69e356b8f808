"""What training costs: wall and CPU seconds, measured the same way for every strategy we compare."""

from __future__ import annotations

import resource
import time
from types import TracebackType


def _cpu() -> float:
    """This process's CPU (all threads: OpenMP in the boosted trees, joblib threads in the forests) plus
    any child processes that have finished."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Stopwatch:
    """Wall and CPU seconds of a block. `thread=True` counts the calling thread's CPU alone: a sweep trial
    running beside others in the same process must not be charged for its neighbours' work (its estimator
    runs single-threaded, so its OpenMP regions run on this very thread)."""

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0

    def __init__(self, thread: bool = False) -> None:
        self._clock = time.thread_time if thread else _cpu

    def __enter__(self) -> Stopwatch:
        self._wall = time.perf_counter()
        self._cpu = self._clock()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.wall_seconds = time.perf_counter() - self._wall
        self.cpu_seconds = self._clock() - self._cpu


class CPUBudgetExceeded(RuntimeError):
    """A retrain spent more CPU than its budget (`policy.cost.max_cpu_seconds`): it is stopped, nothing is
    registered, and the champion keeps serving."""

    def __init__(self, what: str, spent: float, budget: float) -> None:
        super().__init__(
            f"{what} stopped: {spent:.1f} CPU-seconds spent, over the budget of {budget:g} "
            "(policy.cost.max_cpu_seconds); nothing registered, the champion stays"
        )
        self.spent = spent
        self.budget = budget


def check_budget(what: str, spent: float, budget: float | None) -> None:
    """Raise once `spent` is over `budget` (None: no budget)."""
    if budget is not None and spent > budget:
        raise CPUBudgetExceeded(what, spent, budget)
