"""The quarterly DR game-day (seed 001): a clean cluster built from last night's backups, the platform proven on
it, and each component of seed 002's RTO/RPO table scored.

Trigger: the ``dr-game-day-quarterly`` deployment (first Tuesday of January, April, July and October), the
``dr-game-day`` on-demand deployment, ``runbooks run dr-game-day``, or ``make demo`` on the sandbox. Blast radius:
never production. It restores into a throwaway initdb cluster on a free loopback port (or into an existing
EMPTY server named by ``drill.target_dsn``, refused if it is an inventory server or holds anything a drill did
not record making), fetches into its own work directory, and reads the repository; it writes only its own
records there (the drill record, holds on the backups it restores, its lease). One drill of a cluster at a time
on every host that shares the repository: a second is refused ("another drill is running"), not failed. Rollback:
nothing to undo. The cluster is torn down at the end unless ``keep_cluster``; a drill killed before that is
cleaned up by the next drill on that host.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import psycopg
from prefect import flow
from prefect.states import State
from prefect.utilities.annotations import quote
from pydantic import BaseModel, ConfigDict, Field

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.postgres import CheckResult, failure_line, fit_name
from runbooks.adapters.records import DrillRecords, RestoreRecords
from runbooks.adapters.repository import open_repository
from runbooks.adapters.repository.local import LocalRepository
from runbooks.adapters.roles import RoleCreated
from runbooks.adapters.workdirs import WorkDirs
from runbooks.core.errors import ConfigurationError, LockBusy, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.drill import (
    BackupMarket,
    BackupSet,
    ComponentScore,
    DrillRecord,
    Proof,
    backup_market,
    human_duration,
    judge_at_backup,
    pick_backup_set,
    pick_cluster_backups,
    score_component,
)
from runbooks.decisions.freshness import Finding, QualityResult, TableFreshness, judge_quality
from runbooks.decisions.health import HealthCheck
from runbooks.decisions.manifest import BackupManifest, backup_id_for
from runbooks.decisions.pitr import RecoveryPoint, pitr_paths, protected_cluster
from runbooks.decisions.report import human_bytes, report_tail, table
from runbooks.flows.restore_sequence import restore_to_scratch
from runbooks.frame import RunbookResult, RunbookRun, host_lock, repository_lock, resource_lock
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import takes
from runbooks.settings import BackupSelector, Settings
from runbooks.settings.drill import DrillComponent
from runbooks.tasks.drill import (
    SYSTEM_DATABASES,
    CleanCluster,
    check_cluster_root,
    check_target_server,
    drill_workdirs,
    drop_drill_databases,
    drop_drill_roles,
    provision_throwaway_cluster,
    refuse_non_empty_target,
    sweep_killed_drills,
    tear_down_throwaway_cluster,
)
from runbooks.tasks.freshness import measure_freshness
from runbooks.tasks.health import check_api_health, check_database_health, check_host_health
from runbooks.tasks.pgbackrest import (
    RestoredCluster,
    check_restored_database,
    list_restored_tables,
    read_recovery_point,
    restore_into_new_cluster,
    restored_databases,
    start_restored,
    stop_restored,
)
from runbooks.tasks.postgres import (
    ValidationReport,
    analyze_database,
    publish_recovery_database,
    restore_roles,
    validate_database,
)
from runbooks.tasks.quality import preload_gx, validate_recent_window
from runbooks.tasks.redis import restore_redis_instance
from runbooks.tasks.storage import RestoredFile, fetch_backup, restore_config_files
from runbooks.tasks.workspace import WorkDirReport

RUNBOOK = "dr-game-day"
RECOVERY_TARGET = timedelta(minutes=30)  # seed 001: "document time to recovery (30-minute target)"
HOLD_FOR = timedelta(hours=12)  # the backups being restored are held from retention this long at most


class DrillParameters(BaseModel):
    """Which backups the drill restores and what it leaves behind; the clean cluster and the scored components
    are in the settings (``[drill]``)."""

    model_config = ConfigDict(extra="forbid")

    backup_id: BackupSelector = Field(default="latest", description="'latest' (the newest backup run with a "
                                      "verified dump of every database) or a backup id such as 20261121T020000Z.")
    keep_cluster: bool = Field(default=False, description="Leave the restored cluster running for inspection (the "
                               "next drill removes it).")
    jobs: int = Field(default=2, ge=1, le=32, description="Parallel pg_restore jobs.")
    quality: bool = Field(default=True, description="Run the data-quality suites (GX) on the restored data.")
    physical: bool = Field(default=False, description="Also drill the physical path: the pgBackRest repository "
                           "([pitr]) restored to the end of its archive into a new cluster, proven, and scored on "
                           "its own against the same RTO/RPO table.")

    def check_against(self, settings: Settings) -> None:
        """Refuse (ConfigurationError) a drill the settings make impossible; the CLI calls it before any run."""
        check_drill_settings(settings)


def check_drill_settings(settings: Settings) -> None:
    """The inventory names every database a component names, each restored name is unique and not a system
    database, and the server's OS user can reach the work directory."""
    inventory = settings.databases
    if not inventory:
        raise ConfigurationError("the inventory has no databases: there is nothing to restore.",
                                 hint="add [databases.NAME] to the settings.")
    for component in settings.drill.components:
        named = set(component.databases) | {t.split(".")[0] for t in component.tables}
        if unknown := sorted(named - set(inventory)):
            raise ConfigurationError(
                f"drill component {component.name!r} names database(s) {', '.join(unknown)}, which the inventory "
                f"does not have (it has {', '.join(sorted(inventory))}).",
                hint="fix [[drill.components]] (the defaults name trading_db) to name inventory databases.")
    restored: dict[str, str] = {}
    for name, database in inventory.items():
        live = str(database.conninfo().get("dbname") or name)
        if live in SYSTEM_DATABASES:
            raise ConfigurationError(f"inventory database {name!r} is {live!r} on its server, a system database "
                                     "a clean cluster already has.", hint="keep application data out of it.")
        if live in restored:
            raise ConfigurationError(f"inventory databases {restored[live]!r} and {name!r} are both named {live!r} "
                                     "on their servers; one clean cluster cannot hold both.",
                                     hint="drill them with separate inventories (RUNBOOKS_CONFIG).")
        restored[live] = name
    if settings.drill.target_dsn is None:
        check_cluster_root(settings.drill_root)


