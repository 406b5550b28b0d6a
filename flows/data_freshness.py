"""Data freshness and quality: seed 004 section 3.3 ("Data Source Down") as a flow that decides and acts.

Trigger: the ``data-freshness`` deployment every 5 minutes, on demand from the Prefect UI, or
``runbooks run data-freshness``. Blast radius: read-only on the databases (read-only sessions with a statement
timeout); on the trading platform it may pause trading, press the kill switch, or resume a pause it made itself,
always through the frame's trading guard, which keeps the record of its hold across runs.
Rollback: a pause this runbook made is lifted by a later run once every gating table is fresh and passing again;
a kill switch it pressed, and any hold a human made, are lifted only by a human (CONFIRM_RESUME).
Market time: a table that follows a market (``market`` in its settings) ages only while that market is open; while
it is closed, or waiting for the first bar after the open, nothing is paused, halted, paged or resumed on it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow
from prefect.states import State
from prefect.utilities.annotations import quote
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from runbooks.core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    RunbookError,
    TradingApiRefused,
    TradingApiUnavailable,
)
from runbooks.core.redact import scrub
from runbooks.decisions.freshness import (
    SEVERITY_ORDER,
    Decision,
    Finding,
    PlatformView,
    QualityResult,
    Severity,
    TableFreshness,
    TradingHold,
    VolumeCheck,
    decide,
    judge_quality,
    judge_staleness,
    worst,
)
from runbooks.decisions.incidents import Notice
from runbooks.decisions.report import report_tail, started, table
from runbooks.frame import RunbookResult, RunbookRun, TradingGuard, notify, resource_lock
from runbooks.frame.names import listed, run_name, run_parameters
from runbooks.frame.parameters import InventoryChoices, takes
from runbooks.settings import DatabaseSettings, MonitoredTable, Settings
from runbooks.tasks.freshness import measure_freshness, read_platform_data_status
from runbooks.tasks.quality import run_integrity_checks, validate_recent_window

RUNBOOK = "data-freshness"
LOCK_WAIT = 60.0  # seconds a run waits for another run's decision (a run acts in well under a second)


class FreshnessParameters(BaseModel):
    """What to check in this run; the tables and thresholds themselves are in the settings (``[freshness]``)."""

    model_config = ConfigDict(extra="forbid")

    act: bool = Field(default=True, description="Pause, halt or resume trading as the ladder says; false: only "
                      "report what it would do.")
    tables: list[Annotated[str, StringConstraints(min_length=1, max_length=200), InventoryChoices("tables")]] = Field(
        default_factory=list, description="Monitored tables (labels) to check; empty: all.")
    quality: bool = Field(default=True, description="Run the data-quality suites and integrity checks.")

    def check_against(self, settings: Settings) -> None:
        """Refuse (ConfigurationError) tables the settings do not list; the CLI calls it before any run."""
        _selected(settings.freshness.tables, self.tables)


class TradingState(BaseModel):
    trading_mode: str | None = None
    paused_by: str | None = None
    reason: str | None = None
    changed_at: str | None = None

    @classmethod
    def of(cls, status: dict[str, Any]) -> TradingState:
        return cls.model_validate({k: (str(v) if v is not None else None) for k, v in status.items()
                                   if k in cls.model_fields})


class FreshnessResult(RunbookResult):
    act: bool
    worst: Severity = "ok"
    tables: list[TableFreshness] = Field(default_factory=list)
    volumes: list[VolumeCheck] = Field(default_factory=list)
    quality: list[QualityResult] = Field(default_factory=list)
    platform: PlatformView | None = None
    findings: list[Finding] = Field(default_factory=list)
    trading_before: TradingState | None = None
    decision: Decision | None = None
    action: str = Field(default="none", description="what was done to trading (or would be, with act=false)")
    trading_after: TradingState | None = None
    hold_record: TradingHold | None = Field(default=None, description="this runbook's record of its own pause")
    notification: str | None = Field(default=None, description="who was told about the action, and how")


def render_report(result: FreshnessResult) -> str:
    verdict = {"ok": "data fresh", "warn": "WARNING", "error": "STALE OR FAILING", "kill": "STALE: KILL SWITCH",
               "unknown": "UNKNOWN"}[result.worst]
    lines = [f"# Data freshness {'(act=false) ' if not result.act else ''}— {verdict}", "",
             f"{started(result)}. "
             f"**Action: {result.action}.**" + (f" Notification: {result.notification}." if result.notification
                                                 else ""), ""]
    if result.decision:
        lines += [f"Decision: {result.decision.why}.", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    lines += ["## Findings", table(["table", "severity", "gates trading", "reason"],
                                   [[f.key, f.severity, "yes" if f.gates_trading else "no", f.reason]
                                    for f in result.findings])]
    lines += ["## Freshness (measured in the database)",
              "Ages in seconds. *Open-market age* counts only the time the table's market was open since the newest "
              "row (the ladder's age); *wall-clock age* counts every second. Without a market they are the same.",
              "",
              table(["table", "database", "outcome", "newest row (UTC)", "market", "open-market age",
                     "wall-clock age", "groups", "stale groups"],
                    [[t.key, t.database, t.outcome, f"{t.last_at:%Y-%m-%d %H:%M:%S}" if t.last_at else "-",
                      t.market.describe() if t.market else "- (wall clock)",
                      f"{t.age_seconds:.0f} s" if t.age_seconds is not None and t.market else "-",
                      f"{t.wall_age_seconds:.0f} s" if t.wall_age_seconds is not None else "-", str(t.groups or "-"),
                      ", ".join(g.group for g in t.stale_groups[:10]) or "-"] for t in result.tables])]
    if result.platform:
        p = result.platform
        lines += ["## The platform's view (GET /api/v1/data/status)",
                  (f"{p.status}, {p.staleness_seconds:.0f} s stale; the database says "
                   f"{p.database_age_seconds:.0f} s. " if p.available and p.staleness_seconds is not None
                   and p.database_age_seconds is not None else "")
                  + ("**They disagree.** " if p.disagrees else "") + (p.detail or ""), ""]
    if result.volumes:
        lines += ["## Volume of the latest complete interval against the same interval on previous sessions",
                  "Previous sessions of the table's market, at the same offset from the open; previous days for a "
                  "table without market.", "",
                  table(["table", "interval (UTC)", "compared with", "rows", "median", "spread", "verdict"],
                        [[v.key, f"{v.bucket_start:%Y-%m-%d %H:%M}" if v.bucket_start else "-",
                          f"{len(v.history)} {v.basis}", v.count if v.count is not None
                          else "-", f"{v.median:g}" if v.median is not None else "-",
                          f"{v.spread:.1f}" if v.spread is not None else "-", v.verdict] for v in result.volumes])]
    if result.quality:
        rows: list[list[object]] = []
        for q in result.quality:
            if not q.failures and not q.checks_failed:
                rows.append([q.key, q.status, f"{q.expectations} passed" if q.status == "passed" else q.detail or "-",
                             "-", "-"])
            for f in q.failures:
                rows.append([q.key, "failed", f.expectation, f.unexpected if f.unexpected is not None else "-",
                             "; ".join(f.samples) or "-"])
            for c in q.checks_failed:
                rows.append([q.key, "failed", c, "-", "-"])
        lines += ["## Data quality (recent window, computed in PostgreSQL)",
                  table(["table", "status", "expectation", "unexpected", "samples"], rows)]
    before, after = result.trading_before, result.trading_after
    if before:
        lines += ["## Trading",
                  f"Before: {before.trading_mode} (by {before.paused_by or '-'}, since {before.changed_at}).  ",
                  f"After: {after.trading_mode} (by {after.paused_by or '-'}, since {after.changed_at})." if after
                  else "After: unchanged.", ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _selected(tables: list[MonitoredTable], names: list[str]) -> list[MonitoredTable]:
    if not names:
        return tables
    known = {t.key: t for t in tables}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigurationError(f"monitored table(s) {unknown} are not in [freshness] tables (configured: "
                                 f"{', '.join(known) or 'none'}).", hint="name tables by their label, or leave "
                                 "'tables' empty to check all.")
    return [known[n] for n in names]


def _run_name() -> str:
    p = run_parameters()
    return run_name(RUNBOOK, listed(p.get("tables")), None if p.get("quality", True) else "no-quality",
                    dry_run=not p.get("act", True), stamp=True)


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(FreshnessParameters)
def data_freshness_flow(params: FreshnessParameters) -> State:
    """Measure the freshness, volume and quality of the monitored tables; pause, halt or resume trading by the
    USD/COP playbook's staleness ladder (section 3.3)."""
    run: RunbookRun[FreshnessResult] = RunbookRun(RUNBOOK, resource="market-data")
    settings, logger, cfg = run.settings, run.logger, run.settings.freshness
    result = FreshnessResult(act=params.act, started_at=run.started_at)
    run.report(result, render=render_report, key="data-freshness-report",
               description="Data-freshness runbook report")

    def conclude(error: str | None = None) -> State:
        result.error = error or result.error
        # The findings' verdict stands; an error (trading state unknown, refused input) makes it at least unknown.
        result.worst = worst(result.findings + ([Finding(key="run", severity="unknown", gates_trading=False,
                                                         reason=result.error)] if result.error else []))
        result.succeeded = result.error is None and SEVERITY_ORDER[result.worst] <= SEVERITY_ORDER["warn"]
        run.steps.event("data-freshness.verdict", worst=result.worst, action=result.action,
                        findings=[f.model_dump() for f in result.findings if f.severity != "ok"])
        # One event per table, so an automation can notify once per table; not for a run that told on-call itself.
        told = "true" if (result.notification or "").startswith("notified") else "false"
        for finding in result.findings:
            if finding.severity not in ("ok", "warn"):
                run.steps.event("data.finding", about=f"table.{finding.key}", labels={"runbooks.notified": told},
                                severity=finding.severity, reason=finding.reason,
                                gates_trading=finding.gates_trading, action=result.action)
        summary = "; ".join(f"{f.key}: {f.reason}" for f in result.findings if f.severity not in ("ok", "warn"))
        parts = [p for p in (result.error, summary) if p]
        return run.conclude(result, message=None if result.succeeded
                            else f"{result.worst}: {' / '.join(parts)} (action: {result.action})")

    try:
        with run.step("check settings") as figures:
            tables = _selected(cfg.tables, params.tables)
            by_database: dict[str, list[MonitoredTable]] = defaultdict(list)
            for t in tables:
                by_database[t.database].append(t)
            # A table whose database is not in the inventory is one unknown finding, not a reason to skip the rest.
            missing = sorted(name for name in by_database if name not in settings.databases)
            databases = {name: settings.databases[name] for name in by_database if name not in missing}
            figures.update(tables=len(tables), databases=len(databases), not_in_inventory=len(missing))
    except RunbookError as exc:
        return conclude(scrub(str(exc)))

    measured: dict[str, TableFreshness] = {
        t.key: TableFreshness(key=t.key, database=name, outcome="not_in_inventory", detail=f"database {name!r}")
        for name in missing for t in by_database.pop(name)}
    calendars = settings.calendars()
    with run.step("measure freshness") as figures:
        for name, group in by_database.items():
            try:
                # quote(): Prefect would walk a thousand table models looking for futures (~0.7 s); none is there.
                fresh, volumes = measure_freshness(database_name=name, database=databases[name],  # type: ignore[call-overload]
                                                   tables=quote(group), settings=quote(cfg),
                                                   calendars=quote(calendars))
            except RunbookError as exc:
                fresh = [TableFreshness(key=t.key, database=name, outcome="unreachable", detail=scrub(str(exc)))
                         for t in group]
                volumes = []
            measured.update({m.key: m for m in fresh})
            result.volumes += volumes
        result.tables = [measured[t.key] for t in tables]
        result.findings = [judge_staleness(t, measured[t.key]) for t in tables]
        figures.update(stale=sum(f.severity in ("error", "kill") for f in result.findings),
                       oldest_seconds=max((m.age_seconds or 0 for m in measured.values()), default=0),
                       oldest_wall_seconds=max((m.wall_age_seconds or 0 for m in measured.values()), default=0),
                       held_back=sum(f.held_back is not None for f in result.findings))
        # Each market's state at this run, flat, so an automation or a reader of the event feed sees why nothing
        # acted: market.<name> = open | closed, with since and next open.
        for view in {m.market.market: m.market for m in measured.values() if m.market}.values():
            figures[f"market.{view.market}"] = "open" if view.open else "closed"
            figures[f"market.{view.market}.kind"] = view.kind
            figures[f"market.{view.market}.since"] = view.since.isoformat() if view.since else None
            figures[f"market.{view.market}.next_open"] = view.next_open.isoformat() if view.next_open else None
    for t in tables:
        if measured[t.key].future_rows:
            how_many = str(measured[t.key].future_rows) if t.group_by else "at least one"
            result.findings.append(Finding(key=t.key, severity="warn", gates_trading=False, reason=(
                f"rows dated more than a minute in the future ({how_many}, ignored): a wrong clock or time zone "
                "in the feed")))
    for volume in result.volumes:
        if volume.flagged:
            result.findings.append(Finding(key=volume.key, severity="warn", gates_trading=False,
                                           reason=f"sudden volume drop: {volume.verdict}"))

    if params.quality:
        with run.step("check quality") as figures:
            for t in tables:
                if t.quality is None or measured[t.key].outcome != "measured":
                    continue
                try:
                    calendar = calendars.get(t.market) if t.market else None  # closed: the last session's window
                    quality = validate_recent_window(
                        table=t, database=databases[t.database], lookback=cfg.lookback,
                        timeout_seconds=cfg.statement_timeout_seconds,
                        as_of=calendar.last_trading_instant(datetime.now(UTC)) if calendar else None)
                except RunbookError as exc:
                    quality = QualityResult(key=t.key, status="could_not_run", detail=scrub(str(exc)))
                result.quality.append(quality)
                if (finding := judge_quality(t, quality)) is not None:
                    result.findings.append(finding)
            for name, database in databases.items():
                if not database.checks:
                    continue
                gating = any(t.gates_trading for t in by_database[name])
                try:
                    checks = run_integrity_checks(name=name, database=database, checks=database.checks,
                                                  timeout_seconds=cfg.statement_timeout_seconds)
                except RunbookError as exc:
                    checks = QualityResult(key=f"{name} integrity checks", status="could_not_run",
                                           detail=scrub(str(exc)))
                result.quality.append(checks)
                if checks.status != "passed":
                    severity: Severity = "error" if checks.status == "failed" else "unknown"
                    result.findings.append(Finding(key=checks.key, severity=severity, gates_trading=gating,
                                                   reason="; ".join(checks.checks_failed) or checks.detail or "?"))
            figures["failed"] = sum(q.status != "passed" for q in result.quality)

    platform_table = measured.get(cfg.platform_table or "")
    if settings.trading_api is not None and platform_table is not None:
        with run.step("read the platform's view") as figures:
            try:
                source = next(t for t in tables if t.key == platform_table.key)
                result.platform = read_platform_data_status(
                    api=settings.trading_api, database_age_seconds=platform_table.wall_age_seconds,
                    tolerance=cfg.disagreement_tolerance, error_after=source.error_after)
            except RunbookError as exc:
                result.platform = PlatformView(available=False, detail=f"unavailable: {scrub(str(exc))}")
            figures["disagrees"] = result.platform.disagrees
        if result.platform.disagrees:
            result.findings.append(Finding(key=platform_table.key, severity="warn", gates_trading=False,
                                           reason=f"the platform and the database disagree: {result.platform.detail}"))

    for finding in result.findings:
        if finding.severity != "ok":
            logger.warning("%s: %s (%s)", finding.key, finding.reason, finding.severity)

    # Only a run that looked at everything a pause may have been for can lift it.
    gating_tables = [t for t in cfg.tables if t.gates_trading]
    quality_gates = any(t.quality for t in gating_tables) or any(
        settings.databases[t.database].checks for t in gating_tables if t.database in settings.databases)
    complete = {t.key for t in gating_tables} <= {t.key for t in tables} and (params.quality or not quality_gates)
    lock_on = next((databases[t.database] for t in tables if t.gates_trading and t.database in databases
                    and measured[t.key].outcome in ("measured", "empty")), None)
    try:
        _decide_and_act(run, params, result, complete=complete, lock_on=lock_on)
    except RunbookError as exc:
        logger.error("Trading not acted on: %s", scrub(str(exc)))
        stale = [f for f in result.findings if f.gates_trading and f.severity in ("error", "kill")]
        api_down = isinstance(exc, TradingApiUnavailable | TradingApiRefused | AuthenticationFailed)
        if api_down:
            result.next_steps.append("The trading API did not answer after its retries: check by hand whether "
                                     "trading is paused (GET /api/v1/operations/status); nothing was assumed.")
        if stale:
            how = "press the kill switch" if any(f.severity == "kill" for f in stale) else "pause trading"
            result.next_steps.append(f"The data is stale or failing ({'; '.join(f.key for f in stale)}): {how} "
                                     "by hand now (the USD/COP playbook's 'Data Source Down', section 3.3).")
            if any(f.severity == "kill" for f in stale):
                run.steps.event("escalation", labels={"runbooks.severity": "P1"}, severity="P1",
                                reason="data stale beyond kill_after and this runbook could not act on trading")
        if stale and params.act and api_down:
            # Escalate: nobody but a human can hold trading now (seed 004 1.2: data source down is P1). Only for an
            # API that would not answer: a lock held by another run is that run's to act on.
            result.notification = notify(run, Notice(
                kind="start", severity="P1", title="data-freshness: stale data and trading NOT known to be held",
                status="Investigating", impact="trading continues on stale or failing market data",
                details=[scrub(str(exc)), *(f"{f.key}: {f.reason}" for f in stale)],
                actions=[f"{how.capitalize()} by hand now (the USD/COP playbook's 'Data Source Down', section 3.3)",
                         "Check the trading API (GET /api/v1/operations/status)"]))
        return conclude(scrub(str(exc)))
    return conclude()


