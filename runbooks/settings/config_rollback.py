"""``[config_rollback]``: the configuration files ``config-rollback`` may put back, grouped by the service that
reads them (the operations runbook's "PM2 Configuration Rollback", the methtrader runbook's config files)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigRollbackSettings(BaseModel):
    """The file groups, by name."""

    model_config = ConfigDict(extra="forbid")
