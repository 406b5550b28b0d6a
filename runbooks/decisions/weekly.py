"""The weekly maintenance report as data (seed 003: "Analyze P&L performance, Check model accuracy, Review risk
metrics"): typed figures parsed from the platform's payloads, and the week's backups, drills and runbook runs
selected from their records. Pure functions and models; the tasks read, the flow composes, this shapes.

A figure the platform does not give stays None, never 0: the report shows "-" rather than a made-up zero.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from runbooks.decisions.listing import KINDS_BY_DIR, DamagedBackup, Leftover
from runbooks.decisions.manifest import BackupKind, BackupManifest, parse_backup_id
from runbooks.decisions.models import Judgement, ModelEvidence

# Breaker states that mean "tripped": trading was stopped by it.
TRIPPED = ("triggered", "tripped", "open", "active")


def number(data: dict[str, Any], *names: str) -> float | None:
    """The first of ``names`` that is a finite number."""
    for name in names:
        value = data.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _count(data: dict[str, Any], *names: str) -> int | None:
    value = number(data, *names)
    return int(value) if value is not None else None


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) and str(value) else None


# -- trading performance -------------------------------------------------------------------------------------------
class DailyPnl(BaseModel):
    date: str
    pnl: float
    trades: int | None = None


class PnlFigures(BaseModel):
    """The trading API's P&L over the window."""

    window: str
    currency: str | None = None
    total: float | None = Field(default=None, description="realized + unrealized")
    realized: float | None = None
    unrealized: float | None = None
    return_percent: float | None = None
    trades: int | None = None
    win_rate: float | None = Field(default=None, description="0-1")
    sharpe: float | None = None
    max_drawdown_percent: float | None = None
    daily: list[DailyPnl] = Field(default_factory=list)


def parse_pnl(data: dict[str, Any], *, window: str) -> PnlFigures:
    daily, points = [], data.get("daily")
    for point in points if isinstance(points, list) else []:
        if isinstance(point, dict) and (pnl := number(point, "pnl", "total_pnl")) is not None:
            daily.append(DailyPnl(date=_text(point.get("date")) or "?", pnl=pnl, trades=_count(point, "trades")))
    return PnlFigures(window=_text(data.get("window")) or window, currency=_text(data.get("currency")),
                      total=number(data, "total_pnl", "pnl", "net_pnl"), realized=number(data, "realized_pnl"),
                      unrealized=number(data, "unrealized_pnl"), return_percent=number(data, "return_pct"),
                      trades=_count(data, "trades", "trade_count"), win_rate=number(data, "win_rate"),
                      sharpe=number(data, "sharpe_ratio", "sharpe"),
                      max_drawdown_percent=number(data, "max_drawdown_pct"), daily=daily)


# -- model accuracy ------------------------------------------------------------------------------------------------
class ModelAccuracy(BaseModel):
    """One model's serving version over the window, judged by seed 004's table ([models.policy])."""

    model_id: str
    evidence: ModelEvidence
    judgement: Judgement
    points: int = Field(default=0, description="metric readings the API recorded in the window's history")


# -- risk metrics --------------------------------------------------------------------------------------------------
class CircuitBreaker(BaseModel):
    name: str
    state: str
    detail: str = ""

    @property
    def tripped(self) -> bool:
        return self.state.lower() in TRIPPED


class RiskMetrics(BaseModel):
    currency: str | None = None
    drawdown_percent: float | None = None
    max_drawdown_percent: float | None = None
    var_95: float | None = Field(default=None, description="one-day value at risk, 95 %")
    var_99: float | None = None
    gross_exposure: float | None = None
    net_exposure: float | None = None
    exposure_limit: float | None = None
    leverage: float | None = None

    @property
    def exposure_percent_of_limit(self) -> float | None:
        if self.gross_exposure is None or not self.exposure_limit:
            return None
        return 100 * self.gross_exposure / self.exposure_limit


class RiskEvents(BaseModel):
    count: int | None = None
    by_severity: dict[str, int] = Field(default_factory=dict)


