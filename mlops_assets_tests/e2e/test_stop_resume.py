"""A replay stopped by SIGTERM stops within seconds and leaves the instance consistent; --resume continues.

A real `mlops-assets replay` in a subprocess over a small folder source: the signal is sent once the first day
is complete, so it lands in the middle of the next day's Dagster run (the hard case: Dagster holds the signal
handlers while a run executes).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets.cli import main
from mlops_assets_tests.conftest import TOY_SPEC, job

pytestmark = pytest.mark.e2e

START = dt.date(2024, 1, 1)
DAYS = 3


def toy_folder(root: Path) -> Path:
    folder = root / "drops"
    folder.mkdir()
    for i in range(DAYS):
        day = START + dt.timedelta(days=i)
        rows = "".join(f"u{k},{day} {k % 24:02d}:00:00,{k % 50}.5,k{k % 3},{(k * 7 + i) % 2}\n" for k in range(40))
        (folder / f"{day}.csv").write_text("user,ts,x,kind,y\n" + rows)
    raw = copy.deepcopy(TOY_SPEC)
    raw["source"] = {"kind": "folder", "path": str(folder), "pattern": "*.csv"}
    raw["replay"] = {"start": START.isoformat(), "end": (START + dt.timedelta(days=DAYS - 1)).isoformat()}
    spec = root / "toy.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    return spec


def test_sigterm_stops_a_replay_cleanly_and_resume_continues(data_dir: Path, tmp_path: Path) -> None:
    spec = toy_folder(tmp_path)
    state = data_dir / "replay_state" / "toy.json"
    cmd = [sys.executable, "-m", "mlops_assets.cli", "replay", "--spec", str(spec), "--quiet", "--no-compare"]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600  # a loaded machine; the first day takes seconds on an idle one
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, _ = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert took < 10, f"stopped {took:.1f} s after SIGTERM"
    assert "stopped by SIGTERM" in out and "--resume" in out, out
    done = dt.date.fromisoformat(json.loads(state.read_text())["last_complete_day"])
    assert START <= done < START + dt.timedelta(days=DAYS - 1)

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        # nothing left in flight: the run the signal caught is failed or canceled, never "started" forever
        assert runs and all(r.is_finished for r in runs), [(r.job_name, r.status) for r in runs]
        daily = [r for r in runs if r.job_name == job("daily_job", "toy")]
        complete = {r.tags["dagster/partition"] for r in daily if r.is_success}
        assert {(START + dt.timedelta(days=i)).isoformat() for i in range((done - START).days + 1)} <= complete

    assert main(["replay", "--spec", str(spec), "--resume", "--quiet", "--no-compare"]) == 0
    assert json.loads(state.read_text())["last_complete_day"] == (START + dt.timedelta(days=DAYS - 1)).isoformat()
    with dg.DagsterInstance.get() as instance:
        daily = instance.get_runs(filters=dg.RunsFilter(job_name=job("daily_job", "toy")))
        per_day: dict[str, int] = {}
        for r in daily:
            if r.is_success:
                per_day[r.tags["dagster/partition"]] = per_day.get(r.tags["dagster/partition"], 0) + 1
        assert len(per_day) == DAYS, per_day
        assert all(per_day[(START + dt.timedelta(days=i)).isoformat()] == 1 for i in range((done - START).days + 1))
        assert not instance.get_runs(filters=dg.RunsFilter(job_name=job("bootstrap_job", "toy")))[0].is_failure
