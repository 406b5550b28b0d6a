"""PM2 apps and Compose services: the health rows and the restart-service runbook, on a real PM2 daemon of the
test's own (tests/pm2.py) and containers the test makes on the local Docker engine (tests/dockerd.py).

A crash-looping app is detected (> 3 restarts in 5 minutes), fixed, restarted by the runbook and healthy again;
one that stays broken escalates; a healthy app restarts and comes back; a Compose service's container is restarted
through the engine and is running and healthy again. The restart rate itself is tested on plain readings.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbooks.core.errors import ConfigurationError
from runbooks.decisions.services import CounterSample, restart_rate
from runbooks.flows.restart_service import RestartServiceParameters, RestartServiceResult, restart_service_flow
from runbooks.frame import outcome
from runbooks.settings import load_settings
from runbooks.settings.services import ServicesSettings
from runbooks.tasks.services import check_compose_health, check_pm2_health
from runbooks_sandbox import SandboxState
from tests.dockerd import BASE_IMAGE, labels_for
from tests.events import runbook_events
from tests.pm2 import Pm2Daemon, pm2_daemon_fixture  # noqa: F401 - the fixture pm2_daemon

# End to end on real processes (PM2 daemons, servers, approvals): the drills' half of the suite, run in CI too.
pytestmark = pytest.mark.slow

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sample(seconds: float, count: int, incarnation: str = "0@a") -> CounterSample:
    return CounterSample(at=at(seconds), count=count, incarnation=incarnation)


# -- the restart rate on plain readings ------------------------------------------------------------------------------

def test_the_rate_counts_from_the_earliest_reading_inside_the_window() -> None:
    history = [sample(0, 10), sample(200, 11), sample(400, 12)]
    rate = restart_rate(history, sample(600, 17), window_seconds=300)
    assert rate and (rate.count, rate.seconds, rate.within_window) == (5, 200, True)  # since the reading at 400 s


def test_a_reading_older_than_the_window_gives_a_longer_span_never_an_alert() -> None:
    rate = restart_rate([sample(0, 10)], sample(900, 20), window_seconds=300)
    assert rate and (rate.count, rate.within_window) == (10, False)
    from runbooks.decisions.services import grade_restarts
    assert grade_restarts(rate, alert=3)[0] == "warn"


def test_a_recreated_process_or_a_first_reading_gives_no_rate() -> None:
    assert restart_rate([sample(100, 50, "0@a")], sample(200, 2, "0@b"), window_seconds=300) is None
    assert restart_rate([], sample(200, 7), window_seconds=300) is None


def test_a_process_created_inside_the_window_counts_every_restart() -> None:
    rate = restart_rate([], sample(200, 7), window_seconds=300, created_at=at(100))
    assert rate and (rate.count, rate.seconds, rate.within_window) == (7, 100, True)


# -- PM2 -----------------------------------------------------------------------------------------------------------

def services_env(monkeypatch: pytest.MonkeyPatch, **sections: Any) -> None:
    monkeypatch.setenv("RUNBOOKS_SERVICES", json.dumps(sections))


def restart(**params: Any) -> tuple[Any, RestartServiceResult]:
    state = restart_service_flow(**{"reason": "test: crash loop", **params}, return_state=True)
    result = outcome(state)
    assert isinstance(result, RestartServiceResult), result
    return state, result


def test_a_crash_looping_app_is_detected_then_restarted_healthy_once_fixed(
        pm2_daemon: Pm2Daemon, config: SandboxState, simulator: httpx.Client, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pm2_daemon.wait("crashy", lambda app: app["pm2_env"]["restart_time"] > 3)
    services = ServicesSettings.model_validate({"pm2": {"crashy": pm2_daemon.service("crashy"),
                                                        "calm": pm2_daemon.service("calm")}})
    rows = {row.name: row for row in check_pm2_health.fn(services=services, state_file=tmp_path / "restarts.json")}
    assert rows["pm2 crashy"].status in ("alert", "failed"), rows  # failed once PM2 gives up on it (errored)
    assert rows["pm2 crashy"].value is not None and rows["pm2 crashy"].value > 3
    assert rows["pm2 calm"].status == "ok" and rows["pm2 calm"].value == 0
    assert rows["pm2 calm memory"].unit == "MB" and rows["pm2 calm memory"].status == "ok"
    assert (tmp_path / "restarts.json").stat().st_mode & 0o777 == 0o600

    pm2_daemon.marker.unlink()  # the fix
    services_env(monkeypatch, pm2={"crashy": pm2_daemon.service("crashy", verify_api="trading_api")})
    state, result = restart(service="crashy")
    assert state.is_completed(), result.error
    assert result.action == "restarted (healthy)" and result.recovery and result.recovery.healthy
    assert result.plan and result.plan.command.endswith(f"{pm2_daemon.ecosystem} --only crashy --update-env")
    assert result.api and result.api.status == "ok"  # the simulator's /api/v1/health
    app = pm2_daemon.jlist()["crashy"]
    assert app["pm2_env"]["status"] == "online"
    assert "RUNBOOKS_SERVICES" not in app["pm2_env"].get("env", {})  # --update-env gave it none of ours


def test_an_app_that_does_not_come_back_escalates(pm2_daemon: Pm2Daemon, config: SandboxState,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"crashy-{uuid.uuid4().hex[:8]}"  # this test's own resource, for its events
    services_env(monkeypatch, pm2={name: pm2_daemon.service("crashy", healthy_timeout_seconds=4,
                                                           escalation_severity="P1")})
    state, result = restart(service=name)
    assert state.is_failed()
    assert result.recovery and not result.recovery.healthy
    assert result.escalation and result.escalation.startswith(f"P1: {name} is not healthy 4 s after a restart")
    assert result.error and result.error.startswith("escalated:")
    events = runbook_events(f"runbooks.restart-service.{name}", names=["runbooks.escalation"],
                            until=lambda found: bool(found))
    assert [e.resource["runbooks.severity"] for e in events] == ["P1"]


def test_a_healthy_app_is_restarted_and_healthy_again_and_a_dry_run_restarts_nothing(
        pm2_daemon: Pm2Daemon, config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
    services_env(monkeypatch, pm2={"calm": pm2_daemon.service("calm")})
    before = pm2_daemon.wait("calm", lambda app: app["pm2_env"]["status"] == "online")
    state, dry = restart(service="calm", dry_run=True)
    assert state.is_completed() and dry.action == "dry run" and dry.plan and not dry.restarted
    assert pm2_daemon.jlist()["calm"]["pid"] == before["pid"]

    state, result = restart(service="calm")
    assert state.is_completed(), result.error
    after = pm2_daemon.jlist()["calm"]
    assert after["pid"] != before["pid"] and after["pm2_env"]["status"] == "online"
    assert after["pm2_env"]["restart_time"] == before["pm2_env"]["restart_time"] + 1  # one restart, not a spawn
    assert len([a for a in json.loads(pm2_daemon.pm2("jlist")) if a["name"] == "calm"]) == 1

    locks = load_settings().state_dir / "locks"  # another run of this service holds its lock: refused, untouched
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / "restart-service-calm.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        state, refused = restart(service="calm")
    finally:
        os.close(fd)
    assert state.is_failed() and refused.error and "holds this host's 'restart-service-calm' lock" in refused.error
    assert not refused.restarted and pm2_daemon.jlist()["calm"]["pid"] == after["pid"]


def test_an_unknown_service_is_refused_before_anything(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
    services_env(monkeypatch, pm2={})
    state, result = restart(service="nosuch")
    assert state.is_failed() and result.error and "no service 'nosuch' in [services]" in result.error
    with pytest.raises(ConfigurationError):
        RestartServiceParameters(service="nosuch", reason="x").check_against(load_settings())


def test_a_service_of_another_host_is_neither_read_nor_restarted_here(config: SandboxState, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = {"app": "x", "ecosystem_file": str(tmp_path / "ecosystem.config.cjs"), "on_host": "elsewhere"}
    services = ServicesSettings.model_validate({"pm2": {"x": elsewhere},
                                                "compose": {"y": {"project": "p", "service": "s",
                                                                  "on_host": "elsewhere"}}})
    assert check_pm2_health.fn(services=services, state_file=tmp_path / "r.json", host_name="here") == []
    assert check_compose_health.fn(services=services, state_file=tmp_path / "r.json", host_name="here") == []
    services_env(monkeypatch, pm2={"x": elsewhere})
    state, result = restart(service="x")
    assert state.is_failed() and result.error and "runs on host 'elsewhere'" in result.error and not result.plan


def test_no_configured_service_gives_no_rows(tmp_path: Path) -> None:
    services = ServicesSettings()
    assert check_pm2_health.fn(services=services, state_file=tmp_path / "r.json") == []
    assert check_compose_health.fn(services=services, state_file=tmp_path / "r.json") == []


# -- Compose -------------------------------------------------------------------------------------------------------

@pytest.fixture
def compose_container(docker_engine: Any, docker_label: str) -> Iterator[tuple[Any, str]]:
    """A running container labelled as Compose makes them (project of its own, service ``trading-api``), with a
    health check; removed by ``docker_label``'s teardown."""
    project = f"rb-test-{uuid.uuid4().hex[:8]}"
    labels = {**labels_for(docker_label), "com.docker.compose.project": project,
              "com.docker.compose.service": "trading-api", "com.docker.compose.oneoff": "False"}
    container = docker_engine.containers.create(
        BASE_IMAGE, ["sleep", "600"], network_mode="none", labels=labels, name=f"{project}-trading-api-1",
        healthcheck={"test": ["CMD", "true"], "interval": 300_000_000, "timeout": 2_000_000_000, "retries": 3})
    container.start()
    yield container, project


