"""``[connections]``: the ``database-connections`` runbook's thresholds (the operations runbook's P0 "Database
Connection Pool Exhausted" and the USD/COP playbook's long queries)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runbooks.settings.fields import Duration, InventoryName

OWN_APPLICATION_NAME = "runbooks"


class ConnectionsSettings(BaseModel):
    """When the pool counts as exhausted, and which sessions may be terminated."""

    model_config = ConfigDict(extra="forbid")

    exhausted_percent: float = Field(
        default=90, gt=0, le=100,
        description="client connections in use, as a percent of max_connections (or of a database's or a role's "
        "CONNECTION LIMIT), at which the pool counts as exhausted and idle-in-transaction sessions are "
        "terminated. The operations runbook pages at 100 % (active >= max); 90 % is the health check's alert "
        "([health] connections_alert_percent), where the runbooks' own role can still connect")
    idle_in_transaction: Duration = Field(
        default=timedelta(minutes=5),
        description="a session idle in a transaction for longer than this (since its last state change) may be "
        "terminated: the operations runbook's 'idle in transaction' older than 5 minutes")
    long_query: Duration = Field(
        default=timedelta(minutes=1),
        description="an active query running longer than this is listed (never terminated): the USD/COP "
        "playbook's long-running queries, over 1 minute")
    databases: list[InventoryName] = Field(
        default_factory=list,
        description="the databases of [databases] whose sessions are read and may be terminated; empty: all")
    own_application_name: str = Field(
        default=OWN_APPLICATION_NAME, min_length=1, max_length=63,
        description="the application_name prefix the runbooks' own sessions carry (locks, backups' snapshots, "
        "kill switches): such a session is never terminated")
    report_sessions: int = Field(default=50, ge=1, le=10_000, description="at most this many sessions per table "
                                 "in the report (the counts are always whole)")
    query_chars: int = Field(default=200, ge=0, le=10_000, description="query text shown per session, after its "
                             "literals are scrubbed; 0: no query text")

    @field_validator("databases")
    @classmethod
    def _once(cls, names: list[str]) -> list[str]:
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"{', '.join(map(repr, twice))} listed more than once: name each database once")
        return names

    @field_validator("own_application_name")
    @classmethod
    def _visible(cls, name: str) -> str:
        # PostgreSQL keeps only printable ASCII in application_name (others become '?'): a prefix with anything
        # else would never match, and the runbooks' own sessions would lose their protection.
        if not name.isascii() or not name.isprintable() or name != name.strip():
            raise ValueError(f"{name[:80]!r} must be printable ASCII without leading or trailing blanks")
        return name
