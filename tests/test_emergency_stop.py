"""The emergency-stop runbook against the simulator over real HTTP and the sandbox's real trading database: the API
kill switch in one step; an API that fails, hangs or lies falls through to the database switch, read back; both
failing pages P0 naming both; an environment switch (a real command) after them; a platform already halted is left
as it was. The simulated platform honours the database row, as the trading system runbook's switch expects."""

from __future__ import annotations

import json
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from runbooks.adapters.repository import open_repository
from runbooks.adapters.trading_holds import TradingHolds, halt_scope
from runbooks.flows.emergency_stop import EmergencyStopResult, emergency_stop_flow
from runbooks.frame import outcome
from runbooks.settings import load_settings
from runbooks.tasks.trading_api import halt_trading, read_trading_status
from runbooks_sandbox import SandboxState
from runbooks_sandbox.environment import DATABASE
from tests.events import runbook_events, steps_of
from tests.pgfixtures import admin_dsn
from tests.runs import without_retry_delays

KILL = "/api/v1/operations/kill-switch"


@pytest.fixture
def platform(config: SandboxState, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> httpx.Client:
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__API_BUDGET_SECONDS", "3")
    without_retry_delays(monkeypatch, halt_trading, read_trading_status)
    return simulator


def stop(**params: Any) -> tuple[Any, EmergencyStopResult]:
    state = emergency_stop_flow(**{"reason": "desk says stop", **params}, return_state=True)
    result = outcome(state)
    assert isinstance(result, EmergencyStopResult), result
    return state, result


def database_row(config: SandboxState) -> str:
    with psycopg.connect(admin_dsn(config, DATABASE)) as conn:
        row = conn.execute("SELECT value FROM system_config WHERE key = 'trading_mode'").fetchone()
    assert row is not None
    return str(row[0])


def status(simulator: httpx.Client) -> dict[str, Any]:
    return dict(simulator.get("/api/v1/operations/status").json())


def kill_calls(simulator: httpx.Client) -> list[dict[str, Any]]:
    return [c for c in simulator.get("/_control/state").json()["calls"] if c["path"] == KILL]


def test_the_api_kill_switch_halts_in_one_step_and_pages_p0(platform: httpx.Client, config: SandboxState,
                                                              webhook: Any) -> None:
    received, _ = webhook
    state, result = stop(initiated_by="alice")
    assert state.is_completed(), result.error
    assert result.halted_via == "api" and result.verified_by == "trading API status"
    assert [a.switch for a in result.attempts] == ["api"]
    now = status(platform)
    assert now["trading_mode"] == "halted" and now["paused_by"].startswith("runbooks-emergency-stop")
    assert "desk says stop" in now["reason"] and "alice" in now["reason"]
    assert database_row(config) == "live"  # the next switch was not needed
    # The runbooks' own record of the halt, read from the repository: what resume-trading attributes it by.
    record = TradingHolds(open_repository(load_settings().repository), halt_scope(load_settings())).get(
        "emergency-stop")
    assert record is not None and record == result.record
    assert (record.actor, record.changed_at, record.mode) == (now["paused_by"], now["changed_at"], "halted")
    assert len(received) == 1 and received[0]["text"].startswith("[P0] INCIDENT: EMERGENCY STOP: trading halted")
    events = runbook_events("runbooks.emergency-stop.trading", until=lambda e: any(
        x.event == "runbooks.trading.halted" for x in e))
    assert ("started", "kill switch: api") in steps_of(events)
    halted = [e for e in events if e.event == "runbooks.trading.halted"]
    assert halted and halted[-1].payload["how"] == "api"


@pytest.mark.parametrize("fault", ["fails", "hangs", "lies"])
def test_an_api_switch_that_does_not_take_falls_through_to_the_database_switch(
        platform: httpx.Client, config: SandboxState, fault: str) -> None:
    if fault == "fails":
        platform.post("/_control/failures", json={"path_prefix": KILL, "status": 503, "count": 100}).raise_for_status()
    elif fault == "hangs":
        platform.post("/_control/latency", json={"path_prefix": KILL, "seconds": 30}).raise_for_status()
    else:
        platform.post("/_control/kill-switch", json={"ignored": True}).raise_for_status()
    state, result = stop()
    assert state.is_completed(), result.error
    assert [(a.switch, a.outcome) for a in result.attempts] == [("api", "failed"), ("database", "halted")]
    assert result.halted_via == "database" and result.verified_by == "trading API status"  # the platform took it
    assert database_row(config) == "halt"
    now = status(platform)
    assert now["trading_mode"] == "halted"  # the simulated platform honours its database switch
    assert result.record and (result.record.actor, result.record.changed_at) == (now["paused_by"], now["changed_at"])


def test_both_switches_failing_fail_the_run_with_a_p0_page_naming_both(
        platform: httpx.Client, config: SandboxState, monkeypatch: pytest.MonkeyPatch, webhook: Any) -> None:
    received, _ = webhook
    platform.post("/_control/failures", json={"path_prefix": KILL, "status": 500, "count": 100}).raise_for_status()
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__DATABASE__TABLE", "no_such_config")
    state, result = stop()
    assert state.is_failed()
    assert [(a.switch, a.outcome) for a in result.attempts] == [("api", "failed"), ("database", "failed")]
    assert result.error and "could NOT be halted" in result.error and "api: failed" in result.error
    assert "database: failed" in result.error and "no_such_config" in result.error
    assert status(platform)["trading_mode"] == "running" and database_row(config) == "live"
    assert len(received) == 1
    page = received[0]["text"]
    assert page.startswith("[P0] INCIDENT: EMERGENCY STOP FAILED") and "api: failed" in page
    assert "database: failed" in page


def test_the_environment_switch_runs_its_command_with_trading_mode_set_and_is_read_back(
        platform: httpx.Client, config: SandboxState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A stand-in for ``docker compose up -d --force-recreate``: services that read TRADING_MODE at start and
    publish it in the trading-mode row (a real process, a real database)."""
    script = tmp_path / "restart-services"
    seen = tmp_path / "seen.json"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys, psycopg\n"
        f"json.dump({{'mode': os.environ.get('TRADING_MODE')}}, open({str(seen)!r}, 'w'))\n"
        f"with psycopg.connect({admin_dsn(config, DATABASE)!r}) as conn:\n"
        "    conn.execute(\"UPDATE system_config SET value = %s WHERE key = 'trading_mode'\", "
        "[os.environ['TRADING_MODE']])\n")
    script.chmod(stat.S_IRWXU)
    platform.post("/_control/failures", json={"path_prefix": KILL, "status": 503, "count": 100}).raise_for_status()
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__SWITCHES", '["api", "environment"]')
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__ENVIRONMENT", json.dumps({"command": [str(script)]}))
    state, result = stop()
    assert state.is_completed(), result.error
    assert [(a.switch, a.outcome) for a in result.attempts] == [("api", "failed"), ("environment", "halted")]
    assert json.loads(seen.read_text()) == {"mode": "halt"}
    assert result.verified_by == "trading API status"  # the platform halted on the row the services wrote


def test_an_environment_command_that_fails_is_reported_with_its_last_line(
        platform: httpx.Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "restart-services"
    script.write_text("#!/bin/sh\necho 'compose: no such service: trading-api' >&2\nexit 3\n")
    script.chmod(stat.S_IRWXU)
    platform.post("/_control/failures", json={"path_prefix": KILL, "status": 503, "count": 100}).raise_for_status()
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__SWITCHES", '["api", "environment"]')
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__ENVIRONMENT", json.dumps({"command": [str(script)]}))
    state, result = stop()
    assert state.is_failed()
    assert result.attempts[-1].outcome == "failed"
    assert "exited 3" in result.attempts[-1].detail and "no such service" in result.attempts[-1].detail


@pytest.mark.parametrize("how", ["api", "database row, the API unreadable"])
def test_a_platform_already_halted_is_left_as_it_was(platform: httpx.Client, config: SandboxState,
                                                     how: str) -> None:
    if how == "api":
        platform.post("/api/v1/operations/kill-switch",
                      json={"reason": "risk desk", "activated_by": "bob"}).raise_for_status()
    else:
        with psycopg.connect(admin_dsn(config, DATABASE)) as conn:
            conn.execute("UPDATE system_config SET value = 'halt' WHERE key = 'trading_mode'")
        platform.post("/_control/failures", json={"path_prefix": "/api/v1/operations", "status": 503,
                                                  "count": 1000}).raise_for_status()
    before = kill_calls(platform)
    state, result = stop()
    assert state.is_completed() and result.already_halted and result.attempts == []
    assert kill_calls(platform) == before  # nothing pressed again: who halted it and why stay as they were
    if how == "api":
        assert "bob" in result.already_halted and status(platform)["paused_by"] == "bob"
    else:
        assert result.already_halted.startswith("the trading API cannot be read and the database row")


@pytest.fixture
def unread_table(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A trading-mode table the simulated platform does not read: a row that says halt while trading goes on."""
    with psycopg.connect(admin_dsn(config, DATABASE), autocommit=True) as conn:
        conn.execute("CREATE TABLE unread_config (key text PRIMARY KEY, value text NOT NULL, "
                     "updated_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO unread_config VALUES ('trading_mode', 'live')")
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__DATABASE__TABLE", "unread_config")
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__HONOUR_SECONDS", "1")
    try:
        yield "unread_config"
    finally:
        with psycopg.connect(admin_dsn(config, DATABASE), autocommit=True) as conn:
            conn.execute("DROP TABLE unread_config")


def test_a_row_that_says_halt_while_the_api_says_running_is_not_a_halt(platform: httpx.Client, config: SandboxState,
                                                                       unread_table: str) -> None:
    with psycopg.connect(admin_dsn(config, DATABASE), autocommit=True) as conn:
        conn.execute(f"UPDATE {unread_table} SET value = 'halt'")
    state, result = stop()
    assert state.is_completed() and not result.already_halted and result.halted_via == "api"
    assert status(platform)["trading_mode"] == "halted"


def test_a_database_switch_the_platform_does_not_take_is_a_failure(platform: httpx.Client, config: SandboxState,
                                                                   unread_table: str, webhook: Any) -> None:
    received, _ = webhook
    platform.post("/_control/failures", json={"path_prefix": KILL, "status": 503, "count": 100}).raise_for_status()
    state, result = stop()
    assert state.is_failed() and [(a.switch, a.outcome) for a in result.attempts] == [("api", "failed"),
                                                                                     ("database", "failed")]
    assert "still reads 'running'" in result.attempts[1].detail and status(platform)["trading_mode"] == "running"
    assert received and received[-1]["text"].startswith("[P0] INCIDENT: EMERGENCY STOP FAILED")


def test_a_timestamp_column_that_is_not_one_does_not_stop_the_stop(platform: httpx.Client, config: SandboxState,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A schema mistake in the database switch (its time column holds text) fails that switch alone: the read
    before and the switch report it, and the API's switch is still pressed."""
    with psycopg.connect(admin_dsn(config, DATABASE), autocommit=True) as conn:
        conn.execute("CREATE TABLE text_time_config (key text PRIMARY KEY, value text NOT NULL, updated_at text)")
        conn.execute("INSERT INTO text_time_config VALUES ('trading_mode', 'live', 'yesterday')")
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__DATABASE__TABLE", "text_time_config")
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__SWITCHES", '["database", "api"]')
    try:
        state, result = stop()
    finally:
        with psycopg.connect(admin_dsn(config, DATABASE), autocommit=True) as conn:
            conn.execute("DROP TABLE text_time_config")
    assert state.is_completed() and result.halted_via == "api", result.error
    assert result.attempts[0].outcome == "failed" and "not a timestamp" in result.attempts[0].detail


@pytest.mark.parametrize("reason", ["  ", "\u200b", "\u200b\t\u2028"])
def test_a_reason_a_reader_cannot_see_is_refused_before_anything_is_pressed(platform: httpx.Client,
                                                                            reason: str) -> None:
    before = kill_calls(platform)
    state = emergency_stop_flow(reason=reason, return_state=True)
    assert state.is_failed() and "reason" in (state.message or "")
    assert kill_calls(platform) == before and status(platform)["trading_mode"] == "running"


def test_a_reason_with_line_breaks_or_bidi_controls_is_cleaned_not_refused(platform: httpx.Client) -> None:
    """An automation fills the reason from an event: a stop must never fail on its wording."""
    state, result = stop(reason="feed\ndown\u2028since 09:00 \u202eP0\t!")
    assert state.is_completed() and result.reason == "feed down since 09:00 P0 !"
    assert "feed down since 09:00 P0 !" in status(platform)["reason"]


def test_the_simulated_platform_honours_and_resume_lifts_the_database_switch(platform: httpx.Client,
                                                                              config: SandboxState) -> None:
    with psycopg.connect(admin_dsn(config, DATABASE)) as conn:
        conn.execute("UPDATE system_config SET value = 'halt' WHERE key = 'trading_mode'")
    now = status(platform)
    assert now["trading_mode"] == "halted" and now["database_mode"] == "halt"
    platform.post("/api/v1/operations/resume", json={"resumed_by": "oncall", "confirmation_code": "CONFIRM_RESUME"}
                  ).raise_for_status()
    assert status(platform)["trading_mode"] == "running" and database_row(config) == "live"


def test_a_kill_switch_held_across_a_reset_is_dropped_not_applied_later(platform: httpx.Client) -> None:
    """The hang above leaves a request asleep in the simulator; it must not halt the next test's platform."""
    import threading

    platform.post("/_control/latency", json={"path_prefix": KILL, "seconds": 1.5}).raise_for_status()
    answers: list[int] = []
    held = threading.Thread(target=lambda: answers.append(platform.post(
        KILL, json={"reason": "late", "activated_by": "nobody"}, timeout=10).status_code))
    held.start()
    deadline = time.monotonic() + 10
    while not kill_calls(platform) and time.monotonic() < deadline:  # the request is in, asleep in the simulator
        time.sleep(0.05)
    platform.post("/_control/reset").raise_for_status()
    held.join(10)
    assert answers == [503] and status(platform)["trading_mode"] == "running"
