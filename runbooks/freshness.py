"""What the data-freshness runbook measures and how it decides: the findings per monitored table and seed 004's
ladder (report, pause, kill switch, resume). Pure functions, no I/O: the flow gathers, this decides."""

from __future__ import annotations

from datetime import datetime
from statistics import median
from typing import Literal

from pydantic import BaseModel, Field

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
    age_seconds: float | None = Field(default=None, description="None: an expected group with no rows in the window")


class TableFreshness(BaseModel):
    """The freshness of one monitored table, measured in its database."""

    key: str
    database: str
    outcome: Outcome
    last_at: datetime | None = None
    age_seconds: float | None = Field(default=None, description="now - newest row (the stalest group's)")
    groups: int = 0
    future_rows: int = Field(default=0, description="rows dated more than a minute ahead of now (per group "
                             "in the group window; 1 = some, for an ungrouped table): ignored, so one wrong clock "
                             "cannot make stale data look fresh")
    stale_groups: list[GroupAge] = Field(default_factory=list, description="groups older than error_after, "
                                         "stalest first")
    detail: str | None = None


class VolumeCheck(BaseModel):
    """The row count of the latest complete interval against the same interval on previous days."""

    key: str
    bucket_start: datetime | None = None
    count: int | None = None
    history: list[int] = Field(default_factory=list, description="same interval, 1..N days back (0s dropped)")
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


def _minutes(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min"


def judge_staleness(table: MonitoredTable, measured: TableFreshness) -> Finding:
    """Seed 004's ladder on one table: < error_after report (warn past warn_after), then pause, then kill."""
    gates = table.gates_trading
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
    if measured.stale_groups:
        names = ", ".join(g.group for g in measured.stale_groups[:5])
        more = f" and {len(measured.stale_groups) - 5} more" if len(measured.stale_groups) > 5 else ""
        who = f" ({table.group_by or 'group'} {names}{more})"
    kill, error = table.kill_after, table.error_after
    if kill is not None and age > kill.total_seconds():
        return Finding(key=table.key, severity="kill", gates_trading=gates,
                       reason=f"stale for {_minutes(age)}{who}, beyond kill_after {_minutes(kill.total_seconds())}")
    if age > error.total_seconds():
        return Finding(key=table.key, severity="error", gates_trading=gates,
                       reason=f"stale for {_minutes(age)}{who}, beyond error_after {_minutes(error.total_seconds())}")
    if table.warn_after is not None and age > table.warn_after.total_seconds():
        return Finding(key=table.key, severity="warn", gates_trading=gates,
                       reason=f"{_minutes(age)} old, beyond warn_after {_minutes(table.warn_after.total_seconds())}")
    return Finding(key=table.key, severity="ok", gates_trading=gates, reason=f"fresh ({_minutes(age)} old)")


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
                 settings: FreshnessSettings) -> VolumeCheck:
    """``counts``: days back (0 = the latest complete interval) to rows. A sudden drop is flagged when the count
    is below both ``(1 - max_drop) x median`` and ``median - sigmas x spread``: a feed that still ticks but lost
    most of its symbols. Days with no rows (market closed) are not history."""
    check = VolumeCheck(key=key, bucket_start=bucket_start, count=counts.get(0))
    check.history = [counts[d] for d in sorted(counts) if d > 0 and counts[d] > 0]
    if check.count is None or bucket_start is None:
        check.verdict = "no data to compare"
        return check
    if len(check.history) < settings.volume_min_history:
        check.verdict = (f"not enough history ({len(check.history)} of {settings.volume_min_history} days with rows "
                         "in this interval)")
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


class HoldRecord(BaseModel):
    """This runbook's own record of the pause (or kill switch) it made: a resume is decided from it, never from the
    platform's free-text ``paused_by`` alone. ``changed_at`` is the platform's timestamp right after our call."""

    actor: str
    mode: Literal["paused", "halted"]
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


def decide(findings: list[Finding], status: dict[str, object], record: HoldRecord | None, *,
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
                        "escalate (seed 004: > 60 minutes)")
    if level == "error":
        if mode == "running":
            return Decision(action="pause", target="pause", why="gating data stale or failing quality: pause "
                            "trading (seed 004: 10-60 minutes)")
        return Decision(action="none", target="pause", why=f"trading already {mode} by {holder!r}; left as it is")
    if level == "unknown":
        return Decision(action="none", target="hold", why="the freshness of gating data is unknown: nothing is "
                        "paused or resumed on a guess; fix what the findings name")
    # Every gating table is fresh (ok or warn) and passed its checks.
    if mode == "running":
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
    return Decision(action="resume", target="run", why="every gating table fresh and passing, and the pause in "
                    "force is this runbook's own: resume with CONFIRM_RESUME")
