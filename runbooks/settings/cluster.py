"""``[cluster]``: what a backup takes beside the databases (roles, configuration files)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from runbooks.settings.databases import DatabaseSettings
from runbooks.settings.fields import Dsn, InventoryName, OsPath, SecretBlock


class ClusterSettings(BaseModel):
    """Cluster-wide objects backed up beside the databases: roles (globals) and configuration files."""

    model_config = ConfigDict(extra="forbid")

    name: InventoryName = Field(default="main", pattern=r"^[A-Za-z0-9_.-]+$")
    dsn: Dsn | None = Field(default=None, description="superuser DSN for pg_dumpall --globals-only")
    password: SecretStr | None = None
    password_block: SecretBlock | None = None
    config_files: list[OsPath] = Field(default_factory=list, description="files archived (tar + zstd), by "
                                     "absolute path: a restore compares each with the file at that path")

    @field_validator("config_files")
    @classmethod
    def _absolute(cls, files: list[Path]) -> list[Path]:
        for path in files:
            if not path.expanduser().is_absolute():
                raise ValueError(f"config file {str(path)!r} must be an absolute path (a worker's working "
                                 "directory is not the config's)")
        return [p.expanduser() for p in files]

    def database(self) -> DatabaseSettings | None:
        if self.dsn is None:
            return None
        return DatabaseSettings(dsn=self.dsn, password=self.password, password_block=self.password_block)
