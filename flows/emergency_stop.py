"""Emergency stop: the trading system runbook's "Kill Switch Activation" (API, database and environment switches)
and the USD/COP playbook's kill switch, as one run that ends only when the halt has been read back, or pages P0
saying exactly what was tried.

Trigger: ``runbooks run emergency-stop -p reason=...``, the ``emergency-stop`` deployment from the Prefect UI, or
an automation on a P0 event (``[trading_safety]`` docs). Stopping is always allowed: no approval, no lock, no
market-calendar gate. Blast radius: trading halts (the platform's kill switch, its ``trading_mode`` row, or its
services restarted with ``TRADING_MODE=halt``); positions are not touched. Rollback: ``resume-trading`` or the
confirmation code, by a human.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from prefect import flow
from prefect.states import State
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from runbooks.adapters.repository import open_repository
from runbooks.adapters.trading_holds import TradingHolds, halt_scope
from runbooks.core.errors import RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.freshness import TradingHold
from runbooks.decisions.incidents import Notice
from runbooks.decisions.report import report_tail, started, table
from runbooks.frame import RunbookResult, RunbookRun, notify
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import takes
from runbooks.settings import ApiSettings
from runbooks.settings.trading_safety import DatabaseSwitch, Switch
from runbooks.tasks.kill_switches import DatabaseMode, read_database_mode, run_environment_switch, set_database_halt
from runbooks.tasks.trading_api import halt_trading, read_trading_status

RUNBOOK = "emergency-stop"


def _one_line(value: str) -> str:
    """Plain text on one line: it goes into the platform's halt record, a page and the report."""
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError(f"{value[:80]!r} contains a control character: give it as plain text on one line")
    if not value.strip():
        raise ValueError("is blank: say why trading must stop")
    return value.strip()


def _name(value: str) -> str:
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError(f"{value[:80]!r} contains a control character: give it as plain text")
    return value.strip()


