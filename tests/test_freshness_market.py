"""Data freshness in market time: the open-market age, the closed market, the grace after the open, a pause kept
while the market is closed, and the volume comparison over previous sessions. Pure parts with fixed instants; the
runbook against the sandbox (real PostgreSQL, the simulator over HTTP) with markets open or closed at the moment
the test runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from runbooks.core.market_time import MarketCalendar
from runbooks.decisions.freshness import (
    Finding,
    MarketView,
    TradingHold,
    comparison_buckets,
    decide,
    judge_staleness,
    summarize_rows,
)
from runbooks.flows.data_freshness import render_report
from runbooks.settings import MonitoredTable
from runbooks.settings.markets import seed_markets
from tests.test_freshness import Market, bucket, check, market, operations, posts  # noqa: F401 (fixture)

COT = ZoneInfo("America/Bogota")
USD_COP = seed_markets()["usd_cop"].calendar("usd_cop")
BARS = MonitoredTable(table="bars", interval=timedelta(minutes=5), market="usd_cop")  # grace 10 min


def cot(day: int, hour: int, minute: int) -> datetime:
    """An instant in November 2026 in Bogota (Friday the 20th, Monday the 23rd: no Colombian holiday)."""
    return datetime(2026, 11, day, hour, minute, tzinfo=COT)


def judged(newest: datetime, now: datetime, table: MonitoredTable = BARS,
           calendar: MarketCalendar = USD_COP) -> tuple[Finding, Any]:
    """The statement's row for ``newest`` seen at ``now``, measured and judged as the runbook does."""
    measured = summarize_rows(table, [(None, newest, (now - newest).total_seconds(), 0)], calendar=calendar)
    measured.market = MarketView.of(calendar, now)
    return judge_staleness(table, measured), measured


# -- pure: the age and the verdict ----------------------------------------------------------------------------------


def test_friday_close_data_is_not_stale_on_monday_before_the_open() -> None:
    finding, measured = judged(cot(20, 12, 55), cot(23, 7, 55))
    assert measured.age_seconds == 5 * 60  # 12:55-13:00 on Friday; the weekend and the night do not count
    assert measured.wall_age_seconds == pytest.approx((cot(23, 7, 55) - cot(20, 12, 55)).total_seconds())
    assert finding.severity == "ok" and finding.market_state == "closed" and finding.held_back is None
    assert finding.reason.startswith("market usd_cop closed since Fri 2026-11-20 13:00 America/Bogota, opens "
                                     "Mon 2026-11-23 08:00 America/Bogota")
    assert "(wall clock)" in finding.reason and "no action" in finding.reason


def test_within_the_grace_after_the_open_the_runbook_waits_for_the_first_bar() -> None:
    for now in (cot(23, 8, 5), cot(23, 8, 9)):  # at 08:09 the open-market age (14 min) is beyond error_after
        finding, measured = judged(cot(20, 12, 55), now)
        assert finding.severity == "ok" and finding.market_state == "waiting", finding
        assert "waiting for the first bar" in finding.reason and "until Mon 2026-11-23 08:10" in finding.reason
    assert measured.age_seconds == 14 * 60 and finding.held_back == "error"


def test_after_the_grace_no_new_bar_is_stale_by_open_time() -> None:
    finding, measured = judged(cot(20, 12, 55), cot(23, 8, 20))
    assert measured.age_seconds == 25 * 60  # 5 min on Friday + 20 min on Monday
    assert finding.severity == "error" and finding.market_state == "open"
    assert "of open-market time" in finding.reason and finding.held_back is None


def test_a_feed_that_died_mid_session_yesterday_is_stale_soon_after_todays_open() -> None:
    # Thursday 12:00 last bar: an hour of open time before the close; Friday's open plus grace: beyond kill_after.
    finding, _ = judged(cot(19, 12, 0), cot(20, 8, 11))
    assert finding.severity == "kill" and finding.market_state == "open"
    # During the grace it waits, but holds back the verdict: nothing resumes on it.
    waiting, _ = judged(cot(19, 12, 0), cot(20, 8, 2))
    assert waiting.market_state == "waiting" and waiting.held_back == "kill"


def test_a_fresh_bar_after_the_open_is_fresh_and_a_table_without_market_keeps_the_wall_clock() -> None:
    finding, _ = judged(cot(23, 8, 5), cot(23, 8, 12))
    assert finding.severity in ("ok", "warn") and finding.market_state == "open"
    plain = MonitoredTable(table="bars", interval=timedelta(minutes=5))
    measured = summarize_rows(plain, [(None, cot(20, 12, 55), 3 * 86400.0, 0)])
    assert measured.age_seconds == measured.wall_age_seconds == 3 * 86400
    assert judge_staleness(plain, measured).severity == "kill"


