"""On-demand restore of one PostgreSQL database from the backup repository (seeds 001-003).

Trigger: on demand — the ``restore-on-demand`` deployment, ``runbooks run restore`` — and unattended by the DR
game-day (``confirm`` = the plan hash). Blast radius: ``verify`` touches no database; ``new`` creates one database
(default ``<database>_recovery``) and never touches the source; ``replace`` restores into a scratch database,
validates it, and only after approval halts trading and swaps names — the live database is kept as
``<database>_pre_restore_<timestamp>``; nothing is ever dropped but scratch databases this runbook made.
Rollback of a replace: ``ALTER DATABASE <database> RENAME TO <database>_rejected;
ALTER DATABASE <database>_pre_restore_<ts> RENAME TO <database>;`` then resume trading (CONFIRM_RESUME).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from pydantic import BaseModel, ConfigDict, Field, model_validator

from runbooks.catalog import BackupCatalog
from runbooks.errors import Refused, RunbookError
from runbooks.manifest import BackupManifest, Verification
from runbooks.postgres import RECOVERY_MARK, SCRATCH_MARK, advisory_lock, mark_text
from runbooks.redact import scrub
from runbooks.report import StepTiming, Timeline, human_bytes, table
from runbooks.repository import open_repository
from runbooks.settings import Settings, load_settings
from tasks.postgres import (
    ValidationReport,
    create_scratch_database,
    drop_restore_database,
    inspect_target,
    rename_databases_task,
    restore_database,
    restore_globals,
    sweep_scratch_databases,
    validate_database,
)
from tasks.reports import publish_report
from tasks.storage import fetch_backup, find_cluster_backup, resolve_backup_or_raise, verify_backup
from tasks.trading_api import halt_trading, read_trading_status, resume_trading

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$"
ACTOR = "runbooks-restore"


class RestoreParameters(BaseModel):
    """Which backup to restore, where, and how carefully."""

    model_config = ConfigDict(extra="forbid")

    database: str = Field(description="Database from the inventory whose backup is restored.")
    backup_id: str = Field(default="latest", pattern=r"^(latest|\d{8}T\d{6}Z)$",
                           description="'latest' or a backup id such as 20261121T020000Z.")
    before: datetime | None = Field(default=None, description="With 'latest': the latest backup before this time.")
    mode: Literal["verify", "new", "replace"] = Field(
        default="new", description="verify: check only; new: restore into target_database; replace: swap in.")
    target_database: str | None = Field(default=None, pattern=IDENTIFIER,
                                        description="For mode=new; default <database>_recovery.")
    overwrite_target: bool = Field(default=False,
                                   description="Replace target_database if it is a previous recovery database.")
    jobs: int = Field(default=2, ge=1, le=32, description="Parallel pg_restore jobs.")
    halt_trading: bool | None = Field(default=None, description="Kill switch before the swap; default: replace only.")
    compare_live: bool = Field(default=False, description="Also compare row counts with the live database.")
    restore_globals: Literal["auto", "always", "never"] = Field(
        default="auto", description="Create the roles the cluster lacks from the cluster backup first "
        "(always: fail if there is no cluster backup).")
    no_owner: bool = Field(default=False, description="pg_restore --no-owner --no-acl (seeds' variant).")
    confirm: str | None = Field(default=None, description="The plan hash: approves a replace without pausing.")
    approval_timeout_seconds: int = Field(default=1800, ge=1, le=86400)
    approval_poll_seconds: int = Field(default=10, ge=1, le=300)
    lock_wait_seconds: int = Field(default=0, ge=0, le=86400,
                                   description="Wait this long for another restore of the database to finish.")
    dry_run: bool = Field(default=False, description="Resolve and check everything, print the plan, change nothing.")

    @model_validator(mode="after")
    def _consistent(self) -> RestoreParameters:
        if self.before is not None and self.backup_id != "latest":
            raise ValueError("'before' only combines with backup_id='latest'")
        if self.mode == "replace" and self.target_database not in (None, self.database):
            raise ValueError("mode=replace restores over 'database' itself; do not set target_database")
        if self.mode == "new" and self.target_database == self.database:
            raise ValueError(f"target_database equals the source {self.database!r}; use mode=replace to swap it")
        return self


class RestoreApproval(RunInput):
    """The on-call decision on a replace plan (the Prefect UI renders this form on the paused run)."""

    approve: bool = Field(description="Approve the plan exactly as published")
    approver: str = Field(min_length=1, description="Who decides")
    reason: str = Field(min_length=1, description="Why (goes into the report)")


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
    keep_live_as: str | None
    halt_trading: bool
    plan_hash: str = Field(description="pass as 'confirm' to approve this plan unattended")


class RestoreResult(BaseModel):
    database: str
    mode: str
    dry_run: bool
    status: Literal["succeeded", "failed", "rejected", "timed_out", "dry_run"]
    backup_id: str | None = None
    target: str | None = None
    plan: RestorePlan | None = None
    approval: dict[str, str | bool] | None = None
    verification: Verification | None = None
    validation: ValidationReport | None = None
    roles_created: list[str] = Field(default_factory=list)
    scratch_swept: list[str] = Field(default_factory=list)
    trading: list[str] = Field(default_factory=list, description="trading actions taken, in order")
    kept_live_as: str | None = None
    time_to_restore_seconds: float | None = Field(default=None, description="fetch + restore + validate")
    started_at: datetime
    seconds: float
    timeline: list[StepTiming]
    error: str | None = None
    next_steps: list[str] = Field(default_factory=list)
    succeeded: bool


def plan_hash(manifest: BackupManifest, *, mode: str, target: str, halt: bool) -> str:
    """Stable over what the plan will do, so a dry run can print it and an unattended run can confirm it."""
    dump = next(o for o in manifest.objects if o.role == "dump")
    payload = json.dumps([manifest.name, manifest.backup_id, dump.sha256, mode, target, halt])
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _run_name() -> str:
    p = (flow_run.parameters or {}).get("parameters") or {}
    get = p.get if isinstance(p, dict) else (lambda k, d=None: getattr(p, k, d))
    return f"restore-{get('database', '?')}-{get('mode', 'new')}-from-{get('backup_id', 'latest')}"


def render_report(result: RestoreResult) -> str:
    title = {"succeeded": "succeeded", "dry_run": "dry run", "rejected": "REJECTED — nothing changed",
             "timed_out": "approval TIMED OUT — nothing changed", "failed": "FAILED"}[result.status]
    lines = [f"# Restore of `{result.database}` ({result.mode}) — {title}", "",
             f"Started {result.started_at:%Y-%m-%d %H:%M:%S} UTC, {result.seconds:.1f} s in all."]
    if result.time_to_restore_seconds is not None:
        lines.append(f"**Time to a validated database: {result.time_to_restore_seconds:.1f} s** "
                     "(fetch + verify + pg_restore + validation).")
    if result.error:
        lines += ["", f"**Error:** {result.error}"]
    if result.plan:
        p = result.plan
        lines += ["", "## Plan", table(["", ""], [
            ["backup", f"{p.backup_id} (taken {p.backup_taken_at:%Y-%m-%d %H:%M}Z, {p.backup_age_hours:.1f} h ago)"],
            ["size", f"{human_bytes(p.bytes)} ({human_bytes(p.stored_bytes)} stored)"],
            ["WAL at snapshot", p.wal_lsn or "-"], ["target", p.target],
            ["live database kept as", p.keep_live_as or "-"], ["halt trading", str(p.halt_trading)],
            ["plan hash (confirm)", f"`{p.plan_hash}`"]])]
    if result.approval:
        a = result.approval
        lines += ["## Approval", f"{'Approved' if a.get('approve') else 'Rejected'} by **{a.get('approver')}**: "
                  f"{a.get('reason')}", ""]
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
        if val.anomalies:
            lines.append(table(["integrity check (seeds 002)", "rows"], [[k, n] for k, n in val.anomalies.items()]))
        if val.position_totals:
            lines.append(table(["symbol", "open quantity", "open value"], val.position_totals))
        if val.live_deltas is not None:
            changed = {t: d for t, d in val.live_deltas.items() if d}
            lines.append(table(["table", "restored minus live rows"], [[t, d] for t, d in changed.items()])
                         if changed else "Row counts equal the live database's.\n")
    if result.roles_created:
        lines += [f"Roles created from the cluster backup: {', '.join(result.roles_created)}", ""]
    if result.scratch_swept:
        verb = "to drop (dry run)" if result.dry_run else "dropped"
        lines += [f"Scratch databases of interrupted restores {verb}: {', '.join(result.scratch_swept)}", ""]
    lines += ["## Trading", "\n".join(f"- {t}" for t in result.trading) or "_untouched_", ""]
    if result.kept_live_as:
        lines += [f"The previous live database is kept as `{result.kept_live_as}`.", ""]
    lines += ["## Timeline", Timeline.markdown_of(result.timeline)]
    if result.next_steps:
        lines += ["## Next steps", *[f"- {s}" for s in result.next_steps]]
    return "\n".join(lines)


@flow(name="restore", flow_run_name=_run_name, log_prints=False)
def restore_database_flow(parameters: RestoreParameters) -> State:
    """Restore one database: verify, into a new database, or replace the live one after approval."""
    params = parameters
    logger = get_run_logger()
    settings: Settings = load_settings()
    secrets = settings.secrets
    timeline = Timeline()
    started_at, started = datetime.now(UTC), time.monotonic()
    halt = params.halt_trading if params.halt_trading is not None else params.mode == "replace"
    try:  # the server's name of the database, which need not be its inventory key
        live = str(settings.database_or_raise(params.database).conninfo().get("dbname") or params.database)
    except RunbookError:
        live = params.database  # reported below, where the inventory is checked
    target = live if params.mode == "replace" else (params.target_database or f"{params.database}_recovery")
    result = RestoreResult(database=params.database, mode=params.mode, dry_run=params.dry_run, status="failed",
                           target=target if params.mode != "verify" else None, started_at=started_at, seconds=0,
                           timeline=[], succeeded=False)

    def conclude() -> State:
        result.seconds = time.monotonic() - started
        result.timeline = timeline.steps
        result.succeeded = result.status in ("succeeded", "dry_run")
        publish_report(key=f"restore-report-{params.database}", markdown=render_report(result),
                       description=f"Restore runbook report ({params.mode})", secrets=secrets)
        if result.succeeded:
            return Completed(data=result, message=f"restore {result.status}")
        return Failed(data=result, message=result.error or f"restore {result.status}")

    try:
        database = settings.database_or_raise(params.database)
        catalog = BackupCatalog(open_repository(settings.repository))
        with timeline.step("resolve backup"):
            manifest = resolve_backup_or_raise(catalog=catalog, database=params.database,
                                               backup_id=params.backup_id, before=params.before)
        result.backup_id = manifest.backup_id

        if params.mode == "verify":
            with timeline.step("verify backup objects"):
                result.verification = verify_backup(catalog=catalog, manifest=manifest)
            if result.verification.status != "passed":
                raise Refused(f"backup {manifest.backup_id} does not verify: {result.verification.detail}",
                              hint="pick another backup with 'runbooks backups list'.")
            result.status = "dry_run" if params.dry_run else "succeeded"
            result.next_steps.append(f"Restore it with mode=new (into {params.database}_recovery) to inspect it.")
            return conclude()

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        keep_as = f"{live[:45]}_pre_restore_{stamp}" if params.mode == "replace" else None
        result.plan = RestorePlan(
            database=params.database, mode=params.mode, backup_id=manifest.backup_id,
            backup_taken_at=manifest.started_at,
            backup_age_hours=(datetime.now(UTC) - manifest.started_at).total_seconds() / 3600,
            bytes=manifest.bytes, stored_bytes=manifest.stored_bytes,
            wal_lsn=manifest.snapshot.wal_lsn if manifest.snapshot else None, target=target, keep_live_as=keep_as,
            halt_trading=halt, plan_hash=plan_hash(manifest, mode=params.mode, target=target, halt=halt))

        with ExitStack() as held:
            with timeline.step("take restore lock"):  # only one restore of a database at a time, any host
                held.enter_context(advisory_lock(
                    database.conninfo(), f"runbooks-restore:{params.database}", wait_seconds=params.lock_wait_seconds,
                    secrets=secrets, holder=f"runbooks restore {flow_run.id}"))
            return _restore_locked(params, settings, database, catalog, manifest, result, timeline, target, live,
                                   keep_as, halt, conclude)
    except RunbookError as exc:
        result.error = scrub(str(exc), secrets)
        logger.error("Restore of %r failed: %s", params.database, result.error)
    except Exception as exc:  # still leave a report behind
        result.error = scrub(f"{type(exc).__name__}: {exc}", secrets)
        logger.exception("Restore of %r failed unexpectedly", params.database)
    if result.kept_live_as is None:
        result.next_steps.append(f"The live database {params.database!r} was not changed.")
    else:
        result.next_steps.append(f"The live database was swapped; the previous one is {result.kept_live_as!r} "
                                 "(roll back by renaming it back).")
    if any(t.startswith("HALTED") for t in result.trading) and not any(t.startswith("resumed") for t in result.trading):
        result.next_steps.append("Trading stays HALTED. Investigate, then resume with CONFIRM_RESUME when safe.")
    return conclude()


def _restore_locked(params: RestoreParameters, settings: Settings, database, catalog: BackupCatalog,  # type: ignore[no-untyped-def]
                    manifest: BackupManifest, result: RestoreResult, timeline: Timeline, target: str, live: str,
                    keep_as: str | None, halt: bool, conclude) -> State:
    """Everything after the lock is taken; exceptions propagate to the flow, which reports them."""
    logger = get_run_logger()
    secrets = settings.secrets
    assert result.plan is not None
    with timeline.step("sweep scratch databases"):
        result.scratch_swept = sweep_scratch_databases(database=database, source=params.database, secrets=secrets,
                                                       dry_run=params.dry_run)
    with timeline.step("check target"):
        state = inspect_target(database=database, names=[target], secrets=secrets)[target]
    if params.mode == "new" and state is not None:
        if state != RECOVERY_MARK or not params.overwrite_target:
            previous = state == RECOVERY_MARK
            raise Refused(
                f"target database {target!r} already exists and "
                + ("is a previous recovery database." if previous else "was not made by a restore."),
                hint="choose another target_database"
                + (", or set overwrite_target=true to replace it." if previous else "; nothing was changed."))
    if params.mode == "replace" and state is None:
        raise Refused(f"database {target!r} does not exist on the server, so there is nothing to replace.",
                      hint="use mode=new to restore it under a new name.")
    if params.dry_run:
        result.status = "dry_run"
        result.next_steps.append(f"Would restore {manifest.backup_id} into {target!r}"
                                 + (f", keeping the live database as {keep_as!r}" if keep_as else "")
                                 + f". Plan hash: {result.plan.plan_hash}.")
        return conclude()

    needed = manifest.bytes * 1.05
    workdir = Path(tempfile.mkdtemp(prefix="runbooks-restore-", dir=settings.restore.work_dir))
    try:
        free = shutil.disk_usage(workdir).free
        if free < needed:
            raise Refused(f"the restore work directory {str(workdir)!r} has {human_bytes(free)} free; the dump needs "
                          f"{human_bytes(needed)}.", hint="set restore.work_dir to a larger volume.")
        restore_started = time.monotonic()
        scratch = f"{params.database[:40]}_restore_{datetime.now(UTC):%Y%m%d%H%M%S}"
        meta = {"source": params.database, "backup_id": manifest.backup_id, "flow_run_id": str(flow_run.id),
                "created_at": datetime.now(UTC).isoformat()}
        with timeline.step("fetch and verify backup"):
            dump = fetch_backup(catalog=catalog, manifest=manifest, role="dump", dest=workdir / "dump.pgc")
        if params.restore_globals != "never":
            with timeline.step("restore roles (globals)"):
                cluster = find_cluster_backup(catalog=catalog, cluster=settings.cluster.name,
                                              backup_id=manifest.backup_id)
                if cluster is not None:
                    globals_sql = fetch_backup(catalog=catalog, manifest=cluster, role="globals",
                                               dest=workdir / "globals.sql")
                    result.roles_created = restore_globals(database=database, globals_sql=globals_sql,
                                                           secrets=secrets)
                elif params.restore_globals == "always":
                    raise Refused("restore_globals=always but there is no verified cluster backup of "
                                  f"{settings.cluster.name!r} before {manifest.backup_id}.")
        with timeline.step("create scratch database"):
            create_scratch_database(database=database, name=scratch, meta=meta, secrets=secrets)
        try:
            with timeline.step(f"pg_restore -j {params.jobs}"):
                restore_database(database=database, target=scratch, dump_file=dump, jobs=params.jobs,
                                 no_owner=params.no_owner, secrets=secrets)
            with timeline.step("validate restored database"):
                result.validation = validate_database(
                    database=database, target=scratch, expected=manifest.row_counts,
                    compare_live=live if (params.compare_live or params.mode == "replace") else None,
                    secrets=secrets)
            result.time_to_restore_seconds = time.monotonic() - restore_started
            if not result.validation.passed:
                raise Refused(f"the restored copy of {manifest.backup_id} does not match its manifest "
                              f"({len(result.validation.mismatches)} tables differ).",
                              hint="nothing was swapped; inspect the report and try an older backup.")
            if params.mode == "new":
                with timeline.step("publish recovery database"):
                    if state == RECOVERY_MARK:
                        drop_restore_database(database=database, name=target, mark=RECOVERY_MARK, secrets=secrets)
                    rename_databases_task(database=database, renames=[(scratch, target)], close=[],
                                          comments={target: mark_text(RECOVERY_MARK, meta)}, secrets=secrets)
                result.status = "succeeded"
                result.next_steps.append(f"Inspect {target!r}; the live database {params.database!r} is untouched.")
                return conclude()

            # mode == "replace": preview -> approve -> act on exactly that plan.
            with timeline.step("approval"):
                approval = _approve(params, result)
            result.approval = approval
            if not approval.get("approve"):
                result.status = "timed_out" if approval.get("timed_out") else "rejected"
                result.error = ("no decision within the approval timeout" if approval.get("timed_out")
                                else f"rejected by {approval.get('approver')}: {approval.get('reason')}")
                result.next_steps.append("Nothing was changed; the scratch copy was dropped.")
                return conclude()
            if halt:
                with timeline.step("halt trading"):
                    before = read_trading_status(api=settings.trading_api)
                    # Recorded first: a kill switch that took effect but whose answer was lost is still reported.
                    result.trading.append(f"HALTED via kill switch (was {before.get('trading_mode')!r})")
                    halt_trading(api=settings.trading_api, actor=ACTOR,
                                 reason=f"restore of {params.database} from {manifest.backup_id}")
            with timeline.step("swap databases"):
                rename_databases_task(
                    database=database, renames=[(live, keep_as), (scratch, live)],  # type: ignore[list-item]
                    close=[live], properties_from=(live, scratch),
                    comments={keep_as: f"runbooks pre-restore copy {json.dumps(meta)}",  # type: ignore[dict-item]
                              live: f"restored by runbooks from backup {manifest.backup_id}"},
                    secrets=secrets)
            result.kept_live_as = keep_as  # the scratch copy is the live database now: never drop it
            with timeline.step("validate live database"):
                after = validate_database(database=database, target=live, expected=manifest.row_counts,
                                          compare_live=None, secrets=secrets)
            if not after.passed:
                raise Refused("after the swap the live database does not match the manifest.",
                              hint=f"trading stays halted; roll back by renaming {keep_as!r} back.")
            if halt:
                with timeline.step("resume trading"):
                    if before.get("trading_mode") == "running":
                        resume_trading(api=settings.trading_api, actor=ACTOR)
                        result.trading.append("resumed with CONFIRM_RESUME")
                    else:
                        result.trading.append(f"left halted: it was {before.get('trading_mode')!r} before the restore")
            result.status = "succeeded"
            result.next_steps.append(f"Once satisfied, drop {keep_as!r} by hand (kept on purpose).")
            return conclude()
        finally:
            if result.kept_live_as is None and result.status != "succeeded":
                try:
                    drop_restore_database(database=database, name=scratch, mark=SCRATCH_MARK, secrets=secrets)
                except RunbookError as exc:
                    logger.warning("Could not drop scratch database %r: %s", scratch, exc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


TIMEOUT_APPROVER = "runbooks (approval timeout)"
APPROVAL_GRACE_SECONDS = 3600


def _resume_on_timeout(run_id: object) -> None:
    from prefect.flow_runs import resume_flow_run

    try:
        resume_flow_run(run_id, run_input={"approve": False, "approver": TIMEOUT_APPROVER,  # type: ignore[arg-type]
                                           "reason": "approval timed out"})
    except Exception:  # a human decided at the same moment: theirs stands
        pass


def _approve(params: RestoreParameters, result: RestoreResult) -> dict[str, str | bool]:
    """Wait for a human (Prefect pause-for-input) unless ``confirm`` matches the plan hash."""
    logger = get_run_logger()
    assert result.plan is not None
    if params.confirm is not None:
        if params.confirm != result.plan.plan_hash:
            raise Refused(f"confirm {params.confirm!r} does not match this plan's hash {result.plan.plan_hash!r}.",
                          hint="the plan changed since it was confirmed; run a dry run and confirm the new hash.")
        logger.info("Plan %s confirmed by parameter: approved unattended", result.plan.plan_hash)
        return {"approve": True, "approver": "confirm parameter (unattended)", "reason": "plan hash matched"}
    publish_report(key=f"restore-plan-{params.database}", markdown=render_report(result),
                   description="Restore plan awaiting approval", secrets=load_settings().secrets)
    logger.warning("Waiting up to %d s for approval of plan %s (resume the paused run in the Prefect UI)",
                   params.approval_timeout_seconds, result.plan.plan_hash)
    # The approval deadline is ours: at it, a timer resumes the run with a "timed out" decision. (Letting
    # Prefect's own pause timeout expire would fail the run server-side, before it could clean up and report.)
    run_id = flow_run.id
    timer = threading.Timer(params.approval_timeout_seconds, contextvars.copy_context().run,
                            args=(_resume_on_timeout, run_id))
    timer.daemon = True
    timer.start()
    try:
        decision = pause_flow_run(
            wait_for_input=RestoreApproval.with_initial_data(
                description=f"Approve restore plan `{result.plan.plan_hash}` of {params.database} from "
                            f"{result.plan.backup_id} (see the restore-plan artifact).",
                approve=False, approver="", reason=""),
            timeout=params.approval_timeout_seconds + APPROVAL_GRACE_SECONDS,
            poll_interval=params.approval_poll_seconds, key=f"approve-{result.plan.plan_hash}")
    except FlowPauseTimeout:  # the timer could not resume the run (API unreachable)
        decision = RestoreApproval(approve=False, approver=TIMEOUT_APPROVER, reason="approval timed out")
    finally:
        timer.cancel()
    if decision.approver == TIMEOUT_APPROVER:
        logger.error("No approval within %d s: nothing changed", params.approval_timeout_seconds)
        return {"approve": False, "timed_out": True, "approver": "-", "reason": "approval timed out"}
    logger.info("Plan %s %s by %r: %s", result.plan.plan_hash, "approved" if decision.approve else "rejected",
                decision.approver, decision.reason)
    return {"approve": decision.approve, "approver": decision.approver, "reason": decision.reason}
