"""Resume trading: the trading system runbook's "After Emergency Halt" and "Gradual Restart", and the USD/COP
playbook's resume with ``CONFIRM_RESUME``, as a run that checks before it lifts anything, goes through paper mode
first, and resumes live trading only with an approver and a reason.

Each run makes at most one move, so nothing sits in a worker for a day:

1. trading halted or paused: the preconditions, then **paper mode**, recorded with the end of its watch
   (``[trading_safety.resume] paper_watch``, the seed's 24 hours); a deployment run schedules its own follow-up run
   at that time;
2. in this runbook's paper mode after the watch: the preconditions again, the plan approved (or ``confirm`` equal
   to its hash), then **live trading** with the confirmation code, at ``position_size_fraction`` where the platform
   supports it;
3. in paper mode before the watch ends: the preconditions are reported, nothing changes.

Trigger: ``runbooks run resume-trading -p reason=...`` or the ``resume-trading`` deployment. Blast radius: the
platform's trading mode. Rollback: ``emergency-stop``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from runbooks.adapters.registry import RegistryRef
from runbooks.adapters.repository import open_repository
from runbooks.adapters.repository.records import RecordStore
from runbooks.adapters.trading_holds import TradingHolds, halt_scope
from runbooks.core.errors import ConfigurationError, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.freshness import SEVERITY_ORDER
from runbooks.decisions.incidents import Notice
from runbooks.decisions.models import judge
from runbooks.decisions.report import report_tail, started, table
from runbooks.frame import Approval, RunbookResult, RunbookRun, notify, outcome, request_approval
from runbooks.frame.approval import POLL_HELP, TIMEOUT_HELP
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import takes
from runbooks.frame.words import OneLine, Reason
from runbooks.settings import Settings
from runbooks.tasks.health import check_database_health
from runbooks.tasks.models import read_evidence, read_predictions
from runbooks.tasks.reports import publish_report
from runbooks.tasks.trading_api import read_circuit_breakers, read_risk_metrics, read_trading_status
from runbooks.tasks.trading_modes import read_exchange_status, resume_live, switch_to_paper

RUNBOOK = "resume-trading"
RECORDS = "trading-resumes"  # records/<kind>/<platform>/resume-trading.json
# Runbooks whose halts this one may lift as the runbooks' own; any other runbook's hold it lifts itself.
LIFTS_HOLDS_OF = ("emergency-stop", "exchange-reconnect")


class ResumeParameters(BaseModel):
    """Why, who asks, and whose halt. The watch, the fraction and the drawdown limit are ``[trading_safety.resume]``."""

    model_config = ConfigDict(extra="forbid")

    reason: Reason = Field(min_length=1, max_length=500, description="Why trading may resume (the root cause found "
                           "and fixed).")
    initiated_by: OneLine = Field(default="", max_length=200, description="Who asks; empty: this run.")
    halt_holder: OneLine | None = Field(default=None, max_length=200, description="Lift a halt the runbooks did not "
                                     "make: the holder exactly as the platform names it (the report of a refused "
                                     "run shows it). Without it, someone else's halt is never lifted.")
    dry_run: bool = Field(default=False, description="Check the preconditions and print the plan and its hash; "
                          "change nothing.")
    confirm: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$", description="The plan hash a dry run "
                                "printed: approves exactly that plan, unattended.")
    approval_timeout_seconds: int = Field(default=1800, ge=10, le=86400, description=TIMEOUT_HELP)
    approval_poll_seconds: int = Field(default=5, ge=1, le=300, description=POLL_HELP)
    follow_up_of: str | None = Field(default=None, max_length=64, pattern=r"^[0-9a-f-]+$", description="Set by "
                                     "the run that started a paper watch on the follow-up it schedules: the "
                                     "follow-up only resumes live trading from that watch, and does nothing else.")


class PaperWatch(BaseModel):
    """This runbook's record of the paper mode it set: live trading resumes only while the platform still
    matches it (same holder, same ``changed_at``), and not before ``until``."""

    paper_by: str
    changed_at: str | None
    started_at: datetime
    until: datetime
    lifted: str = Field(description="whose halt was lifted into paper mode, and how it was attributed")
    reason: str
    initiated_by: str
    flow_run_id: str | None = None
    follow_up: str | None = Field(default=None, description="the scheduled follow-up run, if one was made")


class Precondition(BaseModel):
    name: str
    ok: bool
    evidence: str
    fix: str | None = None


Phase = Literal["live already", "to paper", "watching", "to live", "refused"]


class ResumeResult(RunbookResult):
    reason: str
    initiated_by: str
    dry_run: bool
    status_before: dict[str, Any] | None = None
    phase: Phase | None = None
    holder: str | None = Field(default=None, description="who holds the halt or paper mode in force")
    attribution: str | None = Field(default=None, description="why this run may lift it, or why not")
    preconditions: list[Precondition] = Field(default_factory=list)
    plan: str | None = None
    plan_hash: str | None = None
    approval: Approval | None = None
    watch: PaperWatch | None = None
    status_after: dict[str, Any] | None = None
    action: str = "none"
    notification: str | None = None


def render_report(result: ResumeResult) -> str:
    lines = [f"# Resume trading — {result.action if result.action != 'none' else (result.phase or 'checked')}", "",
             f"{started(result)}. Requested by {result.initiated_by}: {result.reason}."
             + (" Dry run." if result.dry_run else "")
             + (f" Notification: {result.notification}." if result.notification else ""), ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    before = result.status_before or {}
    lines += [f"Trading was **{before.get('trading_mode', 'unknown')}**"
              + (f", held by {result.holder} since {before.get('changed_at')}" if result.holder else "") + ".", ""]
    if result.attribution:
        lines += [f"Attribution: {result.attribution}.", ""]
    if result.preconditions:
        lines += ["## Preconditions", table(["check", "ok", "evidence", "fix"],
                                            [[p.name, "yes" if p.ok else "**NO**", p.evidence, p.fix or "-"]
                                             for p in result.preconditions])]
    if result.plan:
        lines += ["## Plan", f"{result.plan}", "", f"Plan hash: `{result.plan_hash}`", ""]
    if result.approval:
        a = result.approval
        lines += [f"**{'Approved' if a.approved else 'Not approved'}** by {a.approver} ({a.via}): {a.reason}", ""]
    if result.watch:
        w = result.watch
        lines += ["## Paper watch", f"Paper mode since {w.started_at:%Y-%m-%d %H:%M} UTC, set by {w.paper_by}; live "
                  f"trading may resume from **{w.until:%Y-%m-%d %H:%M} UTC**. Lifted: {w.lifted}."
                  + (f" Follow-up run: {w.follow_up}." if w.follow_up else ""), ""]
    if result.status_after:
        after = result.status_after
        lines += [f"After: trading **{after.get('trading_mode')}**, position size fraction "
                  f"{after.get('position_size_fraction', '-')}.", ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _run_name() -> str:
    p = run_parameters()
    return run_name(RUNBOOK, p.get("initiated_by") or None, dry_run=bool(p.get("dry_run")), stamp=True)


def _hash(**plan: Any) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _line(exc: BaseException) -> str:
    return scrub(str(exc) if isinstance(exc, RunbookError) else f"{type(exc).__name__}: {exc}").splitlines()[0][:300]


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(ResumeParameters)
def resume_trading_flow(params: ResumeParameters) -> State:
    """One move towards live trading: halted → paper (checked, recorded, watched), paper → live (checked,
    approved, verified)."""
    run: RunbookRun[ResumeResult] = RunbookRun(RUNBOOK, resource="trading")
    settings = run.settings
    api = settings.trading_api
    result = ResumeResult(started_at=run.started_at, reason=params.reason, dry_run=params.dry_run,
                          initiated_by=params.initiated_by or run.actor)
    run.report(result, render=render_report, key="resume-trading-report",
               description="Resume trading (the trading system runbook's gradual restart)")
    if api is None:
        raise ConfigurationError("resume-trading needs the trading API, and [trading_api] is not configured.",
                                 hint="add [trading_api] base_url (and token) to the settings.")
    repository = open_repository(settings.repository)
    scope = halt_scope(settings)
    watches: RecordStore[PaperWatch] = RecordStore(repository, RECORDS, scope, PaperWatch, on_damaged="fail",
                                                   what="paper-watch record")
    holds = TradingHolds(repository, scope)

    with run.step("read trading state") as figures:
        status = read_trading_status(api=api)
        result.status_before = {k: v for k, v in status.items() if k != "history"}
        watch = watches.get(RUNBOOK)
        records = holds.by_runbook()
        mode = status.get("trading_mode")
        result.holder = None if mode == "running" else str(status.get("paused_by") or "someone unnamed")
        figures.update(mode=mode, holder=result.holder, watch=watch is not None, holds=len(records))

    if mode == "running":
        result.phase, result.succeeded = "live already", True
        if watch is not None and not params.dry_run:
            watches.delete(RUNBOOK)  # live again, by whoever: the watch is over
        result.next_steps.append("Trading is live: nothing to resume.")
        return run.conclude(result, message="trading is already live")

    ours_in_paper = (watch is not None and mode == "paper" and status.get("paused_by") == watch.paper_by
                     and status.get("changed_at") == watch.changed_at)
    if watch is not None and not ours_in_paper:
        run.logger.warning("The platform moved since this runbook's paper mode (%s by %s): the watch is void",
                           mode, status.get("paused_by"))
        if not params.dry_run:
            watches.delete(RUNBOOK)
        watch = None
    result.watch = watch

    # Whose halt: the runbooks' own (a record that still matches the platform), another runbook's (it lifts it
    # itself), or someone else's (only with the holder named explicitly).
    matching = {name: r for name, r in records.items()
                if r.actor == status.get("paused_by") and r.changed_at is not None
                and r.changed_at == status.get("changed_at")}
    other_runbook = sorted(n for n in matching if n not in LIFTS_HOLDS_OF)
    if ours_in_paper and watch is not None:
        result.attribution = f"this runbook's own paper mode (set {watch.started_at:%Y-%m-%d %H:%M} UTC)"
    elif any(n in LIFTS_HOLDS_OF for n in matching):
        name = next(n for n in LIFTS_HOLDS_OF if n in matching)
        result.attribution = f"the {name} runbook's halt, by its record (flow run {matching[name].flow_run_id})"
    elif other_runbook:
        result.attribution = f"held by the {other_runbook[0]} runbook, which lifts its own hold"
    elif params.halt_holder is not None and params.halt_holder == result.holder:
        result.attribution = f"someone else's halt ({result.holder}), lifted because the approver named its holder"
    else:
        result.attribution = (f"someone else's halt ({result.holder}): not lifted without halt_holder naming it"
                              + (f" (halt_holder {params.halt_holder!r} does not match)" if params.halt_holder
                                 else ""))

    checks = _preconditions(run, result, other_runbook=other_runbook)
    foreign = not ours_in_paper and not any(n in LIFTS_HOLDS_OF for n in matching)
    if other_runbook or (foreign and params.halt_holder != result.holder):
        result.phase = "refused"
        result.error = f"not resumed: {result.attribution}"
        result.next_steps.append(
            f"Let the {other_runbook[0]} runbook lift its own hold" if other_runbook else
            f"If {result.holder!r}'s halt may be lifted, rerun with halt_holder={result.holder!r} (the approver "
            "takes that decision)")
        return run.conclude(result)
    if params.follow_up_of is not None and not (ours_in_paper and watch is not None
                                                 and watch.flow_run_id == params.follow_up_of):
        # Scheduled a day ago for one paper watch: anything else (a new halt, someone's pause) is a human's call.
        result.phase, result.succeeded = "refused", True
        result.action = "none: the paper watch this follow-up was scheduled for no longer stands"
        result.next_steps.append("Trading was left as it is; run resume-trading by hand if it should resume")
        return run.conclude(result, message=result.action)
    failed = [c for c in checks if not c.ok]
    if failed:
        result.phase = "refused"
        result.error = "not resumed: " + "; ".join(f"{c.name}: {c.evidence}" for c in failed)
        result.next_steps += [f"{c.name}: {c.fix}" for c in failed if c.fix]
        return run.conclude(result)

    if not params.dry_run:  # records of the runbooks' halts that no longer match the platform are spent
        for name in (n for n in LIFTS_HOLDS_OF if n in records and n not in matching):
            holds.forget(name)
    if not ours_in_paper:
        return _to_paper(run, result, params, watches, holds, status=status, lifted=sorted(
            n for n in LIFTS_HOLDS_OF if n in matching))
    assert watch is not None
    now = datetime.now(UTC)
    if now < watch.until:
        result.phase, result.succeeded = "watching", True
        left = watch.until - now
        result.next_steps.append(f"Paper watch: {left.total_seconds() / 3600:.1f} h left; live trading may resume "
                                 f"from {watch.until:%Y-%m-%d %H:%M} UTC (run resume-trading again then"
                                 + (f"; follow-up run {watch.follow_up}" if watch.follow_up else "") + ").")
        return run.conclude(result, message=f"paper watch: {left.total_seconds() / 3600:.1f} h left")
    return _to_live(run, result, params, watches, watch=watch)


def _preconditions(run: RunbookRun[ResumeResult], result: ResumeResult, *, other_runbook: list[str]
                   ) -> list[Precondition]:
    """Every precondition, each a step with its evidence; all are checked, so one report lists all that fail."""
    settings = run.settings
    safety = settings.trading_safety
    api = settings.trading_api
    checks = result.preconditions

    def check(name: str, body: Any) -> None:
        with run.step(f"precondition: {name}") as figures:
            try:
                found = body()
            except Exception as exc:  # noqa: BLE001 - a check that cannot be made is a precondition not met
                found = Precondition(name=name, ok=False, evidence=f"could not be checked: {_line(exc)}",
                                     fix="make the check answer, then rerun")
            checks.append(found)
            figures.update(ok=found.ok)

    def market_data() -> Precondition:
        from runbooks.flows.data_freshness import data_freshness_flow

        freshness = outcome(data_freshness_flow(act=False, return_state=True))
        if isinstance(freshness, BaseException):
            raise freshness
        if freshness.error or not freshness.tables:
            why = freshness.error or "no monitored table"
            return Precondition(name="market data", ok=False, evidence=f"not measured: {why}",
                                fix="make the data-freshness runbook measure the market data")
        bad = [f for f in freshness.findings if f.gates_trading
               and SEVERITY_ORDER[f.severity] >= SEVERITY_ORDER["error"]]
        if bad:
            return Precondition(name="market data", ok=False, evidence="; ".join(f"{f.key}: {f.reason}"
                                                                               for f in bad)[:600],
                                fix="wait for fresh data passing its quality checks (the data-freshness report)")
        return Precondition(name="market data", ok=True, evidence=f"fresh and passing quality (worst: "
                            f"{freshness.worst}, {len(freshness.tables)} table(s))")

    def serving_model() -> Precondition:
        if settings.inference_api is None:
            return Precondition(name="serving model", ok=False, evidence="no [inference_api] configured",
                                fix="configure [inference_api] so the serving model can be judged")
        ref = RegistryRef(kind=settings.models.registry, api=settings.inference_api, model_id=settings.models.model_id)
        reading = read_evidence(ref, window=settings.models.metrics_window)
        verdict = judge(reading.evidence, settings.models.policy)
        flowing = read_predictions(ref)
        ok = verdict.verdict in ("healthy", "monitor") and flowing.flowing
        evidence = (f"{settings.models.model_id} {reading.evidence.version}: {verdict.verdict}"
                    + (f" ({'; '.join(verdict.reasons)})" if verdict.reasons else "")
                    + f"; predictions {'flowing' if flowing.flowing else 'NOT flowing'}")
        return Precondition(name="serving model", ok=ok, evidence=evidence,
                            fix=None if ok else "run model-rollback, or fix the model, before resuming")

    def risk_limits() -> Precondition:
        limit = safety.resume.max_drawdown_percent
        metrics = read_risk_metrics(api=api, path=safety.paths.risk_metrics)
        tripped = [b for b in read_circuit_breakers(api=api, path=safety.paths.circuit_breakers) if b.tripped]
        drawdown = None if metrics.drawdown_percent is None else abs(metrics.drawdown_percent)  # -5.1 % is 5.1 %
        problems = []
        if drawdown is None:
            problems.append("the risk engine gave no drawdown")
        elif drawdown >= limit:
            problems.append(f"drawdown {drawdown:g} % at or over the {limit:g} % limit")
        problems += [f"circuit breaker {b.name} {b.state}" for b in tripped]
        evidence = f"drawdown {drawdown if drawdown is not None else '?'} % (limit {limit:g} %); breakers: " + (
            ", ".join(f"{b.name} {b.state}" for b in tripped) or "none tripped")
        return Precondition(name="risk limits", ok=not problems, evidence=evidence if not problems else
                            "; ".join(problems), fix=None if not problems else "bring risk within its limits "
                            "(the drawdown-limit runbook reports and, with approval, resets the breaker)")

    def runbook_holds() -> Precondition:
        if other_runbook:
            return Precondition(name="runbook holds", ok=False, evidence=f"the {other_runbook[0]} runbook holds "
                                "the halt in force", fix=f"let {other_runbook[0]} lift it (it does, once its "
                                "condition clears)")
        return Precondition(name="runbook holds", ok=True, evidence="no other runbook holds the halt in force")

    def database() -> Precondition:
        switch = safety.database
        name = switch.database if switch else None
        if name is None or name not in settings.databases:
            return Precondition(name="database", ok=False, evidence=f"the trading database {name!r} is not in "
                                "the inventory", fix="set [trading_safety.database] database to an entry of "
                                "[databases]")
        found = check_database_health(name=name, database=settings.databases[name], baseline=settings.health)
        ok = found.status in ("ok", "warn")
        return Precondition(name="database", ok=ok, evidence=f"{name}: {found.status} {found.detail or ''}".strip(),
                            fix=None if ok else f"make {name} answer (the operations runbook's database recovery)")

    def exchange() -> Precondition:
        link = read_exchange_status(api=api, path=safety.paths.exchange_status)
        ok = link.connected is True
        return Precondition(name="exchange", ok=ok, evidence=f"{link.exchange or 'exchange'}: {link.status}",
                            fix=None if ok else "run exchange-reconnect, or restore the exchange link")

    for name, body in (("market data", market_data), ("serving model", serving_model), ("risk limits", risk_limits),
                       ("runbook holds", runbook_holds), ("database", database), ("exchange", exchange)):
        check(name, body)
    return checks


def _approve(run: RunbookRun[ResumeResult], result: ResumeResult, params: ResumeParameters, *, summary: str
             ) -> bool:
    """The frame's approval of ``result.plan``; False (and the result says why) when not approved, or when a
    precondition no longer holds once an operator approved (the wait may have been long)."""
    publish_report(key="resume-trading-plan", markdown=render_report(result),
                   description="Resume-trading plan awaiting approval")
    assert result.plan_hash is not None
    result.approval = request_approval(run, plan_hash=result.plan_hash, confirm=params.confirm, summary=summary,
                                       timeout_seconds=params.approval_timeout_seconds,
                                       poll_seconds=params.approval_poll_seconds, plan_artifact="resume-trading-plan")
    if not result.approval.approved:
        result.declined = f"{result.approval.via}: {result.approval.reason}"
        result.next_steps.append("Trading was left as it was; rerun when the plan may go ahead.")
        return False
    if result.approval.via == "operator":
        # An approval can take up to a day: what was checked before it is checked again before acting on it.
        result.preconditions = []
        failed = [c for c in _preconditions(run, result, other_runbook=[]) if not c.ok]
        if failed:
            result.error = ("approved, but not acted on: since the approval was asked, " + "; ".join(
                f"{c.name}: {c.evidence}" for c in failed))
            result.next_steps += [f"{c.name}: {c.fix}" for c in failed if c.fix]
            return False
    return True


def _to_paper(run: RunbookRun[ResumeResult], result: ResumeResult, params: ResumeParameters,
              watches: RecordStore[PaperWatch], holds: TradingHolds, *, status: dict[str, Any], lifted: list[str]
              ) -> State:
    settings = run.settings
    safety = settings.trading_safety
    watch_for: timedelta = safety.resume.paper_watch
    result.phase = "to paper"
    result.plan = (f"Lift {result.holder!r}'s {status.get('trading_mode')} hold into PAPER mode (no order reaches "
                   f"the exchange), then watch for {watch_for}; live trading only after that, approved.")
    result.plan_hash = _hash(phase="paper", holder=result.holder, changed_at=status.get("changed_at"))
    if params.dry_run:
        result.action, result.succeeded = "would switch to paper mode (dry run)", True
        result.next_steps.append(f"Run with confirm={result.plan_hash}, or without it to approve in the UI, to "
                                 "switch to paper mode")
        return run.conclude(result)
    # Lifting a kill switch is a human decision, even the runbooks' own (an unattended run must never undo an
    # emergency stop): approved in the UI, or by confirm equal to the plan hash.
    if not _approve(run, result, params, summary=f"Lift {result.holder!r}'s halt into paper mode (plan "
                    f"{result.plan_hash}): {params.reason}"):
        return run.conclude(result)
    with run.step("switch to paper mode", destructive=True) as figures:
        answer = switch_to_paper(api=settings.trading_api, path=safety.paths.paper, actor=run.actor,
                                 reason=f"resume-trading: {params.reason}"[:500], expected=status)
        figures.update(switched=bool(answer["switched"]))
        if not answer["switched"]:
            result.error = (f"not switched: trading is now {answer.get('trading_mode')!r}, held by "
                            f"{answer.get('paused_by')!r} since {answer.get('changed_at')}: the platform moved "
                            "after the plan was approved")
            run.steps.event("trading.left-halted", mode=answer.get("trading_mode"), paused_by=answer.get("paused_by"))
            return run.conclude(result)
        after = answer["after"]
        result.status_after = {k: v for k, v in after.items() if k != "history"}
        now = datetime.now(UTC)
        result.watch = PaperWatch(paper_by=after["paused_by"], changed_at=after.get("changed_at"),
                                  started_at=now, until=now + watch_for, lifted=result.attribution or "-",
                                  reason=params.reason, initiated_by=result.initiated_by,
                                  flow_run_id=run.flow_run_id)
        watches.put(RUNBOOK, result.watch)  # first: a run stopped after the switch is still known for ours
        for name in lifted:  # the halt they recorded is lifted: their records are spent
            holds.forget(name)
        result.watch.follow_up = _schedule_follow_up(run, params, result.watch.until)
        if result.watch.follow_up:
            watches.put(RUNBOOK, result.watch)
        figures.update(until=result.watch.until.isoformat(), follow_up=result.watch.follow_up)
    run.steps.event("trading.paper", actor=run.actor, holder=result.holder, until=result.watch.until.isoformat(),
                    initiated_by=result.initiated_by, reason=params.reason)
    result.action = "switched to paper mode"
    result.next_steps.append(f"Watch paper trading until {result.watch.until:%Y-%m-%d %H:%M} UTC; then run "
                             "resume-trading again (a dry run prints the plan hash to confirm) for live trading"
                             + (f" (follow-up run scheduled: {result.watch.follow_up})" if result.watch.follow_up
                                else ""))
    result.notification = notify(run, Notice(
        kind="update", severity="P1", title="resume-trading: PAPER mode, watching before live",
        status="Monitoring", impact="trading runs in paper mode: no order reaches the exchange",
        details=[f"{result.initiated_by}: {params.reason}", f"Lifted: {result.attribution}"],
        actions=result.next_steps))
    result.succeeded = True
    return run.conclude(result, message=f"paper mode until {result.watch.until:%Y-%m-%d %H:%M} UTC")


def _schedule_follow_up(run: RunbookRun[ResumeResult], params: ResumeParameters, until: datetime) -> str | None:
    """A deployment run schedules the next move at the end of the watch (it pauses there for the approval); a run
    outside a deployment leaves it to the operator."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment
    from prefect.states import Scheduled

    try:
        deployment_id = deployment.id
        if not deployment_id:
            return None
        with get_client(sync_client=True) as client:
            follow = client.create_flow_run_from_deployment(
                deployment_id, parameters={"reason": params.reason, "initiated_by": params.initiated_by,
                                           "approval_timeout_seconds": params.approval_timeout_seconds,
                                           "follow_up_of": run.flow_run_id},
                state=Scheduled(scheduled_time=until), tags=["resume-trading-follow-up"])
        return f"{follow.name} ({follow.id})"
    except Exception as exc:  # noqa: BLE001 - the watch is recorded; the operator's next run completes it
        run.logger.warning("No follow-up run could be scheduled (%s): run resume-trading again after %s",
                           _line(exc), until.isoformat())
        return None


