"""The model-rollback runbook against the simulator's inference API over real HTTP: degraded → rolled back to the
last version that was healthy while it served and proven; healthy → nothing unless forced; an invalid target
refused before any change; a stuck router escalates; a rerun only verifies; a rolled-back model that degrades too
escalates instead of flapping; timeouts retried and 4xx not; a dry run changes nothing (the simulator's call log
says so)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from runbooks.adapters.records import RollbackRecords
from runbooks.adapters.registry import Candidate, InferenceApiRegistry, ModelEvidence, RegistryRef
from runbooks.adapters.repository import open_repository
from runbooks.core.errors import Refused
from runbooks.decisions.models import Judgement
from runbooks.decisions.rollback import RollbackRecord, grade_targets, pick_target, plan
from runbooks.flows.model_rollback import RollbackParameters, RollbackResult, model_rollback_flow
from runbooks.frame import outcome
from runbooks.settings import ApiSettings, ModelPolicy, load_settings
from runbooks.tasks.models import read_evidence, read_serving, request_rollback
from runbooks_sandbox import SandboxState
from tests.events import runbook_events
from tests.runs import without_retry_delays

DEGRADED = {"sharpe_ratio": 0.22, "win_rate": 0.31, "error_rate": 0.02}
QUICK = {"monitor_minutes": 0, "poll_seconds": 0.2}


@pytest.fixture
def platform(config: SandboxState, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    """The sandbox settings (a fresh repository per test) with a short verification timeout."""
    monkeypatch.setenv("RUNBOOKS_MODELS__VERIFY_TIMEOUT", "2s")
    yield simulator


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the retry policy (count, condition) but not its real-world delays."""
    without_retry_delays(monkeypatch, read_serving, read_evidence, request_rollback)


def rollback(**params: Any) -> tuple[Any, RollbackResult]:
    state = model_rollback_flow(**{**QUICK, **params}, return_state=True)
    result = outcome(state)
    assert isinstance(result, RollbackResult), result
    return state, result


def degrade(simulator: httpx.Client, version: str | None = None, **metrics: float) -> None:
    body: dict[str, Any] = {"metrics": metrics or DEGRADED}
    if version:
        body["version"] = version
    simulator.post("/_control/metrics", json=body).raise_for_status()


def calls(simulator: httpx.Client, method: str | None = None) -> list[dict[str, Any]]:
    return [c for c in simulator.get("/_control/state").json()["calls"] if method is None or c["method"] == method]


def records() -> RollbackRecords:
    settings = load_settings()
    assert settings.inference_api
    return RollbackRecords(open_repository(settings.repository), settings.inference_api.base_url.rstrip("/"))


def serving(simulator: httpx.Client) -> str:
    return str(simulator.get("/api/v1/models/router/status").json()["active_version"])


def trading_mode(simulator: httpx.Client) -> str:
    return str(simulator.get("/api/v1/operations/status").json()["trading_mode"])


def test_a_degraded_model_is_rolled_back_to_the_last_healthy_version_and_proven(platform: httpx.Client) -> None:
    degrade(platform)
    state, result = rollback(reason="Sharpe dropped to 0.22", initiated_by="oncall_engineer")
    assert state.is_completed(), result.error
    assert result.judgement and result.judgement.verdict == "rollback"
    assert any("Sharpe 0.22 < 0.3" in r for r in result.judgement.reasons)
    assert result.target_version == "v3" and result.action == "rolled back v4 -> v3"
    assert result.verified and result.serving_after and result.serving_after.version == "v3"
    assert result.predictions_after and result.predictions_after.flowing
    assert serving(platform) == "v3"
    posts = calls(platform, "POST")
    assert [p["path"] for p in posts] == ["/api/v1/models/rollback"]
    assert '"target_version":"v3"' in posts[0]["body"].replace(" ", "")
    assert "oncall_engineer" in posts[0]["body"] and "Sharpe dropped to 0.22" in posts[0]["body"]
    # The decision, the numbers behind it and the proof are in the report; the record is the runbook's own.
    assert [t.version for t in result.targets] == ["v3", "v2"] and all(t.eligible for t in result.targets)
    record = records().get("ppo_primary")
    assert record and (record.from_version, record.to_version) == ("v4", "v3")
    events = runbook_events("runbooks.model-rollback.ppo_primary",
                            until=lambda es: any(e.event == "runbooks.model.rolled-back" for e in es))
    assert any(e.event == "runbooks.model.rolled-back" and e.payload["to_version"] == "v3" for e in events)