def test_a_compose_service_is_restarted_and_healthy_again(compose_container: tuple[Any, str], config: SandboxState,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    container, project = compose_container
    compose = {"api": {"project": project, "service": "trading-api", "stable_seconds": 1, "poll_seconds": 0.3,
                       "healthy_timeout_seconds": 30, "stop_timeout_seconds": 1, "verify_api": "none"}}
    container.reload()
    started_before = container.attrs["State"]["StartedAt"]
    services_env(monkeypatch, compose=compose)
    state, result = restart(service="api", reason="test: compose restart")
    assert state.is_completed(), result.error
    assert result.restarted == [f"{project}-trading-api-1"] and result.recovery and result.recovery.healthy
    container.reload()
    assert container.status == "running" and container.attrs["State"]["Health"]["Status"] == "healthy"
    assert container.attrs["State"]["StartedAt"] != started_before

    rows = check_compose_health.fn(services=ServicesSettings.model_validate({"compose": compose}),
                                state_file=tmp_path / "restarts.json")
    assert [(r.name, r.status) for r in rows] == [("compose api", "ok")], rows
    assert "running, healthy" in rows[0].detail

    missing = ServicesSettings.model_validate({"compose": {"gone": {"project": project, "service": "nope"}}})
    rows = check_compose_health.fn(services=missing, state_file=tmp_path / "restarts.json")
    assert rows[0].status == "failed" and "no container" in rows[0].detail


def test_a_socket_left_by_a_dead_daemon_is_not_a_daemon(tmp_path: Path) -> None:
    """A PM2 daemon killed with SIGKILL leaves rpc.sock behind: any pm2 command would start a fresh daemon and the
    app under the runbooks' user. The runbook refuses instead, and starts nothing (a hostile review's find)."""
    import socket

    from runbooks.adapters.pm2 import read_pm2, restart_pm2
    from runbooks.core.errors import ConfigurationError
    from runbooks.settings.services import Pm2Service

    home = tmp_path / "pm2home"
    home.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(home / "rpc.sock"))  # bound, never listening: what a killed daemon leaves
    (tmp_path / "ecosystem.config.js").write_text("module.exports = {apps: []};\n")
    service = Pm2Service(app="app", ecosystem_file=tmp_path / "ecosystem.config.js", pm2_home=home)
    for call in (read_pm2, restart_pm2):
        with pytest.raises(ConfigurationError, match="left by a daemon that died"):
            call(service)
    assert not (home / "pm2.pid").exists() and not (home / "pm2.log").exists()  # no daemon was started
