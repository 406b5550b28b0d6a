"""``[weekly_report]``: where the weekly report reads each figure."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from runbooks.settings.api import ApiPath
from runbooks.settings.models import ModelId


class WeeklyReportSettings(BaseModel):
    """Seed 003's weekly maintenance ("Analyze P&L performance, Check model accuracy, Review risk metrics"): where
    the weekly report reads each figure. The paths are on the trading API (``[trading_api]``), the v1 forms of
    seed 003's endpoints; model accuracy comes from the inference API's metrics (``[inference_api]``)."""

    model_config = ConfigDict(extra="forbid")

    pnl_path: ApiPath = Field(default="/api/v1/trading/pnl", description="P&L over ?window=7d "
                              "(the trading-system runbook's /api/trading/pnl)")
    risk_metrics_path: ApiPath = Field(default="/api/v1/risk/metrics", description="drawdown, VaR and exposure "
                                       "(the trading-system runbook's weekly 'Review risk metrics')")
    circuit_breakers_path: ApiPath = Field(default="/api/v1/risk/circuit-breakers",
                                           description="each breaker's state (the trading-system "
                                           "runbook's /api/risk/circuit-breakers)")
    risk_health_path: ApiPath = Field(default="/api/v1/risk/health", description="the risk engine's health "
                                      "(the trading-system runbook's /api/risk/health)")
    risk_events_path: ApiPath = Field(default="/api/v1/risk/events", description="risk events over ?window=7d "
                                      "(the trading-system runbook's /api/risk/events)")
    model_ids: list[ModelId] = Field(default_factory=list, description="models whose accuracy is reported; "
                                     "empty: the one [models] model_id names")
    list_runs_up_to: int = Field(default=20, ge=0, le=1000, description="a runbook that ran more often than this in "
                                 "the window (data-freshness: every 5 minutes) has only its runs that did not "
                                 "complete listed one by one; all are counted")
    max_runs: int = Field(default=5000, ge=1, le=100_000, description="flow runs read from the Prefect API at most; "
                          "the report says when the window held more")
