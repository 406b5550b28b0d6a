"""PM2 processes and Compose services as health rows, and whether a restarted one is healthy again. Pure: the
readings come from ``runbooks.adapters.pm2`` and ``runbooks.adapters.compose``.

The restart rate is the operations runbook's P0 trigger, ``pm2_process_restarts > 3 in 5 minutes``. PM2 and Docker
only keep a cumulative counter (PM2's ``restart_time``, Docker's ``RestartCount``), so a rate needs an earlier
reading of the same counter: ``restart_rate`` takes the readings kept by earlier runs (``CounterSample``) and says
how many restarts it can prove within the window, and over which span.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from runbooks.decisions.health import HealthCheck, Status, grade, worst

MB = 1024 * 1024


class CounterSample(BaseModel):
    """One reading of a cumulative restart counter. ``incarnation`` names the thing counted (a PM2 app's creation
    time and id, a container's id): a counter of another incarnation (the app deleted and started again, the
    container recreated) started again from zero and is not comparable."""

    at: datetime
    count: int
    incarnation: str


class RestartRate(BaseModel):
    count: int = Field(description="restarts proven within `seconds`")
    seconds: float = Field(description="the span the count covers, ending now")
    within_window: bool = Field(description="the span fits in the window: the count is a lower bound of the "
                                "window's (a longer span can only overstate it)")

    def words(self) -> str:
        return f"{self.count} restart{'s' if self.count != 1 else ''} in {_span(self.seconds)}"


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def restart_rate(history: list[CounterSample], current: CounterSample, *, window_seconds: float,
                 created_at: datetime | None = None) -> RestartRate | None:
    """The restarts within the window ending at ``current.at``, as well as the readings can prove it.

    - created within the window: every restart of the counter happened in it (exact);
    - else the earliest earlier reading inside the window: the count since it (a lower bound: the window may
      hold restarts before it);
    - else the latest reading before the window: the count over a span longer than the window (an upper bound);
    - no earlier reading of this incarnation: None (the first reading; the next one gives a rate).
    """
    start = current.at - timedelta(seconds=window_seconds)
    if created_at is not None and start <= created_at <= current.at:
        return RestartRate(count=current.count, seconds=(current.at - created_at).total_seconds(),
                           within_window=True)
    usable = sorted((s for s in history if s.incarnation == current.incarnation and s.count <= current.count
                     and s.at < current.at), key=lambda s: s.at)
    inside = [s for s in usable if s.at >= start]
    if inside:
        first = inside[0]
        return RestartRate(count=current.count - first.count, seconds=(current.at - first.at).total_seconds(),
                           within_window=True)
    if usable:
        last = usable[-1]
        return RestartRate(count=current.count - last.count, seconds=(current.at - last.at).total_seconds(),
                           within_window=False)
    return None


def grade_restarts(rate: RestartRate | None, *, alert: int) -> tuple[Status, str]:
    """More than ``alert`` restarts proven within the window: alert. More over a longer span: warn (the rate is
    unknown, the count is not nothing). Otherwise ok."""
    if rate is None:
        return "ok", "first reading of its restart counter: the next run gives the rate"
    if rate.count > alert:
        return ("alert" if rate.within_window else "warn"), rate.words()
    return "ok", rate.words()


def keep_samples(history: list[CounterSample], current: CounterSample, *, window_seconds: float,
                 limit: int = 64) -> list[CounterSample]:
    """The readings worth keeping after ``current``: those of its incarnation within two windows, plus the latest
    one before that (the fallback span), newest ``limit`` at most."""
    horizon = current.at - timedelta(seconds=2 * window_seconds)
    same = sorted((s for s in history if s.incarnation == current.incarnation and s.count <= current.count
                   and s.at < current.at), key=lambda s: s.at)
    recent = [s for s in same if s.at >= horizon]
    older = [s for s in same if s.at < horizon][-1:]
    return [*older, *recent, current][-limit:]


# -- PM2 ----------------------------------------------------------------------------------------------------------

class Pm2Reading(BaseModel):
    """One app of ``pm2 jlist``, reduced to what is graded (its environment, which PM2 includes, is dropped)."""

    name: str
    pm_id: int
    status: str
    restarts: int
    memory_bytes: int | None = None
    up_since: datetime | None = Field(default=None, description="when the current process started (pm_uptime)")
    created_at: datetime | None = None

    @property
    def incarnation(self) -> str:
        return f"{self.pm_id}@{self.created_at.isoformat() if self.created_at else '-'}"


_PM2_STATUS: dict[str, Status] = {"online": "ok", "launching": "warn", "waiting restart": "warn",
                                  "one-launch-status": "warn", "stopping": "alert", "stopped": "alert",
                                  "errored": "failed"}


def pm2_checks(service: str, app: str, readings: list[Pm2Reading], rate: RestartRate | None, *, restarts_alert: int,
               memory_warn_mb: float, memory_alert_mb: float) -> list[HealthCheck]:
    """The rows of one PM2 app: its status and restart rate, then its memory. An app running several instances
    (cluster mode) is graded on its worst instance and its memory summed."""
    name = f"pm2 {service}"
    if not readings:
        return [HealthCheck(name=name, status="failed", detail=f"PM2 runs no app named {app!r}")]
    statuses = sorted({r.status for r in readings})
    status = worst([HealthCheck(name=name, status=_PM2_STATUS.get(s, "warn")) for s in statuses])
    restart_status, words = grade_restarts(rate, alert=restarts_alert)
    rows = [HealthCheck(name=name, status=worst([HealthCheck(name=name, status=status),
                                                 HealthCheck(name=name, status=restart_status)]),
                        value=None if rate is None else rate.count, unit="restarts",
                        detail=f"{'/'.join(statuses)}; {words}; {sum(r.restarts for r in readings)} since created"
                        + (f"; {len(readings)} instances" if len(readings) > 1 else ""))]
    memory = [r.memory_bytes for r in readings if r.memory_bytes is not None]
    if memory:
        mb = sum(memory) / MB
        rows.append(HealthCheck(name=f"pm2 {service} memory", value=round(mb, 1), unit="MB",
                                status=grade(mb, warn=memory_warn_mb, alert=memory_alert_mb)))
    return rows


def pm2_healthy(readings: list[Pm2Reading], *, restarted_at: datetime, now: datetime,
                stable_seconds: float) -> tuple[bool, str]:
    """Every instance online, started after the restart and up for ``stable_seconds``: a crash-looping app is
    online between crashes, so being online once proves nothing."""
    if not readings:
        return False, "not in pm2 jlist"
    for r in readings:
        if r.status != "online":
            return False, f"{r.status} ({r.restarts} restarts)"
        if r.up_since is None or r.up_since < restarted_at - timedelta(seconds=1):
            return False, "not restarted yet"
        up = (now - r.up_since).total_seconds()
        if up < stable_seconds:
            return False, f"online for {up:.1f} s of {stable_seconds:g} s"
    return True, f"online for {stable_seconds:g} s or more"


# -- Compose ------------------------------------------------------------------------------------------------------

class ContainerReading(BaseModel):
    """One container of a Compose service, as the engine reports it."""

    id: str
    name: str
    state: str = Field(description="running, restarting, exited, created, paused, dead")
    health: str | None = Field(default=None, description="healthy, unhealthy, starting; None: no health check")
    restart_count: int = 0
    started_at: datetime | None = None
    exit_code: int | None = None

    @property
    def incarnation(self) -> str:
        return self.id


def compose_checks(service: str, where: str, containers: list[ContainerReading],
                   rates: list[RestartRate | None], *, restarts_alert: int) -> list[HealthCheck]:
    """One row per service: state and health of its containers, and their restart rate (the worst container's)."""
    name = f"compose {service}"
    if not containers:
        return [HealthCheck(name=name, status="failed", detail=f"no container of {where}")]
    found: list[HealthCheck] = []
    parts = []
    for container in containers:
        if container.state != "running":
            status: Status = "failed" if container.state in ("exited", "dead", "created") else "alert"
            parts.append(f"{container.name} {container.state}"
                         + (f" (exit {container.exit_code})" if container.exit_code else ""))
        elif container.health == "unhealthy":
            status = "alert"
            parts.append(f"{container.name} unhealthy")
        elif container.health == "starting":
            status = "warn"
            parts.append(f"{container.name} starting")
        else:
            status = "ok"
            parts.append(f"{container.name} running" + (f", {container.health}" if container.health else ""))
        found.append(HealthCheck(name=name, status=status))
    known = [r for r in rates if r is not None]
    top = max(known, key=lambda r: (r.within_window, r.count)) if known else None
    restart_status, words = grade_restarts(top, alert=restarts_alert)
    found.append(HealthCheck(name=name, status=restart_status))
    return [HealthCheck(name=name, status=worst(found), value=None if top is None else top.count, unit="restarts",
                        detail="; ".join(parts) + f"; {words}")]


def compose_healthy(containers: list[ContainerReading], *, restarted_at: datetime, now: datetime,
                    stable_seconds: float) -> tuple[bool, str]:
    """Every container running, started after the restart, healthy if it has a health check, and up for
    ``stable_seconds``."""
    if not containers:
        return False, "no container"
    for c in containers:
        if c.state != "running":
            return False, f"{c.name} {c.state}"
        if c.started_at is None or c.started_at < restarted_at - timedelta(seconds=1):
            return False, f"{c.name} not restarted yet"
        if c.health not in (None, "healthy"):
            return False, f"{c.name} {c.health}"
        up = (now - c.started_at).total_seconds()
        if up < stable_seconds:
            return False, f"{c.name} up for {up:.1f} s of {stable_seconds:g} s"
    return True, "running" + (", healthy" if any(c.health for c in containers) else "")
