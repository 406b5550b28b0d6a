"""``[redis.<name>]``: the platform's Redis instances (the memory/learning system): backed up, restored, checked."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RedisSettings(BaseModel):
    """One Redis instance."""

    model_config = ConfigDict(extra="forbid")
