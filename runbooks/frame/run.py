"""What every runbook run has: settings loaded once, every secret registered for scrubbing, a logger, durable
steps, and one way to conclude: the result model returned, the markdown report published."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from prefect import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from pydantic import BaseModel, Field

from runbooks.core.redact import install_log_scrubbing, scrub_data
from runbooks.decisions.incidents import PostIncident, post_incident_markdown
from runbooks.frame.parameters import InvalidParameters
from runbooks.frame.steps import Steps, StepTiming
from runbooks.settings import Settings, load_settings
from runbooks.tasks.reports import publish_report


class RunbookResult(BaseModel):
    """Fields every runbook's result has; each runbook's result model extends it."""

    started_at: datetime
    seconds: float = 0.0
    timeline: list[StepTiming] = Field(default_factory=list)
    succeeded: bool = False
    error: str | None = Field(default=None, description="why the run failed or was refused")
    declined: str | None = Field(default=None, description="the plan was not approved (rejected, or no decision in "
                                 "time) and nothing changed: a human decision or its absence, not an outage")
    next_steps: list[str] = Field(default_factory=list)


R = TypeVar("R", bound=RunbookResult)


class RunbookFailed(Exception):
    """A runbook that concluded failed. Prefect needs an exception as a failed state's data (else the engine logs
    "Unexpected result for failed state"); the result rides on it, for ``outcome`` and the drill to read."""

    def __init__(self, message: str, result: RunbookResult) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.result))


def outcome(state: State) -> Any:
    """The result model a runbook's final state carries, failed or not (an exception if the run ended without
    one: it crashed, or its parameters were refused)."""
    data = state.result(raise_on_failure=False)
    return data.result if isinstance(data, RunbookFailed) else data


class _OneLineForExpectedFailures(logging.Filter):
    """A runbook's failure is reported in its report and its state message. Prefect's engine re-raises the failed
    state's exception at the end of a deployment run and logs it with a traceback of its own frames ("Engine
    execution exited with unexpected exception"); for a concluded runbook or refused parameters that is one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RunbookFailed | InvalidParameters):
            record.msg, record.args = "%s", (str(exc),)
            record.exc_info, record.exc_text = None, None
        return True


_ENGINE_FILTER = _OneLineForExpectedFailures()


def quiet_expected_failures() -> None:
    """Idempotent; the engine logs through ``prefect.flow_runs`` (a logger filter sees only its own records)."""
    engine = logging.getLogger("prefect.flow_runs")
    if _ENGINE_FILTER not in engine.filters:
        engine.addFilter(_ENGINE_FILTER)


class RunbookRun(Generic[R]):
    """One run of a runbook. Create it first thing in the flow."""

    def __init__(self, runbook: str, *, resource: str | Callable[[Settings], str]) -> None:
        """``resource`` names what the run acts on in its events; a callable takes it from the settings."""
        install_log_scrubbing()
        quiet_expected_failures()
        self.runbook = runbook
        self.logger = get_run_logger()
        self.flow_run_id = str(flow_run.id) if flow_run.id else None
        self.settings: Settings = load_settings()
        _ = self.settings.secrets  # resolve Secret blocks once, so their values are scrubbed from the start
        self.resource = resource(self.settings) if callable(resource) else resource
        self.steps = Steps(runbook=runbook, resource=self.resource, flow_run_id=self.flow_run_id)
        self.step = self.steps.step
        self.started_at = datetime.now(UTC)
        self._started = time.monotonic()
        # Who this run is to the trading platform: halts carry it, and only a halt that still carries it is resumed.
        self.actor = f"runbooks-{runbook}:{(self.flow_run_id or 'local')[:8]}"

    def conclude(self, result: R, *, render: Callable[[R], str], report_key: str, description: str,
                 post_incident: Callable[[R], PostIncident | None] | None = None, message: str | None = None) -> State:
        """Publish the report (and, for a recovery that acted, seed 002's post-incident report) and return the
        flow's final state, carrying the (scrubbed) result: as data when it completed, on a ``RunbookFailed`` when
        it failed. ``message`` replaces the state's default message."""
        result.seconds = time.monotonic() - self._started
        result.timeline = list(self.steps.timeline)
        result = type(result).model_validate(scrub_data(result.model_dump(mode="json")))
        publish_report(key=report_key, markdown=render(result), description=description)
        incident = post_incident(result) if post_incident else None
        if incident is not None:
            timeline = [(t.started_at, f"{t.step}: {t.outcome} ({t.seconds:.1f} s)") for t in result.timeline]
            publish_report(key=f"{self.runbook}-post-incident-{self.resource}",
                           markdown=post_incident_markdown(incident, started_at=self.started_at,
                                                           seconds=result.seconds, timeline=timeline,
                                                           flow_run_id=self.flow_run_id),
                           description=f"Post-incident report (seed 002 template): {incident.title}")
        self.steps.event("run.concluded", succeeded=result.succeeded, error=result.error,
                         seconds=round(result.seconds, 3))
        if result.succeeded:
            return Completed(data=result, message=message or f"{self.runbook} succeeded")
        if result.declined:  # not Failed: the failure automation pages P2 for an outage, and this is none
            return Completed(data=result, message=message or f"{self.runbook} not approved ({result.declined}); "
                             "nothing was changed")
        message = message or result.error or f"{self.runbook} failed"
        return Failed(data=RunbookFailed(f"{self.runbook} failed: {message}", result), message=message)
