"""Nightly backup of the platform's PostgreSQL databases and Redis instances into the backup repository.

Trigger: the ``backup-nightly`` deployment (02:00 UTC), on demand from the Prefect UI, or
``runbooks run backup``; Redis alone every 15 minutes with ``backup-redis-15min`` (opt-in: seed 002's RPO for the
memory/learning system). Blast radius: read-only on the databases (one REPEATABLE READ snapshot per database) and
on Redis (a BGSAVE, which forks: its memory is copied on write while it runs);
writes new objects to the repository; retention deletes backups outside the policy, never the newest verified
one. Rollback: nothing to undo. A failed run lists no backup, and the next run sweeps what it left behind.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Literal

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runbooks.adapters.catalog import BackupCatalog, BackupClaim
from runbooks.adapters.repository import open_repository
from runbooks.core.errors import RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.manifest import BackupKind, BackupManifest, Verification
from runbooks.decisions.report import human_bytes, report_tail, table
from runbooks.frame import RunbookResult, RunbookRun
from runbooks.frame.names import listed, run_name, run_parameters
from runbooks.frame.parameters import InventoryChoices, takes
from runbooks.settings import DatabaseSettings, InventoryName, Settings
from runbooks.settings.redis import RedisSettings
from runbooks.tasks.postgres import dump_cluster, dump_database, probe_database
from runbooks.tasks.redis import dump_redis, probe_redis
from runbooks.tasks.storage import (
    LeftoverReport,
    RetentionReport,
    apply_retention,
    check_repository_writable,
    claim_backup_id,
    publish_backup,
    sweep_leftovers,
    verify_backup,
)


class BackupParameters(BaseModel):
    """What to back up in this run."""

    model_config = ConfigDict(extra="forbid")

    databases: list[Annotated[InventoryName, InventoryChoices("databases")]] = Field(default_factory=list,
                                           description="Databases from the inventory; empty: all.")
    include_databases: bool = Field(default=True, description="Back up the databases (the named ones, or all). "
                                    "False with include_redis: Redis alone (the 15-minute schedule).")
    include_cluster: bool = Field(default=True, description="Also back up roles (globals) and config files.")
    redis: list[Annotated[InventoryName, InventoryChoices("redis")]] = Field(default_factory=list,
                                 description="Redis instances from the inventory; empty: all.")
    include_redis: bool = Field(default=True, description="Back up the Redis instances (the named ones, or all).")
    apply_retention: bool = Field(default=True, description="Apply the retention policy after a good backup.")
    dry_run: bool = Field(default=False, description="Change nothing: report what would be backed up and deleted.")

    @field_validator("databases")
    @classmethod
    def _once(cls, names: list[str]) -> list[str]:
        # Each name is one subject of the run's claim: a name twice can never be claimed (the second lock finds the
        # first), and the run spent 120 tries before it blamed other backup runs.
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"{', '.join(map(repr, twice))} listed more than once: name each database once")
        return names

    @field_validator("redis")
    @classmethod
    def _redis_once(cls, names: list[str]) -> list[str]:
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"{', '.join(map(repr, twice))} listed more than once: name each instance once")
        return names

    @model_validator(mode="after")
    def _something(self) -> BackupParameters:
        if self.databases and not self.include_databases:
            raise ValueError("databases are named but include_databases is false: drop one of them")
        if self.redis and not self.include_redis:
            raise ValueError("Redis instances are named but include_redis is false: drop one of them")
        if not (self.include_databases or self.include_redis or self.include_cluster):
            raise ValueError("include_databases, include_redis and include_cluster are all false: nothing to "
                             "back up")
        return self

    def check_against(self, settings: Settings) -> None:
        """Refuse (ConfigurationError) a database or Redis instance the inventory lacks; the CLI calls it before
        any run."""
        for name in self.databases:
            settings.database_or_raise(name)
        for name in self.redis:
            settings.redis_or_raise(name)


class ItemResult(BaseModel):
    kind: BackupKind
    name: str
    status: Literal["succeeded", "failed", "verification_failed", "dry_run"]
    backup_id: str | None = None
    bytes: int | None = None
    stored_bytes: int | None = None
    database_size: int | None = None
    seconds: float = 0.0
    throughput_mb_s: float | None = None
    verification: Verification | None = None
    retention: RetentionReport | None = None
    error: str | None = None


class BackupResult(RunbookResult):
    repository: str
    dry_run: bool
    items: list[ItemResult] = Field(default_factory=list)
    leftovers: list[LeftoverReport] = Field(default_factory=list)


def _run_name() -> str:
    p = run_parameters()
    only_redis = p.get("include_databases") is False
    return run_name("backup", "redis" if only_redis else listed(p.get("databases")),
                    listed(p.get("redis")) if only_redis else None, dry_run=bool(p.get("dry_run")), stamp=True)


def _retention_action(report: RetentionReport) -> str:
    """One cell that reads as a sentence: what retention deleted (or would), and the damaged backups it kept."""
    removed = ", ".join(report.removed)
    action = ("nothing to delete" if not removed else
              f"would delete {removed}" if report.dry_run else f"deleted {removed}")
    if report.damaged:
        action += f"; DAMAGED, kept for inspection: {', '.join(report.damaged)}"
    return action


def render_report(result: BackupResult) -> str:
    lines = [
        f"# Backup {'(dry run) ' if result.dry_run else ''}— {'succeeded' if result.succeeded else 'FAILED'}",
        "",
        f"Repository `{result.repository}`, started {result.started_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"{result.seconds:.1f} s.",
        "",
        "## Backups",
        table(
            ["kind", "name", "status", "backup id", "size", "stored", "duration", "throughput", "verification"],
            [
                [i.kind, i.name, i.status, i.backup_id or "-", human_bytes(i.bytes or i.database_size),
                 human_bytes(i.stored_bytes), f"{i.seconds:.1f} s",
                 f"{i.throughput_mb_s:.1f} MB/s" if i.throughput_mb_s else "-",
                 f"{i.verification.status} ({i.verification.seconds:.1f} s)" if i.verification else "-"]
                for i in result.items
            ],
        ),
    ]
    errors = [f"- **{i.kind} {i.name}**: {i.error}" for i in result.items if i.error]
    if result.error and not result.items:
        errors.insert(0, f"- **run refused**: {result.error}")
    if errors:
        lines += ["## Errors", *errors, ""]
    lines += ["## Retention",
              table(["kind", "name", "kept", "action"],
                    [[i.kind, i.name, len(i.retention.kept), _retention_action(i.retention)]
                     for i in result.items if i.retention])]
    lines += ["## Leftovers of interrupted backups",
              table(["backup", "reason", "objects", "incomplete uploads", "action"],
                    [[lo.prefix, lo.reason, lo.objects, lo.incomplete_uploads,
                      "removed" if lo.removed else "would remove"] for lo in result.leftovers])]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


@flow(name="backup", flow_run_name=_run_name, log_prints=False)
@takes(BackupParameters)
def backup_databases(params: BackupParameters) -> State:
    """Back up every configured database (or the named ones), the cluster globals and config files."""
    run: RunbookRun[BackupResult] = RunbookRun("backup", resource="+".join(params.databases + params.redis) or "all")
    settings, logger = run.settings, run.logger
    result = BackupResult(repository=settings.repository.url, dry_run=params.dry_run, started_at=run.started_at)
    run.report(result, render=render_report, key=f"backup-report-{'dry-run' if params.dry_run else 'run'}",
               description="Backup runbook report")

    def conclude(error: str | None = None) -> State:
        result.error = error
        failed = [i for i in result.items if i.status not in ("succeeded", "dry_run") or i.error]
        result.succeeded = error is None and not failed
        if failed and not error:
            result.error = "backup failed for: " + ", ".join(f"{i.kind} {i.name}" for i in failed)
        if not result.succeeded:
            result.next_steps += [
                "Read the errors above; each ends with a HINT. Fix and rerun `runbooks run backup` (or the "
                "deployment) for the failed databases only (`--param databases='[\"NAME\"]'`).",
                "A backup marked `verification_failed` is kept for inspection but never used for restore."]
        return run.conclude(result)

    names = (params.databases or sorted(settings.databases)) if params.include_databases else []
    redis_names = (params.redis or sorted(settings.redis)) if params.include_redis else []
    try:
        with run.step("check inventory and repository"):
            databases = {name: settings.database_or_raise(name) for name in names}
            instances = {name: settings.redis_or_raise(name) for name in redis_names}
            catalog = BackupCatalog(open_repository(settings.repository))
            result.repository = catalog.repository.url
            if not params.dry_run:
                check_repository_writable(catalog=catalog)
        with run.step("sweep leftovers", destructive=not params.dry_run) as figures:
            result.leftovers = sweep_leftovers(
                catalog=catalog, stale_after=timedelta(minutes=settings.backup.stale_after_minutes),
                dry_run=params.dry_run)
            figures["leftovers"] = len(result.leftovers)
    except RunbookError as exc:
        logger.error("Backup refused before any dump: %s", scrub(str(exc)))
        return conclude(scrub(str(exc)))

    cfg = settings.backup
    cluster = settings.cluster
    with_cluster = params.include_cluster and bool(cluster.dsn or cluster.config_files)
    claim: BackupClaim | None = None
    if not params.dry_run:
        subjects: list[tuple[BackupKind, str]] = [("database", n) for n in names]
        subjects += [("cluster", cluster.name)] if with_cluster else []
        subjects += [("redis", n) for n in redis_names]
        try:
            with run.step("claim backup id") as figures:
                claim = claim_backup_id(catalog=catalog, subjects=subjects, flow_run_id=run.flow_run_id,
                                        heartbeat_seconds=heartbeat_seconds(cfg.stale_after_minutes))
                figures["backup_id"] = claim.backup_id
        except RunbookError as exc:
            logger.error("Backup refused before any dump: %s", scrub(str(exc)))
            return conclude(scrub(str(exc)))
    try:
        return _back_up_all(run, params, catalog, claim, databases, instances, with_cluster, result, conclude)
    finally:
        if claim is not None:
            claim.close()


def heartbeat_seconds(stale_after_minutes: int) -> float:
    """Beat often enough that a live writer never looks stale: five beats per ``stale_after``, at most 60 s."""
    return max(1.0, min(60.0, stale_after_minutes * 60 / 5))


def _back_up_all(run: RunbookRun[BackupResult], params: BackupParameters, catalog: BackupCatalog,
                 claim: BackupClaim | None, databases: dict[str, DatabaseSettings],
                 instances: dict[str, RedisSettings], with_cluster: bool, result: BackupResult,
                 conclude: Callable[..., State]) -> State:
    """Dump, verify and publish each item under the run's claim, then apply retention."""
    settings, logger = run.settings, run.logger
    cfg = settings.backup
    cluster = settings.cluster

    def _abandon(item: ItemResult, manifest: BackupManifest | None) -> None:
        """Give up this item's claim; what it wrote goes too, unless its manifest made it a backup."""
        assert claim is not None
        try:
            if not (manifest and catalog.repository.exists(f"{claim.prefix(item.kind, item.name)}/manifest.json")):
                catalog.discard(claim, item.kind, item.name, [o.key for o in manifest.objects] if manifest else [])
        except RunbookError as exc:
            logger.warning("Could not clean up %s %r (the next run sweeps it): %s", item.kind, item.name, exc)

    def back_up(item: ItemResult, dump: Callable[[], BackupManifest | None]) -> None:
        """Dump, verify, publish one item; its failure is reported and the run goes on with the next."""
        t0 = time.monotonic()
        assert claim is not None
        manifest: BackupManifest | None = None
        try:
            with run.step(f"dump {item.kind} {item.name}") as figures:
                manifest = dump()
                if manifest is not None:
                    figures.update(bytes=manifest.bytes, stored_bytes=manifest.stored_bytes)
            if manifest is None:
                return
            with run.step(f"verify {item.kind} {item.name}") as figures:
                manifest.verification = verify_backup(catalog=catalog, manifest=manifest)
                figures["verification"] = manifest.verification.status
            with run.step(f"publish {item.kind} {item.name}"):
                publish_backup(catalog=catalog, claim=claim, manifest=manifest)
            item.backup_id, item.bytes, item.stored_bytes = manifest.backup_id, manifest.bytes, manifest.stored_bytes
            item.verification = manifest.verification
            dump_seconds = (manifest.finished_at - manifest.started_at).total_seconds()
            item.throughput_mb_s = manifest.bytes / 1e6 / max(dump_seconds, 1e-6)
            item.status = "succeeded" if manifest.verified else "verification_failed"
            if manifest.verified:  # what the "no successful backup for 26 h" automation waits for
                run.steps.event("backup.succeeded", about=f"{item.kind}.{item.name}", backup_id=manifest.backup_id,
                                bytes=manifest.bytes)
            if not manifest.verified:
                detail = manifest.verification.detail if manifest.verification else "?"
                item.error = f"ALERT: verification failed: {detail}"
                logger.error("ALERT: %s %r backup %s failed verification; it is kept, marked failed",
                             item.kind, item.name, manifest.backup_id)
        except RunbookError as exc:
            item.status, item.error = "failed", scrub(str(exc))
            logger.error("Backup of %s %r failed: %s", item.kind, item.name, item.error)
            _abandon(item, manifest)
        except Exception as exc:  # unexpected: still report it, then fail the run
            item.status, item.error = "failed", scrub(f"{type(exc).__name__}: {exc}")
            logger.exception("Backup of %s %r failed unexpectedly", item.kind, item.name)
            _abandon(item, manifest)
        finally:
            item.seconds = time.monotonic() - t0
            result.items.append(item)

    for name, database in databases.items():
        if params.dry_run:
            with run.step(f"probe {name}"):
                try:
                    probe = probe_database(name=name, database=database)
                    result.items.append(ItemResult(kind="database", name=name, status="dry_run",
                                                   database_size=probe.size_bytes))
                    logger.info("Would back up %r (%s, PostgreSQL %s)", name, human_bytes(probe.size_bytes),
                                probe.server_version)
                except RunbookError as exc:
                    result.items.append(ItemResult(kind="database", name=name, status="failed",
                                                   error=scrub(str(exc))))
            continue
        back_up(ItemResult(kind="database", name=name, status="failed"), functools.partial(
            dump_database, catalog=catalog, claim=claim, name=name, database=database,
            level=cfg.compression_level, threads=cfg.compression_threads, flow_run_id=run.flow_run_id))

    if with_cluster:
        if params.dry_run:
            result.items.append(ItemResult(kind="cluster", name=cluster.name, status="dry_run"))
            logger.info("Would back up globals and %d config files of cluster %r", len(cluster.config_files),
                        cluster.name)
        else:
            assert claim is not None
            cluster_claim = claim
            back_up(ItemResult(kind="cluster", name=cluster.name, status="failed"), lambda: dump_cluster(
                catalog=catalog, claim=cluster_claim, cluster_name=cluster.name, database=cluster.database(),
                config_files=cluster.config_files, level=cfg.compression_level,
                threads=cfg.compression_threads, flow_run_id=run.flow_run_id))

    for name, instance in instances.items():
        if params.dry_run:
            with run.step(f"probe redis {name}"):
                try:
                    seen = probe_redis(name=name, settings=instance)
                    result.items.append(ItemResult(kind="redis", name=name, status="dry_run",
                                                   database_size=seen.used_memory))
                    logger.info("Would back up Redis %r (%d keys, Redis %s, RDB %s)", name, seen.key_count,
                                seen.version, seen.rdb)
                except RunbookError as exc:
                    result.items.append(ItemResult(kind="redis", name=name, status="failed", error=scrub(str(exc))))
            continue
        back_up(ItemResult(kind="redis", name=name, status="failed"), functools.partial(
            dump_redis, catalog=catalog, claim=claim, name=name, settings=instance, level=cfg.compression_level,
            threads=cfg.compression_threads, flow_run_id=run.flow_run_id))

    if params.apply_retention:
        for item in result.items:
            if item.status not in ("succeeded", "dry_run"):
                continue  # retention only after a good backup of that name
            with run.step(f"retention {item.kind} {item.name}", destructive=not params.dry_run) as figures:
                try:
                    item.retention = apply_retention(catalog=catalog, kind=item.kind, name=item.name,
                                                     policy=cfg.retention, dry_run=params.dry_run)
                    figures["removed"] = len(item.retention.removed)
                except RunbookError as exc:
                    item.error = f"retention failed: {scrub(str(exc))}"

    return conclude()
