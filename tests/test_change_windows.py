"""Change windows: heavy or destructive work waits for every gating market's close unless given a reason."""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from runbooks.errors import OutsideChangeWindow
from runbooks.frame.window import change_window, require_change_window
from runbooks.market_time import MarketCalendar
from runbooks.sandbox import SandboxState
from tests.markets import closed_now, open_now, set_markets

COT = ZoneInfo("America/Bogota")
USD_COP = MarketCalendar(name="usd_cop", timezone="America/Bogota", open=time(8), close=time(13), holidays="CO")


def test_in_session_without_a_reason_is_refused_naming_the_market_and_the_close() -> None:
    with pytest.raises(OutsideChangeWindow) as caught:
        require_change_window({"usd_cop": USD_COP}, work="restore replace of trading_db", in_session_reason=None,
                              at=datetime(2026, 12, 7, 10, 0, tzinfo=COT))
    message = str(caught.value)
    assert "restore replace of trading_db" in message and "'usd_cop' is in session" in message
    assert "2026-12-07 18:00 UTC" in message and "in_session_reason" in message


def test_a_blank_reason_is_no_reason() -> None:
    with pytest.raises(OutsideChangeWindow):
        require_change_window({"usd_cop": USD_COP}, work="x", in_session_reason="  ",
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
    from flows.disk_cleanup import CleanupParameters
    from runbooks.settings import load_settings

    set_markets(monkeypatch, fx=open_now(), crypto={"always_open": True})
    settings = load_settings()
    heavy = CleanupParameters(dry_run=False, vacuum_full=["trading_db.public.trades"])
    with pytest.raises(OutsideChangeWindow, match=r"VACUUM FULL while market 'fx' is in session"):
        heavy.check_against(settings)
    window = CleanupParameters(dry_run=False, vacuum_full=["trading_db.public.trades"],
                               in_session_reason="disk at 97 %, INC-7").change_window(settings)
    assert window is not None and window.in_session and window.in_session_reason == "disk at 97 %, INC-7"
    CleanupParameters(dry_run=True, vacuum_full=["trading_db.public.trades"]).check_against(settings)
    CleanupParameters(dry_run=False, rules=["old-logs"]).check_against(settings)  # file rules never wait

    set_markets(monkeypatch, fx=closed_now())
    assert CleanupParameters(dry_run=False, vacuum_full=["trading_db.public.trades"]).change_window(
        load_settings()) is not None
