"""The repository's layout and lifecycle of backups in it: claim, publish, list, find leftovers, delete.

Layout (relative to the repository root)::

    databases/<database>/<backup id>/lock.json        claimed first, create-if-absent: who is writing here
    databases/<database>/<backup id>/dump.pgc.zst     pg_dump custom format, zstd
    databases/<database>/<backup id>/manifest.json    written last: the backup exists from here on
    clusters/<cluster>/<backup id>/{globals.sql.zst,config.tar.zst,manifest.json,lock.json}

A run *claims* its backup id: it creates each ``lock.json`` only if absent (a conditional put on S3), so two
runs starting in the same second never share a directory; the loser moves on to the next second. The lock
carries a token and a heartbeat the writer refreshes while it works; a run deletes only objects it wrote, and
only a lock that still carries its token.

A directory without ``manifest.json`` is an unfinished backup: it is never listed, and once its writer is gone
(dead process on this host, or no heartbeat for ``stale_after`` from any host) the next run removes it. A
directory whose manifest cannot be read is a *damaged* backup: listed as damaged, never swept, never deleted
by retention, and never silently skipped when a restore picks "latest".

A run that depends on a backup (a restore waiting for approval) *holds* it:
``holds/<kind>/<name>/<backup id>/<holder>.json`` with an expiry; retention never deletes a held backup, and a
hold left by a killed run lapses at its expiry.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import AwareDatetime, BaseModel, ValidationError

from runbooks.adapters.processes import ProcessIdentity
from runbooks.adapters.repository import Repository
from runbooks.adapters.repository.leases import Heartbeat
from runbooks.core.errors import BackupDamaged, BackupNotFound, LockLost, RepositoryUnavailable, RunbookError
from runbooks.decisions.listing import (  # noqa: F401  (re-exported: the catalog's vocabulary)
    KIND_DIRS,
    KINDS_BY_DIR,
    DamagedBackup,
    IncompleteUpload,
    Leftover,
    ObjectInfo,
    backup_prefix,
)
from runbooks.decisions.manifest import BackupKind, BackupManifest, backup_id_for

MANIFEST = "manifest.json"
LOCK = "lock.json"
HOLDS = "holds"
_log = logging.getLogger(__name__)


class BackupHold(BaseModel):
    backup_id: str
    holder: str
    reason: str
    until: AwareDatetime


class BackupLock(BaseModel):
    """What ``lock.json`` says: the writer, its claim token, and when it last showed it was alive."""

    token: str
    writer: ProcessIdentity
    started_at: AwareDatetime
    heartbeat_at: AwareDatetime
    flow_run_id: str | None = None


def _inside(key: str, prefix: str) -> bool:
    """Is ``key`` an object directly in the backup directory ``prefix`` (no ``..``, no subdirectory)?"""
    rest = key.removeprefix(prefix + "/")
    return key.startswith(prefix + "/") and rest not in ("", ".", "..") and "/" not in rest


@dataclass
class CatalogScan:
    manifests: list[BackupManifest]
    damaged: list[DamagedBackup]


class BackupClaim:
    """One run's claim on its backup directories (one per subject, same backup id): each directory's
    ``lock.json`` is a lease kept alive by one heartbeat until it is published or discarded."""

    def __init__(self, catalog: BackupCatalog, backup_id: str, lock: BackupLock,
                 subjects: list[tuple[BackupKind, str]], heartbeat_seconds: float) -> None:
        self.catalog = catalog
        self.backup_id = backup_id
        self.lock = lock
        self._subjects = list(subjects)
        self._heartbeat = Heartbeat(catalog.repository, every=heartbeat_seconds,
                                    name=f"backup-heartbeat-{backup_id}", what="claim on")
        body = lock.model_dump_json().encode()
        for kind, name in subjects:
            self._heartbeat.hold(self._lock_key(kind, name), lock, body)

    @property
    def token(self) -> str:
        return self.lock.token

    def prefix(self, kind: BackupKind, name: str) -> str:
        return backup_prefix(kind, name, self.backup_id)

    def _lock_key(self, kind: BackupKind, name: str) -> str:
        return f"{self.prefix(kind, name)}/{LOCK}"

    def release(self, kind: BackupKind, name: str) -> None:
        """Stop refreshing this subject's lock (it is being published or discarded)."""
        self._heartbeat.drop(self._lock_key(kind, name))

    def ensure(self, kind: BackupKind, name: str) -> None:
        """Raise LockLost unless this run still holds the subject's lock."""
        if self._heartbeat.lost(self._lock_key(kind, name)) or \
                self.catalog.read_lock(self.prefix(kind, name)) != self.token:
            raise LockLost(f"the claim on {self.prefix(kind, name)} was lost: another run swept or took it, so "
                           "this backup is not published.", hint="check for a concurrent backup run, then rerun.")

    def close(self) -> None:
        """Stop the heartbeat; remove locks of subjects never written (a lock alone is all there is)."""
        self._heartbeat.stop()
        held = set(self._heartbeat.held())
        for kind, name in sorted(self._subjects):
            if self._lock_key(kind, name) not in held:
                continue
            prefix = self.prefix(kind, name)
            try:
                others = [o for o in self.catalog.repository.list_objects(prefix + "/")
                          if o.key != f"{prefix}/{LOCK}"]
                if not others:
                    self.catalog.release_lock(prefix, self.token)
            except RunbookError as exc:
                _log.warning("Could not release %s (the next run sweeps it): %s", prefix, exc)
            self._heartbeat.drop(self._lock_key(kind, name))


