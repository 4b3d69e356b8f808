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
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall = time.perf_counter()
        self._cpu = _cpu()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.wall_seconds = time.perf_counter() - self._wall
        self.cpu_seconds = _cpu() - self._cpu
