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
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

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
from runbooks.frame.words import CleanedReason, OneLine
from runbooks.settings import ApiSettings
from runbooks.settings.trading_safety import Switch
from runbooks.tasks.kill_switches import DatabaseMode, read_database_mode, run_environment_switch, set_database_halt
from runbooks.tasks.trading_api import halt_trading, read_trading_status

RUNBOOK = "emergency-stop"


class EmergencyStopParameters(BaseModel):
    """Why, and who asks. Which switches are tried, and in what order, is in the settings (``[trading_safety]``)."""

    model_config = ConfigDict(extra="forbid")

    reason: CleanedReason = Field(min_length=1, max_length=500, description="Why trading must stop (sent with the "
                                  "kill switch, kept in the report and the page). Line breaks and control "
                                  "characters become spaces: a stop never fails on its wording.")
    initiated_by: OneLine = Field(default="", max_length=200, description="Who asks (an engineer, or the "
                                  "automation); empty: this run.")


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


def _put_record(run: RunbookRun[EmergencyStopResult], record: TradingHold) -> str | None:
    """Write the runbooks' own record of this halt; returns why it could not be written."""
    try:
        TradingHolds(open_repository(run.settings.repository), halt_scope(run.settings)).put(RUNBOOK, record)
    except Exception as exc:  # noqa: BLE001 - the halt stands; the record is what resume-trading attributes it by
        return _line(exc)
    return None


def _line(exc: BaseException) -> str:
    return scrub(f"{exc}" if isinstance(exc, RunbookError) else f"{type(exc).__name__}: {exc}").splitlines()[0][:400]


