"""``[trading_safety]``: the kill switches ``emergency-stop`` tries, in order, until a halt is read back.

The trading API's switch needs only ``[trading_api]``. The database switch is the trading system runbook's
``UPDATE system_config SET value = 'halt' WHERE key = 'trading_mode'``: which database, table and columns are the
platform's schema, so they are settings, with the seeds' names as defaults. The environment switch (``TRADING_MODE=
halt`` and a restart of the services) is a command of the operator's (for example ``docker compose up -d
--force-recreate``: a plain restart does not re-read the environment), run without a shell with ``TRADING_MODE``
set in its environment; not configured, it is skipped.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runbooks.settings.api import ApiPath
from runbooks.settings.fields import Duration, Identifier, InventoryName

Switch = Literal["api", "database", "environment"]
SWITCHES: tuple[Switch, ...] = ("api", "database", "environment")


class DatabaseSwitch(BaseModel):
    """Where the platform reads its trading mode (the trading system runbook's database kill switch)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    database: InventoryName = Field(default="trading_db", description="the inventory database holding the table")
    schema_: Identifier = Field(default="public", alias="schema")
    table: Identifier = "system_config"
    key_column: Identifier = "key"
    value_column: Identifier = "value"
    updated_at_column: Identifier | None = Field(default="updated_at", description="set to now() with the "
                                                 "switch, and read as 'since when'; None: the table has none")
    key: str = Field(default="trading_mode", min_length=1, max_length=200)
    halt_value: str = Field(default="halt", min_length=1, max_length=200)

    @model_validator(mode="after")
    def _distinct_columns(self) -> DatabaseSwitch:
        columns = [self.key_column, self.value_column, *([self.updated_at_column] if self.updated_at_column else [])]
        if len(set(columns)) != len(columns):
            raise ValueError(f"key_column, value_column and updated_at_column must be distinct columns ({columns})")
        return self

    @field_validator("updated_at_column", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        """TOML has no null: ``updated_at_column = ""`` says the table has no such column."""
        return None if value == "" else value


class EnvironmentSwitch(BaseModel):
    """The environment kill switch: a command that restarts the services with ``TRADING_MODE`` set."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(min_length=1, max_length=64, description="argv, run without a shell, with "
                               "TRADING_MODE=<halt value> in its environment, e.g. [\"docker\", \"compose\", \"-f\", "
                               "\"/srv/trading/compose.yml\", \"up\", \"-d\", \"--force-recreate\"]")
    timeout_seconds: float = Field(default=120, gt=0, le=1800, description="the command is killed after this long")
    variable: Identifier = Field(default="TRADING_MODE", description="the environment variable the services read")

    @field_validator("command")
    @classmethod
    def _no_nul(cls, argv: list[str]) -> list[str]:
        if any("\x00" in arg for arg in argv) or not argv[0]:
            raise ValueError("the command's words must be non-empty text without NUL bytes")
        return argv


class TradingPaths(BaseModel):
    """Where the trading API serves what the trading-safety runbooks call (the seeds' methtrader paths, v1 forms)."""

    model_config = ConfigDict(extra="forbid")

    paper: ApiPath = Field(default="/api/v1/operations/paper", description="POST: switch to paper mode")
    pnl: ApiPath = Field(default="/api/v1/trading/pnl", description="GET ?window=1d: today's P&L")
    circuit_breakers: ApiPath = "/api/v1/risk/circuit-breakers"
    risk_metrics: ApiPath = Field(default="/api/v1/risk/metrics", description="GET: the drawdown now")
    reset_ddl: ApiPath = Field(default="/api/v1/risk/reset-ddl", description="POST: the daily drawdown limit's "
                               "manual override")
    exchange_status: ApiPath = "/api/v1/exchange/status"
    exchange_reconnect: ApiPath = "/api/v1/exchange/reconnect"


class ResumeSettings(BaseModel):
    """The trading system runbook's "Gradual Restart": paper mode first, watched, then live at a fraction."""

    model_config = ConfigDict(extra="forbid")

    paper_watch: Duration = Field(default=timedelta(hours=24), description="how long trading stays in paper mode "
                                  "before live trading may resume (the seed: monitor for 24 hours)")
    position_size_fraction: float | None = Field(default=0.25, gt=0, le=1, description="live trading resumes at "
                                                 "this fraction of the usual position size, where the platform "
                                                 "supports it; None: full size")
    max_drawdown_percent: float = Field(default=5.0, gt=0, le=100, description="the drawdown above which trading "
                                        "is not resumed (the daily drawdown limit)")
    drawdown_breaker: str = Field(default="daily_drawdown_limit", min_length=1, max_length=200,
                                  description="the circuit breaker the drawdown-limit runbook reports and resets")


class ExchangeSettings(BaseModel):
    """The exchange-reconnect runbook's bounds."""

    model_config = ConfigDict(extra="forbid")

    reconnect_timeout_seconds: float = Field(default=30, gt=0, le=600, description="after a reconnect, how long "
                                             "the exchange has to read connected")
    poll_seconds: float = Field(default=2, gt=0, le=60)


class TradingSafetySettings(BaseModel):
    """The emergency stop's switches and how long each may take."""

    model_config = ConfigDict(extra="forbid")

    switches: list[Switch] | None = Field(default=None, min_length=1, description="the kill switches, tried in "
                                          "this order until one is read back; unset: api, database, and "
                                          "environment where a command is configured")
    api_budget_seconds: float = Field(default=10, gt=0, le=300, description="the trading API switch (retries "
                                      "included) gives up after this long and the next switch is tried")
    database: DatabaseSwitch | None = Field(default_factory=DatabaseSwitch, description="None: no database switch")
    environment: EnvironmentSwitch | None = None
    honour_seconds: float = Field(default=10, ge=0, le=300, description="after the database or environment "
                                  "switch, how long the trading API has to read halted before the switch counts as "
                                  "not taken (an API that cannot be read leaves the database row as the proof)")
    database_timeout_seconds: float = Field(default=5, gt=0, le=300, description="connecting to the database "
                                            "and each statement give up after this long")
    paths: TradingPaths = Field(default_factory=TradingPaths)
    resume: ResumeSettings = Field(default_factory=ResumeSettings)
    exchange: ExchangeSettings = Field(default_factory=ExchangeSettings)
    stop_on_p0: bool = Field(default=False, description="an automation (deployments/automations.py apply) runs "
                             "the emergency-stop deployment when data-freshness or health-check escalates a P0 "
                             "condition; off: a P0 pages, and a human decides")

    @field_validator("switches")
    @classmethod
    def _each_once(cls, switches: list[Switch] | None) -> list[Switch] | None:
        if switches is not None and len(set(switches)) != len(switches):
            raise ValueError("each switch may be named once")
        return switches

    @model_validator(mode="after")
    def _listed_switches_are_configured(self) -> TradingSafetySettings:
        """A switch listed but not configured would only show as "skipped" in an emergency: refused at load."""
        for switch in self.switches or []:
            if switch == "database" and self.database is None:
                raise ValueError("switches lists 'database' but [trading_safety.database] is not configured")
            if switch == "environment" and self.environment is None:
                raise ValueError("switches lists 'environment' but [trading_safety.environment] has no command")
        return self

    def order(self) -> list[Switch]:
        """The switches to try, in order."""
        if self.switches is not None:
            return list(self.switches)
        return [s for s in SWITCHES if s != "environment" or self.environment is not None]
