"""Reading back the events a runbook emitted, from the Prefect API the tests run against."""

from __future__ import annotations

import time
from typing import Any


def runbook_events(resource_id: str, *, until: Any = None, timeout: float = 30,
                   names: list[str] | None = None) -> list[Any]:
    """Events of ``resource_id`` (e.g. ``runbooks.restore.trading_db``), oldest first; waits up to ``timeout``
    for ``until(events)`` to hold, since events reach the server asynchronously."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOrder, EventResourceFilter

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=EventFilter(resource=EventResourceFilter(id=[resource_id]),
                                                         event=EventNameFilter(name=names) if names else None,
                                                         order=EventOrder.ASC), limit=50)
            events = list(page.events)
            # Every page: a replace restore emits more than one page of events (CI: its last steps were cut off).
            while page.next_page and len(events) < 2000:
                page = client.read_events_page(str(page.next_page))
                events += page.events
        if until is None or until(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def steps_of(events: list[Any], run_id: str | None = None) -> list[tuple[str, str]]:
    """(event name, step) pairs, optionally only those related to one flow run."""
    pairs = []
    for event in events:
        if run_id and not any(r.id == f"prefect.flow-run.{run_id}" for r in event.related):
            continue
        if event.event.startswith("runbooks.step."):
            pairs.append((event.event.removeprefix("runbooks.step."), event.payload.get("step")))
    return pairs
