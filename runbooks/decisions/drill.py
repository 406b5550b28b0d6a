"""The DR game-day as data: which backup set a drill restores, how each component of seed 002's RTO/RPO table is
scored, and the record of every drill kept in the backup repository (the trend survives the Prefect database).
Pure functions and models; the flow gathers, this decides.

Freshness at backup time is judged in market time: a backup taken after the close holds the data as of the close,
and that is fresh; a gap that opened during a session is a finding whenever the backup was taken."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

from runbooks.core.errors import BackupNotFound, Refused
from runbooks.core.market_time import MarketCalendar
from runbooks.decisions.freshness import Finding, TableFreshness, judge_staleness
from runbooks.decisions.listing import DamagedBackup
from runbooks.decisions.manifest import BackupManifest
from runbooks.settings import DrillComponent, MonitoredTable


class BackupSet(BaseModel):
    """The backups of one backup run: every database of the inventory, and the cluster's roles and files."""

    backup_id: str
    databases: dict[str, BackupManifest] = Field(description="inventory name -> its dump's manifest")
    roles: BackupManifest | None = Field(default=None, description="the cluster backup with the roles (globals): "
                                         "the same run's, else the newest earlier verified one")
    config: BackupManifest | None = Field(default=None, description="the cluster backup with the configuration "
                                          "files: the same run's, else the newest earlier verified one")
    skipped: list[str] = Field(default_factory=list, description="newer backup runs not used, and why")

    def taken_at(self, name: str | None = None) -> datetime:
        """When the data was read: a database's snapshot, or (no name) the oldest snapshot of the set."""
        if name is None:
            return min(_snapshot_time(m) for m in self.databases.values())
        return _snapshot_time(self.databases[name])


def _snapshot_time(manifest: BackupManifest) -> datetime:
    return manifest.snapshot.taken_at if manifest.snapshot else manifest.started_at


def pick_backup_set(manifests: list[BackupManifest], damaged: list[DamagedBackup], *, inventory: list[str],
                    backup_id: str) -> BackupSet:
    """The newest backup run that holds a verified dump of every inventory database (or the run ``backup_id``).

    Newer runs that miss a database, hold a damaged manifest or a dump that failed verification are listed in
    ``skipped``: a drill shows what it passed over, it never quietly restores an older set. Refuses when no run
    qualifies (there is nothing a clean cluster could be built from).
    """
    runs: dict[str, dict[str, BackupManifest]] = defaultdict(dict)
    for m in manifests:
        if m.kind == "database" and m.name in inventory:
            runs[m.backup_id][m.name] = m
    broken: dict[str, list[str]] = defaultdict(list)
    for d in damaged:
        if d.kind == "database" and d.name in inventory:
            broken[d.backup_id].append(f"{d.name}: manifest {d.reason}")
    ids = sorted(set(runs) | set(broken), reverse=True)
    if backup_id != "latest":
        ids = [i for i in ids if i == backup_id]
        if not ids:
            raise BackupNotFound(f"there is no backup run {backup_id} of the inventory's databases.",
                                 hint="'runbooks backups list' shows them; or run the drill with backup_id=latest.")
    skipped: list[str] = []
    for candidate in ids:
        found = runs.get(candidate, {})
        problems = list(broken.get(candidate, []))
        problems += [f"{name}: no backup in this run" for name in inventory
                     if name not in found and not any(p.startswith(f"{name}:") for p in problems)]
        problems += [f"{name}: failed verification when taken" for name, m in found.items() if not m.verified]
        if not problems:
            return BackupSet(backup_id=candidate, databases=found, skipped=skipped)
        skipped.append(f"{candidate}: " + "; ".join(problems))
    if not ids:
        raise BackupNotFound("there is no backup of the inventory's databases in the repository.",
                             hint="run the backup runbook first ('runbooks run backup'), then the drill.")
    raise Refused("no backup run holds a verified dump of every inventory database: " + " | ".join(skipped),
                  hint="fix the backups (run 'runbooks run backup'), or name a run with backup_id.")


def pick_cluster_backups(backup_set: BackupSet, manifests: list[BackupManifest],
                         damaged: list[DamagedBackup]) -> list[str]:
    """Set the roles and configuration files of ``backup_set``: each from the newest verified cluster backup at
    or before the set's run that holds it. Returns the issues: the set's own cluster backup damaged, unverified
    or missing, so an older one was used (or none)."""
    issues: list[str] = []
    run = backup_set.backup_id
    same = [m for m in manifests if m.backup_id == run]
    for d in damaged:
        if d.backup_id == run:
            issues.append(f"the cluster backup of run {run} ({d.name}) is DAMAGED (manifest {d.reason}): not used")
    for m in same:
        if not m.verified:
            issues.append(f"the cluster backup of run {run} ({m.name}) failed verification when taken: not used")
    usable = [m for m in manifests if m.verified and m.backup_id <= run]
    for role, attr, what in (("globals", "roles", "roles"), ("config", "config", "configuration files")):
        found = [m for m in usable if any(o.role == role for o in m.objects)]
        chosen = found[-1] if found else None
        setattr(backup_set, attr, chosen)
        if chosen is None:
            issues.append(f"no verified cluster backup with the {what} at or before run {run}")
        elif chosen.backup_id != run:
            issues.append(f"the {what} come from the older cluster backup {chosen.backup_id}, not run {run}")
    return issues


