"""Market time, pure: fixed instants around the USD/COP session (08:00-13:00 COT, UTC-5 all year) and properties
over arbitrary instants."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbooks.core.market_time import MarketCalendar

COT = ZoneInfo("America/Bogota")
USD_COP = MarketCalendar(name="usd_cop", timezone="America/Bogota", days=frozenset(range(5)), open=time(8),
                         close=time(13), holidays="CO")
CRYPTO = MarketCalendar(name="crypto", always_open=True)


def cot(*args: int) -> datetime:
    return datetime(*args, tzinfo=COT)  # type: ignore[misc]


def test_friday_after_the_close_is_closed_until_monday() -> None:
    status = USD_COP.status(cot(2026, 12, 4, 13, 5))  # Friday
    assert not status.open and status.kind == "after-close"
    assert status.previous_close == cot(2026, 12, 4, 13, 0)
    assert status.next_open == cot(2026, 12, 7, 8, 0)


def test_saturday_is_a_weekend() -> None:
    status = USD_COP.status(cot(2026, 12, 5, 10, 0))
    assert not status.open and status.kind == "weekend" and "sat" in status.reason


def test_monday_just_before_and_after_the_open() -> None:
    before = USD_COP.status(cot(2026, 12, 7, 7, 55))
    assert not before.open and before.kind == "before-open" and before.next_open == cot(2026, 12, 7, 8, 0)
    assert before.previous_close == cot(2026, 12, 4, 13, 0)
    after = USD_COP.status(cot(2026, 12, 7, 8, 5))
    assert after.open and after.session is not None and after.session.close == cot(2026, 12, 7, 13, 0)
    assert "08:00-13:00" in after.reason


def test_a_colombian_holiday_monday_is_closed_with_its_name() -> None:
    # Epiphany 2027 is observed on Monday 11 January (moved to Monday by law).
    status = USD_COP.status(cot(2027, 1, 11, 10, 0))
    assert not status.open and status.kind == "holiday" and "Epiphany" in status.reason
    assert status.next_open == cot(2027, 1, 12, 8, 0)
    assert status.previous_close == cot(2027, 1, 8, 13, 0)


def test_new_year() -> None:
    status = USD_COP.status(cot(2027, 1, 1, 9, 0))
    assert not status.open and "New Year" in status.reason
    assert status.previous_close == cot(2026, 12, 31, 13, 0)
    assert status.next_open == cot(2027, 1, 4, 8, 0)  # Friday 1st a holiday, then the weekend


def test_open_time_across_a_weekend_is_zero_and_across_a_week_is_five_sessions() -> None:
    assert USD_COP.open_time_between(cot(2026, 12, 4, 13, 0), cot(2026, 12, 7, 8, 0)) == timedelta(0)
    assert USD_COP.open_time_between(cot(2026, 11, 30, 0, 0), cot(2026, 12, 7, 0, 0)) == timedelta(hours=25)
    # Friday 12:00 to Monday 09:00: one hour on each side.
    assert USD_COP.open_time_between(cot(2026, 12, 4, 12, 0), cot(2026, 12, 7, 9, 0)) == timedelta(hours=2)


def test_extra_closed_days_and_early_closes() -> None:
    venue = MarketCalendar(name="v", timezone="America/Bogota", open=time(8), close=time(13), holidays="CO",
                           extra_closed=frozenset({date(2026, 12, 24)}), early_closes={date(2026, 12, 31): time(11)})
    status = venue.status(cot(2026, 12, 24, 9, 0))
    assert not status.open and status.kind == "venue-closed"
    assert venue.open_time_between(cot(2026, 12, 31, 0, 0), cot(2027, 1, 1, 0, 0)) == timedelta(hours=3)
    assert venue.status(cot(2026, 12, 31, 11, 30)).kind == "after-close"


def test_crypto_never_closes() -> None:
    at = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
    status = CRYPTO.status(at)
    assert status.open and status.previous_close is None and status.next_open is None
    assert CRYPTO.open_time_between(at, at + timedelta(days=3)) == timedelta(days=3)


def test_a_named_exchange_calendar() -> None:
    pytest.importorskip("exchange_calendars")
    nyse = MarketCalendar(name="nyse", exchange="XNYS")
    assert nyse.is_open(datetime(2026, 12, 7, 15, 0, tzinfo=UTC))  # Monday 10:00 New York
    status = nyse.status(datetime(2026, 12, 25, 15, 0, tzinfo=UTC))
    assert not status.open and status.kind == "holiday"
    # 26 November 2027 (the day after Thanksgiving) closes early at 13:00 New York.
    early = nyse.session_on(date(2027, 11, 26))
    assert early is not None and early.close == datetime(2027, 11, 26, 18, 0, tzinfo=UTC)


def test_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        USD_COP.is_open(datetime(2026, 12, 7, 9, 0))


instants = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31),
                        timezones=st.just(UTC))


@settings(max_examples=200, deadline=None)
@given(instants, instants, instants)
def test_open_time_is_additive_and_never_exceeds_wall_time(a: datetime, b: datetime, c: datetime) -> None:
    a, b, c = sorted((a, b, c))
    for market in (USD_COP, CRYPTO):
        whole = market.open_time_between(a, c)
        assert whole == market.open_time_between(a, b) + market.open_time_between(b, c)
        assert timedelta(0) <= whole <= c - a


@settings(max_examples=200, deadline=None)
@given(instants)
def test_open_iff_inside_a_session_between_previous_close_and_next_open(at: datetime) -> None:
    status = USD_COP.status(at)
    assert status.previous_close is not None and status.next_open is not None
    assert status.previous_close <= at < status.next_open
    if not status.open:
        assert USD_COP.open_time_between(status.previous_close, status.next_open) == timedelta(0)
    else:
        assert status.session is not None and status.session.open <= at < status.session.close


@settings(max_examples=100, deadline=None)
@given(st.dates(min_value=date(2025, 1, 1), max_value=date(2028, 12, 31)))
def test_no_open_time_on_a_weekend_or_holiday(day: date) -> None:
    import holidays

    start = datetime.combine(day, time(0), tzinfo=COT)
    closed = day.weekday() >= 5 or day in holidays.country_holidays("CO", years=day.year)
    spent = USD_COP.open_time_between(start, start + timedelta(days=1))
    assert spent == (timedelta(0) if closed else timedelta(hours=5))


def test_a_closed_markets_recent_data_ends_at_its_last_close() -> None:
    friday_night = cot(2026, 12, 4, 21, 0)
    assert USD_COP.last_trading_instant(friday_night) == cot(2026, 12, 4, 13, 0)
    in_session = cot(2026, 12, 7, 9, 0)
    assert USD_COP.last_trading_instant(in_session) == in_session
    assert CRYPTO.last_trading_instant(friday_night) == friday_night


@pytest.mark.parametrize(("fields", "why"), [
    ({"always_open": True, "exchange": "XNYS"}, "contradict"),
    ({"always_open": True, "gating": True}, "forbid heavy work forever"),
    ({"days": ["mon", "mon"]}, "a day twice"),
    ({"holidays": "US", "holidays_subdiv": "ZZ"}, "not a subdivision"),
    ({"holidays_subdiv": "NY"}, "needs holidays"),
    ({"open": "08:00", "close": "13:00", "early_closes": {"2026-12-31": "18:00"}}, "between the open"),
    ({"open": "08:00", "close": "13:00", "early_closes": {"2026-12-31": "07:00"}}, "between the open"),
    ({"holidays": "XX"}, "not a country code"),
    ({"open": "13:00", "close": "08:00"}, "must be after open"),
])
def test_a_market_that_cannot_be_meant_is_refused(fields: dict[str, object], why: str) -> None:
    from pydantic import ValidationError

    from runbooks.settings.markets import MarketSettings

    with pytest.raises(ValidationError, match=why):
        MarketSettings.model_validate(fields)


def test_a_session_the_spring_clock_change_removes_is_not_after_the_close() -> None:
    night = MarketCalendar(name="ny", timezone="America/New_York", days=frozenset(range(7)), open=time(2, 30),
                           close=time(3, 30))
    status = night.status(datetime(2027, 3, 14, 1, 45, tzinfo=ZoneInfo("America/New_York")))  # spring forward
    assert not status.open and status.kind == "venue-closed" and "clock change" in status.reason


def test_an_instant_outside_a_named_exchanges_calendar_says_so() -> None:
    pytest.importorskip("exchange_calendars")
    status = MarketCalendar(name="nyse", exchange="XNYS").status(datetime(2099, 6, 1, 15, 0, tzinfo=UTC))
    assert not status.open and "outside the XNYS calendar's range" in status.reason
