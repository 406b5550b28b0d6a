"""Drawdown limit: the trading system runbook's "Daily Drawdown Limit (DDL) Triggered" (check the P&L, verify the
breaker, manual override if needed) as a run that reports, and resets the breaker only when asked, with approval.

Trigger: ``runbooks run drawdown-limit`` (report) or ``-p reset=true -p reason=...`` (the override), or the
``drawdown-limit`` deployment. Never automatic: no schedule, no trigger resets anything. Blast radius: a report
reads only; a reset re-arms the daily drawdown limit's breaker, so trading the breaker stopped may start again.
Rollback: the breaker trips again on its own limit; emergency-stop halts at once.
"""

from __future__ import annotations

import hashlib
import json

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field, model_validator

from runbooks.core.errors import ConfigurationError
from runbooks.core.text import is_blank
from runbooks.decisions.report import report_tail, started, table
from runbooks.decisions.weekly import CircuitBreaker, PnlFigures, RiskMetrics
from runbooks.frame import Approval, RunbookResult, RunbookRun, request_approval
from runbooks.frame.approval import POLL_HELP, TIMEOUT_HELP
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import takes
from runbooks.frame.words import OneLine
from runbooks.tasks.reports import publish_report
from runbooks.tasks.trading_api import read_circuit_breakers, read_pnl, read_risk_metrics
from runbooks.tasks.trading_modes import reset_drawdown_limit

RUNBOOK = "drawdown-limit"


class DrawdownParameters(BaseModel):
    """Report, or reset the breaker (``reset``, with a reason and the frame's approval)."""

    model_config = ConfigDict(extra="forbid")

    reset: bool = Field(default=False, description="Reset the daily drawdown limit's breaker (the manual "
                        "override), after approval; false: only report.")
    reason: OneLine = Field(default="", max_length=500, description="Why the breaker may be reset (required with "
                         "reset).")
    confirm: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$", description="The plan hash a run without "
                                "it printed: approves exactly that reset, unattended.")
    approval_timeout_seconds: int = Field(default=1800, ge=10, le=86400, description=TIMEOUT_HELP)
    approval_poll_seconds: int = Field(default=5, ge=1, le=300, description=POLL_HELP)

    @model_validator(mode="after")
    def _reset_says_why(self) -> DrawdownParameters:
        if self.reset and is_blank(self.reason):
            raise ValueError("reset=true needs a reason: say why the breaker may be reset")
        return self


class DrawdownResult(RunbookResult):
    reset_requested: bool
    reason: str = ""
    limit_percent: float
    breaker_name: str
    pnl: PnlFigures | None = None
    risk: RiskMetrics | None = None
    breakers: list[CircuitBreaker] = Field(default_factory=list)
    triggered: bool | None = Field(default=None, description="the daily drawdown limit's breaker is tripped")
    plan_hash: str | None = None
    approval: Approval | None = None
    breaker_after: str | None = None
    action: str = "none (report only)"


