"""Approval on Prefect's test harness (issue 24): the form the server stores requires an approver and a reason, a
resume without them is refused by the server, and one that reaches the run anyway (a client that bypasses the
resume endpoint) is refused by the run, which keeps waiting. An approval by nobody never changes anything."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest
from prefect import flow
from prefect.artifacts import Artifact
from prefect.flow_runs import resume_flow_run

from runbooks.frame import RunbookResult, RunbookRun, request_approval
from runbooks.frame.approval import NOT_BLANK
from runbooks.sandbox import SandboxState
from tasks.reports import artifact_key
from tests.approvals import act_when_paused, paused_run, resume_bypassing_the_schema, stored_form
from tests.events import runbook_events
from tests.pgfixtures import admin_dsn, content_checksums
from tests.test_restore import databases, operations, restore, source  # noqa: F401 - source is a fixture

EMPTY = {"approve": True, "approver": "", "reason": ""}
BLANK = {"approve": True, "approver": "   ", "reason": "\t"}
INVISIBLE = {"approve": True, "approver": "\u200b", "reason": "\u3164\u2060 \ufeff\u2800"}  # draws nothing
APPROVE = {"approve": True, "approver": "oncall-alice", "reason": "positions table corrupted at 01:40"}
REJECT = {"approve": False, "approver": "oncall-bob", "reason": "backup too old"}
SUMMARY = "Approve test plan `abc123` (nothing is changed by this test)"


@flow(name="approval-test")
def approval_flow(resource: str, timeout_seconds: int = 120) -> dict[str, Any]:
    run: RunbookRun[RunbookResult] = RunbookRun("approval-test", resource=resource)
    approval = request_approval(run, plan_hash="abc123", confirm=None, summary=SUMMARY,
                                timeout_seconds=timeout_seconds, poll_seconds=1)
    return approval.model_dump(mode="json")


def state_of(run_id: Any) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state.type.value if state else "none"


def test_the_stored_form_requires_an_approver_and_a_reason(config: SandboxState) -> None:
    form: dict[str, Any] = {}

    def operator() -> None:
        run = paused_run()
        form["schema"], form["description"] = stored_form(run)
        resume_flow_run(run.id, run_input=REJECT)

    thread = act_when_paused(operator)
    approval = approval_flow(f"res-{uuid.uuid4().hex[:8]}")
    thread.join(30)
    assert not thread.errors  # type: ignore[attr-defined]
    schema = form["schema"]
    assert set(schema["required"]) == {"approver", "reason"}
    for name in ("approver", "reason"):
        field = schema["properties"][name]
        assert (field["type"], field["minLength"], field["pattern"]) == ("string", 1, NOT_BLANK)
        assert "default" not in field and "required, not blank" in field["description"]
    assert schema["properties"]["approve"]["default"] is False
    assert "approve the plan" in schema["properties"]["approve"]["description"]
    assert form["description"] == SUMMARY
    assert (approval["approved"], approval["approver"]) == (False, "oncall-bob")


def test_the_server_refuses_an_approval_by_nobody_and_the_run_keeps_waiting(config: SandboxState,
                                                                           prefect_api: str) -> None:
    seen: dict[str, Any] = {}

    def operator() -> None:
        run = paused_run()
        for decision in (EMPTY, BLANK, INVISIBLE, {"approve": True}):
            with pytest.raises(RuntimeError, match="Cannot resume this run"):
                resume_flow_run(run.id, run_input=decision)
        # The endpoint itself, as the UI or any HTTP client calls it.
        seen["raw"] = [httpx.post(f"{prefect_api}/flow_runs/{run.id}/resume", json={"run_input": d}).json()
                       for d in (EMPTY, BLANK, INVISIBLE)]
        seen["state"] = state_of(run.id)
        resume_flow_run(run.id, run_input=APPROVE)  # the same form still takes a real decision

    thread = act_when_paused(operator)
    approval = approval_flow(f"res-{uuid.uuid4().hex[:8]}")
    thread.join(30)
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]
    assert [r["status"] for r in seen["raw"]] == ["REJECT", "REJECT", "REJECT"]
    assert "approver" in seen["raw"][0]["details"]["reason"] or "reason" in seen["raw"][0]["details"]["reason"]
    assert seen["state"] == "PAUSED"
    assert (approval["approved"], approval["approver"], approval["reason"], approval["via"]) == (
        True, APPROVE["approver"], APPROVE["reason"], "operator")


@pytest.mark.parametrize("decision", [EMPTY, BLANK, INVISIBLE], ids=["empty", "whitespace", "invisible"])
def test_an_approval_by_nobody_that_bypasses_the_server_is_refused_by_the_run(config: SandboxState,
                                                                            decision: dict[str, Any]) -> None:
    """The run pauses again with a fresh form; a later real decision stands."""
    resource = f"res-{uuid.uuid4().hex[:8]}"

    def operator() -> None:
        run = paused_run()
        resume_bypassing_the_schema(run, decision)
        again = paused_run(timeout=30, other_than=run.state.state_details.pause_key)
        assert again.id == run.id
        resume_flow_run(again.id, run_input=REJECT)

    thread = act_when_paused(operator)
    approval = approval_flow(resource)
    thread.join(30)
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]
    assert (approval["approved"], approval["approver"], approval["via"]) == (False, "oncall-bob", "operator")
    [refused] = runbook_events(f"runbooks.approval-test.{resource}", names=["runbooks.approval.input-refused"],
                               until=lambda events: events)
    assert "approver" in refused.payload["why"] and "reason" in refused.payload["why"]
    assert refused.payload["plan_hash"] == "abc123" and refused.payload["seconds_left"] > 0


def test_a_run_whose_only_input_was_refused_concludes_not_approved_at_its_deadline(config: SandboxState) -> None:
    thread = act_when_paused(lambda: resume_bypassing_the_schema(paused_run(), EMPTY))
    approval = approval_flow(f"res-{uuid.uuid4().hex[:8]}", timeout_seconds=15)
    thread.join(30)
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]
    assert (approval["approved"], approval["approver"], approval["via"]) == (False, "nobody", "timeout")
    assert approval["reason"] == "no valid decision within 15 s (1 refused: no approver or reason)"


def test_a_replace_restore_approved_by_nobody_changes_nothing(config: SandboxState, source: str,  # noqa: F811
                                                              simulator: httpx.Client, prefect_api: str) -> None:
    """The incident: an empty approval posted to the resume endpoint halted trading and swapped the database."""
    before, content = databases(config), content_checksums(config, source)
    with psycopg.connect(admin_dsn(config, source)) as conn:
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()
    seen: dict[str, Any] = {}

    def operator() -> None:
        run = paused_run(timeout=120)
        seen["raw"] = httpx.post(f"{prefect_api}/flow_runs/{run.id}/resume", json={"run_input": EMPTY}).json()
        seen["state"] = state_of(run.id)
        resume_flow_run(run.id, run_input=REJECT)

    thread = act_when_paused(operator)
    state, result = restore(database=source, mode="replace", approval_poll_seconds=1, approval_timeout_seconds=120)
    thread.join(30)
    assert databases(config) == before and content_checksums(config, source) == content
    with psycopg.connect(admin_dsn(config, source)) as conn:  # the very same live database, not a swapped copy
        assert conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone() == oid
    assert operations(simulator) == []  # trading untouched
    assert (seen["raw"]["status"], seen["state"]) == ("REJECT", "PAUSED")
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]
    assert state.is_completed() and result.status == "rejected" and result.declined  # a decision: not paged
    report = Artifact.get(artifact_key(f"restore-report-{source}"))
    assert report is not None and "Rejected by **oncall-bob**" in str(report.data)
    assert "****" not in str(report.data)
