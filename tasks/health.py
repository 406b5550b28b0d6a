"""Seed 001's health-check script as tasks: API health, the database, disk, memory and CPU against the seed's
performance baseline. The DR drill runs them on the restored platform and the daily health check on the live one.
Redis (``tasks/redis.py``) and the PM2 and Compose services (``tasks/services.py``) have tasks of their own; what
the settings do not configure is not shown."""

from __future__ import annotations

import time

import httpx

from runbooks.adapters.host import count_matching_tail, disk_usage_percent, memory_usage_percent, sample_cpu
from runbooks.adapters.postgres import connect
from runbooks.core.redact import scrub
from runbooks.decisions.health import HealthCheck, grade
from runbooks.settings import ApiSettings, DatabaseSettings, HealthSettings
from runbooks.tasks.policies import step_task


@step_task("check-api-health")
def check_api_health(*, name: str, api: ApiSettings | None, baseline: HealthSettings) -> HealthCheck:
    """``GET /api/v1/health``: it must answer 2xx with ``status: healthy``; its response time is graded."""
    if api is None:
        return HealthCheck(name=name, status="not_configured", detail="no base_url in the settings")
    token = api.bearer()
    started = time.monotonic()
    try:
        with httpx.Client(base_url=api.base_url.rstrip("/"), timeout=api.timeout_seconds,
                          headers={"Authorization": f"Bearer {token}"} if token else {}) as client:
            response = client.get("/api/v1/health")
        seconds = time.monotonic() - started
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    except (httpx.HTTPError, ValueError) as exc:
        return HealthCheck(name=name, status="failed", detail=scrub(f"{type(exc).__name__}: {exc}")[:200],
                           seconds=time.monotonic() - started)
    if response.status_code >= 300 or body.get("status") != "healthy":
        return HealthCheck(name=name, status="failed", seconds=seconds,
                           detail=f"HTTP {response.status_code}, status {body.get('status')!r}")
    return HealthCheck(name=name, status=grade(seconds, warn=baseline.api_warn_seconds,
                                                alert=baseline.api_alert_seconds),
                       value=round(seconds, 3), unit="s", seconds=seconds, detail="healthy")


@step_task("check-database-health")
def check_database_health(*, name: str, database: DatabaseSettings, baseline: HealthSettings) -> HealthCheck:
    """``SELECT 1``, then connections in use against ``max_connections`` (the seed's 80 % / 90 %)."""
    started = time.monotonic()
    try:
        with connect(database.conninfo(), where=f"health of {name!r}", autocommit=True) as conn:
            conn.execute("SELECT 1")
            row = conn.execute("SELECT count(*), current_setting('max_connections')::int FROM pg_stat_activity"
                               ).fetchone()
    except Exception as exc:  # noqa: BLE001 - any failure is the finding: the database did not answer
        return HealthCheck(name=f"database {name}", status="failed", detail=scrub(str(exc).splitlines()[0])[:200],
                           seconds=time.monotonic() - started)
    assert row is not None
    percent = 100.0 * row[0] / max(row[1], 1)
    return HealthCheck(name=f"database {name}", value=round(percent, 1), unit="% of max_connections",
                       status=grade(percent, warn=baseline.connections_warn_percent,
                                    alert=baseline.connections_alert_percent),
                       detail=f"SELECT 1 answered; {row[0]} of {row[1]} connections",
                       seconds=time.monotonic() - started)


@step_task("check-host-health")
def check_host_health(*, baseline: HealthSettings) -> list[HealthCheck]:
    """Disk of each configured path (one line per filesystem), memory, and CPU averaged over
    ``cpu_window_seconds`` (the call takes that long)."""
    checks: list[HealthCheck] = []
    seen: set[int] = set()
    for path in baseline.disk_paths:
        try:
            device = path.stat().st_dev
        except OSError as exc:
            checks.append(HealthCheck(name=f"disk {path}", status="failed", detail=f"{type(exc).__name__}"))
            continue
        if device in seen:
            continue
        seen.add(device)
        percent = disk_usage_percent(path)
        checks.append(HealthCheck(name=f"disk {path}", value=round(percent, 1), unit="% used",
                                  status=grade(percent, warn=baseline.disk_warn_percent,
                                               alert=baseline.disk_alert_percent)))
    memory = memory_usage_percent()
    checks.append(HealthCheck(name="memory", value=round(memory, 1), unit="% used",
                              status=grade(memory, warn=baseline.memory_warn_percent,
                                           alert=baseline.memory_alert_percent)))
    started = time.monotonic()
    cpu = sample_cpu(baseline.cpu_window_seconds)  # blocks for the window: one instant is not the baseline's load
    checks.append(HealthCheck(name="cpu", value=round(cpu.average, 1), unit="% busy", detail=cpu.detail(),
                              status=cpu.grade(warn=baseline.cpu_warn_percent, alert=baseline.cpu_alert_percent),
                              seconds=time.monotonic() - started))
    return checks


@step_task("count-recent-errors")
def count_recent_errors(*, baseline: HealthSettings) -> list[HealthCheck]:
    """Seed 001's ``grep -E "(error|unauthorized|failed)" logs/combined.log | tail -100``: matching lines among
    the last ``error_tail_lines`` of each configured log, graded against ``errors_warn`` / ``errors_alert``."""
    checks = []
    for path in baseline.error_logs:
        started = time.monotonic()
        try:
            count, sample = count_matching_tail(path, baseline.error_pattern, lines=baseline.error_tail_lines)
        except OSError as exc:
            checks.append(HealthCheck(name=f"errors in {path}", status="failed",
                                      detail=f"cannot read it: {exc.strerror}"))
            continue
        checks.append(HealthCheck(name=f"errors in {path}", value=count, unit="recent matching lines",
                                  status=grade(count, warn=baseline.errors_warn, alert=baseline.errors_alert),
                                  detail=scrub(sample)[:300], seconds=time.monotonic() - started))
    return checks
