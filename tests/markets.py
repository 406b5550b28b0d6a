"""Market configs built around the moment a test runs, so "open" or "closed" holds for the whole test whatever the
hour the suite runs at."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def noon_zone() -> str:
    """An Etc/GMT zone whose local time is now between 12:00 and 13:00."""
    offset = 12 - datetime.now(UTC).hour  # -11 .. +12
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def open_now() -> dict[str, Any]:
    """A gating market in session now (10:00-15:00 in a zone where it is about noon), every day."""
    return {"timezone": noon_zone(), "days": EVERY_DAY, "open": "10:00", "close": "15:00"}


def closed_now() -> dict[str, Any]:
    """A gating market closed now (03:00-09:00 in a zone where it is about noon), every day."""
    return {"timezone": noon_zone(), "days": EVERY_DAY, "open": "03:00", "close": "09:00"}


def set_markets(monkeypatch: pytest.MonkeyPatch, **markets: dict[str, Any]) -> None:
    """Markets from the environment, merged over the config file's (the suite's sandbox config has USD/COP always
    open): a market named here replaces the file's field by field, the file's other markets stay."""
    monkeypatch.setenv("RUNBOOKS_MARKETS", json.dumps(markets))
