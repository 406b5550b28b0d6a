"""The runbook frame on real parts: steps as events, the trading guard against the simulator over HTTP, locks
on the sandbox's PostgreSQL, the error boundary by SQLSTATE, and secret scrubbing of every log handler."""

from __future__ import annotations

import logging
import uuid

import httpx
import psycopg
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.states import State
from pydantic import BaseModel

from runbooks.adapters.postgres import AdvisoryLock, connect, database_errors, tool_error
from runbooks.core.errors import AuthenticationFailed, DatabaseUnavailable, InsufficientPrivilege, LockLost, QueryFailed
from runbooks.core.redact import install_log_scrubbing, register_secret
from runbooks.decisions.report import report_tail
from runbooks.frame import RunbookResult, RunbookRun, TradingGuard, outcome, takes
from runbooks.frame.run import UNEXPECTED_NEXT_STEP
from runbooks_sandbox import SandboxState
from tests.events import runbook_events, steps_of
from tests.pgfixtures import admin_dsn


class Outcome(RunbookResult):
    note: str = ""


def _render(result: Outcome) -> str:
    return f"# test {result.succeeded} {result.note}"


def _render_with_tail(result: Outcome) -> str:
    body = _render(result)
    return "\n".join([body, *report_tail(result, body=body)])


@flow(name="frame-steps")
def steps_flow(resource: str, fail: bool) -> dict[str, object]:
    run: RunbookRun[Outcome] = RunbookRun("frame-test", resource=resource)
    with run.step("count things", rows=1) as figures:
        figures["rows"] = 42
    try:
        with run.step("break things", destructive=True):
            if fail:
                raise RuntimeError("boom")
    except RuntimeError:
        pass
    run.report(Outcome(started_at=run.started_at, succeeded=True), render=_render, key="frame-test",
               description="test")
    state = run.conclude()
    return {"run_id": run.flow_run_id, "timeline": [(s.step, s.outcome, s.figures) for s in state.data.timeline]}


def test_each_step_is_an_event_as_it_happens(config: SandboxState) -> None:
    resource = f"res-{uuid.uuid4().hex[:8]}"
    out = steps_flow(resource, True)
    events = runbook_events(f"runbooks.frame-test.{resource}", until=lambda ev: len(ev) >= 5)
    assert steps_of(events, str(out["run_id"])) == [
        ("started", "count things"), ("finished", "count things"), ("started", "break things"),
        ("failed", "break things")]
    finished = next(e for e in events if e.event == "runbooks.step.finished")
    assert finished.payload["figures"] == {"rows": 42} and finished.resource["runbooks.step"] == "count things"
    failed = next(e for e in events if e.event == "runbooks.step.failed")
    assert failed.payload["error"] == "boom"
    assert any(e.event == "runbooks.run.concluded" for e in events)
    assert out["timeline"] == [("count things", "ok", {"rows": 42}), ("break things", "failed: RuntimeError", {})]


class SurpriseParameters(BaseModel):
    resource: str
    report: bool = True


@flow(name="frame-surprise")
@takes(SurpriseParameters)
def surprise_flow(params: SurpriseParameters) -> State:
    """A runbook whose step meets an error nothing in it expected, after (or before) it declared its report."""
    run: RunbookRun[Outcome] = RunbookRun("frame-test", resource=params.resource)
    if params.report:
        run.report(Outcome(started_at=run.started_at, note="half done"), render=_render_with_tail,
                   key=f"frame-surprise-{params.resource}", description="surprise")
    with run.step("read the disk"):
        raise KeyError("no such column: close")
    return run.conclude()


def test_an_unexpected_error_still_concludes_the_run(config: SandboxState) -> None:
    """Whatever a runbook did not expect ends it the same way as a failure it did: report published, the
    concluding event emitted, the run Failed with the error in one line (and the traceback in its logs)."""
    resource = f"res-{uuid.uuid4().hex[:8]}"
    state = surprise_flow(resource=resource, return_state=True)
    assert state.is_failed()
    result = outcome(state)
    assert isinstance(result, Outcome) and result.note == "half done" and not result.succeeded
    assert result.error == "unexpected error: KeyError: 'no such column: close'"
    assert result.next_steps and "traceback" in result.next_steps[-1]
    assert result.timeline[-1].step == "read the disk" and result.timeline[-1].outcome.startswith("failed")
    events = runbook_events(f"runbooks.frame-test.{resource}", until=lambda ev: any(
        e.event == "runbooks.run.concluded" for e in ev))
    [concluded] = [e for e in events if e.event == "runbooks.run.concluded"]
    assert concluded.payload["succeeded"] is False and "KeyError" in concluded.payload["error"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"frame-surprise-{resource}"])))
    assert artifacts and "# test False half done" in str(artifacts[0].data)
    report = str(artifacts[0].data)  # the shared tail: what went wrong, the timeline, what to do next
    assert "## Error\nunexpected error: KeyError" in report and "| read the disk |" in report
    assert report.rstrip().endswith(UNEXPECTED_NEXT_STEP)


