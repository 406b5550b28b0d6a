"""Approval of a plan: an operator's decision with identity (pause for a RunInput), or an unattended ``confirm``
equal to the plan hash. The deadline is ours, not Prefect's: at it the run resumes itself with "timed out", so it
can still clean up and report (Prefect's own pause timeout would fail the run server-side).

A decision needs an approver and a reason. The server refuses a resume without them, against the schema it stores
for the form; should one reach the run anyway (a client that writes the input and sets the run RUNNING itself),
the run refuses it too: nothing is approved, and it pauses again with a fresh form until a valid decision or the
deadline, whichever comes first."""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Literal

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field, ValidationError

from runbooks.errors import Refused
from runbooks.frame.run import RunbookRun
from runbooks.text import VISIBLE_PATTERN, is_blank

TIMEOUT_APPROVER = "runbooks (approval timeout)"
# The form's help for every runbook's approval_timeout_seconds and approval_poll_seconds.
TIMEOUT_HELP = "How long the run waits for an approver before it concludes 'not approved' and changes nothing."
POLL_HELP = "How often the paused run looks for the decision."
GRACE_SECONDS = 3600  # Prefect's own pause timeout, beyond ours: only reached if our timer cannot resume the run
# At least one visible character (not whitespace, a control, a zero-width or a blank-looking one). JSON Schema's
# "pattern" and pydantic's both search rather than match the whole string, so the server refuses "   " and
# "\u200b" as it refuses "", and so does the model; the run checks again with runbooks.text.is_blank.
NOT_BLANK = VISIBLE_PATTERN


class ApprovalInput(RunInput):
    """The on-call decision (the Prefect UI renders this form on the paused run). Approver and reason carry their
    constraints into the schema the server stores, so the server itself refuses a decision without them."""

    approve: bool = Field(default=False, description="Tick to approve the plan exactly as published; leave it "
                                                     "unticked to reject it")
    approver: str = Field(min_length=1, pattern=NOT_BLANK, description="Who decides: your name (required, not blank)")
    reason: str = Field(min_length=1, pattern=NOT_BLANK,
                        description="Why you approve or reject (required, not blank; goes into the report)")


class Approval(BaseModel):
    """The decision as the run acts on it and the report shows it: never without an approver and a reason."""

    approved: bool
    approver: str = Field(min_length=1, pattern=NOT_BLANK)
    reason: str = Field(min_length=1, pattern=NOT_BLANK)
    via: Literal["operator", "confirm", "timeout"]
    plan_hash: str
    decided_at: datetime


def approval_form(summary: str) -> type[ApprovalInput]:
    """The form for one pause: ``ApprovalInput`` with ``summary`` as its description and no initial data.

    Prefect's ``with_initial_data`` rebuilds every field given initial data from its bare annotation, without its
    ``Field``: ``approver=""`` stored a schema with ``default: ""`` and no ``minLength``, so the server accepted an
    approval by nobody for no reason. The fields keep their own defaults instead (``approve`` is false)."""
    return ApprovalInput.with_initial_data(description=summary)


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


def _pause_once(*, plan_hash: str, summary: str, seconds: float, poll_seconds: int) -> ApprovalInput:
    """One pause with a fresh key (one Prefect has not seen in this run: a real pause), answered "timed out" by our
    timer after ``seconds``. Raises ValidationError when the input given does not fit the form."""
    from prefect.runtime import flow_run

    key = f"approve-{plan_hash}-{uuid.uuid4().hex[:8]}"
    timer = threading.Timer(seconds, contextvars.copy_context().run, args=(_resume_on_timeout, flow_run.id, key))
    timer.daemon = True
    timer.start()
    try:
        return pause_flow_run(wait_for_input=approval_form(summary), timeout=int(seconds) + GRACE_SECONDS,
                              poll_interval=poll_seconds, key=key)
    except FlowPauseTimeout:  # the timer could not resume the run (API unreachable)
        return ApprovalInput(approve=False, approver=TIMEOUT_APPROVER, reason="approval timed out")
    finally:
        timer.cancel()


def request_approval(run: RunbookRun, *, plan_hash: str, confirm: str | None, summary: str, timeout_seconds: int,
                     poll_seconds: int) -> Approval:
    """Wait for an operator's decision on the plan, unless ``confirm`` equals its hash.

    A decision without an approver or a reason (blank counts as missing) is refused, logged and recorded as the
    event ``approval.input-refused``, and the run pauses again for what is left of ``timeout_seconds``: it is never
    taken as an approval. Raises Refused when ``confirm`` is given but names another plan (the plan changed since
    it was confirmed).
    """
    now = datetime.now(UTC)
    if confirm is not None:
        if confirm != plan_hash:
            raise Refused(f"confirm {confirm!r} does not match this plan's hash {plan_hash!r}.",
                          hint="the plan changed since it was confirmed; run a dry run and confirm the new hash.")
        run.logger.info("Plan %s confirmed by parameter: approved unattended", plan_hash)
        return Approval(approved=True, approver="confirm parameter (unattended)", reason="plan hash matched",
                        via="confirm", plan_hash=plan_hash, decided_at=now)
    run.logger.warning("Waiting up to %d s for approval of plan %s (resume the paused run in the Prefect UI)",
                       timeout_seconds, plan_hash)
    run.steps.event("approval.requested", plan_hash=plan_hash, timeout_seconds=timeout_seconds)
    deadline = time.monotonic() + timeout_seconds
    refused = 0
    decision: ApprovalInput | None = None
    while decision is None:
        left = deadline - time.monotonic()
        if left <= 0:
            decision = ApprovalInput(approve=False, approver=TIMEOUT_APPROVER, reason="approval timed out")
            break
        why: str | None
        try:
            decision = _pause_once(plan_hash=plan_hash, summary=summary, seconds=left, poll_seconds=poll_seconds)
            why = None if decision.approver == TIMEOUT_APPROVER else refused_because(decision)
        except ValidationError as exc:  # the input reached the run without passing the form's schema
            why = _errors(exc)
        if why is not None:
            refused += 1
            decision = None
            left = max(0, round(deadline - time.monotonic()))
            run.logger.error("Decision on plan %s refused, nothing approved or changed: %s. A decision needs an "
                             "approver and a reason; waiting %d s more for one (resume the paused run again)",
                             plan_hash, why, left)
            run.steps.event("approval.input-refused", plan_hash=plan_hash, why=why, seconds_left=left)
    decided_at = datetime.now(UTC)
    if decision.approver == TIMEOUT_APPROVER:
        run.logger.error("No approval within %d s: nothing changed", timeout_seconds)
        valid = " valid" if refused else ""
        approval = Approval(approved=False, approver="nobody", via="timeout",
                            reason=f"no{valid} decision within {timeout_seconds} s"
                                   + (f" ({refused} refused: no approver or reason)" if refused else ""),
                            plan_hash=plan_hash, decided_at=decided_at)
    else:
        approver, reason = decision.approver.strip(), decision.reason.strip()
        run.logger.info("Plan %s %s by %r: %s", plan_hash, "approved" if decision.approve else "rejected",
                        approver, reason)
        approval = Approval(approved=decision.approve, approver=approver, reason=reason, via="operator",
                            plan_hash=plan_hash, decided_at=decided_at)
    run.steps.event("approval.decided", plan_hash=plan_hash, approved=approval.approved, approver=approval.approver,
                    reason=approval.reason, via=approval.via)
    return approval


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
