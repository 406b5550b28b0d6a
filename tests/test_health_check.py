"""The daily health check against the sandbox: the simulator's API over real HTTP, its PostgreSQL, a real log
file, this host's /proc, and a real webhook receiving the on-call notification."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbooks.adapters.host import count_matching_tail
from runbooks.flows.health_check import HealthCheckResult, health_check_flow, render_report
from runbooks.frame import outcome
from runbooks_sandbox import SandboxState
from tests.events import runbook_events
from tests.redisfixtures import RedisServer


def run_check(**params: Any) -> tuple[Any, HealthCheckResult]:
    state = health_check_flow(**params, return_state=True)
    return state, outcome(state)


@pytest.fixture
def relaxed_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared CI host's own disk, memory and CPU are not what these tests are about."""
    for name in ("disk", "memory", "cpu"):
        monkeypatch.setenv(f"RUNBOOKS_HEALTH__{name.upper()}_WARN_PERCENT", "99.9")
        monkeypatch.setenv(f"RUNBOOKS_HEALTH__{name.upper()}_ALERT_PERCENT", "100")
    monkeypatch.setenv("RUNBOOKS_HEALTH__CPU_WINDOW_SECONDS", "1")  # the default 30 s window, shortened


def test_a_healthy_platform_passes_and_reports_every_check(config: SandboxState, simulator: httpx.Client,
                                                           relaxed_host: None, tmp_path: Path,
                                                           redis_server: RedisServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    redis_server.env(monkeypatch, "memory")
    log = tmp_path / "combined.log"
    log.write_text("".join(f"2026-11-24 06:{i:02d} INFO order {i} filled\n" for i in range(50))
                   + "2026-11-24 06:59 ERROR broker timeout\n")
    monkeypatch.setenv("RUNBOOKS_HEALTH__ERROR_LOGS", json.dumps([str(log)]))
    state, result = run_check()
    assert state.is_completed() and result.succeeded and result.status in ("ok", "warn")
    names = [c.name for c in result.checks]
    assert names[:3] == ["trading API", "inference API", "database trading_db"]
    assert {"memory", "cpu", "redis memory", "redis memory last save", "redis memory clients",
            f"errors in {log}"} <= set(names)
    assert not [c for c in result.checks if c.status == "not_configured"]  # no placeholders (issue 29)
    errors = next(c for c in result.checks if c.name == f"errors in {log}")
    assert errors.value == 1 and errors.status == "ok" and "broker timeout" in errors.detail
    cpu = next(c for c in result.checks if c.name == "cpu")  # graded on a window's average, which the report shows
    assert cpu.detail.startswith("average over 1 s; 6 samples every") and cpu.seconds >= 1
    assert "# Daily health check" in render_report(result) and cpu.detail in render_report(result)


def test_an_api_down_and_an_error_storm_fail_the_run_and_notify(config: SandboxState, simulator: httpx.Client,
                                                                relaxed_host: None, tmp_path: Path, webhook: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    received, canary = webhook  # the fixture names the block in the settings; its URL carries a canary
    log = tmp_path / "combined.log"
    log.write_text("unauthorized access from 10.0.0.9\n" * 150)
    monkeypatch.setenv("RUNBOOKS_HEALTH__ERROR_LOGS", json.dumps([str(log)]))
    simulator.post("/_control/failures", json={"path_prefix": "/api/v1/health", "status": 503, "count": 100})
    state, result = run_check()
    assert state.is_failed() and not result.succeeded
    by_name = {c.name: c for c in result.checks}
    assert by_name["trading API"].status == "failed" and by_name[f"errors in {log}"].status == "alert"
    assert by_name["database trading_db"].status == "ok"
    assert received and "Health check: failed" in json.dumps(received[-1])
    assert canary not in json.dumps(result.model_dump(mode="json"))  # the webhook URL is a secret
    assert any("trading API" in step for step in result.next_steps)


def test_a_database_that_does_not_answer_fails_the_run(config: SandboxState, simulator: httpx.Client,
                                                       relaxed_host: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_DATABASES__TRADING_DB__DSN", "postgresql://nobody@127.0.0.1:1/trading_db")
    state, result = run_check(host=False)
    check = next(c for c in result.checks if c.name == "database trading_db")
    assert state.is_failed() and check.status == "failed" and check.detail
    # The USD/COP playbook: a database unavailable is P0; the escalation is what the stop-on-P0 automation matches.
    run_id = str(state.state_details.flow_run_id)
    events = runbook_events("runbooks.health-check.platform", names=["runbooks.escalation"], until=lambda found: any(
        any(r.id == f"prefect.flow-run.{run_id}" for r in e.related) for e in found))
    [escalation] = [e for e in events if any(r.id == f"prefect.flow-run.{run_id}" for r in e.related)]
    assert escalation.resource["runbooks.severity"] == "P0" and escalation.payload["severity"] == "P0"
    assert "database trading_db unavailable" in escalation.payload["reason"]


def test_a_healthy_database_raises_no_escalation(config: SandboxState, simulator: httpx.Client,
                                                 relaxed_host: None) -> None:
    state, _result = run_check(host=False)
    run_id = str(state.state_details.flow_run_id)
    events = runbook_events("runbooks.health-check.platform", names=["runbooks.health-check.status"],
                            until=lambda found: any(any(r.id == f"prefect.flow-run.{run_id}" for r in e.related)
                                                    for e in found))
    assert any(any(r.id == f"prefect.flow-run.{run_id}" for r in e.related) for e in events)
    escalations = runbook_events("runbooks.health-check.platform", names=["runbooks.escalation"], timeout=0)
    assert not [e for e in escalations if any(r.id == f"prefect.flow-run.{run_id}" for r in e.related)]


def test_only_the_tail_of_a_log_is_read(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    with log.open("w") as out:
        out.write("ERROR old\n" * 100_000)
        out.write("INFO fine\n" * 20_000)
        out.write("Failed login\n" * 3)
    assert count_matching_tail(log, r"(error|unauthorized|failed)", lines=10_000) == (3, "Failed login")
    assert count_matching_tail(log, r"(error|unauthorized|failed)", lines=20_004)[0] == 4
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert count_matching_tail(empty, "error", lines=10) == (0, "")
    assert os.path.getsize(log) > 1_000_000


# -- issue 26: several hosts ------------------------------------------------------------------------------------------
def flow_run_name(state: Any) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).name


def test_a_run_for_another_host_judges_nothing(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-host deployment's run that another host's worker picked up would report this host's disk, memory and CPU
    as that host's: it fails at its first step, saying why, with no check taken."""
    monkeypatch.setenv("RUNBOOKS_HOST_NAME", "worker-1")
    state, result = run_check(on_host="worker-2", platform=False)
    assert state.is_failed() and result.checks == [], result.checks
    assert result.error and "is for host 'worker-2', but it runs on 'worker-1'" in result.error and "HINT:" in \
        result.error
    assert [t.step for t in result.timeline] == ["check host"]
    assert flow_run_name(state).startswith("health-check-worker-2-host-only-")


def test_a_per_host_run_checks_only_its_host(config: SandboxState, simulator: httpx.Client, relaxed_host: None,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each host's copy of health-check-daily does: this host's disk, memory and CPU, named in the report; the
    APIs, databases and logs are the fleet-wide run's (a trading API outage here pages nobody from this run)."""
    monkeypatch.setenv("RUNBOOKS_HOST_NAME", "worker-1")
    log = tmp_path / "combined.log"
    log.write_text("ERROR broker timeout\n" * 500)
    monkeypatch.setenv("RUNBOOKS_HEALTH__ERROR_LOGS", json.dumps([str(log)]))
    simulator.post("/_control/failures", json={"path_prefix": "/api/v1/health", "status": 503, "count": 100})
    state, result = run_check(on_host="worker-1", platform=False)
    assert state.is_completed() and result.succeeded and result.host == "worker-1", (result.error, result.checks)
    names = {c.name for c in result.checks}
    assert {"memory", "cpu"} <= names and not names & {"trading API", "inference API", "database trading_db",
                                                       f"errors in {log}"}, names
    assert "UTC on worker-1," in render_report(result)
    fleet_state, fleet = run_check(host=False)  # the fleet-wide part: no host named, the outage found
    assert fleet_state.is_failed() and fleet.host is None and "trading API" in {c.name for c in fleet.checks}


def test_nothing_to_check_is_refused_before_the_run() -> None:
    from runbooks.flows.health_check import HealthCheckParameters
    from runbooks.frame.parameters import InvalidParameters

    with pytest.raises(ValueError, match="nothing to check"):
        HealthCheckParameters(host=False, platform=False)
    state = health_check_flow(host=False, platform=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(InvalidParameters, match="nothing to check"):
        state.result()
