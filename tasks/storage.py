"""Tasks on the backup repository: writability, leftover sweep, verification, publishing, retention, and
fetching what a restore needs (dumps, configuration files)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Literal

from prefect import get_run_logger
from pydantic import BaseModel, Field

from runbooks.adapters.catalog import BackupCatalog, BackupClaim
from runbooks.adapters.pipeline import check_object, fetch_object
from runbooks.adapters.postgres import pg_tool
from runbooks.adapters.records import DrillRecords
from runbooks.core.errors import BackupDamaged, BackupNotFound, VerificationFailed
from runbooks.decisions.drill import DrillRecord
from runbooks.decisions.manifest import BackupKind, BackupManifest, Verification, backup_id_for
from runbooks.decisions.retention import Candidate, select_retention
from runbooks.decisions.weekly import BackupWeek, backups_in_window
from runbooks.settings import RetentionPolicy
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task


class LeftoverReport(BaseModel):
    prefix: str
    reason: str
    objects: int
    incomplete_uploads: int
    stored_bytes: int
    removed: bool


class RetentionReport(BaseModel):
    kind: BackupKind
    name: str
    kept: dict[str, list[str]] = Field(description="backup id -> why it is kept")
    removed: list[str] = Field(description="deleted (or, in dry-run, would be deleted)")
    damaged: list[str] = Field(default_factory=list, description="backups whose manifest cannot be read: "
                               "never deleted by retention, shown so someone deals with them")
    dry_run: bool


@step_task("check-repository-writable", **TRANSIENT_RETRY)
def check_repository_writable(*, catalog: BackupCatalog) -> None:
    """Fail before dumping anything if the repository would refuse the upload."""
    catalog.repository.check_writable()


@step_task("claim-backup-id", **TRANSIENT_RETRY)
def claim_backup_id(*, catalog: BackupCatalog, subjects: list[tuple[BackupKind, str]], flow_run_id: str | None,
                    heartbeat_seconds: float) -> BackupClaim:
    """Claim one backup id for every database (and the cluster) of this run, atomically in the repository.

    Returns:
        The claim; its heartbeat keeps the locks fresh until each backup is published or discarded.
    """
    claim = catalog.claim(subjects, flow_run_id=flow_run_id, heartbeat_seconds=heartbeat_seconds)
    get_run_logger().info("Claimed backup id %s for %d backups", claim.backup_id, len(subjects))
    return claim


@step_task("sweep-leftovers", mutates=True, **TRANSIENT_RETRY)
def sweep_leftovers(*, catalog: BackupCatalog, stale_after: timedelta, dry_run: bool) -> list[LeftoverReport]:
    """Remove what interrupted backups left behind (objects and incomplete multipart uploads).

    Returns:
        One report per unfinished backup found; ``removed`` is False in dry-run.
    """
    logger = get_run_logger()
    reports = []
    for leftover in catalog.stale_leftovers(stale_after=stale_after):
        removed = False
        if dry_run:
            logger.info("Would remove unfinished backup %r (%s)", leftover.prefix, leftover.reason)
        else:
            removed = catalog.remove_leftover(leftover)
            if removed:
                logger.info("Removed unfinished backup %r (%s): %d objects, %d incomplete uploads",
                            leftover.prefix, leftover.reason, len(leftover.keys), len(leftover.uploads))
        reports.append(LeftoverReport(prefix=leftover.prefix, reason=leftover.reason, objects=len(leftover.keys),
                                      incomplete_uploads=len(leftover.uploads),
                                      stored_bytes=leftover.stored_bytes, removed=removed))
    return reports


@step_task("verify-backup", **TRANSIENT_RETRY)
def verify_backup(*, catalog: BackupCatalog, manifest: BackupManifest) -> Verification:
    """Re-read every stored object: size and SHA-256 must match what was written, and the dump must open
    with ``pg_restore --list``. A mismatch is reported in the result, not raised, so the backup is
    published marked as failed instead of disappearing silently.
    """
    logger = get_run_logger()
    started = time.monotonic()
    toc_entries = None
    try:
        for obj in manifest.objects:
            list_argv = None
            magic = b"REDIS" if obj.role == "rdb" else None
            if obj.role == "dump":
                major = int(manifest.server_version.split(".")[0]) if manifest.server_version else None
                list_argv = [pg_tool("pg_restore", major), "--list"]
            check = check_object(catalog.repository, obj.key, list_argv=list_argv, magic=magic,
                                 decompress_all=list_argv is None and magic is None)
            if check.stored_bytes != obj.stored_bytes or check.sha256 != obj.sha256:
                raise VerificationFailed(
                    f"object {obj.key!r} re-read as {check.stored_bytes} bytes sha256 {check.sha256[:12]}…, "
                    f"written as {obj.stored_bytes} bytes sha256 {obj.sha256[:12]}…."
                )
            if check.error:
                raise VerificationFailed(f"{check.error}.")
            if check.listing is not None:
                toc_entries = sum(1 for line in check.listing.splitlines() if line and not line.startswith(";"))
    except VerificationFailed as exc:
        logger.error("Verification of %s %r backup %s FAILED: %s", manifest.kind, manifest.name,
                     manifest.backup_id, exc)
        return Verification(status="failed", checked_at=datetime.now(UTC), seconds=time.monotonic() - started,
                            detail=str(exc))
    seconds = time.monotonic() - started
    logger.info("Verified %s %r backup %s in %.1f s", manifest.kind, manifest.name, manifest.backup_id, seconds)
    return Verification(status="passed", checked_at=datetime.now(UTC), seconds=seconds,
                        detail="checksums match; pg_restore --list reads the archive" if toc_entries is not None
                        else "checksums match; an RDB as redis-check-rdb read it on its way in"
                        if manifest.kind == "redis" else "checksums match", toc_entries=toc_entries)


@step_task("publish-backup", **TRANSIENT_RETRY)
def publish_backup(*, catalog: BackupCatalog, claim: BackupClaim, manifest: BackupManifest) -> None:
    """Write the manifest last: from this moment the backup is listed and restorable."""
    catalog.publish(manifest, claim)
    get_run_logger().info("Published %s %r backup %s", manifest.kind, manifest.name, manifest.backup_id)


@step_task("apply-retention", mutates=True, **TRANSIENT_RETRY)
def apply_retention(
    *, catalog: BackupCatalog, kind: BackupKind, name: str, policy: RetentionPolicy, dry_run: bool
) -> RetentionReport:
    """Delete backups outside the grandfather-father-son policy, oldest first (dry-run: only report).

    Returns:
        What was kept and why, and what went.
    """
    logger = get_run_logger()
    scan = catalog.scan(kind=kind, name=name)
    manifests = {m.backup_id: m for m in scan.manifests}
    for damaged in scan.damaged:
        logger.warning("%s %r backup %s is DAMAGED and kept: %s", kind, name, damaged.backup_id,
                       damaged.recovery(catalog.repository.url))

    def held() -> dict[str, str]:
        return {backup_id: f"held by run {hs[0].holder} ({hs[0].reason}) until {hs[0].until:%Y-%m-%d %H:%M}Z"
                for backup_id, hs in catalog.holds(kind, name).items()}

    plan = select_retention(
        [Candidate(m.backup_id, m.started_at, m.verified) for m in manifests.values()], policy, held()
    )
    for backup_id in list(plan.remove):
        if dry_run:
            logger.info("Would delete %s %r backup %s (outside retention)", kind, name, backup_id)
        elif backup_id in (now_held := held()):  # held since the plan was made: a restore is taking it
            plan.remove.remove(backup_id)
            plan.keep.setdefault(backup_id, []).append(now_held[backup_id])
            logger.info("Kept %s %r backup %s: %s", kind, name, backup_id, now_held[backup_id])
        else:
            catalog.delete_backup(manifests[backup_id])
            logger.info("Deleted %s %r backup %s (outside retention)", kind, name, backup_id)
    return RetentionReport(kind=kind, name=name, kept=plan.keep, removed=plan.remove,
                           damaged=[d.backup_id for d in scan.damaged], dry_run=dry_run)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@step_task("resolve-backup", **TRANSIENT_RETRY)
def resolve_backup_or_raise(*, catalog: BackupCatalog, database: str, backup_id: str,
                            before: datetime | None, kind: BackupKind = "database") -> BackupManifest:
    """Turn ``latest`` / an id / ``latest`` + ``before`` into one published, verified backup of ``database``.

    Returns:
        Its manifest. Refuses (BackupNotFound / BackupDamaged / VerificationFailed) rather than guessing.
    """
    catalog.repository.check_exists()  # a mistyped repository.url is not "no backup"
    if backup_id != "latest":
        found = catalog.find_or_raise(backup_id, name=database)
        manifest = next((m for m in found if m.kind == kind), found[0])  # a database and an instance may share a name
        if manifest.kind != kind:
            raise BackupNotFound(f"backup {backup_id} of {database!r} is a {manifest.kind} backup, not a {kind} "
                                 "one.", hint="'runbooks backups list' shows each backup's kind.")
    else:
        scan = catalog.scan(kind=kind, name=database)
        candidates = scan.manifests
        damaged = scan.damaged
        if before is not None:  # the same cutoff for both, so "latest before" never skips a damaged one
            cutoff_id = backup_id_for(_aware(before))
            candidates = [m for m in candidates if m.started_at < _aware(before)]
            damaged = [d for d in damaged if d.backup_id < cutoff_id]
        newest = candidates[-1].backup_id if candidates else ""
        if damaged and damaged[-1].backup_id > newest:
            # "latest" must not quietly mean "the newest one that happens to read": that loses data.
            older = f"backup_id={newest} restores the newest readable one; " if newest else ""
            raise BackupDamaged(
                f"the newest backup of {database!r}{' before the cutoff' if before else ''}, "
                f"{damaged[-1].backup_id}, is DAMAGED: {damaged[-1].recovery(catalog.repository.url)}.",
                hint=f"{older}'runbooks backups list' shows them all.")
        candidates = scan.manifests
        if not candidates:
            raise BackupNotFound(f"there is no backup of {database!r} in {catalog.repository.url}.",
                                 hint="run the backup runbook first, or check repository.url.")
        if before is not None:
            cutoff = _aware(before)
            earlier = [m for m in candidates if m.started_at < cutoff]
            if not earlier:
                raise BackupNotFound(
                    f"no backup of {database!r} was taken before {cutoff:%Y-%m-%d %H:%M:%S}Z; the first one is "
                    f"{candidates[0].backup_id} ({candidates[0].started_at:%Y-%m-%d %H:%M:%S}Z).",
                    hint="pick a later 'before' or a backup id from 'runbooks backups list'.",
                )
            candidates = earlier
        verified = [m for m in candidates if m.verified]
        if not verified:
            raise VerificationFailed(f"no verified backup of {database!r} matches.",
                                     hint="'runbooks backups list' shows each backup's verification state.")
        manifest = verified[-1]
    if not manifest.verified:
        raise VerificationFailed(
            f"backup {manifest.backup_id} of {database!r} failed verification when it was taken; it is never "
            "restored.", hint="pick another with 'runbooks backups list'.")
    get_run_logger().info("Using backup %s of %r (taken %s, %s stored)", manifest.backup_id, database,
                          f"{manifest.started_at:%Y-%m-%d %H:%M:%S}Z", manifest.stored_bytes)
    return manifest


@step_task("find-cluster-backup", **TRANSIENT_RETRY)
def find_cluster_backup(*, catalog: BackupCatalog, cluster: str, backup_id: str) -> BackupManifest | None:
    """Returns:
    The verified cluster (globals) backup of the same run as the database backup, else the newest earlier one.
    (Ids are UTC timestamps, so they order like the runs.)"""
    found = [m for m in catalog.list_backups(kind="cluster", name=cluster)
             if m.verified and m.backup_id <= backup_id and any(o.role == "globals" for o in m.objects)]
    return found[-1] if found else None


@step_task("fetch-backup", **TRANSIENT_RETRY)
def fetch_backup(*, catalog: BackupCatalog, manifest: BackupManifest, role: str, dest: Path,
                 settle: bool = True) -> Path:
    """Stream one object of a backup to a local file (decompressed), verifying it against the manifest.

    Returns:
        The local file: only ever present if its checksum matched.
    """
    obj = next(o for o in manifest.objects if o.role == role)
    started = time.monotonic()
    size = fetch_object(catalog.repository, obj.key, dest, sha256=obj.sha256, stored_bytes=obj.stored_bytes,
                        settle=settle)
    get_run_logger().info("Fetched and verified %r (%d bytes) in %.1f s", obj.key, size, time.monotonic() - started)
    return dest


class RestoredFile(BaseModel):
    """A configuration file restored into a scratch directory, checked against what was archived."""

    path: str = Field(description="where it lived when it was backed up")
    restored_to: str | None = None
    status: Literal["intact", "differs", "missing", "unchecked"] = Field(
        description="against the checksum taken as it was archived; 'unchecked': the backup predates per-file "
        "checksums, so damage cannot be told from a change since")
    against_original: Literal["unchanged", "changed", "absent", "not_configured"] = Field(
        description="the file on this host now: changed since the backup is drift, not damage; only files of "
        "cluster.config_files are read ('not_configured': not compared)")
    bytes: int = 0
    detail: str = ""


def _sha256(path: Path) -> str | None:
    """The checksum of a regular file (never a device or a FIFO, which could be read forever), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _member_path(name: str) -> PurePosixPath | None:
    """A tar member name as a path below the destination, or None if it could point anywhere else."""
    path = PurePosixPath(name.lstrip("/"))
    if not path.parts or any(part in ("", ".", "..") for part in path.parts):
        return None
    return path


