"""On-call messages in seed 004's templates (section 4: incident start, update, resolved), with the severity's
escalation row (section 2.3) so whoever reads one knows who is coming and when; and seed 002's post-incident
report, which recovery runbooks publish as an artifact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

from runbooks.settings import NotificationSettings, Severity

NoticeKind = Literal["start", "update", "resolved"]
_HEAD = {"start": ":rotating_light: INCIDENT", "update": ":loudspeaker: UPDATE",
         "resolved": ":white_check_mark: RESOLVED"}


class Notice(BaseModel):
    """One message to on-call. Which fields a template shows depends on ``kind``."""

    kind: NoticeKind
    severity: Severity
    title: str
    impact: str = Field(description="what the platform or its users feel")
    status: str = "Investigating"
    details: list[str] = Field(default_factory=list, description="symptoms (start), progress (update)")
    actions: list[str] = Field(default_factory=list, description="actions taken (start), next steps (update), "
                               "follow-up actions (resolved)")
    root_cause: str | None = None
    resolution: str | None = None
    started_at: datetime | None = None
    flow_run_url: str | None = None


def escalation_line(settings: NotificationSettings, severity: Severity) -> str:
    """``On-Call Primary (@oncall-primary) now; + Eng Lead (@eng-lead) at 15 min``."""
    parts = []
    for step in settings.severities[severity].escalation:
        who = f"{step.who} ({settings.contacts[step.who]})"
        parts.append(who + " now" if step.after_minutes == 0 else f"+ {who} at {_minutes(step.after_minutes)}")
    return "; ".join(parts) or "-"


def _minutes(minutes: float) -> str:
    hours, rest = divmod(int(round(minutes)), 60)
    return f"{hours} h {rest} min" if hours and rest else f"{hours} h" if hours else f"{rest} min"


def _when(moment: datetime, zone: str) -> str:
    return f"{moment.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M} ({zone})"


def _bullets(items: list[str], empty: str) -> list[str]:
    return [f"- {item}" for item in items] or [f"- {empty}"]


def render(notice: Notice, settings: NotificationSettings, *, now: datetime | None = None,
           started: str | None = None) -> tuple[str, str]:
    """(subject, markdown body) of the seed template for ``notice.kind``. ``started`` replaces the start time
    (an automation's message template fills it in on the server)."""
    now = now or datetime.now(UTC)
    if notice.started_at is not None and notice.started_at.tzinfo is None:  # a naive time is UTC here
        notice = notice.model_copy(update={"started_at": notice.started_at.replace(tzinfo=UTC)})
    level = settings.severities[notice.severity]
    subject = f"[{notice.severity}] {_HEAD[notice.kind].split(' ', 1)[1]}: {notice.title}"
    lines = [f"{_HEAD[notice.kind]}: {notice.title}", ""]
    if notice.kind == "start":
        oncall = next((s.who for s in level.escalation if s.after_minutes == 0), None)
        lines += [f"Severity: {notice.severity} ({level.name}; respond: {level.response}; resolve within "
                  f"{_minutes(level.resolution_minutes)})",
                  f"Status: {notice.status}", f"Impact: {notice.impact}",
                  f"Started: {started or _when(notice.started_at or now, settings.timezone)}",
                  f"On-Call: {settings.contacts[oncall] if oncall else '-'}",
                  f"Escalation: {escalation_line(settings, notice.severity)}", "",
                  "Initial Symptoms:", *_bullets(notice.details, "(none recorded)"), "",
                  "Actions Being Taken:", *_bullets(notice.actions, "(none: on-call to decide)")]
    elif notice.kind == "update":
        lines += [f"Status: {notice.status}", f"Current Impact: {notice.impact}", "",
                  "Progress Since Last Update:", *_bullets(notice.details, "(none)"), "",
                  f"Current Theory: {notice.root_cause or 'Investigating'}", "",
                  "Next Steps:", *_bullets(notice.actions, "(on-call to decide)")]
    else:
        duration = (now - notice.started_at) if notice.started_at else None
        lines += [f"Duration: {_minutes(duration / timedelta(minutes=1)) if duration else 'unknown'}",
                  f"Impact Summary: {notice.impact}", "",
                  f"Root Cause: {notice.root_cause or 'to be established in the post-mortem'}", "",
                  f"Resolution: {notice.resolution or '-'}", "",
                  "Follow-up Actions:", *[f"- [ ] {a}" for a in notice.actions or ["Post-mortem to schedule"]]]
    if notice.flow_run_url:
        lines += ["", f"Flow run: {notice.flow_run_url}"]
    return subject, "\n".join(lines)


class PostIncident(BaseModel):
    """What a recovery run knows for seed 002's post-mortem; the humans fill in the rest at the review."""

    title: str
    severity: Severity
    lead: str = Field(description="who started or approved the recovery")
    what_happened: str
    impact: list[str] = Field(default_factory=list)
    root_cause: str | None = None
    resolution: str
    action_items: list[str] = Field(default_factory=list)


def post_incident_markdown(report: PostIncident, *, started_at: datetime, seconds: float,
                           timeline: list[tuple[datetime, str]], flow_run_id: str | None) -> str:
    """Seed 002's post-mortem template, the run's own steps as its timeline."""
    tbd = "_(to be completed at the review)_"
    incident_id = f"INC-{started_at:%Y%m%d}-{(flow_run_id or 'local')[:8]}"
    lines = [f"# Post-incident report: {report.title}", "",
             f"**Incident ID**: {incident_id}  ", f"**Date**: {started_at:%Y-%m-%d}  ",
             f"**Duration**: {_minutes(seconds / 60) if seconds >= 60 else f'{seconds:.0f} s'} (this recovery run)  ",
             f"**Severity**: {report.severity}  ", f"**Lead**: {report.lead}", "",
             "## Timeline (UTC)", f"- **{started_at:%H:%M:%S}** - recovery runbook started",
             *[f"- **{moment.astimezone(UTC):%H:%M:%S}** - {what}" for moment, what in timeline], "",
             "## Impact", *[f"- {line}" for line in report.impact or []],
             f"- **Financial Impact**: {tbd}", f"- **Trades Affected**: {tbd}", "",
             "## Root Cause Analysis", "### What Happened", report.what_happened, "",
             "### Root Cause", report.root_cause or tbd, "",
             "### Resolution", report.resolution, "",
             "### Contributing Factors", tbd, "", "### Why It Wasn't Caught Earlier", tbd, "",
             "## Lessons Learned", "### What Went Well", tbd, "", "### What Went Poorly", tbd, "",
             "### Where We Got Lucky", tbd, "",
             "## Action Items", "| Action | Owner | Due Date | Priority |", "|---|---|---|---|",
             *[f"| {item} | {tbd} | {tbd} | {report.severity} |" for item in report.action_items or ["(none yet)"]],
             "", "## Follow-up", f"- **Review Date**: {tbd}", f"- **Success Metrics**: {tbd}"]
    return "\n".join(lines)