def test_stale_at_the_close_is_held_back_while_closed_and_a_24_7_market_has_no_grace() -> None:
    finding, _ = judged(cot(20, 11, 30), cot(20, 20, 0))  # 90 min of open time before the close
    assert finding.severity == "ok" and finding.market_state == "closed" and finding.held_back == "kill"
    assert "when it opens: stale for 1.5 h of open-market time" in finding.reason
    crypto = seed_markets()["crypto"].calendar("crypto")
    table = MonitoredTable(table="bars", interval=timedelta(minutes=5), market="crypto")
    midnight = datetime(2026, 11, 21, 0, 2, tzinfo=UTC)
    finding, measured = judged(midnight - timedelta(hours=2), midnight, table, crypto)
    assert finding.severity == "kill" and finding.market_state == "open" and measured.age_seconds == 7200


def test_grouped_tables_age_per_group_in_open_time() -> None:
    table = BARS.model_copy(update={"group_by": "symbol", "expected_groups": ["USD/COP", "EUR/COP", "GONE"]})
    now = cot(23, 8, 20)
    rows = [("USD/COP", cot(23, 8, 15), (now - cot(23, 8, 15)).total_seconds(), 0),
            ("EUR/COP", cot(20, 12, 55), (now - cot(20, 12, 55)).total_seconds(), 0)]
    measured = summarize_rows(table, rows, calendar=USD_COP)
    assert [g.group for g in measured.stale_groups] == ["GONE", "EUR/COP"]
    # never seen in the last day: at least the open time of that day (Monday's 20 minutes here).
    assert measured.age_seconds == 25 * 60 and measured.last_at == cot(20, 12, 55)
    assert measured.wall_age_seconds == (now - cot(20, 12, 55)).total_seconds()  # the stalest by wall clock


# -- pure: the ladder keeps its resume rules ------------------------------------------------------------------------


def test_a_pause_made_in_session_is_not_resumed_while_the_market_is_closed_on_stale_data() -> None:
    ours = {"trading_mode": "paused", "paused_by": "rb:1", "changed_at": "t1"}
    record = TradingHold(actor="rb:1", mode="paused", changed_at="t1", reason="r", at=datetime.now(UTC))
    closed_stale, _ = judged(cot(20, 12, 30), cot(20, 20, 0))
    decision = decide([closed_stale], ours, record)
    assert decision.action == "none" and "stays until a session shows fresh data" in decision.why
    closed_fresh, _ = judged(cot(20, 12, 55), cot(20, 20, 0))  # fresh at the close: today's rule resumes it
    assert decide([closed_fresh], ours, record).action == "resume"
    waiting, _ = judged(cot(20, 12, 30), cot(23, 8, 3))
    assert decide([waiting], ours, record).action == "none"
    running = {"trading_mode": "running", "paused_by": None, "changed_at": "t0"}
    decision = decide([closed_stale], running, None)
    assert decision.action == "none" and "no pause, no kill switch, no page" in decision.why
    halted = TradingHold(actor="rb:1", mode="halted", changed_at="t1", reason="r", at=datetime.now(UTC))
    assert decide([closed_fresh], {**ours, "trading_mode": "halted"}, halted).action == "none"  # a human resumes


# -- pure: volume on previous sessions ------------------------------------------------------------------------------


def test_volume_compares_the_same_interval_on_previous_sessions() -> None:
    start = cot(23, 8, 30)  # Monday
    starts, basis = comparison_buckets(start, interval=timedelta(minutes=5), count=3, calendar=USD_COP)
    assert basis == "sessions of usd_cop"
    assert starts == [start, cot(20, 8, 30), cot(19, 8, 30), cot(18, 8, 30)]  # Friday, Thursday, Wednesday
    # Across a Colombian holiday (Epiphany observed Monday 2027-01-11): that Monday is skipped.
    tuesday = datetime(2027, 1, 12, 9, 0, tzinfo=COT)
    starts, _ = comparison_buckets(tuesday, interval=timedelta(minutes=5), count=1, calendar=USD_COP)
    assert starts[1] == datetime(2027, 1, 8, 9, 0, tzinfo=COT)
    days, basis = comparison_buckets(start, interval=timedelta(minutes=5), count=2)
    assert basis == "days" and days == [start, start - timedelta(days=1), start - timedelta(days=2)]
    # An early close too soon for the interval leaves that session out.
    early = MarketCalendar(name="m", timezone="America/Bogota", open=time(8), close=time(13), holidays="CO",
                           early_closes={date(2026, 11, 20): time(10)})
    starts, _ = comparison_buckets(cot(23, 11, 0), interval=timedelta(minutes=5), count=2, calendar=early)
    assert starts == [cot(23, 11, 0), cot(19, 11, 0), cot(18, 11, 0)]


