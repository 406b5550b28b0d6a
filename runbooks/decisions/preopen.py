"""The pre-open check's decisions, as data: which gating markets open soon enough to be checked (or are closed
today, and why), how each reading grades (pass / warn / fail, with a reason and what to fix before the open), and
the one go/no-go verdict. Pure: the readings come from the tasks the other runbooks use; nothing here does I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from runbooks.core.instants import parse_instant
from runbooks.core.market_time import WEEKDAYS, MarketCalendar
from runbooks.decisions.freshness import Finding
from runbooks.decisions.health import HealthCheck
from runbooks.decisions.pitr import ArchiveJudgement
from runbooks.decisions.weekly import BackupEntry

Outcome = Literal["pass", "warn", "fail"]
_DAY_NAMES = dict(zip(WEEKDAYS, ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
                      strict=True))


class PreOpenCheck(BaseModel):
    """One check before the open: its outcome, why, and (warn/fail) what to do about it before the open."""

    name: str
    outcome: Outcome
    reason: str
    fix: str | None = Field(default=None, description="what to fix before the open (fail), or to look at (warn)")


# -- which markets ------------------------------------------------------------------------------------------------
MarketDecision = Literal["due", "closed-today", "not-due"]


class MarketPlan(BaseModel):
    """One gating market at the run's instant: checked (its open is near), closed today, or not due yet."""

    market: str
    timezone: str
    decision: MarketDecision
    reason: str
    opens_at: datetime | None = Field(default=None, description="the open the check is for (UTC)")
    previous_close: datetime | None = Field(default=None, description="the close before it: 'last night'")


def closed_today_name(calendar: MarketCalendar, day: date) -> str | None:
    """Why the market has no session on local date ``day``, as a person says it ("Epiphany (observed)",
    "Saturday"); None when it has one."""
    closed = calendar.closed_day(day)
    if closed is None:
        return None
    kind, reason = closed
    if kind == "holiday" and reason.startswith("holiday: "):
        name = reason.removeprefix("holiday: ")
        suffix = f" ({calendar.holidays})" if calendar.holidays else ""
        return name.removesuffix(suffix) if suffix and name.endswith(suffix) else name
    if kind == "weekend" and day.weekday() < len(WEEKDAYS) and reason.startswith(WEEKDAYS[day.weekday()]):
        return f"{_DAY_NAMES[WEEKDAYS[day.weekday()]]}, not a trading day"
    return reason


def _local(instant: datetime, calendar: MarketCalendar) -> str:
    return f"{instant.astimezone(calendar.zone):%a %Y-%m-%d %H:%M} {calendar.timezone}"


def plan_markets(calendars: Mapping[str, MarketCalendar], *, at: datetime, horizon: timedelta,
                 market: str | None = None) -> list[MarketPlan]:
    """Each gating market (or only ``market``) at ``at``: ``closed-today`` on a local day without a session
    (holiday, weekend, venue closure); ``due`` when its next open is within ``horizon`` (a named market is due
    whatever the horizon: an operator asked for it, e.g. mid-session); else ``not-due``."""
    plans: list[MarketPlan] = []
    for name in sorted(calendars) if market is None else [market]:
        calendar = calendars[name]
        local_day = at.astimezone(calendar.zone).date()
        closed = closed_today_name(calendar, local_day)
        previous = calendar.previous_close(at)
        if closed is not None:
            plans.append(MarketPlan(market=name, timezone=calendar.timezone, decision="closed-today",
                                    reason=f"market closed today: {closed}", previous_close=previous,
                                    opens_at=calendar.next_open(at)))
            continue
        session = calendar.session_at(at)
        opens_at: datetime | None
        if session is not None:  # in session: a named market is checked for the session in progress
            opens_at, previous = session.open, calendar.previous_close(session.open)
            why = f"in session since {_local(session.open, calendar)}"
            due = market is not None
            why += "" if due else ": already open"
        else:
            opens_at = calendar.next_open(at)
            why = f"opens {_local(opens_at, calendar)}" if opens_at else "no open ahead"
            due = market is not None or (opens_at is not None and opens_at - at <= horizon)
            why += "" if due or opens_at is None else f", more than {_span(horizon)} ahead"
        plans.append(MarketPlan(market=name, timezone=calendar.timezone, decision="due" if due else "not-due",
                                reason=why, opens_at=opens_at, previous_close=previous))
    return plans


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


# -- grading each reading -----------------------------------------------------------------------------------------
def backups_window_start(*, at: datetime, previous_close: datetime | None, stale_after: timedelta) -> datetime:
    """'Last night's' backup: taken since the previous session's close, or within ``stale_after`` of ``at``
    (whichever allows more: a backup at 02:00 after a 13:00 close, or one 20 h old after a long weekend)."""
    start = at - stale_after
    return min(start, previous_close) if previous_close is not None else start