class _Platform:
    """What the run reads back, every read bounded and never raising: a read that fails is None."""

    def __init__(self, run: RunbookRun[EmergencyStopResult], api: ApiSettings | None) -> None:
        self.run = run
        self.api = api
        safety = run.settings.trading_safety
        self.safety = safety
        self.switch = safety.database
        self.database = run.settings.databases.get(self.switch.database) if self.switch else None

    def status(self) -> dict[str, Any] | None:
        if self.api is None:
            return None
        try:
            return read_trading_status(api=self.api)
        except Exception as exc:  # noqa: BLE001 - an unreadable API is a fact to report, not the end of the stop
            self.run.logger.warning("Trading API unreadable: %s", _line(exc))
            return None

    def row(self) -> DatabaseMode | None:
        if self.switch is None or self.database is None:
            return None
        try:
            return read_database_mode(database=self.database, switch=self.switch,
                                      timeout=self.safety.database_timeout_seconds)
        except Exception as exc:  # noqa: BLE001 - as above
            self.run.logger.warning("Trading-mode row unreadable: %s", _line(exc))
            return None

    def row_halted(self, row: DatabaseMode | None) -> bool:
        return self.switch is not None and row is not None and row.value == self.switch.halt_value

    def verify(self) -> tuple[str | None, str, dict[str, Any] | None]:
        """After the database or environment switch: the trading API must read halted within ``honour_seconds``;
        only an API that cannot be read leaves the database row as the proof. Returns (verified by, what was
        read, the API's last status)."""
        deadline = time.monotonic() + self.safety.honour_seconds
        while True:
            status = self.status()
            if status is not None and status.get("trading_mode") == "halted":
                return "trading API status", "trading API reads halted", status
            if time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, self.safety.honour_seconds))
        row = self.row()
        said = f"database row reads {row.value if row else 'nothing (unreadable)'}"
        if status is None:
            return ("database row (the trading API cannot be read)" if self.row_halted(row) else None,
                    f"trading API unreadable; {said}", None)
        return None, (f"trading API still reads {status.get('trading_mode')!r} after {self.safety.honour_seconds:g} "
                      f"s: the platform has not taken it; {said}"), status


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(EmergencyStopParameters)
def emergency_stop_flow(params: EmergencyStopParameters) -> State:
    """Halt trading: each configured kill switch in turn until the halt is read back; page P0 either way."""
    run: RunbookRun[EmergencyStopResult] = RunbookRun(RUNBOOK, resource="trading")
    settings = run.settings
    safety = settings.trading_safety
    api = _budgeted(settings.trading_api, safety.api_budget_seconds)
    platform = _Platform(run, api)
    switch_db, database = platform.switch, platform.database
    result = EmergencyStopResult(started_at=run.started_at, reason=params.reason,
                                 initiated_by=params.initiated_by or run.actor)
    run.report(result, render=render_report, key="emergency-stop-report",
               description="Emergency stop (the trading system runbook's kill switch activation)")
    reason = f"{params.reason} (emergency-stop, requested by {result.initiated_by})"[:500]

    with run.step("read trading state") as figures:
        result.api_before = platform.status()
        result.database_before = platform.row()
        figures.update(api=(result.api_before or {}).get("trading_mode"),
                       database=result.database_before.value if result.database_before else None)
    before = result.api_before or {}
    if before.get("trading_mode") == "halted":
        result.already_halted = (f"the trading API says halted by {before.get('paused_by') or 'someone unnamed'} "
                                 f"({before.get('reason') or 'no reason given'}) since {before.get('changed_at')}")
    elif result.api_before is None and platform.row_halted(result.database_before):
        # The row is the proof only when the API cannot be read: an API that answers "running" is not halted,
        # whatever a row says (the platform may not be reading it).
        assert switch_db is not None and result.database_before is not None
        since = result.database_before.updated_at
        result.already_halted = (f"the trading API cannot be read and the database row {switch_db.table}."
                                 f"{switch_db.key} reads {switch_db.halt_value!r}"
                                 + (f" since {since:%Y-%m-%d %H:%M:%S %Z}" if since else ""))
    elif platform.row_halted(result.database_before):
        run.logger.warning("The database row says halt but the trading API reads %r: the platform is not honouring "
                           "it; pressing the switches", before.get("trading_mode"))
    if result.already_halted:
        run.logger.warning("Trading already halted: %s; left as it is", result.already_halted)
        run.steps.event("trading.left-as-is", mode="halted", detail=result.already_halted)
        result.succeeded = True
        return run.conclude(result, message=f"trading already halted: {result.already_halted}")

    for switch in safety.order():
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
                        if status.get("paused_by") == run.actor:  # ours, not someone's who pressed meanwhile
                            result.record = TradingHold(actor=run.actor, mode="halted", reason=params.reason,
                                                        changed_at=status.get("changed_at"),
                                                        flow_run_id=run.flow_run_id, at=datetime.now(UTC))
                elif switch == "database":
                    if switch_db is None:
                        attempt.detail = "no [trading_safety.database] configured"
                    elif database is None:
                        attempt.detail = f"database {switch_db.database!r} is not in [databases]"
                    else:
                        row = set_database_halt(database=database, switch=switch_db,
                                                timeout=safety.database_timeout_seconds)
                        verified, said, seen = platform.verify()
                        attempt.detail = (f"UPDATE {switch_db.table} SET {switch_db.value_column} = "
                                          f"{switch_db.halt_value!r}" + ("" if row.changed else " (it already "
                                          "read so)") + f"; {said}")
                        attempt.outcome, attempt.verified_by = ("halted", verified) if verified else ("failed", None)
                        if verified and row.changed and seen is not None and row.updated_at is not None \
                                and seen.get("changed_at") == row.updated_at.isoformat():
                            # The platform's halt is the row this run wrote (its time is ours): recorded as ours.
                            result.record = TradingHold(actor=str(seen.get("paused_by")), mode="halted",
                                                        changed_at=seen.get("changed_at"), reason=params.reason,
                                                        flow_run_id=run.flow_run_id, at=datetime.now(UTC))
                else:
                    env = safety.environment
                    if env is None:
                        attempt.detail = "no [trading_safety.environment] command configured"
                    else:
                        done = run_environment_switch(switch=env, value=switch_db.halt_value if switch_db else "halt")
                        verified, said, _status = platform.verify()
                        attempt.detail = (f"{env.variable}=halt, {done.argv0} exited 0 in {done.seconds:.1f} s; "
                                          f"{said}")
                        attempt.outcome, attempt.verified_by = ("halted", verified) if verified else ("failed", None)
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
        result.record = None

    tried = "; ".join(f"{a.switch}: {a.outcome} ({a.detail})" for a in result.attempts)
    if result.halted_via:
        with run.step("record the halt") as figures:
            if result.record is None:
                result.unrecorded = ("the halt in force cannot be proven this run's (someone may have halted "
                                     "meanwhile, or the platform did not say who holds it)")
            else:
                result.unrecorded = _put_record(run, result.record)
                if result.unrecorded:
                    result.record = None
            figures.update(recorded=result.record is not None)
        if result.unrecorded:
            result.next_steps.append(f"The halt was not recorded as the runbooks' own ({result.unrecorded}): "
                                     "resume-trading will ask for its holder to be named")
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
