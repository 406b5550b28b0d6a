"""Approval on Prefect's test harness (issue 24): the form the server stores requires an approver and a reason, a
resume without them is refused by the server, and one that reaches the run anyway (a client that bypasses the
resume endpoint) is refused by the run, which keeps waiting. An approval by nobody never changes anything.

Four eyes (issue 26): with ``[approvals] required = 2`` two distinct people approve in turn on the same run, the
same name again is refused like a blank one, a rejection by anyone rejects, and the deadline covers both. The form
says what is being approved: the summary, the plan hash and a link to the plan artifact."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prefect import flow
from prefect.artifacts import Artifact
from prefect.flow_runs import resume_flow_run

from runbooks.core.errors import ConfigurationError
from runbooks.flows import RUNBOOKS
from runbooks.frame import RunbookResult, RunbookRun, request_approval
from runbooks.frame.approval import NOT_BLANK, approval_description, approver_identity, artifact_link
from runbooks.settings import APPROVING_RUNBOOKS, load_settings
from runbooks.tasks.reports import artifact_key, publish_report
from runbooks_sandbox import SandboxState
from tests.approvals import act_when_paused, decide_when_paused, paused_run, resume_bypassing_the_schema, stored_form
from tests.events import runbook_events
from tests.pgfixtures import admin_dsn, content_checksums, databases
from tests.runs import restore
from tests.test_restore import operations, source  # noqa: F401 - source is a fixture

EMPTY = {"approve": True, "approver": "", "reason": ""}
BLANK = {"approve": True, "approver": "   ", "reason": "\t"}
INVISIBLE = {"approve": True, "approver": "\u200b", "reason": "\u3164\u2060 \ufeff\u2800"}  # draws nothing
APPROVE = {"approve": True, "approver": "oncall-alice", "reason": "positions table corrupted at 01:40"}
REJECT = {"approve": False, "approver": "oncall-bob", "reason": "backup too old"}
ALICE = {"approve": True, "approver": "oncall-alice", "reason": "positions table corrupted at 01:40"}
BOB = {"approve": True, "approver": "oncall-bob", "reason": "row counts of the plan checked"}
SUMMARY = "Approve test plan `abc123` (nothing is changed by this test)"
ROOT = Path(__file__).resolve().parents[1]


@flow(name="approval-test-other-run")
def other_run_publishes(key: str) -> None:
    """Another run (another host's disk cleanup, say) publishing a plan under the same key."""
    publish_report(key=key, markdown="# Another run's plan `ffffff`", description="Another plan")


@flow(name="approval-test")
def approval_flow(resource: str, timeout_seconds: int = 120, runbook: str = "approval-test",
                  plan_artifact: str | None = None, confirm: str | None = None) -> dict[str, Any]:
    """A runbook that only asks: ``runbook`` names it for [approvals] (e.g. "restore" for its per-runbook setting).
    With ``plan_artifact``, it publishes its plan there, then another run publishes another plan under that key."""
    run: RunbookRun[RunbookResult] = RunbookRun(runbook, resource=resource)
    if plan_artifact:
        publish_report(key=plan_artifact, markdown="# Test plan `abc123`", description="Test plan awaiting approval")
        other_run_publishes(plan_artifact)
    approval = request_approval(run, plan_hash="abc123", confirm=confirm, summary=SUMMARY,
                                timeout_seconds=timeout_seconds, poll_seconds=1, plan_artifact=plan_artifact)
    return approval.model_dump(mode="json")


@pytest.fixture
def four_eyes(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> SandboxState:
    """The sandbox config with two distinct approvers required of every runbook."""
    monkeypatch.setenv("RUNBOOKS_APPROVALS__REQUIRED", "2")
    return config


def artifacts_of(key: str, *, flow_name: str) -> list[Any]:
    """Ids of the artifacts ``key`` published by runs of the flow ``flow_name``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        return [a.id for a in found if a.flow_run_id and client.read_flow(
            client.read_flow_run(a.flow_run_id).flow_id).name == flow_name]


def state_of(run_id: Any) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state.type.value if state else "none"


def test_the_stored_form_requires_an_approver_and_a_reason(config: SandboxState) -> None:
    from prefect.settings import PREFECT_UI_URL

    form: dict[str, Any] = {}
    resource = f"res-{uuid.uuid4().hex[:8]}"

    def operator() -> None:
        run = paused_run()
        form["schema"], form["description"] = stored_form(run)
        form["key"] = run.state.state_details.pause_key
        resume_flow_run(run.id, run_input=REJECT)

    thread = act_when_paused(operator)
    approval = approval_flow(resource, plan_artifact=f"Approval_Test plan {resource}")
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
    # What is being approved: the summary, the plan hash, and a link to the plan this run published, under the key
    # it was published with (artifact keys are lower case with dashes: not the key as given), not to the newer plan
    # another run published under the same key.
    key = f"approval-test-plan-{resource}"
    ours, = artifacts_of(key, flow_name="approval-test")
    assert Artifact.get(key).id != ours  # type: ignore[union-attr]  # the newest is the other run's
    description = form["description"]
    assert description.startswith(SUMMARY + "\n\n") and "**Plan hash:** `abc123`" in description
    assert f"**Plan:** [{key}]({str(PREFECT_UI_URL.value()).rstrip('/')}/artifacts/artifact/{ours})" in description
    assert "Four eyes" not in description and "approved so far" not in description
    assert re.fullmatch(r"approve-approval-test-abc123-1of1-[0-9a-f]{8}", form["key"])
    assert (approval["approved"], approval["approver"]) == (False, "oncall-bob")
    assert [(d["approve"], d["approver"]) for d in approval["decisions"]] == [(False, "oncall-bob")]


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


@pytest.mark.slow  # end to end on real servers: run with the drills, to keep the suite short
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


# Four eyes (issue 26)


def test_two_distinct_approvers_approve_a_plan_of_a_runbook_that_requires_them(config: SandboxState,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """[approvals.runbooks] restore = 2 (as an environment variable): the run pauses twice, the second form says who
    approved and that a different person must decide; the result names both and keeps each decision."""
    monkeypatch.setenv("RUNBOOKS_APPROVALS__RUNBOOKS__RESTORE", "2")
    resource = f"res-{uuid.uuid4().hex[:8]}"
    approvers = decide_when_paused([ALICE, BOB], timeout=90)
    approval = approval_flow(resource, runbook="restore")
    approvers.join(30)
    assert not approvers.errors, approvers.errors  # type: ignore[attr-defined]
    assert (approval["approved"], approval["via"], approval["required"]) == (True, "operator", 2)
    assert approval["approver"] == "oncall-alice, oncall-bob"
    assert approval["reason"] == f"oncall-alice: {ALICE['reason']}; oncall-bob: {BOB['reason']}"
    assert [(d["approve"], d["approver"], d["reason"]) for d in approval["decisions"]] == [
        (True, "oncall-alice", ALICE["reason"]), (True, "oncall-bob", BOB["reason"])]
    first, second = approvers.forms  # type: ignore[attr-defined]
    assert "**Four eyes:** 2 different people must approve" in first and "approved so far" not in first
    assert "**Approval 2 of 2:** approved so far by **oncall-alice**. A different person must decide" in second
    assert "**Plan hash:** `abc123`" in second
    events = runbook_events(f"runbooks.restore.{resource}", until=lambda e: any(
        x.event == "runbooks.approval.decided" for x in e), names=[
        "runbooks.approval.requested", "runbooks.approval.partial", "runbooks.approval.decided"])
    assert [e.event.removeprefix("runbooks.approval.") for e in events] == ["requested", "partial", "decided"]
    requested, partial, decided = (e.payload for e in events)
    assert requested["required"] == 2
    assert (partial["approver"], partial["approvals"], partial["required"]) == ("oncall-alice", 1, 2)
    assert (decided["approved"], decided["approvers"], decided["via"]) == (True, ["oncall-alice", "oncall-bob"],
                                                                          "operator")


@pytest.mark.parametrize(("first", "again"), [("oncall-alice", "oncall-alice"), ("alice", " Alice "),
                                              ("Alice Smith", "alice\u00a0 SMITH\u200b")],
                         ids=["same", "case-and-spaces", "inner-and-invisible"])
def test_the_same_approver_twice_is_refused_and_the_run_waits_for_a_different_one(four_eyes: SandboxState,
                                                                                   first: str, again: str) -> None:
    resource = f"res-{uuid.uuid4().hex[:8]}"
    seen: dict[str, Any] = {}

    def operator() -> None:
        run = paused_run()
        resume_flow_run(run.id, run_input={**ALICE, "approver": first})
        second = paused_run(timeout=30, other_than=run.state.state_details.pause_key)
        resume_flow_run(second.id, run_input={**ALICE, "approver": again, "reason": "me again"})
        third = paused_run(timeout=30, other_than=second.state.state_details.pause_key)
        seen["third"] = (third.id == run.id, state_of(third.id), stored_form(third)[1])
        resume_flow_run(third.id, run_input=BOB)

    thread = act_when_paused(operator)
    approval = approval_flow(resource)
    thread.join(30)
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]
    same_run, state, description = seen["third"]
    assert same_run and state == "PAUSED"  # still waiting, for someone else
    assert f"approved so far by **{first}**" in description
    assert (approval["approved"], approval["approver"]) == (True, f"{first}, oncall-bob")
    assert [d["approver"] for d in approval["decisions"]] == [first, "oncall-bob"]
    [refused] = runbook_events(f"runbooks.approval-test.{resource}", names=["runbooks.approval.input-refused"],
                               until=lambda events: events)
    assert "already approved" in refused.payload["why"] and refused.payload["seconds_left"] > 0


@pytest.mark.parametrize("rejecter", ["oncall-bob", "Oncall-Alice"], ids=["another", "the-first-approver"])
def test_a_rejection_by_the_second_decision_rejects(four_eyes: SandboxState, rejecter: str) -> None:
    """Any rejection rejects, the first approver's own change of mind included: refusing a rejection would only
    keep a plan someone no longer wants alive."""
    approvers = decide_when_paused([ALICE, {**REJECT, "approver": rejecter}], timeout=90)
    approval = approval_flow(f"res-{uuid.uuid4().hex[:8]}")
    approvers.join(30)
    assert not approvers.errors, approvers.errors  # type: ignore[attr-defined]
    assert (approval["approved"], approval["approver"], approval["via"]) == (False, rejecter, "operator")
    assert approval["reason"] == f"{REJECT['reason']} (after approval by oncall-alice)"
    assert [(d["approve"], d["approver"]) for d in approval["decisions"]] == [(True, "oncall-alice"),
                                                                             (False, rejecter)]


@pytest.mark.slow  # end to end on real servers: run with the drills, to keep the suite short
def test_a_timeout_after_the_first_approval_is_not_an_approval(four_eyes: SandboxState) -> None:
    approvers = decide_when_paused([ALICE], timeout=60)
    approval = approval_flow(f"res-{uuid.uuid4().hex[:8]}", timeout_seconds=15)
    approvers.join(30)
    assert not approvers.errors, approvers.errors  # type: ignore[attr-defined]
    assert (approval["approved"], approval["approver"], approval["via"]) == (False, "nobody", "timeout")
    assert approval["reason"] == "only 1 of 2 distinct approvers within 15 s (approved by oncall-alice)"
    assert [(d["approve"], d["approver"]) for d in approval["decisions"]] == [(True, "oncall-alice")]


def test_confirm_is_one_approval_of_several_and_the_run_still_pauses_for_the_rest(four_eyes: SandboxState) -> None:
    """Whoever starts the run can confirm the hash of their own dry run: under four eyes that is one approval (the
    starter's), and a second person must still decide on the paused run."""
    approvers = decide_when_paused([ALICE], timeout=90)
    approval = approval_flow(f"res-{uuid.uuid4().hex[:8]}", confirm="abc123")
    approvers.join(30)
    assert not approvers.errors, approvers.errors  # type: ignore[attr-defined]
    assert approvers.seen, "the run did not pause for a second approver"  # type: ignore[attr-defined]
    assert (approval["approved"], approval["required"]) == (True, 2)
    assert [d["approver"] for d in approval["decisions"]] == ["confirm parameter (unattended)", "oncall-alice"]


def test_confirm_alone_under_four_eyes_is_not_an_approval(four_eyes: SandboxState) -> None:
    approval = approval_flow(f"res-{uuid.uuid4().hex[:8]}", confirm="abc123", timeout_seconds=5)
    assert (approval["approved"], approval["via"]) == (False, "timeout")
    assert approval["reason"].startswith("only 1 of 2 distinct approvers"), approval["reason"]


# Plain values: names, the form's text, the settings


@pytest.mark.parametrize(("one", "other"), [("alice", " Alice "), ("Alice Smith", "alice  smith"),
                                            ("alice", "a\u200blice"), ("alice", "\uff21lice"),
                                            ("Stra\u00dfe", "STRASSE"), ("bob", "bob\t\n"),
                                            ("alice", "alice\ufe0f"), ("alice", "ali\U000e0100ce")])
def test_approver_names_are_one_person_whatever_their_case_spaces_or_invisible_characters(one: str,
                                                                                          other: str) -> None:
    assert approver_identity(one) == approver_identity(other)


def test_distinct_names_stay_distinct() -> None:
    assert len({approver_identity(n) for n in ("alice", "alicia", "bob", "alice2", "al-ice")}) == 5


def test_the_form_names_the_artifact_without_a_ui_address() -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with temporary_settings(updates={PREFECT_UI_URL: "http://prefect.internal:4200/"}):
        assert artifact_link("Restore plan trading_db") == (
            "[restore-plan-trading-db](http://prefect.internal:4200/artifacts/key/restore-plan-trading-db)")
        assert artifact_link("restore-plan-trading_db", artifact_id="0b7e") == (
            "[restore-plan-trading-db](http://prefect.internal:4200/artifacts/artifact/0b7e)")
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_UI_URL}):
        assert artifact_link("restore-plan-trading_db") == "`restore-plan-trading-db` (Prefect UI: Artifacts)"
        text = approval_description("Approve it.", plan_hash="f00d", plan_artifact="restore-plan-trading_db",
                                    required=3, approved_by=["a*b", "carol"])
    assert text.split("\n\n") == [
        "Approve it.", "**Plan hash:** `f00d`: approve only the plan you reviewed under this hash.",
        "**Plan:** `restore-plan-trading-db` (Prefect UI: Artifacts)",
        "**Approval 3 of 3:** approved so far by **a\\*b**, **carol**. A different person must decide: an approval "
        "under a name that already approved is refused."]


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RUNBOOKS_* variable from the outside and no config file."""
    for name in [k for k in os.environ if k.upper().startswith("RUNBOOKS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_approvals_settings_default_to_one_and_take_a_count_per_runbook(bare: None,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert {name: load_settings().approvals.required_for(name) for name in APPROVING_RUNBOOKS} == {
        "restore": 1, "disk-cleanup": 1, "pitr-setup": 1, "resume-trading": 1, "drawdown-limit": 1,
        "redis-restore": 1, "config-rollback": 1}
    monkeypatch.setenv("RUNBOOKS_APPROVALS__REQUIRED", "2")
    monkeypatch.setenv("RUNBOOKS_APPROVALS__RUNBOOKS__DISK_CLEANUP", "1")  # no dash in a variable's name
    monkeypatch.setenv("RUNBOOKS_APPROVALS__RUNBOOKS__RESTORE", "3")
    settings = load_settings()
    assert {name: settings.approvals.required_for(name) for name in APPROVING_RUNBOOKS} == {
        "restore": 3, "disk-cleanup": 1, "pitr-setup": 2, "resume-trading": 2, "drawdown-limit": 2,
        "redis-restore": 2, "config-rollback": 2}


@pytest.mark.parametrize(("approvals", "said"), [
    ({"runbooks": {"backup": 2}}, "'backup' is not a runbook that asks for approval (those that do: restore, "
                                  "disk-cleanup, pitr-setup, resume-trading, drawdown-limit, redis-restore, "
                                  "config-rollback)"),
    ({"runbooks": {"disk_cleanup": 2, "disk-cleanup": 2}}, "'disk-cleanup' is set twice"),
    ({"required": 0}, "approvals.required"),
    ({"required": 4}, "approvals.required"),
    ({"runbooks": {"restore": 0}}, "approvals.runbooks.restore"),
    ({"require": 2}, "unknown name (did you mean 'required'?)"),
])
def test_approvals_settings_refuse_what_would_not_mean_four_eyes(bare: None, approvals: dict[str, Any],
                                                                 said: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings(approvals=approvals)
    assert said in str(refused.value) and "HINT:" in str(refused.value) and "\n" not in str(refused.value)


def test_the_example_config_asks_two_approvers_for_a_replace_restore(bare: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(ROOT / "config" / "runbooks.example.toml"))
    approvals = load_settings().approvals
    assert (approvals.required_for("restore"), approvals.required_for("pitr-setup")) == (2, 1)


def test_approving_runbooks_are_the_runbooks_that_ask_for_approval() -> None:
    """[approvals.runbooks] takes exactly the runbooks whose flow calls request_approval: a new one that asks
    must be added (or its four eyes cannot be configured), and a name that never asks is refused."""
    asking = {name for name, runbook in RUNBOOKS.items()
              if "request_approval(" in (ROOT / runbook.entrypoint.split(":")[0]).read_text()}
    assert asking == set(APPROVING_RUNBOOKS)
