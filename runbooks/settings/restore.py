"""``[restore]``: where a restore works on this host."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from runbooks.settings.fields import AbsoluteOsPath


class RestoreSettings(BaseModel):
    """Where a restore works on this host."""

    model_config = ConfigDict(extra="forbid")

    work_dir: AbsoluteOsPath | None = Field(default=None, description="where a dump is fetched before pg_restore "
                                            "-j, each run in a 0700 directory of its own that the next run sweeps "
                                            "if the run was killed; None: <state_dir>/work")
    server_disk_reserve_percent: float = Field(
        default=5.0, ge=0, le=100, description="free space (percent of the server's data disk) that must remain "
        "after a restored copy is added; checked before any work when the server is local")
