"""``[approvals]``: how many distinct people approve a plan before a runbook acts on it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The runbooks that pause for an approval before their destructive step: the only keys [approvals.runbooks] takes.
# A runbook that starts asking adds its name here with its flow.
APPROVING_RUNBOOKS = ("restore", "disk-cleanup", "pitr-setup", "resume-trading", "drawdown-limit", "redis-restore",
                      "config-rollback")
MAX_APPROVERS = 3


class ApprovalSettings(BaseModel):
    """Four eyes: how many distinct people must approve a plan before a runbook acts on it. The plan's ``confirm``
    parameter (its hash, given when the run is started: the operator's unattended path) still counts as the whole
    approval, whatever is required here."""

    model_config = ConfigDict(extra="forbid")

    required: int = Field(default=1, ge=1, le=MAX_APPROVERS, description="distinct approvers a plan needs, for "
                          "every runbook that asks for approval and is not named in [approvals.runbooks]")
    runbooks: dict[str, Annotated[int, Field(ge=1, le=MAX_APPROVERS)]] = Field(
        default_factory=dict, description="distinct approvers per runbook, over `required`, e.g. restore = 2; keys: "
        + ", ".join(APPROVING_RUNBOOKS))

    @field_validator("runbooks", mode="before")
    @classmethod
    def _approving_runbooks(cls, value: Any) -> Any:
        """Keys are runbook names as the CLI spells them; ``disk_cleanup`` is accepted for ``disk-cleanup`` (an
        environment variable cannot hold a dash: ``RUNBOOKS_APPROVALS__RUNBOOKS__DISK_CLEANUP=2``). A name of a
        runbook that never asks for approval is refused: it would read as four eyes where there are none."""
        if not isinstance(value, Mapping):
            return value
        named: dict[str, Any] = {}
        for key, required in value.items():
            name = str(key).lower().replace("_", "-")
            if name not in APPROVING_RUNBOOKS:
                raise ValueError(f"{str(key)[:80]!r} is not a runbook that asks for approval (those that do: "
                                 f"{', '.join(APPROVING_RUNBOOKS)})")
            if name in named:
                raise ValueError(f"{name!r} is set twice (as {name!r} and {str(key)!r})")
            named[name] = required
        return named

    def required_for(self, runbook: str) -> int:
        """Distinct approvers ``runbook``'s plan needs."""
        return self.runbooks.get(runbook, self.required)
