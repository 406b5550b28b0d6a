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


def cpu_usage_percent(stat: Path = Path("/proc/stat"), interval: float = 0.5) -> float:
    """Busy share of all CPUs over ``interval`` seconds."""
    total0, idle0 = _cpu_times(stat)
    time.sleep(interval)
    total1, idle1 = _cpu_times(stat)
    return 100.0 * (1 - (idle1 - idle0) / max(total1 - total0, 1))


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
