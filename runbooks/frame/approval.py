"""Approval of a plan: operators' decisions with identity (pause for a RunInput), or an unattended ``confirm``
equal to the plan hash. The deadline is ours, not Prefect's: at it the run resumes itself with "timed out", so it
can still clean up and report (Prefect's own pause timeout would fail the run server-side).

A decision needs an approver and a reason. The server refuses a resume without them, against the schema it stores
for the form; should one reach the run anyway (a client that writes the input and sets the run RUNNING itself),
the run refuses it too: nothing is approved, and it pauses again with a fresh form until a valid decision or the
deadline, whichever comes first.

Four eyes: ``[approvals] required`` (or ``[approvals.runbooks] <runbook>``) distinct people must approve, one
pause each within the same deadline. A name that already approved is refused like a blank one (names compared
case-insensitively, whitespace and invisible characters ignored: "Alice" and " a lice " are one person); a
rejection by anyone, that person included, rejects at once. ``confirm`` is the operator's unattended path and
stands for the whole approval, however many approvers are required: whoever starts a run with the plan hash has
reviewed that plan."""

from __future__ import annotations

import contextvars
import threading
import time
import unicodedata
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field, ValidationError

from runbooks.core.errors import Refused
from runbooks.core.text import VISIBLE_PATTERN, is_blank, visible
from runbooks.decisions.report import inline
from runbooks.frame.run import RunbookRun
from runbooks.tasks.reports import artifact_key

TIMEOUT_APPROVER = "runbooks (approval timeout)"
# The form's help for every runbook's approval_timeout_seconds and approval_poll_seconds.
TIMEOUT_HELP = "How long the run waits for an approver before it concludes 'not approved' and changes nothing."
POLL_HELP = "How often the paused run looks for the decision."
GRACE_SECONDS = 3600  # Prefect's own pause timeout, beyond ours: only reached if our timer cannot resume the run
# At least one visible character (not whitespace, a control, a zero-width or a blank-looking one). JSON Schema's
# "pattern" and pydantic's both search rather than match the whole string, so the server refuses "   " and
# "\u200b" as it refuses "", and so does the model; the run checks again with runbooks.core.text.is_blank.
NOT_BLANK = VISIBLE_PATTERN


class ApprovalInput(RunInput):
    """The on-call decision (the Prefect UI renders this form on the paused run). Approver and reason carry their
    constraints into the schema the server stores, so the server itself refuses a decision without them."""

    approve: bool = Field(default=False, description="Tick to approve the plan exactly as published; leave it "
                                                     "unticked to reject it")
    approver: str = Field(min_length=1, pattern=NOT_BLANK, description="Who decides: your name (required, not blank)")
    reason: str = Field(min_length=1, pattern=NOT_BLANK,
                        description="Why you approve or reject (required, not blank; goes into the report)")


class Decision(BaseModel):
    """One person's decision on the plan, as the run accepted it."""

    approve: bool
    approver: str = Field(min_length=1, pattern=NOT_BLANK)
    reason: str = Field(min_length=1, pattern=NOT_BLANK)
    decided_at: datetime


class Approval(BaseModel):
    """The decision as the run acts on it and the report shows it: never without an approver and a reason. With
    several approvers, ``approver`` lists them ("alice, bob") and ``reason`` gives each one's words."""

    approved: bool
    approver: str = Field(min_length=1, pattern=NOT_BLANK)
    reason: str = Field(min_length=1, pattern=NOT_BLANK)
    via: Literal["operator", "confirm", "timeout"]
    plan_hash: str
    decided_at: datetime
    required: int = Field(default=1, ge=1, description="distinct approvers the plan needed ([approvals])")
    decisions: list[Decision] = Field(default_factory=list, description="every decision accepted, in order: the "
                                      "approvals, then the rejection if there was one")


def approver_identity(name: str) -> str:
    """Who ``name`` is, for telling approvers apart: compatibility-normalised, case-folded, without whitespace or
    characters that draw nothing, so "Alice", " alice " and "a\u200blice" are the same person."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return "".join(visible(folded).split())


def artifact_link(key: str, *, artifact_id: object | None = None) -> str:
    """Markdown naming the artifact ``key`` (as published: ``artifact_key`` applied), linked to its page in the
    Prefect UI when the UI's address is known: the very version ``artifact_id`` (``/artifacts/artifact/<id>``, its
    content), else the key's history (``/artifacts/key/<key>``); both are the UI's own routes."""
    from prefect.settings import PREFECT_UI_URL

    key = artifact_key(key)
    base = PREFECT_UI_URL.value()
    if not base:
        return f"`{key}` (Prefect UI: Artifacts)"
    page = f"artifact/{artifact_id}" if artifact_id else f"key/{key}"
    return f"[{key}]({base.rstrip('/')}/artifacts/{page})"


def published_by_this_run(key: str) -> object | None:
    """The id of the newest artifact ``key`` this flow run published, or None (no run, none, or the API cannot say).
    The form links that version, never one another run published under the same key meanwhile (a disk-cleanup plan
    of another host)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.runtime import flow_run

    if not flow_run.id:
        return None
    try:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key(key)]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])), sort=ArtifactSort.CREATED_DESC, limit=1)
    except Exception:  # noqa: BLE001 - the link then shows the key's history: the form stays usable
        return None
    return found[0].id if found else None


