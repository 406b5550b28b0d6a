"""Market time: when each market the platform trades is open, and how much open time lies between two instants.

USD/COP trades about five hours a weekday (08:00-13:00 America/Bogota) and not on Colombian holidays; crypto venues
never close. Data age, change windows and the pre-open check are judged on this clock, so a feed that stops at the
close is not "stale" all night and heavy work does not start mid-session.

Pure: no I/O. Holidays come from the ``holidays`` library (maintained per country, including Colombia's holidays
moved to Monday by law 51 of 1983) and, for a named exchange, sessions from ``exchange_calendars`` (imported only
when such a market is configured). Every instant is timezone-aware; results are in UTC.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SEARCH_DAYS = 400  # how far previous_close / next_open look: a market closed for longer has no session near


@dataclass(frozen=True)
class Session:
    """One trading session, in UTC."""

    open: datetime
    close: datetime

    def overlap(self, start: datetime, end: datetime) -> timedelta:
        return max(timedelta(0), min(self.close, end) - max(self.open, start))


ClosedKind = Literal["session", "always-open", "weekend", "holiday", "venue-closed", "before-open", "after-close"]


@dataclass(frozen=True)
class MarketStatus:
    """Whether a market is open at an instant, and why; the close before and the open after it."""

    market: str
    at: datetime
    open: bool
    kind: ClosedKind
    reason: str
    previous_close: datetime | None
    next_open: datetime | None
    session: Session | None = None

    def as_dict(self) -> dict[str, object]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {"market": self.market, "at": iso(self.at), "open": self.open, "kind": self.kind,
                "reason": self.reason, "previous_close": iso(self.previous_close), "next_open": iso(self.next_open),
                "session_open": iso(self.session.open if self.session else None),
                "session_close": iso(self.session.close if self.session else None)}


@lru_cache(maxsize=256)
def _holidays(country: str, subdiv: str | None, year: int) -> Mapping[date, str]:
    import holidays

    return dict(holidays.country_holidays(country, subdiv=subdiv, years=year))


@lru_cache(maxsize=16)
def _exchange(name: str):  # type: ignore[no-untyped-def]
    import exchange_calendars

    return exchange_calendars.get_calendar(name)


def holiday_countries() -> list[str]:
    """Country codes the holidays library knows (settings validation)."""
    import holidays

    return sorted(holidays.list_supported_countries())


@dataclass(frozen=True)
class MarketCalendar:
    """A market's sessions: weekdays with one daily session in the market's time zone, minus holidays and days the
    venue announces, with early closes; or a named exchange's calendar; or always open (24/7 venues)."""

    name: str
    timezone: str = "UTC"
    days: frozenset[int] = frozenset(range(5))  # 0 = Monday
    open: time = time(0)
    close: time = time(23, 59, 59)
    holidays: str | None = None  # a country code of the holidays library, e.g. "CO"
    holidays_subdiv: str | None = None
    extra_closed: frozenset[date] = frozenset()
    early_closes: Mapping[date, time] = field(default_factory=dict)
    always_open: bool = False
    exchange: str | None = None  # an exchange_calendars name, e.g. "XBOG": its sessions replace the fields above

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def closed_day(self, day: date) -> tuple[ClosedKind, str] | None:
        """Why the market has no session on local date ``day``; None when it has one (or is always open)."""
        if self.always_open:
            return None
        if day in self.extra_closed:
            return "venue-closed", f"closed by the venue on {day.isoformat()}"
        if self.exchange:
            cal = _exchange(self.exchange)
            if not cal.first_session.date() <= day <= cal.last_session.date():
                return "venue-closed", (f"outside the {self.exchange} calendar's range ({cal.first_session.date()} "
                                        f"to {cal.last_session.date()}): unknown, taken as closed")
            if not cal.is_session(day.isoformat()):
                return ("weekend" if day.weekday() >= 5 else "holiday"), \
                    f"{'weekend' if day.weekday() >= 5 else 'exchange holiday'} ({self.exchange})"
            return None
        if day.weekday() not in self.days:
            return "weekend", f"{WEEKDAYS[day.weekday()]}: not a trading day"
        if self.holidays and (holiday := _holidays(self.holidays, self.holidays_subdiv, day.year).get(day)):
            return "holiday", f"holiday: {holiday} ({self.holidays})"
        return None

    def session_on(self, day: date) -> Session | None:
        """The session of local date ``day``, if it has one."""
        if self.always_open:
            start = datetime.combine(day, time(0), tzinfo=self.zone)
            return Session(start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC))
        if self.closed_day(day):
            return None
        if self.exchange:
            cal = _exchange(self.exchange)
            label = day.isoformat()
            if not (cal.first_session.date() <= day <= cal.last_session.date()):
                return None
            opened, closed = cal.session_open(label), cal.session_close(label)
            return Session(opened.to_pydatetime().astimezone(UTC), closed.to_pydatetime().astimezone(UTC))
        close = self.early_closes.get(day, self.close)
        opened = datetime.combine(day, self.open, tzinfo=self.zone).astimezone(UTC)
        closed = datetime.combine(day, close, tzinfo=self.zone).astimezone(UTC)
        return Session(opened, closed) if closed > opened else None

    def sessions(self, start: datetime, end: datetime) -> Iterator[Session]:
        """Sessions that overlap [start, end), oldest first."""
        _aware(start, end)
        if end <= start:
            return
        zone = self.zone
        day = start.astimezone(zone).date() - timedelta(days=1)
        last = end.astimezone(zone).date() + timedelta(days=1)
        while day <= last:
            session = self.session_on(day)
            if session and session.close > start and session.open < end:
                yield session
            day += timedelta(days=1)

    def open_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Time the market was open between two instants (zero when ``end`` is not after ``start``)."""
        _aware(start, end)
        if end <= start:
            return timedelta(0)
        if self.always_open:
            return end - start
        return sum((s.overlap(start, end) for s in self.sessions(start, end)), timedelta(0))

    def session_at(self, at: datetime) -> Session | None:
        _aware(at)
        if self.always_open:
            return self.session_on(at.astimezone(self.zone).date())
        return next((s for s in self.sessions(at - timedelta(days=2), at + timedelta(days=2))
                     if s.open <= at < s.close), None)

    def is_open(self, at: datetime) -> bool:
        return self.session_at(at) is not None

    def previous_close(self, at: datetime) -> datetime | None:
        """The last close at or before ``at`` (None for a market that never closes)."""
        _aware(at)
        if self.always_open:
            return None
        day = at.astimezone(self.zone).date()
        for back in range(_SEARCH_DAYS):
            session = self.session_on(day - timedelta(days=back))
            if session and session.close <= at:
                return session.close
        return None

    def next_open(self, at: datetime) -> datetime | None:
        """The first open after ``at`` (None for a market that never closes)."""
        _aware(at)
        if self.always_open:
            return None
        day = at.astimezone(self.zone).date()
        for ahead in range(-1, _SEARCH_DAYS):
            session = self.session_on(day + timedelta(days=ahead))
            if session and session.open > at:
                return session.open
        return None

    def last_trading_instant(self, at: datetime) -> datetime:
        """``at`` while the market is open (or always open), else its last close: where a "recent data" window of
        a market's table ends, so at night it reads the last session, not an empty evening."""
        _aware(at)
        if self.always_open or self.is_open(at):
            return at
        return self.previous_close(at) or at

    def status(self, at: datetime) -> MarketStatus:
        """Open or closed at ``at``, why, and the surrounding close and open."""
        _aware(at)
        if self.always_open:
            return MarketStatus(self.name, at, True, "always-open", "always open (24/7 venue)", None, None,
                                self.session_at(at))
        session = self.session_at(at)
        previous, following = self.previous_close(at), self.next_open(at)
        local = at.astimezone(self.zone)
        if session:
            return MarketStatus(self.name, at, True, "session",
                                f"in session {_clock(session.open, self.zone)}-{_clock(session.close, self.zone)} "
                                f"{self.timezone}", previous, following, session)
        closed = self.closed_day(local.date())
        if closed:
            kind, reason = closed
        else:
            today = self.session_on(local.date())
            if today is None:  # a trading day whose session the clock change removed (02:30-03:30 on a spring day)
                kind, reason = "venue-closed", "no session today: the clock change skips its hours"
            elif at < today.open:
                kind, reason = "before-open", f"before the open ({_clock(today.open, self.zone)} {self.timezone})"
            else:
                kind, reason = "after-close", "after the close" + (
                    f" ({_clock(today.close, self.zone)} {self.timezone})" if today else "")
        return MarketStatus(self.name, at, False, kind, reason, previous, following)


def _clock(instant: datetime, zone: ZoneInfo) -> str:
    return instant.astimezone(zone).strftime("%H:%M")


def _aware(*instants: datetime) -> None:
    for instant in instants:
        if instant.tzinfo is None or instant.utcoffset() is None:
            raise ValueError(f"instant {instant.isoformat()} has no time zone: market time needs an aware datetime")