# -- freshness at backup time, in market time ---------------------------------------------------------------------
BackupWhen = Literal["during the session", "after the close", "on a closed day", "24/7"]


class BackupMarket(BaseModel):
    """Where a backup's snapshot fell in one market's week: what "fresh at backup time" is judged against."""

    market: str
    timezone: str
    taken_at: datetime
    when: BackupWhen
    closed_why: str | None = Field(default=None, description="on a closed day: weekend, holiday, venue closure")
    last_close: datetime | None = Field(default=None, description="the close at or before the snapshot")

    def local(self, instant: datetime) -> str:
        return f"{instant.astimezone(ZoneInfo(self.timezone)):%a %Y-%m-%d %H:%M} {self.timezone}"

    def describe(self) -> str:
        """'backup taken after the close at 13:00 America/Bogota (Mon 2026-11-23)', for the scorecard."""
        text = f"{self.market}: backup taken "
        if self.when == "24/7":
            return text + "while the market is open (24/7: the backup's age is its staleness)"
        if self.when == "during the session":
            return text + f"during the session ({self.local(self.taken_at)})"
        close = ""
        if self.last_close is not None:
            at = self.last_close.astimezone(ZoneInfo(self.timezone))
            close = f" at {at:%H:%M} {self.timezone} ({at:%a %Y-%m-%d})"
        if self.when == "after the close":
            return text + f"after the close{close}: it holds the data as of the close"
        return text + f"on a closed day ({self.closed_why}; last close{close or ' unknown'})"


def backup_market(calendar: MarketCalendar, taken_at: datetime) -> BackupMarket:
    """When ``taken_at`` (a backup's snapshot) fell relative to ``calendar``'s sessions."""
    status = calendar.status(taken_at)
    when: BackupWhen
    if status.kind == "always-open":
        when = "24/7"
    elif status.open:
        when = "during the session"
    elif status.kind in ("after-close", "before-open"):  # before today's open: after the previous close
        when = "after the close"
    else:
        when = "on a closed day"
    return BackupMarket(market=calendar.name, timezone=calendar.timezone, taken_at=taken_at, when=when,
                        closed_why=status.reason if when == "on a closed day" else None,
                        last_close=status.previous_close)


def judge_at_backup(table: MonitoredTable, measured: TableFreshness) -> Finding:
    """Seed 004's ladder on a restored table's age at the backup's snapshot.

    For a table that follows a market (``measured.market``, the market at the snapshot) the age is the open-market
    time between its newest row and the snapshot, and the ladder applies whether the market was open or not: the
    drill judges a copy, nothing acts on it, so nothing is held back while closed. A backup taken after the close
    of data fresh at the close is fresh; a gap that opened during a session is a finding, whenever the backup was
    taken. Without a market: the wall clock, as the freshness runbook judges it."""
    market = measured.market
    if market is None:
        return judge_staleness(table, measured)
    ladder = judge_staleness(table, measured.model_copy(update={"market": None}))
    if ladder.severity == "unknown" or measured.outcome != "measured":
        return ladder
    wall = f", {measured.wall_age_seconds / 3600:.1f} h by the wall clock" if measured.wall_age_seconds else ""
    return ladder.model_copy(update={
        "market_state": "open" if market.open else "closed",
        "reason": f"{ladder.reason}: open-market time of {market.market} from the newest row to the backup{wall}"})


# -- scoring -------------------------------------------------------------------------------------------------------
ScoreStatus = Literal["met", "missed", "failed", "not_covered"]


class Proof(BaseModel):
    """What the drill proved about one item that can back a component: a database or the configuration files."""

    item: str = Field(description="'database <name>' or 'configuration files'")
    ok: bool
    validated_after_seconds: float | None = Field(default=None, description="drill start to this item's proof")
    taken_at: datetime | None = Field(default=None, description="when the backup read it")
    tables: list[str] = Field(default_factory=list, description="'schema.table' restored with matching row counts")
    detail: str = ""


