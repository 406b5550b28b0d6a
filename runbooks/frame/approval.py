"""Approval of a plan: an operator's decision with identity (pause for a RunInput), or an unattended ``confirm``
equal to the plan hash. The deadline is ours, not Prefect's: at it the run resumes itself with "timed out", so it
can still clean up and report (Prefect's own pause timeout would fail the run server-side)."""

from __future__ import annotations

import contextvars
import threading
import uuid
from datetime import UTC, datetime
from typing import Literal

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field

from runbooks.errors import Refused
from runbooks.frame.run import RunbookRun

TIMEOUT_APPROVER = "runbooks (approval timeout)"
GRACE_SECONDS = 3600  # Prefect's own pause timeout, beyond ours: only reached if our timer cannot resume the run


class ApprovalInput(RunInput):
    """The on-call decision (the Prefect UI renders this form on the paused run)."""

    approve: bool = Field(description="Approve the plan exactly as published")
    approver: str = Field(min_length=1, description="Who decides")
    reason: str = Field(min_length=1, description="Why (goes into the report)")


class Approval(BaseModel):
    approved: bool
    approver: str
    reason: str
    via: Literal["operator", "confirm", "timeout"]
    plan_hash: str
    decided_at: datetime


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


def request_approval(run: RunbookRun, *, plan_hash: str, confirm: str | None, summary: str, timeout_seconds: int,
                     poll_seconds: int) -> Approval:
    """Wait for an operator's decision on the plan, unless ``confirm`` equals its hash.

    Raises Refused when ``confirm`` is given but names another plan (the plan changed since it was confirmed).
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
    from prefect.runtime import flow_run

    key = f"approve-{plan_hash}-{uuid.uuid4().hex[:8]}"  # a key Prefect has not seen in this run: a real pause
    timer = threading.Timer(timeout_seconds, contextvars.copy_context().run,
                            args=(_resume_on_timeout, flow_run.id, key))
    timer.daemon = True
    timer.start()
    try:
        decision = pause_flow_run(
            wait_for_input=ApprovalInput.with_initial_data(description=summary, approve=False, approver="",
                                                           reason=""),
            timeout=timeout_seconds + GRACE_SECONDS, poll_interval=poll_seconds, key=key)
    except FlowPauseTimeout:  # the timer could not resume the run (API unreachable)
        decision = ApprovalInput(approve=False, approver=TIMEOUT_APPROVER, reason="approval timed out")
    finally:
        timer.cancel()
    decided_at = datetime.now(UTC)
    if decision.approver == TIMEOUT_APPROVER:
        run.logger.error("No approval within %d s: nothing changed", timeout_seconds)
        approval = Approval(approved=False, approver="nobody", reason=f"no decision within {timeout_seconds} s",
                            via="timeout",
                            plan_hash=plan_hash, decided_at=decided_at)
    else:
        run.logger.info("Plan %s %s by %r: %s", plan_hash, "approved" if decision.approve else "rejected",
                        decision.approver, decision.reason)
        approval = Approval(approved=decision.approve, approver=decision.approver, reason=decision.reason,
                            via="operator", plan_hash=plan_hash, decided_at=decided_at)
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
