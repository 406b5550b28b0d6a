"""Readers of this host's /proc and filesystems, for the health check: what the health decisions grade."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from runbooks.decisions.health import CPU_SAMPLES, CpuWindow, busy_percent, cpu_window


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
    before = _cpu_times(stat)
    time.sleep(interval)
    return busy_percent(before, _cpu_times(stat))


def sample_cpu(seconds: float, *, stat: Path = Path("/proc/stat"), samples: int = CPU_SAMPLES) -> CpuWindow:
    """Read /proc/stat ``samples + 1`` times across ``seconds`` (blocks that long): a one-off burst, such as a
    0.5 s spike to 100 % on a busy 2-core box, no longer decides the reading alone."""
    readings = [_cpu_times(stat)]
    started = time.monotonic()
    for i in range(1, samples + 1):
        time.sleep(max(0.0, started + seconds * i / samples - time.monotonic()))
        readings.append(_cpu_times(stat))
    return cpu_window(readings, seconds=seconds)


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
