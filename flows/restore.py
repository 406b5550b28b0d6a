"""On-demand restore of one PostgreSQL database from the backup repository (seeds 001-003).

Trigger: on demand — the ``restore-on-demand`` deployment, ``runbooks run restore``; unattended with ``confirm`` =
the plan hash its dry run printed. (The DR game-day restores with the same sequence, ``restore_sequence.py``, into
its own clean cluster.) Blast radius: ``verify`` touches no database; ``new`` creates one database
(default ``<database>_recovery``) and never touches the source; ``replace`` restores into a scratch database,
validates it, and only after approval halts trading and swaps names — the live database is kept as
``<database>_pre_restore_<backup id>`` (``_2``, ``_3``… when that name is taken), the name the plan shows and its
hash covers. A restore drops only databases its own record (in the repository) says it made, never one of the
inventory, never one with other sessions.
Rollback of a replace (names quoted: the backup id has capitals): ``ALTER DATABASE "<database>" RENAME TO
"<database>_rejected"; ALTER DATABASE "<database>_pre_restore_<backup id>" RENAME TO "<database>";`` then resume
trading (CONFIRM_RESUME). The report of the run prints these statements with the real names.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field, model_validator

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.postgres import fit_name
from runbooks.adapters.records import RestoreRecords
from runbooks.adapters.repository import open_repository
from runbooks.adapters.roles import RoleCreated
from runbooks.adapters.workdirs import WorkDirs
from runbooks.core.errors import Refused, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.incidents import Notice, PostIncident
from runbooks.decisions.manifest import BackupManifest, Verification
from runbooks.decisions.report import human_bytes, inline, report_tail, started, table
from runbooks.flows.restore_sequence import restore_to_scratch
from runbooks.frame import (
    Approval,
    RunbookResult,
    RunbookRun,
    TradingGuard,
    notify,
    request_approval,
    resource_lock,
)
from runbooks.frame.approval import POLL_HELP, TIMEOUT_HELP
from runbooks.frame.names import instant, run_name, run_parameters
from runbooks.frame.parameters import InventoryChoices, takes
from runbooks.frame.window import ChangeWindow, change_window, require_change_window
from runbooks.settings import BackupSelector, DatabaseSettings, InventoryName, Settings
from runbooks.tasks.postgres import (
    Prerequisites,
    ValidationReport,
    check_restore_prerequisites,
    drop_restore_database,
    identify_server,
    inspect_target,
    locate_databases,
    publish_recovery_database,
    rehearse_swap,
    restore_roles,
    swap_databases,
    sweep_restore_databases,
    validate_database,
)
from runbooks.tasks.reports import publish_report
from runbooks.tasks.storage import fetch_backup, find_cluster_backup, resolve_backup_or_raise, verify_backup
from runbooks.tasks.workspace import WorkDirReport, sweep_work_directories

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$"
HOLD_MARGIN = timedelta(hours=24)  # a killed run's hold on its backup lapses this long after its approval deadline


class RestoreParameters(BaseModel):
    """Which backup to restore, where, and how carefully."""

    model_config = ConfigDict(extra="forbid")

    database: Annotated[InventoryName, InventoryChoices("databases")] = Field(
        description="Database from the inventory whose backup is restored.")
    backup_id: BackupSelector = Field(default="latest", description="'latest' or a backup id such as 20261121T020000Z.")
    before: datetime | None = Field(default=None, description="With 'latest': the latest backup before this time.")
    mode: Literal["verify", "new", "replace"] = Field(
        default="new", description="verify: check only; new: restore into target_database; replace: swap in.")
    target_database: str | None = Field(default=None, pattern=IDENTIFIER,
                                        description="For mode=new; default: the database's name followed by _recovery.")
    overwrite_target: bool = Field(default=False,
                                   description="Replace target_database if it is a previous recovery database.")
    jobs: int = Field(default=2, ge=1, le=32, description="Parallel pg_restore jobs.")
    halt_trading: bool | None = Field(default=None, description="Kill switch before the swap; default: replace only.")
    compare_live: bool = Field(default=False, description="Also compare row counts with the live database.")
    restore_globals: Literal["auto", "always", "never"] = Field(
        default="auto", description="Create the roles the cluster lacks from the cluster backup first. auto: as "
        "NOLOGIN roles without password (as in the backup on a clean cluster); always: as in the backup, LOGIN and "
        "password included, and fail if there is no cluster backup; never: skip.")
    no_owner: bool = Field(default=False,
                           description="pg_restore --no-owner --no-acl (the operations runbook's variant).")
    confirm: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$",
                                description="The plan hash a dry run printed: approves a replace without pausing.")
    approval_timeout_seconds: int = Field(default=1800, ge=1, le=86400,
                                          description=TIMEOUT_HELP)
    approval_poll_seconds: int = Field(default=10, ge=1, le=300, description=POLL_HELP)
    lock_wait_seconds: int = Field(default=0, ge=0, le=86400,
                                   description="Wait this long for another restore of the database to finish.")
    dry_run: bool = Field(default=False, description="Resolve and check everything, print the plan, change nothing.")
    in_session_reason: str | None = Field(default=None, max_length=500, description="mode=replace while a gating "
                                          "market is in session: why it cannot wait for the close (an incident); "
                                          "without it the replace is refused until the close.")

    def check_against(self, settings: Settings) -> None:
        """Refuse (ConfigurationError) a database the inventory lacks, and (OutsideChangeWindow) a replace while a
        gating market is in session without a reason; the CLI calls it before any run."""
        settings.database_or_raise(self.database)
        self.change_window(settings)

    def change_window(self, settings: Settings) -> ChangeWindow | None:
        """A replace swaps the live database and halts trading: the market calendar's say on it. A dry run only
        reports what the window would say."""
        if self.mode != "replace":
            return None
        check = change_window if self.dry_run else require_change_window
        return check(settings.calendars(gating_only=True), work=f"restore replace of {self.database}",
                     in_session_reason=self.in_session_reason)

    @model_validator(mode="after")
    def _consistent(self) -> RestoreParameters:
        if self.before is not None and self.backup_id != "latest":
            raise ValueError("'before' only combines with backup_id='latest'")
        if self.mode == "replace" and self.target_database not in (None, self.database):
            raise ValueError("mode=replace restores over 'database' itself; do not set target_database")
        if self.mode == "new" and self.target_database == self.database:
            raise ValueError(f"target_database equals the source {self.database!r}; use mode=replace to swap it")
        return self


class RestorePlan(BaseModel):
    database: str
    mode: str
    backup_id: str
    backup_taken_at: datetime
    backup_age_hours: float
    bytes: int
    stored_bytes: int
    wal_lsn: str | None
    target: str
    keep_live_as: str | None = Field(description="where the live database is kept: named for the backup, free on "
                                     "the server when planned, under the plan hash")
    halt_trading: bool
    plan_hash: str = Field(description="pass as 'confirm' to approve this plan unattended")


class RestoreResult(RunbookResult):
    database: str
    mode: str
    dry_run: bool
    status: Literal["succeeded", "failed", "rejected", "timed_out", "dry_run"] = "failed"
    backup_id: str | None = None
    target: str | None = None
    plan: RestorePlan | None = None
    prerequisites: Prerequisites | None = None
    change_window: ChangeWindow | None = Field(default=None, description="the market calendar when the replace "
                                               "was asked for")
    approval: Approval | None = None
    verification: Verification | None = None
    validation: ValidationReport | None = None
    roles_created: list[RoleCreated] = Field(default_factory=list)
    scratch_swept: list[str] = Field(default_factory=list)
    scratch_left: list[str] = Field(default_factory=list, description="recorded scratch databases not dropped")
    work_dirs_swept: list[WorkDirReport] = Field(default_factory=list,
                                                 description="work directories of killed restores removed")
    trading: list[str] = Field(default_factory=list, description="trading actions taken, in order")
    kept_live_as: str | None = None
    notification: str | None = None
    time_to_restore_seconds: float | None = Field(default=None, description="fetch + restore + validate")


def plan_hash(manifest: BackupManifest, *, mode: str, target: str, halt: bool, keep_as: str | None) -> str:
    """Stable over what the plan will do, so a dry run can print it and an unattended run can confirm it. The
    kept name is in it: the rollback instructions an operator approved name that database."""
    dump = next(o for o in manifest.objects if o.role == "dump")
    payload = json.dumps([manifest.name, manifest.backup_id, dump.sha256, mode, target, halt, keep_as])
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def keep_names(live: str, backup_id: str) -> Iterator[str]:
    """Where a replace may keep the live database, in order: ``<live>_pre_restore_<backup id>``, then ``_2``,
    ``_3``… (the same backup swapped in again while an earlier kept copy still exists). Derived from the plan's
    inputs, never from the clock, so a dry run and a later confirmed run name the same database; always within
    63 bytes, the backup id and the number never cut off."""
    yield fit_name(live, f"_pre_restore_{backup_id}")
    for n in itertools.count(2):
        yield fit_name(live, f"_pre_restore_{backup_id}_{n}")


def free_keep_name(database: DatabaseSettings, *, live: str, backup_id: str) -> str:
    """The first of ``keep_names`` no database on the server has now."""
    candidates = keep_names(live, backup_id)
    while True:
        batch = list(itertools.islice(candidates, 16))
        found = locate_databases(database=database, names=batch)
        for name in batch:
            if found[name] is None:
                return name


def quoted(name: str) -> str:
    """A PostgreSQL identifier as an operator must type it (the kept name has capitals)."""
    return '"' + name.replace('"', '""') + '"'


def _run_name() -> str:
    p = run_parameters()
    before = instant(p.get("before"))
    return run_name("restore", p.get("database"), p.get("mode") or "new", "from", p.get("backup_id") or "latest",
                    "before" if before else None, before, dry_run=bool(p.get("dry_run")))


def render_report(result: RestoreResult) -> str:
    title = {"succeeded": "succeeded", "dry_run": "dry run", "rejected": "REJECTED — nothing changed",
             "timed_out": "approval TIMED OUT — nothing changed", "failed": "FAILED"}[result.status]
    lines = [f"# Restore of `{result.database}` ({result.mode}) — {title}", "",
             f"{started(result)} in all."]
    if result.time_to_restore_seconds is not None:
        lines.append(f"**Time to a validated database: {result.time_to_restore_seconds:.1f} s** "
                     "(fetch + verify + pg_restore + validation).")
    if result.error:
        lines += ["", f"**Error:** {result.error}"]
    if result.change_window is not None:
        window = result.change_window
        lines += ["", f"Change window: {inline(window.summary())}"
                  + ("; a real replace would be refused without in_session_reason." if result.dry_run and
                     window.in_session and not window.in_session_reason else ".")]
    if result.plan:
        p = result.plan
        lines += ["", "## Plan", table(["", ""], [
            ["backup", f"{p.backup_id} (taken {p.backup_taken_at:%Y-%m-%d %H:%M}Z, {p.backup_age_hours:.1f} h ago)"],
            ["size", f"{human_bytes(p.bytes)} ({human_bytes(p.stored_bytes)} stored)"],
            ["WAL at snapshot", p.wal_lsn or "-"], ["target", p.target],
            ["live database kept as", p.keep_live_as or "-"], ["halt trading", str(p.halt_trading)],
            ["plan hash (confirm)", f"`{p.plan_hash}`"]])]
    if result.prerequisites:
        pre = result.prerequisites
        free = human_bytes(pre.server_free_bytes) if pre.server_free_bytes is not None else "not checked"
        lines += ["## Prerequisites", f"Role `{pre.role}`{' (superuser)' if pre.superuser else ''}; server disk "
                  f"free {free}, a copy needs about {human_bytes(pre.needed_bytes)}.",
                  *[f"- {n}" for n in pre.notes], ""]
    if result.approval:
        a = result.approval
        if a.via == "timeout":
            lines += ["## Approval", f"Not approved: {a.reason} (timed out at {a.decided_at:%H:%M:%S}Z).", ""]
        else:
            lines += ["## Approval", f"{'Approved' if a.approved else 'Rejected'} by **{inline(a.approver)}** "
                      f"({a.via}, {a.decided_at:%H:%M:%S}Z): {inline(a.reason)}", ""]
    if result.verification:
        v = result.verification
        lines += ["## Verification", f"{v.status}: {v.detail} ({v.seconds:.1f} s)", ""]
    if result.validation:
        val = result.validation
        lines += ["## Validation",
                  f"Row counts of {len(val.row_counts)} tables "
                  f"{'match the manifest' if val.passed else 'DIFFER from the manifest'}.", ""]
        if val.mismatches:
            lines.append(table(["table", "manifest", "restored"], [[t, m[0], m[1]] for t, m in val.mismatches.items()]))
        if val.checks:
            lines.append(table(["integrity check", "status", "found", "healthy", "detail"], [
                [c.name, c.status, c.value or "-", c.expect or "-",
                 c.error or "; ".join(", ".join(r) for r in c.rows[:5]) or "-"] for c in val.checks]))
        if val.live_deltas is not None:
            changed = {t: d for t, d in val.live_deltas.items() if d}
            lines.append(table(["table", "restored minus live rows"], [[t, d] for t, d in changed.items()])
                         if changed else "Row counts equal the live database's.\n")
    if result.roles_created:
        lines += ["Roles created from the cluster backup: " + ", ".join(
            f"`{r.name}` ({r.attributes})" for r in result.roles_created), ""]
    if result.scratch_swept:
        verb = "to drop (dry run)" if result.dry_run else "dropped"
        lines += [f"Scratch databases of interrupted restores {verb}: {', '.join(result.scratch_swept)}", ""]
    if result.scratch_left:
        lines += ["Scratch databases left in place:", *[f"- {s}" for s in result.scratch_left], ""]
    if result.work_dirs_swept:
        verb = "to remove (dry run)" if result.dry_run else "removed"
        lines += [f"Work directories of killed runs {verb}:",
                  *[f"- `{w.path}` ({human_bytes(w.bytes)}): {w.reason}" for w in result.work_dirs_swept], ""]
    lines += ["## Trading", "\n".join(f"- {t}" for t in result.trading) or "_untouched_", ""]
    if result.notification:
        lines += [f"**Notification**: {result.notification}", ""]
    if result.kept_live_as:
        lines += [f"The previous live database is kept as `{result.kept_live_as}`.", ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _notice(result: RestoreResult) -> Notice:
    """Resolved when the restored copy is live; otherwise an update: the incident that called for it goes on."""
    trading = "; ".join(result.trading) or "trading not touched"
    if result.succeeded:
        return Notice(kind="resolved", severity="P1", title=f"restore: {result.database} replaced from "
                      f"{result.backup_id}", impact=trading, root_cause=None,
                      resolution=f"{result.database} restored from {result.backup_id}, validated and swapped in; "
                      f"the previous one is kept as {result.kept_live_as}",
                      actions=[f"Drop {result.kept_live_as} once satisfied", "Post-mortem (the incident response "
                               "playbook's template: the restore-post-incident artifact)"])
    return Notice(kind="update", severity="P1", title=f"restore: replacing {result.database} FAILED",
                  status="Investigating", impact=trading, details=[result.error or "failed"],
                  actions=result.next_steps)


def _post_incident(result: RestoreResult) -> PostIncident | None:
    """A replace that swapped the live database is an incident to review; a verify or a new copy is not."""
    if result.mode != "replace" or result.kept_live_as is None:
        return None
    approval = result.approval
    return PostIncident(
        title=f"{result.database} replaced from backup", severity="P1",
        lead=f"{approval.approver} (approved: {approval.reason})" if approval else "unknown",
        what_happened=f"{result.database} was replaced by the restore of backup {result.backup_id}"
        + (f" (taken {result.plan.backup_taken_at:%Y-%m-%d %H:%M} UTC, {result.plan.backup_age_hours:.1f} h old: "
           "data written after it is not in the restored database)" if result.plan else "") + ".",
        impact=[f"trading: {'; '.join(result.trading) or 'not touched'}",
                f"time to restore (fetch, restore, validate): {result.time_to_restore_seconds or 0:.0f} s"],
        resolution=f"restore {result.status}; previous database kept as {result.kept_live_as}"
        + (f"; error: {result.error}" if result.error else ""),
        action_items=[f"Recover from {result.kept_live_as} any rows written after the backup",
                      f"Drop {result.kept_live_as} once satisfied"])


@flow(name="restore", flow_run_name=_run_name, log_prints=False)
@takes(RestoreParameters)
def restore_database_flow(params: RestoreParameters) -> State:
    """Restore one database: verify, into a new database, or replace the live one after approval."""
    run: RunbookRun[RestoreResult] = RunbookRun("restore", resource=params.database)
    settings = run.settings
    halt = params.halt_trading if params.halt_trading is not None else params.mode == "replace"
    guard = TradingGuard(run, settings.trading_api)
    result = RestoreResult(database=params.database, mode=params.mode, dry_run=params.dry_run,
                           started_at=run.started_at)
    run.report(result, render=render_report, key=f"restore-report-{params.database}",
               description=f"Restore runbook report ({params.mode})", post_incident=_post_incident)

    def conclude() -> State:
        result.trading = guard.actions
        result.succeeded = result.status in ("succeeded", "dry_run")
        if params.mode == "replace" and (result.kept_live_as or guard.actions):  # the live database was touched
            result.notification = notify(run, _notice(result))
        return run.conclude(result)

    try:
        database = settings.database_or_raise(params.database)
        if params.mode == "replace":
            with run.step("check change window") as figures:
                result.change_window = params.change_window(settings)
                if result.change_window is not None:
                    figures.update(change_window=result.change_window.summary(),
                                   in_session_reason=result.change_window.in_session_reason)
        live = str(database.conninfo().get("dbname") or params.database)  # the server's name for it
        target = live if params.mode == "replace" else (params.target_database or f"{params.database}_recovery")
        result.target = target if params.mode != "verify" else None
        catalog = BackupCatalog(open_repository(settings.repository))
        with run.step("resolve backup") as figures:
            manifest = resolve_backup_or_raise(catalog=catalog, database=params.database,
                                               backup_id=params.backup_id, before=params.before)
            figures["backup_id"] = manifest.backup_id
        result.backup_id = manifest.backup_id

        if params.mode == "verify":
            with run.step("verify backup objects"):
                result.verification = verify_backup(catalog=catalog, manifest=manifest)
            if result.verification.status != "passed":
                raise Refused(f"backup {manifest.backup_id} does not verify: {result.verification.detail}",
                              hint="pick another backup with 'runbooks backups list'.")
            result.status = "dry_run" if params.dry_run else "succeeded"
            result.next_steps.append(f"Restore it with mode=new (into {params.database}_recovery) to inspect it.")
            return conclude()

        with ExitStack() as held:  # only one restore of a database at a time, any host; its backup is held
            held.enter_context(resource_lock(run, server=database.conninfo(), key=f"runbooks-restore:{params.database}",
                                             wait_seconds=params.lock_wait_seconds))
            keep_as: str | None = None
            if params.mode == "replace":  # under the lock: no other restore of this database names one meanwhile
                with run.step("name the kept database") as figures:
                    keep_as = free_keep_name(database, live=live, backup_id=manifest.backup_id)
                    figures["keep_as"] = keep_as
            result.plan = RestorePlan(
                database=params.database, mode=params.mode, backup_id=manifest.backup_id,
                backup_taken_at=manifest.started_at,
                backup_age_hours=(datetime.now(UTC) - manifest.started_at).total_seconds() / 3600,
                bytes=manifest.bytes, stored_bytes=manifest.stored_bytes,
                wal_lsn=manifest.snapshot.wal_lsn if manifest.snapshot else None, target=target,
                keep_live_as=keep_as, halt_trading=halt,
                plan_hash=plan_hash(manifest, mode=params.mode, target=target, halt=halt, keep_as=keep_as))
            if not params.dry_run:
                held.enter_context(catalog.holding(
                    manifest, holder=run.flow_run_id or "local", reason=f"restore of {params.database}",
                    until=datetime.now(UTC) + timedelta(seconds=params.approval_timeout_seconds) + HOLD_MARGIN))
            _restore_locked(run, params, settings, database, catalog, manifest, result, guard, live=live,
                            target=target, halt=halt)
    except RunbookError as exc:
        result.error = scrub(str(exc))
        run.logger.error("Restore of %r failed: %s", params.database, result.error)
    except Exception as exc:  # still leave a report behind
        result.error = scrub(f"{type(exc).__name__}: {exc}")
        run.logger.exception("Restore of %r failed unexpectedly", params.database)
    if result.status == "failed":
        if result.kept_live_as is None:
            result.next_steps.append(f"The live database {params.database!r} was not changed.")
        else:
            result.next_steps.append(f"The live database was swapped; the previous one is {result.kept_live_as!r} "
                                     "(roll back by renaming it back).")
    if guard.left_halted:
        result.next_steps.append("Trading stays HALTED by this run. Investigate, then resume with CONFIRM_RESUME "
                                 "when safe.")
    return conclude()


def _restore_locked(run: RunbookRun[RestoreResult], params: RestoreParameters, settings: Settings,
                    database: DatabaseSettings, catalog: BackupCatalog, manifest: BackupManifest,
                    result: RestoreResult, guard: TradingGuard, *, live: str, target: str, halt: bool) -> None:
    """Everything done under the restore lock; it sets ``result.status``, and raises what the flow reports."""
    assert result.plan is not None
    records = RestoreRecords(catalog.repository, identify_server(database=database))
    protected = {str(db.conninfo().get("dbname") or name) for name, db in settings.databases.items()}
    with run.step("sweep scratch databases", destructive=not params.dry_run) as figures:
        sweep = sweep_restore_databases(database=database, records=records, source=params.database,
                                        protected=protected, dry_run=params.dry_run)
        result.scratch_swept, result.scratch_left = sweep.dropped, sweep.left
        figures["dropped"] = len(sweep.dropped)
    workdirs = WorkDirs(settings.work_root)
    with run.step("sweep work directories", destructive=not params.dry_run) as figures:
        result.work_dirs_swept = sweep_work_directories(workdirs=workdirs, dry_run=params.dry_run,
                                                         purpose="restore")
        figures["removed_bytes"] = sum(w.bytes for w in result.work_dirs_swept)
    with run.step("check target"):
        state = inspect_target(database=database, records=records, name=target)
    if params.mode == "new" and state != "absent":
        if state == "foreign":
            raise Refused(f"target database {target!r} already exists and was not made by a restore (the runbooks' "
                          "records say so).", hint="choose another target_database; nothing was changed.")
        if not params.overwrite_target:
            raise Refused(f"target database {target!r} already exists and is a previous recovery database.",
                          hint="choose another target_database, or set overwrite_target=true to replace it.")
    if params.mode == "replace" and state == "absent":
        raise Refused(f"database {target!r} does not exist on the server, so there is nothing to replace.",
                      hint="use mode=new to restore it under a new name.")

    with run.step("check prerequisites") as figures:
        needed = manifest.database_bytes or manifest.bytes * 2
        result.prerequisites = check_restore_prerequisites(
            database=database, live=live, replace=params.mode == "replace", needed_bytes=needed,
            reserve_percent=settings.restore.server_disk_reserve_percent)
        free = workdirs.free_bytes()
        if free < manifest.bytes * 1.05:
            raise Refused(f"the restore work directory {str(workdirs.root)!r} has {human_bytes(free)} free; the dump "
                          f"needs {human_bytes(manifest.bytes * 1.05)}.", hint="set restore.work_dir to a larger "
                          "volume; nothing was done.")
        if halt:
            status = guard.check()
            figures["trading_mode"] = str(status.get("trading_mode"))
    if params.dry_run:
        result.status = "dry_run"
        result.next_steps.append(f"Would restore {manifest.backup_id} into {target!r}"
                                 + (f", keeping the live database as {result.plan.keep_live_as!r}"
                                    if result.plan.keep_live_as else "")
                                 + f". Plan hash: {result.plan.plan_hash}.")
        return

    workdir = workdirs.create("restore", flow_run_id=run.flow_run_id)
    scratch = fit_name(params.database, f"_restore_{datetime.now(UTC):%Y%m%d%H%M%S}")
    try:
        restore_started = time.monotonic()
        if params.restore_globals != "never":
            with run.step("restore roles (globals)", destructive=True) as figures:
                cluster = find_cluster_backup(catalog=catalog, cluster=settings.cluster.name,
                                              backup_id=manifest.backup_id)
                if cluster is not None:
                    globals_sql = fetch_backup(catalog=catalog, manifest=cluster, role="globals",
                                               dest=workdir / "globals.sql")
                    result.roles_created = restore_roles(database=database, globals_sql=globals_sql,
                                                         mode="always" if params.restore_globals == "always"
                                                         else "auto")
                    globals_sql.unlink()
                elif params.restore_globals == "always":
                    raise Refused("restore_globals=always but there is no verified cluster backup of "
                                  f"{settings.cluster.name!r} before {manifest.backup_id}.")
                figures["roles_created"] = len(result.roles_created)
        restore_to_scratch(run, catalog=catalog, manifest=manifest, database=database, records=records,
                           protected=protected, source=params.database, scratch=scratch, dump=workdir / "dump.pgc",
                           jobs=params.jobs, no_owner=params.no_owner)
        with run.step("validate restored copy") as figures:
            result.validation = validate_database(
                database=database, target=scratch, expected=manifest.row_counts, checks=database.checks,
                compare_live=live if (params.compare_live or params.mode == "replace") else None)
            figures.update(tables=len(result.validation.row_counts), mismatches=len(result.validation.mismatches))
        result.time_to_restore_seconds = time.monotonic() - restore_started
        if not result.validation.passed:
            raise Refused(f"the restored copy of {manifest.backup_id} does not match its manifest "
                          f"({len(result.validation.mismatches)} tables differ).",
                          hint="nothing was swapped; inspect the report and try an older backup.")
        if params.mode == "new":
            with run.step("publish recovery database", destructive=True):
                publish_recovery_database(database=database, records=records, scratch=scratch, target=target,
                                          overwrite=params.overwrite_target and state == "recovery",
                                          protected=protected)
            result.status = "succeeded"
            result.next_steps.append(f"Inspect {target!r}; the live database {params.database!r} is untouched.")
            return

        # mode == "replace": preview -> approve -> act on exactly that plan. The copy is closed to PUBLIC, so
        # what was validated is what is swapped in, whatever the live database's writers do meanwhile.
        with run.step("rehearse swap"):
            rehearse_swap(database=database, live=live, scratch=scratch)
        with run.step("approval") as figures:
            if params.confirm is None:
                result.timeline = list(run.steps.timeline)
                publish_report(key=f"restore-plan-{params.database}", markdown=render_report(result),
                               description="Restore plan awaiting approval")
            result.approval = request_approval(
                run, plan_hash=result.plan.plan_hash, confirm=params.confirm,
                summary=f"Approve restore plan `{result.plan.plan_hash}` of {params.database} from "
                        f"{result.plan.backup_id}."
                        + (f" {result.change_window.summary()}." if result.change_window and
                           result.change_window.in_session else ""),
                timeout_seconds=params.approval_timeout_seconds, poll_seconds=params.approval_poll_seconds,
                plan_artifact=f"restore-plan-{params.database}")
            figures.update(approved=result.approval.approved, approver=result.approval.approver)
        if not result.approval.approved:
            timed_out = result.approval.via == "timeout"
            result.status = "timed_out" if timed_out else "rejected"
            result.error = (result.approval.reason if timed_out
                            else f"rejected by {result.approval.approver}: {result.approval.reason}")
            result.declined = result.error
            result.next_steps.append("Nothing was changed; the scratch copy was dropped.")
            return
        keep_as = result.plan.keep_live_as  # the name approved (under the plan hash), not one made up now
        assert keep_as is not None
        with run.step("check the kept name is free"):
            if locate_databases(database=database, names=[keep_as])[keep_as] is not None:
                raise Refused(f"a database named {keep_as!r} appeared after the plan was made, so the live "
                              "database cannot be kept under the approved name.",
                              hint="run the restore again (a dry run shows the new plan and its hash); nothing "
                              "was swapped and trading was not touched.")
        if halt:
            with run.step("halt trading", destructive=True):
                guard.halt(reason=f"restore of {params.database} from {manifest.backup_id}")
        with run.step("swap databases", destructive=True):
            try:
                swap_databases(database=database, records=records, live=live, scratch=scratch, keep_as=keep_as,
                               source=params.database, backup_id=manifest.backup_id, flow_run_id=run.flow_run_id)
            except BaseException:
                # What actually happened decides the report and trading: the swap is one transaction.
                if locate_databases(database=database, names=[keep_as])[keep_as] is not None:
                    result.kept_live_as = keep_as
                else:
                    guard.resume_if_ours()  # nothing changed: trading goes back as it was
                raise
        result.kept_live_as = keep_as
        if halt:
            with run.step("resume trading", destructive=True):  # only while the lock is ours: else it stays halted
                guard.resume_if_ours()
        result.status = "succeeded"
        result.next_steps.append(f"Once satisfied, drop {keep_as!r} by hand (kept on purpose).")
        rejected = fit_name(live, "_rejected")
        result.next_steps.append(f"To roll back: ALTER DATABASE {quoted(live)} RENAME TO {quoted(rejected)}; "
                                 f"ALTER DATABASE {quoted(keep_as)} RENAME TO {quoted(live)}; then resume trading "
                                 "with CONFIRM_RESUME if it is halted.")
    finally:
        if result.kept_live_as is None and result.status != "succeeded":
            try:
                drop_restore_database(database=database, records=records, name=scratch, kind="scratch",
                                      protected=protected)
            except RunbookError as exc:
                run.logger.warning("Could not drop scratch database %r: %s", scratch, exc)
        workdirs.remove(workdir)
