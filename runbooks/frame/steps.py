"""Durable steps: each step of a runbook is a Prefect event the moment it starts, finishes or fails.

The markdown report is published at the end; a run SIGKILLed before that still leaves its timeline in the
event feed, and automations can react to a step (``runbooks.step.failed``) or a fact (``runbooks.trading.halted``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from runbooks.core.redact import scrub, scrub_data
from runbooks.decisions.report import Figure, StepTiming


def _emit(event: str, resource: dict[str, str], related: list[dict[str, str]], payload: dict[str, Any]) -> None:
    from prefect.events import emit_event

    emit_event(event=event, resource=resource, related=related,  # type: ignore[arg-type]
               payload=scrub_data(payload, limit=500))


def _flush(timeout: float = 2.0) -> None:
    """Wait (bounded) until Prefect's events worker has sent what is queued: a step's start is on the server
    before its work begins, so a run SIGKILLed inside the step still shows where it died (under load the worker
    lagged, and a kill mid-pg_restore lost the step's start)."""
    from prefect.events.worker import EventsWorker, should_emit_events

    if not should_emit_events():
        return
    worker = EventsWorker.instance()
    sent = threading.Event()

    def wait() -> None:
        try:
            worker.wait_until_empty()
        except Exception:  # noqa: BLE001 - a stopped worker: nothing more will be sent, nothing to wait for
            pass
        sent.set()

    threading.Thread(target=wait, name="runbooks-events-flush", daemon=True).start()
    sent.wait(timeout)


class Steps:
    """The timeline of one run, mirrored as events on the Prefect server."""

    def __init__(self, *, runbook: str, resource: str, flow_run_id: str | None) -> None:
        self.runbook = runbook
        self.resource = resource
        self.flow_run_id = flow_run_id
        self.timeline: list[StepTiming] = []
        self.before_destructive: list[Callable[[], None]] = []

    def _resource(self, **labels: str) -> dict[str, str]:
        return {"prefect.resource.id": f"runbooks.{self.runbook}.{self.resource}",
                "prefect.resource.name": f"{self.runbook} {self.resource}",
                "runbooks.runbook": self.runbook, "runbooks.resource": self.resource, **labels}

    def _related(self) -> list[dict[str, str]]:
        if not self.flow_run_id:
            return []
        return [{"prefect.resource.id": f"prefect.flow-run.{self.flow_run_id}", "prefect.resource.role": "flow-run"}]

    def event(self, name: str, *, about: str | None = None, labels: dict[str, str] | None = None,
              **payload: Any) -> None:
        """A fact worth reacting to (``runbooks.<name>``), beside the step events. ``about`` names another resource
        than the run's (``database.trading_db`` → ``runbooks.database.trading_db``), so an automation can follow
        one database or table whichever run speaks of it. ``labels`` are resource labels an automation can match on."""
        resource = self._resource() if about is None else {"prefect.resource.id": f"runbooks.{about}",
                                                            "prefect.resource.name": about,
                                                            "runbooks.runbook": self.runbook}
        _emit(f"runbooks.{name}", {**resource, **(labels or {})}, self._related(), payload)

    @contextmanager
    def step(self, name: str, *, destructive: bool = False, **figures: Figure) -> Iterator[dict[str, Figure]]:
        """Record a step; the body may add figures (bytes, rows, …) to the yielded dict.

        A destructive step first runs every ``before_destructive`` check (e.g. "is my lock still held?"), so a
        run that lost its lock stops before the change, not after.
        """
        started_at, started = datetime.now(UTC), time.monotonic()
        labels = {"runbooks.step": name}
        _emit("runbooks.step.started", self._resource(**labels), self._related(),
              {"step": name, "destructive": destructive, "figures": dict(figures)})
        _flush()
        outcome, error = "ok", None
        try:
            if destructive:
                for check in self.before_destructive:
                    check()
            yield figures
        except BaseException as exc:
            outcome, error = f"failed: {type(exc).__name__}", scrub(str(exc))[:500]
            raise
        finally:
            seconds = time.monotonic() - started
            self.timeline.append(StepTiming(step=name, started_at=started_at, seconds=seconds, outcome=outcome,
                                            figures=dict(figures)))
            _emit("runbooks.step.failed" if error is not None or outcome != "ok" else "runbooks.step.finished",
                  self._resource(**labels), self._related(),
                  {"step": name, "seconds": round(seconds, 3), "figures": dict(figures), "error": error})