def test_the_target_is_the_newest_version_that_was_healthy_while_it_served(platform: httpx.Client) -> None:
    degrade(platform)
    degrade(platform, "v3", sharpe_ratio=0.41)  # v3 served significantly degraded: not a target
    state, result = rollback()
    assert state.is_completed(), result.error
    assert result.target_version == "v2" and serving(platform) == "v2"
    v3 = next(t for t in result.targets if t.version == "v3")
    assert not v3.eligible and v3.why_not and "Sharpe 0.41 < 0.5" in v3.why_not


def test_a_healthy_model_is_not_rolled_back_unless_forced(platform: httpx.Client) -> None:
    state, result = rollback()
    assert state.is_completed() and result.action == "none" and result.plan
    assert "healthy: no rollback without force" in result.plan.why
    assert calls(platform, "POST") == [] and serving(platform) == "v4"

    state, result = rollback(force=True, reason="bad deploy found in review", initiated_by="alice")
    assert state.is_completed(), result.error
    assert result.action == "rolled back v4 -> v3" and serving(platform) == "v3"
    assert result.plan and result.plan.why.startswith("forced")


def test_minor_and_significant_degradation_change_nothing(platform: httpx.Client) -> None:
    degrade(platform, sharpe_ratio=0.65)
    _, minor = rollback()
    degrade(platform, sharpe_ratio=0.45)
    _, significant = rollback()
    assert minor.judgement and minor.judgement.verdict == "monitor" and minor.action == "none"
    assert significant.judgement and significant.judgement.verdict == "shadow"
    assert any("shadow-mode comparison" in s for s in significant.next_steps)
    assert calls(platform, "POST") == []


@pytest.mark.parametrize(("target", "why"), [
    ("v9", "not a rollback target the registry offers"),
    ("v1", "not a rollback target the registry offers"),  # retired: not offered
    ("v2", "its recorded metrics breach the policy"),
    ("v4", "not a rollback target the registry offers"),  # the serving, degraded one
])
def test_an_invalid_target_is_refused_before_any_change(platform: httpx.Client, target: str, why: str) -> None:
    degrade(platform)
    degrade(platform, "v2", error_rate=0.09)
    state, result = rollback(target_version=target)
    assert state.is_failed() and result.error and why in result.error and "HINT:" in result.error
    assert calls(platform, "POST") == [] and serving(platform) == "v4"
    assert result.escalation is None  # an operator's mistake, not an incident to page about