def approval_description(summary: str, *, plan_hash: str, plan_artifact: str | None = None, required: int = 1,
                         approved_by: Sequence[str] = (), artifact_id: object | None = None) -> str:
    """What the paused run's form says (markdown, above the fields): the summary, the plan hash, the plan artifact
    (the version ``artifact_id`` when known) and, with four eyes, which approval this is and who approved already."""
    parts = [summary, f"**Plan hash:** `{plan_hash}`: approve only the plan you reviewed under this hash."]
    if plan_artifact:
        parts.append(f"**Plan:** {artifact_link(plan_artifact, artifact_id=artifact_id)}")
    if approved_by:
        parts.append(f"**Approval {len(approved_by) + 1} of {required}:** approved so far by "
                     f"{', '.join(f'**{inline(name)}**' for name in approved_by)}. A different person must decide: "
                     "an approval under a name that already approved is refused.")
    elif required > 1:
        parts.append(f"**Four eyes:** {required} different people must approve, one after the other on this run; "
                     "a rejection by anyone rejects the plan.")
    return "\n\n".join(parts)


def approval_form(summary: str, *, plan_hash: str | None = None, plan_artifact: str | None = None,
                  required: int = 1, approved_by: Sequence[str] = (),
                  artifact_id: object | None = None) -> type[ApprovalInput]:
    """The form for one pause: ``ApprovalInput`` described by ``approval_description`` (just ``summary`` without
    a plan hash) and no initial data.

    Prefect's ``with_initial_data`` rebuilds every field given initial data from its bare annotation, without its
    ``Field``: ``approver=""`` stored a schema with ``default: ""`` and no ``minLength``, so the server accepted an
    approval by nobody for no reason. The fields keep their own defaults instead (``approve`` is false)."""
    description = summary if plan_hash is None else approval_description(
        summary, plan_hash=plan_hash, plan_artifact=plan_artifact, required=required, approved_by=approved_by,
        artifact_id=artifact_id)
    return ApprovalInput.with_initial_data(description=description)


def refused_because(decision: ApprovalInput) -> str | None:
    """Why ``decision`` cannot stand, or None. Checked on the loaded input itself, whatever schema it came in by."""
    blank = [name for name in ("approver", "reason") if is_blank(getattr(decision, name))]
    return f"{' and '.join(blank)} {'is' if len(blank) == 1 else 'are'} blank" if blank else None


def _errors(exc: ValidationError) -> str:
    """A validation error as one line, fields and messages only (never the submitted values)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors())


def _resume_on_timeout(run_id: object, key: str) -> None:
    """Answer "timed out" to this very pause (its key), never to a later one of the same run."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state  # type: ignore[arg-type]
        if state is None or not state.is_paused() or state.state_details.pause_key != key:
            return
        resume_flow_run(run_id, run_input={"approve": False, "approver": TIMEOUT_APPROVER,  # type: ignore[arg-type]
                                           "reason": "approval timed out"})
    except Exception:  # noqa: BLE001 - a human decided at the same moment: theirs stands
        pass