class RiskFigures(BaseModel):
    """The risk engine's figures; a part the API did not answer stays None (and is listed as unreadable)."""

    metrics: RiskMetrics | None = None
    breakers: list[CircuitBreaker] | None = None
    health: str | None = None
    events: RiskEvents | None = None


def parse_risk_metrics(data: dict[str, Any]) -> RiskMetrics:
    return RiskMetrics(currency=_text(data.get("currency")),
                       drawdown_percent=number(data, "current_drawdown_pct", "drawdown_pct"),
                       max_drawdown_percent=number(data, "max_drawdown_pct"),
                       var_95=number(data, "var_95_1d", "var_95", "var"), var_99=number(data, "var_99_1d", "var_99"),
                       gross_exposure=number(data, "gross_exposure", "exposure"),
                       net_exposure=number(data, "net_exposure"), exposure_limit=number(data, "exposure_limit"),
                       leverage=number(data, "leverage"))


def parse_risk_health(data: dict[str, Any]) -> str:
    return _text(data.get("status")) or "unknown"


def parse_breakers(data: dict[str, Any]) -> list[CircuitBreaker]:
    """``{"breakers": [{"name", "state", ...}]}`` or ``{"<name>": {"state": ...}}``; the other fields are detail."""
    items = data.get("breakers")
    if not isinstance(items, list):
        items = [{"name": name, **spec} for name, spec in data.items() if isinstance(spec, dict)]
    breakers = []
    for item in items:
        if not isinstance(item, dict) or not (name := _text(item.get("name"))):
            continue
        state = _text(item.get("state") or item.get("status")) or "unknown"
        if item.get("triggered") is True:
            state = "triggered"
        detail = ", ".join(f"{k} {v}" for k, v in item.items()
                           if k not in ("name", "state", "status", "triggered") and v is not None)
        breakers.append(CircuitBreaker(name=name, state=state, detail=detail[:200]))
    return breakers


def parse_risk_events(data: dict[str, Any]) -> RiskEvents:
    events = data.get("events")
    found = RiskEvents(count=_count(data, "count", "total"))
    if found.count is None and isinstance(events, list):
        found.count = len(events)
    severities = data.get("by_severity")
    if isinstance(severities, dict):
        found.by_severity = {str(k): int(v) for k, v in severities.items()
                             if isinstance(v, int) and not isinstance(v, bool)}
    elif isinstance(events, list):
        for event in events:
            if isinstance(event, dict):
                severity = _text(event.get("severity")) or "unknown"
                found.by_severity[severity] = found.by_severity.get(severity, 0) + 1
    return found


# -- backups -------------------------------------------------------------------------------------------------------
BackupStatus = Literal["verified", "verification failed", "damaged", "incomplete"]


class BackupEntry(BaseModel):
    kind: BackupKind
    name: str
    backup_id: str
    started_at: datetime | None = None
    seconds: float | None = None
    stored_bytes: int | None = None
    status: BackupStatus
    detail: str = ""


class BackupWeek(BaseModel):
    """The window's backups, oldest first, damaged and incomplete ones included."""

    entries: list[BackupEntry] = Field(default_factory=list)
    damaged_before: list[BackupEntry] = Field(default_factory=list,
                                              description="damaged backups older than the window: still there")


def _taken(backup_id: str) -> datetime | None:
    try:
        return parse_backup_id(backup_id)
    except ValueError:
        return None