def judge_backups(entries: Sequence[BackupEntry], *, inventory: Sequence[str], since: datetime,
                  at: datetime) -> PreOpenCheck:
    """Every inventory database needs a complete, verified backup taken in [since, at]; a newer backup that
    failed verification, is damaged or incomplete is named beside the good one, or is the reason there is none."""
    problems: list[str] = []
    good: list[str] = []
    notes: list[str] = []
    for database in inventory:
        mine = [e for e in entries if e.kind == "database" and e.name == database]
        verified = [e for e in mine if e.status == "verified" and e.started_at is not None]
        if verified:
            newest = max(verified, key=lambda e: e.started_at or since)
            assert newest.started_at is not None
            age = max(at - newest.started_at, timedelta(0))
            good.append(f"{database}: {newest.backup_id} verified, {_span(age)} old")
            later = [e for e in mine if e.started_at and e.started_at > newest.started_at]
            notes += [f"{database}: a later backup {e.backup_id} is {e.status}" for e in later]
        elif mine:
            last = mine[-1]
            problems.append(f"{database}: no verified backup since {since:%Y-%m-%d %H:%M} UTC; the newest, "
                            f"{last.backup_id}, is {last.status}" + (f" ({last.detail})" if last.detail else ""))
        else:
            problems.append(f"{database}: no backup since {since:%Y-%m-%d %H:%M} UTC")
    if not inventory:
        return PreOpenCheck(name="backups", outcome="warn", reason="no database in the inventory ([databases])",
                            fix="list the platform's databases under [databases]")
    if problems:
        return PreOpenCheck(name="backups", outcome="fail", reason="; ".join(problems + good + notes),
                            fix="take a backup now (`runbooks run backup`) and read why the nightly one did not "
                                "produce a verified backup (`runbooks backups list`)")
    if notes:
        return PreOpenCheck(name="backups", outcome="warn", reason="; ".join(good + notes),
                            fix="read why the newest backup is not verified (`runbooks backups list`)")
    return PreOpenCheck(name="backups", outcome="pass", reason="; ".join(good))


def judge_archive(judgement: ArchiveJudgement | None, *, configured: bool) -> PreOpenCheck:
    """PITR is optional: not set up on this host is "not configured", never a no-go. Archiving off or failing
    loses writes in a disaster: fail; WAL waiting longer than the RPO: warn."""
    if not configured or judgement is None:
        return PreOpenCheck(name="PITR archive", outcome="pass", reason="not configured (no pgBackRest set up by "
                            "pitr-setup on this host)")
    why = "; ".join(judgement.reasons) or judgement.verdict
    if judgement.verdict == "ok":
        lag = f", oldest waiting segment {judgement.waiting_seconds:.0f} s" if judgement.waiting_seconds else ""
        return PreOpenCheck(name="PITR archive", outcome="pass", reason=f"archiving within the RPO{lag}")
    if judgement.verdict == "at_risk":
        return PreOpenCheck(name="PITR archive", outcome="warn", reason=why,
                            fix="run `runbooks run archive-check` and follow its next steps")
    return PreOpenCheck(name="PITR archive", outcome="fail", reason=f"archiving {judgement.verdict}: {why}",
                        fix="run `runbooks run archive-check` and follow its next steps (pitr-setup if it is off)")


def _outcome_of(status: str) -> Outcome:
    return "fail" if status in ("alert", "failed") else "warn" if status == "warn" else "pass"


def judge_health(name: str, checks: Sequence[HealthCheck], *, fix: str) -> PreOpenCheck:
    """Seed 001's graded readings: alert or failed fails, warn warns; not configured passes, and says so."""
    if not checks:
        return PreOpenCheck(name=name, outcome="pass", reason="nothing configured to check")
    order = {"pass": 0, "warn": 1, "fail": 2}
    outcome: Outcome = max((_outcome_of(c.status) for c in checks), key=order.__getitem__)
    shown = [c for c in checks if _outcome_of(c.status) == outcome] if outcome != "pass" else list(checks)

    def line(c: HealthCheck) -> str:
        reading = "" if c.value is None else f" {c.value:g}{' ' + c.unit if c.unit else ''}"
        detail = f" ({c.detail})" if c.detail and outcome != "pass" else ""
        return f"{c.name}: {c.status}{reading}{detail}"

    return PreOpenCheck(name=name, outcome=outcome, reason="; ".join(line(c) for c in shown),
                        fix=fix if outcome != "pass" else None)


