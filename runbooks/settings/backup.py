"""``[backup]``: how backups are made and how long they are kept; what names a backup."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


class RetentionPolicy(BaseModel):
    """Grandfather-father-son: the newest backup of each of the last N days, M ISO weeks, K months."""

    model_config = ConfigDict(extra="forbid")

    daily: int = Field(default=7, ge=0, le=3660)
    weekly: int = Field(default=4, ge=0, le=520)
    monthly: int = Field(default=6, ge=0, le=240)


class BackupSettings(BaseModel):
    """How backups are made and kept."""

    model_config = ConfigDict(extra="forbid")

    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    compression_level: int = Field(default=3, ge=1, le=19)
    compression_threads: int = Field(default=2, ge=0, le=64, description="zstd worker threads (0: inline)")
    stale_after_minutes: int = Field(
        default=15, ge=1, le=10080, description="an unfinished backup whose writer sent no heartbeat for this long "
        "(any host) is a leftover; the writer beats five times per period, at most every minute"
    )


BACKUP_ID_PATTERN = r"^(latest|[0-9]{8}T[0-9]{6}Z)$"  # [0-9], not \d: that also matches other scripts' digits


def _backup_time(value: str) -> str:
    """A backup id is the UTC time its run started: one that is no time (month 13) names no backup."""
    if value != "latest":
        try:
            datetime.strptime(value, "%Y%m%dT%H%M%SZ")
        except ValueError:
            raise ValueError(f"backup id {value!r} is not a UTC time YYYYMMDDTHHMMSSZ such as 20261121T020000Z "
                             "(see 'runbooks backups list')") from None
    return value


BackupSelector = Annotated[str, StringConstraints(pattern=BACKUP_ID_PATTERN), AfterValidator(_backup_time)]