def _pause_once(*, key: str, form: type[ApprovalInput], seconds: float, poll_seconds: int) -> ApprovalInput:
    """One pause under ``key`` (one Prefect has not seen in this run: a real pause), answered "timed out" by our
    timer after ``seconds``. Raises ValidationError when the input given does not fit the form."""
    from prefect.runtime import flow_run

    timer = threading.Timer(seconds, contextvars.copy_context().run, args=(_resume_on_timeout, flow_run.id, key))
    timer.daemon = True
    timer.start()
    try:
        return pause_flow_run(wait_for_input=form, timeout=int(seconds) + GRACE_SECONDS,
                              poll_interval=poll_seconds, key=key)
    except FlowPauseTimeout:  # the timer could not resume the run (API unreachable)
        return ApprovalInput(approve=False, approver=TIMEOUT_APPROVER, reason="approval timed out")
    finally:
        timer.cancel()


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def request_approval(run: RunbookRun, *, plan_hash: str, confirm: str | None, summary: str, timeout_seconds: int,
                     poll_seconds: int, plan_artifact: str | None = None) -> Approval:
    """Wait for operators' decisions on the plan (``confirm`` equal to its hash counts as one, or as all when one is
    required).

    The plan needs ``run.settings.approvals.required_for(run.runbook)`` approvals by distinct people within
    ``timeout_seconds`` (one pause each; the form says who approved already); a rejection by anyone rejects. A
    decision without an approver or a reason (blank counts as missing), or an approval under a name that already
    approved, is refused, logged and recorded as the event ``approval.input-refused``, and the run pauses again for
    what is left of ``timeout_seconds``: it is never taken as an approval. ``plan_artifact`` is the key of the plan
    artifact the run published just before: the form links it. ``confirm`` equal to the plan hash is the whole
    approval when one is required (the unattended path), and one approval of several otherwise. Raises Refused when
    ``confirm`` is given but names another plan (the plan changed since it was confirmed).
    """
    required = run.settings.approvals.required_for(run.runbook)
    now = datetime.now(UTC)
    if confirm is not None:
        if confirm != plan_hash:
            raise Refused(f"confirm {confirm!r} does not match this plan's hash {plan_hash!r}.",
                          hint="the plan changed since it was confirmed; run a dry run and confirm the new hash.")
        unattended = Decision(approve=True, approver="confirm parameter (unattended)", reason="plan hash matched",
                              decided_at=now)
        if required == 1:
            run.logger.info("Plan %s confirmed by parameter: approved unattended", plan_hash)
            return Approval(approved=True, approver=unattended.approver, reason=unattended.reason, via="confirm",
                            plan_hash=plan_hash, decided_at=now, required=required, decisions=[unattended])
        # Four eyes: whoever started the run could confirm the hash of their own dry run, so confirm is one
        # approval (the starter's), and the run still pauses for the others.
        run.logger.info("Plan %s confirmed by parameter: one of the %d approvals [approvals] requires of %s; "
                        "waiting for the rest", plan_hash, required, run.runbook)
    else:
        unattended = None
    who = "an approver" if required == 1 else f"{required} distinct approvers"
    run.logger.warning("Waiting up to %d s for %s of plan %s (resume the paused run in the Prefect UI)",
                       timeout_seconds, who, plan_hash)
    run.steps.event("approval.requested", plan_hash=plan_hash, timeout_seconds=timeout_seconds, required=required,
                    plan_artifact=artifact_key(plan_artifact) if plan_artifact else None)
    deadline = time.monotonic() + timeout_seconds
    artifact_id = published_by_this_run(plan_artifact) if plan_artifact else None
    refused = {"blank": 0, "again": 0}
    decisions: list[Decision] = [unattended] if unattended is not None else []
    timed_out = False
    while len(decisions) < required and (not decisions or decisions[-1].approve):
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        approved_by = [d.approver for d in decisions]
        # A fresh key per pause (Prefect skips a key it has seen), readable in the run's state: what, which plan,
        # which approval. Input keys take lower-case letters, digits and dashes only.
        key = f"{artifact_key(f'approve-{run.runbook}-{plan_hash}-{len(decisions) + 1}of{required}')}-" \
              f"{uuid.uuid4().hex[:8]}"
        form = approval_form(summary, plan_hash=plan_hash, plan_artifact=plan_artifact, required=required,
                             approved_by=approved_by, artifact_id=artifact_id)
        why: str | None
        try:
            decision = _pause_once(key=key, form=form, seconds=left, poll_seconds=poll_seconds)
        except ValidationError as exc:  # the input reached the run without passing the form's schema
            why, kind = _errors(exc), "blank"
        else:
            if decision.approver == TIMEOUT_APPROVER:
                timed_out = True
                break
            why, kind = refused_because(decision), "blank"
            if why is None and decision.approve:
                identity = approver_identity(decision.approver)
                if twin := next((d.approver for d in decisions if approver_identity(d.approver) == identity), None):
                    named = decision.approver.strip()
                    why, kind = (f"approver {named!r}{'' if named == twin else f' is {twin!r}, who'} already "
                                 "approved: a different person must decide"), "again"
        if why is not None:
            refused[kind] += 1
            left = max(0, round(deadline - time.monotonic()))
            run.logger.error("Decision on plan %s refused, nothing approved or changed: %s. A decision needs an "
                             "approver and a reason%s; waiting %d s more for one (resume the paused run again)",
                             plan_hash, why, ", and a name that has not approved yet" if required > 1 else "", left)
            run.steps.event("approval.input-refused", plan_hash=plan_hash, why=why, seconds_left=left)
            continue
        accepted = Decision(approve=decision.approve, approver=decision.approver.strip(),
                            reason=decision.reason.strip(), decided_at=datetime.now(UTC))
        decisions.append(accepted)
        approvals = sum(d.approve for d in decisions)
        if accepted.approve and approvals < required:
            run.logger.info("Plan %s approved by %r (%d of %d distinct approvers): %s; waiting for a different "
                            "person", plan_hash, accepted.approver, approvals, required, accepted.reason)
            run.steps.event("approval.partial", plan_hash=plan_hash, approver=accepted.approver,
                            reason=accepted.reason, approvals=approvals, required=required)
    approval = _conclude(decisions, refused=refused, timed_out=timed_out, required=required, plan_hash=plan_hash,
                         timeout_seconds=timeout_seconds)
    if approval.via == "timeout":
        run.logger.error("No approval within %d s: nothing changed (%s)", timeout_seconds, approval.reason)
    else:
        run.logger.info("Plan %s %s by %r: %s", plan_hash, "approved" if approval.approved else "rejected",
                        approval.approver, approval.reason)
    run.steps.event("approval.decided", plan_hash=plan_hash, approved=approval.approved, approver=approval.approver,
                    reason=approval.reason, via=approval.via, required=required,
                    approvers=[d.approver for d in approval.decisions if d.approve])
    return approval