def judge_trading(status: Mapping[str, object] | None, *, previous_close: datetime | None) -> PreOpenCheck:
    """The market must not open on a platform left paused or halted: fail, naming who and since when."""
    if status is None:
        return PreOpenCheck(name="trading mode", outcome="warn", reason="no trading API configured ([trading_api])",
                            fix="configure [trading_api] so the check can read the trading mode")
    mode = str(status.get("trading_mode") or "unknown")
    who = str(status.get("paused_by") or "unknown")
    reason = status.get("reason")
    changed = parse_instant(status.get("changed_at"))
    since = f" since {changed:%Y-%m-%d %H:%M} UTC" if changed else ""
    if mode == "running":
        return PreOpenCheck(name="trading mode", outcome="pass", reason=f"running{since}")
    if mode in ("paused", "halted"):
        how = "HALTED (kill switch)" if mode == "halted" or status.get("kill_switch_active") else "PAUSED"
        left = " (left so since before the previous close)" if changed and previous_close and \
            changed <= previous_close else ""
        text = f"trading {how} by {who}{since}{left}" + (f": {reason}" if reason else "")
        return PreOpenCheck(name="trading mode", outcome="fail", reason=text,
                            fix=f"ask {who} whether the {mode} still stands; resume (CONFIRM_RESUME) only once the "
                                "cause is fixed, or keep the market from opening on this platform")
    return PreOpenCheck(name="trading mode", outcome="fail", reason=f"trading mode {mode!r} is not one the check "
                        "knows (running, paused, halted)", fix="read the trading API's operations status by hand")


def judge_serving(*, model_id: str, version: str | None, healthy: bool | None,
                  flowing: bool | None, detail: str = "") -> PreOpenCheck:
    """The serving model must say it is healthy; predictions not flowing before the open only warn (a model may
    idle while its market is closed)."""
    name = f"serving model {model_id}"
    serving = f"{model_id} {version or '?'}"
    if healthy is False:
        return PreOpenCheck(name=name, outcome="fail", reason=f"{serving} is serving and reports unhealthy",
                            fix="run `runbooks run model-rollback` (dry_run first) or fix the inference API")
    if healthy is None:
        return PreOpenCheck(name=name, outcome="warn", reason=f"{serving} is serving; the router does not say "
                            "whether it is healthy", fix="check the inference API's router status by hand")
    if flowing is False:
        return PreOpenCheck(name=name, outcome="warn", reason=f"{serving} healthy, but no predictions flow"
                            + (f" ({detail})" if detail else ""),
                            fix="check predictions resume at the open (inference API consistency)")
    return PreOpenCheck(name=name, outcome="pass", reason=f"{serving} healthy" + (", predictions flowing"
                                                                                  if flowing else ""))


def judge_feeds(findings: Sequence[Finding]) -> PreOpenCheck:
    """The 24/7 feeds (tables following an always-open market) by the data-freshness ladder: stale, empty or
    unknown fails; beyond warn_after warns."""
    if not findings:
        return PreOpenCheck(name="24/7 feeds", outcome="pass", reason="no table follows an always-open market "
                            "([freshness] tables with market = a 24/7 market)")
    bad = [f for f in findings if f.severity in ("error", "kill", "unknown")]
    warned = [f for f in findings if f.severity == "warn"]
    lines = [f"{f.key}: {f.reason}" for f in (bad or warned or findings)]
    if bad:
        return PreOpenCheck(name="24/7 feeds", outcome="fail", reason="; ".join(lines),
                            fix="restart the stale feed (the USD/COP playbook's 'Data Source Down', section "
                                "3.3); `runbooks run data-freshness` "
                                "shows every table")
    if warned:
        return PreOpenCheck(name="24/7 feeds", outcome="warn", reason="; ".join(lines),
                            fix="watch the feed: it is older than warn_after")
    return PreOpenCheck(name="24/7 feeds", outcome="pass", reason="; ".join(lines))


def failed_check(name: str, error: str) -> PreOpenCheck:
    """A reading that could not be taken is a failed check: the open is not proven safe."""
    return PreOpenCheck(name=name, outcome="fail", reason=f"could not be checked: {error}",
                        fix="fix what the error names, then rerun `runbooks run pre-open-check`")


# -- the verdict --------------------------------------------------------------------------------------------------
Verdict = Literal["go", "no-go", "market closed", "nothing due"]


class Decision(BaseModel):
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list, description="why: every failed check (no-go), else warnings")
    to_fix: list[str] = Field(default_factory=list, description="what to fix before the open (no-go)")


def decide(checks: Sequence[PreOpenCheck]) -> Decision:
    """No-go if any check failed, with each failure's reason and fix; else go, warnings listed."""
    failed = [c for c in checks if c.outcome == "fail"]
    if failed:
        return Decision(verdict="no-go", reasons=[f"{c.name}: {c.reason}" for c in failed],
                        to_fix=[f"{c.name}: {c.fix}" for c in failed if c.fix])
    return Decision(verdict="go", reasons=[f"{c.name}: {c.reason}" for c in checks if c.outcome == "warn"])


def decide_without_checks(plans: Sequence[MarketPlan]) -> Decision:
    """No market due: every gating market closed today (a holiday: say its name), or none opens soon enough."""
    closed = [p for p in plans if p.decision == "closed-today"]
    if closed and len(closed) == len(plans):
        return Decision(verdict="market closed", reasons=[f"{p.market}: {p.reason}" for p in closed])
    return Decision(verdict="nothing due", reasons=[f"{p.market}: {p.reason}" for p in plans]
                    or ["no gating market in [markets]"])
