"""``[markets.<name>]``: the trading calendar of each market the platform trades, as settings.

The seeds' platform trades USD/COP (SET-FX spot, 08:00-13:00 America/Bogota on Colombian business days) and crypto
on Bybit (24/7); those are the defaults. A market is *gating* when heavy or destructive work must wait for its
close (by default every market that closes: a 24/7 venue would forbid maintenance forever).
"""

from __future__ import annotations

from datetime import date, time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from runbooks.core.market_time import WEEKDAYS, MarketCalendar

# The name of a market: a key of [markets].
MarketName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS_MON_FRI: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri")


class MarketSettings(BaseModel):
    """One market's sessions: a daily session on its trading days, minus the holidays of a country (the ``holidays``
    library) and the days the venue announces; or a named exchange calendar; or always open."""

    model_config = ConfigDict(extra="forbid")

    timezone: str = Field(default="UTC", description="IANA time zone of open and close, e.g. 'America/Bogota'")
    days: list[Weekday] = Field(default_factory=lambda: list(_WEEKDAYS_MON_FRI), description="trading days")
    open: time = Field(default=time(0), description="session open, local time, e.g. '08:00'")
    close: time = Field(default=time(23, 59, 59), description="session close, local time, e.g. '13:00'")
    holidays: str | None = Field(default=None, description="country code of the holidays library whose public "
                                 "holidays close the market, e.g. 'CO'")
    holidays_subdiv: str | None = Field(default=None, description="a subdivision of that country, if its "
                                        "holidays differ")
    extra_closed: list[date] = Field(default_factory=list, description="dates the venue announces it is closed, "
                                     "on top of the holidays")
    early_closes: dict[date, time] = Field(default_factory=dict, description="half days: date -> local close")
    always_open: bool = Field(default=False, description="a 24/7 venue (crypto): no session, no close")
    exchange: str | None = Field(default=None, description="a named exchange of the exchange-calendars library "
                                 "(e.g. 'XBOG', 'XNYS'): its sessions, holidays and early closes replace days, open, "
                                 "close and holidays")
    gating: bool | None = Field(default=None, description="heavy or destructive runbooks wait for this market's "
                                "close (or are given a reason); None: every market that closes")
    symbols: list[str] = Field(default_factory=list, description="symbols traded on it (reports; the sandbox's "
                               "feeder writes bars for them)")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown time zone {value[:80]!r} (an IANA name such as 'America/Bogota')") from None
        return value

    @field_validator("holidays")
    @classmethod
    def _known_country(cls, value: str | None) -> str | None:
        from runbooks.core.market_time import holiday_countries

        if value is not None and value not in holiday_countries():
            raise ValueError(f"holidays {value[:20]!r} is not a country code of the holidays library (e.g. 'CO', "
                             "'US', 'GB')")
        return value

    @field_validator("exchange")
    @classmethod
    def _known_exchange(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            import exchange_calendars
        except ImportError:
            raise ValueError("exchange needs the exchange-calendars package") from None
        if value not in exchange_calendars.get_calendar_names():
            raise ValueError(f"exchange {value[:20]!r} is not a calendar of exchange-calendars (e.g. 'XBOG', "
                             "'XNYS')")
        return value

    @model_validator(mode="after")
    def _session(self) -> MarketSettings:
        if self.always_open and self.exchange:
            raise ValueError("always_open and exchange contradict each other: pick one")
        if self.always_open and self.gating:
            raise ValueError("gating = true on an always-open market would forbid heavy work forever")
        if len(set(self.days)) != len(self.days):
            raise ValueError(f"days lists a day twice: {self.days}")
        if self.holidays and self.holidays_subdiv:
            import holidays

            try:
                holidays.country_holidays(self.holidays, subdiv=self.holidays_subdiv)
            except NotImplementedError:
                raise ValueError(f"holidays_subdiv {self.holidays_subdiv[:20]!r} is not a subdivision of "
                                 f"{self.holidays!r} in the holidays library") from None
        elif self.holidays_subdiv:
            raise ValueError("holidays_subdiv needs holidays (the country)")
        if not self.always_open and not self.exchange and self.close <= self.open:
            raise ValueError(f"close {self.close:%H:%M} must be after open {self.open:%H:%M} (one session a day)")
        if not self.always_open and not self.exchange and not self.days:
            raise ValueError("days is empty: a market that never opens (use always_open for 24/7)")
        for day, close in self.early_closes.items():
            if not self.open < close < self.close:
                raise ValueError(f"early close {close:%H:%M} on {day} must lie between the open ({self.open:%H:%M}) "
                                 f"and the close ({self.close:%H:%M})")
        return self

    @property
    def gates(self) -> bool:
        """Whether heavy or destructive work must wait for this market's close."""
        return (not self.always_open) if self.gating is None else self.gating

    def calendar(self, name: str) -> MarketCalendar:
        return MarketCalendar(
            name=name, timezone=self.timezone, days=frozenset(WEEKDAYS.index(d) for d in self.days),
            open=self.open, close=self.close, holidays=self.holidays, holidays_subdiv=self.holidays_subdiv,
            extra_closed=frozenset(self.extra_closed), early_closes=dict(self.early_closes),
            always_open=self.always_open, exchange=self.exchange)


def seed_markets() -> dict[str, MarketSettings]:
    """The seeds' platform: USD/COP in COT on Colombian business days, crypto (Bybit) always open."""
    return {
        "usd_cop": MarketSettings(timezone="America/Bogota", open=time(8), close=time(13), holidays="CO",
                                  symbols=["USDCOP"]),
        "crypto": MarketSettings(always_open=True, symbols=["BTCUSDT", "ETHUSDT"]),
    }
