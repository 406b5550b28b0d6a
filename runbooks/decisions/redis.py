"""A Redis instance's health as data: its INFO graded against ``[redis.<name>]``'s thresholds (seed 001's health
check pings Redis; seed 002 gives the memory/learning system a 15-minute RPO, which the last save's age is
graded against). Pure: the reading is ``runbooks.tasks.redis``'s."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from runbooks.decisions.health import HealthCheck, grade
from runbooks.settings.redis import RedisSettings

MB = 1024 * 1024


def redis_checks(name: str, info: dict[str, Any], maxclients: int, *, settings: RedisSettings, now: datetime,
                 ping_seconds: float) -> list[HealthCheck]:
    """PING, memory against maxmemory, the last save (status and age), connected clients against maxclients."""
    label = f"redis {name}"
    checks = [HealthCheck(name=label, status="ok", value=round(ping_seconds, 4), unit="s", seconds=ping_seconds,
                          detail=f"PONG; Redis {info.get('redis_version', '?')}, role {info.get('role', '?')}")]
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    if limit:
        percent = 100.0 * used / limit
        checks.append(HealthCheck(name=f"{label} memory", value=round(percent, 1), unit="% of maxmemory",
                                  status=grade(percent, warn=settings.memory_warn_percent,
                                               alert=settings.memory_alert_percent),
                                  detail=f"{used / MB:.1f} MiB of {limit / MB:.1f} MiB "
                                  f"(policy {info.get('maxmemory_policy', '?')})"))
    else:
        checks.append(HealthCheck(name=f"{label} memory", status="warn", value=round(used / MB, 1), unit="MiB",
                                  detail="no maxmemory: Redis may grow until the host runs out of memory"))
    status_ok = info.get("rdb_last_bgsave_status") == "ok"
    last = int(info.get("rdb_last_save_time", 0))
    age = max(0.0, now.timestamp() - last)
    if not status_ok:
        checks.append(HealthCheck(name=f"{label} last save", status="alert", value=round(age / 60, 1),
                                  unit="min since the last good save",
                                  detail="rdb_last_bgsave_status err: the last save FAILED (with "
                                  "stop-writes-on-bgsave-error, Redis now refuses writes: MISCONF)"))
    else:
        checks.append(HealthCheck(
            name=f"{label} last save", value=round(age / 60, 1), unit="min ago",
            status=grade(age, warn=settings.save_warn_age.total_seconds(),
                         alert=settings.save_alert_age.total_seconds()),
            detail=f"saved {datetime.fromtimestamp(last, now.tzinfo):%Y-%m-%d %H:%M:%S}Z; "
                   f"{int(info.get('rdb_changes_since_last_save', 0))} changes since"))
    clients = int(info.get("connected_clients", 0))
    percent = 100.0 * clients / max(maxclients, 1)
    checks.append(HealthCheck(name=f"{label} clients", value=clients, unit="connected clients",
                              status=grade(percent, warn=settings.clients_warn_percent,
                                           alert=settings.clients_alert_percent),
                              detail=f"{clients} of maxclients {maxclients}; "
                              f"{int(info.get('blocked_clients', 0))} blocked"))
    return checks
