"""What the data-freshness runbook measures and how it decides: the findings per monitored table and seed 004's
ladder (report, pause, kill switch, resume). Pure functions, no I/O: the flow gathers, this decides.

A table that follows a market (``market = "usd_cop"``) is judged in market time: its age is the open-market time
since its newest row, so the night and the weekend do not count; while the market is closed, and for a grace period
after the open until the first bar is due, nothing acts on it (and nothing is resumed on data not proven fresh)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from statistics import median
from typing import Any, Literal

from pydantic import BaseModel, Field

from runbooks.core.market_time import MarketCalendar
from runbooks.settings import FreshnessSettings, MonitoredTable

Severity = Literal["ok", "warn", "error", "kill", "unknown"]
SEVERITY_ORDER: dict[Severity, int] = {"ok": 0, "warn": 1, "error": 2, "kill": 3, "unknown": 4}
Outcome = Literal["measured", "empty", "missing_table", "missing_column", "not_a_timestamp", "no_access",
                  "failed", "unreachable", "not_in_inventory"]

# What each outcome that is not a measurement means, for the report.
OUTCOME_TEXT: dict[str, str] = {
    "empty": "no rows (no data at all{filtered})",
    "missing_table": "the table does not exist",
    "missing_column": "a configured column does not exist",
    "not_a_timestamp": "the loaded-at column or expression is not a timestamp",
    "no_access": "the runbook's role may not read it",
    "failed": "the freshness query failed",
    "unreachable": "the database is unreachable",
    "not_in_inventory": "its database is not in the inventory ([databases])",
}


class GroupAge(BaseModel):
    group: str
    last_at: datetime | None = None
    age_seconds: float | None = Field(default=None, description="the age the ladder uses (open-market time for a "
                                      "table that follows a market); None: an expected group with no rows in the "
                                      "window")
    wall_age_seconds: float | None = Field(default=None, description="now - newest row, wall clock")


class MarketView(BaseModel):
    """The market a table follows, at the instant the run judged it."""

    market: str
    timezone: str
    at: datetime
    open: bool
    kind: str = Field(description="session, always-open, weekend, holiday, venue-closed, before-open, after-close")
    reason: str
    since: datetime | None = Field(default=None, description="open: this session's open (None for a 24/7 venue); "
                                   "closed: the previous close")
    next_open: datetime | None = None
    session_close: datetime | None = None

    @classmethod
    def of(cls, calendar: MarketCalendar, at: datetime) -> MarketView:
        status = calendar.status(at)
        session = status.session
        since = (session.open if session and status.kind == "session" else None) if status.open \
            else status.previous_close
        return cls(market=calendar.name, timezone=calendar.timezone, at=at, open=status.open, kind=status.kind,
                   reason=status.reason, since=since, next_open=status.next_open,
                   session_close=session.close if session and status.kind == "session" else None)

    def local(self, instant: datetime | None) -> str:
        """An instant in the market's own time zone, as operators of that market read it."""
        if instant is None:
            return "-"
        from zoneinfo import ZoneInfo

        return f"{instant.astimezone(ZoneInfo(self.timezone)):%a %Y-%m-%d %H:%M} {self.timezone}"

    def describe(self) -> str:
        if self.open:
            if self.kind == "always-open":
                return f"market {self.market} open (24/7)"
            return f"market {self.market} open since {self.local(self.since)}, closes {self.local(self.session_close)}"
        why = f" ({self.reason})" if self.kind in ("holiday", "venue-closed") else ""
        return f"market {self.market} closed since {self.local(self.since)}, opens {self.local(self.next_open)}{why}"


class TableFreshness(BaseModel):
    """The freshness of one monitored table, measured in its database."""

    key: str
    database: str
    outcome: Outcome
    last_at: datetime | None = None
    age_seconds: float | None = Field(default=None, description="the age the ladder uses, the stalest group's: the "
                                      "open-market time since the newest row for a table that follows a market, "
                                      "else now - newest row")
    wall_age_seconds: float | None = Field(default=None, description="now - newest row (the stalest group's), wall "
                                           "clock, whatever the market")
    market: MarketView | None = Field(default=None, description="the market the table follows, at the run's instant")
    groups: int = 0
    future_rows: int = Field(default=0, description="rows dated more than a minute ahead of now (per group "
                             "in the group window; 1 = some, for an ungrouped table): ignored, so one wrong clock "
                             "cannot make stale data look fresh")
    stale_groups: list[GroupAge] = Field(default_factory=list, description="groups older than error_after, "
                                         "stalest first")
    detail: str | None = None


