"""Pre-open check (issue 25): 30 minutes before each gating market opens, is the platform fit to trade? Last
night's backups present and verified, PITR archive lag (where pgBackRest is set up), disk headroom, seed 001's
health check, the trading mode (left paused or halted, and by whom), the serving model, and the 24/7 feeds. One
go/no-go verdict with reasons; a no-go notifies on-call (P2) with what to fix before the open. On a day the
market has no session (a holiday, a weekend) it says "market closed today" and checks nothing.

Trigger: the ``pre-open-check-daily`` deployment (07:30 America/Bogota, Monday to Friday: 30 minutes before the
USD/COP open), ``pre-open-check-on-demand``, or ``runbooks run pre-open-check``. Blast radius: none; it only reads
(no marker row, no trading call but the status read). Rollback: nothing to roll back.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

from prefect import flow
from prefect.states import State
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.registry import RegistryRef
from runbooks.adapters.repository import open_repository
from runbooks.core.errors import ConfigurationError, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.freshness import Finding, judge_staleness
from runbooks.decisions.health import HealthCheck
from runbooks.decisions.incidents import Notice
from runbooks.decisions.pitr import archive_command, judge_archiver, pitr_paths, protected_cluster
from runbooks.decisions.preopen import (
    Decision,
    MarketPlan,
    PreOpenCheck,
    Verdict,
    backups_window_start,
    decide,
    decide_without_checks,
    failed_check,
    judge_archive,
    judge_backups,
    judge_feeds,
    judge_health,
    judge_serving,
    judge_trading,
    plan_markets,
)
from runbooks.decisions.report import report_tail, table
from runbooks.frame import RunbookResult, RunbookRun, notify
from runbooks.frame.names import instant, run_name, run_parameters
from runbooks.frame.parameters import InventoryChoices, takes
from runbooks.settings import Duration, MarketName, Settings, config_path
from runbooks.tasks.freshness import measure_freshness
from runbooks.tasks.health import check_api_health, check_database_health, check_host_health, count_recent_errors
from runbooks.tasks.models import read_predictions, read_serving
from runbooks.tasks.pgbackrest import read_archiver
from runbooks.tasks.storage import list_backups_in_window
from runbooks.tasks.trading_api import read_trading_status

RUNBOOK = "pre-open-check"
MAX_HORIZON = timedelta(hours=24)  # a check for an open further ahead says little about that open
_EARLIEST, _LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def _horizon_bound(value: timedelta) -> timedelta:
    if value > MAX_HORIZON:
        raise ValueError("must be at most 24 hours, e.g. '2h' (the check is for the coming open)")
    return value


def _plausible_instant(value: datetime | None) -> datetime | None:
    """Calendars (holidays, sessions) are known for real dates: refuse an instant outside 2000-2099."""
    if value is not None and not _EARLIEST <= value < _LATEST:
        raise ValueError("must lie in the years 2000-2099, with a time zone, e.g. 2027-01-11T07:30:00-05:00")
    return value


class PreOpenParameters(BaseModel):
    """Which market's open to check, and (for what-ifs and tests) as of when."""

    model_config = ConfigDict(extra="forbid")

    market: Annotated[MarketName, InventoryChoices("markets")] | None = Field(
        default=None, description="A gating market of [markets] (e.g. usd_cop); "
                                      "none: every gating market whose next open is within the horizon.")
    horizon: Annotated[Duration, AfterValidator(_horizon_bound)] = Field(
        default=timedelta(hours=2), description="Without a market: check the gating markets opening within this "
        "long (at most 24 h).")
    at: Annotated[AwareDatetime | None, AfterValidator(_plausible_instant)] = Field(
        default=None, description="Check as if it were this instant (what-if, tests), with a time zone; none: now. "
        "Backups taken after it do not count; the feeds are measured as of it.")

    def check_against(self, settings: Settings) -> None:
        """Refuse (ConfigurationError) a market that is not a gating market of [markets]; the CLI calls it before
        any run, the flow again (a deployment run does not pass through the CLI)."""
        if self.market is None:
            return
        gating = sorted(settings.calendars(gating_only=True))
        if self.market not in gating:
            what = "a 24/7 market, which never opens" if self.market in settings.markets else "not in [markets]"
            raise ConfigurationError(
                f"market {self.market!r} is {what}: the pre-open check is for gating markets "
                f"(configured: {', '.join(gating) or 'none'}).",
                hint=f"pick one of those, or leave market out; the markets are in {config_path()}.")


class PreOpenResult(RunbookResult):
    at: datetime = Field(description="the instant checked (now, or the what-if 'at')")
    market: str | None = None
    markets: list[MarketPlan] = Field(default_factory=list, description="each gating market and whether it was due")
    checks: list[PreOpenCheck] = Field(default_factory=list)
    verdict: Verdict = "nothing due"
    reasons: list[str] = Field(default_factory=list)
    to_fix: list[str] = Field(default_factory=list, description="what to fix before the open (no-go)")
    notification: str | None = None


