"""Change windows: heavy or destructive work starts only while every gating market is closed, unless the operator
gives a reason to act in session (an incident does not wait for the close).

The decision is pure (``change_window``); ``require_change_window`` raises the refusal, before any side effect, and
the runbook records the window in its events, approval request and report.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from runbooks.core.errors import OutsideChangeWindow
from runbooks.core.market_time import MarketCalendar
from runbooks.core.text import is_blank


class OpenMarket(BaseModel):
    market: str
    reason: str
    closes_at: datetime | None


class ChangeWindow(BaseModel):
    """What the calendar said when heavy work was about to start."""

    at: datetime
    work: str = Field(description="what was about to start, as the refusal names it")
    open_markets: list[OpenMarket] = Field(default_factory=list, description="gating markets in session")
    in_session_reason: str | None = Field(default=None, description="the operator's reason to act in session")

    @property
    def in_session(self) -> bool:
        return bool(self.open_markets)

    def summary(self) -> str:
        if not self.open_markets:
            return "outside every gating market's session"
        names = ", ".join(f"{m.market} (closes {m.closes_at:%H:%M} UTC)" if m.closes_at else m.market
                          for m in self.open_markets)
        return f"IN SESSION: {names}; reason given: {self.in_session_reason!r}"


def change_window(calendars: dict[str, MarketCalendar], *, work: str, in_session_reason: str | None,
                  at: datetime | None = None) -> ChangeWindow:
    """The window at ``at`` (now) for ``work`` against the gating markets' calendars."""
    at = at or datetime.now(UTC)
    reason = None if is_blank(in_session_reason) else (in_session_reason or "").strip()
    opened = []
    for name, calendar in sorted(calendars.items()):
        status = calendar.status(at)
        if status.open:
            opened.append(OpenMarket(market=name, reason=status.reason,
                                     closes_at=status.session.close if status.session else None))
    return ChangeWindow(at=at, work=work, open_markets=opened, in_session_reason=reason)


def require_change_window(calendars: dict[str, MarketCalendar], *, work: str, in_session_reason: str | None,
                          at: datetime | None = None) -> ChangeWindow:
    """The window, or OutsideChangeWindow when a gating market is in session and no reason was given."""
    window = change_window(calendars, work=work, in_session_reason=in_session_reason, at=at)
    if window.in_session and window.in_session_reason is None:
        first = window.open_markets[0]
        until = f" until {first.closes_at:%Y-%m-%d %H:%M} UTC" if first.closes_at else ""
        raise OutsideChangeWindow(
            f"refused: {work} while market {first.market!r} is {first.reason}{until}.",
            hint="wait for the close (runbooks markets), or, during an incident, give in_session_reason='why'.")
    return window
