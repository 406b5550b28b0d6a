"""``[health]``: the health check's performance baseline (normal range, alert threshold) and what it looks at."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runbooks.settings.fields import AbsoluteOsPath, AbsolutePath


class HealthSettings(BaseModel):
    """Seed 001's performance baseline (normal range / alert threshold) and what its health-check script looks at."""

    model_config = ConfigDict(extra="forbid")

    disk_paths: list[AbsoluteOsPath] = Field(default_factory=lambda: [Path("/"), Path("/var"), Path("/tmp")],
                                   description="filesystems whose usage is checked (the script's df filter)")
    disk_warn_percent: float = Field(default=85, gt=0, le=100)
    disk_alert_percent: float = Field(default=90, gt=0, le=100)
    memory_warn_percent: float = Field(default=85, gt=0, le=100)
    memory_alert_percent: float = Field(default=90, gt=0, le=100)
    cpu_warn_percent: float = Field(default=70, gt=0, le=100)
    cpu_alert_percent: float = Field(default=85, gt=0, le=100)
    cpu_window_seconds: float = Field(default=30, ge=0.5, le=600, description="CPU is graded on its average over "
                                      "this window (6 samples), not on one instant: the baseline means sustained")
    api_warn_seconds: float = Field(default=0.5, gt=0, description="response time (the operations runbook's "
                                     "performance baseline: p95 < 500 ms)")
    api_alert_seconds: float = Field(default=2.0, gt=0)
    connections_warn_percent: float = Field(default=80, gt=0, le=100, description="of max_connections")
    connections_alert_percent: float = Field(default=90, gt=0, le=100)
    error_logs: list[AbsolutePath] = Field(default_factory=list, description="application logs whose recent "
                                           "lines are searched for errors (the operations runbook greps "
                                           "logs/combined.log)")
    error_pattern: str = Field(default=r"(error|unauthorized|failed)", min_length=1, max_length=500,
                               description="the operations runbook's grep -E, matched "
                               "case-insensitively")
    error_tail_lines: int = Field(default=10_000, ge=1, le=10_000_000, description="recent = the last N lines")
    errors_warn: int = Field(default=10, ge=0, description="matching recent lines at which a log warns")
    errors_alert: int = Field(default=100, ge=0, description="... and alerts")

    @field_validator("error_pattern")
    @classmethod
    def _regex(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"error_pattern {pattern!r} is not a regular expression: {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _ordered(self) -> HealthSettings:
        for name in ("disk", "memory", "cpu", "connections"):
            if getattr(self, f"{name}_warn_percent") > getattr(self, f"{name}_alert_percent"):
                raise ValueError(f"{name}_warn_percent must not exceed {name}_alert_percent")
        if self.api_warn_seconds > self.api_alert_seconds:
            raise ValueError("api_warn_seconds must not exceed api_alert_seconds")
        if self.errors_warn > self.errors_alert:
            raise ValueError("errors_warn must not exceed errors_alert")
        return self
