"""``[drill]``: the DR game-day, where its clean cluster comes from and the RTO/RPO table it is scored against."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from runbooks.settings.api import ApiSettings
from runbooks.settings.databases import DatabaseSettings
from runbooks.settings.fields import AbsoluteOsPath, Dsn, Duration, InventoryName, Objective, SecretBlock


class DrillComponent(BaseModel):
    """One row of seed 002's RTO/RPO table and what backs it up. The schema is the user's: the seed's table names
    are only the defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    rto: Objective = Field(description="recovery time objective: drill start to this component validated")
    rpo: Objective = Field(description="recovery point objective: data a disaster may lose")
    databases: list[InventoryName] = Field(default_factory=list, description="whole databases backing it")
    tables: list[str] = Field(default_factory=list, description="'database.table' or 'database.schema.table'")
    config_files: bool = Field(default=False, description="the cluster's configuration files back it")
    redis: list[InventoryName] = Field(default_factory=list, description="Redis instances backing it, besides "
                                       "those whose [redis] component names it")

    @field_validator("tables")
    @classmethod
    def _qualified(cls, tables: list[str]) -> list[str]:
        for name in tables:
            if not 2 <= len(name.split(".")) <= 3 or not all(name.split(".")):
                raise ValueError(f"table {name!r} must be 'database.table' or 'database.schema.table'")
        return tables

    @property
    def covered(self) -> bool:
        return bool(self.databases or self.tables or self.config_files or self.redis)


def _seed_components() -> list[DrillComponent]:
    """Seed 002, "System Components RTO/RPO", backed by the sandbox schema (the seeds' tables in trading_db).
    The memory/learning system is backed by the Redis instances whose ``[redis] component`` names it (none: "not
    covered"); monitoring/logs have no backup here: reported "not covered"."""
    m = timedelta(minutes=1)
    return [
        DrillComponent(name="Trading Engine", rto=5 * m, rpo=0 * m,
                       tables=["trading_db.public.trades", "trading_db.public.risk_state"]),
        DrillComponent(name="Position Database", rto=10 * m, rpo=1 * m, tables=["trading_db.public.positions"]),
        DrillComponent(name="Configuration", rto=15 * m, rpo=5 * m, config_files=True,
                       tables=["trading_db.public.system_config"]),
        DrillComponent(name="Historical Data", rto=60 * m, rpo=60 * m,
                       tables=["trading_db.public.ohlcv_usdcop_5m", "trading_db.public.trades_history"]),
        DrillComponent(name="Memory/Learning System", rto=30 * m, rpo=15 * m),
        DrillComponent(name="Monitoring/Logs", rto=120 * m, rpo=60 * m),
    ]


class DrillSettings(BaseModel):
    """The DR game-day (seed 001 quarterly exercise): where the clean cluster comes from and what it is scored
    against (seed 002's table)."""

    model_config = ConfigDict(extra="forbid")

    target_dsn: Dsn | None = Field(default=None, description="superuser DSN of an existing EMPTY server to "
                                   "restore into; None: a throwaway initdb cluster on a free loopback port")
    target_password: SecretStr | None = None
    target_password_block: SecretBlock | None = None
    work_dir: AbsoluteOsPath | None = Field(default=None, description="where the throwaway cluster and fetched "
                                            "dumps go, each drill in a directory of its own that the next drill "
                                            "removes if the drill was killed; None: <state_dir>/drills. Run as root, "
                                            "the postgres OS user must be able to enter it")
    backup_interval: Duration = Field(default=timedelta(hours=24), description="how often the backup deployment "
                                      "runs: the data a disaster just before the next backup loses (nightly: 24h)")
    trading_api: ApiSettings | None = Field(default=None, description="the platform started on the restored "
                                            "cluster, whose GET /api/v1/health the drill checks; None: not "
                                            "configured")
    components: list[DrillComponent] = Field(default_factory=_seed_components)
    history: int = Field(default=8, ge=1, le=100, description="previous drills shown in the trend")

    def target(self) -> DatabaseSettings | None:
        if self.target_dsn is None:
            return None
        return DatabaseSettings(dsn=self.target_dsn, password=self.target_password,
                                password_block=self.target_password_block)
