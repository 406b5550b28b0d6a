"""The health check as data: each check's reading graded against the performance baseline (normal range,
alert threshold). Pure: the readers of this host are in ``runbooks.adapters.host``, the tasks that reach the
platform's APIs and databases in ``runbooks.tasks.health``."""

from __future__ import annotations

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


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    total, idle = after[0] - before[0], after[1] - before[1]
    return 100.0 * (1 - idle / max(total, 1))


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
    samples = [busy_percent(a, b) for a, b in zip(readings, readings[1:], strict=False)]
    return CpuWindow(seconds=seconds, average=busy_percent(readings[0], readings[-1]), samples=samples)


def worst(checks: list[HealthCheck]) -> Status:
    order: list[Status] = ["not_configured", "ok", "warn", "alert", "failed"]
    return max((c.status for c in checks), key=order.index, default="ok")


