"""Change windows: heavy or destructive work waits for every gating market's close unless given a reason."""

from __future__ import annotations

import os
from datetime import datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from runbooks.core.errors import OutsideChangeWindow
from runbooks.core.market_time import MarketCalendar
from runbooks.flows.restore import render_report
from runbooks.frame.window import change_window, require_change_window
from runbooks_sandbox import SandboxState
from tests.markets import closed_now, open_now, set_markets
from tests.pgfixtures import content_checksums, databases
from tests.processes import cli
from tests.runs import restore
from tests.test_restore import source  # noqa: F401 - the fixture

COT = ZoneInfo("America/Bogota")
USD_COP = MarketCalendar(name="usd_cop", timezone="America/Bogota", open=time(8), close=time(13), holidays="CO")


def test_in_session_without_a_reason_is_refused_naming_the_market_and_the_close() -> None:
    with pytest.raises(OutsideChangeWindow) as caught:
        require_change_window({"usd_cop": USD_COP}, work="restore replace of trading_db", in_session_reason=None,
                              at=datetime(2026, 12, 7, 10, 0, tzinfo=COT))
    message = str(caught.value)
    assert "restore replace of trading_db" in message and "'usd_cop' is in session" in message
    assert "2026-12-07 18:00 UTC" in message and "in_session_reason" in message


@pytest.mark.parametrize("reason", ["  ", "\t\n", "\u200b", " \u2060 ", "\u3164\u2800"])
def test_a_blank_or_invisible_reason_is_no_reason(reason: str) -> None:
    with pytest.raises(OutsideChangeWindow):
        require_change_window({"usd_cop": USD_COP}, work="x", in_session_reason=reason,
                              at=datetime(2026, 12, 7, 10, 0, tzinfo=COT))


def test_in_session_with_a_reason_goes_on_and_says_so() -> None:
    window = require_change_window({"usd_cop": USD_COP}, work="x", in_session_reason="INC-42: database corrupt",
                                   at=datetime(2026, 12, 7, 10, 0, tzinfo=COT))
    assert window.in_session and window.in_session_reason == "INC-42: database corrupt"
    assert "IN SESSION: usd_cop" in window.summary() and "INC-42" in window.summary()


@pytest.mark.parametrize("at", [datetime(2026, 12, 7, 13, 5, tzinfo=COT),   # after the close
                                datetime(2026, 12, 5, 10, 0, tzinfo=COT),   # Saturday
                                datetime(2027, 1, 11, 10, 0, tzinfo=COT)])  # Epiphany (observed)
def test_outside_the_session_nothing_is_asked(at: datetime) -> None:
    window = require_change_window({"usd_cop": USD_COP}, work="x", in_session_reason=None, at=at)
    assert not window.in_session and window.summary() == "outside every gating market's session"


def test_no_gating_market_means_no_window() -> None:
    assert not change_window({}, work="x", in_session_reason=None).in_session


def test_only_markets_that_close_gate_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runbooks.settings import load_settings

    monkeypatch.delenv("RUNBOOKS_MARKETS", raising=False)
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(tmp_path / "empty.toml"))
    settings = load_settings()
    assert set(settings.calendars()) == {"usd_cop", "crypto"}
    assert set(settings.calendars(gating_only=True)) == {"usd_cop"}


