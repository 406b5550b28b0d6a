"""``[connections]``: the ``database-connections`` runbook's thresholds (the operations runbook's P0 "Database
Connection Pool Exhausted" and the USD/COP playbook's long queries)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConnectionsSettings(BaseModel):
    """When the pool counts as exhausted, and which sessions may be terminated."""

    model_config = ConfigDict(extra="forbid")