class DatabaseDrill(BaseModel):
    """One database of the set, restored and proven (or where it stopped)."""

    name: str
    restored_as: str
    backup_id: str
    taken_at: datetime
    bytes: int
    proven: bool = False
    stopped_at: str | None = Field(default=None, description="the step that failed")
    detail: str | None = None
    pg_restore_seconds: float | None = None
    validation: ValidationReport | None = None
    freshness: list[TableFreshness] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list, description="freshness (at backup time) and quality")
    quality: list[QualityResult] = Field(default_factory=list)
    health: HealthCheck | None = None


class PhysicalDrill(BaseModel):
    """The physical path: pgBackRest's newest backup plus archived WAL, replayed into a new cluster and proven."""

    proven: bool = False
    detail: str | None = None
    restored_at: str | None = None
    point: RecoveryPoint | None = None
    recovery_seconds: float | None = Field(default=None, description="path start to every database proven")
    databases: dict[str, list[str]] = Field(default_factory=dict, description="inventory name -> tables read")
    checks: dict[str, list[CheckResult]] = Field(default_factory=dict)
    scorecard: list[ComponentScore] = Field(default_factory=list)

    @property
    def met(self) -> int:
        return sum(s.status == "met" for s in self.scorecard)


class DrillResult(RunbookResult):
    keep_cluster: bool = False
    host: str | None = Field(default=None, description="the host that ran the drill (its host_name)")
    refused: str | None = Field(default=None, description="the drill never ran: another drill holds this host, "
                                "the cluster's drill lease in the repository (any host) or the target server (who, "
                                "when known); nothing was done, nothing scored or recorded")
    cluster: str | None = Field(default=None, description="the clean cluster (no password)")
    cluster_kind: Literal["throwaway", "server"] | None = None
    kept: list[str] = Field(default_factory=list, description="what was left for inspection, and how to remove it")
    backup_id: str | None = None
    backup_taken_at: datetime | None = None
    backup_age_seconds: float | None = Field(default=None, description="the RPO achieved at drill time")
    backup_markets: list[BackupMarket] = Field(default_factory=list, description="when the set was taken relative "
                                               "to each market its monitored tables follow (during the session, "
                                               "after the close, on a closed day)")
    skipped_sets: list[str] = Field(default_factory=list)
    roles_created: list[RoleCreated] = Field(default_factory=list)
    config_files: list[RestoredFile] = Field(default_factory=list)
    databases: list[DatabaseDrill] = Field(default_factory=list)
    redis: list[RedisDrill] = Field(default_factory=list, description="the Redis instances restored")
    health: list[HealthCheck] = Field(default_factory=list)
    operational: bool = False
    recovery_seconds: float | None = Field(default=None, description="drill start to the platform proven")
    recovery_target_seconds: float = RECOVERY_TARGET.total_seconds()
    scorecard: list[ComponentScore] = Field(default_factory=list)
    physical: PhysicalDrill | None = Field(default=None, description="the physical path (physical=true)")
    issues: list[str] = Field(default_factory=list, description="issues found, for the game-day record")
    trend: list[DrillRecord] = Field(default_factory=list, description="previous drills and this one")
    swept: list[WorkDirReport] = Field(default_factory=list, description="what killed or kept drills left")
    swept_databases: list[str] = Field(default_factory=list)
    torn_down: bool = False

    @property
    def met(self) -> int:
        return sum(s.status == "met" for s in self.scorecard)

    @property
    def scored(self) -> int:
        return sum(s.status != "not_covered" for s in self.scorecard)

    @property
    def summary(self) -> str:
        covered = sum(s.status == "not_covered" for s in self.scorecard)
        text = f"{self.met} of {len(self.scorecard)} targets met"
        return text + (f" ({covered} not covered)" if covered else "")


def _run_name() -> str:
    p = run_parameters()
    return run_name(RUNBOOK, "physical" if p.get("physical") else None, "from", p.get("backup_id") or "latest",
                    stamp=True)


SCORE_HEADINGS = ["component", "status", "RTO target", "RTO achieved", "RPO target", "RPO at drill time",
                  "RPO worst case"]


def _status(score: ComponentScore) -> str:
    return "met" if score.status == "met" else score.status.replace("_", " ").upper()


def scorecard_markdown(scores: list[ComponentScore]) -> list[str]:
    """Seed 002's table with short cells only, so it reads at 80 columns; what backs each component and why it
    missed or failed are sentences, one line each under the table."""
    rows = [[s.name, _status(s), human_duration(s.rto_target_seconds), human_duration(s.rto_seconds),
             human_duration(s.rpo_target_seconds), human_duration(s.rpo_seconds), human_duration(s.worst_rpo_seconds)]
            for s in scores]
    notes = [f"- **{s.name}** ({_status(s)}): backed by {', '.join(s.backed_by) or 'nothing'}"
             + (f". Why: {'; '.join(s.reasons)}." if s.reasons else ".") for s in scores]
    return [table(SCORE_HEADINGS, rows), *notes, ""]