class VolumeCheck(BaseModel):
    """The row count of the latest complete interval against the same interval on previous sessions of the table's
    market (previous days for a table without market)."""

    key: str
    bucket_start: datetime | None = None
    basis: str = Field(default="days", description="what 'previous' means: 'days', or 'sessions of <market>'")
    count: int | None = None
    history: list[int] = Field(default_factory=list, description="same interval, 1..N sessions (or days) back "
                               "(0s dropped)")
    median: float | None = None
    spread: float | None = Field(default=None, description="median absolute deviation x 1.4826")
    threshold: float | None = None
    flagged: bool = False
    verdict: str = ""


class ExpectationFailure(BaseModel):
    expectation: str
    unexpected: int | None = None
    samples: list[str] = Field(default_factory=list)


class QualityResult(BaseModel):
    key: str
    status: Literal["passed", "failed", "could_not_run"]
    window_rows: int | None = None
    expectations: int = 0
    failures: list[ExpectationFailure] = Field(default_factory=list)
    checks_failed: list[str] = Field(default_factory=list, description="configured integrity checks that failed")
    seconds: float = 0.0
    detail: str | None = None


class PlatformView(BaseModel):
    """``GET /api/v1/data/status`` beside the database's own measurement."""

    available: bool
    status: str | None = None
    staleness_seconds: float | None = None
    last_bar_at: str | None = None
    database_age_seconds: float | None = None
    disagrees: bool = False
    detail: str | None = None


class Finding(BaseModel):
    key: str
    severity: Severity
    gates_trading: bool
    reason: str
    market_state: Literal["open", "closed", "waiting"] | None = Field(default=None, description="for a table that "
                                                                      "follows a market: open, closed, or open but "
                                                                      "waiting for the first bar (grace)")
    held_back: Severity | None = Field(default=None, description="what the ladder says on the open-market age "
                                       "while nothing may act (market closed, or waiting for the first bar): no "
                                       "pause, kill switch or page on it, and no resume either")


def summarize_rows(table: MonitoredTable, rows: Sequence[tuple[Any, ...]], *, database: str | None = None,
                   calendar: MarketCalendar | None = None) -> TableFreshness:
    """A table's freshness from its statement's rows ``(group, newest, wall age in seconds, future rows)``.

    With a ``calendar`` each group's age is the open-market time between its newest row and the database's now
    (newest + wall age): the stalest group by open time is the stalest by wall clock too, since open time only
    grows with the span. An expected group never seen in the window is at least as old as the window."""
    key = table.key
    future = sum(int(r[3] or 0) for r in rows)
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return TableFreshness(key=key, database=database or table.database, outcome="empty", future_rows=future)

    def open_age(start: datetime, wall: float) -> float:
        if calendar is None:
            return wall
        return calendar.open_time_between(start, start + timedelta(seconds=wall)).total_seconds()

    # A NULL group: the newest row lies beyond group_window, measured over the whole table (Monday after a weekend).
    ages = [GroupAge(group="" if r[0] is None else str(r[0]), last_at=r[1], age_seconds=open_age(r[1], float(r[2])),
                     wall_age_seconds=float(r[2])) for r in rows]
    window = table.group_window.total_seconds()
    if table.group_by:
        seen = {a.group for a in ages}
        ages += [GroupAge(group=g) for g in table.expected_groups if g not in seen]
    ages.sort(key=lambda a: (a.age_seconds is not None, -(a.age_seconds or 0.0)))  # never seen first, then stalest
    known = [a for a in ages if a.age_seconds is not None]
    worst_age = max(a.age_seconds or 0.0 for a in known)
    worst_wall = max(a.wall_age_seconds or 0.0 for a in known)
    if len(known) < len(ages):  # an expected group never seen in the window: at least as old as the window
        now = max(a.last_at + timedelta(seconds=a.wall_age_seconds or 0.0) for a in known if a.last_at is not None)
        worst_age = max(worst_age, open_age(now - table.group_window, window))
        worst_wall = max(worst_wall, window)
    newest_of_stalest = min((a.last_at for a in known if a.last_at is not None), default=None)
    stale = [a for a in ages if a.age_seconds is None or a.age_seconds > table.error_after.total_seconds()]
    return TableFreshness(key=key, database=database or table.database, outcome="measured",
                          last_at=newest_of_stalest, age_seconds=worst_age, wall_age_seconds=worst_wall,
                          groups=len(ages) if table.group_by else 0, future_rows=future,
                          stale_groups=stale if table.group_by else [])