class BackupCatalog:
    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    # -- writing -----------------------------------------------------------------------------------------
    def read_lock(self, prefix: str) -> str | None:
        """The token of the lock at ``prefix``, or None if there is none (or it cannot be read)."""
        try:
            return BackupLock.model_validate_json(self.repository.get_bytes(f"{prefix}/{LOCK}")).token
        except (BackupNotFound, ValidationError):
            return None

    def release_lock(self, prefix: str, token: str) -> None:
        """Delete the lock only if it is still ours."""
        if self.read_lock(prefix) == token:
            self.repository.delete([f"{prefix}/{LOCK}"])

    def claim(self, subjects: list[tuple[BackupKind, str]], *, flow_run_id: str | None,
              heartbeat_seconds: float = 60.0, now: datetime | None = None, attempts: int = 120) -> BackupClaim:
        """Claim one backup id for every subject: the first second from ``now`` where every lock could be created
        (create-if-absent) in a directory holding nothing else."""
        moment = (now or datetime.now(UTC)).replace(microsecond=0)
        started = datetime.now(UTC)
        lock = BackupLock(token=uuid.uuid4().hex, writer=ProcessIdentity.current(), started_at=started,
                          heartbeat_at=started, flow_run_id=flow_run_id)
        body = lock.model_dump_json().encode()
        for _ in range(attempts):
            backup_id = backup_id_for(moment)
            claimed: list[str] = []
            won = True
            try:
                won = self._claim_all(subjects, backup_id, lock, body, claimed)
            except BaseException:
                for prefix in claimed:
                    self.release_lock(prefix, lock.token)
                raise
            if won:
                return BackupClaim(self, backup_id, lock, list(subjects), heartbeat_seconds)
            for prefix in claimed:
                self.release_lock(prefix, lock.token)
            moment += timedelta(seconds=1)
        raise RepositoryUnavailable(f"could not claim a backup id in {self.repository.url} after {attempts} tries.",
                                    hint="many backup runs at once? Rerun later.")

    def _claim_all(self, subjects: list[tuple[BackupKind, str]], backup_id: str, lock: BackupLock, body: bytes,
                   claimed: list[str]) -> bool:
        for kind, name in subjects:
            prefix = backup_prefix(kind, name, backup_id)
            if not self.repository.put_bytes_if_absent(f"{prefix}/{LOCK}", body):
                return False
            claimed.append(prefix)
            # A finished backup at this id (its lock gone) or a server that ignored the condition.
            others = any(o.key != f"{prefix}/{LOCK}" for o in self.repository.list_objects(prefix + "/"))
            if others or self.read_lock(prefix) != lock.token:
                return False
        return True

    def publish(self, manifest: BackupManifest, claim: BackupClaim) -> None:
        """Write the manifest if absent (the backup becomes visible), then drop our lock. Idempotent for a retry
        of the same manifest; never overwrites another's."""
        prefix = claim.prefix(manifest.kind, manifest.name)
        body = manifest.model_dump_json(indent=2).encode()
        key = f"{prefix}/{MANIFEST}"
        if self.repository.exists(key):
            if self.repository.get_bytes(key) != body:
                raise LockLost(f"{prefix} already has another run's manifest; this backup is not published.",
                               hint="check for a concurrent backup run, then rerun.")
        else:
            claim.ensure(manifest.kind, manifest.name)
            missing = [o.key for o in manifest.objects if not self.repository.exists(o.key)]
            if missing:
                raise LockLost(f"{prefix} lost objects before publishing ({', '.join(missing)}): another run swept "
                               "them; this backup is not published.", hint="rerun the backup.")
            claim.release(manifest.kind, manifest.name)
            if not self.repository.put_bytes_if_absent(key, body) and self.repository.get_bytes(key) != body:
                raise LockLost(f"{prefix} got another run's manifest while this one published.",
                               hint="check for a concurrent backup run, then rerun.")
        claim.release(manifest.kind, manifest.name)
        self.release_lock(prefix, claim.token)

    def discard(self, claim: BackupClaim, kind: BackupKind, name: str, keys: list[str], *,
                release: bool = True) -> None:
        """Remove what this run wrote for an unfinished backup (``keys``, their uploads), then, with
        ``release``, its own lock (a task that may be retried keeps the claim)."""
        prefix = claim.prefix(kind, name)
        if release:
            claim.release(kind, name)
        if self.read_lock(prefix) != claim.token:
            _log.warning("Not cleaning %s: its lock is no longer this run's, so neither may its objects be", prefix)
            return
        for upload in self.repository.list_incomplete_uploads(prefix + "/"):
            if upload.key in keys:
                self.repository.abort_incomplete_upload(upload)
        self.repository.delete(keys)
        if release:
            self.release_lock(prefix, claim.token)

    # -- reading -----------------------------------------------------------------------------------------
    def scan(self, *, kind: BackupKind | None = None, name: str | None = None) -> CatalogScan:
        """Every published backup (oldest first) and every damaged one: a manifest that does not parse, or that
        names another backup than the directory it sits in."""
        kinds: Iterable[BackupKind] = [kind] if kind else list(KIND_DIRS)
        found: list[BackupManifest] = []
        damaged: list[DamagedBackup] = []
        for k in kinds:
            prefix = f"{KIND_DIRS[k]}/{name}/" if name else f"{KIND_DIRS[k]}/"
            by_dir: dict[str, list[ObjectInfo]] = {}
            for obj in self.repository.list_objects(prefix):
                parts = obj.key.split("/")
                if len(parts) == 4:
                    by_dir.setdefault("/".join(parts[:3]), []).append(obj)
            for directory, objects in by_dir.items():
                if not any(o.key.endswith("/" + MANIFEST) for o in objects):
                    continue  # unfinished: never listed
                _, dir_name, dir_id = directory.split("/")
                reason = None
                try:
                    manifest = BackupManifest.model_validate_json(
                        self.repository.get_bytes(f"{directory}/{MANIFEST}"))
                    if (manifest.kind, manifest.name, manifest.backup_id) != (k, dir_name, dir_id):
                        reason = (f"naming another backup ({manifest.kind} {manifest.name!r} {manifest.backup_id})"
                                  " than the directory it is in")
                    elif foreign := [o.key for o in manifest.objects if not _inside(o.key, directory)]:
                        reason = f"listing objects outside its directory ({', '.join(foreign[:3])})"
                except ValidationError as exc:
                    first = exc.errors()[0]
                    reason = f"unreadable ({first['type']}: {first['msg']})"
                except BackupNotFound:
                    continue  # deleted between listing and reading
                if reason is None:
                    found.append(manifest)
                else:
                    damaged.append(DamagedBackup(kind=k, name=dir_name, backup_id=dir_id, reason=reason,
                                                 objects=[o for o in objects if not o.key.endswith("/" + MANIFEST)]))
        return CatalogScan(sorted(found, key=lambda m: (m.started_at, m.backup_id, m.kind, m.name)),
                           sorted(damaged, key=lambda d: (d.backup_id, d.kind, d.name)))

    def list_backups(self, *, kind: BackupKind | None = None, name: str | None = None) -> list[BackupManifest]:
        """Every published backup with a readable manifest, oldest first (``scan`` also gives the damaged)."""
        return self.scan(kind=kind, name=name).manifests

    def find_or_raise(self, backup_id: str, *, name: str | None = None) -> list[BackupManifest]:
        scan = self.scan(name=name)
        matches = [m for m in scan.manifests if m.backup_id == backup_id]
        if not matches:
            damaged = [d for d in scan.damaged if d.backup_id == backup_id]
            if damaged:
                raise BackupDamaged(f"backup {backup_id} of {damaged[0].name!r} is DAMAGED: "
                                    f"{damaged[0].recovery(self.repository.url)}.",
                                    hint="pick another with 'runbooks backups list'.")
            unfinished = [lo for lo in self.unfinished() if lo.prefix.endswith("/" + backup_id)]
            if unfinished:
                raise BackupNotFound(
                    f"backup {backup_id} has no manifest; it was interrupted and is not restorable.",
                    hint="pick another with 'runbooks backups list'; the next backup run removes it.",
                )
            raise BackupNotFound(
                f"no backup {backup_id}{f' of {name!r}' if name else ''} in {self.repository.url}.",
                hint="list the available ones with 'runbooks backups list'.",
            )
        return matches

    # -- leftovers ---------------------------------------------------------------------------------------
    def unfinished(self) -> list[Leftover]:
        """Backup directories without a manifest, and incomplete uploads, grouped by backup."""
        groups: dict[str, Leftover] = {}
        published: set[str] = set()
        for kind_dir in KIND_DIRS.values():
            # Uploads first: a backup starting between the two listings then shows its lock too.
            uploads = self.repository.list_incomplete_uploads(kind_dir + "/")
            for obj in self.repository.list_objects(kind_dir + "/"):
                parts = obj.key.split("/")
                if len(parts) != 4:
                    continue
                prefix = "/".join(parts[:3])
                if parts[3] == MANIFEST:
                    published.add(prefix)
                entry = groups.setdefault(prefix, Leftover(prefix=prefix, reason=""))
                entry.keys.append(obj.key)
                entry.stored_bytes += obj.size
                if parts[3] == LOCK:
                    entry.lock_modified = obj.modified
            for upload in uploads:
                prefix = "/".join(upload.key.split("/")[:3])
                groups.setdefault(prefix, Leftover(prefix=prefix, reason="")).uploads.append(upload)
        result = []
        for prefix, entry in sorted(groups.items()):
            if prefix in published:
                if entry.uploads:  # a published backup never has uploads in flight: these are orphans
                    result.append(Leftover(prefix=prefix, reason="orphaned upload", uploads=entry.uploads))
                continue
            result.append(entry)
        return result

    def stale_leftovers(self, *, stale_after: timedelta, now: datetime | None = None) -> list[Leftover]:
        """Unfinished backups whose writer is gone: a dead process on this host, or no heartbeat for
        ``stale_after`` from anywhere. A backup still being written, here or elsewhere, is left alone."""
        now = now or datetime.now(UTC)
        stale = []
        for entry in self.unfinished():
            if entry.reason == "orphaned upload":
                stale.append(entry)
                continue
            lock_key = f"{entry.prefix}/{LOCK}"
            if lock_key not in entry.keys:
                newest = max([u.initiated for u in entry.uploads], default=None)
                if newest is not None and not entry.keys and now - newest <= stale_after:
                    continue  # only an upload, and a recent one: its lock may simply not be listed yet
                entry.reason = "no lock and no manifest"
                stale.append(entry)
                continue
            try:
                lock: BackupLock | None = BackupLock.model_validate_json(self.repository.get_bytes(lock_key))
            except ValidationError:
                lock = None  # a legacy or half-written lock: judged by the object's own time
            except BackupNotFound:
                continue  # published or removed since the listing
            # The storage's own clock when it has one (a writer's clock may be skewed), else the lock's word.
            last = entry.lock_modified or (lock.heartbeat_at if lock else None)
            if lock is not None and lock.writer.on_this_host:
                if lock.writer.alive():
                    continue  # a live writer here is never swept, however slow
                entry.reason = f"writer process {lock.writer.pid} on this host is gone"
            elif last is None or now - last > stale_after:
                seen = f"{last:%Y-%m-%d %H:%M}Z" if last else "never"
                entry.reason = f"no heartbeat since {seen} (stale after {stale_after})"
            else:
                continue
            stale.append(entry)
        return stale

    def remove_leftover(self, leftover: Leftover) -> bool:
        """Abort uploads, delete objects, and the lock last, so an interrupted sweep is simply redone.

        Returns False (and removes nothing) if the backup was published since it was listed.
        """
        if leftover.keys and self.repository.exists(f"{leftover.prefix}/{MANIFEST}"):
            return False
        for upload in leftover.uploads:
            self.repository.abort_incomplete_upload(upload)
        lock_key = f"{leftover.prefix}/{LOCK}"
        self.repository.delete([k for k in leftover.keys if k != lock_key])
        if lock_key in leftover.keys:
            self.repository.delete([lock_key])
        return True

    def delete_backup(self, manifest: BackupManifest) -> None:
        """Manifest first: the backup disappears atomically; objects left by an interrupted delete are
        then ordinary leftovers (no lock, no manifest) that the next sweep removes."""
        prefix = backup_prefix(manifest.kind, manifest.name, manifest.backup_id)
        self.repository.delete([f"{prefix}/{MANIFEST}"])
        self.repository.delete([o.key for o in manifest.objects if _inside(o.key, prefix)])
        self.repository.delete([o.key for o in self.repository.list_objects(prefix + "/")])

    # -- holds -------------------------------------------------------------------------------------------
    def _hold_key(self, kind: BackupKind, name: str, backup_id: str, holder: str) -> str:
        return f"{HOLDS}/{KIND_DIRS[kind]}/{name}/{backup_id}/{holder}.json"

    def holds(self, kind: BackupKind, name: str, *, now: datetime | None = None) -> dict[str, list[BackupHold]]:
        """Unexpired holds on the backups of one database (or cluster), by backup id."""
        now = now or datetime.now(UTC)
        found: dict[str, list[BackupHold]] = {}
        for obj in self.repository.list_objects(f"{HOLDS}/{KIND_DIRS[kind]}/{name}/"):
            try:
                hold = BackupHold.model_validate_json(self.repository.get_bytes(obj.key))
            except (ValidationError, BackupNotFound):
                continue
            if hold.until > now:
                found.setdefault(hold.backup_id, []).append(hold)
        return found

    def _drop_lapsed_holds(self, kind: BackupKind, name: str) -> None:
        """Holds left by killed runs lapse at their expiry; their objects go when the next hold is taken."""
        now = datetime.now(UTC)
        for obj in list(self.repository.list_objects(f"{HOLDS}/{KIND_DIRS[kind]}/{name}/")):
            try:
                lapsed = BackupHold.model_validate_json(self.repository.get_bytes(obj.key)).until <= now
            except (ValidationError, BackupNotFound):
                continue
            if lapsed:
                self.repository.delete([obj.key])

    @contextmanager
    def holding(self, manifest: BackupManifest, *, holder: str, reason: str, until: datetime) -> Iterator[None]:
        """Hold ``manifest``'s backup for the block; it must still exist once held (retention may have raced)."""
        self._drop_lapsed_holds(manifest.kind, manifest.name)
        key = self._hold_key(manifest.kind, manifest.name, manifest.backup_id, holder)
        hold = BackupHold(backup_id=manifest.backup_id, holder=holder, reason=reason, until=until)
        self.repository.put_bytes(key, hold.model_dump_json().encode())
        try:
            if not self.repository.exists(f"{backup_prefix(manifest.kind, manifest.name, manifest.backup_id)}/"
                                          f"{MANIFEST}"):
                raise BackupNotFound(f"backup {manifest.backup_id} of {manifest.name!r} was deleted while this run "
                                     "was taking it.", hint="pick another with 'runbooks backups list'.")
            yield
        finally:
            self.repository.delete([key])

