"""Restore a Redis instance (the memory/learning system) from the backup repository: seed 001's "Redis Recovery".

Trigger: on demand (``runbooks run redis-restore``, the ``redis-restore-on-demand`` deployment); the DR drill
restores Redis with the same task into its clean environment. Blast radius: ``new`` starts a ``redis-server`` of
its own on a free port of this worker, on a copy of the backup (nothing else is touched); ``replace`` first
restores into such a copy and checks it, then, after approval (an operator, or ``confirm`` = the plan hash),
backs up the live instance's current data into the repository and makes the live instance take the copy's
dataset by a full sync (``REPLICAOF`` the copy, then ``REPLICAOF NO ONE``) instead of the seed's stop / copy over
``dump.rdb`` / start: Redis' files and configuration stay its own, and a failed sync leaves its data as it was.
Writes to the live instance are refused during the sync (a replica is read-only). Rollback of a replace: restore
the backup the run took first (its id is in the report) the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.redis import RestoredInstance
from runbooks.adapters.repository import open_repository
from runbooks.adapters.workdirs import WorkDirs
from runbooks.core.errors import Refused, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.incidents import Notice
from runbooks.decisions.manifest import BackupManifest
from runbooks.decisions.report import human_bytes, inline, report_tail, started, table
from runbooks.frame import Approval, RunbookResult, RunbookRun, notify, request_approval
from runbooks.frame.approval import POLL_HELP, TIMEOUT_HELP
from runbooks.frame.locks import repository_lock
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import InventoryChoices, takes
from runbooks.settings import BackupSelector, InventoryName, Settings
from runbooks.tasks.redis import (
    RedisRestoreCheck,
    dump_redis,
    read_redis_role,
    replace_redis_data,
    restore_redis_instance,
)
from runbooks.tasks.reports import publish_report
from runbooks.tasks.storage import claim_backup_id, publish_backup, resolve_backup_or_raise, verify_backup

RUNBOOK = "redis-restore"
SCRATCH = "redis-restore"  # the work directories of copies a run stops (replace); swept when their run is gone
KEPT = "redis-copy"  # the work directories of copies handed over (target=new): never swept


class RedisRestoreParameters(BaseModel):
    """Which backup of which instance, and where to."""

    model_config = ConfigDict(extra="forbid")

    instance: Annotated[InventoryName, InventoryChoices("redis")] = Field(
        description="Redis instance from the inventory whose backup is restored.")
    backup_id: BackupSelector = Field(default="latest", description="'latest' or a backup id such as "
                                      "20261121T020000Z.")
    target: Literal["new", "replace"] = Field(default="new", description="new: a redis-server of its own on a "
                                              "free port of this worker; replace: the live instance takes the "
                                              "backup's data after approval (its current data backed up first).")
    confirm: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$",
                                description="The plan hash a dry run printed: approves a replace without pausing.")
    approval_timeout_seconds: int = Field(default=1800, ge=1, le=86400, description=TIMEOUT_HELP)
    approval_poll_seconds: int = Field(default=10, ge=1, le=300, description=POLL_HELP)
    sync_timeout_seconds: int = Field(default=600, ge=5, le=86400, description="How long loading the copy, and a "
                                      "replace's sync, may take.")
    dry_run: bool = Field(default=False, description="Resolve the backup and print the plan; change nothing.")

    def check_against(self, settings: Settings) -> None:
        settings.redis_or_raise(self.instance)


class RedisRestorePlan(BaseModel):
    instance: str
    target: str
    backup_id: str
    saved_at: datetime
    age_minutes: float
    key_count: int
    bytes: int
    live_keys: int | None = Field(default=None, description="keys the live instance holds now (replace)")
    plan_hash: str


class RedisRestoreResult(RunbookResult):
    instance: str
    target: str
    dry_run: bool
    status: Literal["succeeded", "failed", "rejected", "timed_out", "dry_run"] = "failed"
    backup_id: str | None = None
    plan: RedisRestorePlan | None = None
    check: RedisRestoreCheck | None = None
    approval: Approval | None = None
    port: int | None = Field(default=None, description="target=new: where the restored copy answers")
    workdir: str | None = Field(default=None, description="target=new: its directory (its 0600 redis.conf holds "
                                "its password)")
    previous_backup_id: str | None = Field(default=None, description="replace: the backup of the live data taken "
                                           "just before it was replaced (restore it to undo)")
    copy_left_running: bool = Field(default=False, description="a replace failed while the live instance still "
                                    "followed the copy: the copy is left running (see next steps)")
    keyspace_after: dict[str, int] = Field(default_factory=dict)
    time_to_restore_seconds: float | None = None
    notification: str | None = None


def plan_hash(manifest: BackupManifest, *, target: str) -> str:
    rdb = next(o for o in manifest.objects if o.role == "rdb")
    payload = json.dumps([manifest.name, manifest.backup_id, rdb.sha256, target])
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def render_report(result: RedisRestoreResult) -> str:
    title = {"succeeded": "succeeded", "dry_run": "dry run", "rejected": "REJECTED — nothing changed",
             "timed_out": "approval TIMED OUT — nothing changed", "failed": "FAILED"}[result.status]
    lines = [f"# Redis restore of `{result.instance}` ({result.target}) — {title}", "", f"{started(result)} in all."]
    if result.time_to_restore_seconds is not None:
        lines.append(f"**Time to a checked copy: {result.time_to_restore_seconds:.1f} s** (fetch + check + load).")
    if result.error:
        lines += ["", f"**Error:** {result.error}"]
    if result.plan:
        p = result.plan
        lines += ["", "## Plan", table(["", ""], [
            ["backup", f"{p.backup_id} (saved {p.saved_at:%Y-%m-%d %H:%M:%S}Z, {p.age_minutes:.0f} min ago)"],
            ["keys in the backup", str(p.key_count)], ["size", human_bytes(p.bytes)],
            ["live keys now", "-" if p.live_keys is None else str(p.live_keys)],
            ["target", "a new redis-server on this worker" if p.target == "new"
             else "the live instance (its current data backed up first)"],
            ["plan hash (confirm)", f"`{p.plan_hash}`"]])]
    if result.check:
        c = result.check
        lines += ["## Check", f"{'passed' if c.passed else 'FAILED'}: {c.detail}.", "",
                  table(["database", "keys in the copy", "keys live at save time"],
                        [[db, c.keyspace.get(db, 0), c.keyspace_at_save.get(db, "-")]
                         for db in sorted(set(c.keyspace) | set(c.keyspace_at_save))])]
    if result.approval:
        a = result.approval
        lines += ["## Approval", f"{'Approved' if a.approved else 'Not approved'} by **{inline(a.approver)}** "
                  f"({a.via}, {a.decided_at:%H:%M:%S}Z): {inline(a.reason)}", ""]
    if result.port is not None:
        lines += ["## The restored copy", f"`redis-cli -p {result.port} --askpass` on this worker; its password is "
                  f"`requirepass` in `{result.workdir}/redis.conf` (0600). Stop it with `redis-cli -p "
                  f"{result.port} --askpass shutdown nosave`, then remove `{result.workdir}`.", ""]
    if result.previous_backup_id:
        lines += [f"The live data before the replace is backup `{result.previous_backup_id}`: restore it the same "
                  "way to undo.", ""]
    if result.keyspace_after:
        lines += ["Live keyspace after the replace: " + ", ".join(f"{k} {v}" for k, v in
                                                                  sorted(result.keyspace_after.items())), ""]
    if result.notification:
        lines += [f"**Notification**: {result.notification}", ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _run_name() -> str:
    p = run_parameters()
    return run_name(RUNBOOK, p.get("instance"), p.get("target") or "new", "from", p.get("backup_id") or "latest",
                    dry_run=bool(p.get("dry_run")))


def _hand_over_if_still_replica(run: RunbookRun[RedisRestoreResult], params: RedisRestoreParameters,
                                result: RedisRestoreResult, copy: RestoredInstance) -> None:
    """A replace that failed while the live instance still follows the copy: stopping the copy would leave it a
    replica of nothing, refusing writes. The copy is left running and handed over, and the report says so."""
    try:
        role, _space = read_redis_role(name=params.instance, settings=run.settings.redis_or_raise(params.instance))
    except RunbookError:
        role = "unknown"
    if role == "master":
        return
    result.copy_left_running = True
    result.port = copy.port
    result.workdir = str(copy.workdir)
    result.next_steps.append(
        f"Redis {params.instance} is {role}, following the restored copy on port {copy.port}, which is left "
        f"running: once it has loaded, run REPLICAOF NO ONE and CONFIG SET masterauth/masteruser back on it, then "
        f"stop the copy (its password is in {copy.workdir}/redis.conf). Backup {result.previous_backup_id} holds "
        "the data from before.")


def stop_left_copy(directory: Path) -> bool:
    """Before a sweep removes a killed run's work directory: stop the ``redis-server`` it left there (its pidfile,
    and only a process that runs that directory's config)."""
    try:
        pid = int((directory / "redis.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # its title names its config (proc-title-template)
    except (OSError, ValueError):
        return True
    if str(directory / "redis.conf").encode() in cmdline:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(RedisRestoreParameters)
def redis_restore_flow(params: RedisRestoreParameters) -> State:
    """Restore a Redis backup into an instance of its own, or into the live instance after approval."""
    run: RunbookRun[RedisRestoreResult] = RunbookRun(RUNBOOK, resource=params.instance)
    result = RedisRestoreResult(instance=params.instance, target=params.target, dry_run=params.dry_run,
                                started_at=run.started_at)
    run.report(result, render=render_report, key=f"redis-restore-report-{params.instance}",
               description=f"Redis restore report ({params.target})")

    def conclude() -> State:
        result.succeeded = result.status in ("succeeded", "dry_run")
        if params.target == "replace" and not params.dry_run and result.approval and result.approval.approved:
            result.notification = notify(run, Notice(
                kind="resolved" if result.succeeded else "update", severity="P1",
                title=f"redis-restore: {params.instance} "
                + ("replaced from " + (result.backup_id or "?") if result.succeeded else "replace FAILED"),
                impact="the memory/learning system's data was replaced" if result.succeeded
                else "the memory/learning system may be degraded",
                details=[result.error] if result.error else [],
                resolution=f"previous data kept as backup {result.previous_backup_id}" if result.succeeded else None,
                actions=result.next_steps or ["Check the platform's learning components"]))
        return run.conclude(result)

    try:
        _restore(run, params, result)
    except RunbookError as exc:
        result.status, result.error = "failed", scrub(str(exc))
        result.next_steps.append("Read the error's HINT, fix, and rerun; a dry run shows the plan.")
    return conclude()


def _restore(run: RunbookRun[RedisRestoreResult], params: RedisRestoreParameters,
             result: RedisRestoreResult) -> None:
    settings = run.settings
    instance = settings.redis_or_raise(params.instance)
    catalog = BackupCatalog(open_repository(settings.repository))
    with run.step("resolve backup") as figures:
        manifest = resolve_backup_or_raise(catalog=catalog, database=params.instance, backup_id=params.backup_id,
                                           before=None, kind="redis")
        assert manifest.redis is not None
        result.backup_id = manifest.backup_id
        figures.update(backup_id=manifest.backup_id, keys=manifest.redis.key_count)
    live_keys = None
    if params.target == "replace":
        with run.step("read live instance") as figures:
            role, space = read_redis_role(name=params.instance, settings=instance)
            live_keys = sum(space.values())
            figures.update(role=role, keys=live_keys)
            if role != "master":
                raise Refused(f"Redis {params.instance!r} is a {role}, not a master: replacing a replica's data "
                              "is undone by its next sync.", hint="restore into its master (or promote it first).")
    saved_at = manifest.redis.saved_at
    result.plan = RedisRestorePlan(
        instance=params.instance, target=params.target, backup_id=manifest.backup_id, saved_at=saved_at,
        age_minutes=(datetime.now(UTC) - saved_at).total_seconds() / 60, key_count=manifest.redis.key_count,
        bytes=manifest.bytes, live_keys=live_keys, plan_hash=plan_hash(manifest, target=params.target))
    if params.dry_run:
        result.status = "dry_run"
        result.next_steps.append(f"Run again without dry_run (confirm={result.plan.plan_hash} approves a replace "
                                 "unattended).")
        return
    with ExitStack() as held:
        if params.target == "replace":
            held.enter_context(repository_lock(run, repository=catalog.repository,
                                               key=f"redis-restore-{params.instance}"))
        kept = params.target == "new"
        workdirs = WorkDirs(settings.work_root)
        with run.step("sweep work directories", destructive=True) as figures:
            swept = workdirs.sweep(dry_run=False, purpose=SCRATCH, before_remove=stop_left_copy)
            figures["removed"] = len(swept)
        workdir = workdirs.create(KEPT if kept else SCRATCH, flow_run_id=run.flow_run_id)
        copy: RestoredInstance | None = None
        try:
            with run.step("restore into a new instance") as figures:
                began = time.monotonic()
                # A replace's copy listens where the live instance reaches it ([redis] restore_host).
                copy, result.check = restore_redis_instance(catalog=catalog, manifest=manifest, workdir=workdir,
                                                            settings=instance, bind="127.0.0.1" if kept
                                                            else instance.restore_host,
                                                            timeout_seconds=params.sync_timeout_seconds)
                result.time_to_restore_seconds = time.monotonic() - began
                figures.update(port=copy.port, passed=result.check.passed, keys=result.check.loaded_keys)
            if not result.check.passed:
                raise Refused(f"the restored copy does not hold what the backup does: {result.check.detail}.",
                              hint="restore an older backup (runbooks backups list); the copy was stopped.")
            if kept:
                result.port, result.workdir = copy.port, str(workdir)
                copy = None  # handed over: it keeps running
                result.status = "succeeded"
                result.next_steps.append(f"The copy answers on port {result.port}; stop it when done (see the "
                                         "report).")
                return
            _replace(run, params, result, catalog, manifest, copy)
        finally:
            if result.copy_left_running:
                pass  # the live instance still follows it: never stopped under it
            elif copy is not None:
                copy.stop()
                WorkDirs.remove(workdir)
            elif not kept or result.status != "succeeded":
                WorkDirs.remove(workdir)


def _replace(run: RunbookRun[RedisRestoreResult], params: RedisRestoreParameters, result: RedisRestoreResult,
             catalog: BackupCatalog, manifest: BackupManifest, copy: RestoredInstance) -> None:
    settings = run.settings
    instance = settings.redis_or_raise(params.instance)
    assert result.plan is not None
    with run.step("approval") as figures:
        if params.confirm is None:
            result.timeline = list(run.steps.timeline)
            publish_report(key=f"redis-restore-plan-{params.instance}", markdown=render_report(result),
                           description="Redis restore plan awaiting approval")
        result.approval = request_approval(
            run, plan_hash=result.plan.plan_hash, confirm=params.confirm,
            summary=f"Approve replacing Redis {params.instance}'s data with backup {manifest.backup_id} "
                    f"(plan `{result.plan.plan_hash}`).",
            timeout_seconds=params.approval_timeout_seconds, poll_seconds=params.approval_poll_seconds,
            plan_artifact=f"redis-restore-plan-{params.instance}")
        figures.update(approved=result.approval.approved, approver=result.approval.approver)
    if not result.approval.approved:
        timed_out = result.approval.via == "timeout"
        result.status = "timed_out" if timed_out else "rejected"
        result.error = (result.approval.reason if timed_out
                        else f"rejected by {result.approval.approver}: {result.approval.reason}")
        result.declined = result.error
        result.next_steps.append("Nothing was changed; the copy was stopped.")
        return
    cfg = settings.backup
    claim = claim_backup_id(catalog=catalog, subjects=[("redis", params.instance)], flow_run_id=run.flow_run_id,
                            heartbeat_seconds=max(1.0, min(60.0, cfg.stale_after_minutes * 60 / 5)))
    try:
        with run.step("back up the live data first") as figures:
            previous = dump_redis(catalog=catalog, claim=claim, name=params.instance, settings=instance,
                                  level=cfg.compression_level, threads=cfg.compression_threads,
                                  flow_run_id=run.flow_run_id)
            previous.verification = verify_backup(catalog=catalog, manifest=previous)
            if not previous.verified:
                raise Refused("the backup of the live data failed verification, so the replace would lose it: "
                              f"{previous.verification.detail}.", hint="fix the repository and rerun.")
            publish_backup(catalog=catalog, claim=claim, manifest=previous)
            result.previous_backup_id = previous.backup_id
            figures.update(backup_id=previous.backup_id, keys=previous.redis.key_count if previous.redis else None)
    finally:
        claim.close()
    try:
        with run.step("replace the live data", destructive=True) as figures:
            loaded = replace_redis_data(name=params.instance, settings=instance, source=copy,
                                        timeout_seconds=params.sync_timeout_seconds)
            result.keyspace_after = loaded.live
            figures.update(keys=sum(loaded.live.values()))
    except RunbookError:
        _hand_over_if_still_replica(run, params, result, copy)
        raise
    with run.step("check the live data") as figures:
        # Both read at the end of the sync, the live instance still read-only: a key expiring meanwhile is no
        # difference, a write that slipped in is.
        want = {db: n for db, n in loaded.copy.items() if n}
        got = {db: n for db, n in loaded.live.items() if n}
        figures.update(expected=sum(want.values()), found=sum(got.values()))
        if got != want:
            raise Refused(f"after the replace, Redis {params.instance!r} holds {got}, the restored copy held {want}: "
                          "its data was replaced, but not by exactly the copy.",
                          hint=f"backup {result.previous_backup_id} holds the data from before the replace.")
    result.status = "succeeded"
    result.next_steps.append(f"Backup {result.previous_backup_id} holds the data from before; drop nothing.")

