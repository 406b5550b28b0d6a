"""Flow run names an operator can tell apart in the UI: runbook, target, mode, and ``dry-run`` when nothing changes.

Prefect calls a ``flow_run_name`` callable with no arguments, so each flow's ``_run_name`` reads its parameters
through ``run_parameters()`` and builds the name with ``run_name()``. The parameters are what a caller typed (a
dict from a deployment, the API or a Python call, possibly not yet validated), so every
part is cleaned and bounded here: a name carries no control or layout character and never runs past
``MAX_LENGTH``; the ``dry-run`` marker and the timestamp survive any truncation, so a dry run's name always differs
from the real run's.

    restore-trading_db-replace-from-20261121T020000Z-dry-run
    backup-all-20261121T0200Z
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from prefect.runtime import flow_run

MAX_LENGTH = 100
MAX_PART = 40
DRY_RUN = "dry-run"
STAMP_FORMAT = "%Y%m%dT%H%MZ"
INSTANT_FORMAT = "%Y%m%dT%H%M%SZ"
# Letters and digits of any script, and the punctuation our identifiers use; everything else (spaces, slashes,
# control and bidi characters) becomes "_". Runs collapse so a hostile value cannot pad a name.
_UNSAFE = re.compile(r"[^\w.+:@=-]+")


def run_parameters() -> Mapping[str, Any]:
    """The current run's parameters (the flow's named arguments): ``{}`` outside a run.

    Keys absent from a deployment's dict mean "the default", so read them with ``.get(key, default)``.
    """
    value = flow_run.parameters
    return value if isinstance(value, Mapping) else {}


def listed(values: Any, empty: str = "all") -> str:
    """``a+b`` for a list of names, ``empty`` for none (an empty list means "all" in our parameter models)."""
    if isinstance(values, str):
        return values or empty
    if isinstance(values, Iterable):
        names = [str(v) for v in values]
        return "+".join(names) if names else empty
    return empty


def instant(value: Any) -> str | None:
    """A time parameter as a compact UTC stamp (``20261121T020000Z``); text that is not an aware ISO time is kept as
    text (``latest``), to be cleaned like any other part."""
    if value is None or value == "":
        return None
    when = value
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            return value
    if isinstance(when, datetime) and when.tzinfo is not None:
        return f"{when.astimezone(UTC):{INSTANT_FORMAT}}"
    return str(value)


def _clean(part: Any) -> str:
    return _UNSAFE.sub("_", str(part)).strip("_-")[:MAX_PART]


def run_name(runbook: str, *parts: str | None, dry_run: bool = False, stamp: bool = False,
             now: datetime | None = None) -> str:
    """``runbook-part-part[-dry-run][-YYYYmmddTHHMMZ]``: ``None`` and empty parts are left out.

    Args:
        runbook: the kebab-case runbook name (``runbooks.flows.RUNBOOKS`` key).
        parts: target, mode and other key parameters, in reading order.
        dry_run: append ``dry-run`` (never truncated away).
        stamp: append the UTC minute the run was created (scheduled runbooks repeat; the stamp tells them apart).
        now: the time for the stamp (tests); default now.

    Returns:
        A name of at most ``MAX_LENGTH`` characters from ``[\\w.+:@=-]``.
    """
    tail = ([DRY_RUN] if dry_run else []) + ([f"{(now or datetime.now(UTC)).astimezone(UTC):{STAMP_FORMAT}}"]
                                             if stamp else [])
    head = "-".join(c for c in (_clean(p) for p in (runbook, *parts) if p is not None) if c)
    budget = MAX_LENGTH - sum(len(t) + 1 for t in tail)
    return "-".join([head[:budget].rstrip("_-") or "run", *tail])