def test_a_forced_rollback_with_no_valid_target_is_refused_not_escalated(platform: httpx.Client,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_MODELS__KILL_SWITCH_ON_ESCALATION", "true")
    for version in ("v2", "v3"):
        degrade(platform, version, sharpe_ratio=0.1)
    state, result = rollback(force=True)
    assert state.is_failed() and result.error and "no rollback target was healthy" in result.error
    assert result.escalation is None and trading_mode(platform) == "running" and calls(platform, "POST") == []


def test_an_unreadable_record_means_no_rollback_on_its_own(platform: httpx.Client) -> None:
    degrade(platform)
    box = records()
    box.store.repository.put_bytes(box.store.key("ppo_primary"), b"{not json")
    state, result = rollback()
    assert state.is_failed() and result.escalation and "rollback record cannot be read" in result.escalation
    assert calls(platform, "POST") == [] and serving(platform) == "v4"
    state, result = rollback(force=True, reason="understood: roll back anyway")
    assert state.is_completed(), result.error
    assert serving(platform) == "v3"


def test_the_rollback_request_refuses_a_router_someone_else_moved(platform: httpx.Client) -> None:
    settings = load_settings()
    ref = RegistryRef(kind="inference-api", api=settings.inference_api, model_id="ppo_primary")
    with pytest.raises(Refused, match="now serves v4, not v3"):
        request_rollback.fn(ref, from_version="v3", target_version="v2", reason="r", initiated_by="i")
    assert calls(platform, "POST") == []
    assert request_rollback.fn(ref, from_version="v4", target_version="v4", reason="r",
                               initiated_by="i")["already_serving"]


def test_the_registry_backend_survives_odd_json() -> None:
    """The inference API's payloads as a misbehaving server could send them (NaN, wrong types)."""
    payloads: dict[str, Any] = {
        "/api/v1/models/ppo_primary/metrics": {"version": 4, "sharpe_ratio": float("nan"), "error_rate": "high",
                                               "consecutive_losses": float("inf"), "history": 5},
        "/api/v1/models/router/drift": {"max_psi": None},
        "/api/v1/models/rollback-targets": {"targets": [{"version": "v3", "deployed_at": "n/a",
                                                         "metrics": {"sharpe_ratio": float("nan")}}, "junk", {}]},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        import json

        return httpx.Response(200, content=json.dumps(payloads[request.url.path]).encode())

    client = httpx.Client(base_url="http://inference", transport=httpx.MockTransport(answer))
    backend = InferenceApiRegistry(ApiSettings(base_url="http://inference"), client=client)
    reading = backend.read("ppo_primary", "1d")
    assert reading.evidence.version == "4" and reading.history == []
    assert (reading.evidence.sharpe, reading.evidence.error_rate, reading.evidence.consecutive_losses) == (
        None, None, None)
    (candidate,) = backend.rollback_targets("ppo_primary")
    assert candidate.deployed_at is None and candidate.recorded.sharpe is None  # NaN is no record: not eligible


def test_a_valid_explicit_target_is_used(platform: httpx.Client) -> None:
    degrade(platform)
    state, result = rollback(target_version="v2")
    assert state.is_completed(), result.error
    assert result.target_version == "v2" and serving(platform) == "v2"


def test_a_stuck_router_escalates_fails_and_may_press_the_kill_switch(
        platform: httpx.Client, webhook: tuple[list[dict[str, Any]], str], monkeypatch: pytest.MonkeyPatch) -> None:
    received, canary = webhook
    monkeypatch.setenv("RUNBOOKS_MODELS__KILL_SWITCH_ON_ESCALATION", "true")
    degrade(platform)
    platform.post("/_control/router", params={"stuck": True}).raise_for_status()
    state, result = rollback()
    assert state.is_failed()
    assert result.escalation and "the router still serves v4 after" in result.escalation
    assert result.verified is False and serving(platform) == "v4"
    assert trading_mode(platform) == "halted" and any("HALTED via kill-switch" in a for a in result.trading)
    assert received and received[-1]["text"].startswith("[P1] INCIDENT: model-rollback: ESCALATE ppo_primary")
    assert canary not in result.model_dump_json()
    assert any(s.startswith("ESCALATE (P1)") for s in result.next_steps)


def test_an_escalation_without_the_kill_switch_setting_leaves_trading_alone(platform: httpx.Client) -> None:
    degrade(platform)
    platform.post("/_control/predictions", params={"stalled": True}).raise_for_status()
    state, result = rollback()
    assert state.is_failed() and result.escalation and "predictions are not flowing" in result.escalation
    assert serving(platform) == "v3" and trading_mode(platform) == "running" and result.trading == []


def test_a_second_run_for_the_same_incident_only_verifies(platform: httpx.Client) -> None:
    degrade(platform)
    first_state, first = rollback()
    assert first_state.is_completed() and first.target_version == "v3"
    state, again = rollback(reason="the same alert fired again")
    assert state.is_completed(), again.error
    assert again.plan and again.plan.action == "verify" and again.action == "none (verified only)"
    assert again.verified and again.previous_rollback and again.previous_rollback.to_version == "v3"
    assert len(calls(platform, "POST")) == 1 and serving(platform) == "v3"


def test_a_rerun_that_finds_the_rolled_back_model_degraded_escalates_instead_of_flapping(
        platform: httpx.Client) -> None:
    degrade(platform)
    rollback()
    degrade(platform, "v3", sharpe_ratio=0.1)
    state, result = rollback()
    assert state.is_failed() and result.escalation and "degraded too" in result.escalation
    assert len(calls(platform, "POST")) == 1 and serving(platform) == "v3"


def test_a_rolled_back_model_that_degrades_while_watched_escalates_without_a_second_rollback(
        platform: httpx.Client) -> None:
    degrade(platform)
    platform.post("/_control/on-activation", json={"version": "v3", "metrics": {"error_rate": 0.12}})
    state, result = rollback(monitor_minutes=0.05, poll_seconds=0.5)
    assert state.is_failed()
    assert result.escalation and "degraded too" in result.escalation and "error rate 12.0% > 5%" in result.escalation
    assert result.series_after and result.series_after[-1].verdict == "rollback"
    assert len(calls(platform, "POST")) == 1 and serving(platform) == "v3"


def test_watching_a_healthy_rollback_records_the_series_after(platform: httpx.Client) -> None:
    degrade(platform)
    state, result = rollback(monitor_minutes=0.03, poll_seconds=0.5)
    assert state.is_completed(), result.error
    assert len(result.series_after) >= 3 and {s.verdict for s in result.series_after} == {"healthy"}
    assert {s.version for s in result.series_after} == {"v3"}
    assert result.series_before and result.series_before[-1].sharpe == 0.22
    markdown = _report_of(result)
    assert "## Metrics before" in markdown and "## Metrics after (watched)" in markdown


def test_timeouts_and_5xx_are_retried_without_rolling_back_twice(platform: httpx.Client, fast_retries: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_INFERENCE_API__TIMEOUT_SECONDS", "1")
    degrade(platform)
    platform.post("/_control/failures", json={"path_prefix": "/api/v1/models/router/status", "status": 503,
                                              "count": 2}).raise_for_status()
    # The first rollback request outlives the client's timeout; the server still carries it out a moment later.
    platform.post("/_control/latency", json={"path_prefix": "/api/v1/models/rollback", "method": "POST",
                                             "seconds": 2.5, "count": 1}).raise_for_status()
    state, result = rollback()
    assert state.is_completed(), result.error
    assert serving(platform) == "v3" and result.verified
    statuses = [c.get("status") for c in calls(platform) if c["path"] == "/api/v1/models/router/status"]
    assert statuses[:2] == [503, 503]
    assert len(calls(platform, "POST")) == 2  # the request that timed out, and its retry
    time.sleep(2.5)  # the slow first request lands: it names v3, which is serving, so it changes nothing
    assert serving(platform) == "v3"
    swaps = [o for o in platform.get("/_control/state").json()["operations"]["history"] if o["action"] == "rollback"]
    assert len(swaps) == 1


def test_a_request_that_timed_out_but_took_effect_is_reported_as_this_runs_rollback(
        platform: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rollback request outlives the client's timeout, the server carries it out, and the retry finds the
    target serving: that is this run's rollback (the router served v4 when it sent the request), not a version
    that "was already serving"."""
    monkeypatch.setenv("RUNBOOKS_INFERENCE_API__TIMEOUT_SECONDS", "1")
    monkeypatch.setattr(request_rollback, "retry_delay_seconds", [3.0] * 4)  # the request lands before the retry
    degrade(platform)
    platform.post("/_control/latency", json={"path_prefix": "/api/v1/models/rollback", "method": "POST",
                                             "seconds": 1.5, "count": 1}).raise_for_status()
    state, result = rollback()
    assert state.is_completed(), result.error
    assert len(calls(platform, "POST")) == 1 and serving(platform) == "v3" and result.verified
    assert result.action == "rolled back v4 -> v3 by this run (the request timed out but took effect)"
    assert "**Action: rolled back v4 -> v3 by this run (the request timed out but took effect).**" in \
        _report_of(result)
    run_id = f"prefect.flow-run.{state.state_details.flow_run_id}"

    def ours(events: list[Any]) -> list[Any]:
        return [e for e in events if any(r.id == run_id for r in e.related)]

    events = runbook_events("runbooks.model-rollback.ppo_primary", names=["runbooks.model.rolled-back"],
                            until=lambda found: bool(ours(found)))
    assert [(e.payload["from_version"], e.payload["to_version"]) for e in ours(events)] == [("v4", "v3")]


def test_a_permanent_4xx_is_not_retried(platform: httpx.Client, fast_retries: None) -> None:
    degrade(platform)
    platform.post("/_control/failures", json={"path_prefix": "/api/v1/models/rollback", "method": "POST",
                                              "status": 422, "count": 5}).raise_for_status()
    state, result = rollback()
    assert state.is_failed() and result.error and "422" in result.error
    assert result.escalation and result.escalation.startswith("the rollback of v4 to v3 did not complete")
    assert len(calls(platform, "POST")) == 1 and serving(platform) == "v4"


def test_a_dry_run_changes_nothing(platform: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_MODELS__KILL_SWITCH_ON_ESCALATION", "true")
    degrade(platform)
    state, result = rollback(dry_run=True)
    assert state.is_completed(), result.error
    assert result.action == "would roll back v4 -> v3 (dry run)" and result.target_version == "v3"
    # With no healthy target, a dry run says it would escalate, and still changes nothing.
    for version in ("v2", "v3"):
        degrade(platform, version, sharpe_ratio=0.1)
    state, result = rollback(dry_run=True, force=True)
    assert state.is_failed() and result.escalation and result.escalation.startswith("(dry run: would escalate)")
    assert {c["method"] for c in calls(platform)} == {"GET"} and serving(platform) == "v4"
    assert trading_mode(platform) == "running"
    assert records().get("ppo_primary") is None


def test_no_healthy_target_escalates(platform: httpx.Client) -> None:
    degrade(platform)
    for version in ("v2", "v3"):
        degrade(platform, version, sharpe_ratio=0.1)
    state, result = rollback()
    assert state.is_failed() and result.escalation and "no rollback target was healthy" in result.escalation
    assert calls(platform, "POST") == []


def test_the_cli_refuses_a_run_without_an_inference_api(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    config = tmp_path / "runbooks.toml"
    config.write_text('[repository]\nurl = "file:///nonexistent"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKS_")} | {"RUNBOOKS_CONFIG": str(config)}
    done = subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "model-rollback"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "[inference_api] is not configured" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# -- the pure decisions -----------------------------------------------------------------------------------------
def _judged(verdict: str, reasons: list[str] | None = None) -> Judgement:
    return Judgement(verdict=verdict, reasons=reasons or [])  # type: ignore[arg-type]


def test_the_plan_follows_the_table_and_never_flaps() -> None:
    now = datetime.now(UTC)
    window = timedelta(hours=24)
    record = RollbackRecord(model_id="m", from_version="v4", to_version="v3", reason="r", initiated_by="i",
                            actor="a", at=now - timedelta(hours=1))
    assert plan(_judged("rollback", ["x"]), serving="v4", force=False, requested=None, record=None,
                incident_window=window).action == "roll back"
    assert plan(_judged("healthy"), serving="v4", force=False, requested=None, record=None,
                incident_window=window).action == "none"
    assert plan(_judged("shadow"), serving="v4", force=True, requested=None, record=None,
                incident_window=window).action == "roll back"
    # Our own recent rollback to what serves now: verify, even when the evidence says roll back.
    assert plan(_judged("rollback"), serving="v3", force=True, requested=None, record=record,
                incident_window=window).action == "verify"
    # An old record is another incident.
    old = record.model_copy(update={"at": now - timedelta(days=3)})
    assert plan(_judged("rollback"), serving="v3", force=False, requested=None, record=old,
                incident_window=window).action == "roll back"
    # A human forcing another named version is not a flap.
    assert plan(_judged("rollback"), serving="v3", force=True, requested="v2", record=record,
                incident_window=window).action == "roll back"


def test_targets_are_graded_newest_first_and_the_degraded_one_never_chosen() -> None:
    policy = ModelPolicy()
    day = datetime(2026, 1, 1, tzinfo=UTC)

    def candidate(version: str, days: int, sharpe: float | None) -> Candidate:
        return Candidate(version=version, deployed_at=day + timedelta(days=days),
                         recorded=ModelEvidence(model_id="m", version=version, sharpe=sharpe))

    views = grade_targets([candidate("v1", 1, 1.0), candidate("v3", 3, None), candidate("v4", 4, 1.2),
                           candidate("v2", 2, 0.9)], serving="v4", avoid=set(), policy=policy)
    assert [v.version for v in views] == ["v4", "v3", "v2", "v1"]
    assert [v.eligible for v in views] == [False, False, True, True]
    assert pick_target(views, None).version == "v2"
    with pytest.raises(Refused, match="serving"):
        pick_target(views, "v4")
    avoided = grade_targets([candidate("v2", 2, 0.9)], serving="v3", avoid={"v2"}, policy=policy)
    with pytest.raises(Refused, match="no rollback target was healthy"):
        pick_target(avoided, None)


def _report_of(result: RollbackResult) -> str:
    from runbooks.flows.model_rollback import render_report

    return render_report(result)


@pytest.mark.slow  # end to end on real servers: run with the drills, to keep the suite short
def test_a_degradation_event_starts_a_rollback_run_through_the_deployment_trigger(real_prefect_server: str) -> None:
    """The deployment and its trigger as `deployments/serve.py` builds them from prefect.yaml, applied to a real
    Prefect server whose trigger service renders the event into the run's parameters."""
    import importlib.util
    import uuid
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL, temporary_settings

    spec = importlib.util.spec_from_file_location(
        "deployments_serve", Path(__file__).resolve().parents[1] / "deployments" / "serve.py")
    assert spec and spec.loader
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    (deployment,) = [d for d in serve.build_deployments() if d.name == "model-rollback-on-degradation"]
    with temporary_settings({PREFECT_API_URL: real_prefect_server}):
        deployment_id = deployment.apply()

    def runs() -> list[dict[str, Any]]:
        answer = httpx.post(f"{real_prefect_server}/flow_runs/filter",
                            json={"deployments": {"id": {"any_": [str(deployment_id)]}}}, timeout=10)
        answer.raise_for_status()
        return list(answer.json())

    def emit(name: str, model: str) -> None:
        event = {"id": str(uuid.uuid4()), "occurred": datetime.now(UTC).isoformat(), "event": name,
                 "resource": {"prefect.resource.id": f"runbooks.model.{model}", "runbooks.model": model},
                 "payload": {"reason": "Sharpe 0.21 < 0.3"}}
        httpx.post(f"{real_prefect_server}/events", json=[event], timeout=10).raise_for_status()

    emit("runbooks.model.recovered", "ppo_primary")  # another event of the same model: no run
    emit("runbooks.model.degraded", "ppo_primary")
    deadline = time.monotonic() + 60
    while not (found := runs()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(found) == 1, "the degradation event did not start a run"
    parameters = found[0]["parameters"]
    assert parameters["model_id"] == "ppo_primary" and "Sharpe 0.21 < 0.3" in parameters["reason"]
    assert parameters["initiated_by"].startswith("automation (runbooks.model.degraded ")
    RollbackParameters.model_validate(parameters)
    time.sleep(2)
    assert len(runs()) == 1
