"""The repository's layout and lifecycle of backups in it: begin, publish, list, find leftovers, delete.

Layout (relative to the repository root)::

    databases/<database>/<backup id>/lock.json        written first: who is writing this backup
    databases/<database>/<backup id>/dump.pgc.zst     pg_dump custom format, zstd
    databases/<database>/<backup id>/manifest.json    written last: the backup exists from here on
    clusters/<cluster>/<backup id>/{globals.sql.zst,config.tar.zst,manifest.json,lock.json}

A directory without ``manifest.json`` is an unfinished backup: it is never listed, and once its writer is
gone (dead process on this host, or older than ``stale_after``) the next run removes it.

A run that depends on a backup (a restore waiting for approval) *holds* it:
``holds/<kind>/<name>/<backup id>/<holder>.json`` with an expiry; retention never deletes a held backup, and a
hold left by a killed run lapses at its expiry.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ValidationError

from runbooks.errors import BackupNotFound
from runbooks.manifest import BackupKind, BackupManifest, backup_id_for
from runbooks.repository import IncompleteUpload, Repository

KIND_DIRS: dict[BackupKind, str] = {"database": "databases", "cluster": "clusters"}
MANIFEST = "manifest.json"
LOCK = "lock.json"
HOLDS = "holds"


class BackupHold(BaseModel):
    backup_id: str
    holder: str
    reason: str
    until: datetime


def backup_prefix(kind: BackupKind, name: str, backup_id: str) -> str:
    return f"{KIND_DIRS[kind]}/{name}/{backup_id}"


@dataclass
class Leftover:
    prefix: str
    reason: str
    keys: list[str] = field(default_factory=list)
    uploads: list[IncompleteUpload] = field(default_factory=list)
    stored_bytes: int = 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BackupCatalog:
    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    # -- writing -----------------------------------------------------------------------------------------
    def new_backup_id(self, subjects: list[tuple[BackupKind, str]], now: datetime | None = None) -> str:
        """A UTC timestamp id shared by one run's backups; bumped by a second while any subject has it."""
        moment = (now or datetime.now(UTC)).replace(microsecond=0)

        def taken(backup_id: str) -> bool:
            return any(any(True for _ in self.repository.list_objects(backup_prefix(kind, name, backup_id) + "/"))
                       for kind, name in subjects)

        while taken(backup_id_for(moment)):
            moment += timedelta(seconds=1)
        return backup_id_for(moment)

    def begin(self, kind: BackupKind, name: str, backup_id: str, *, flow_run_id: str | None) -> str:
        """Claim the backup directory with a lock naming this process, so a sweep never takes a live backup."""
        prefix = backup_prefix(kind, name, backup_id)
        lock = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": datetime.now(UTC).isoformat(),
                "flow_run_id": flow_run_id}
        self.repository.put_bytes(f"{prefix}/{LOCK}", json.dumps(lock).encode())
        return prefix

    def publish(self, manifest: BackupManifest) -> None:
        """Write the manifest (the backup becomes visible), then drop the lock."""
        prefix = backup_prefix(manifest.kind, manifest.name, manifest.backup_id)
        self.repository.put_bytes(f"{prefix}/{MANIFEST}", manifest.model_dump_json(indent=2).encode())
        self.repository.delete([f"{prefix}/{LOCK}"])

    def discard(self, kind: BackupKind, name: str, backup_id: str) -> None:
        """Remove an unfinished backup this process started (its objects, then its lock)."""
        prefix = backup_prefix(kind, name, backup_id)
        keys = [o.key for o in self.repository.list_objects(prefix + "/") if not o.key.endswith(f"/{LOCK}")]
        for upload in self.repository.list_incomplete_uploads(prefix + "/"):
            self.repository.abort_incomplete_upload(upload)
        self.repository.delete(keys)
        self.repository.delete([f"{prefix}/{LOCK}"])

    # -- reading -----------------------------------------------------------------------------------------
    def list_backups(self, *, kind: BackupKind | None = None, name: str | None = None) -> list[BackupManifest]:
        """Every published backup, oldest first. Unreadable manifests are skipped, not fatal."""
        kinds: Iterable[BackupKind] = [kind] if kind else list(KIND_DIRS)
        found: list[BackupManifest] = []
        for k in kinds:
            prefix = f"{KIND_DIRS[k]}/{name}/" if name else f"{KIND_DIRS[k]}/"
            for obj in self.repository.list_objects(prefix):
                if obj.key.endswith("/" + MANIFEST) and obj.key.count("/") == 3:
                    try:
                        found.append(BackupManifest.model_validate_json(self.repository.get_bytes(obj.key)))
                    except (ValidationError, BackupNotFound):
                        continue
        return sorted(found, key=lambda m: (m.started_at, m.backup_id, m.kind, m.name))

    def find_or_raise(self, backup_id: str, *, name: str | None = None) -> list[BackupManifest]:
        matches = [m for m in self.list_backups(name=name) if m.backup_id == backup_id]
        if not matches:
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
        """Unfinished backups whose writer is gone; a backup still being written elsewhere is left alone."""
        now = now or datetime.now(UTC)
        host = socket.gethostname()
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
                lock = json.loads(self.repository.get_bytes(lock_key))
                started = datetime.fromisoformat(lock["started_at"])
            except (BackupNotFound, ValueError, KeyError, TypeError):
                entry.reason = "unreadable lock"
                stale.append(entry)
                continue
            same_host = lock.get("host") == host
            alive = same_host and _pid_alive(int(lock.get("pid", 0)))
            if same_host and not alive:
                entry.reason = f"writer process {lock.get('pid')} on this host is gone"
            elif not alive and now - started > stale_after:  # a live writer here is never swept, however slow
                entry.reason = f"started {started:%Y-%m-%d %H:%M}Z, older than {stale_after}"
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
        self.repository.delete([o.key for o in manifest.objects])
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