def backups_in_window(manifests: list[BackupManifest], damaged: list[DamagedBackup], unfinished: list[Leftover],
                      *, since: datetime, until: datetime) -> BackupWeek:
    """Every backup whose id falls in [since, until]; a damaged or incomplete one whose id is not a time is shown
    too (it cannot be placed, so it is never hidden), and damaged ones from before the window are kept apart."""
    week = BackupWeek()
    for m in manifests:
        if since <= m.started_at <= until:
            verification = m.verification
            week.entries.append(BackupEntry(
                kind=m.kind, name=m.name, backup_id=m.backup_id, started_at=m.started_at,
                seconds=(m.finished_at - m.started_at).total_seconds(), stored_bytes=m.stored_bytes,
                status="verified" if m.verified else "verification failed",
                detail=(verification.detail if verification and not m.verified else "")[:300]))
    for d in damaged:
        taken = _taken(d.backup_id)
        entry = BackupEntry(kind=d.kind, name=d.name, backup_id=d.backup_id, started_at=taken, status="damaged",
                            stored_bytes=sum(o.size for o in d.objects),
                            detail=f"manifest {d.reason}; no runbook restores it")
        if taken is not None and taken < since:
            week.damaged_before.append(entry)
        elif taken is None or taken <= until:
            week.entries.append(entry)
    for leftover in unfinished:
        parts = leftover.prefix.split("/")
        if len(parts) != 3 or parts[0] not in KINDS_BY_DIR:
            continue
        taken = _taken(parts[2])
        if taken is not None and not since <= taken <= until:
            continue
        reason = leftover.reason or "no manifest: interrupted, or still being written"
        week.entries.append(BackupEntry(kind=KINDS_BY_DIR[parts[0]], name=parts[1],
                                        backup_id=parts[2], started_at=taken, status="incomplete",
                                        stored_bytes=leftover.stored_bytes, detail=reason))
    week.entries.sort(key=lambda e: (e.started_at is None, e.started_at or since, e.kind, e.name))
    return week


def databases_without_verified_backup(week: BackupWeek, inventory: list[str]) -> list[str]:
    verified = {e.name for e in week.entries if e.kind == "database" and e.status == "verified"}
    return [name for name in inventory if name not in verified]


# -- DR drills -----------------------------------------------------------------------------------------------------
# -- runbook runs --------------------------------------------------------------------------------------------------
class RunbookRunEntry(BaseModel):
    """One flow run of a runbook, as the Prefect API holds it."""

    runbook: str
    name: str
    flow_run_id: str
    state: str = Field(description="the state's name: Completed, Failed, Crashed, Cancelled, Paused, Running, ...")
    state_type: str
    started_at: datetime | None = None
    seconds: float | None = Field(default=None, description="start to end; None while it runs")
    message: str = ""

    @property
    def completed(self) -> bool:
        return self.state_type == "COMPLETED"


class RunbookRuns(BaseModel):
    runs: list[RunbookRunEntry] = Field(default_factory=list)
    truncated: bool = Field(default=False, description="the window held more runs than [weekly_report] max_runs")


class RunbookSummary(BaseModel):
    runbook: str
    runs: int
    by_state: dict[str, int]
    last_problem: str | None = Field(default=None, description="the newest run that did not complete")


def summarize_runs(runs: list[RunbookRunEntry], *, list_up_to: int) -> tuple[list[RunbookSummary],
                                                                            list[RunbookRunEntry]]:
    """Per runbook: its runs by final state; and the runs listed one by one: every run that did not complete, and
    every run of a runbook that ran at most ``list_up_to`` times (a five-minute schedule would bury the rest)."""
    by_runbook: dict[str, list[RunbookRunEntry]] = {}
    for entry in runs:
        by_runbook.setdefault(entry.runbook, []).append(entry)
    summaries, listed = [], []
    for runbook, entries in sorted(by_runbook.items()):
        states: dict[str, int] = {}
        for entry in entries:
            states[entry.state] = states.get(entry.state, 0) + 1
        problems = [e for e in entries if not e.completed]
        last = problems[-1] if problems else None
        summaries.append(RunbookSummary(
            runbook=runbook, runs=len(entries), by_state=dict(sorted(states.items())),
            last_problem=f"{last.name}: {last.state}" + (f" ({last.message})" if last.message else "")
            if last else None))
        listed += entries if len(entries) <= list_up_to else problems
    listed.sort(key=lambda e: (e.started_at is None, e.started_at))
    return summaries, listed


def window_label(days: int) -> str:
    """The API's window parameter for ``days`` days (``7d``)."""
    return f"{days}d"


def window_bounds(end: datetime, days: int) -> tuple[datetime, datetime]:
    return end - timedelta(days=days), end
