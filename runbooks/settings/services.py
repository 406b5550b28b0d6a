"""``[services]``: the platform's PM2 processes and Docker Compose services the health check reads and
``restart-service`` restarts. Unconfigured ones are omitted, never shown as placeholders."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ServicesSettings(BaseModel):
    """PM2 processes and Compose services by inventory name."""

    model_config = ConfigDict(extra="forbid")
