"""Grandfather-father-son retention selection: pure, so it can be tested on any synthetic calendar."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from runbooks.settings import RetentionPolicy


@dataclass(frozen=True)
class Candidate:
    backup_id: str
    taken_at: datetime
    verified: bool


@dataclass
class RetentionPlan:
    keep: dict[str, list[str]] = field(default_factory=dict)  # backup id -> reasons
    remove: list[str] = field(default_factory=list)  # oldest first


def _utc(moment: datetime) -> datetime:
    """Buckets are UTC calendar days/weeks/months (like backup ids); naive times are taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def select_retention(candidates: list[Candidate], policy: RetentionPolicy,
                     held: dict[str, str] | None = None) -> RetentionPlan:
    """Keep the newest verified backup of each of the last N days / M ISO weeks / K months that have one.

    The newest verified backup is always kept, whatever the policy says (a policy of all zeros must not empty
    the repository). Backups that failed verification never fill a bucket, so they go once a good one exists.
    ``held`` (backup id -> why) are kept whatever the policy says: a run depends on them.
    """
    plan = RetentionPlan()
    ordered = sorted(candidates, key=lambda c: (_utc(c.taken_at), c.backup_id), reverse=True)
    good = [c for c in ordered if c.verified]
    buckets = (
        ("daily", policy.daily, lambda t: t.date().isoformat()),
        ("weekly", policy.weekly, lambda t: f"{t.isocalendar().year}-W{t.isocalendar().week:02d}"),
        ("monthly", policy.monthly, lambda t: t.strftime("%Y-%m")),
    )
    for label, limit, period_of in buckets:
        seen: set[str] = set()
        for cand in good:
            if len(seen) >= limit:
                break
            period = period_of(_utc(cand.taken_at))
            if period in seen:
                continue
            seen.add(period)
            plan.keep.setdefault(cand.backup_id, []).append(f"{label} {period}")
    if good:
        plan.keep.setdefault(good[0].backup_id, []).insert(0, "newest")
    elif ordered:
        # Nothing verified: keep everything rather than guess which broken backup matters.
        for cand in ordered:
            plan.keep.setdefault(cand.backup_id, []).append("no verified backup exists")
    for backup_id, why in (held or {}).items():
        if any(c.backup_id == backup_id for c in ordered):
            plan.keep.setdefault(backup_id, []).append(why)
    plan.remove = [c.backup_id for c in reversed(ordered) if c.backup_id not in plan.keep]
    return plan
