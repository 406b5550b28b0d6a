"""``[notifications]``: where on-call hears from the runbooks, the severities, escalation matrix and contacts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Severity = Literal["P0", "P1", "P2", "P3"]
BlockName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+/[A-Za-z0-9_.-]+$")]


class EscalationStep(BaseModel):
    """Who joins an incident, and when (seed 004 section 2.3)."""

    model_config = ConfigDict(extra="forbid")

    after_minutes: int = Field(ge=0, le=10080, description="minutes after the incident starts")
    who: str = Field(min_length=1, max_length=100, description="a role of [notifications.contacts]")


class SeverityLevel(BaseModel):
    """One row of seed 004's severity table, its escalation row, and where its notifications go."""

    model_config = ConfigDict(extra="forbid")

    name: str
    criteria: str
    response: str = Field(description="response time, as the USD/COP playbook's severity table "
                          "words it")
    resolution_minutes: int = Field(gt=0, description="resolution target")
    escalation: list[EscalationStep] = Field(default_factory=list)
    blocks: list[BlockName] = Field(default_factory=list, description="notification blocks for this severity "
                                    "('type-slug/name'); empty: [notifications] block")


def _seed_severities() -> dict[Severity, SeverityLevel]:
    def steps(*pairs: tuple[int, str]) -> list[EscalationStep]:
        return [EscalationStep(after_minutes=m, who=w) for m, w in pairs]

    return {
        "P0": SeverityLevel(name="Critical", criteria="System down, active financial losses",
                            response="Immediate (24/7)", resolution_minutes=30,
                            escalation=steps((0, "On-Call Primary"), (15, "Engineering Lead"), (30, "CTO"))),
        "P1": SeverityLevel(name="High", criteria="Major feature broken, degraded performance",
                            response="15 minutes", resolution_minutes=120,
                            escalation=steps((0, "On-Call Primary"), (15, "On-Call Secondary"),
                                             (30, "Engineering Lead"), (60, "Trading Lead"))),
        "P2": SeverityLevel(name="Medium", criteria="Partial feature broken, workaround exists",
                            response="1 hour", resolution_minutes=480,
                            escalation=steps((0, "On-Call Primary"), (60, "On-Call Secondary"),
                                             (120, "Engineering Lead"))),
        "P3": SeverityLevel(name="Low", criteria="Minor bug, no trading impact", response="Next business day",
                            resolution_minutes=5 * 24 * 60, escalation=steps((0, "Team Lead"))),
    }


def _seed_contacts() -> dict[str, str]:
    return {"On-Call Primary": "@oncall-primary", "On-Call Secondary": "@oncall-secondary",
            "Engineering Lead": "@eng-lead", "Trading Lead": "@trading-lead", "ML Lead": "@ml-lead",
            "CTO": "@cto", "Team Lead": "@eng-lead"}


class NotificationSettings(BaseModel):
    """Where on-call hears from the runbooks: seed 004's severities, escalation matrix and contacts."""

    model_config = ConfigDict(extra="forbid")

    block: BlockName | None = Field(default=None, description="Prefect notification block as 'type-slug/name', "
                                    "e.g. 'slack-webhook/oncall' or 'custom-webhook/oncall', for every severity "
                                    "without blocks of its own; None: events only")
    severities: dict[Severity, SeverityLevel] = Field(default_factory=_seed_severities)
    contacts: dict[str, str] = Field(default_factory=_seed_contacts, description="role -> handle (Slack, "
                                     "PagerDuty schedule), as the escalation lines name them")
    timezone: str = Field(default="America/Bogota", description="time zone of the times in messages (the USD/COP "
                          "playbook's templates use COT)")
    backup_stale_after: timedelta = Field(default=timedelta(hours=26), ge=timedelta(seconds=10),
                                          description="automation: raise a P1 when a database of the inventory "
                                          "has had no successful backup for this long (26 h by default)")
    repeat_after: timedelta = Field(default=timedelta(minutes=30), ge=timedelta(0),
                                    description="automation: at most one stale-data notification per table in "
                                    "this window (the incident response playbook: a status update every 30 min)")

    @model_validator(mode="before")
    @classmethod
    def _over_the_seed(cls, data: Any) -> Any:
        """A configured severity changes only the fields it names (`[notifications.severities.P1] blocks = [...]`
        keeps the seed's escalation row), and a configured contact only its own handle. Environment variables
        arrive lower-cased (`RUNBOOKS_NOTIFICATIONS__SEVERITIES__P1__BLOCKS`): severities and roles are matched
        without regard to case."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if isinstance(data.get("severities"), Mapping):
            merged: dict[str, Any] = {k: v.model_dump() for k, v in _seed_severities().items()}
            for key, value in data["severities"].items():
                if isinstance(value, BaseModel):
                    value = value.model_dump(exclude_unset=True)
                if not isinstance(value, Mapping):
                    raise ValueError(f"severity {key!r} must be a table of fields, not {value!r}")
                name = str(key).upper()
                merged[name] = {**merged.get(name, {}), **value}
            data["severities"] = merged
        if isinstance(data.get("contacts"), Mapping):
            contacts = _seed_contacts()
            spelled = {role.casefold(): role for role in contacts}
            for role, handle in data["contacts"].items():
                contacts[spelled.get(str(role).casefold(), str(role))] = handle
            data["contacts"] = contacts
        return data

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a name too long for a file name
            raise ValueError(f"unknown time zone {value[:80]!r} (an IANA name such as 'UTC' or 'America/Bogota')") \
                from exc
        return value

    @model_validator(mode="after")
    def _complete(self) -> NotificationSettings:
        missing = sorted({"P0", "P1", "P2", "P3"} - set(self.severities))
        if missing:
            raise ValueError(f"[notifications.severities] lacks {', '.join(missing)} (all of P0-P3 are needed)")
        unknown = sorted({step.who for level in self.severities.values() for step in level.escalation}
                         - set(self.contacts))
        if unknown:
            raise ValueError(f"escalation names {', '.join(map(repr, unknown))}, not in [notifications.contacts]")
        return self

    def blocks_for(self, severity: Severity) -> list[str]:
        return list(self.severities[severity].blocks) or ([self.block] if self.block else [])
