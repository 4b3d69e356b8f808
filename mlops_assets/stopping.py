"""Stopping a replay cleanly on SIGTERM or Ctrl-C, and resuming it from the last complete day.

A replay is a long loop of Dagster runs in one process. Dagster swaps the SIGINT/SIGTERM handlers while a run
executes (an interrupt inside a step fails the run as "interrupted"; one that lands between steps may be
swallowed when the run ends), so a flag set by our own handler is not enough to know that a stop was asked
for. `signal.set_wakeup_fd` is: the interpreter writes every signal's number to the fd whatever Python
handler is installed, so the loop checks it after each run and stops at the next day boundary.

What a stop leaves behind: every run the replay launched is finished (a run an interrupt caught before Dagster
could record its end is marked canceled), lake writes are atomic (a temporary name, then a rename), and the
replay's progress (the last complete day, the sensor's cursor, the retrains launched, the days' records) is
in `<data>/replay_state/<dataset>.json`, written atomically after each complete day, for `--resume`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from dagster._utils import interrupts as _interrupts

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop:
    """Whether SIGINT or SIGTERM arrived since the replay started, and which."""

    def __init__(self, reader: socket.socket | None) -> None:
        self._reader = reader
        self.signal: int | None = None

    def requested(self) -> bool:
        if self._reader is not None:
            with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                while data := self._reader.recv(512):
                    for signo in data:
                        if signo in STOP_SIGNALS:
                            self.signal = signo
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """Within: SIGINT and SIGTERM raise KeyboardInterrupt where the replay's own code runs (Dagster turns them
    into an interrupted run while one executes), and every such signal is remembered for `Stop.requested`.
    Outside the main thread (a test runner's worker) signals cannot be handled: nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield Stop(None)
        return
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    stop = Stop(reader)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def handler(signo: int, _frame: FrameType | None) -> None:
        stop.signal = signo
        # A KeyboardInterrupt raised here can be swallowed (it may land in a garbage-collection callback, which
        # only prints it), and a run starting just now would then execute whole. Dagster's own record of a
        # received interrupt is also set, so the run's next step boundary raises it whatever happens here.
        _interrupts._received_interrupt["received"] = True
        raise KeyboardInterrupt(signal.Signals(signo).name)

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        _interrupts._received_interrupt["received"] = False  # handled here: not to interrupt a later run
        for s, h in previous.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(previous_fd)
        reader.close()
        writer.close()


def settle_in_flight(instance: Any, session: str, why: str) -> list[str]:
    """Mark canceled every run of this replay session that an interrupt left unfinished (Dagster records the
    end of a run it was executing; a run created but not yet started has nobody else to do it)."""
    import dagster as dg
    from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

    settled = []
    statuses = [*IN_PROGRESS_RUN_STATUSES, dg.DagsterRunStatus.NOT_STARTED]
    for run in instance.get_runs(filters=dg.RunsFilter(tags={SESSION_TAG: session}, statuses=statuses)):
        instance.report_run_canceled(run, message=f"the replay was stopped ({why}) while this run was in flight")
        settled.append(run.run_id)
    return settled


SESSION_TAG = "mlops/replay_session"


def state_path(data_dir: Path, dataset: str) -> Path:
    return data_dir / "replay_state" / f"{dataset}.json"


def _plain(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# Each state file's days already serialized: a complete day's record is final, so a day's save serializes only
# the days since the last one (the whole list every day cost ~40 ms a day by day 426, quadratic over a replay).
_SERIALIZED: dict[Path, tuple[list[Any], list[str]]] = {}


def save_state(path: Path, *, last_day: dt.date, cursor: str | None, launched: set[str], records: list[Any]) -> None:
    """After a complete day (its daily run, the sensor's decision, the retrain it asked for): atomic, so a stop
    at any moment leaves either the previous day's state or this one's."""
    held = _SERIALIZED.get(path)
    days = held[1] if held is not None and held[0] is records and len(held[1]) <= len(records) else []
    days.extend(json.dumps(_plain(dataclasses.asdict(r))) for r in records[len(days) :])
    _SERIALIZED[path] = (records, days)
    head = {"last_complete_day": last_day.isoformat(), "cursor": cursor, "launched": sorted(launched)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(head)[:-1] + ', "days": [' + ", ".join(days) + "]}")
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    doc: dict[str, Any] = json.loads(path.read_text())
    doc["last_complete_day"] = dt.date.fromisoformat(doc["last_complete_day"])
    for rec in doc.get("days", []):
        rec["day"] = dt.date.fromisoformat(rec["day"])
        if rec.get("retrain"):
            rec["retrain"]["day"] = dt.date.fromisoformat(rec["retrain"]["day"])
    return doc
