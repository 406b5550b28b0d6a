"""Instants as the platform's APIs and the Docker engine write them: RFC 3339 / ISO 8601 with ``Z`` or an offset,
read as aware UTC datetimes; a naive one is taken as UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_instant(value: object) -> datetime | None:
    """The instant ``value`` names, or None for nothing, the zero time (``0001-01-01…``, Go's and so Docker's
    "never") or anything unreadable: a caller decides what a missing time means, it never guesses one."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
