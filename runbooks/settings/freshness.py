"""``[freshness]``: the data-freshness runbook, which tables it watches, declared like dbt sources' freshness."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runbooks.settings.fields import Duration, Identifier, InventoryName


class OhlcvColumns(BaseModel):
    """Column names of an OHLCV bar table (the seeds' names by default)."""

    model_config = ConfigDict(extra="forbid")

    symbol: Identifier = "symbol"
    open: Identifier = "open"
    high: Identifier = "high"
    low: Identifier = "low"
    close: Identifier = "close"
    volume: Identifier = "volume"


class MonitoredTable(BaseModel):
    """One table whose freshness gates (or only informs) trading, declared like a dbt source's freshness.

    ``filter`` and ``loaded_at_expression`` are SQL written by the operator (as in dbt); every name is quoted as
    an identifier."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    database: InventoryName = Field(default="trading_db", description="the inventory database holding the table")
    schema_: Identifier = Field(default="public", alias="schema")
    table: Identifier
    label: str | None = Field(default=None, max_length=200, description="how the report names it (default: table)")
    loaded_at_field: Identifier | None = Field(default=None, description="timestamp column whose newest "
                                        "value is the data's age (default 'timestamp' unless an expression is set)")
    loaded_at_expression: str | None = Field(default=None, max_length=2000,
                                             description="SQL expression instead of loaded_at_field")
    filter: str | None = Field(default=None, max_length=2000, description="SQL condition: only these rows count")
    group_by: Identifier | None = Field(default=None,
                                 description="column: freshness per value (per symbol), the stalest one counts")
    group_window: Duration = Field(default=timedelta(days=1),
                                   description="groups seen within this window are expected to keep ticking")
    expected_groups: list[str] = Field(default_factory=list, description="groups that must be present "
                                       "(a missing one is reported as stale)")
    warn_after: Duration | None = Field(default=timedelta(minutes=5), description="older: reported as a warning")
    error_after: Duration = Field(default=timedelta(minutes=10), description="older: trading is paused (gating)")
    kill_after: Duration | None = Field(default=timedelta(minutes=60),
                                        description="older: kill switch and escalation (gating); None: pause only")
    interval: Duration | None = Field(default=None, description="expected spacing of rows (bars): enables the "
                                      "gap check and the volume comparison")
    gates_trading: bool = Field(default=True, description="stale or failing data pauses trading")
    market: str | None = Field(default=None, description="the [markets] entry whose sessions this data follows: "
                               "its age counts open-market time only, and nothing acts while that market is "
                               "closed; None: wall-clock age, always watched")
    open_grace: Duration | None = Field(default=None, description="after the market opens, how long the first row "
                                        "may take before the feed counts as not started; None: one interval plus "
                                        "5 minutes (5 minutes without an interval)")
    quality: Literal["ohlcv"] | None = Field(default=None, description="data-quality suite run on the recent window")
    columns: OhlcvColumns = Field(default_factory=OhlcvColumns)

    @property
    def key(self) -> str:
        return self.label or (self.table if self.schema_ == "public" else f"{self.schema_}.{self.table}")

    @property
    def grace(self) -> timedelta:
        """How long after an open the first row may take."""
        if self.open_grace is not None:
            return self.open_grace
        return (self.interval or timedelta(0)) + timedelta(minutes=5)

    @model_validator(mode="after")
    def _consistent(self) -> MonitoredTable:
        if self.loaded_at_field is not None and self.loaded_at_expression is not None:
            raise ValueError("set loaded_at_field or loaded_at_expression, not both")
        if self.loaded_at_expression is None and self.loaded_at_field is None:
            self.loaded_at_field = "timestamp"
        if self.kill_after is not None and self.kill_after <= self.error_after:
            raise ValueError("kill_after must be longer than error_after")
        if self.warn_after is not None and self.warn_after > self.error_after:
            raise ValueError("warn_after must not be longer than error_after")
        if self.quality == "ohlcv" and self.loaded_at_field is None:
            raise ValueError("the ohlcv suite needs loaded_at_field (the bar timestamp column)")
        return self


def _seed_tables() -> list[MonitoredTable]:
    """Seed 004 section 3.3: 5-minute USD/COP bars, stale after 10 minutes, kill switch after an hour."""
    return [MonitoredTable(table="ohlcv_usdcop_5m", loaded_at_field="timestamp", group_by="symbol",
                           interval=timedelta(minutes=5), quality="ohlcv", market="usd_cop")]


class FreshnessSettings(BaseModel):
    """The data-freshness runbook: what it watches and how it compares."""

    model_config = ConfigDict(extra="forbid")

    tables: list[MonitoredTable] = Field(default_factory=_seed_tables)
    lookback: Duration = Field(default=timedelta(hours=6), description="the recent window the quality suites read")
    platform_table: str | None = Field(default="ohlcv_usdcop_5m", description="the monitored table (label) "
                                       "GET /api/v1/data/status describes; None: do not compare")
    disagreement_tolerance: Duration = Field(default=timedelta(minutes=2), description="how far the platform's "
                                             "staleness may differ from the database's before it is reported")
    volume_history_days: int = Field(default=7, ge=1, le=90, description="previous sessions (days, for a table "
                                     "without a market) whose same interval is compared")
    volume_min_history: int = Field(default=3, ge=1, le=90, description="fewer non-empty days: no verdict")
    volume_max_drop: float = Field(default=0.5, gt=0, lt=1, description="flag a count below (1 - this) x median")
    volume_sigmas: float = Field(default=3.0, ge=0, le=100, description="... and below median - this x spread")
    statement_timeout_seconds: float = Field(default=30, gt=0, le=3600)

    @field_validator("tables")
    @classmethod
    def _unique_keys(cls, tables: list[MonitoredTable]) -> list[MonitoredTable]:
        keys = [t.key for t in tables]
        if dupes := sorted({k for k in keys if keys.count(k) > 1}):
            raise ValueError(f"monitored tables {dupes} are listed twice: give each a distinct label")
        return tables
