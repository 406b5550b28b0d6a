"""PM2 apps and Compose services as tasks: the health check's rows (status, restarts within the window, memory;
state, health, restart count), the restart of one, and the wait until it is healthy again.

The restart rate needs earlier readings of the same cumulative counter (PM2's ``restart_time``, Docker's
``RestartCount``): every health read appends its reading to a small file of this host's (``[services] state_file``,
default ``<state_dir>/services/restarts.json``, 0600), and ``runbooks.decisions.services.restart_rate`` computes the
count within the window from them. A file of this host's, not the backup repository: PM2 and the engine are read
from this host, the readings are worth minutes, and a health check must not depend on the repository answering.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger
from pydantic import BaseModel, TypeAdapter, ValidationError

from runbooks.adapters import compose, pm2
from runbooks.adapters.repository.local import make_private_dirs
from runbooks.core.errors import RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.health import HealthCheck
from runbooks.decisions.services import (
    ContainerReading,
    CounterSample,
    Pm2Reading,
    RestartRate,
    compose_checks,
    compose_healthy,
    keep_samples,
    pm2_checks,
    pm2_healthy,
    restart_rate,
)
from runbooks.settings.services import ComposeService, Pm2Service, ServicesSettings
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task

Kind = Literal["pm2", "compose"]
_SAMPLES = TypeAdapter(dict[str, list[CounterSample]])


class RestartCounters:
    """The counter readings kept between runs, one list per ``pm2:<name>`` / ``compose:<name>``. Read-modify-write
    under an ``flock`` (a health check and a restart may read at once); written whole to a temporary file and
    renamed, so a killed run leaves the old file or the new one. A file that does not parse is started afresh: the
    rate then waits for the next reading, which is all it costs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, key: str, current: CounterSample, *, window_seconds: float) -> list[CounterSample]:
        """Append ``current`` to ``key``'s readings; returns the earlier ones (for the rate)."""
        make_private_dirs(self.path.parent)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            samples = self._load()
            earlier = samples.get(key, [])
            samples[key] = keep_samples(earlier, current, window_seconds=window_seconds)
            self._save(samples)
            return earlier
        finally:
            os.close(fd)

    def _load(self) -> dict[str, list[CounterSample]]:
        try:
            return _SAMPLES.validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (ValidationError, ValueError, OSError):
            return {}

    def _save(self, samples: dict[str, list[CounterSample]]) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(_SAMPLES.dump_json(samples))
        os.replace(temporary, self.path)


def _rate(counters: RestartCounters, key: str, current: CounterSample, *, window_seconds: float,
          created_at: datetime | None) -> RestartRate | None:
    try:
        earlier = counters.record(key, current, window_seconds=window_seconds)
    except OSError as exc:  # no history to be had: the rate says "first reading" rather than fail the check
        get_run_logger().warning("Restart counters not kept in %s (%s): no restart rate", counters.path, exc.strerror)
        earlier = []
    return restart_rate(earlier, current, window_seconds=window_seconds, created_at=created_at)


def _failed(name: str, exc: RunbookError) -> HealthCheck:
    return HealthCheck(name=name, status="failed", detail=scrub(exc.message)[:300])


# -- health rows ---------------------------------------------------------------------------------------------------

@step_task("check-pm2-health")
def check_pm2_health(*, services: ServicesSettings, state_file: Path, host_name: str | None = None
                     ) -> list[HealthCheck]:
    """The operations runbook's ``pm2 status`` against its P0 "PM2 High Restart Rate": per configured app, its
    status and restarts within the window (> ``restarts_alert`` is an alert), and its memory.

    Args:
        services: ``[services]``; only its ``pm2`` apps are read (none configured: no rows).
        state_file: where the counter readings are kept between runs.
        host_name: this host; an app whose ``on_host`` names another is left out (None: every app).
    Returns:
        Two rows per app (``pm2 <name>``, ``pm2 <name> memory``), one failed row if PM2 could not be read.
    """
    counters = RestartCounters(state_file)
    rows: list[HealthCheck] = []
    for name, service in sorted(services.pm2.items()):
        if host_name is not None and not service.here(host_name):
            continue
        started = time.monotonic()
        try:
            readings = pm2.read_pm2(service)
        except RunbookError as exc:
            rows.append(_failed(f"pm2 {name}", exc))
            continue
        rate = None
        if readings:
            current = CounterSample(at=datetime.now(UTC), count=sum(r.restarts for r in readings),
                                    incarnation=",".join(r.incarnation for r in readings))
            created = [r.created_at for r in readings if r.created_at]
            rate = _rate(counters, f"pm2:{name}", current, window_seconds=service.restart_window_seconds,
                         created_at=min(created) if len(created) == len(readings) else None)
        found = pm2_checks(name, service.app, readings, rate, restarts_alert=service.restarts_alert,
                           memory_warn_mb=service.memory_warn_mb, memory_alert_mb=service.memory_alert_mb)
        for row in found:
            row.seconds = time.monotonic() - started
        rows += found
    return rows