def _conclude(decisions: list[Decision], *, refused: dict[str, int], timed_out: bool, required: int,
              plan_hash: str, timeout_seconds: int) -> Approval:
    """The Approval the decisions add up to: approved by all of them, rejected by the last, or timed out."""
    decided_at = datetime.now(UTC)
    approvers = [d.approver for d in decisions if d.approve]
    if timed_out:
        notes = ([f"{refused['blank']} refused: no approver or reason"] if refused["blank"] else []) + (
            [f"{refused['again']} refused: an approver who had already approved"] if refused["again"] else [])
        valid = " valid" if notes else ""
        if approvers:
            reason = (f"only {len(approvers)} of {_plural(required, 'distinct approver')} within {timeout_seconds} s "
                      f"(approved by {', '.join(approvers)})")
        else:
            reason = f"no{valid} decision within {timeout_seconds} s"
        reason += f" ({'; '.join(notes)})" if notes else ""
        return Approval(approved=False, approver="nobody", via="timeout", reason=reason, plan_hash=plan_hash,
                        decided_at=decided_at, required=required, decisions=decisions)
    last = decisions[-1]
    if not last.approve:
        before = [d.approver for d in decisions[:-1]]
        reason = last.reason + (f" (after approval by {', '.join(before)})" if before else "")
        return Approval(approved=False, approver=last.approver, reason=reason, via="operator", plan_hash=plan_hash,
                        decided_at=decided_at, required=required, decisions=decisions)
    reason = last.reason if len(decisions) == 1 else "; ".join(f"{d.approver}: {d.reason}" for d in decisions)
    return Approval(approved=True, approver=", ".join(approvers), reason=reason, via="operator", plan_hash=plan_hash,
                    decided_at=decided_at, required=required, decisions=decisions)


def cancel_orphaned_approvals(run: RunbookRun, *, tag: str) -> list[str]:
    """Cancel PAUSED runs tagged with ``tag`` (a lock this run now holds): a paused run that still lived would
    hold that lock, so these were killed while paused and their forms can never be used. Returns their ids."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    cancelled = []
    with get_client(sync_client=True) as client:
        if run.flow_run_id:
            current = client.read_flow_run(run.flow_run_id)  # type: ignore[arg-type]
            client.update_flow_run(current.id, tags=sorted({*current.tags, tag}))
        paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
            tags=FlowRunFilterTags(all_=[tag])))
        for orphan in paused:
            if str(orphan.id) == run.flow_run_id:
                continue
            client.set_flow_run_state(orphan.id, Cancelled(
                message=f"orphaned approval: the run was killed while paused; superseded by run {run.flow_run_id}"),
                force=True)
            cancelled.append(str(orphan.id))
            run.logger.warning("Cancelled orphaned paused run %s (%s): killed while waiting for approval",
                               orphan.name, orphan.id)
    if cancelled:
        run.steps.event("approval.orphans-cancelled", runs=", ".join(cancelled))
    return cancelled