# -- the runbook against the sandbox --------------------------------------------------------------------------------


def _noon_zone() -> str:
    """An Etc/GMT zone whose local time is now between 12:00 and 13:00, so a session set in it is open or closed
    for the whole test, whatever the hour the suite runs at."""
    offset = 12 - datetime.now(UTC).hour  # -11 .. +12
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def _markets(monkeypatch: pytest.MonkeyPatch, **session: Any) -> None:
    monkeypatch.setenv("RUNBOOKS_MARKETS", json.dumps({"m": {
        "timezone": _noon_zone(), "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], **session}}))


TABLE = {"table": "bars", "group_by": "symbol", "interval": "5m", "market": "m"}


def test_closed_market_two_hours_old_data_takes_no_action_and_exits_0(market: Market,  # noqa: F811
                                                                     simulator: httpx.Client,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     prefect_api: str) -> None:
    _markets(monkeypatch, open="03:00", close="09:00")  # closed since 09:00 local, about three hours ago
    market.configure(TABLE)
    market.bars(end=bucket(120))
    state, result = check(quality=False)
    assert state.is_completed(), result.findings
    [table] = result.tables
    assert table.market is not None and not table.market.open and table.market.kind == "after-close"
    assert table.wall_age_seconds is not None and table.wall_age_seconds >= 7200
    assert table.age_seconds is not None and table.age_seconds < table.wall_age_seconds
    finding = result.findings[0]
    assert all(f.severity in ("ok", "warn") for f in result.findings), result.findings
    assert finding.market_state == "closed" and finding.reason.startswith("market m closed since ")
    assert result.action == "none" and posts(simulator) == [] and operations(simulator)["trading_mode"] == "running"
    measure = next(s for s in result.timeline if s.step == "measure freshness")
    assert measure.figures["market.m"] == "closed" and measure.figures["market.m.next_open"]
    report = render_report(result)
    assert "closed since" in report and "wall-clock age" in report
    # The command an operator (or cron) runs exits 0.
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "data-freshness", "--json", "--param",
                           "quality=false"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["action"] == "none" and posts(simulator) == []


@pytest.mark.parametrize("session", [{"open": "06:00", "close": "18:00"}, {"always_open": True}],
                         ids=["in-session", "24/7"])
def test_open_market_two_hours_stale_presses_the_kill_switch(market: Market, simulator: httpx.Client,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             session: dict[str, Any]) -> None:
    _markets(monkeypatch, **session)
    market.configure(TABLE)
    market.bars(end=bucket(120))
    state, result = check(quality=False)
    assert state.is_failed() and result.worst == "kill", result.findings
    assert result.action == "KILL SWITCH activated" and operations(simulator)["trading_mode"] == "halted"
    [table] = result.tables
    assert table.market is not None and table.market.open
    assert "of open-market time" in result.findings[0].reason


def test_a_pause_made_in_session_stays_while_the_market_is_closed(market: Market, simulator: httpx.Client,  # noqa: F811
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    zone = ZoneInfo(_noon_zone())
    local_today = datetime.now(zone).date()
    _markets(monkeypatch, open="06:00", close="18:00")
    market.configure({**TABLE, "error_after": "10m", "kill_after": "4h"})
    market.bars(end=datetime.combine(local_today, time(11), tzinfo=zone))  # the feed died at 11:00 local
    _, result = check(quality=False)
    assert result.action == "paused trading", result.findings
    # The venue closed early today, at 11:30: closed now, and the data was stale by open time at the close.
    _markets(monkeypatch, open="06:00", close="18:00", early_closes={local_today.isoformat(): "11:30"})
    state, result = check(quality=False)
    assert state.is_completed() and result.findings[0].market_state == "closed", result.findings
    assert result.findings[0].held_back == "error"
    assert result.action == "none" and operations(simulator)["trading_mode"] == "paused"
    assert result.decision is not None and "stays until a session shows fresh data" in result.decision.why


def test_a_table_measured_beyond_its_group_window_names_no_group_none() -> None:
    """Monday after a weekend: the newest bar lies beyond group_window, so the statement measures the whole table
    (its group is NULL); the verdict must not read "(symbol None)"."""
    grouped = MonitoredTable(table="bars", group_by="symbol", interval=timedelta(minutes=5), market="usd_cop")
    finding, _ = judged(cot(20, 11, 0), cot(23, 12, 0), table=grouped)
    assert finding.severity == "kill" and "None" not in finding.reason, finding.reason