def render_report(result: DrawdownResult) -> str:
    state = {True: "TRIGGERED", False: "armed", None: "unknown"}[result.triggered]
    lines = [f"# Daily drawdown limit — {state}", "", f"{started(result)}. Action: **{result.action}**.", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    pnl, risk = result.pnl, result.risk
    total = pnl.total if pnl and pnl.total is not None else "?"
    lines += ["## P&L and drawdown",
              f"- today's P&L: {total} {(pnl.currency or '') if pnl else ''}"
              f" (realized {pnl.realized if pnl else '?'}, unrealized {pnl.unrealized if pnl else '?'})",
              f"- drawdown: {risk.drawdown_percent if risk and risk.drawdown_percent is not None else '?'} % "
              f"(limit {result.limit_percent:g} %)", ""]
    if result.breakers:
        lines += ["## Circuit breakers", table(["breaker", "state", "detail"],
                                               [[b.name, b.state, b.detail or "-"] for b in result.breakers])]
    if result.reset_requested:
        lines += [f"Reset requested: {result.reason}. Plan hash `{result.plan_hash}`.", ""]
    if result.approval:
        a = result.approval
        lines += [f"**{'Approved' if a.approved else 'Not approved'}** by {a.approver} ({a.via}): {a.reason}", ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _run_name() -> str:
    return run_name(RUNBOOK, "reset" if run_parameters().get("reset") else "report", stamp=True)


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(DrawdownParameters)
def drawdown_limit_flow(params: DrawdownParameters) -> State:
    """Read the P&L, the drawdown and the breakers; reset the drawdown limit only when asked and approved."""
    run: RunbookRun[DrawdownResult] = RunbookRun(RUNBOOK, resource="trading")
    settings = run.settings
    safety = settings.trading_safety
    api = settings.trading_api
    result = DrawdownResult(started_at=run.started_at, reset_requested=params.reset, reason=params.reason,
                            limit_percent=safety.resume.max_drawdown_percent,
                            breaker_name=safety.resume.drawdown_breaker)
    run.report(result, render=render_report, key="drawdown-limit-report",
               description="Daily drawdown limit (the trading system runbook's circuit breaker)")
    if api is None:
        raise ConfigurationError("drawdown-limit needs the trading API, and [trading_api] is not configured.",
                                 hint="add [trading_api] base_url (and token) to the settings.")
    with run.step("read P&L") as figures:
        result.pnl = read_pnl(api=api, path=safety.paths.pnl, window="1d")
        figures.update(total=result.pnl.total)
    with run.step("read drawdown and breakers") as figures:
        result.risk = read_risk_metrics(api=api, path=safety.paths.risk_metrics)
        result.breakers = read_circuit_breakers(api=api, path=safety.paths.circuit_breakers)
        mine = [b for b in result.breakers if b.name == result.breaker_name]
        result.triggered = mine[0].tripped if mine else None
        figures.update(drawdown=result.risk.drawdown_percent, triggered=result.triggered)
    if not mine:
        result.error = (f"the trading API lists no circuit breaker named {result.breaker_name!r} (listed: "
                        f"{', '.join(b.name for b in result.breakers) or 'none'})")
        result.next_steps.append("Set [trading_safety.resume] drawdown_breaker to the platform's breaker name")
        return run.conclude(result)
    if not params.reset:
        if result.triggered:
            result.next_steps.append("The breaker stopped trading for today. Assess the losses before any reset "
                                     "(drawdown-limit with reset=true and a reason, approved)")
        result.succeeded = True
        return run.conclude(result)
    if not result.triggered:
        result.action, result.succeeded = "none: the breaker is not triggered", True
        return run.conclude(result)
    drawdown = result.risk.drawdown_percent
    result.plan_hash = hashlib.sha256(json.dumps({"breaker": result.breaker_name, "state": mine[0].state,
                                                  "drawdown": drawdown}, sort_keys=True).encode()).hexdigest()[:12]
    publish_report(key="drawdown-limit-plan", markdown=render_report(result),
                   description="Drawdown-limit reset awaiting approval")
    result.approval = request_approval(
        run, plan_hash=result.plan_hash, confirm=params.confirm,
        summary=f"Reset the daily drawdown limit {result.breaker_name!r} (drawdown {drawdown} %, limit "
                f"{result.limit_percent:g} %): {params.reason}",
        timeout_seconds=params.approval_timeout_seconds, poll_seconds=params.approval_poll_seconds,
        plan_artifact="drawdown-limit-plan")
    if not result.approval.approved:
        result.declined = f"{result.approval.via}: {result.approval.reason}"
        result.action = "not reset (not approved)"
        return run.conclude(result)
    with run.step("reset drawdown limit", destructive=True) as figures:
        result.breaker_after = reset_drawdown_limit(
            api=api, path=safety.paths.reset_ddl, breakers_path=safety.paths.circuit_breakers,
            breaker=result.breaker_name, actor=run.actor,
            reason=f"{params.reason} (approved by {result.approval.approver})"[:500])
        figures.update(after=result.breaker_after)
    run.steps.event("risk.ddl-reset", breaker=result.breaker_name, approver=result.approval.approver,
                    reason=params.reason, drawdown=drawdown)
    result.action = f"reset: {result.breaker_name} is {result.breaker_after} again"
    result.next_steps.append("Watch the P&L: the breaker trips again at its limit; emergency-stop halts at once")
    result.succeeded = True
    return run.conclude(result, message=result.action)
