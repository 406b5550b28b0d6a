"""The model-rollback runbook's decisions, as pure functions: roll back or not, to which version, and whether this
run is the same incident as a rollback the runbook already made (then it only verifies: no flapping).

The runbook's own record of its rollbacks is kept in the backup repository (like the trading holds): it outlives
the run, is shared by every worker host, and is not a mark someone else can write on the platform. Layout:
``records/model-rollbacks/<quoted inference API URL>/<quoted model id>.json``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from runbooks.core.errors import Refused
from runbooks.decisions.models import Candidate, Judgement, Verdict, judge, served_healthy
from runbooks.settings import ModelPolicy

Action = Literal["none", "roll back", "verify"]


class RollbackRecord(BaseModel):
    model_id: str
    from_version: str
    to_version: str
    reason: str
    initiated_by: str
    actor: str
    flow_run_id: str | None = None
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Plan(BaseModel):
    action: Action
    why: str


def plan(judgement: Judgement, *, serving: str, force: bool, requested: str | None, record: RollbackRecord | None,
         incident_window: timedelta, now: datetime | None = None) -> Plan:
    """Seed 004's table: roll back below the rollback line (or when forced); monitor and shadow-mode comparison
    are for humans. A rollback this runbook made to the version now serving, within the incident window, is the
    same incident: verify it, never roll back again (a second rollback would be a flap, and the escalation says
    so instead), unless a human forces another named version."""
    now = now or datetime.now(UTC)
    deliberate = force and requested is not None and requested != serving  # a human names another version
    if record is not None and record.to_version == serving and now - record.at <= incident_window \
            and not deliberate:
        return Plan(action="verify", why=f"this runbook rolled {record.model_id} back from {record.from_version} to "
                    f"{record.to_version} at {record.at:%Y-%m-%d %H:%M:%S} UTC (run {record.flow_run_id or '-'}): "
                    "the same incident, so it verifies and does not roll back again")
    reasons = "; ".join(judgement.reasons)
    if judgement.verdict == "rollback":
        return Plan(action="roll back", why=f"severe degradation: {reasons}")
    if force:
        return Plan(action="roll back", why=f"forced (the verdict alone is {judgement.verdict!r}"
                    + (f": {reasons})" if reasons else ")"))
    why: dict[Verdict, str] = {
        "healthy": "the model is healthy: no rollback without force",
        "monitor": f"minor degradation ({reasons}): monitor closely, no rollback (the USD/COP playbook's "
                   "section 3.2)",
        "shadow": f"significant degradation ({reasons}): activate shadow-mode comparison, no rollback yet (the "
                  "USD/COP playbook's section 3.2)",
        "rollback": "",
    }
    return Plan(action="none", why=why[judgement.verdict])


class TargetView(BaseModel):
    """A candidate as the report shows it: its recorded metrics graded by the policy."""

    version: str
    deployed_at: datetime | None = None
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)
    eligible: bool
    why_not: str | None = None


def grade_targets(candidates: list[Candidate], *, serving: str, avoid: set[str],
                  policy: ModelPolicy) -> list[TargetView]:
    """Newest first. Eligible: not the serving (degraded) version nor one this incident rolled back from, and
    its recorded metrics pass the policy (no record: not known to have been healthy)."""
    views = []
    ordered = sorted(candidates, key=lambda c: c.deployed_at or datetime.min.replace(tzinfo=UTC), reverse=True)
    for c in ordered:
        grade = judge(c.recorded, policy)
        why_not = None
        if c.version == serving:
            why_not = "it is the serving (degraded) version"
        elif c.version in avoid:
            why_not = "this incident rolled back from it"
        elif c.recorded.sharpe is None:
            why_not = "no recorded Sharpe ratio: not known to have been healthy"
        elif not served_healthy(c.recorded, policy):
            why_not = f"its recorded metrics breach the policy ({'; '.join(grade.reasons)})"
        views.append(TargetView(version=c.version, deployed_at=c.deployed_at, verdict=grade.verdict,
                                reasons=grade.reasons, eligible=why_not is None, why_not=why_not))
    return views


def pick_target(views: list[TargetView], requested: str | None) -> TargetView:
    """The requested version if it is a valid target, else the newest eligible one.

    Raises Refused before anything is changed: a requested version that is not a valid target, or no target.
    """
    if requested is not None:
        match = next((v for v in views if v.version == requested), None)
        if match is None:
            offered = ", ".join(v.version for v in views) or "none"
            raise Refused(f"target_version {requested!r} is not a rollback target the registry offers "
                          f"(offered: {offered}).", hint="leave target_version empty to take the newest healthy "
                          "one, or name one of those offered.")
        if not match.eligible:
            raise Refused(f"target_version {requested!r} is not a valid rollback target: {match.why_not}.",
                          hint="leave target_version empty to take the newest version that was healthy while "
                          "it served.")
        return match
    eligible = [v for v in views if v.eligible]
    if not eligible:
        raise Refused("no rollback target was healthy while it served ("
                      + ("; ".join(f"{v.version}: {v.why_not}" for v in views) or "the registry offers none") + ").",
                      hint="escalate: a human picks a version (the USD/COP playbook's 'Model Performance "
                           "Degradation', section 3.2) or retrains.")
    return eligible[0]
