"""The DR game-day in market time: freshness at backup time is the open-market time between a restored table's
newest row and the backup's snapshot, and the scorecard says when the backup was taken relative to the market.
Pure parts with fixed instants; then drills against the real sandbox with the market closed or open at the moment
the test runs (tests/markets.py) and the data's newest bar at that close."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from runbooks.decisions.drill import backup_market, judge_at_backup
from runbooks.decisions.freshness import MarketView, summarize_rows
from runbooks.flows.dr_game_day import render_report
from runbooks.settings import MonitoredTable, load_settings
from runbooks.settings.markets import MarketSettings, seed_markets
from runbooks_sandbox import SandboxState
from runbooks_sandbox.seed import catch_up_bars
from tests.markets import closed_now, open_now, set_markets
from tests.runs import run_backup
from tests.test_drill import drill, leftovers

COT = ZoneInfo("America/Bogota")
USD_COP = seed_markets()["usd_cop"].calendar("usd_cop")
BARS = MonitoredTable(table="bars", interval=timedelta(minutes=5), market="usd_cop", group_by="symbol")


def cot(day: int, hour: int, minute: int = 0) -> datetime:
    """November 2026 in Bogota: Monday the 23rd and Tuesday the 24th are business days, the 21st a Saturday."""
    return datetime(2026, 11, day, hour, minute, tzinfo=COT)


def at_backup(newest: datetime, taken: datetime) -> tuple[Any, Any]:
    """The restored table's row for ``newest`` measured as of the snapshot ``taken``, and judged as the drill does."""
    measured = summarize_rows(BARS, [("USDCOP", newest, (taken - newest).total_seconds(), 0)], calendar=USD_COP)
    measured.market = MarketView.of(USD_COP, taken)
    return judge_at_backup(BARS, measured), measured


# -- pure -------------------------------------------------------------------------------------------------------


def test_a_nightly_backup_after_the_close_holds_fresh_data() -> None:
    taken = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # 21:00 COT on Monday, eight hours after the close
    finding, measured = at_backup(cot(23, 12, 55), taken)
    assert measured.age_seconds == 5 * 60 and measured.wall_age_seconds == pytest.approx(8 * 3600 + 5 * 60)
    assert finding.severity == "ok" and finding.market_state == "closed" and finding.held_back is None
    assert "open-market time of usd_cop" in finding.reason
    where = backup_market(USD_COP, taken)
    assert where.when == "after the close"
    assert where.describe() == ("usd_cop: backup taken after the close at 13:00 America/Bogota (Mon 2026-11-23): "
                                "it holds the data as of the close")


def test_a_gap_that_opened_during_the_session_is_a_finding_after_the_close() -> None:
    # The feed died at 11:30: 90 minutes of open time before the close, beyond kill_after, although the market
    # was closed when the backup was taken (the freshness runbook would hold it back; a drill judges the copy).
    finding, _ = at_backup(cot(23, 11, 30), datetime(2026, 11, 24, 2, 0, tzinfo=UTC))
    assert finding.severity == "kill" and finding.market_state == "closed"
    assert finding.reason.startswith("stale for 1.5 h")


def test_during_a_session_and_on_a_closed_day() -> None:
    during = backup_market(USD_COP, cot(24, 10, 30))
    assert during.when == "during the session" and "during the session (Tue 2026-11-24 10:30" in during.describe()
    finding, _ = at_backup(cot(24, 10, 28), cot(24, 10, 30))
    assert finding.severity == "ok" and finding.market_state == "open"
    saturday = backup_market(USD_COP, cot(21, 3))
    assert saturday.when == "on a closed day" and saturday.last_close == cot(20, 13)
    assert "on a closed day (" in saturday.describe() and "(Fri 2026-11-20)" in saturday.describe()
    before_open = backup_market(USD_COP, cot(24, 6))  # before Tuesday's open: after Monday's close
    assert before_open.when == "after the close" and before_open.last_close == cot(23, 13)
    crypto = seed_markets()["crypto"].calendar("crypto")
    assert backup_market(crypto, cot(21, 3)).when == "24/7"