def test_an_error_before_the_report_is_declared_propagates(config: SandboxState) -> None:
    """Nothing to conclude with yet: the exception is the run's end, as Prefect records it."""
    state = surprise_flow(resource=f"res-{uuid.uuid4().hex[:8]}", report=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(KeyError):
        state.result()


@flow(name="frame-guard")
def guard_flow(responder: str | None, base_url: str, token: str) -> list[str]:
    run: RunbookRun[Outcome] = RunbookRun("frame-test", resource="guard")
    guard = TradingGuard(run, run.settings.trading_api)
    guard.halt(reason="test change")
    if responder:  # an on-call engineer presses the kill switch while the change is in progress
        httpx.post(f"{base_url}/api/v1/operations/kill-switch", headers={"Authorization": f"Bearer {token}"},
                   json={"reason": "bad fills", "activated_by": responder}).raise_for_status()
    guard.resume_if_ours()
    return guard.actions


def test_trading_is_resumed_only_while_the_halt_is_ours(config: SandboxState, simulator: httpx.Client) -> None:
    actions = guard_flow(None, config.simulator_url or "", config.simulator_token or "")
    assert simulator.get("/api/v1/operations/status").json()["trading_mode"] == "running"
    assert actions[-1].startswith("resumed")
    simulator.post("/_control/reset").raise_for_status()

    actions = guard_flow("oncall-carol", config.simulator_url or "", config.simulator_token or "")
    status = simulator.get("/api/v1/operations/status").json()
    assert status["trading_mode"] == "halted" and status["paused_by"] == "oncall-carol"
    assert actions[-1].startswith("NOT resumed") and "oncall-carol" in actions[-1]
    posts = [c["path"].rsplit("/", 1)[-1] for c in simulator.get("/_control/state").json()["calls"]
             if c["method"] == "POST"]
    assert posts == ["kill-switch", "kill-switch"]  # ours, the responder's; no resume


def test_a_lock_whose_session_ended_is_known_lost(sandbox: SandboxState) -> None:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn(sandbox))
    key = f"test-lock-{uuid.uuid4().hex}"
    lock = AdvisoryLock(params, key, holder=f"test {key}"[:63])
    lock.acquire(wait_seconds=0)
    try:
        lock.ensure()  # held
        with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                         [f"test {key}"[:63]])
        with pytest.raises(LockLost, match="was lost"):
            lock.ensure()
        other = AdvisoryLock(params, key, holder="other")  # and indeed someone else can take it now
        other.acquire(wait_seconds=0)
        other.release()
    finally:
        lock.release()


def test_postgres_errors_are_mapped_by_sqlstate(sandbox: SandboxState) -> None:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn(sandbox, "trading_db"))
    with connect(params, where="test") as conn, pytest.raises(QueryFailed) as missing, database_errors("query"):
        conn.execute("SELECT * FROM no_such_table")
    assert missing.value.sqlstate == "42P01" and "HINT" in str(missing.value)
    app = {**params, "user": "trading_user", "password": sandbox.app_password}
    with connect(app, where="test") as conn, pytest.raises(InsufficientPrivilege) as denied, \
            database_errors("create role"):
        conn.execute("CREATE ROLE nobody_should_create_this")
    assert denied.value.sqlstate == "42501"
    with pytest.raises(AuthenticationFailed):
        connect({**app, "password": "wrong-password"}, where="test")
    with pytest.raises(DatabaseUnavailable):
        connect({**params, "host": "127.0.0.1", "port": 1}, where="test")


def test_a_failed_tool_logs_its_whole_scrubbed_output(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("tool-canary-secret")
    stderr = "pg_restore: error: could not execute query: ERROR:  boom\nDETAIL: tool-canary-secret was here\n"
    with caplog.at_level(logging.WARNING, logger="runbooks"):
        error = tool_error(stderr, where="pg_restore into 'x'")
    assert "see the task log" in str(error) and "boom" in str(error)
    assert "DETAIL: *** was here" in caplog.text and "tool-canary-secret" not in caplog.text


@pytest.mark.filterwarnings("ignore:Logger 'prefect.flow_runs.x' attempted to send logs:UserWarning")
def test_every_log_handler_scrubs_registered_secrets() -> None:
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Capture()
    logging.getLogger("prefect.flow_runs").addHandler(handler)  # where Prefect's API handler sits
    try:
        install_log_scrubbing()
        register_secret("log-canary-4711")
        logging.getLogger("prefect.flow_runs.x").warning("token is %s", "log-canary-4711")
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(handler)
    assert records == ["token is ***"]
