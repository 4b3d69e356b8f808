"""Peak memory of one step of a benchmark's child process, read from /proc (Linux), shared by the benchmarks.

Resetting the kernel's high-water mark before the step lets a child measure the step alone, not its imports
and data loading; where that is not allowed, callers fall back to the process's whole peak (getrusage)."""

from __future__ import annotations

from pathlib import Path


def rss_kb(field: str) -> int:
    """A /proc/self/status memory field in kB: VmRSS now, VmHWM the peak since start or the last reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
