"""``[pitr]``: continuous protection of one cluster with pgBackRest (archived WAL, point-in-time restores)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from runbooks.settings.cluster import ClusterSettings
from runbooks.settings.databases import DatabaseSettings
from runbooks.settings.fields import Dsn, Duration, Objective, OsPath, SecretBlock, absolute_or_none

# pgBackRest option values are written into its config file one per line: no newline, no '=' games in a path.
_PGBR_SAFE = r"^[^\x00-\x1f\x7f]*$"


class PitrSettings(BaseModel):
    """Continuous protection of one cluster with pgBackRest: WAL archived to its repository, full and
    differential backups, restores to a point in time into a new cluster. Seed 002: the position database's RPO is
    one minute, which only archived WAL can meet (the nightly logical dump loses up to a day)."""

    model_config = ConfigDict(extra="forbid")

    stanza: str = Field(default="main", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                        description="pgBackRest's name for the protected cluster")
    dsn: Dsn | None = Field(default=None, description="superuser DSN of the protected cluster; None: [cluster] dsn")
    password: SecretStr | None = None
    password_block: SecretBlock | None = None
    data_directory: OsPath | None = Field(default=None, description="the cluster's data directory on this host "
                                          "(pgBackRest's pg1-path); None: asked of the server")
    socket_directory: OsPath = Field(default=Path("/var/run/postgresql"), description="the server's Unix socket "
                                     "directory: pgBackRest reaches a local cluster through it")
    os_user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$", description="the OS user that "
                                "owns the data directory and runs pgBackRest; None: postgres when root, else the "
                                "current user")
    work_dir: OsPath | None = Field(default=None, description="pgBackRest's config, logs and locks, and the "
                                    "clusters restores make; None: <state_dir>/pitr")
    repo_type: Literal["posix", "s3"] = "posix"
    repo_path: OsPath | None = Field(default=None, description="posix: the repository directory (another disk "
                                     "than the data's); s3: the path inside the bucket. None: <work_dir>/repo, "
                                     "or /pgbackrest in a bucket")
    s3_bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,62}$")
    s3_endpoint: str | None = Field(default=None, description="host[:port] of the S3 API (MinIO, Ceph RGW, AWS)")
    s3_region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]{1,40}$")
    s3_uri_style: Literal["host", "path"] = "path"
    s3_verify_tls: bool = True
    s3_ca_file: OsPath | None = Field(default=None, description="CA bundle (PEM) that signed the S3 endpoint's "
                                      "certificate, readable by os_user: a private CA of MinIO or Ceph RGW; None: "
                                      "the system's CAs")
    s3_key: str | None = Field(default=None, pattern=_PGBR_SAFE)
    s3_key_secret: SecretStr | None = None
    s3_key_secret_block: SecretBlock | None = None
    retention_full: int = Field(default=2, ge=1, le=100, description="full backups kept (with their WAL)")
    retention_diff: int = Field(default=7, ge=1, le=100, description="differential backups kept")
    process_max: int = Field(default=2, ge=1, le=32, description="pgBackRest's parallel processes")
    compress_type: Literal["zst", "lz4", "gz", "none"] = "zst"
    compress_level: int = Field(default=3, ge=0, le=19)
    archive_timeout: Duration = Field(default=timedelta(seconds=30), description="PostgreSQL's archive_timeout: a "
                                      "WAL segment is archived at least this often when anything was written (half "
                                      "the RPO: the segment still has to reach the repository)")
    rpo: Objective = Field(default=timedelta(minutes=1), description="the position database's RPO in the incident "
                           "response playbook's RTO/RPO table: the archive check notifies when WAL waits longer "
                           "than this")
    marker_database: str = Field(default="postgres", min_length=1, max_length=63, pattern=_PGBR_SAFE,
                                 description="database of the marker table the archive check writes every run")
    marker_table: str = Field(default="runbooks_pitr_marker", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                              description="a restore counts its rows up to the target time")
    restore_timeout: Duration = Field(default=timedelta(minutes=30), description="longest a restored cluster may "
                                      "take to replay WAL and promote")
    pgbackrest: OsPath = Field(default=Path("pgbackrest"), description="the pgBackRest executable")

    _paths = field_validator("data_directory", "work_dir", "repo_path", "s3_ca_file")(absolute_or_none)

    @field_validator("socket_directory")
    @classmethod
    def _socket_absolute(cls, path: Path) -> Path:
        if not path.is_absolute():
            raise ValueError(f"socket_directory {str(path)!r} must be absolute")
        return path

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", value):
            raise ValueError(f"s3_endpoint {value!r} must be host or host:port (no scheme; pgBackRest speaks HTTPS)")
        return value

    @model_validator(mode="after")
    def _s3_complete(self) -> PitrSettings:
        if self.repo_type == "s3" and not (self.s3_bucket and self.s3_endpoint):
            raise ValueError("repo_type 's3' needs s3_bucket and s3_endpoint")
        if self.archive_timeout > timedelta(hours=1):
            raise ValueError("archive_timeout above 1 hour would let an idle cluster lose that much")
        return self

    def database(self, cluster: ClusterSettings) -> DatabaseSettings | None:
        if self.dsn is None:
            return cluster.database()
        return DatabaseSettings(dsn=self.dsn, password=self.password, password_block=self.password_block)
