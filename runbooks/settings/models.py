"""``[models]``: the model-rollback runbook, which model it watches and the policy it judges by."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runbooks.settings.fields import Duration


class ModelPolicy(BaseModel):
    """Seed 004 section 3.2's decision table and symptoms, as the model-rollback runbook's default policy."""

    model_config = ConfigDict(extra="forbid")

    sharpe_monitor_below: float = Field(default=0.8, description="Sharpe 0.5-0.8: minor, monitor closely")
    sharpe_shadow_below: float = Field(default=0.5, description="Sharpe 0.3-0.5: significant, shadow comparison")
    sharpe_rollback_below: float = Field(default=0.3, description="Sharpe < 0.3: severe, roll back")
    max_error_rate: float = Field(default=0.05, ge=0, le=1, description="prediction error rate above: roll back")
    psi_warn: float = Field(default=0.2, ge=0, description="feature drift (PSI) above: monitor")
    psi_act: float = Field(default=0.3, ge=0, description="feature drift (PSI) above: roll back")
    max_latency_seconds: float = Field(default=5.0, gt=0, description="prediction latency above: roll back")
    max_consecutive_losses: int = Field(default=5, ge=0, description="a longer loss streak: monitor")
    min_win_rate: float = Field(default=0.40, ge=0, le=1, description="a lower win rate: monitor")

    @model_validator(mode="after")
    def _ordered(self) -> ModelPolicy:
        if not self.sharpe_rollback_below <= self.sharpe_shadow_below <= self.sharpe_monitor_below:
            raise ValueError("Sharpe lines must be ordered: rollback <= shadow <= monitor")
        if self.psi_warn > self.psi_act:
            raise ValueError("psi_warn must not exceed psi_act")
        return self


MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$"
ModelId = Annotated[str, Field(pattern=MODEL_ID_PATTERN)]


class ModelSettings(BaseModel):
    """The model-rollback runbook: which model it watches by default, and the policy it judges by."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(default="ppo_primary", pattern=MODEL_ID_PATTERN, description="the model it watches")
    policy: ModelPolicy = Field(default_factory=ModelPolicy)
    registry: Literal["inference-api"] = Field(
        default="inference-api", description="where versions live and are swapped: the inference API ([inference_api])")
    metrics_window: str = Field(default="1d", pattern=r"^[0-9]{1,4}[mhdw]$",
                                description="the window of the metrics the verdict is taken on (the USD/COP "
                                "playbook's section 3.2 compares 1d and 7d)")
    watch_window: str = Field(default="30m", pattern=r"^[0-9]{1,4}[mhdw]$",
                              description="the window of the metrics read while watching a rolled-back model")
    verify_timeout: Duration = Field(default=timedelta(minutes=2),
                                     description="how long the router has to serve the target after the rollback")
    incident_window: Duration = Field(
        default=timedelta(hours=24), description="a rollback this runbook made this recently to the version now "
        "serving is the same incident: a later run only verifies it, and escalates instead of rolling back again")
    kill_switch_on_escalation: bool = Field(
        default=False, description="press the kill switch ([trading_api]) when a rollback fails or the rolled-back "
        "model degrades too; default: notify on-call only")