def _write_member(archive: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, relative: PurePosixPath) -> str:
    """Copy one regular file out of the archive below ``dest`` (0700 directories, a new 0600 file that is never
    a followed link), hashing the bytes written."""
    target = dest
    for part in relative.parts[:-1]:
        target = target / part
        if not target.is_dir() or target.is_symlink():
            target.mkdir(mode=0o700)
    source = archive.extractfile(member)
    assert source is not None
    digest = hashlib.sha256()
    fd = os.open(target / relative.parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


@step_task("restore-config-files", **TRANSIENT_RETRY)
def restore_config_files(*, catalog: BackupCatalog, manifest: BackupManifest, dest: Path,
                         originals: list[Path]) -> list[RestoredFile]:
    """Unpack a cluster backup's configuration files into ``dest`` (never over the originals) and check each.

    Only regular files are written, each under its own name below ``dest``; links, devices and names that
    climb out are refused, never extracted (the archive is data from the repository, not trusted paths).

    Returns:
        One entry per archived file; ``intact`` only when its bytes match the checksum taken as it was archived.
    """
    tar = fetch_backup.fn(catalog=catalog, manifest=manifest, role="config", dest=dest.parent / "config.tar")
    shutil.rmtree(dest, ignore_errors=True)  # a retry of this task starts clean
    dest.mkdir(mode=0o700)
    recorded = {f.path.lstrip("/"): f for f in manifest.files}
    configured = {str(p.absolute()).lstrip("/") for p in originals}  # only these host files are ever read

    def against(name: str, digest: str | None) -> Literal["unchanged", "changed", "absent", "not_configured"]:
        if name not in configured:
            return "not_configured"
        original = _sha256(Path("/" + name))
        return "absent" if original is None else "unchanged" if original == digest else "changed"

    restored: dict[str, RestoredFile] = {}
    try:
        with tarfile.open(tar) as archive:
            for member in archive:
                name = member.name.lstrip("/")
                relative = _member_path(member.name)
                if relative is None or not member.isreg() or name in restored or \
                        (recorded and name not in recorded):
                    restored[name] = RestoredFile(path="/" + name, status="differs", against_original="absent",
                                                  detail="refused: not a regular file listed in the manifest "
                                                  "under a plain name")
                    continue
                digest = _write_member(archive, member, dest, relative)
                expected = recorded[name].sha256 if name in recorded else None
                restored[name] = RestoredFile(
                    path="/" + name, restored_to=str(dest / relative), bytes=member.size,
                    status="unchecked" if expected is None else "intact" if digest == expected else "differs",
                    against_original=against(name, digest))
    finally:
        tar.unlink(missing_ok=True)
    for name in recorded.keys() - restored.keys():
        restored[name] = RestoredFile(path="/" + name, status="missing", against_original=against(name, None),
                                      detail="listed in the manifest, not in the archive")
    found = [restored[n] for n in sorted(restored)]
    bad = [f.path for f in found if f.status in ("differs", "missing")]
    logger = get_run_logger()
    if bad:
        logger.error("Configuration files not restored intact: %s", ", ".join(bad))
    else:
        logger.info("Restored %d configuration files into %s", len(found), dest)
    return found


@step_task("list-backups-in-window", **TRANSIENT_RETRY)
def list_backups_in_window(*, catalog: BackupCatalog, since: datetime, until: datetime) -> BackupWeek:
    """Every backup taken in [since, until], of every database and cluster: published ones with their
    verification, damaged ones (manifest unreadable) and incomplete ones (no manifest) shown as such.

    Returns:
        The window's backups oldest first, and the damaged ones from before it.
    """
    catalog.repository.check_exists()
    scan = catalog.scan()
    return backups_in_window(scan.manifests, scan.damaged, catalog.unfinished(), since=since, until=until)


@step_task("read-drill-records", **TRANSIENT_RETRY)
def read_drill_records(*, catalog: BackupCatalog, cluster: str, since: datetime,
                       count: int = 100) -> tuple[list[DrillRecord], DrillRecord | None]:
    """The DR game-day records kept in the repository (``records/drills/<cluster>/``).

    Returns:
        The drills started since ``since`` (oldest first), and the newest drill of all (None: never drilled).
    """
    catalog.repository.check_exists()
    records = DrillRecords(catalog.repository, cluster).recent(count)
    entries = sorted(records, key=lambda r: r.started_at)
    return [e for e in entries if e.started_at >= since], (entries[-1] if entries else None)