def _decide_and_act(run: RunbookRun[FreshnessResult], params: FreshnessParameters, result: FreshnessResult, *,
                    complete: bool, lock_on: DatabaseSettings | None) -> None:
    """Read trading's state and this runbook's hold record, decide by the ladder, act (or say what it would do).
    Acting runs hold an advisory lock: two runs at once would each pause, and the second call's new changed_at
    would orphan the first one's record."""
    settings = run.settings
    if settings.trading_api is None:
        result.action = "none (no trading API configured)"
        return
    if params.act and lock_on is not None:
        with resource_lock(run, server=lock_on.conninfo(), key=f"runbooks-{RUNBOOK}", wait_seconds=LOCK_WAIT):
            _read_decide_act(run, params, result, complete=complete)
    else:
        _read_decide_act(run, params, result, complete=complete)


def _read_decide_act(run: RunbookRun[FreshnessResult], params: FreshnessParameters, result: FreshnessResult, *,
                     complete: bool) -> None:
    settings = run.settings
    assert settings.trading_api is not None
    # Every change to trading goes through the guard; its holds outlive the run, for a later run to lift.
    guard = TradingGuard.keeping_holds(run, settings.trading_api)
    with run.step("read trading status"):
        status = guard.check()
        result.trading_before = TradingState.of(status)
        result.hold_record = guard.recorded_hold()
    decision = decide(result.findings, status, result.hold_record, may_resume=complete)
    if guard.holds_problem and decision.target == "run" and status.get("trading_mode") != "running":
        decision.why += f" (this runbook's hold record could not be read: {guard.holds_problem}; nothing is resumed)"
    if decision.action == "forget-record" and guard.holds is None:
        decision = Decision(action="none", target=decision.target, why=decision.why)
    result.decision = decision
    if not params.act:
        result.action = "none" if decision.action == "none" else f"would {decision.action} (act=false)"
        return
    reason = "; ".join(f"{f.key}: {f.reason}" for f in result.findings
                       if f.gates_trading and f.severity in ("error", "kill"))[:500]
    destructive = decision.action in ("pause", "kill-switch", "resume")
    acted = False
    with run.step(f"trading: {decision.action}", destructive=destructive) as figures:
        if decision.action in ("pause", "kill-switch"):
            # The ladder escalates a pause in force (anyone's) to the kill switch; a kill switch in force stands.
            done = guard.halt(reason=f"market data check: {reason}", how=decision.action, escalate=True)
            if done is None:  # someone held trading between this run's read and its call
                result.action = f"none (trading {guard.actions[-1]})"
            else:
                acted = True
                result.trading_after = TradingState.of(done.status)
                result.action = "paused trading" if decision.action == "pause" else "KILL SWITCH activated"
                if decision.action == "kill-switch":
                    run.steps.event("escalation", labels={"runbooks.severity": "P1"}, severity="P1",
                                    reason=f"data stale beyond kill_after: {reason}")
                    result.next_steps.append("ESCALATE (P1): market data stale beyond kill_after; the kill switch is "
                                             "on. Follow the USD/COP playbook's 'Data Source Down' (section 3.3), "
                                             "then resume by hand with CONFIRM_RESUME.")
                if not done.ours:
                    result.action += f" (requested; the platform says it is held by {done.status.get('paused_by')!r})"
                elif done.record is not None:
                    result.hold_record = done.record
                else:
                    result.next_steps.append("The hold record could not be written: this runbook will not "
                                             "resume trading itself; resume by hand once the data is fresh.")
        elif decision.action == "resume":
            assert result.hold_record is not None
            now = guard.resume_recorded()
            if now is None:
                result.action = "none"
            elif now["resumed"]:
                acted = True
                result.action = "resumed trading (the pause was this runbook's own)"
                result.trading_after = TradingState.of(guard.check())
            else:
                acted = True
                result.action = (f"not resumed: trading is now held by {now.get('paused_by')!r} "
                                 f"since {now.get('changed_at')}")
        elif decision.action == "forget-record":
            guard.forget_hold()
            result.action = "none (an obsolete hold record was forgotten)"
        else:
            result.action = "none"
        figures["action"] = result.action
    if acted:
        findings = [f"{f.key}: {f.reason}" for f in result.findings if f.severity != "ok"]
        if decision.action == "resume":
            held = result.hold_record
            notice = Notice(kind="resolved", severity="P1",
                            title=f"data-freshness: {result.action}",
                            impact=f"trading was {held.mode if held else 'held'} by this runbook",
                            root_cause="market data went stale or failed its quality checks",
                            resolution=f"{decision.why}; trading resumed by {run.actor}",
                            started_at=held.at if held else None,
                            actions=["Find why the feed stalled (the USD/COP playbook's section 3.3) before the "
                                     "next one"])
        else:
            notice = Notice(kind="start", severity="P1",  # the USD/COP playbook 1.2: data source down > 10 min
                            title=f"data-freshness: {result.action}", status="Mitigating",
                            impact=f"trading {'halted (kill switch)' if decision.action == 'kill-switch' else 'paused'}"
                            " until the data is fresh", details=[f"{decision.why}", *findings],
                            actions=[f"{result.action} ({run.actor}); resumed by this runbook once the data is "
                                     "fresh", "Check the data source (the USD/COP playbook's 'Data Source Down', "
                                     "section 3.3)"])
        result.notification = notify(run, notice)
    if decision.target in ("pause", "kill") and result.trading_before and result.trading_before.trading_mode != \
            "running" and decision.action == "none":
        result.next_steps.append(f"Trading is held by {result.trading_before.paused_by!r}; this runbook leaves it "
                                 "as it is and will not resume it.")
