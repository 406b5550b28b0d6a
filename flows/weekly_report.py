"""The weekly maintenance report: seed 003's weekly maintenance ("Review Performance: Analyze P&L performance, Check
model accuracy, Review risk metrics") as one report an operator reads on Monday, with what the runbooks did that
week beside it: the backups per database (damaged and incomplete ones shown as such), the DR drills, and every
runbook run (model rollbacks, disk cleanups, restores, data-freshness pauses, health checks...) with its outcome.

Trigger: the ``weekly-report`` deployment (Mondays 06:00 UTC) or ``runbooks run weekly-report``. Blast radius: none;
it only reads (the trading and inference APIs, the backup repository, the Prefect API) and publishes its report.
Rollback: nothing to roll back.

A source that cannot be read (an API down, the repository missing, the Prefect API unreachable) is one line in its
section and the report still publishes. The run fails only when nothing at all could be read: then the report is
an empty page, and on-call should hear of it rather than find it on Monday. Findings in the report (a damaged
backup, a tripped breaker, a degraded model) do not fail the run: each has its runbook, and they are listed under
"Next steps".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.registry import RegistryRef
from runbooks.adapters.repository import open_repository
from runbooks.core.redact import scrub
from runbooks.decisions.drill import DrillRecord, human_duration
from runbooks.decisions.models import judge
from runbooks.decisions.report import human_bytes, report_tail, table
from runbooks.decisions.weekly import (
    BackupEntry,
    ModelAccuracy,
    PnlFigures,
    RiskFigures,
    RunbookRunEntry,
    RunbookSummary,
    databases_without_verified_backup,
    summarize_runs,
    window_bounds,
    window_label,
)
from runbooks.flows import RUNBOOKS
from runbooks.frame import RunbookResult, RunbookRun
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import takes
from runbooks.frame.steps import Figure
from runbooks.tasks.flow_runs import read_runbook_runs
from runbooks.tasks.models import read_evidence
from runbooks.tasks.storage import list_backups_in_window, read_drill_records
from runbooks.tasks.trading_api import (
    read_circuit_breakers,
    read_pnl,
    read_risk_events,
    read_risk_health,
    read_risk_metrics,
)

RUNBOOK = "weekly-report"
SECTIONS = ("trading performance", "model accuracy", "risk metrics", "backups", "DR drills", "runbook runs")


class WeeklyReportParameters(BaseModel):
    """Which week; where each figure is read is in the settings (``[weekly_report]``)."""

    model_config = ConfigDict(extra="forbid")

    days: int = Field(default=7, ge=1, le=31, description="The window: the last N days up to the run's start "
                      "(7: the week before a Monday-morning run).")


class Unreadable(BaseModel):
    section: str
    part: str
    reason: str = Field(description="one line: what failed, with its HINT")


class WeeklyReportResult(RunbookResult):
    days: int
    window_start: datetime
    window_end: datetime
    pnl: PnlFigures | None = None
    models: list[ModelAccuracy] = Field(default_factory=list)
    risk: RiskFigures = Field(default_factory=RiskFigures)
    backups: list[BackupEntry] = Field(default_factory=list, description="the window's backups, oldest first")
    damaged_before: list[BackupEntry] = Field(default_factory=list, description="damaged backups older than the "
                                              "window, still in the repository")
    databases_without_verified_backup: list[str] = Field(default_factory=list)
    drills: list[DrillRecord] = Field(default_factory=list)
    last_drill: DrillRecord | None = None
    runs: list[RunbookRunEntry] = Field(default_factory=list, description="every runbook run in the window")
    run_summary: list[RunbookSummary] = Field(default_factory=list)
    runs_listed: list[RunbookRunEntry] = Field(default_factory=list, description="the runs listed one by one")
    runs_truncated: bool = False
    read: list[str] = Field(default_factory=list, description="sections with at least one part read")
    unreadable: list[Unreadable] = Field(default_factory=list)


def _run_name() -> str:
    return run_name(RUNBOOK, f"{run_parameters().get('days', 7)}d", "to", stamp=True)


# -- the report ----------------------------------------------------------------------------------------------------
def _money(value: float | None, currency: str | None = None) -> str:
    return "-" if value is None else f"{value:,.2f}" + (f" {currency}" if currency else "")


def _num(value: float | None, fmt: str = "{:.2f}", unit: str = "") -> str:
    return "-" if value is None else fmt.format(value) + unit


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M}"


def _unreadable_line(result: WeeklyReportResult, section: str) -> str | None:
    """One line saying why a section could not be read, when none of its parts could."""
    if section in result.read:
        return None
    reasons = list(dict.fromkeys(u.reason for u in result.unreadable if u.section == section))
    return f"_Could not be read: {' / '.join(reasons) or 'not attempted'}_" if reasons else None


def _partly(result: WeeklyReportResult, section: str) -> list[str]:
    """Parts of a section that was read in part: one line each."""
    if section not in result.read:
        return []
    return [f"- _{u.part} could not be read: {u.reason}_" for u in result.unreadable if u.section == section]


def _pnl_section(result: WeeklyReportResult) -> list[str]:
    lines = [f"## Trading performance (last {result.days} days)", ""]
    if (line := _unreadable_line(result, "trading performance")) or result.pnl is None:
        return [*lines, line or "_not read_", ""]
    p = result.pnl
    lines += [table(["figure", "value"], [
        ["total P&L", _money(p.total, p.currency)], ["realized", _money(p.realized, p.currency)],
        ["unrealized (open positions)", _money(p.unrealized, p.currency)],
        ["return", _num(p.return_percent, "{:.3f}", " %")], ["trades", _num(p.trades, "{:.0f}")],
        ["win rate", _share(p.win_rate)], ["Sharpe ratio", _num(p.sharpe)],
        ["max drawdown", _num(p.max_drawdown_percent, "{:.2f}", " %")]])]
    if p.daily:
        lines += ["Daily realized P&L:", "", table(["day", "P&L", "trades"], [
            [d.date, _money(d.pnl), "-" if d.trades is None else d.trades] for d in p.daily])]
    return lines


def _models_section(result: WeeklyReportResult) -> list[str]:
    lines = [f"## Model accuracy (last {result.days} days, graded by the USD/COP playbook's "
             "decision table, section 3.2)", ""]
    if line := _unreadable_line(result, "model accuracy"):
        return [*lines, line, ""]
    lines += [table(["model", "version", "verdict", "Sharpe", "win rate", "error rate", "latency", "drift PSI",
                     "readings", "why"],
                    [[m.model_id, m.evidence.version or "-", m.judgement.verdict, _num(m.evidence.sharpe),
                      _share(m.evidence.win_rate), _share(m.evidence.error_rate),
                      _num(m.evidence.latency_seconds, "{:.3f}", " s"), _num(m.evidence.max_psi),
                      m.points, "; ".join(m.judgement.reasons) or "-"] for m in result.models])]
    return [*lines, *_partly(result, "model accuracy"), ""]


def _risk_section(result: WeeklyReportResult) -> list[str]:
    lines = ["## Risk metrics", ""]
    if line := _unreadable_line(result, "risk metrics"):
        return [*lines, line, ""]
    r = result.risk
    if r.metrics is not None:
        m = r.metrics
        lines += [table(["figure", "now"], [
            ["drawdown", _num(m.drawdown_percent, "{:.2f}", " %")],
            ["max drawdown", _num(m.max_drawdown_percent, "{:.2f}", " %")],
            ["VaR 95 % (1 day)", _money(m.var_95, m.currency)], ["VaR 99 % (1 day)", _money(m.var_99, m.currency)],
            ["gross exposure", _money(m.gross_exposure, m.currency)
             + (f" ({m.exposure_percent_of_limit:.0f} % of limit)" if m.exposure_percent_of_limit else "")],
            ["net exposure", _money(m.net_exposure, m.currency)], ["leverage", _num(m.leverage)]])]
    if r.health is not None:
        lines += [f"Risk engine health: **{r.health}**", ""]
    if r.breakers is not None:
        tripped = [b for b in r.breakers if b.tripped]
        lines += [f"Circuit breakers: {len(tripped)} of {len(r.breakers)} tripped.", "",
                  table(["breaker", "state", "detail"],
                        [[b.name, f"**{b.state}**" if b.tripped else b.state, b.detail or "-"] for b in r.breakers])]
    if r.events is not None:
        severities = ", ".join(f"{k} {v}" for k, v in sorted(r.events.by_severity.items()))
        lines += [f"Risk events in the window: **{_num(r.events.count, '{:.0f}')}**"
                  + (f" ({severities})" if severities else "") + ".", ""]
    return [*lines, *_partly(result, "risk metrics"), ""]


def _backups_section(result: WeeklyReportResult) -> list[str]:
    lines = ["## Backups", ""]
    if line := _unreadable_line(result, "backups"):
        return [*lines, line, ""]
    per: dict[tuple[str, str], list[BackupEntry]] = {}
    for e in result.backups:
        per.setdefault((e.kind, e.name), []).append(e)
    for name in result.databases_without_verified_backup:
        per.setdefault(("database", name), [])
    rows = []
    for (kind, name), entries in sorted(per.items()):
        verified = [e for e in entries if e.status == "verified"]
        rows.append([kind, name, len(entries), len(verified),
                     sum(e.status == "verification failed" for e in entries),
                     sum(e.status == "damaged" for e in entries), sum(e.status == "incomplete" for e in entries),
                     _when(verified[-1].started_at) if verified else "**none**"])
    lines += [table(["kind", "name", "backups", "verified", "failed verification", "damaged", "incomplete",
                     "newest verified"], rows)]
    if result.databases_without_verified_backup:
        lines += ["**No verified backup in the window:** "
                  + ", ".join(f"`{n}`" for n in result.databases_without_verified_backup), ""]
    lines += [table(["started (UTC)", "kind", "name", "backup id", "duration", "stored", "outcome", "detail"],
                    [[_when(e.started_at), e.kind, e.name, e.backup_id, human_duration(e.seconds),
                      human_bytes(e.stored_bytes), e.status if e.status == "verified" else f"**{e.status.upper()}**",
                      e.detail or "-"] for e in result.backups])]
    if result.damaged_before:
        lines += ["Damaged backups from before the window, still in the repository:", "",
                  table(["backup id", "kind", "name", "detail"],
                        [[e.backup_id, e.kind, e.name, e.detail] for e in result.damaged_before])]
    return lines


def _drills_section(result: WeeklyReportResult) -> list[str]:
    lines = ["## DR drills", ""]
    if line := _unreadable_line(result, "DR drills"):
        return [*lines, line, ""]
    if not result.drills:
        last = result.last_drill
        lines += ["No DR drill in the window. " + (
            f"The last one was {last.drill_id} on {_when(last.started_at)} "
            f"({'operational' if last.operational else 'NOT operational'}, {last.met}/{last.scored} targets met)."
            if last else "No drill has ever been recorded in this repository."), ""]
        return lines
    lines += [table(["drill", "started (UTC)", "backup", "operational", "time to recovery", "targets met", "issues"],
                    [[d.drill_id, _when(d.started_at), d.backup_id or "-", "yes" if d.operational else "**NO**",
                      human_duration(d.recovery_seconds), f"{d.met}/{d.scored}", d.issues] for d in result.drills])]
    return lines


def _runs_section(result: WeeklyReportResult) -> list[str]:
    lines = ["## Runbook runs", ""]
    if line := _unreadable_line(result, "runbook runs"):
        return [*lines, line, ""]
    if result.runs_truncated:
        lines += [f"_The window held more runs than the {len(result.runs)} read ([weekly_report] max_runs): the "
                  "counts below are partial._", ""]
    lines += [table(["runbook", "runs", "outcomes", "newest run that did not complete"],
                    [[s.runbook, s.runs, ", ".join(f"{k} {v}" for k, v in s.by_state.items()),
                      s.last_problem or "-"] for s in result.run_summary])]
    if result.runs_listed:
        lines += ["Runs (every one that did not complete, and all runs of the runbooks that ran rarely):", "",
                  table(["started (UTC)", "runbook", "run", "outcome", "duration", "message"],
                        [[_when(r.started_at), r.runbook, r.name,
                          r.state if r.completed else f"**{r.state}**",
                          human_duration(r.seconds) if r.seconds is not None else "running",
                          r.message or "-"] for r in result.runs_listed])]
    return lines


def render_report(result: WeeklyReportResult) -> str:
    verdict = "published" if result.succeeded else "NOTHING COULD BE READ"
    lines = [f"# Weekly maintenance report — {verdict}", "",
             f"Window: {_when(result.window_start)} to {_when(result.window_end)} UTC ({result.days} days). "
             f"Read in {result.seconds:.1f} s; {len(result.read)} of {len(SECTIONS)} sections read.", "",
             "_The weekly maintenance checklist's other items (dependency updates, security audit) are not part of "
             "this report._", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    for part in (_pnl_section, _models_section, _risk_section, _backups_section, _drills_section, _runs_section):
        lines += part(result)
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


# -- the flow ------------------------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    from runbooks.core.errors import RunbookError

    text = str(exc) if isinstance(exc, RunbookError) else f"{type(exc).__name__}: {exc}"
    return (scrub(text).strip().splitlines() or [type(exc).__name__])[0][:400]


@contextmanager
def _reading(run: RunbookRun[WeeklyReportResult], result: WeeklyReportResult, section: str,
             part: str | None = None) -> Iterator[dict[str, Figure]]:
    """A step reading one part of a section. Its failure is a line in the report, never the end of the run."""
    name = part or section
    try:
        with run.step(name) as figures:
            yield figures
    except Exception as exc:  # noqa: BLE001 - whatever failed, the other sections are still worth reading
        result.unreadable.append(Unreadable(section=section, part=name, reason=_one_line(exc)))
        run.logger.warning("%s could not be read: %s", name, result.unreadable[-1].reason)
        return
    if section not in result.read:
        result.read.append(section)


def _next_steps(result: WeeklyReportResult) -> list[str]:
    steps = []
    for e in [*result.backups, *result.damaged_before]:
        if e.status == "damaged":
            steps.append(f"Backup {e.backup_id} of {e.kind} {e.name!r} is DAMAGED: `runbooks backups list` shows how "
                         "to recover or remove it.")
        elif e.status == "verification failed":
            steps.append(f"Backup {e.backup_id} of {e.kind} {e.name!r} failed verification: rerun "
                         "`runbooks run backup` and read its report.")
    if result.databases_without_verified_backup:
        steps.append("No verified backup this window of " + ", ".join(result.databases_without_verified_backup)
                     + ": run `runbooks run backup` and check the backup-nightly deployment.")
    for m in result.models:
        if m.judgement.verdict in ("shadow", "rollback"):
            steps.append(f"Model {m.model_id} {m.evidence.version or ''} grades {m.judgement.verdict!r}: see the "
                         "model-rollback runbook (`runbooks run model-rollback --param dry_run=true`).")
    for b in result.risk.breakers or []:
        if b.tripped:
            steps.append(f"Circuit breaker {b.name!r} is {b.state}: see the trading-system runbook's "
                         "'Circuit Breaker Triggers'.")
    if "DR drills" in result.read and not result.drills and result.last_drill is None:
        steps.append("No DR drill has been recorded: run `runbooks run dr-game-day`.")
    failed = [s for s in result.run_summary if s.last_problem]
    for s in failed:
        steps.append(f"{s.runbook}: {s.last_problem}; read that run's report artifact.")
    for u in result.unreadable:
        steps.append(f"{u.part} could not be read: fix it before next week's report.")
    return steps


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(WeeklyReportParameters)
def weekly_report_flow(params: WeeklyReportParameters) -> State:
    """Read the week's figures and records, section by section, and publish them as one report."""
    run: RunbookRun[WeeklyReportResult] = RunbookRun(RUNBOOK, resource="platform")
    settings = run.settings
    config = settings.weekly_report
    since, until = window_bounds(run.started_at, params.days)
    window = window_label(params.days)
    result = WeeklyReportResult(started_at=run.started_at, days=params.days, window_start=since, window_end=until)
    run.report(result, render=render_report, key="weekly-report",
               description="Weekly maintenance report (the trading-system runbook's weekly maintenance)")

    with _reading(run, result, "trading performance") as figures:
        result.pnl = read_pnl(api=settings.trading_api, path=config.pnl_path, window=window)
        figures.update(total_pnl=result.pnl.total, trades=result.pnl.trades, days=len(result.pnl.daily))

    for model_id in config.model_ids or [settings.models.model_id]:
        with _reading(run, result, "model accuracy", f"model accuracy {model_id}") as figures:
            ref = RegistryRef(kind=settings.models.registry, api=settings.inference_api, model_id=model_id)
            reading = read_evidence(ref, window=window)
            judgement = judge(reading.evidence, settings.models.policy)
            result.models.append(ModelAccuracy(model_id=model_id, evidence=reading.evidence, judgement=judgement,
                                               points=len(reading.history)))
            figures.update(version=reading.evidence.version, verdict=judgement.verdict,
                           sharpe=reading.evidence.sharpe, win_rate=reading.evidence.win_rate)

    api, risk = settings.trading_api, result.risk
    with _reading(run, result, "risk metrics") as figures:
        risk.metrics = read_risk_metrics(api=api, path=config.risk_metrics_path)
        figures.update(drawdown_percent=risk.metrics.drawdown_percent, var_95=risk.metrics.var_95)
    with _reading(run, result, "risk metrics", "circuit breakers") as figures:
        risk.breakers = read_circuit_breakers(api=api, path=config.circuit_breakers_path)
        figures.update(breakers=len(risk.breakers), tripped=sum(b.tripped for b in risk.breakers))
    with _reading(run, result, "risk metrics", "risk health") as figures:
        risk.health = read_risk_health(api=api, path=config.risk_health_path)
        figures.update(status=risk.health)
    with _reading(run, result, "risk metrics", "risk events") as figures:
        risk.events = read_risk_events(api=api, path=config.risk_events_path, window=window)
        figures.update(events=risk.events.count)

    catalog: BackupCatalog | None = None
    with _reading(run, result, "backups") as figures:
        catalog = BackupCatalog(open_repository(settings.repository))
        week = list_backups_in_window(catalog=catalog, since=since, until=until)
        result.backups, result.damaged_before = week.entries, week.damaged_before
        result.databases_without_verified_backup = databases_without_verified_backup(week, sorted(settings.databases))
        figures.update(backups=len(week.entries), verified=sum(e.status == "verified" for e in week.entries),
                       damaged=sum(e.status == "damaged" for e in [*week.entries, *week.damaged_before]),
                       incomplete=sum(e.status == "incomplete" for e in week.entries))

    with _reading(run, result, "DR drills") as figures:
        catalog = catalog or BackupCatalog(open_repository(settings.repository))
        result.drills, result.last_drill = read_drill_records(catalog=catalog, cluster=settings.cluster.name,
                                                              since=since)
        figures.update(drills=len(result.drills))

    with _reading(run, result, "runbook runs") as figures:
        found = read_runbook_runs(flows=sorted(RUNBOOKS), since=since, until=until, api_url=settings.prefect.api_url,
                                  exclude=run.flow_run_id, max_runs=config.max_runs)
        result.runs, result.runs_truncated = found.runs, found.truncated
        result.run_summary, result.runs_listed = summarize_runs(found.runs, list_up_to=config.list_runs_up_to)
        figures.update(runs=len(found.runs), not_completed=sum(not r.completed for r in found.runs),
                       truncated=found.truncated)

    result.next_steps = _next_steps(result)
    result.succeeded = bool(result.read)
    if not result.succeeded:
        result.error = "nothing could be read: " + "; ".join(f"{u.part}: {u.reason}" for u in result.unreadable)
    run.steps.event("weekly-report.published", sections_read=len(result.read), unreadable=len(result.unreadable))
    missing = [s for s in SECTIONS if s not in result.read]
    return run.conclude(result, message=f"weekly report published; {len(result.read)} of {len(SECTIONS)} sections read"
                        + (f" (not: {', '.join(missing)})" if missing else "") if result.succeeded else None)
