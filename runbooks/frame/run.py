"""What every runbook run has: settings loaded once, every secret registered for scrubbing, a logger, durable
steps, and one way to conclude: the result model returned, the markdown report published."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from prefect import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from pydantic import BaseModel, Field

from runbooks.core.errors import RunbookError
from runbooks.core.redact import install_log_scrubbing, scrub, scrub_data
from runbooks.decisions.incidents import PostIncident, post_incident_markdown
from runbooks.decisions.report import report_head, report_tail, started
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
    "Unexpected result for failed state"); the result rides on it, for ``outcome`` to read."""

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


@dataclass
class _Report(Generic[R]):
    result: R
    render: Callable[[R], str]
    key: str
    description: str
    post_incident: Callable[[R], PostIncident | None] | None = None


_CURRENT: ContextVar[RunbookRun[Any] | None] = ContextVar("runbooks_current_run", default=None)

UNEXPECTED_NEXT_STEP = ("An error no step expected ended this run (a bug, or a state the runbook does not know): "
                        "read the run's logs for the traceback, check what the steps above already did, and report "
                        "it before rerunning.")


class RunbookRun(Generic[R]):
    """One run of a runbook. Create it first thing in the flow, then declare its result with ``report``."""

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
        self._report: _Report[R] | None = None
        self.concluded = False
        _CURRENT.set(self)

    def report(self, result: R, *, render: Callable[[R], str], key: str, description: str,
               post_incident: Callable[[R], PostIncident | None] | None = None) -> R:
        """Declare the result this run fills and how its report renders and is published. From here on the frame
        concludes the run with it on any exception, one no step expected included (a cancellation or a kill ends
        the run without a report: its step events show where it stopped)."""
        self._report = _Report(result, render, key, description, post_incident)
        return result

    def conclude(self, result: R | None = None, *, key: str | None = None, description: str | None = None,
                 message: str | None = None) -> State:
        """Publish the report declared with ``report`` (and, for a recovery that acted, the post-incident report)
        and return the flow's final state, carrying the (scrubbed) result: as data when it completed, on a
        ``RunbookFailed`` when it failed. ``key`` and ``description`` replace the declared ones for this report,
        ``message`` the state's default message."""
        if self._report is None:
            raise RuntimeError(f"{self.runbook}: conclude() before report(): declare the result first")
        spec = self._report
        result = spec.result if result is None else result
        self.concluded = True
        result.seconds = time.monotonic() - self._started
        result.timeline = list(self.steps.timeline)
        result = type(result).model_validate(scrub_data(result.model_dump(mode="json")))
        try:
            markdown = spec.render(result)
        except Exception:  # a report that cannot render still says how the run ended
            self.logger.exception("The %s report did not render; publishing its summary", self.runbook)
            markdown = "\n".join([report_head(self.runbook, "succeeded" if result.succeeded else "FAILED"), "",
                                   f"{started(result)}.", "", *report_tail(result, body="")])
        publish_report(key=key or spec.key, markdown=markdown, description=description or spec.description)
        incident = spec.post_incident(result) if spec.post_incident else None
        if incident is not None:
            timeline = [(t.started_at, f"{t.step}: {t.outcome} ({t.seconds:.1f} s)") for t in result.timeline]
            publish_report(key=f"{self.runbook}-post-incident-{self.resource}",
                           markdown=post_incident_markdown(incident, started_at=self.started_at,
                                                           seconds=result.seconds, timeline=timeline,
                                                           flow_run_id=self.flow_run_id),
                           description=f"Post-incident report (the incident response playbook's post-mortem template): "
                                       f"{incident.title}")
        self.steps.event("run.concluded", succeeded=result.succeeded, error=result.error,
                         seconds=round(result.seconds, 3))
        if result.succeeded:
            return Completed(data=result, message=message or f"{self.runbook} succeeded")
        if result.declined:  # not Failed: the failure automation pages P2 for an outage, and this is none
            return Completed(data=result, message=message or f"{self.runbook} not approved ({result.declined}); "
                             "nothing was changed")
        message = message or result.error or f"{self.runbook} failed"
        return Failed(data=RunbookFailed(f"{self.runbook} failed: {message}", result), message=message)

    def conclude_unexpected(self, exc: Exception) -> State:
        """An exception no step caught: the report is still published, the concluding event still emitted, and
        the run fails with the error in one line (the traceback goes to the run's logs)."""
        assert self._report is not None
        result = self._report.result
        result.succeeded = False
        if isinstance(exc, RunbookError):  # ours, raised past the steps: its message already says what to do
            self.logger.error("%s failed: %s", self.runbook, scrub(str(exc)))
            result.error = scrub(str(exc))
        else:
            self.logger.error("%s: unexpected error", self.runbook, exc_info=exc)
            result.error = f"unexpected error: {type(exc).__name__}: {scrub(str(exc))}"
            if UNEXPECTED_NEXT_STEP not in result.next_steps:
                result.next_steps.append(UNEXPECTED_NEXT_STEP)
        return self.conclude(result)


def conclude_unexpected(exc: Exception) -> State | None:
    """The final state for an exception that escaped a flow body, if a run that declared its report is in
    progress and has not concluded; None otherwise (the exception then propagates as it is)."""
    run = _CURRENT.get()
    if run is None or run._report is None or run.concluded:
        return None
    return run.conclude_unexpected(exc)