class ComponentScore(BaseModel):
    name: str
    backed_by: list[str] = Field(default_factory=list)
    status: ScoreStatus
    rto_target_seconds: float
    rto_seconds: float | None = Field(default=None, description="drill start to the component validated")
    rto_met: bool | None = None
    rpo_target_seconds: float
    rpo_seconds: float | None = Field(default=None, description="age of its backup at drill time")
    worst_rpo_seconds: float | None = Field(default=None, description="what a disaster just before the next "
                                            "backup would lose: the larger of that age and the backup interval")
    rpo_met: bool | None = None
    reasons: list[str] = Field(default_factory=list)


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def score_component(component: DrillComponent, proofs: dict[str, Proof], *, started_at: datetime,
                    backup_interval: timedelta, unproven: str = "not in the backup set") -> ComponentScore:
    """Seed 002's row for one component: RTO from the drill's start to its last item proven, RPO from the age of
    its oldest backup, and the backup interval: a nightly logical backup cannot meet a one-minute RPO whatever
    its age today, and says so."""
    score = ComponentScore(name=component.name, status="not_covered",
                           rto_target_seconds=component.rto.total_seconds(),
                           rpo_target_seconds=component.rpo.total_seconds())
    if not component.covered:
        score.reasons.append("nothing in the settings backs it up ([[drill.components]] databases, tables, "
                             "config_files)")
        return score
    needed: list[tuple[str, str | None]] = [(f"database {d}", None) for d in component.databases]
    for name in component.tables:
        database, *rest = name.split(".")
        qualified = ".".join(rest) if len(rest) == 2 else f"public.{rest[0]}"
        needed.append((f"database {database}", qualified))
    if component.config_files:
        needed.append(("configuration files", None))
    needed += [(f"redis {name}", None) for name in component.redis]
    score.backed_by = [item if table is None else f"{item.removeprefix('database ')}.{table}"
                       for item, table in needed]
    used: list[Proof] = []
    for item, table in needed:
        proof = proofs.get(item)
        if proof is None:
            score.reasons.append(f"{item}: {unproven}")
        elif not proof.ok:
            score.reasons.append(f"{item}: {proof.detail or 'not proven'}")
        elif table is not None and table not in proof.tables:
            score.reasons.append(f"table {table} is not in the backup of {item}")
        else:
            used.append(proof)
    if score.reasons:
        score.status = "failed"
        return score
    score.rto_seconds = max(p.validated_after_seconds or 0.0 for p in used)
    oldest = min(p.taken_at for p in used if p.taken_at is not None) if any(p.taken_at for p in used) else None
    score.rpo_seconds = (started_at - oldest).total_seconds() if oldest else None
    score.worst_rpo_seconds = max(score.rpo_seconds or 0.0, backup_interval.total_seconds())
    score.rto_met = score.rto_seconds <= score.rto_target_seconds
    score.rpo_met = score.worst_rpo_seconds <= score.rpo_target_seconds
    if not score.rto_met:
        score.reasons.append(f"recovered in {human_duration(score.rto_seconds)}, target "
                             f"{human_duration(score.rto_target_seconds)}")
    only_redis = bool(component.redis) and not (component.databases or component.tables or component.config_files)
    if not score.rpo_met:
        if (score.rpo_seconds or 0.0) > score.rpo_target_seconds:
            score.reasons.append(f"the newest backup was {human_duration(score.rpo_seconds)} old at drill time, "
                                 f"target {human_duration(score.rpo_target_seconds)}")
        if backup_interval.total_seconds() > score.rpo_target_seconds:
            score.reasons.append(
                f"backups run every {human_duration(backup_interval.total_seconds())} ("
                + ("[redis] backup_interval" if only_redis else "drill.backup_interval") + "), so "
                "up to that much is lost; " + (
                    f"an RPO of {human_duration(score.rpo_target_seconds)} needs Redis backed up as often: activate "
                    "backup-redis-15min and set [redis] backup_interval" if only_redis else
                    f"an RPO of {human_duration(score.rpo_target_seconds)} needs continuous WAL archiving "
                    "(point-in-time recovery) or replication, not a logical backup"))
    score.status = "met" if score.rto_met and score.rpo_met else "missed"
    return score


# -- the record of each drill ----------------------------------------------------------------------------------
class DrillRecord(BaseModel):
    """One drill, as the trend shows it."""

    drill_id: str
    started_at: datetime
    flow_run_id: str | None = None
    host: str
    backup_id: str | None = None
    backup_age_seconds: float | None = None
    operational: bool
    recovery_seconds: float | None = Field(default=None, description="drill start to the platform proven")
    seconds: float = 0.0
    met: int = 0
    scored: int = 0
    not_covered: int = 0
    issues: int = 0
    scorecard: list[ComponentScore] = Field(default_factory=list)