def _local(instant: datetime | None, timezone: str) -> str:
    from zoneinfo import ZoneInfo

    return f"{instant.astimezone(ZoneInfo(timezone)):%a %Y-%m-%d %H:%M} {timezone}" if instant else "-"


def render_report(result: PreOpenResult) -> str:
    title = {"go": "GO", "no-go": "NO-GO", "market closed": "market closed today", "nothing due": "nothing due"}
    due = [p for p in result.markets if p.decision == "due"]
    lines = [f"# Pre-open check — {title[result.verdict]}", "",
             f"Checked as of {result.at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC (run started "
             f"{result.started_at:%Y-%m-%d %H:%M:%S} UTC, {result.seconds:.1f} s)."
             + (f" Notification: {result.notification}." if result.notification else ""), ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.markets:
        lines += ["## Markets", table(["market", "decision", "open checked for", "previous close", "why"],
                                      [[p.market, p.decision, _local(p.opens_at, p.timezone),
                                        _local(p.previous_close, p.timezone), p.reason] for p in result.markets]), ""]
    if result.checks:
        lines += ["## Checks" + (f" before {', '.join(p.market for p in due)}" if due else ""),
                  table(["check", "outcome", "reason"], [[c.name, c.outcome.upper(), c.reason]
                                                         for c in result.checks]), ""]
    if result.reasons:
        lines += ["## Why", *[f"- {r}" for r in result.reasons], ""]
    if result.to_fix:
        lines += ["## Fix before the open", *[f"- {f}" for f in result.to_fix], ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _run_name() -> str:
    p = run_parameters()
    at = instant(p.get("at"))  # a what-if run says so
    return run_name(RUNBOOK, p.get("market") or "due", "at" if at else None, at, stamp=True)


# -- the readings, each from the task another runbook uses ---------------------------------------------------------
def _backups(settings: Settings, *, at: datetime, previous_close: datetime | None) -> PreOpenCheck:
    since = backups_window_start(at=at, previous_close=previous_close,
                                 stale_after=settings.notifications.backup_stale_after)
    catalog = BackupCatalog(open_repository(settings.repository))
    week = list_backups_in_window(catalog=catalog, since=since, until=at)
    return judge_backups(week.entries, inventory=sorted(settings.databases), since=since, at=at)


def _archive(settings: Settings) -> PreOpenCheck:
    paths = pitr_paths(settings)
    if not paths.config.is_file():  # pitr-setup writes it: without it, PITR is not set up for this host's cluster
        return judge_archive(None, configured=False)
    state = read_archiver(database=protected_cluster(settings))
    judgement = judge_archiver(state, rpo=settings.pitr.rpo, expected_command=archive_command(settings.pitr, paths))
    return judge_archive(judgement, configured=True)


def _health(settings: Settings, host: list[HealthCheck]) -> PreOpenCheck:
    baseline = settings.health
    checks = [check_api_health(name="trading API", api=settings.trading_api, baseline=baseline),
              check_api_health(name="inference API", api=settings.inference_api, baseline=baseline)]
    checks += [check_database_health(name=name, database=database, baseline=baseline)
               for name, database in settings.databases.items()]
    checks += [c for c in host if not c.name.startswith("disk ")]
    if baseline.error_logs:
        checks += count_recent_errors(baseline=baseline)
    return judge_health("health check", checks, fix="see the operations runbook's troubleshooting for each check "
                        "named; "
                        "`runbooks run health-check` repeats it")


def _trading(settings: Settings, *, previous_close: datetime | None) -> PreOpenCheck:
    if settings.trading_api is None:
        return judge_trading(None, previous_close=previous_close)
    return judge_trading(read_trading_status(api=settings.trading_api), previous_close=previous_close)


def _serving(settings: Settings) -> PreOpenCheck:
    model_id = settings.models.model_id
    if settings.inference_api is None:
        return PreOpenCheck(name=f"serving model {model_id}", outcome="warn", reason="no inference API configured "
                            "([inference_api])", fix="configure [inference_api] so the check can read the model")
    ref = RegistryRef(kind=settings.models.registry, api=settings.inference_api, model_id=model_id)
    serving = read_serving(ref)
    try:
        predictions = read_predictions(ref)
        flowing, detail = predictions.flowing, predictions.detail
    except RunbookError as exc:
        flowing, detail = None, scrub(str(exc))[:200]
    return judge_serving(model_id=model_id, version=serving.version, healthy=serving.healthy, flowing=flowing,
                         detail=detail)


def _feeds(settings: Settings, *, as_of: datetime | None) -> PreOpenCheck:
    calendars = settings.calendars()
    always = {name for name, calendar in calendars.items() if calendar.always_open}
    tables = [t for t in settings.freshness.tables if t.market in always]
    findings: list[Finding] = []
    for database_name in sorted({t.database for t in tables}):
        mine = [t for t in tables if t.database == database_name]
        database = settings.databases.get(database_name)
        if database is None:
            findings += [Finding(key=t.key, severity="unknown", gates_trading=t.gates_trading,
                                 reason=f"its database {database_name!r} is not in the inventory") for t in mine]
            continue
        measured, _volumes = measure_freshness(database_name=database_name, database=database, tables=mine,
                                               settings=settings.freshness, as_of=as_of, calendars=calendars)
        findings += [judge_staleness(t, m) for t, m in zip(mine, measured, strict=True)]
    return judge_feeds(findings)


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(PreOpenParameters)
def pre_open_check_flow(params: PreOpenParameters) -> State:
    """Before each gating market's open: every check, one verdict; a no-go pages on-call (P2) with what to fix."""
    run: RunbookRun[PreOpenResult] = RunbookRun(RUNBOOK, resource=params.market or "gating-markets")
    settings = run.settings
    at = params.at or run.started_at
    result = PreOpenResult(started_at=run.started_at, at=at, market=params.market)
    run.report(result, render=render_report, key="pre-open-check-report",
               description="Pre-open check (go/no-go before the market opens)")
    decision: Decision | None = None
    try:
        params.check_against(settings)
        with run.step("market calendar") as figures:
            result.markets = plan_markets(settings.calendars(gating_only=True), at=at, horizon=params.horizon,
                                          market=params.market)
            due = [p for p in result.markets if p.decision == "due"]
            figures.update(due=", ".join(p.market for p in due) or None,
                           closed=", ".join(p.market for p in result.markets if p.decision == "closed-today") or None)
        if not due:
            decision = decide_without_checks(result.markets)
            run.logger.info("No check: %s", "; ".join(decision.reasons))
        else:
            closes = [p.previous_close for p in due if p.previous_close is not None]
            previous_close = max(closes) if closes else None
            host: list[HealthCheck] = []

            def disk() -> PreOpenCheck:
                host[:] = check_host_health(baseline=settings.health)
                return judge_health("disk headroom", [c for c in host if c.name.startswith("disk ")],
                                    fix="free space before the open: `runbooks run disk-cleanup` (a dry run first)")

            readings: list[tuple[str, Callable[[], PreOpenCheck]]] = [
                ("backups", lambda: _backups(settings, at=at, previous_close=previous_close)),
                ("PITR archive", lambda: _archive(settings)),
                ("disk headroom", disk),
                ("health check", lambda: _health(settings, host)),
                ("trading mode", lambda: _trading(settings, previous_close=previous_close)),
                ("serving model", lambda: _serving(settings)),
                ("24/7 feeds", lambda: _feeds(settings, as_of=params.at)),
            ]
            for name, read in readings:
                with run.step(name) as figures:
                    try:
                        check = read()
                    except RunbookError as exc:  # a reading that cannot be taken fails its check, not the run
                        check = failed_check(name, scrub(str(exc)))
                    result.checks.append(check)
                    figures.update(outcome=check.outcome, reason=check.reason[:300])
            decision = decide(result.checks)
    except RunbookError as exc:
        result.error = scrub(str(exc))
        run.logger.error("Pre-open check refused: %s", result.error)
    if decision is not None:
        result.verdict, result.reasons, result.to_fix = decision.verdict, decision.reasons, decision.to_fix
    run.steps.event("pre-open-check.verdict", verdict=result.verdict, at=at.isoformat(),
                    markets=", ".join(p.market for p in result.markets if p.decision == "due") or None,
                    failed=sum(c.outcome == "fail" for c in result.checks))
    if result.verdict == "no-go":
        due = [p for p in result.markets if p.decision == "due"]
        opens = ", ".join(f"{p.market} opens {_local(p.opens_at, p.timezone)}" for p in due)
        result.next_steps = result.to_fix + ["Rerun `runbooks run pre-open-check` once fixed: it must say GO."]
        result.error = result.error or f"no-go: {len(result.reasons)} check(s) failed before the open"
        result.notification = notify(run, Notice(
            kind="start", severity="P2", title=f"Pre-open check: NO-GO ({', '.join(p.market for p in due)})",
            impact=f"{opens}: the platform is not fit to trade the open as it stands",
            details=result.reasons, actions=result.to_fix or ["Read the pre-open check's report"]))
    result.succeeded = result.error is None and result.verdict != "no-go"
    return run.conclude(result)