def render_report(result: DrillResult) -> str:
    if result.refused is not None:
        return _render_refusal(result)
    verdict = "platform OPERATIONAL on the restored data" if result.operational else "platform NOT proven operational"
    lines = [f"# DR game-day — {verdict}; {result.summary}", "",
             f"Started {result.started_at:%Y-%m-%d %H:%M:%S} UTC on {result.host or 'this host'}, "
             f"{result.seconds:.1f} s in all."]
    if result.recovery_seconds is not None:
        met = "within" if result.recovery_seconds <= result.recovery_target_seconds else "OVER"
        lines.append(f"**Time to recovery: {human_duration(result.recovery_seconds)}** ({met} the operations runbook's "
                     f"{human_duration(result.recovery_target_seconds)} target).")
    if result.backup_id:
        lines.append(f"Backup set **{result.backup_id}**, taken {result.backup_taken_at:%Y-%m-%d %H:%M:%S}Z: "
                     f"**{human_duration(result.backup_age_seconds)} old at drill time** (the RPO achieved).")
    if result.cluster:
        lines.append(f"Clean cluster: {result.cluster_kind} `{result.cluster}`.")
    if result.error:
        lines += ["", f"**Error:** {result.error}"]
    lines += ["", "## RTO/RPO scorecard (the incident response playbook's table)"]
    if result.backup_markets:
        lines += ["Freshness at backup time is judged in market time:",
                  *[f"- {m.describe()}" for m in result.backup_markets], ""]
    lines += scorecard_markdown(result.scorecard)
    if result.physical is not None:
        p = result.physical
        head = (f"proven in {human_duration(p.recovery_seconds)}; {p.met} of {len(p.scorecard)} targets met"
                if p.proven else f"NOT proven: {p.detail}")
        lines += ["", f"## Physical path (pgBackRest, point-in-time) — {head}"]
        if p.point is not None:
            lines.append(f"Restored to the end of the archive at `{p.restored_at}`: last transaction replayed "
                         f"{p.point.last_replayed_at or '-'}, **{human_duration(p.point.rpo_seconds)} before the "
                         "path started** (the RPO achieved).")
        lines += ["", *scorecard_markdown(p.scorecard)]
    if result.issues:
        lines += ["## Issues found", *[f"- {i}" for i in result.issues], ""]
    if result.databases:
        lines += ["## Databases", table(
            ["database", "backup", "size", "pg_restore", "row counts", "integrity checks", "freshness at backup",
             "quality", "SELECT 1", "proven"],
            [[d.name + (f" (as {d.restored_as})" if d.restored_as != d.name else ""), d.backup_id,
              human_bytes(d.bytes), f"{d.pg_restore_seconds:.1f} s" if d.pg_restore_seconds else "-",
              ("match" if d.validation.passed else f"{len(d.validation.mismatches)} differ") if d.validation else "-",
              _checks(d), ", ".join(f"{f.key}: {f.severity}" for f in d.findings if "quality" not in f.reason) or "-",
              ", ".join(f"{q.key}: {q.status}" for q in d.quality) or "-",
              d.health.status if d.health else "-",
              "yes" if d.proven else f"NO ({d.stopped_at})"] for d in result.databases]),
                  *[f"- **{d.name}** not proven ({d.stopped_at}): {d.detail or 'no detail'}"
                    for d in result.databases if not d.proven],
                  *[f"- {f.key} at backup time ({f.severity}): {f.reason}" for d in result.databases
                    for f in d.findings if "quality" not in f.reason], ""]
    if result.redis:
        lines += ["## Redis (the memory/learning system)", table(
            ["instance", "backup", "saved", "keys in the backup", "keys loaded", "restored in", "proven"],
            [[r.name, r.backup_id or "-", f"{r.saved_at:%Y-%m-%d %H:%M}Z" if r.saved_at else "-",
              r.expected_keys if r.expected_keys is not None else "-",
              r.loaded_keys if r.loaded_keys is not None else "-",
              f"{r.seconds:.1f} s" if r.seconds else "-", "yes" if r.proven else f"NO: {r.detail}"]
             for r in result.redis])]
    if result.config_files:
        lines += ["## Configuration files", table(
            ["file", "restored", "against the backup's checksum", "the file on this host now"],
            [[f.path, human_bytes(f.bytes), f.status, f.against_original] for f in result.config_files])]
    if result.roles_created:
        lines += ["Roles created from the cluster backup: " + ", ".join(
            f"`{r.name}` ({r.attributes})" for r in result.roles_created), ""]
    if result.health:
        lines += ["## Health check (the operations runbook's script)", table(
            ["check", "status", "reading", "detail"],
            [[h.name, h.status, f"{h.value} {h.unit}" if h.value is not None else "-", h.detail or "-"]
             for h in result.health])]
    if result.trend:
        lines += ["## Trend across drills", table(
            ["drill", "backup", "backup age", "operational", "time to recovery", "targets met", "issues"],
            [[f"{r.started_at:%Y-%m-%d %H:%M}Z", r.backup_id or "-", human_duration(r.backup_age_seconds),
              "yes" if r.operational else "NO", human_duration(r.recovery_seconds),
              f"{r.met} of {len(r.scorecard)}", r.issues] for r in result.trend])]
    if result.swept or result.swept_databases:
        lines += ["## Left by earlier drills, removed",
                  *[f"- `{w.path}` ({human_bytes(w.bytes)}): {w.reason}" for w in result.swept],
                  *[f"- database `{name}` on the drill target" for name in result.swept_databases], ""]
    lines += ["## Teardown", "The clean cluster was torn down." if result.torn_down else
              "\n".join(f"- {k}" for k in result.kept) or "_nothing was provisioned_", ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _render_refusal(result: DrillResult) -> str:
    """A drill that never ran: who it yielded to and what to do, not a scorecard of components it never tried."""
    lines = [f"# DR game-day — {result.refused}", "",
             f"Started {result.started_at:%Y-%m-%d %H:%M:%S} UTC on {result.host or 'this host'}, "
             f"{result.seconds:.1f} s in all. Nothing was done: "
             "no cluster provisioned, no backup restored or held, nothing scored, nothing added to the trend.", ""]
    if result.error:
        lines += [f"**Refused:** {result.error}", ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _checks(d: DatabaseDrill) -> str:
    if d.validation is None or not d.validation.checks:
        return "-"
    failed = [c.name for c in d.validation.checks if c.status in ("failed", "could_not_run")]
    return f"{len(failed)} of {len(d.validation.checks)} failed" if failed else f"{len(d.validation.checks)} passed"


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(DrillParameters)
def dr_game_day_flow(params: DrillParameters) -> State:
    """Restore the newest backup set into a clean cluster, prove the platform works on it, score RTO/RPO."""
    run: RunbookRun[DrillResult] = RunbookRun(RUNBOOK, resource="platform")
    settings = run.settings
    result = DrillResult(started_at=run.started_at, keep_cluster=params.keep_cluster, host=settings.host_name)
    run.report(result, render=render_report, key="dr-game-day-report", description="DR game-day report")
    catalog: BackupCatalog | None = None
    attempted = False  # past the settings check: a drill, recorded in the trend

    def conclude() -> State:
        result.succeeded = result.operational and result.error is None and (
            result.physical is None or result.physical.proven)
        if result.refused is not None:  # no drill ran: no scorecard event, no record in the trend
            run.steps.event("dr-game-day.refused", refused=result.refused)
            return run.conclude(result, description="DR game-day report (refused: another drill is running)",
                                message=result.refused)
        run.steps.event("dr-game-day.scorecard", operational=result.operational, summary=result.summary,
                        met=result.met, scored=result.scored, backup_id=result.backup_id,
                        backup_age_seconds=result.backup_age_seconds, recovery_seconds=result.recovery_seconds,
                        backup_markets={m.market: m.when for m in result.backup_markets},
                        components=[{"name": s.name, "status": s.status, "rto_seconds": s.rto_seconds,
                                     "rpo_seconds": s.worst_rpo_seconds} for s in result.scorecard])
        if catalog is not None and attempted:
            _record(run, settings, catalog, result)
        return run.conclude(result, message=f"platform operational on restored data; {result.summary}"
                            if result.succeeded
                            else f"platform NOT proven operational: {result.error or '?'}; {result.summary}")

    def refuse(exc: LockBusy) -> State:
        """Another drill holds the lock: this one never ran, and says so (not a failed DR)."""
        result.refused = "refused: another drill is running" + (f" ({exc.holder})" if exc.holder else "")
        result.error = scrub(str(exc))
        result.next_steps.append("Wait for the running drill to finish and read its report; run this drill again "
                                 "only if it is still needed.")
        run.logger.warning("DR game-day %s", scrub(result.refused))
        return conclude()

    # Held from the first lock to the end of the physical path: the drill's cores on this host, and the drill of
    # this cluster on any host (the physical path restores too).
    with ExitStack() as drilling:
        try:
            with run.step("check settings"):
                check_drill_settings(settings)
                catalog = BackupCatalog(open_repository(settings.repository))
                catalog.repository.check_exists()
                target = settings.drill.target()
            # Two drills on one host would share its cores and skew each other's time to recovery; two on two hosts
            # would both restore and hold the same backups and both write the trend: one drill of a cluster at a
            # time, here (a file lock the kernel drops with the process) and on every host that shares the
            # repository (its lease, as a model rollback holds its model).
            try:
                drilling.enter_context(host_lock(run, directory=settings.state_dir.expanduser() / "locks",
                                                 name=RUNBOOK))
                drilling.enter_context(repository_lock(run, repository=catalog.repository,
                                                       key=f"{RUNBOOK}/{settings.cluster.name}"))
            except LockBusy as exc:
                return refuse(exc)
            attempted = True
            with run.step("sweep killed drills", destructive=True) as figures:
                result.swept = sweep_killed_drills(root=settings.drill_root)
                figures["removed"] = len(result.swept)
            with run.step("pick backup set") as figures:
                scan = catalog.scan(kind="database")
                backup_set = pick_backup_set(scan.manifests, scan.damaged, inventory=sorted(settings.databases),
                                             backup_id=params.backup_id)
                clusters = catalog.scan(kind="cluster", name=settings.cluster.name)
                cluster_issues = pick_cluster_backups(backup_set, clusters.manifests, clusters.damaged)
                result.backup_id, result.skipped_sets = backup_set.backup_id, backup_set.skipped
                result.backup_taken_at = backup_set.taken_at()
                result.backup_age_seconds = (run.started_at - result.backup_taken_at).total_seconds()
                result.backup_markets = _backup_markets(settings, backup_set, result.backup_taken_at)
                figures.update(backup_id=backup_set.backup_id, age_seconds=round(result.backup_age_seconds, 1))
            result.issues += [f"backup run {s}: not used" for s in backup_set.skipped]
            if settings.cluster.dsn is not None or settings.cluster.config_files or clusters.manifests:
                result.issues += cluster_issues
            if params.quality and any(t.quality for t in settings.freshness.tables):
                preload_gx()  # its import overlaps the restore
            with ExitStack() as held:
                if target is not None:  # a drill from another host on the same target server: refused before holding
                    try:
                        held.enter_context(resource_lock(run, server=target.conninfo(), key="runbooks-dr-game-day",
                                                         wait_seconds=0))
                    except LockBusy as exc:
                        attempted = False
                        return refuse(exc)
                until = datetime.now(UTC) + HOLD_FOR
                cluster_manifests = {m.backup_id: m for m in (backup_set.roles, backup_set.config) if m is not None}
                for manifest in [*backup_set.databases.values(), *cluster_manifests.values()]:
                    held.enter_context(catalog.holding(manifest, holder=run.flow_run_id or "local",
                                                       reason="DR game-day", until=until))
                redis_backups = pick_redis_backups(catalog, settings, backup_set.backup_id if params.backup_id !=
                                                   "latest" else None)
                for manifest in redis_backups.values():
                    held.enter_context(catalog.holding(manifest, holder=run.flow_run_id or "local",
                                                       reason="DR game-day", until=until))
                _drill(run, params, settings, catalog, backup_set, result, redis_backups)
        except RunbookError as exc:
            result.error = scrub(str(exc))
            run.logger.error("DR game-day failed: %s", result.error)
        except Exception as exc:  # still leave a report and a record behind
            result.error = scrub(f"{type(exc).__name__}: {exc}")
            run.logger.exception("DR game-day failed unexpectedly")
        if not result.operational and result.error is None:
            result.error = "; ".join(d.detail or "?" for d in result.databases if not d.proven) or \
                "the platform could not be proven operational (see the issues)"
        result.scorecard = result.scorecard or [  # the error is said once, above the scorecard, not in every row
            score_component(c, {}, started_at=run.started_at, backup_interval=component_interval(settings, c),
                            unproven="not restored: the drill stopped (see the error)")
            for c in drill_components(settings)]
        if params.physical and attempted:
            result.physical = _physical_path(run, settings)
            if not result.physical.proven:
                result.issues.append(f"physical path not proven: {result.physical.detail}")
    return conclude()


def _backup_markets(settings: Settings, backup_set: BackupSet, taken_at: datetime) -> list[BackupMarket]:
    """Where the set's snapshot fell in each market its monitored tables follow (every configured market when no
    table follows one): the scorecard says whether the backup holds a session's data or the data as of a close."""
    followed = {t.market for t in settings.freshness.tables if t.market and t.database in backup_set.databases}
    calendars = settings.calendars()
    shown = [c for name, c in calendars.items() if name in followed] or list(calendars.values())
    return [backup_market(c, taken_at) for c in shown]


def _physical_path(run: RunbookRun[DrillResult], settings: Settings) -> PhysicalDrill:
    """pgBackRest's newest backup and archived WAL into a new cluster (the PITR runbook's tasks), each inventory
    database in it proven (tables read, integrity checks), scored from this path's own start: the RPO is what a
    disaster at that moment would have lost (the last archived transaction's age)."""
    pitr = settings.pitr
    paths = pitr_paths(settings)
    physical = PhysicalDrill()
    started = datetime.now(UTC)
    proofs: dict[str, Proof] = {}
    restored: RestoredCluster | None = None
    try:
        source = protected_cluster(settings)
        if not paths.config.is_file():
            raise ConfigurationError(f"pgBackRest is not set up on this host ({paths.config} is missing).",
                                     hint="run 'runbooks run pitr-setup' and 'pitr-backup' first.")
        with run.step("physical: restore and replay", destructive=True) as figures:
            workdir = WorkDirs(paths.restores, traversable=True).create("pitr-restore", flow_run_id=run.flow_run_id)
            restored = restore_into_new_cluster(pitr=pitr, paths=paths, workdir=workdir,
                                                source_data=pitr.data_directory, target=None)
            start_restored(pitr=pitr, cluster=restored, source=source, target=None, timeout=pitr.restore_timeout)
            physical.point = read_recovery_point(cluster=restored, source=source, target=None, started_at=started)
            physical.restored_at = f"127.0.0.1:{restored.port}"
            figures.update(rpo_seconds=physical.point.rpo_seconds)
        with run.step("physical: prove") as figures:
            present = restored_databases(restored, source)
            problems: list[str] = []
            for name, database in settings.databases.items():
                dbname = str(database.conninfo().get("dbname") or name)
                if dbname not in present:
                    continue
                tables = list_restored_tables(cluster=restored, source=source, dbname=dbname)
                checks = check_restored_database(cluster=restored, source=source, dbname=dbname,
                                                 checks=database.checks)
                physical.databases[name], physical.checks[name] = tables, checks
                bad = [c.name for c in checks if c.status in ("failed", "could_not_run")]
                problems += [f"{name}: integrity check {c!r} failed" for c in bad]
                proofs[f"database {name}"] = Proof(
                    item=f"database {name}", ok=not bad, tables=tables, taken_at=physical.point.last_replayed_at,
                    validated_after_seconds=(datetime.now(UTC) - started).total_seconds(), detail="; ".join(bad))
            if not physical.databases:
                problems.append("no inventory database is in the protected cluster")
            figures.update(databases=len(physical.databases), problems=len(problems))
        physical.proven = not problems
        physical.detail = "; ".join(problems) or None
        if physical.proven:
            physical.recovery_seconds = (datetime.now(UTC) - started).total_seconds()
    except (RunbookError, psycopg.Error, OSError) as exc:  # a connection dropped mid-query: the report still stands
        physical.detail = failure_line(exc, where="the physical path")
        run.logger.error("Physical path failed: %s", physical.detail)
    finally:
        if restored is not None:
            with run.step("physical: tear down") as figures:
                stopped = stop_restored(pitr, restored)
                if stopped:
                    shutil.rmtree(restored.root, ignore_errors=True)
                figures.update(stopped=stopped)
    physical.scorecard = [score_component(
        c, proofs, started_at=started, backup_interval=pitr.archive_timeout,
        unproven="not in the physical backup (pgBackRest holds the protected cluster's databases only)"
        if physical.proven or proofs else f"not restored: {physical.detail}") for c in settings.drill.components]
    return physical


def _elapsed(run: RunbookRun[DrillResult]) -> float:
    """Seconds from the drill's start to the end of the step that just finished (its timeline entry)."""
    last = run.steps.timeline[-1]
    return (last.started_at - run.started_at).total_seconds() + last.seconds


def _drill(run: RunbookRun[DrillResult], params: DrillParameters, settings: Settings, catalog: BackupCatalog,
           backup_set: BackupSet, result: DrillResult, redis_backups: dict[str, BackupManifest]) -> None:
    """Provision, restore, prove, score; the cluster is torn down whatever happened (unless kept)."""
    workdirs = drill_workdirs(settings.drill_root)
    workdir = workdirs.create(RUNBOOK, flow_run_id=run.flow_run_id)
    cluster: CleanCluster | None = None
    records: RestoreRecords | None = None
    try:
        with run.step("provision clean cluster", destructive=True) as figures:
            target = settings.drill.target()
            if target is None:
                cluster = provision_throwaway_cluster(workdir=workdir)
                records = RestoreRecords(LocalRepository(workdir / "records"), cluster.server)
            else:
                cluster = check_target_server(target=target, inventory=settings.databases)
                records = RestoreRecords(catalog.repository, f"drill-{cluster.server}")
                result.swept_databases = drop_drill_databases(cluster=cluster, records=records)
                refuse_non_empty_target(cluster=cluster)
            result.cluster, result.cluster_kind = cluster.describe(), cluster.kind
            result.issues += cluster.notes
            figures["kind"] = cluster.kind
        proofs: dict[str, Proof] = {}
        no_owner = _restore_cluster_objects(run, settings, catalog, backup_set, cluster, workdir, result, proofs)
        for name, manifest in backup_set.databases.items():
            drill = DatabaseDrill(
                name=name, restored_as=str(settings.databases[name].conninfo().get("dbname") or name),
                backup_id=manifest.backup_id, taken_at=backup_set.taken_at(name), bytes=manifest.bytes)
            result.databases.append(drill)
            # One dump on local disk at a time. (Fetching the next one beside initdb or the previous pg_restore
            # was measured slower on 2 cores: docs/benchmarks.md, issue 9.)
            _restore_and_prove(run, params, settings, catalog, manifest, cluster, records, workdir, drill,
                               no_owner=no_owner)
            proofs[f"database {name}"] = Proof(
                item=f"database {name}", ok=drill.proven, taken_at=drill.taken_at, detail=drill.detail or "",
                validated_after_seconds=_elapsed(run) if drill.proven else None,
                tables=sorted(drill.validation.row_counts) if drill.validation else [])
            if not drill.proven:
                result.issues.append(f"database {name}: {drill.stopped_at} failed: {drill.detail or 'not proven'}")
        for name, manifest in redis_backups.items():
            proofs[f"redis {name}"] = _restore_redis(run, settings, catalog, name, manifest, workdir, result)
        for name in sorted(set(settings.redis) - set(redis_backups)):
            result.redis.append(RedisDrill(name=name, proven=False, detail="no verified backup"))
            proofs[f"redis {name}"] = Proof(item=f"redis {name}", ok=False, detail="no verified backup of it")
        with run.step("health check") as figures:
            api = check_api_health(name="trading API of the restored platform", api=settings.drill.trading_api,
                                   baseline=settings.health)
            result.health = [*[d.health for d in result.databases if d.health], api,
                             *check_host_health(baseline=settings.health)]
            figures["worst"] = max((h.status for h in result.health), key=["not_configured", "ok", "warn", "alert",
                                                                           "failed"].index, default="ok")
        if api.status == "failed":
            result.issues.append(f"the restored platform's API is not healthy: {api.detail}")
        for h in result.health:
            if h.status in ("warn", "alert") and not h.name.startswith("database "):
                result.issues.append(f"health {h.name}: {h.status} ({h.value} {h.unit})")
        config_ok = proofs.get("configuration files", Proof(item="", ok=True)).ok
        result.operational = (bool(result.databases) and all(d.proven for d in result.databases) and config_ok
                              and api.status != "failed")
        if result.operational:
            result.recovery_seconds = _elapsed(run)
        with run.step("score") as figures:
            result.scorecard = [score_component(c, proofs, started_at=run.started_at,
                                                backup_interval=component_interval(settings, c))
                                for c in drill_components(settings)]
            figures.update(met=result.met, components=len(result.scorecard))
        result.issues += [f"{s.name}: not covered by any backup" for s in result.scorecard
                          if s.status == "not_covered"]
    finally:
        _tear_down(run, params, workdirs, workdir, cluster, records, result)


class RedisDrill(BaseModel):
    """One Redis instance restored into a redis-server of the drill's own, and what it proved."""

    name: str
    backup_id: str | None = None
    saved_at: datetime | None = None
    expected_keys: int | None = None
    loaded_keys: int | None = None
    seconds: float = 0.0
    proven: bool = False
    detail: str = ""


def drill_components(settings: Settings) -> list[DrillComponent]:
    """Seed 002's components, each with the Redis instances whose ``[redis] component`` names it."""
    components = []
    for c in settings.drill.components:
        named = sorted({*c.redis, *(n for n, r in settings.redis.items() if r.component == c.name)})
        components.append(c.model_copy(update={"redis": named}))
    return components


def component_interval(settings: Settings, component: DrillComponent) -> timedelta:
    """How often what backs the component is backed up: the nightly set's interval, or, for a component backed by
    Redis alone, its instances' (the 15-minute schedule)."""
    if component.redis and not (component.databases or component.tables or component.config_files):
        return max(settings.redis[n].backup_interval for n in component.redis if n in settings.redis)
    return settings.drill.backup_interval


def pick_redis_backups(catalog: BackupCatalog, settings: Settings, upto: str | None) -> dict[str, BackupManifest]:
    """Each configured instance's newest verified backup (at or before the drilled backup run, when one is named)."""
    picked = {}
    for name in settings.redis:
        verified = [m for m in catalog.list_backups(kind="redis", name=name)
                    if m.verified and (upto is None or m.backup_id <= upto)]
        if verified:
            picked[name] = verified[-1]
    return picked


def _restore_redis(run: RunbookRun[DrillResult], settings: Settings, catalog: BackupCatalog, name: str,
                   manifest: BackupManifest, workdir: Path, result: DrillResult) -> Proof:
    """Restore the instance into a redis-server of the drill's own (a free loopback port, its own password), check
    every key against the manifest, stop it."""
    assert manifest.redis is not None
    drill = RedisDrill(name=name, backup_id=manifest.backup_id, saved_at=manifest.redis.saved_at,
                       expected_keys=manifest.redis.key_count)
    result.redis.append(drill)
    where = workdir / f"redis-{name}"
    where.mkdir(mode=0o700)
    started = datetime.now(UTC)
    try:
        with run.step(f"restore redis {name}") as figures:
            instance, check = restore_redis_instance(catalog=catalog, manifest=manifest, workdir=where,
                                                     settings=settings.redis[name])
            instance.stop()
            drill.loaded_keys, drill.proven, drill.detail = check.loaded_keys, check.passed, check.detail
            figures.update(keys=check.loaded_keys, proven=check.passed)
    except RunbookError as exc:
        drill.detail = scrub(str(exc))
    finally:
        drill.seconds = (datetime.now(UTC) - started).total_seconds()
        shutil.rmtree(where, ignore_errors=True)
    if not drill.proven:
        result.issues.append(f"redis {name}: not proven: {drill.detail}")
    return Proof(item=f"redis {name}", ok=drill.proven, taken_at=manifest.redis.saved_at, detail=drill.detail,
                 validated_after_seconds=_elapsed(run) if drill.proven else None)


def _restore_cluster_objects(run: RunbookRun[DrillResult], settings: Settings, catalog: BackupCatalog,
                             backup_set: BackupSet, cluster: CleanCluster, workdir: Path, result: DrillResult,
                             proofs: dict[str, Proof]) -> bool:
    """Roles before any database, then the configuration files into the work directory. Returns whether the
    databases must be restored without owners (no roles to own them)."""
    roles = backup_set.roles
    if roles is not None:
        with run.step("restore roles", destructive=True) as figures:
            globals_sql = fetch_backup(catalog=catalog, manifest=roles, role="globals", dest=workdir / "globals.sql")
            result.roles_created = restore_roles(database=cluster.admin, globals_sql=globals_sql, mode="auto")
            globals_sql.unlink()
            figures["roles_created"] = len(result.roles_created)
    else:
        result.issues.append("databases restored without owners and privileges (no roles in the backup set)")
    config = backup_set.config
    if config is None:
        return roles is None
    problem = ""
    try:
        with run.step("restore configuration files") as figures:
            result.config_files = restore_config_files(catalog=catalog, manifest=config, dest=workdir / "config",
                                                       originals=settings.cluster.config_files)
            figures.update(files=len(result.config_files),
                           not_intact=sum(f.status in ("differs", "missing") for f in result.config_files))
    except Exception as exc:  # noqa: BLE001 - the configuration is one component; the databases still get drilled
        problem = scrub(str(exc) if isinstance(exc, RunbookError) else f"{type(exc).__name__}: {exc}")
    bad = [f.path for f in result.config_files if f.status in ("differs", "missing")]
    if bad:
        problem = f"not restored intact: {', '.join(bad)}"
    proofs["configuration files"] = Proof(item="configuration files", ok=not problem, taken_at=config.started_at,
                                          validated_after_seconds=None if problem else _elapsed(run), detail=problem)
    if problem:
        result.issues.append(f"configuration files {problem}")
    if drift := [f.path for f in result.config_files if f.status == "intact" and f.against_original == "changed"]:
        result.issues.append(f"configuration changed on this host since the backup: {', '.join(drift)}")
    if unchecked := [f.path for f in result.config_files if f.status == "unchecked"]:
        changed = [f.path for f in result.config_files
                   if f.status == "unchecked" and f.against_original in ("changed", "absent")]
        result.issues.append(f"the cluster backup {config.backup_id} predates per-file checksums: "
                             f"{len(unchecked)} files restored unchecked"
                             + (f"; differ from this host's (a change or damage, cannot tell): {', '.join(changed)}"
                                if changed else ", all equal to this host's"))
    return roles is None


def _restore_and_prove(run: RunbookRun[DrillResult], params: DrillParameters, settings: Settings,
                       catalog: BackupCatalog, manifest: BackupManifest, cluster: CleanCluster,
                       records: RestoreRecords | None, workdir: Path, drill: DatabaseDrill, *, no_owner: bool) -> None:
    """One database: the restore runbook's sequence (fetch and verify, scratch copy, pg_restore) on the clean
    cluster, published under the drill's name, then proven. A failure is this database's, recorded in ``drill``;
    the drill goes on with the next."""
    assert records is not None
    name, live = drill.name, drill.restored_as
    step = "fetch and verify"
    try:
        scratch = fit_name(live, f"_restore_{datetime.now(UTC):%Y%m%d%H%M%S}")
        drill.pg_restore_seconds = restore_to_scratch(
            run, catalog=catalog, manifest=manifest, database=cluster.admin, records=records, protected=set(),
            source=name, scratch=scratch, dump=workdir / f"{name}.pgc", jobs=params.jobs, no_owner=no_owner,
            label=name, settle=False)
        step = "restore"
        with run.step(f"publish {name}", destructive=True) as figures:
            publish_recovery_database(database=cluster.admin, records=records, scratch=scratch, target=live,
                                      overwrite=False, protected=set())
            figures["analyze_seconds"] = round(analyze_database(database=cluster.admin, target=live), 2)
        step = "prove"
        with run.step(f"prove {name}") as figures:
            _prove(params, settings, cluster, drill, expected=manifest.row_counts)
            figures.update(proven=drill.proven, findings=len([f for f in drill.findings if f.severity != "ok"]))
    except Exception as exc:  # noqa: BLE001 - this database's failure (a full disk too); the drill goes on
        last = run.steps.timeline[-1].step if run.steps.timeline else ""
        if step == "fetch and verify" and not last.startswith("fetch and verify"):
            step = "restore"  # the sequence got past the fetch: its scratch copy or pg_restore failed
        drill.stopped_at = step
        drill.detail = scrub(str(exc) if isinstance(exc, RunbookError) else f"{type(exc).__name__}: {exc}")
        run.logger.error("Database %r: %s failed: %s", name, step, drill.detail)
    if not drill.proven:
        drill.stopped_at = drill.stopped_at or step


def _prove(params: DrillParameters, settings: Settings, cluster: CleanCluster, drill: DatabaseDrill, *,
           expected: dict[str, int]) -> None:
    """Row counts against the manifest, the integrity checks, freshness as of the backup (in market time for a
    table that follows a market: open-market time from its newest row to the snapshot), quality, SELECT 1."""
    inventory = settings.databases[drill.name]
    restored = cluster.database(drill.restored_as, inventory.checks)
    cfg = settings.freshness
    problems: list[str] = []
    drill.validation = validate_database(database=restored, target=drill.restored_as, expected=expected,
                                         checks=inventory.checks, compare_live=None)
    tables = [t for t in cfg.tables if t.database == drill.name]
    if tables:
        fresh, _volumes = measure_freshness(database_name=drill.name, database=restored, tables=quote(tables),
                                            settings=quote(cfg), as_of=drill.taken_at,
                                            calendars=quote(settings.calendars()))  # type: ignore[call-overload]
        drill.freshness = fresh
        by_key = {m.key: m for m in fresh}
        drill.findings = [judge_at_backup(t, by_key[t.key]) for t in tables if t.key in by_key]
        if params.quality:
            for t in tables:
                if t.quality is None or by_key.get(t.key) is None or by_key[t.key].outcome != "measured":
                    continue
                calendar = settings.calendars().get(t.market) if t.market else None  # after the close: its session
                quality = validate_recent_window(
                    table=t, database=restored, lookback=cfg.lookback, timeout_seconds=cfg.statement_timeout_seconds,
                    as_of=calendar.last_trading_instant(drill.taken_at) if calendar else drill.taken_at)
                drill.quality.append(quality)
                if (finding := judge_quality(t, quality)) is not None:
                    drill.findings.append(finding)
    drill.health = check_database_health(name=drill.restored_as, database=restored, baseline=settings.health)
    if drill.validation.mismatches:
        problems.append(f"row counts differ from the manifest in {len(drill.validation.mismatches)} tables")
    problems += [f"integrity check {c.name!r} {c.status}" for c in drill.validation.checks
                 if c.status in ("failed", "could_not_run")]
    problems += [f"{f.key} at backup time: {f.reason}" for f in drill.findings
                 if f.severity in ("error", "kill", "unknown")]
    if drill.health.status == "failed":
        problems.append(f"SELECT 1 failed: {drill.health.detail}")
    drill.proven = not problems
    drill.detail = "; ".join(problems) or None
    if problems:
        drill.stopped_at = "prove"


def _tear_down(run: RunbookRun[DrillResult], params: DrillParameters, workdirs: WorkDirs, workdir: Path,
               cluster: CleanCluster | None, records: RestoreRecords | None, result: DrillResult) -> None:
    """Remove the clean cluster (or the drill's databases and roles on an existing server), unless kept."""
    if params.keep_cluster and cluster is not None:
        workdirs.release(workdir)
        if cluster.kind == "throwaway":
            result.kept = [f"throwaway cluster `{cluster.describe()}`, data in `{cluster.root}`; the superuser DSN "
                           f"is in `{workdir / 'connection.dsn'}` (0600)",
                           f"the next drill stops and removes it; now by hand: `pg_ctl -D {cluster.root}/data stop` "
                           f"then `rm -rf {workdir}`"]
        else:
            result.kept = [f"the restored databases on `{cluster.describe()}`: "
                           + ", ".join(d.restored_as for d in result.databases),
                           "the next drill drops them (as its records say), and this drill's roles stay: "
                           + (", ".join(r.name for r in result.roles_created) or "none")]
        return
    try:
        with run.step("tear down") as figures:  # not gated on a lock: a drill that lost it still cleans up
            if cluster is not None and cluster.kind == "server" and records is not None:
                figures["databases"] = len(drop_drill_databases(cluster=cluster, records=records))
                figures["roles"] = len(drop_drill_roles(cluster=cluster, roles=result.roles_created))
                workdirs.remove(workdir)
            else:
                tear_down_throwaway_cluster(workdirs=workdirs, workdir=workdir)
        result.torn_down = True
    except Exception as exc:  # noqa: BLE001 - the next drill sweeps it; the report says so
        result.issues.append(f"teardown failed (the next drill removes what is left): {scrub(str(exc))}")
        run.logger.error("Teardown failed: %s", scrub(str(exc)))


def _record(run: RunbookRun[DrillResult], settings: Settings, catalog: BackupCatalog, result: DrillResult) -> None:
    """The game-day record in the backup repository, and the trend read from the earlier ones."""
    records = DrillRecords(catalog.repository, settings.cluster.name)
    record = DrillRecord(
        drill_id=f"{backup_id_for(run.started_at)}-{(run.flow_run_id or 'local')[:8]}", started_at=run.started_at,
        flow_run_id=run.flow_run_id, host=settings.host_name, backup_id=result.backup_id,
        backup_age_seconds=result.backup_age_seconds, operational=result.operational,
        recovery_seconds=result.recovery_seconds, seconds=(datetime.now(UTC) - run.started_at).total_seconds(),
        met=result.met, scored=result.scored, not_covered=len(result.scorecard) - result.scored,
        issues=len(result.issues), scorecard=result.scorecard)
    try:
        result.trend = [*records.recent(settings.drill.history - 1), record]
        records.put(record)
    except RunbookError as exc:
        result.issues.append(f"the drill record could not be written to the repository: {scrub(str(exc))}")
        result.trend = [record]
