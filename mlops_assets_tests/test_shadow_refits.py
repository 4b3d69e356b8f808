"""The comparison's shadow refits run in a worker process beside the replay; a stopped replay must not leave
that worker behind (it once outlived a replay stopped by SIGTERM, an orphan fitting for nobody)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlops_assets.config import SPECS_DIR, Settings, load_spec
from mlops_assets.strategies import ShadowRefits


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child not yet reaped is a zombie: gone for every purpose here
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_closing_kills_a_fit_in_progress_before_it_returns(data_dir: Path) -> None:
    from joblib.externals.loky import ProcessPoolExecutor

    shadow = ShadowRefits(load_spec(SPECS_DIR / "flights.yaml"), Settings.from_env())
    pool = ProcessPoolExecutor(max_workers=1)
    shadow._pool = pool
    running = pool.submit(time.sleep, 120)  # a fit that would run for minutes
    deadline = time.monotonic() + 60
    while not running.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = list(pool._processes)
    assert workers and all(_alive(pid) for pid in workers)
    t = time.monotonic()
    shadow.close()
    assert time.monotonic() - t < 10, "close waits for the kill, never for the fit"
    assert not any(_alive(pid) for pid in workers), "the worker outlived close()"
    shadow.close()  # closing twice is harmless
