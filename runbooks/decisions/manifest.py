"""The manifest: written last, it is what makes a backup exist."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, Field

BackupKind = Literal["database", "cluster", "redis"]
Privilege = Literal["CREATE", "TEMPORARY", "CONNECT"]
AclEntry = tuple[str, Privilege, bool]
ID_FORMAT = "%Y%m%dT%H%M%SZ"


def backup_id_for(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(ID_FORMAT)


def parse_backup_id(backup_id: str) -> datetime:
    return datetime.strptime(backup_id[:16], ID_FORMAT).replace(tzinfo=UTC)



class DatabaseProperties(BaseModel):
    """A database's properties as pg_dump --create would recreate them. JSON-safe: stored in the manifest."""

    owner: str
    encoding: str = Field(description="server encoding name, e.g. UTF8")
    collate: str
    ctype: str
    locale_provider: Literal["c", "i"] = Field(default="c", description="'c' libc, 'i' ICU")
    icu_locale: str | None = None
    connection_limit: int = -1
    acl: list[AclEntry] | None = Field(
        default=None, description="(grantee, privilege, grantable); grantee '' is PUBLIC. None: default privileges")
    settings: list[tuple[str, str]] = Field(default_factory=list, description="ALTER DATABASE ... SET (name, value)")
    role_settings: list[tuple[str, str, str]] = Field(
        default_factory=list, description="ALTER ROLE ... IN DATABASE ... SET (role, name, value)")
    comment: str | None = None


class StoredObject(BaseModel):
    role: Literal["dump", "globals", "config", "rdb"]
    key: str = Field(description="path relative to the repository root")
    format: str = Field(description="e.g. 'pg_dump custom', 'sql', 'tar'")
    compression: Literal["zstd"] = "zstd"
    bytes: int = Field(description="uncompressed size")
    stored_bytes: int
    sha256: str = Field(description="SHA-256 of the stored (compressed) object")


class ArchivedFile(BaseModel):
    """One configuration file in a cluster backup's tar, hashed as it was archived: what a restore compares with."""

    path: str = Field(description="absolute path on the host it was backed up from")
    bytes: int
    sha256: str
    mode: int = Field(description="permission bits")


class SnapshotInfo(BaseModel):
    wal_lsn: str | None = None
    taken_at: AwareDatetime
    in_recovery: bool = False


class Verification(BaseModel):
    status: Literal["passed", "failed"]
    checked_at: AwareDatetime
    seconds: float
    detail: str = ""
    toc_entries: int | None = None


class RedisSnapshot(BaseModel):
    """A Redis backup's RDB as ``redis-check-rdb`` read it on its way into the repository: what a restore loads."""

    key_count: int = Field(description="keys in the RDB ('keys read')")
    expires: int = Field(default=0, description="of which with a time to live")
    already_expired: int = Field(default=0, description="of which already expired when the RDB was read")
    keyspace: dict[str, int] = Field(default_factory=dict, description="keys per database (db0, db1...) as INFO "
                                     "keyspace gave them just after the save: the live count, not the file's")
    saved_at: AwareDatetime = Field(description="LASTSAVE after the BGSAVE: the moment the data is from")
    save_seconds: float = Field(default=0.0, description="how long the BGSAVE took")
    while_saving: bool = Field(default=False, description="streamed from the save's temporary file as Redis wrote "
                               "it (the worker on the Redis host); false: from the finished file")


class BackupManifest(BaseModel):
    format_version: Literal[1] = 1
    backup_id: str
    kind: BackupKind
    name: str = Field(description="database name, or cluster name for globals/config")
    server_version: str | None = None
    tools: dict[str, str] = Field(default_factory=dict)
    host: str
    flow_run_id: str | None = None
    started_at: AwareDatetime
    finished_at: AwareDatetime
    snapshot: SnapshotInfo | None = None
    objects: list[StoredObject]
    row_counts: dict[str, int] = Field(default_factory=dict)
    database: DatabaseProperties | None = Field(
        default=None, description="owner, encoding, locale, settings, privileges of the database at backup time")
    database_bytes: int | None = Field(default=None, description="pg_database_size at backup time")
    files: list[ArchivedFile] = Field(default_factory=list, description="the configuration files in the tar "
                                      "(cluster backups; empty in those taken before checksums were recorded)")
    redis: RedisSnapshot | None = Field(default=None, description="Redis backups: the RDB's key counts")
    verification: Verification | None = Field(default=None, description="None only before publishing")

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.objects)

    @property
    def stored_bytes(self) -> int:
        return sum(o.stored_bytes for o in self.objects)

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.status == "passed"