class EmergencyStopParameters(BaseModel):
    """Why, and who asks. Which switches are tried, and in what order, is in the settings (``[trading_safety]``)."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, AfterValidator(_one_line)] = Field(min_length=1, max_length=500, description="Why "
                                                              "trading must stop (sent with the kill switch, "
                                                              "kept in the report and the page).")
    initiated_by: Annotated[str, AfterValidator(_name)] = Field(default="", max_length=200, description="Who "
                                                                 "asks (an engineer, or the automation); empty: "
                                                                 "this run.")


class Attempt(BaseModel):
    """One kill switch tried."""

    switch: Switch
    outcome: Literal["halted", "failed", "skipped"]
    detail: str
    verified_by: str | None = Field(default=None, description="what read the halt back")
    seconds: float = 0.0


class EmergencyStopResult(RunbookResult):
    reason: str
    initiated_by: str
    api_before: dict[str, Any] | None = Field(default=None, description="the trading API's status before")
    database_before: DatabaseMode | None = None
    already_halted: str | None = Field(default=None, description="who halted it and since when, when it was")
    attempts: list[Attempt] = Field(default_factory=list)
    halted_via: Switch | None = None
    verified_by: str | None = None
    record: TradingHold | None = Field(default=None, description="this runbook's record of the halt it made, by "
                                       "which resume-trading knows it for the runbooks' own")
    unrecorded: str | None = Field(default=None, description="why the halt could not be recorded")
    notification: str | None = None


def render_report(result: EmergencyStopResult) -> str:
    state = ("ALREADY HALTED" if result.already_halted else f"HALTED via {result.halted_via}" if result.halted_via
             else "NOT HALTED")
    lines = [f"# Emergency stop — {state}", "",
             f"{started(result)}. Requested by {result.initiated_by}: {result.reason}."
             + (f" Notification: {result.notification}." if result.notification else ""), ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.already_halted:
        lines += [f"Trading was already halted: {result.already_halted}. Left as it was.", ""]
    if result.verified_by:
        lines += [f"Verified by reading back the {result.verified_by}.", ""]
    before = result.api_before or {}
    db = result.database_before
    lines += ["## Before",
              f"- trading API: {before.get('trading_mode', 'unreadable')}"
              + (f" (by {before.get('paused_by')}, since {before.get('changed_at')})" if before.get("paused_by")
                 else ""),
              f"- database row: {db.value if db else 'unreadable'}"
              + (f" (since {db.updated_at:%Y-%m-%d %H:%M:%S %Z})" if db and db.updated_at else ""), ""]
    if result.attempts:
        lines += ["## Kill switches tried, in order",
                  table(["switch", "outcome", "verified by", "seconds", "detail"],
                        [[a.switch, a.outcome, a.verified_by or "-", f"{a.seconds:.1f}", a.detail]
                         for a in result.attempts])]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _run_name() -> str:
    return run_name(RUNBOOK, run_parameters().get("initiated_by") or None, stamp=True)


def _budgeted(api: ApiSettings | None, seconds: float) -> ApiSettings | None:
    """The trading API's settings, every call bounded to ``seconds`` retries included: a hanging API must not hold
    the stop back from the next switch."""
    if api is None:
        return None
    return api.model_copy(update={"retry_budget_seconds": min(api.retry_budget_seconds, seconds),
                                  "timeout_seconds": min(api.timeout_seconds, seconds)})


def _record(run: RunbookRun[EmergencyStopResult], reason: str, *, api: ApiSettings | None,
            switch_db: DatabaseSwitch | None, database_mode: Callable[[], DatabaseMode | None],
            ) -> tuple[TradingHold | None, str | None]:
    """Write the runbooks' own record of this halt: the holder and ``changed_at`` the trading API reads back now
    (or, without an answering API, the database row's time). resume-trading lifts a halt as the runbooks' own only
    while the platform still matches it."""
    holder, changed_at = None, None
    if api is not None:
        try:
            now = read_trading_status(api=api)
            holder, changed_at = now.get("paused_by"), now.get("changed_at")
        except RunbookError:
            pass
    if holder is None:
        row = database_mode()
        if row is not None and row.updated_at is not None and switch_db is not None:
            holder, changed_at = f"database:{switch_db.table}.{switch_db.key}", row.updated_at.isoformat()
    if holder is None:
        return None, "neither the trading API nor the database row could be read back to record who holds it"
    record = TradingHold(actor=str(holder), mode="halted", changed_at=None if changed_at is None else str(changed_at),
                         reason=reason, flow_run_id=run.flow_run_id, at=datetime.now(UTC))
    try:
        TradingHolds(open_repository(run.settings.repository), halt_scope(run.settings)).put(RUNBOOK, record)
    except (RunbookError, OSError) as exc:
        return None, _line(exc)
    return record, None


def _line(exc: Exception) -> str:
    return scrub(f"{exc}" if isinstance(exc, RunbookError) else f"{type(exc).__name__}: {exc}").splitlines()[0][:400]


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(EmergencyStopParameters)
def emergency_stop_flow(params: EmergencyStopParameters) -> State:
    """Halt trading: each configured kill switch in turn until the halt is read back; page P0 either way."""
    run: RunbookRun[EmergencyStopResult] = RunbookRun(RUNBOOK, resource="trading")
    settings = run.settings
    safety = settings.trading_safety
    api = _budgeted(settings.trading_api, safety.api_budget_seconds)
    switch_db = safety.database
    database = settings.databases.get(switch_db.database) if switch_db else None
    result = EmergencyStopResult(started_at=run.started_at, reason=params.reason,
                                 initiated_by=params.initiated_by or run.actor)
    run.report(result, render=render_report, key="emergency-stop-report",
               description="Emergency stop (the trading system runbook's kill switch activation)")
    reason = f"{params.reason} (emergency-stop, requested by {result.initiated_by})"[:500]

    def api_mode() -> str | None:
        """The API's trading mode now, None when it cannot be read (within the budget)."""
        if api is None:
            return None
        try:
            return str(read_trading_status(api=api).get("trading_mode"))
        except RunbookError:
            return None

    def database_mode() -> DatabaseMode | None:
        if switch_db is None or database is None:
            return None
        try:
            return read_database_mode(database=database, switch=switch_db, timeout=safety.database_timeout_seconds)
        except RunbookError:
            return None

    with run.step("read trading state") as figures:
        if api is not None:
            try:
                result.api_before = read_trading_status(api=api)
            except RunbookError as exc:
                run.logger.warning("Trading API unreadable: %s", _line(exc))
        result.database_before = database_mode()
        figures.update(api=(result.api_before or {}).get("trading_mode"),
                       database=result.database_before.value if result.database_before else None)
    before = result.api_before or {}
    if before.get("trading_mode") == "halted":
        result.already_halted = (f"the trading API says halted by {before.get('paused_by') or 'someone unnamed'} "
                                 f"({before.get('reason') or 'no reason given'}) since {before.get('changed_at')}")
    elif switch_db and result.database_before and result.database_before.value == switch_db.halt_value:
        since = result.database_before.updated_at
        result.already_halted = (f"the database row {switch_db.table}.{switch_db.key} reads "
                                 f"{switch_db.halt_value!r}"
                                 + (f" since {since:%Y-%m-%d %H:%M:%S %Z}" if since else ""))
    if result.already_halted:
        run.logger.warning("Trading already halted: %s; left as it is", result.already_halted)
        run.steps.event("trading.left-as-is", mode="halted", detail=result.already_halted)
        result.succeeded = True
        return run.conclude(result, message=f"trading already halted: {result.already_halted}")

    for switch in safety.switches:
        attempt = Attempt(switch=switch, outcome="skipped", detail="")
        begun = time.monotonic()
        with run.step(f"kill switch: {switch}") as figures:
            try:
                if switch == "api":
                    if api is None:
                        attempt.detail = "no [trading_api] configured"
                    else:
                        status = halt_trading(api=api, reason=reason, actor=run.actor)  # reads the status back
                        attempt.outcome, attempt.verified_by = "halted", "trading API status"
                        attempt.detail = f"POST kill-switch; status reads {status.get('trading_mode')!r}"
                elif switch == "database":
                    if switch_db is None:
                        attempt.detail = "no [trading_safety.database] configured"
                    elif database is None:
                        attempt.detail = f"database {switch_db.database!r} is not in [databases]"
                    else:
                        row = set_database_halt(database=database, switch=switch_db,
                                                timeout=safety.database_timeout_seconds)
                        mode = api_mode()
                        attempt.detail = (f"UPDATE {switch_db.table} SET {switch_db.value_column} = "
                                          f"{switch_db.halt_value!r}; row reads {row.value!r}; trading API "
                                          f"reads {mode or 'nothing (unreachable)'}")
                        if row.value == switch_db.halt_value:
                            attempt.outcome, attempt.verified_by = "halted", "database row"
                        else:
                            attempt.outcome = "failed"
                else:
                    env = safety.environment
                    if env is None:
                        attempt.detail = "no [trading_safety.environment] command configured"
                    else:
                        done = run_environment_switch(switch=env, value=switch_db.halt_value if switch_db else "halt")
                        mode, read = api_mode(), database_mode()
                        attempt.detail = (f"{env.variable}=halt, {done.argv0} exited 0 in {done.seconds:.1f} s; "
                                          f"trading API reads {mode or 'nothing (unreachable)'}, database row "
                                          f"reads {read.value if read else 'nothing (unreadable)'}")
                        if mode == "halted":
                            attempt.outcome, attempt.verified_by = "halted", "trading API status"
                        elif switch_db and read and read.value == switch_db.halt_value:
                            attempt.outcome, attempt.verified_by = "halted", "database row"
                        else:
                            attempt.outcome = "failed"
            except Exception as exc:  # noqa: BLE001 - whatever stopped this switch, the next one is tried
                attempt.outcome, attempt.detail = "failed", _line(exc)
            attempt.seconds = time.monotonic() - begun
            figures.update(outcome=attempt.outcome, verified_by=attempt.verified_by)
        result.attempts.append(attempt)
        run.logger.log(30 if attempt.outcome != "halted" else 20, "Kill switch %s: %s (%s)", switch,
                       attempt.outcome, attempt.detail)
        if attempt.outcome == "halted":
            result.halted_via, result.verified_by = switch, attempt.verified_by
            break

    tried = "; ".join(f"{a.switch}: {a.outcome} ({a.detail})" for a in result.attempts)
    if result.halted_via:
        with run.step("record the halt") as figures:
            result.record, result.unrecorded = _record(run, params.reason, api=api, switch_db=switch_db,
                                                       database_mode=database_mode)
            figures.update(recorded=result.record is not None)
        if result.unrecorded:
            result.next_steps.append(f"The halt could not be recorded ({result.unrecorded}): resume-trading will "
                                     "treat it as someone else's and ask the approver to name its holder")
        run.steps.event("trading.halted", how=result.halted_via, verified_by=result.verified_by,
                        actor=run.actor, initiated_by=result.initiated_by, reason=params.reason)
        result.next_steps += ["Assess the damage (P&L, failed orders, risk violations) and find the root cause "
                              "(the trading system runbook's 'After Emergency Halt')",
                              "Bring trading back with the resume-trading runbook (paper mode first), never by "
                              "hand-editing the switch"]
        result.notification = notify(run, Notice(
            kind="start", severity="P0", title=f"EMERGENCY STOP: trading halted via {result.halted_via}",
            status="Identified", impact="trading is halted: no new orders",
            details=[f"Requested by {result.initiated_by}: {params.reason}",
                     f"Verified by reading back the {result.verified_by}", f"Tried: {tried}"],
            actions=result.next_steps))
        result.succeeded = True
        return run.conclude(result, message=f"trading halted via {result.halted_via} (verified)")

    result.error = f"trading could NOT be halted: {tried or 'no kill switch is configured'}"
    result.next_steps += ["Halt trading by hand NOW: the dashboard's kill switch, the database row, or stop the "
                          "trading services (the trading system runbook's 'Kill Switch Activation')",
                          "Then fix what failed above and run emergency-stop again to verify"]
    run.steps.event("trading.halt-failed", tried=tried[:2000], initiated_by=result.initiated_by)
    result.notification = notify(run, Notice(
        kind="start", severity="P0", title="EMERGENCY STOP FAILED: trading is NOT halted", status="Investigating",
        impact="an emergency stop was requested and no kill switch could be verified: trading may go on",
        details=[f"Requested by {result.initiated_by}: {params.reason}",
                 *[f"{a.switch}: {a.outcome}: {a.detail}" for a in result.attempts]],
        actions=result.next_steps))
    return run.conclude(result)

