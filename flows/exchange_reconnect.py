"""Exchange reconnect: the trading system runbook's "Exchange Connection Issues" (check the exchange status, restart
the connection, switch to paper mode) as a run that verifies each move and escalates what it cannot fix.

Trigger: ``runbooks run exchange-reconnect`` or the ``exchange-reconnect`` deployment. Blast radius: the
platform's exchange connection; if the exchange stays down, live trading switches to paper mode (no order reaches
the exchange), recorded so that resume-trading brings it back. A halt or pause in force is never touched.
Rollback: resume-trading once the exchange is back.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from runbooks.adapters.repository import open_repository
from runbooks.adapters.trading_holds import TradingHolds, halt_scope
from runbooks.core.errors import ConfigurationError, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.freshness import TradingHold
from runbooks.decisions.incidents import Notice
from runbooks.decisions.report import report_tail, started, table
from runbooks.frame import RunbookResult, RunbookRun, notify
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import takes
from runbooks.frame.words import OneLine
from runbooks.tasks.trading_api import read_trading_status
from runbooks.tasks.trading_modes import ExchangeStatus, read_exchange_status, reconnect_exchange, switch_to_paper

RUNBOOK = "exchange-reconnect"


class ExchangeParameters(BaseModel):
    """The bounds are ``[trading_safety.exchange]``."""

    model_config = ConfigDict(extra="forbid")

    initiated_by: OneLine = Field(default="", max_length=200, description="Who asks; empty: this run.")
    paper_if_down: bool = Field(default=True, description="If the exchange stays down, switch live trading to "
                                "paper mode (the runbook's step 3); false: only escalate.")


class Reading(BaseModel):
    at: datetime
    connected: bool | None
    status: str


class ExchangeResult(RunbookResult):
    initiated_by: str
    before: ExchangeStatus | None = None
    readings: list[Reading] = Field(default_factory=list)
    reconnected: bool | None = Field(default=None, description="the status read connected after the reconnect")
    trading: dict[str, Any] | None = Field(default=None, description="the trading status when it stayed down")
    action: str = "none"
    escalation: str | None = None
    notification: str | None = None


def render_report(result: ExchangeResult) -> str:
    before = result.before
    lines = [f"# Exchange reconnect — {result.action}", "", f"{started(result)}. Requested by "
             f"{result.initiated_by}." + (f" Notification: {result.notification}." if result.notification else ""),
             "", f"Before: {before.exchange or 'exchange'} {before.status}." if before else "Before: unreadable.", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.escalation:
        lines += [f"**Escalation (P1):** {result.escalation}", ""]
    if result.readings:
        lines += ["## After the reconnect", table(["at", "connected", "status"], [
            [f"{r.at:%H:%M:%S}", {True: "yes", False: "no", None: "-"}[r.connected], r.status]
            for r in result.readings])]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _run_name() -> str:
    return run_name(RUNBOOK, run_parameters().get("initiated_by") or None, stamp=True)


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(ExchangeParameters)
def exchange_reconnect_flow(params: ExchangeParameters) -> State:
    """Check, reconnect, verify; still down: paper mode (live trading only) and escalate."""
    run: RunbookRun[ExchangeResult] = RunbookRun(RUNBOOK, resource="exchange")
    settings = run.settings
    safety = settings.trading_safety
    api = settings.trading_api
    result = ExchangeResult(started_at=run.started_at, initiated_by=params.initiated_by or run.actor)
    run.report(result, render=render_report, key="exchange-reconnect-report",
               description="Exchange reconnect (the trading system runbook's exchange connection issues)")
    if api is None:
        raise ConfigurationError("exchange-reconnect needs the trading API, and [trading_api] is not configured.",
                                 hint="add [trading_api] base_url (and token) to the settings.")
    with run.step("read exchange status") as figures:
        result.before = read_exchange_status(api=api, path=safety.paths.exchange_status)
        figures.update(connected=result.before.connected, status=result.before.status)
    if result.before.connected:
        result.action, result.succeeded = "none: connected", True
        return run.conclude(result, message="the exchange is connected")

    with run.step("reconnect") as figures:
        reconnect_exchange(api=api, path=safety.paths.exchange_reconnect)
        deadline = time.monotonic() + safety.exchange.reconnect_timeout_seconds
        while True:
            link = read_exchange_status(api=api, path=safety.paths.exchange_status)
            result.readings.append(Reading(at=datetime.now(UTC), connected=link.connected, status=link.status))
            if link.connected or time.monotonic() >= deadline:
                break
            time.sleep(safety.exchange.poll_seconds)
        result.reconnected = bool(link.connected)
        figures.update(reconnected=result.reconnected, readings=len(result.readings))
    if result.reconnected:
        result.action, result.succeeded = "reconnected (verified)", True
        run.steps.event("exchange.reconnected")
        return run.conclude(result, message="the exchange reconnected")

    why = (f"the exchange is still {link.status} {safety.exchange.reconnect_timeout_seconds:g} s after a "
           "reconnect")
    # Whatever fails from here, the escalation still goes out: the exchange is down.
    try:
        status = read_trading_status(api=api)
        result.trading = {k: v for k, v in status.items() if k != "history"}
        mode = status.get("trading_mode")
        if mode == "running" and params.paper_if_down:
            with run.step("switch to paper mode", destructive=True):
                answer = switch_to_paper(api=api, path=safety.paths.paper, actor=run.actor,
                                         reason=f"exchange-reconnect: {why}"[:500], expected=status)
            if answer["switched"]:
                result.trading = {k: v for k, v in answer["after"].items() if k != "history"}
                result.action = "still down: switched live trading to PAPER mode"
                _record(run, answer["after"], why)
                run.steps.event("trading.paper", actor=run.actor, reason=why)
            else:  # someone halted or paused meanwhile: theirs stands
                result.action = (f"still down: trading left {answer.get('trading_mode')} as it was (it changed "
                                 "before the switch)")
        elif mode == "running":
            result.action = "still down: trading left live (paper_if_down=false)"
        else:
            result.action = f"still down: trading left {mode} as it was"
    except RunbookError as exc:
        result.action = f"still down: paper mode NOT confirmed ({scrub(str(exc)).splitlines()[0][:300]})"
        result.next_steps.append("Switch trading to paper mode by hand (the trading system runbook's 'Switch to "
                                 "Paper Mode') or halt it with emergency-stop")
    result.escalation = why
    result.next_steps += ["Check the exchange's own status page and the platform's exchange credentials and network "
                          "(the trading system runbook's 'Exchange Connection Issues')",
                          "Once it is back: exchange-reconnect to verify, then resume-trading for live trading"]
    run.steps.event("escalation", labels={"runbooks.severity": "P1"}, severity="P1", reason=why)
    result.notification = notify(run, Notice(
        kind="start", severity="P1", title="exchange-reconnect: the exchange is DOWN", status="Investigating",
        impact=f"no order reaches the exchange; {result.action}", details=[why], actions=result.next_steps))
    result.error = f"escalated: {why}"
    return run.conclude(result)


def _record(run: RunbookRun[ExchangeResult], status: dict[str, Any], why: str) -> None:
    """The paper mode this run set, recorded for resume-trading to know it for the runbooks' own."""
    try:
        TradingHolds(open_repository(run.settings.repository), halt_scope(run.settings)).put(RUNBOOK, TradingHold(
            actor=str(status.get("paused_by")), mode="paper", changed_at=status.get("changed_at"), reason=why,
            flow_run_id=run.flow_run_id, at=datetime.now(UTC)))
    except (RunbookError, OSError) as exc:
        run.logger.warning("Paper mode not recorded (%s): resume-trading will need its holder named",
                           scrub(str(exc)))
