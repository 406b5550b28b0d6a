"""What a listing of the backup repository says, as values: its objects, an unfinished backup left behind and a
damaged one. The catalog (an adapter) finds them; the weekly report and the drill judge them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from runbooks.decisions.manifest import BackupKind


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class IncompleteUpload:
    """An upload started but neither completed nor aborted (S3 multipart); it costs storage until aborted."""

    key: str
    upload_id: str
    initiated: datetime


KIND_DIRS: dict[BackupKind, str] = {"database": "databases", "cluster": "clusters", "redis": "redis"}
KINDS_BY_DIR: dict[str, BackupKind] = {d: k for k, d in KIND_DIRS.items()}


def backup_prefix(kind: BackupKind, name: str, backup_id: str) -> str:
    return f"{KIND_DIRS[kind]}/{name}/{backup_id}"


@dataclass
class Leftover:
    prefix: str
    reason: str
    keys: list[str] = field(default_factory=list)
    uploads: list[IncompleteUpload] = field(default_factory=list)
    stored_bytes: int = 0
    lock_modified: datetime | None = None


@dataclass
class DamagedBackup:
    """A backup directory with a manifest that cannot be trusted: its objects are kept and shown, never hidden."""

    kind: BackupKind
    name: str
    backup_id: str
    reason: str
    objects: list[ObjectInfo]

    @property
    def prefix(self) -> str:
        return backup_prefix(self.kind, self.name, self.backup_id)

    @property
    def _by_hand(self) -> str:
        if self.kind == "redis":
            return "zstd -dc … > dump.rdb, redis-check-rdb dump.rdb, then a redis-server started on it"
        return "zstd -dc … | pg_restore --list, then pg_restore"

    def recovery(self, repository_url: str) -> str:
        dumps = [o.key for o in self.objects if o.key.endswith(".zst")]
        where = f"{repository_url}/{dumps[0]}" if dumps else f"{repository_url}/{self.prefix}/"
        return (f"its manifest is {self.reason}, so its checksums cannot be checked and no runbook restores it. "
                f"Recover the manifest from a copy of the repository (bucket versioning, replica, filesystem "
                f"snapshot), or restore by hand from {where} ({self._by_hand}). "
                "Retention never deletes it; remove the directory by hand once it is dealt with")

    def as_dict(self, repository_url: str) -> dict[str, object]:
        return {"backup_id": self.backup_id, "kind": self.kind, "name": self.name, "status": "damaged",
                "reason": self.reason, "objects": [{"key": o.key, "stored_bytes": o.size} for o in self.objects],
                "recovery": self.recovery(repository_url)}