def test_disk_cleanup_waits_for_the_close_before_vacuum_full_not_before_file_rules(
        config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
    from runbooks.flows.disk_cleanup import CleanupParameters
    from runbooks.settings import load_settings

    set_markets(monkeypatch, fx=open_now(), crypto={"always_open": True})
    settings = load_settings()
    heavy = CleanupParameters(dry_run=False, vacuum_full=["trading_db.public.trades"])
    with pytest.raises(OutsideChangeWindow, match=r"VACUUM FULL while market 'fx' is in session 10:00-15:00"):
        heavy.check_against(settings)
    window = CleanupParameters(dry_run=False, vacuum_full=["trading_db.public.trades"],
                               in_session_reason="disk at 97 %, INC-7").change_window(settings)
    assert window is not None and window.in_session and window.in_session_reason == "disk at 97 %, INC-7"
    CleanupParameters(dry_run=True, vacuum_full=["trading_db.public.trades"]).check_against(settings)
    CleanupParameters(dry_run=False, rules=["old-logs"]).check_against(settings)  # file rules never wait

    set_markets(monkeypatch, fx=closed_now())
    assert CleanupParameters(dry_run=False, vacuum_full=["trading_db.public.trades"]).change_window(
        load_settings()) is not None


def test_a_replace_in_session_is_refused_without_a_reason_and_goes_on_with_one(
        config: SandboxState, source: str, simulator: httpx.Client,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, prefect_api: str) -> None:
    set_markets(monkeypatch, fx=open_now())
    _, dry = restore(database=source, mode="replace", dry_run=True)  # a dry run says what the window would do
    assert dry.change_window.in_session and dry.status == "dry_run"
    assert "a real replace would be refused without in_session_reason" in render_report(dry)

    before, content = databases(config), content_checksums(config, source)
    proc = cli({**os.environ, "PREFECT_API_URL": prefect_api}, "run", "restore", "--param", f"database={source}",
               "--param", "mode=replace",
               "--param", f'confirm="{dry.plan.plan_hash}"')  # as JSON: a hash like 12e456789012 reads as a number
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "market 'fx' is in session" in line, proc.stderr
    state, refused = restore(database=source, mode="replace", confirm=dry.plan.plan_hash)  # from the UI: the flow
    assert state.is_failed() and "in session" in refused.error and refused.trading == []
    assert databases(config) == before and content_checksums(config, source) == content  # nothing touched

    state, done = restore(database=source, mode="replace", confirm=dry.plan.plan_hash,
                          in_session_reason="INC-7: corrupt positions, trading already stopped")
    assert state.is_completed(), done.error
    assert done.kept_live_as == dry.plan.keep_live_as
    assert done.change_window.in_session_reason == "INC-7: corrupt positions, trading already stopped"
    assert "INC-7: corrupt positions" in render_report(done)
    window_step = next(t for t in done.timeline if t.step == "check change window")
    assert window_step.outcome == "ok"


def test_a_replace_after_the_close_needs_no_reason(config: SandboxState, source: str,  # noqa: F811
                                                   simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    set_markets(monkeypatch, fx=closed_now())
    _, dry = restore(database=source, mode="replace", dry_run=True)
    state, done = restore(database=source, mode="replace", confirm=dry.plan.plan_hash)
    assert state.is_completed(), done.error
    assert done.change_window is not None and not done.change_window.in_session


def test_pitr_setup_restarts_only_outside_the_session_or_with_a_reason(config: SandboxState,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       prefect_api: str) -> None:
    from runbooks.flows.pitr_setup import PitrSetupParameters
    from runbooks.settings import load_settings

    set_markets(monkeypatch, fx=open_now())
    proc = cli({**os.environ, "PREFECT_API_URL": prefect_api}, "run", "pitr-setup", "--param", "restart=true",
               "--param", "confirm=0123456789ab")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "pitr-setup with restart=true while market 'fx' is in session" in line, line
    settings = load_settings()
    plan = PitrSetupParameters(restart=True).change_window(settings)  # a plan restarts nothing: reported only
    assert plan is not None and plan.in_session and plan.in_session_reason is None
    assert PitrSetupParameters(restart=False, confirm="0123456789ab").change_window(settings) is None
    window = PitrSetupParameters(restart=True, confirm="0123456789ab",
                                 in_session_reason="archiving down, RPO at risk").change_window(settings)
    assert window is not None and window.in_session and window.in_session_reason == "archiving down, RPO at risk"


def test_a_pitr_setup_plan_with_restart_says_what_the_window_would_do(config: SandboxState,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from runbooks.flows.pitr_setup import PitrSetupParameters, PitrSetupResult, render_report
    from runbooks.settings import load_settings

    set_markets(monkeypatch, fx=open_now())
    window = PitrSetupParameters(restart=True).change_window(load_settings())  # a plan: reported, not refused
    assert window is not None and window.in_session
    result = PitrSetupResult(started_at=window.at, dry_run=True, change_window=window)
    assert "applying this plan would be refused without in_session_reason" in render_report(result)
