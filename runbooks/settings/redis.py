"""``[redis.<name>]``: the platform's Redis instances (the memory/learning system): backed up, restored, checked.

The backup is seed 001's ``backup-redis.sh`` done the way Redis supports: ``BGSAVE``, wait until ``LASTSAVE``
moves, then stream the RDB file it wrote. That file must be readable by the worker: it is found with ``CONFIG GET
dir`` / ``dbfilename``, or named by ``rdb_path`` where ``CONFIG`` is renamed away or the worker sees the data
directory at another path (a container's volume).
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from runbooks.settings.fields import AbsolutePath, Duration, SecretBlock, resolve_secret


class RedisSettings(BaseModel):
    """One Redis instance."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", min_length=1, max_length=253, pattern=r"^[A-Za-z0-9._:\-\[\]]+$",
                      description="host name or address (the seed's redis-cli -h)")
    port: int = Field(default=6379, ge=1, le=65535, description="the seed's REDIS_PORT")
    username: str | None = Field(default=None, min_length=1, max_length=200, description="an ACL user; none: "
                                 "'default'")
    password: SecretStr | None = Field(default=None, description="AUTH password")
    password_block: SecretBlock | None = Field(default=None, description="name of a Prefect Secret block")
    rdb_path: AbsolutePath | None = Field(default=None, description="the RDB file BGSAVE writes, as this worker "
                                          "sees it; none: asked of Redis (CONFIG GET dir and dbfilename)")
    component: str = Field(default="Memory/Learning System", min_length=1, max_length=200, description="the "
                           "DR drill's component (seed 002's recovery objectives) this instance's restore scores")
    backup_interval: Duration = Field(default=timedelta(hours=24), description="how often it is backed up: what "
                                      "a disaster just before the next backup loses (the nightly set: 24h; with "
                                      "backup-redis-15min active: 15m); the DR drill scores its RPO with it")
    save_timeout: Duration = Field(default=timedelta(minutes=10), description="how long a BGSAVE may take before "
                                   "the backup gives up (LASTSAVE did not move)")
    socket_timeout_seconds: float = Field(default=5, gt=0, le=300)
    memory_warn_percent: float = Field(default=80, gt=0, le=100, description="used_memory of maxmemory")
    memory_alert_percent: float = Field(default=90, gt=0, le=100)
    clients_warn_percent: float = Field(default=80, gt=0, le=100, description="connected clients of maxclients")
    clients_alert_percent: float = Field(default=90, gt=0, le=100)
    save_warn_age: Duration = Field(default=timedelta(minutes=15), description="last successful save older than "
                                    "this warns (seed 002's RPO for the memory/learning system)")
    save_alert_age: Duration = Field(default=timedelta(minutes=30))
    restore_host: str = Field(default="127.0.0.1", min_length=1, max_length=253,
                              pattern=r"^[A-Za-z0-9._:\-\[\]]+$", description="where this instance reaches the "
                              "worker's restored copy when a restore replaces its data (REPLICAOF)")

    @model_validator(mode="after")
    def _ordered(self) -> RedisSettings:
        for name in ("memory", "clients"):
            if getattr(self, f"{name}_warn_percent") > getattr(self, f"{name}_alert_percent"):
                raise ValueError(f"{name}_warn_percent must not exceed {name}_alert_percent")
        if self.save_warn_age > self.save_alert_age:
            raise ValueError("save_warn_age must not exceed save_alert_age")
        return self

    def secret(self) -> str | None:
        """The AUTH password, resolved (a Secret block is read here); registered for scrubbing."""
        return resolve_secret(self.password, self.password_block)

    def address(self) -> str:
        return f"{self.host}:{self.port}"