# -- drills on the sandbox ---------------------------------------------------------------------------------------


def todays_close() -> datetime:
    """The close of :func:`closed_now`'s market today (09:00 in a zone where it is now about noon)."""
    close = MarketSettings(**closed_now()).calendar("probe").previous_close(datetime.now(UTC))
    assert close is not None and datetime.now(UTC) - close < timedelta(hours=5)
    return close


@pytest.fixture
def bars_until_the_close(config: SandboxState) -> Iterator[datetime]:
    """The sandbox's bars end at that close (what a feed stopped by the close leaves); caught up to now after."""
    dsn = load_settings().databases["trading_db"].dsn.get_secret_value()
    close = todays_close()
    catch_up_bars(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('DELETE FROM ohlcv_usdcop_5m WHERE "timestamp" > %s', [close])
        [newest] = conn.execute('SELECT max("timestamp") FROM ohlcv_usdcop_5m').fetchone() or [None]
    assert newest == close
    try:
        yield close
    finally:
        catch_up_bars(dsn)


def market(monkeypatch: pytest.MonkeyPatch, hours: dict[str, Any]) -> None:
    # The suite's sandbox config has usd_cop always open; the environment's fields merge over it.
    set_markets(monkeypatch, usd_cop={**hours, "always_open": False})
    assert not load_settings().markets["usd_cop"].always_open


def back_up() -> str:
    state, result = run_backup(apply_retention=False)
    assert state.is_completed(), state.message
    return str(result.items[0].backup_id)


@pytest.mark.slow  # a drill on the sandbox
def test_the_drill_proves_a_backup_taken_after_the_close(config: SandboxState, bars_until_the_close: datetime,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    market(monkeypatch, closed_now())
    backup_id = back_up()
    state, result = drill(quality=False)
    assert state.is_completed(), (state.message, result.error, result.issues)
    assert result.operational and result.backup_id == backup_id
    [db] = result.databases
    [finding] = db.findings
    assert finding.severity == "ok" and finding.market_state == "closed", finding
    [measured] = db.freshness
    assert measured.last_at == bars_until_the_close and measured.age_seconds == 0
    assert measured.wall_age_seconds is not None and measured.wall_age_seconds > 3 * 3600  # the wall clock's view
    [where] = result.backup_markets
    assert where.market == "usd_cop" and where.when == "after the close" and where.last_close == bars_until_the_close
    report = render_report(result)
    assert "usd_cop: backup taken after the close at 09:00" in report
    assert leftovers(config) == []


@pytest.mark.slow  # a drill on the sandbox
def test_the_quality_window_of_a_backup_after_the_close_is_the_last_session(
        config: SandboxState, bars_until_the_close: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 h window before a backup taken 3 h after the close would hold no bar: it ends at the close instead."""
    market(monkeypatch, closed_now())
    monkeypatch.setenv("RUNBOOKS_FRESHNESS__LOOKBACK", "2h")
    back_up()
    state, result = drill(quality=True)
    assert state.is_completed(), (state.message, result.error, result.issues)
    [db] = result.databases
    [quality] = db.quality
    assert quality.status == "passed" and quality.window_rows and quality.window_rows >= 20, quality


@pytest.mark.slow  # a drill on the sandbox
def test_the_same_data_backed_up_during_the_session_is_stale_by_open_market_time(
        config: SandboxState, bars_until_the_close: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    market(monkeypatch, open_now())  # 10:00-15:00 there: the bars stop an hour before the open, and it is ~noon
    back_up()
    state, result = drill(quality=False)
    assert state.is_failed() and not result.operational
    [db] = result.databases
    [finding] = db.findings
    assert finding.severity == "kill" and finding.market_state == "open", finding
    assert "open-market time of usd_cop" in finding.reason
    [measured] = db.freshness
    open_time = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)  # 10:00 there
    assert measured.age_seconds == pytest.approx((db.taken_at - open_time).total_seconds())
    assert "at backup time" in (db.detail or "")
    [where] = result.backup_markets
    assert where.when == "during the session"
    assert "usd_cop: backup taken during the session" in render_report(result)
    assert leftovers(config) == []
