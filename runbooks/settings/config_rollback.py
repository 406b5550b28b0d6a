"""``[config_rollback]``: the configuration files ``config-rollback`` may put back, grouped by the service that
reads them (the operations runbook's "PM2 Configuration Rollback", the methtrader runbook's config files).

A group's ``files`` are the only files the runbook ever writes: a path that reaches it any other way (a parameter,
a backup's manifest, a kept version's record) is refused. A file belongs to one group at most, so one owner reloads
it and one lock covers it. ``owner`` says what reads the files and is reloaded after a rollback: a ``[services]`` PM2
app (``pm2 reload <ecosystem> --only <app> --update-env``), a Compose service (its containers restarted), or
``postgres``, the ``[cluster]``'s server (``pg_reload_conf()``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runbooks.settings.fields import AbsoluteOsPath, AbsolutePath, InventoryName
from runbooks.settings.hosts import HostName

ConfigOwner = Literal["pm2", "compose", "postgres"]


class ConfigGroup(BaseModel):
    """Files one service reads, restored together and reloaded once."""

    model_config = ConfigDict(extra="forbid")

    files: list[AbsolutePath] = Field(min_length=1, max_length=100, description="the files of the group, by "
                                      "absolute path: the only files config-rollback ever writes")
    owner: ConfigOwner = Field(description="what reads them and is reloaded after a rollback: pm2 (an app of "
                               "[services.pm2]), compose (a service of [services.compose]) or postgres (the "
                               "[cluster]'s server, pg_reload_conf())")
    service: InventoryName | None = Field(default=None, description="the [services.pm2] or [services.compose] name "
                                          "(owner pm2 or compose); empty for postgres")
    kept_dir: AbsoluteOsPath | None = Field(default=None, description="where the versions a rollback replaces are "
                                            "kept (<name>.runbooks-<UTC time>, 0600); empty: beside each file")
    keep_versions: int = Field(default=5, ge=1, le=100, description="how many kept versions of the group are kept; "
                               "older ones (only those the runbook's own record lists) are deleted")
    healthy_timeout_seconds: float = Field(default=60, gt=0, le=3600, description="postgres: how long the server "
                                           "may take to answer after the reload (pm2/compose use [services]'s)")
    max_bytes: int = Field(default=1 << 20, ge=1, le=64 << 20, description="a file larger than this is refused "
                           "(configuration files are small; the plan shows their diff)")
    on_host: HostName | None = Field(default=None, description="the host whose files these are (its host_name); "
                                     "empty: any host's. Other hosts refuse the rollback")

    @model_validator(mode="after")
    def _consistent(self) -> ConfigGroup:
        if len(set(self.files)) != len(self.files):
            raise ValueError("a file is listed twice: list each once")
        if self.owner == "postgres" and self.service is not None:
            raise ValueError("owner postgres reloads the [cluster]'s server: leave service empty")
        if self.owner != "postgres" and self.service is None:
            raise ValueError(f"owner {self.owner} needs service: the [services.{self.owner}] name to reload")
        if self.kept_dir is not None:
            names = [f.name for f in self.files]
            if twice := sorted({n for n in names if names.count(n) > 1}):
                raise ValueError(f"kept_dir holds the kept versions of every file by its name, and "
                                 f"{', '.join(twice)} names two files: leave kept_dir empty (keep beside each file)")
        return self

    def here(self, host_name: str) -> bool:
        return self.on_host is None or self.on_host == host_name

    def kept_directory(self, path: Path) -> Path:
        """Where the kept versions of ``path`` go."""
        return self.kept_dir or path.parent


class ConfigRollbackSettings(BaseModel):
    """The file groups, by name."""

    model_config = ConfigDict(extra="forbid")

    groups: dict[InventoryName, ConfigGroup] = Field(default_factory=dict, description="configuration file groups "
                                                     "by inventory name")
    record_dir: AbsoluteOsPath | None = Field(default=None, description="where the runbook's record of the versions "
                                              "it kept lives (one file per group, 0600); empty: "
                                              "<state_dir>/config-rollback")

    @model_validator(mode="after")
    def _one_group_per_file(self) -> ConfigRollbackSettings:
        seen: dict[Path, str] = {}
        for name, group in sorted(self.groups.items()):
            for path in group.files:
                if path in seen:
                    raise ValueError(f"{str(path)!r} is in groups {seen[path]!r} and {name!r}: a file has one owner "
                                     "to reload it, so list it in one group")
                seen[path] = name
        return self

    def names(self) -> list[str]:
        return sorted(self.groups)

    def records(self, state_dir: Path) -> Path:
        return (self.record_dir or state_dir / "config-rollback").expanduser()