def comparison_buckets(start: datetime, *, interval: timedelta, count: int,
                       calendar: MarketCalendar | None = None) -> tuple[list[datetime], str]:
    """``start`` (the latest complete interval) and the same interval on the ``count`` previous sessions of the
    market, at the same offset from each session's open (a session too short for it, an early close, is left
    out); previous calendar days without a market, or when ``start`` lies outside any session. Returns the starts,
    newest first, and what 'previous' meant."""
    session = calendar.session_at(start) if calendar is not None else None
    if calendar is None or session is None or calendar.always_open:
        basis = "days" if calendar is None or calendar.always_open else \
            f"days (the interval lies outside the sessions of {calendar.name})"
        return [start - timedelta(days=d) for d in range(count + 1)], basis
    offset = start - session.open
    starts = [start]
    day = session.open.astimezone(calendar.zone).date()
    for _ in range(400):
        if len(starts) > count:
            break
        day -= timedelta(days=1)
        earlier = calendar.session_on(day)
        if earlier is None or earlier.open >= session.open:
            continue
        candidate = earlier.open + offset
        if candidate + interval <= earlier.close:
            starts.append(candidate)
    return starts, f"sessions of {calendar.name}"


def _minutes(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min"


def judge_staleness(table: MonitoredTable, measured: TableFreshness) -> Finding:
    """Seed 004's ladder on one table, in market time when it follows a market (``measured.market``).

    While the market is closed nothing acts: the finding is "ok" with what the ladder would say held back (so a
    pause this runbook made stays until a session shows fresh data). After the open, a table whose newest row
    predates the open waits ``table.grace`` for the first bar; after that the open-market age follows the ladder,
    which counts yesterday's open time too: a feed that died before yesterday's close is stale soon after the open.
    """
    finding = _ladder(table, measured)
    market = measured.market
    if market is None or finding.severity == "unknown":
        return finding
    held = finding.severity if finding.severity in ("error", "kill") else None
    ages = _ages(measured)
    if not market.open:
        reason = f"{market.describe()}: no action; {ages}"
        if held:
            reason += f" (when it opens: {finding.reason})"
        return Finding(key=table.key, severity="ok", gates_trading=finding.gates_trading, reason=reason,
                       market_state="closed", held_back=held)
    opened = market.since
    if opened is not None and market.at - opened < table.grace and (measured.last_at is None
                                                                     or measured.last_at < opened):
        reason = (f"market {market.market} opened at {market.local(opened)}: waiting for the first bar (grace "
                  f"{_minutes(table.grace.total_seconds())}, until {market.local(opened + table.grace)}); {ages}")
        return Finding(key=table.key, severity="ok", gates_trading=finding.gates_trading, reason=reason,
                       market_state="waiting", held_back=held)
    return finding.model_copy(update={"market_state": "open"})


def _ages(measured: TableFreshness) -> str:
    if measured.outcome == "empty" or measured.wall_age_seconds is None or measured.age_seconds is None:
        return "no rows yet"
    return (f"newest row {_minutes(measured.wall_age_seconds)} old (wall clock), "
            f"{_minutes(measured.age_seconds)} of open-market time")


def _ladder(table: MonitoredTable, measured: TableFreshness) -> Finding:
    """Seed 004's ladder on the age: < error_after report (warn past warn_after), then pause, then kill."""
    gates = table.gates_trading
    market_time = " of open-market time" if measured.market is not None else ""
    if measured.outcome == "empty":
        filtered = " matching the filter" if table.filter else ""
        return Finding(key=table.key, severity="error", gates_trading=gates,
                       reason=OUTCOME_TEXT["empty"].format(filtered=filtered))
    if measured.outcome != "measured" or measured.age_seconds is None:
        detail = f": {measured.detail}" if measured.detail else ""
        return Finding(key=table.key, severity="unknown", gates_trading=gates,
                       reason=f"freshness unknown, {OUTCOME_TEXT.get(measured.outcome, measured.outcome)}{detail}")
    age = measured.age_seconds
    who = ""
    named = [g for g in measured.stale_groups if g.group]
    if named:
        names = ", ".join(g.group for g in named[:5])
        more = f" and {len(named) - 5} more" if len(named) > 5 else ""
        who = f" ({table.group_by or 'group'} {names}{more})"
    kill, error, warn = table.kill_after, table.error_after, table.warn_after
    stale = f"stale for {_minutes(age)}{market_time}{who}"
    if kill is not None and age > kill.total_seconds():
        return Finding(key=table.key, severity="kill", gates_trading=gates,
                       reason=f"{stale}, beyond kill_after {_minutes(kill.total_seconds())}")
    if age > error.total_seconds():
        return Finding(key=table.key, severity="error", gates_trading=gates,
                       reason=f"{stale}, beyond error_after {_minutes(error.total_seconds())}")
    if warn is not None and age > warn.total_seconds():
        return Finding(key=table.key, severity="warn", gates_trading=gates,
                       reason=f"{_minutes(age)} old{market_time}, beyond warn_after {_minutes(warn.total_seconds())}")
    return Finding(key=table.key, severity="ok", gates_trading=gates,
                   reason=f"fresh ({_minutes(age)} old{market_time})")


def judge_quality(table: MonitoredTable, quality: QualityResult) -> Finding | None:
    if quality.status == "passed":
        return None
    if quality.status == "could_not_run":
        return Finding(key=table.key, severity="unknown", gates_trading=table.gates_trading,
                       reason=f"quality suite could not run: {quality.detail}")
    failed = [f.expectation for f in quality.failures] + quality.checks_failed
    return Finding(key=table.key, severity="error", gates_trading=table.gates_trading,
                   reason="data quality failed: " + "; ".join(failed))


def judge_volume(counts: dict[int, int], *, key: str, bucket_start: datetime | None,
                 settings: FreshnessSettings, basis: str = "days") -> VolumeCheck:
    """``counts``: sessions (or days) back (0 = the latest complete interval) to rows. A sudden drop is flagged
    when the count is below both ``(1 - max_drop) x median`` and ``median - sigmas x spread``: a feed that still
    ticks but lost most of its symbols. Intervals with no rows (market closed) are not history."""
    check = VolumeCheck(key=key, bucket_start=bucket_start, basis=basis, count=counts.get(0))
    check.history = [counts[d] for d in sorted(counts) if d > 0 and counts[d] > 0]
    if check.count is None or bucket_start is None:
        check.verdict = "no data to compare"
        return check
    if len(check.history) < settings.volume_min_history:
        check.verdict = (f"not enough history ({len(check.history)} of {settings.volume_min_history} "
                         f"{'sessions' if basis.startswith('sessions') else 'days'} with rows in this interval)")
        return check
    mid = float(median(check.history))
    spread = 1.4826 * float(median([abs(h - mid) for h in check.history]))
    check.median, check.spread = mid, spread
    check.threshold = min(mid * (1 - settings.volume_max_drop), mid - settings.volume_sigmas * spread)
    check.flagged = check.count < check.threshold
    check.verdict = (f"{check.count} row{'' if check.count == 1 else 's'} against a median of {mid:g} "
                     f"(spread {spread:.1f}): "
                     + ("SUDDEN DROP" if check.flagged else "normal"))
    return check


def worst(findings: list[Finding]) -> Severity:
    return max((f.severity for f in findings), key=SEVERITY_ORDER.__getitem__, default="ok")


class TradingHold(BaseModel):
    """This runbook's own record of the pause (or kill switch) it made: a resume is decided from it, never from the
    platform's free-text ``paused_by`` alone. ``changed_at`` is the platform's timestamp right after our call."""

    actor: str
    mode: Literal["paused", "halted", "paper"]
    changed_at: str | None
    reason: str
    flow_run_id: str | None = None
    at: datetime


Action = Literal["none", "pause", "kill-switch", "resume", "forget-record"]


class Decision(BaseModel):
    action: Action
    why: str
    target: Literal["run", "pause", "kill", "hold"] = Field(description="what the data asks for: trading may run, "
                                                            "must pause, must halt, or no verdict (unknown)")


def decide(findings: list[Finding], status: dict[str, object], record: TradingHold | None, *,
           may_resume: bool = True) -> Decision:
    """The ladder on the gating findings, against the platform's state and our own record of what we did.

    ``may_resume`` is False when this run did not look at everything the pause may have been for (some gating
    tables, or their quality, were left out): such a run never lifts a pause."""
    levels = {f.severity for f in findings if f.gates_trading}
    # Evidence of stale data acts even while another table's freshness is unknown; unknown alone never acts.
    level = next((lv for lv in ("kill", "error", "unknown") if lv in levels), "ok")
    mode = status.get("trading_mode")
    holder = status.get("paused_by")
    ours = (record is not None and mode == record.mode and holder == record.actor
            and record.changed_at is not None and status.get("changed_at") == record.changed_at)
    if level == "kill":
        if mode == "halted":
            return Decision(action="none", target="kill", why=f"data stale beyond kill_after; trading already halted "
                            f"by {holder!r}")
        return Decision(action="kill-switch", target="kill", why="data stale beyond kill_after: kill switch and "
                        "escalate (the USD/COP playbook's 'Data Source Down', section 3.3: > 60 minutes)")
    if level == "error":
        if mode == "running":
            return Decision(action="pause", target="pause", why="gating data stale or failing quality: pause "
                            "trading (the USD/COP playbook's 'Data Source Down', section 3.3: 10-60 minutes)")
        return Decision(action="none", target="pause", why=f"trading already {mode} by {holder!r}; left as it is")
    if level == "unknown":
        return Decision(action="none", target="hold", why="the freshness of gating data is unknown: nothing is "
                        "paused or resumed on a guess; fix what the findings name")
    # Every gating table is fresh (ok or warn) and passed its checks, or its market is closed (held back).
    held = [f for f in findings if f.gates_trading and f.held_back in ("error", "kill")]
    if mode == "running":
        if held and record is None:
            return Decision(action="none", target="run", why=f"the data of {', '.join(f.key for f in held)} is stale "
                            "by open-market time, but its market is closed or waiting for its first bar: no pause, "
                            "no kill switch, no page until the session says so")
        if record is not None:
            return Decision(action="forget-record", target="run", why="trading is running again; this runbook's "
                            "old hold record is obsolete")
        return Decision(action="none", target="run", why="data fresh, trading running")
    if record is None:
        return Decision(action="none", target="run", why=f"data fresh, but trading is {mode} by {holder!r}, not by "
                        "this runbook: left for whoever holds it")
    if record.changed_at is None:
        return Decision(action="none", target="run", why="data fresh again, but the platform gave no changed_at "
                        "when this runbook paused, so it cannot prove the pause in force is still its own: a human "
                        "resumes (CONFIRM_RESUME)")
    if not ours:
        ours_was = "the pause this runbook made" if record.mode == "paused" else "the kill switch this runbook pressed"
        return Decision(action="forget-record", target="run", why=f"trading is {mode} by {holder!r} since "
                        f"{status.get('changed_at')}, no longer {ours_was} at {record.changed_at}: left as it is")
    if record.mode == "halted":
        return Decision(action="none", target="run", why="data fresh again, but the kill switch this runbook "
                        "pressed stays on: a human resumes after review (CONFIRM_RESUME)")
    if not may_resume:
        return Decision(action="none", target="run", why="the pause in force is this runbook's own, but this run "
                        "checked only some gating tables or skipped their quality checks: only a full run lifts it")
    if held:
        state = "closed" if any(f.market_state == "closed" for f in held) else "waiting for its first bar"
        return Decision(action="none", target="hold", why=f"the market of {', '.join(f.key for f in held)} is "
                        f"{state} and its data is still stale by open-market time: the pause this runbook made "
                        "stays until a session shows fresh data")
    return Decision(action="resume", target="run", why="every gating table fresh and passing, and the pause in "
                    "force is this runbook's own: resume with CONFIRM_RESUME")
