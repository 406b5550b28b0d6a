"""The way back to live trading, the drawdown limit and the exchange, against the simulator over real HTTP, the
sandbox's real databases and a market-data table of the test's own: resume refused on stale data, an unhealthy
model, a breached drawdown, another runbook's hold and someone else's halt; resumed through paper mode with
approval; the drawdown override refused without approval; the exchange down → paper mode and an escalation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from runbooks.adapters.repository import open_repository
from runbooks.adapters.trading_holds import TradingHolds, halt_scope
from runbooks.flows.drawdown_limit import DrawdownResult, drawdown_limit_flow
from runbooks.flows.emergency_stop import emergency_stop_flow
from runbooks.flows.exchange_reconnect import ExchangeResult, exchange_reconnect_flow
from runbooks.flows.resume_trading import ResumeResult, resume_trading_flow
from runbooks.frame import outcome
from runbooks.settings import load_settings
from runbooks.tasks.trading_api import halt_trading, read_trading_status
from runbooks_sandbox import SandboxState
from tests.approvals import decide_when_paused
from tests.events import runbook_events
from tests.runs import without_retry_delays
from tests.test_freshness import Market, bucket, platform_says

# End to end on real processes (PM2 daemons, servers, approvals): the drills' half of the suite, run in CI too.
pytestmark = pytest.mark.slow


@pytest.fixture
def platform(config: SandboxState, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    """The sandbox with fresh market data of the test's own (the suite's seeded bars age while it runs)."""
    market = Market(config, monkeypatch)
    market.bars(end=bucket())
    platform_says(simulator, bucket())
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__API_BUDGET_SECONDS", "3")
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__EXCHANGE__RECONNECT_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__EXCHANGE__POLL_SECONDS", "0.2")
    without_retry_delays(monkeypatch, halt_trading, read_trading_status)
    try:
        yield simulator
    finally:
        from tests.pgfixtures import drop_db

        drop_db(config, market.name)


def status(simulator: httpx.Client) -> dict[str, Any]:
    return dict(simulator.get("/api/v1/operations/status").json())


def posts(simulator: httpx.Client) -> list[str]:
    return [c["path"] for c in simulator.get("/_control/state").json()["calls"] if c["method"] == "POST"]


def resume(**params: Any) -> tuple[Any, ResumeResult]:
    state = resume_trading_flow(**{"reason": "root cause fixed", "approval_timeout_seconds": 10,
                                   "approval_poll_seconds": 1, **params}, return_state=True)
    result = outcome(state)
    assert isinstance(result, ResumeResult), result
    return state, result


def stop() -> None:
    assert emergency_stop_flow(reason="runaway orders", return_state=True).is_completed()


def paper_from_halt(**params: Any) -> ResumeResult:
    """A dry run, then its plan confirmed: halted -> paper."""
    _state, dry = resume(dry_run=True, **params)
    assert dry.phase == "to paper" and dry.plan_hash, dry.error
    state, paper = resume(confirm=dry.plan_hash, **params)
    assert state.is_completed(), paper.error
    return paper


def test_during_the_paper_watch_a_run_changes_nothing(platform: httpx.Client) -> None:
    stop()
    paper_from_halt()  # the default watch: 24 hours
    state, watching = resume()
    assert state.is_completed() and watching.phase == "watching" and status(platform)["trading_mode"] == "paper"
    assert watching.watch and "h left" in watching.next_steps[-1]


def test_after_an_emergency_stop_trading_comes_back_through_paper_then_live_with_approval(
        platform: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__RESUME__PAPER_WATCH", "1s")
    stop()
    state, dry = resume(dry_run=True)
    assert state.is_completed() and dry.phase == "to paper" and dry.plan_hash, dry.error
    assert [(p.name, p.ok) for p in dry.preconditions] == [
        ("market data", True), ("serving model", True), ("risk limits", True), ("runbook holds", True),
        ("database", True), ("exchange", True)]
    assert "emergency-stop runbook's halt" in (dry.attribution or "")
    assert status(platform)["trading_mode"] == "halted"  # a dry run changes nothing

    state, paper = resume(initiated_by="alice", confirm=dry.plan_hash)  # lifting a kill switch: approved
    assert state.is_completed() and paper.action == "switched to paper mode", paper.error
    assert paper.approval and paper.approval.via == "confirm"
    assert status(platform)["trading_mode"] == "paper" and paper.watch is not None

    time.sleep(1.5)  # the watch is over (a busier machine only makes it more so)
    state, plan = resume(dry_run=True)
    assert plan.phase == "to live" and plan.plan_hash
    state, live = resume(confirm=plan.plan_hash, initiated_by="alice")
    assert state.is_completed() and live.action.startswith("resumed live trading"), live.error
    after = status(platform)
    assert after["trading_mode"] == "running" and after["position_size_fraction"] == 0.25  # gradual
    assert live.approval and live.approval.via == "confirm"
    events = runbook_events("runbooks.resume-trading.trading", names=["runbooks.trading.resumed"],
                            until=lambda found: bool(found))
    assert events and events[-1].payload["initiated_by"] == "alice"
    state, again = resume()  # idempotent: live already
    assert state.is_completed() and again.phase == "live already"


def test_live_trading_waits_for_an_approver_and_a_reason(platform: httpx.Client,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__RESUME__PAPER_WATCH", "1s")
    stop()
    assert paper_from_halt().action == "switched to paper mode"
    time.sleep(1.5)
    approver = decide_when_paused({"approve": True, "approver": "bob", "reason": "paper day was clean"})
    state, live = resume()
    approver.join(10)
    assert state.is_completed() and live.approval and live.approval.approver == "bob", live.error
    assert status(platform)["trading_mode"] == "running"


@pytest.mark.parametrize("breaks", ["stale data", "unhealthy model", "drawdown", "breaker", "exchange"])
def test_a_failed_precondition_refuses_and_changes_nothing(platform: httpx.Client, config: SandboxState,
                                                           monkeypatch: pytest.MonkeyPatch, breaks: str) -> None:
    stop()
    if breaks == "stale data":
        market = Market(config, monkeypatch)  # a second table of the test's own, 40 minutes behind
        market.bars(end=bucket(40))
    elif breaks == "unhealthy model":
        platform.post("/_control/metrics", json={"metrics": {"sharpe_ratio": 0.1, "error_rate": 0.2}}
                      ).raise_for_status()
    elif breaks == "drawdown":
        platform.post("/_control/risk", json={"metrics": {"current_drawdown_pct": 7.5}}).raise_for_status()
    elif breaks == "breaker":
        platform.post("/_control/risk", json={"breakers": {"daily_drawdown_limit": "triggered"}}).raise_for_status()
    else:
        platform.post("/_control/exchange", json={"connected": False}).raise_for_status()
    before = posts(platform)
    state, result = resume()
    assert state.is_failed() and result.phase == "refused"
    failed = {p.name for p in result.preconditions if not p.ok}
    assert failed == {{"stale data": "market data", "unhealthy model": "serving model", "drawdown": "risk limits",
                       "breaker": "risk limits", "exchange": "exchange"}[breaks]}
    assert posts(platform) == before and status(platform)["trading_mode"] == "halted"


def test_someone_elses_halt_is_resumed_only_when_the_approver_names_its_holder(platform: httpx.Client) -> None:
    platform.post("/api/v1/operations/kill-switch", json={"reason": "risk desk", "activated_by": "carol"}
                  ).raise_for_status()
    state, refused = resume()
    assert state.is_failed() and "someone else's halt (carol)" in (refused.error or "")
    assert status(platform)["trading_mode"] == "halted"
    state, wrong = resume(halt_holder="dave")
    assert state.is_failed() and "does not match" in (wrong.error or "")
    state, dry = resume(halt_holder="carol", dry_run=True)
    assert state.is_completed() and dry.phase == "to paper", dry.error
    state, paper = resume(halt_holder="carol", confirm=dry.plan_hash)  # someone else's: approved (by the hash)
    assert state.is_completed() and paper.approval and status(platform)["trading_mode"] == "paper", paper.error


def test_another_runbooks_own_hold_is_left_to_it(platform: httpx.Client) -> None:
    """data-freshness paused trading and records its hold: it lifts it itself once data is fresh again."""
    platform.post("/api/v1/operations/pause", json={"reason": "stale", "paused_by": "runbooks-data-freshness:1"}
                  ).raise_for_status()
    now = status(platform)
    from datetime import UTC, datetime

    from runbooks.decisions.freshness import TradingHold

    settings = load_settings()
    TradingHolds(open_repository(settings.repository), halt_scope(settings)).put("data-freshness", TradingHold(
        actor=now["paused_by"], mode="paused", changed_at=now["changed_at"], reason="stale", at=datetime.now(UTC)))
    state, result = resume(halt_holder=now["paused_by"])
    assert state.is_failed() and "data-freshness" in (result.error or "")
    assert status(platform)["trading_mode"] == "paused"


def test_a_halt_pressed_during_the_paper_watch_voids_it(platform: httpx.Client,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__RESUME__PAPER_WATCH", "1s")
    stop()
    paper_from_halt()
    platform.post("/api/v1/operations/kill-switch", json={"reason": "not yet", "activated_by": "erin"}
                  ).raise_for_status()
    time.sleep(1.5)
    state, result = resume()
    assert state.is_failed() and "erin" in (result.error or "") and status(platform)["trading_mode"] == "halted"


# -- drawdown-limit ---------------------------------------------------------------------------------------------
def ddl(**params: Any) -> tuple[Any, DrawdownResult]:
    state = drawdown_limit_flow(**{"approval_timeout_seconds": 10, "approval_poll_seconds": 1, **params},
                                return_state=True)
    result = outcome(state)
    assert isinstance(result, DrawdownResult), result
    return state, result


def test_the_drawdown_report_reads_pnl_and_breakers_and_changes_nothing(platform: httpx.Client) -> None:
    state, result = ddl()
    assert state.is_completed() and result.triggered is False and result.pnl and result.pnl.total is not None
    assert result.risk and result.risk.drawdown_percent == 1.8 and posts(platform) == []


def test_the_drawdown_override_needs_a_reason_and_an_approval(platform: httpx.Client) -> None:
    platform.post("/_control/risk", json={"breakers": {"daily_drawdown_limit": "triggered"}}).raise_for_status()
    for blank in ("", "\u200b \u200b"):  # no reason, or one nobody can read: refused before anything is read
        refused = drawdown_limit_flow(reset=True, reason=blank, return_state=True)
        assert refused.is_failed() and "needs a reason" in (refused.message or "")
    rejecter = decide_when_paused({"approve": False, "approver": "frank", "reason": "losses not understood"})
    state, declined = ddl(reset=True, reason="desk reviewed the day")
    rejecter.join(10)
    assert declined.declined and "/api/v1/risk/reset-ddl" not in posts(platform)
    state, nobody = ddl(reset=True, reason="desk reviewed the day", approval_timeout_seconds=10)
    assert nobody.declined and "/api/v1/risk/reset-ddl" not in posts(platform)  # no decision in time
    approver = decide_when_paused({"approve": True, "approver": "grace", "reason": "one-off fill error"})
    state, reset = ddl(reset=True, reason="desk reviewed the day")
    approver.join(10)
    assert state.is_completed() and reset.breaker_after == "armed", reset.error
    assert posts(platform).count("/api/v1/risk/reset-ddl") == 1


# -- exchange-reconnect -----------------------------------------------------------------------------------------
def exchange(**params: Any) -> tuple[Any, ExchangeResult]:
    state = exchange_reconnect_flow(**params, return_state=True)
    result = outcome(state)
    assert isinstance(result, ExchangeResult), result
    return state, result


def test_a_connected_exchange_is_left_alone_and_a_dropped_one_reconnects(platform: httpx.Client) -> None:
    state, result = exchange()
    assert state.is_completed() and result.action == "none: connected" and posts(platform) == []
    platform.post("/_control/exchange", json={"connected": False}).raise_for_status()
    state, result = exchange()
    assert state.is_completed() and result.reconnected and status(platform)["trading_mode"] == "running"


def test_an_exchange_that_stays_down_goes_to_paper_and_escalates(platform: httpx.Client, webhook: Any) -> None:
    received, _ = webhook
    platform.post("/_control/exchange", json={"connected": False, "reconnect_fixes": False}).raise_for_status()
    state, result = exchange()
    assert state.is_failed() and result.escalation and "PAPER" in result.action
    assert status(platform)["trading_mode"] == "paper"
    assert received and received[-1]["text"].startswith("[P1] INCIDENT: exchange-reconnect: the exchange is DOWN")
    # resume-trading knows this paper mode for the runbooks' own, and waits for the exchange
    state, refused = resume()
    assert state.is_failed() and "exchange-reconnect runbook's halt" in (refused.attribution or "")
    assert {p.name for p in refused.preconditions if not p.ok} == {"exchange"}


def test_a_halt_in_force_is_not_turned_into_paper_mode(platform: httpx.Client) -> None:
    stop()
    platform.post("/_control/exchange", json={"connected": False, "reconnect_fixes": False}).raise_for_status()
    state, result = exchange()
    assert state.is_failed() and status(platform)["trading_mode"] == "halted"
    assert "left halted" in result.action


def test_a_deployment_run_schedules_its_follow_up_at_the_end_of_the_paper_watch(platform: httpx.Client) -> None:
    """The run a worker would execute (a flow run of the resume-trading deployment, run by Prefect's engine here)
    schedules the next run of the same deployment for when the watch ends."""
    import importlib.util
    from pathlib import Path

    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    spec = importlib.util.spec_from_file_location(
        "deployments_serve", Path(__file__).resolve().parents[1] / "deployments" / "serve.py")
    assert spec and spec.loader
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    (deployment,) = [d for d in serve.build_deployments() if d.name == "resume-trading"]
    deployment_id = deployment.apply()
    stop()
    _state, dry = resume(dry_run=True)
    parameters = {"reason": "root cause fixed", "initiated_by": "alice", "confirm": dry.plan_hash}
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    state = run_flow(resume_trading_flow, flow_run=flow_run, parameters=parameters, return_type="state")
    result = outcome(state)
    assert isinstance(result, ResumeResult) and result.watch is not None, result
    assert result.action == "switched to paper mode" and result.watch.follow_up, result.next_steps
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:  # filtered by the server: the session's runs are many pages
        runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment_id]))) if r.id != flow_run.id]
    assert len(runs) == 1 and runs[0].state and runs[0].state.is_scheduled()
    scheduled = runs[0].state.state_details.scheduled_time
    assert scheduled is not None and abs((scheduled - result.watch.until).total_seconds()) < 1
    assert runs[0].parameters["reason"] == "root cause fixed" and "resume-trading-follow-up" in runs[0].tags
    assert runs[0].parameters["follow_up_of"] == str(flow_run.id) and "confirm" not in runs[0].parameters
    with get_client(sync_client=True) as client:
        client.delete_flow_run(runs[0].id)  # no worker here, but keep the harness's server tidy


def test_an_emergency_stop_is_never_lifted_unattended(platform: httpx.Client) -> None:
    """Even the runbooks' own kill switch: a run without an approver changes nothing when its approval times out,
    and a follow-up scheduled for an earlier paper watch does nothing at all."""
    stop()
    state, unattended = resume(approval_timeout_seconds=10)
    assert unattended.declined and status(platform)["trading_mode"] == "halted"
    state, follow_up = resume(follow_up_of="0123abcd-0000-0000-0000-000000000000")
    assert state.is_completed() and follow_up.action.startswith("none: the paper watch")
    assert status(platform)["trading_mode"] == "halted" and "/api/v1/operations/paper" not in posts(platform)


def test_a_halt_pressed_while_the_plan_waits_for_approval_is_not_turned_into_paper(platform: httpx.Client) -> None:
    """The plan was carol's halt; dave presses the kill switch while it waits; the approval of carol's plan must
    not lift dave's halt."""
    import contextvars
    import threading

    from prefect.flow_runs import resume_flow_run

    from tests.approvals import paused_run

    platform.post("/api/v1/operations/kill-switch", json={"reason": "risk desk", "activated_by": "carol"}
                  ).raise_for_status()

    def dave_then_bob() -> None:
        paused = paused_run(timeout=60)
        platform.post("/api/v1/operations/kill-switch", json={"reason": "not now", "activated_by": "dave"}
                      ).raise_for_status()
        resume_flow_run(paused.id, run_input={"approve": True, "approver": "bob", "reason": "carol agreed"})

    helper = threading.Thread(target=contextvars.copy_context().run, args=(dave_then_bob,), daemon=True)
    helper.start()
    state, result = resume(halt_holder="carol", approval_timeout_seconds=60)
    helper.join(10)
    assert state.is_failed() and result.approval and result.approval.approved
    assert "platform moved" in (result.error or "")
    now = status(platform)
    assert now["trading_mode"] == "halted" and now["paused_by"] == "dave"
    assert "/api/v1/operations/paper" not in posts(platform)


def test_a_resume_whose_read_back_fails_is_still_reported_resumed(platform: httpx.Client,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__RESUME__PAPER_WATCH", "1s")
    stop()
    paper_from_halt()
    time.sleep(1.5)
    _state, plan = resume(dry_run=True)
    # The resume goes through; the status read right after it fails.
    platform.post("/_control/after-resume", json={"status_failures": 1}).raise_for_status()
    state, live = resume(confirm=plan.plan_hash)
    assert state.is_completed() and live.action.startswith("resumed live trading"), live.error
    assert live.status_after is None and status(platform)["trading_mode"] == "running"


def test_preconditions_are_checked_again_after_an_operators_approval(platform: httpx.Client) -> None:
    """The exchange drops while the plan waits in the UI: the approval is not acted on."""
    import contextvars
    import threading

    from prefect.flow_runs import resume_flow_run

    from tests.approvals import paused_run

    stop()

    def drop_then_approve() -> None:
        paused = paused_run(timeout=60)
        platform.post("/_control/exchange", json={"connected": False}).raise_for_status()
        resume_flow_run(paused.id, run_input={"approve": True, "approver": "bob", "reason": "looks fine"})

    helper = threading.Thread(target=contextvars.copy_context().run, args=(drop_then_approve,), daemon=True)
    helper.start()
    state, result = resume(approval_timeout_seconds=60)
    helper.join(10)
    assert state.is_failed() and (result.error or "").startswith("approved, but not acted on")
    assert "exchange" in (result.error or "") and status(platform)["trading_mode"] == "halted"
    assert "/api/v1/operations/paper" not in posts(platform)
