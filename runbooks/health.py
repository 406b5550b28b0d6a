"""Seed 001's health-check script as data: each check's reading graded against the seed's performance baseline
(normal range, alert threshold). Readers of this host's /proc and filesystems live here; the tasks that reach the
platform's APIs and databases are in ``tasks/health.py``."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

Status = Literal["ok", "warn", "alert", "failed", "not_configured"]


class HealthCheck(BaseModel):
    name: str
    status: Status
    value: float | None = Field(default=None, description="the reading: a percentage, or seconds")
    unit: str = ""
    detail: str = ""
    seconds: float = 0.0


def grade(value: float, *, warn: float, alert: float) -> Status:
    """Above the alert threshold: alert; above the normal range: warn (seed 001's two columns)."""
    if value > alert:
        return "alert"
    if value >= warn:
        return "warn"
    return "ok"


def disk_usage_percent(path: Path) -> float:
    """As ``df`` reports it: used / (used + available to unprivileged users)."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    available = st.f_bavail * st.f_frsize
    return 100.0 * used / max(used + available, 1)


def memory_usage_percent(meminfo: Path = Path("/proc/meminfo")) -> float:
    """1 - MemAvailable / MemTotal, as ``free`` counts what applications can still get."""
    fields = {}
    for line in meminfo.read_text().splitlines():
        key, _, rest = line.partition(":")
        fields[key] = int(rest.split()[0])
    return 100.0 * (1 - fields["MemAvailable"] / fields["MemTotal"])


def _cpu_times(stat: Path) -> tuple[int, int]:
    values = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values), idle


def _busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    total, idle = after[0] - before[0], after[1] - before[1]
    return 100.0 * (1 - idle / max(total, 1))


def cpu_usage_percent(stat: Path = Path("/proc/stat"), interval: float = 0.5) -> float:
    """Busy share of all CPUs over ``interval`` seconds."""
    before = _cpu_times(stat)
    time.sleep(interval)
    return _busy(before, _cpu_times(stat))


CPU_SAMPLES = 6  # slices of the window the report shows (every 5 s of the default 30 s)


class CpuWindow(BaseModel):
    """CPU over a window: the seed's baseline means sustained load, so the window's average is what is graded; the
    slices show whether it was a burst (one high slice) or sustained (all of them high)."""

    seconds: float
    average: float = Field(description="busy share of all CPUs over the whole window, from its /proc/stat delta")
    samples: list[float] = Field(default_factory=list, description="busy share of each slice, in order")

    def grade(self, *, warn: float, alert: float) -> Status:
        return grade(self.average, warn=warn, alert=alert)

    def detail(self) -> str:
        every = self.seconds / max(len(self.samples), 1)
        return (f"average over {self.seconds:g} s; {len(self.samples)} samples every {every:g} s: "
                + ", ".join(f"{s:.0f}" for s in self.samples) + " %")


def cpu_window(readings: list[tuple[int, int]], *, seconds: float) -> CpuWindow:
    """The window's figures from /proc/stat readings (total, idle jiffies) taken at its start, at each slice's end
    and at its end: the average comes from the first and last readings, so it weighs every moment equally however
    the slices fell."""
    if len(readings) < 2:
        raise ValueError("a CPU window needs at least two /proc/stat readings")
    samples = [_busy(a, b) for a, b in zip(readings, readings[1:], strict=False)]
    return CpuWindow(seconds=seconds, average=_busy(readings[0], readings[-1]), samples=samples)


def sample_cpu(seconds: float, *, stat: Path = Path("/proc/stat"), samples: int = CPU_SAMPLES) -> CpuWindow:
    """Read /proc/stat ``samples + 1`` times across ``seconds`` (blocks that long): a one-off burst, such as a
    0.5 s spike to 100 % on a busy 2-core box, no longer decides the reading alone."""
    readings = [_cpu_times(stat)]
    started = time.monotonic()
    for i in range(1, samples + 1):
        time.sleep(max(0.0, started + seconds * i / samples - time.monotonic()))
        readings.append(_cpu_times(stat))
    return cpu_window(readings, seconds=seconds)


def worst(checks: list[HealthCheck]) -> Status:
    order: list[Status] = ["not_configured", "ok", "warn", "alert", "failed"]
    return max((c.status for c in checks), key=order.index, default="ok")


def count_matching_tail(path: Path, pattern: str, *, lines: int, block: int = 1 << 16) -> tuple[int, str]:
    """Lines matching ``pattern`` (case-insensitive) among the last ``lines`` lines of ``path``, and the last one
    that matched: read backwards from the end in blocks, so a log of many GB costs only its tail."""
    regex = re.compile(pattern.encode(), re.IGNORECASE)
    with path.open("rb") as log:
        end = log.seek(0, os.SEEK_END)
        data = b""
        position = end
        while position > 0 and data.count(b"\n") <= lines:
            step = min(block, position)
            position -= step
            log.seek(position)
            data = log.read(step) + data
    tail = data.splitlines()[-lines:] if data else []
    matches = [line for line in tail if regex.search(line)]
    return len(matches), matches[-1].decode("utf-8", "backslashreplace") if matches else ""