def _to_live(run: RunbookRun[ResumeResult], result: ResumeResult, params: ResumeParameters,
             watches: RecordStore[PaperWatch], *, watch: PaperWatch) -> State:
    settings: Settings = run.settings
    fraction = settings.trading_safety.resume.position_size_fraction
    result.phase = "to live"
    result.plan = (f"Resume LIVE trading with CONFIRM_RESUME from this runbook's paper mode (since "
                   f"{watch.started_at:%Y-%m-%d %H:%M} UTC)"
                   + (f", at {fraction:g} of the usual position size" if fraction else ", at full size") + ".")
    result.plan_hash = _hash(phase="live", paper_by=watch.paper_by, changed_at=watch.changed_at, fraction=fraction)
    if params.dry_run:
        result.action, result.succeeded = "would resume live trading (dry run)", True
        result.next_steps.append(f"Run with confirm={result.plan_hash}, or without it to approve in the UI")
        return run.conclude(result)
    if not _approve(run, result, params, summary=f"Resume LIVE trading (plan {result.plan_hash}): {params.reason}"):
        return run.conclude(result)
    with run.step("resume live trading", destructive=True) as figures:
        answer = resume_live(api=settings.trading_api, actor=run.actor, held_by=watch.paper_by,
                             changed_at=watch.changed_at, position_size_fraction=fraction)
        figures.update(resumed=bool(answer["resumed"]))
    if not answer["resumed"] and answer.get("trading_mode") == "running":
        watches.delete(RUNBOOK)
        result.action, result.succeeded = "none: trading was already live (someone resumed it meanwhile)", True
        result.status_after = {k: v for k, v in answer.items() if k not in ("history", "resumed")}
        return run.conclude(result, message=result.action)
    if not answer["resumed"]:
        watches.delete(RUNBOOK)  # the platform moved: this paper mode is no longer ours to resume
        result.error = (f"not resumed: trading is {answer.get('trading_mode')!r}, held by "
                        f"{answer.get('paused_by')!r}, no longer this runbook's paper mode")
        run.steps.event("trading.left-halted", mode=answer.get("trading_mode"), paused_by=answer.get("paused_by"))
        return run.conclude(result)
    after = answer["after"]
    result.status_after = None if after is None else {k: v for k, v in after.items() if k != "history"}
    if after is None:
        result.next_steps.append("The resume was accepted but the status could not be read back: read it by hand")
    watches.delete(RUNBOOK)
    approver = result.approval.approver if result.approval else "-"
    run.steps.event("trading.resumed", actor=run.actor, paused_by=watch.paper_by, approver=approver,
                    initiated_by=result.initiated_by, reason=params.reason, position_size_fraction=fraction)
    result.action = "resumed live trading" + (f" at {fraction:g} position size" if fraction else "")
    result.next_steps.append("Raise the position size back to full once live trading is sound (the trading "
                             "system runbook: gradually enable live trading)" if fraction else
                             "Watch the first hour of live trading")
    result.notification = notify(run, Notice(
        kind="resolved", severity="P0", title="resume-trading: LIVE trading resumed",
        impact="trading was halted, then in paper mode", resolution=f"{result.action}, approved by {approver}: "
        f"{params.reason}", actions=result.next_steps))
    result.succeeded = True
    return run.conclude(result, message=result.action)