@step_task("check-compose-health")
def check_compose_health(*, services: ServicesSettings, state_file: Path, host_name: str | None = None
                         ) -> list[HealthCheck]:
    """The operations runbook's ``docker compose ps``: per configured service, the state and health of its
    containers and their restarts within the window.

    Args:
        services: ``[services]``; only its ``compose`` services are read (none configured: no rows).
        state_file: where the counter readings are kept between runs.
        host_name: this host; a service whose ``on_host`` names another is left out (None: every service).
    Returns:
        One row per service (``compose <name>``); failed when the engine did not answer or no container is there.
    """
    counters = RestartCounters(state_file)
    rows: list[HealthCheck] = []
    for name, service in sorted(services.compose.items()):
        if host_name is not None and not service.here(host_name):
            continue
        started = time.monotonic()
        try:
            client = compose.connect(service)
            try:
                containers = compose.read_containers(client, service)
            finally:
                client.close()
        except RunbookError as exc:
            rows.append(_failed(f"compose {name}", exc))
            continue
        now = datetime.now(UTC)
        rates = [_rate(counters, f"compose:{name}:{c.name}",
                       CounterSample(at=now, count=c.restart_count, incarnation=c.incarnation),
                       window_seconds=service.restart_window_seconds, created_at=None) for c in containers]
        found = compose_checks(name, f"{service.project}/{service.service}", containers, rates,
                               restarts_alert=service.restarts_alert)
        for row in found:
            row.seconds = time.monotonic() - started
        rows += found
    return rows


# -- reads, restarts and the wait ----------------------------------------------------------------------------------

@step_task("read-pm2-app", **TRANSIENT_RETRY)
def read_pm2_app(*, service: Pm2Service) -> list[Pm2Reading]:
    """The app's instances in ``pm2 jlist`` (empty: PM2 runs no such app)."""
    return pm2.read_pm2(service)


@step_task("restart-pm2-app", mutates=True)
def restart_pm2_app(*, name: str, service: Pm2Service) -> None:
    """``pm2 restart <ecosystem file> --only <app> --update-env``. Not retried: a second restart of an app the
    first one may have restarted is a second outage."""
    pm2.restart_pm2(service)
    get_run_logger().info("Restarted PM2 app %r (%r) from %s", name, service.app, service.ecosystem_file)


@step_task("read-compose-service", **TRANSIENT_RETRY)
def read_compose_service(*, service: ComposeService, client: Any = None) -> list[ContainerReading]:
    """The service's containers, by the Compose labels."""
    own = client is None
    client = client or compose.connect(service)
    try:
        return compose.read_containers(client, service)
    finally:
        if own:
            client.close()


@step_task("restart-compose-service", mutates=True)
def restart_compose_service(*, name: str, service: ComposeService, containers: list[ContainerReading],
                            client: Any = None) -> list[str]:
    """``docker restart`` of each container of the service (those read in the plan). Not retried, as above."""
    own = client is None
    client = client or compose.connect(service)
    try:
        restarted = compose.restart_containers(client, service, containers)
    finally:
        if own:
            client.close()
    get_run_logger().info("Restarted Compose service %r (%s/%s): %s", name, service.project, service.service,
                          ", ".join(repr(c) for c in restarted) or "no container")
    return restarted


class Recovery(BaseModel):
    healthy: bool
    detail: str
    readings: int
    seconds: float


@step_task("wait-until-service-healthy")
def wait_until_service_healthy(*, kind: Kind, service: Pm2Service | ComposeService, restarted_at: datetime,
                               client: Any = None) -> Recovery:
    """Read the service every ``poll_seconds`` until it is healthy (``decisions.services.pm2_healthy`` /
    ``compose_healthy``) or ``healthy_timeout_seconds`` have passed. A read that fails counts as not healthy yet.

    Returns:
        Whether it came back, the last reading's words, how many reads and how long it took.
    """
    started = time.monotonic()
    deadline = started + service.healthy_timeout_seconds
    judge: Callable[[], tuple[bool, str]]
    own = False
    if kind == "pm2":
        assert isinstance(service, Pm2Service)
        pm2_service = service

        def judge() -> tuple[bool, str]:
            return pm2_healthy(pm2.read_pm2(pm2_service), restarted_at=restarted_at, now=datetime.now(UTC),
                               stable_seconds=pm2_service.stable_seconds)
    else:
        assert isinstance(service, ComposeService)
        compose_service = service
        clients: list[Any] = [client] if client is not None else []
        own = client is None

        def judge() -> tuple[bool, str]:
            if not clients:  # connected here, inside the loop: an engine that is slow to answer is "not yet"
                clients.append(compose.connect(compose_service))
            return compose_healthy(compose.read_containers(clients[0], compose_service), restarted_at=restarted_at,
                                   now=datetime.now(UTC), stable_seconds=compose_service.stable_seconds)
    readings = 0
    try:
        while True:
            readings += 1
            try:
                healthy, detail = judge()
            except RunbookError as exc:
                healthy, detail = False, scrub(exc.message)[:300]
            if healthy or time.monotonic() >= deadline:
                return Recovery(healthy=healthy, detail=detail, readings=readings,
                                seconds=time.monotonic() - started)
            time.sleep(min(service.poll_seconds, max(deadline - time.monotonic(), 0.05)))
    finally:
        if own and kind == "compose" and clients:
            clients[0].close()


def state_file_of(services: ServicesSettings, state_dir: Path) -> Path:
    """Where the counter readings live (the setting, else under the state directory)."""
    return services.counters_file(state_dir.expanduser())


__all__ = ["Recovery", "RestartCounters", "check_compose_health", "check_pm2_health", "read_compose_service",
           "read_pm2_app", "restart_compose_service", "restart_pm2_app", "state_file_of",
           "wait_until_service_healthy"]
