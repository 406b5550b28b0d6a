"""Integration tests of the trading platform simulator, over real HTTP against the sandbox's uvicorn subprocess.

The runbooks trust the simulator to behave like the platform (auth, state, versions, faults on demand), so these
tests pin that behaviour down. The simulator is shared by the whole session: every test starts from a reset.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest

from runbooks_sandbox import SandboxState
from runbooks_sandbox.environment import DATABASE

STATUS = "/api/v1/operations/status"

# Every protected route with a body it would accept: auth must be refused before the body matters.
PROTECTED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", STATUS, None),
    ("POST", "/api/v1/operations/pause", {"reason": "r", "paused_by": "p"}),
    ("POST", "/api/v1/operations/kill-switch", {"reason": "r", "activated_by": "a"}),
    ("POST", "/api/v1/operations/resume", {"resumed_by": "x", "confirmation_code": "CONFIRM_RESUME"}),
    ("GET", "/api/v1/data/status", None),
    ("GET", "/api/v1/models", None),
    ("GET", "/api/v1/models/router/status", None),
    ("GET", "/api/v1/models/rollback-targets", None),
    ("POST", "/api/v1/models/rollback", {"reason": "r", "initiated_by": "i"}),
    ("GET", "/api/v1/models/router/drift", None),
    ("GET", "/api/v1/models/ppo_primary/metrics", None),
    ("GET", "/api/v1/health/consistency/ppo_primary", None),
    ("GET", "/api/v1/trading/pnl", None),
    ("GET", "/api/v1/risk/metrics", None),
    ("GET", "/api/v1/risk/circuit-breakers", None),
    ("GET", "/api/v1/risk/health", None),
    ("GET", "/api/v1/risk/events", None),
    ("POST", "/_control/pnl", {"unrealized_pnl": 1.0}),
    ("POST", "/_control/risk", {"health": "degraded"}),
    ("POST", "/_control/on-activation", {"version": "v3", "metrics": {"sharpe_ratio": 0.1}}),
    ("GET", "/_control/state", None),
    ("POST", "/_control/reset", None),
    ("POST", "/_control/metrics", {"metrics": {"sharpe_ratio": -5.0}}),
    ("POST", "/_control/failures", {"path_prefix": "/api", "status": 500, "count": 9}),
    ("GET", "/_control/feed", None),
    ("POST", "/_control/feed", {"running": False}),
]


@pytest.fixture(scope="module")
def api(sandbox: SandboxState) -> Iterator[httpx.Client]:
    """An authenticated client for the session's simulator."""
    assert sandbox.simulator_url and sandbox.simulator_token
    with httpx.Client(base_url=sandbox.simulator_url, timeout=30,
                      headers={"Authorization": f"Bearer {sandbox.simulator_token}"}) as client:
        yield client


@pytest.fixture
def anonymous(sandbox: SandboxState) -> Iterator[httpx.Client]:
    """A client without credentials, to prove what is (and is not) public."""
    assert sandbox.simulator_url
    with httpx.Client(base_url=sandbox.simulator_url, timeout=30) as client:
        yield client


@pytest.fixture(autouse=True)
def reset(api: httpx.Client) -> None:
    """The simulator outlives each test: start every test from the defaults, whatever the last one left."""
    api.post("/_control/reset").raise_for_status()


@pytest.fixture
def db_dsn(sandbox: SandboxState) -> str:
    return sandbox.cluster().dsn(DATABASE)


def _ok(response: httpx.Response) -> Any:
    """The JSON body of a 2xx response; otherwise fail with what the simulator said."""
    assert response.is_success, f"{response.request.method} {response.request.url.path}: " \
                                f"{response.status_code} {response.text}"
    return response.json()


def _calls(api: httpx.Client) -> list[tuple[str, str, int | None]]:
    return [(c["method"], c["path"], c.get("status")) for c in _ok(api.get("/_control/state"))["calls"]]


def _db_last_bar(dsn: str) -> datetime:
    with psycopg.connect(dsn) as conn:
        row = conn.execute('SELECT max("timestamp") FROM ohlcv_usdcop_5m').fetchone()
    assert row and row[0] is not None, "the sandbox seeded no bars"
    return row[0]


# -- auth ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_protected_routes_refuse_missing_and_wrong_tokens(api: httpx.Client, anonymous: httpx.Client,
                                                          method: str, path: str, body: dict[str, Any] | None
                                                          ) -> None:
    """A runbook with a bad token must fail loudly, and must not change anything on the way."""
    before = _ok(api.get("/_control/state"))
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": "not-even-bearer"}):
        response = anonymous.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
    after = _ok(api.get("/_control/state"))
    assert after["operations"] == before["operations"]
    assert after["models"] == before["models"]


def test_health_is_public(anonymous: httpx.Client) -> None:
    """Load balancers and the sandbox's own readiness probe call health without a token."""
    health = _ok(anonymous.get("/api/v1/health"))
    assert health["status"] == "healthy"
    assert health["trading_mode"] == "running"
    assert health["active_model"] == "v4"
    assert health["components"]["database"] == "up"  # the sandbox passes a DSN


def test_valid_token_is_accepted(api: httpx.Client) -> None:
    assert _ok(api.get(STATUS))["trading_mode"] == "running"


# -- operations ------------------------------------------------------------------------------------------
def test_pause_records_who_and_why(api: httpx.Client) -> None:
    """The freshness runbook may only resume a pause it made itself, so paused_by must round-trip."""
    paused = _ok(api.post("/api/v1/operations/pause", json={"reason": "stale data", "paused_by": "freshness"}))
    assert paused["trading_mode"] == "paused"
    status = _ok(api.get(STATUS))
    assert status["trading_mode"] == "paused"
    assert status["paused_by"] == "freshness"
    assert status["reason"] == "stale data"
    assert status["kill_switch_active"] is False
    assert [(h["action"], h["by"]) for h in status["history"]] == [("pause", "freshness")]


def test_pause_does_not_downgrade_a_halt(api: httpx.Client) -> None:
    """A pause after the kill switch must not turn a halt into a (resumable-by-anyone) pause."""
    _ok(api.post("/api/v1/operations/kill-switch", json={"reason": "no data 1h", "activated_by": "freshness"}))
    _ok(api.post("/api/v1/operations/pause", json={"reason": "stale", "paused_by": "someone-else"}))
    status = _ok(api.get(STATUS))
    assert (status["trading_mode"], status["kill_switch_active"], status["paused_by"]) == \
        ("halted", True, "freshness")


def test_kill_switch_halts_and_resume_needs_the_confirmation_code(api: httpx.Client) -> None:
    """Resuming after a halt is the dangerous direction: a wrong code must change nothing."""
    _ok(api.post("/api/v1/operations/kill-switch", json={"reason": "no data for 1h", "activated_by": "freshness"}))
    halted = _ok(api.get(STATUS))
    assert halted["trading_mode"] == "halted"
    assert halted["kill_switch_active"] is True
    assert halted["paused_by"] == "freshness"

    wrong = api.post("/api/v1/operations/resume", json={"resumed_by": "oncall", "confirmation_code": "yes"})
    assert wrong.status_code == 400
    assert "CONFIRM_RESUME" in wrong.json()["detail"]
    assert _ok(api.get(STATUS)) == halted

    missing = api.post("/api/v1/operations/resume", json={"resumed_by": "oncall"})
    assert missing.status_code == 422
    assert _ok(api.get(STATUS)) == halted

    _ok(api.post("/api/v1/operations/resume", json={"resumed_by": "oncall", "confirmation_code": "CONFIRM_RESUME"}))
    running = _ok(api.get(STATUS))
    assert running["trading_mode"] == "running"
    assert running["kill_switch_active"] is False
    assert running["paused_by"] is None and running["reason"] is None
    assert [h["action"] for h in running["history"]] == ["kill-switch", "resume"]


def test_call_log_records_every_api_call_in_order(api: httpx.Client, anonymous: httpx.Client) -> None:
    """Runbook tests assert on what was called; the log must hold refused calls too, with their status."""
    _ok(api.get(STATUS))
    _ok(api.post("/api/v1/operations/pause", json={"reason": "drill", "paused_by": "test"}))
    api.post("/api/v1/operations/resume", json={"resumed_by": "test", "confirmation_code": "nope"})
    _ok(api.post("/api/v1/operations/resume", json={"resumed_by": "test", "confirmation_code": "CONFIRM_RESUME"}))
    anonymous.get(STATUS)
    _ok(anonymous.get("/api/v1/health"))

    assert _calls(api) == [
        ("GET", STATUS, 200),
        ("POST", "/api/v1/operations/pause", 200),
        ("POST", "/api/v1/operations/resume", 400),
        ("POST", "/api/v1/operations/resume", 200),
        ("GET", STATUS, 401),
        ("GET", "/api/v1/health", 200),
    ]
    bodies = [c["body"] for c in _ok(api.get("/_control/state"))["calls"]]
    assert '"paused_by":"test"' in bodies[1].replace(" ", "")


def test_reset_restores_defaults(api: httpx.Client) -> None:
    """Every other test relies on reset: it must undo operations, rollbacks, faults and the call log."""
    _ok(api.post("/api/v1/operations/kill-switch", json={"reason": "r", "activated_by": "a"}))
    _ok(api.post("/api/v1/models/rollback", json={"reason": "r", "initiated_by": "i"}))
    _ok(api.post("/_control/router", params={"stuck": "true"}))
    _ok(api.post("/_control/failures", json={"path_prefix": "/api/v1/models", "status": 500, "count": 5}))
    _ok(api.post("/_control/data", json={"staleness_seconds": 5000}))

    _ok(api.post("/_control/reset"))

    state = _ok(api.get("/_control/state"))
    assert state["calls"] == []
    assert state["router_stuck"] is False
    assert state["operations"]["trading_mode"] == "running"
    assert state["operations"]["history"] == []
    assert _ok(api.get("/api/v1/models/router/status"))["active_version"] == "v4"
    assert _ok(api.get("/api/v1/data/status"))["read_from"] == "database"


# -- data status -----------------------------------------------------------------------------------------
@pytest.fixture
def fresh_bar(db_dsn: str) -> Iterator[datetime]:
    """A bar stamped now, so freshness does not depend on how long ago the session seeded the database."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        row = conn.execute('INSERT INTO ohlcv_usdcop_5m ("timestamp", open, high, low, close, volume) '
                           'VALUES (now(), 3900, 3901, 3899, 3900, 1000) RETURNING "timestamp"').fetchone()
        assert row
        try:
            yield row[0]
        finally:
            conn.execute('DELETE FROM ohlcv_usdcop_5m WHERE symbol = %s AND "timestamp" = %s', ("USD/COP", row[0]))


def test_data_status_reads_the_database_by_default(api: httpx.Client, fresh_bar: datetime) -> None:
    """The freshness runbook's verdict must follow the real table, read at request time (no cache)."""
    data = _ok(api.get("/api/v1/data/status"))
    assert data["read_from"] == "database"
    assert datetime.fromisoformat(data["last_bar_at"]) == fresh_bar
    assert 0 <= data["staleness_seconds"] <= 600
    assert data["status"] == "fresh"


def test_data_can_be_made_stale_and_back(api: httpx.Client, db_dsn: str) -> None:
    """The freshness ladder is driven by forcing staleness; use_database must undo it exactly."""
    _ok(api.post("/_control/data", json={"staleness_seconds": 1200}))
    stale = _ok(api.get("/api/v1/data/status"))
    assert stale["status"] == "stale"
    assert stale["read_from"] == "simulated"
    assert stale["staleness_seconds"] >= 1200

    _ok(api.post("/_control/data", json={"use_database": True}))
    restored = _ok(api.get("/api/v1/data/status"))
    assert restored["read_from"] == "database"
    assert datetime.fromisoformat(restored["last_bar_at"]) == _db_last_bar(db_dsn)


@pytest.mark.parametrize("stamp", ["2026-01-05T14:00:00+00:00", "2026-01-05T14:00:00", "2026-01-05T09:00:00-05:00"])
def test_data_last_bar_at_control_accepts_naive_and_aware_times(api: httpx.Client, stamp: str) -> None:
    """A naive time means UTC (as in the database); it must not crash the status endpoint."""
    echoed = _ok(api.post("/_control/data", json={"last_bar_at": stamp}))
    assert datetime.fromisoformat(echoed["last_bar_at"]) == datetime(2026, 1, 5, 14, tzinfo=UTC)
    data = _ok(api.get("/api/v1/data/status"))
    assert datetime.fromisoformat(data["last_bar_at"]) == datetime(2026, 1, 5, 14, tzinfo=UTC)
    assert data["status"] == "stale"


# -- models ----------------------------------------------------------------------------------------------
def test_models_lists_four_versions_with_v4_active(api: httpx.Client) -> None:
    models = _ok(api.get("/api/v1/models"))["models"]
    assert [(m["model_id"], m["version"], m["status"]) for m in models] == [
        ("ppo_primary", "v1", "retired"), ("ppo_primary", "v2", "standby"),
        ("ppo_primary", "v3", "standby"), ("ppo_primary", "v4", "active")]
    assert all("metrics_history" not in m for m in models)
    deployed = [datetime.fromisoformat(m["deployed_at"]) for m in models]
    assert deployed == sorted(deployed)


def test_router_status_and_rollback_targets(api: httpx.Client) -> None:
    """The rollback runbook picks the newest older standby: v3 must come first."""
    router = _ok(api.get("/api/v1/models/router/status"))
    assert (router["active_model_id"], router["active_version"], router["healthy"]) == ("ppo_primary", "v4", True)
    targets = _ok(api.get("/api/v1/models/rollback-targets"))
    assert targets["current_version"] == "v4"
    assert [t["version"] for t in targets["targets"]] == ["v3", "v2"]


def test_rollback_switches_the_router_to_v3(api: httpx.Client) -> None:
    result = _ok(api.post("/api/v1/models/rollback", json={"reason": "sharpe below floor", "initiated_by": "rb"}))
    assert result == {"status": "accepted", "from_version": "v4", "to_version": "v3"}
    assert _ok(api.get("/api/v1/models/router/status"))["active_version"] == "v3"
    statuses = {m["version"]: m["status"] for m in _ok(api.get("/api/v1/models"))["models"]}
    assert statuses == {"v1": "retired", "v2": "standby", "v3": "active", "v4": "standby"}
    assert _ok(api.get("/api/v1/health"))["active_model"] == "v3"
    assert [t["version"] for t in _ok(api.get("/api/v1/models/rollback-targets"))["targets"]] == ["v2"]
    history = _ok(api.get(STATUS))["history"]
    assert history[-1] | {"at": None} == {"action": "rollback", "by": "rb", "reason": "sharpe below floor",
                                          "from": "v4", "to": "v3", "at": None}


def test_rollback_to_an_explicit_version(api: httpx.Client) -> None:
    result = _ok(api.post("/api/v1/models/rollback", json={"reason": "r", "initiated_by": "i", "target_version": "v2"}))
    assert result["to_version"] == "v2"
    assert _ok(api.get("/api/v1/models/router/status"))["active_version"] == "v2"


def test_stuck_router_accepts_rollback_but_stays_on_v4(api: httpx.Client) -> None:
    """The runbook must verify through router status, because 'accepted' does not mean switched."""
    assert _ok(api.post("/_control/router", params={"stuck": "true"})) == {"router_stuck": True}
    result = _ok(api.post("/api/v1/models/rollback", json={"reason": "r", "initiated_by": "i"}))
    assert result["status"] == "accepted"
    assert result["to_version"] == "v3"
    assert _ok(api.get("/api/v1/models/router/status"))["active_version"] == "v4"
    assert _ok(api.get("/_control/state"))["router_stuck"] is True

    _ok(api.post("/_control/router", params={"stuck": "false"}))
    _ok(api.post("/api/v1/models/rollback", json={"reason": "r", "initiated_by": "i"}))
    assert _ok(api.get("/api/v1/models/router/status"))["active_version"] == "v3"


def test_rollback_conflicts_when_no_target_remains(api: httpx.Client) -> None:
    """v1 is retired, so after v3 and v2 there is nothing left: 409, and the active version stays."""
    body = {"reason": "r", "initiated_by": "i"}
    assert _ok(api.post("/api/v1/models/rollback", json=body))["to_version"] == "v3"
    assert _ok(api.post("/api/v1/models/rollback", json=body))["to_version"] == "v2"
    assert _ok(api.get("/api/v1/models/rollback-targets"))["targets"] == []
    refused = api.post("/api/v1/models/rollback", json=body)
    assert refused.status_code == 409
    assert _ok(api.get("/api/v1/models/router/status"))["active_version"] == "v2"


def test_rollback_to_an_unknown_version_conflicts(api: httpx.Client) -> None:
    refused = api.post("/api/v1/models/rollback", json={"reason": "r", "initiated_by": "i", "target_version": "v9"})
    assert refused.status_code == 409
    assert _ok(api.get("/api/v1/models/router/status"))["active_version"] == "v4"


# -- metrics and drift -----------------------------------------------------------------------------------
def test_metrics_control_degrades_the_active_version(api: httpx.Client) -> None:
    """Evidence for a rollback comes from these metrics; each control call is one point of history."""
    initial = _ok(api.get("/api/v1/models/ppo_primary/metrics"))
    assert initial["version"] == "v4"
    assert initial["sharpe_ratio"] == pytest.approx(1.12)
    assert initial["history"] == []

    _ok(api.post("/_control/metrics", json={"metrics": {"sharpe_ratio": 0.2}}))
    _ok(api.post("/_control/metrics", json={"metrics": {"sharpe_ratio": -0.4}}))
    degraded = _ok(api.get("/api/v1/models/ppo_primary/metrics", params={"window": "1h"}))
    assert (degraded["version"], degraded["window"]) == ("v4", "1h")
    assert degraded["sharpe_ratio"] == pytest.approx(-0.4)
    assert degraded["win_rate"] == pytest.approx(0.54)  # untouched metrics keep their values
    assert [h["sharpe_ratio"] for h in degraded["history"]] == pytest.approx([0.2, -0.4])

    other = _ok(api.get("/api/v1/models/ppo_primary/metrics", params={"version": "v3"}))
    assert other["sharpe_ratio"] == pytest.approx(1.12)
    assert other["history"] == []


def test_metrics_control_can_mark_a_version_unhealthy(api: httpx.Client) -> None:
    _ok(api.post("/_control/metrics", json={"metrics": {"error_rate": 0.4}, "healthy": False}))
    assert _ok(api.get("/api/v1/models/router/status"))["healthy"] is False


def test_metrics_of_an_unknown_model_or_version_are_404(api: httpx.Client) -> None:
    assert api.get("/api/v1/models/no_such_model/metrics").status_code == 404
    assert api.get("/api/v1/models/ppo_primary/metrics", params={"version": "v9"}).status_code == 404
    assert api.post("/_control/metrics", json={"model_id": "nope", "metrics": {"x": 1}}).status_code == 404


def test_drift_is_detected_only_above_psi_0_2(api: httpx.Client) -> None:
    baseline = _ok(api.get("/api/v1/models/router/drift"))
    assert baseline["drift_detected"] is False
    assert baseline["max_psi"] == pytest.approx(max(baseline["psi"].values()))

    _ok(api.post("/_control/drift", json={"spread": 0.2}))
    assert _ok(api.get("/api/v1/models/router/drift"))["drift_detected"] is False  # the threshold is strict

    _ok(api.post("/_control/drift", json={"spread": 0.35}))
    drift = _ok(api.get("/api/v1/models/router/drift"))
    assert drift["drift_detected"] is True
    assert drift["max_psi"] == pytest.approx(0.35)
    assert drift["psi"]["returns_5m"] == pytest.approx(baseline["psi"]["returns_5m"])


# -- fault injection -------------------------------------------------------------------------------------
def test_injected_failures_run_out_after_count(api: httpx.Client) -> None:
    """Retry logic is tested against exactly N failures, on the chosen prefix only."""
    _ok(api.post("/_control/failures", json={"path_prefix": STATUS, "status": 503, "count": 2}))
    _ok(api.get("/api/v1/health"))  # another prefix: unaffected, and does not use up the failures
    assert [api.get(STATUS).status_code for _ in range(3)] == [503, 503, 200]
    assert _calls(api) == [("GET", "/api/v1/health", 200), ("GET", STATUS, 503), ("GET", STATUS, 503),
                           ("GET", STATUS, 200)]


def test_latency_control_is_accepted_and_requests_still_succeed(api: httpx.Client) -> None:
    """Only that the control works end to end: the suite never asserts on timings."""
    try:
        assert _ok(api.post("/_control/latency", json={"path_prefix": STATUS, "seconds": 0.3}))[STATUS] == 0.3
        assert _ok(api.get(STATUS))["trading_mode"] == "running"
    finally:
        assert _ok(api.post("/_control/latency", json={"path_prefix": STATUS, "seconds": 0}))[STATUS] == 0
    assert _ok(api.get(STATUS))["trading_mode"] == "running"


def test_injected_failures_can_be_limited_to_one_method(api: httpx.Client) -> None:
    rollback = "/api/v1/models/rollback"
    _ok(api.post("/_control/failures", json={"path_prefix": rollback, "method": "post", "status": 422, "count": 1}))
    _ok(api.get("/api/v1/models/rollback-targets"))  # same prefix, another method: unaffected
    assert api.post(rollback, json={"reason": "r", "initiated_by": "i"}).status_code == 422
    assert _ok(api.post(rollback, json={"reason": "r", "initiated_by": "i"}))["to_version"] == "v3"


def test_consistency_says_whether_predictions_flow(api: httpx.Client) -> None:
    body = _ok(api.get("/api/v1/health/consistency/ppo_primary"))
    assert (body["version"], body["status"]) == ("v4", "consistent") and body["predictions_last_5m"] > 0
    _ok(api.post("/_control/predictions", params={"stalled": True}))
    body = _ok(api.get("/api/v1/health/consistency/ppo_primary"))
    assert (body["status"], body["predictions_last_5m"]) == ("inconsistent", 0)
    assert api.get("/api/v1/health/consistency/other_model").status_code == 404


def test_a_version_can_be_set_to_degrade_once_it_serves_again(api: httpx.Client) -> None:
    _ok(api.post("/_control/on-activation", json={"version": "v3", "metrics": {"sharpe_ratio": 0.1}}))
    targets = _ok(api.get("/api/v1/models/rollback-targets"))["targets"]
    assert next(t for t in targets if t["version"] == "v3")["metrics"]["sharpe_ratio"] == 1.12  # as it served
    _ok(api.post("/api/v1/models/rollback", json={"reason": "r", "initiated_by": "i"}))
    assert _ok(api.get("/api/v1/models/ppo_primary/metrics"))["sharpe_ratio"] == 0.1


# -- P&L and risk (seed 003's weekly review) ---------------------------------------------------------------------
def test_pnl_over_a_window_adds_up_its_daily_series(api: httpx.Client) -> None:
    week = _ok(api.get("/api/v1/trading/pnl", params={"window": "7d"}))
    assert week["window"] == "7d" and week["currency"] == "USD" and len(week["daily"]) == 7
    assert week["realized_pnl"] == round(sum(d["pnl"] for d in week["daily"]), 2)
    assert week["total_pnl"] == round(week["realized_pnl"] + week["unrealized_pnl"], 2)
    assert week["trades"] == sum(d["trades"] for d in week["daily"])
    assert 0 < week["win_rate"] < 1 and week["max_drawdown_pct"] >= 0 and week["sharpe_ratio"] is not None
    assert _ok(api.get("/api/v1/trading/pnl", params={"window": "7d"})) == week  # deterministic
    assert len(_ok(api.get("/api/v1/trading/pnl", params={"window": "2w"}))["daily"]) == 14
    assert len(_ok(api.get("/api/v1/trading/pnl", params={"window": "36h"}))["daily"]) == 2
    assert api.get("/api/v1/trading/pnl", params={"window": "a week"}).status_code == 400


def test_pnl_control_sets_the_series_and_fields(api: httpx.Client) -> None:
    _ok(api.post("/_control/pnl", json={"daily": [{"pnl": 100.0, "trades": 3}, {"pnl": -40.5, "trades": 2}],
                                        "unrealized_pnl": -9.5, "overrides": {"currency": "EUR"}}))
    body = _ok(api.get("/api/v1/trading/pnl", params={"window": "7d"}))
    assert (body["realized_pnl"], body["total_pnl"], body["trades"], body["currency"]) == (59.5, 50.0, 5, "EUR")
    assert [d["pnl"] for d in body["daily"]] == [100.0, -40.5]
    _ok(api.post("/_control/reset"))
    assert _ok(api.get("/api/v1/trading/pnl", params={"window": "7d"}))["currency"] == "USD"


def test_risk_metrics_breakers_health_and_events(api: httpx.Client) -> None:
    metrics = _ok(api.get("/api/v1/risk/metrics"))
    assert {"current_drawdown_pct", "var_95_1d", "gross_exposure", "exposure_limit"} <= set(metrics)
    breakers = _ok(api.get("/api/v1/risk/circuit-breakers"))
    assert breakers["triggered"] == 0 and {b["state"] for b in breakers["breakers"]} == {"armed"}
    assert _ok(api.get("/api/v1/risk/health"))["status"] == "healthy"
    week = _ok(api.get("/api/v1/risk/events", params={"window": "7d"}))
    assert week["count"] == len(week["events"]) == 3 and sum(week["by_severity"].values()) == 3
    assert _ok(api.get("/api/v1/risk/events", params={"window": "30d"}))["count"] == 4

    _ok(api.post("/_control/risk", json={"metrics": {"var_95_1d": 9999.0}, "breakers": {"var_limit": "triggered"},
                                         "health": "degraded", "events": []}))
    assert _ok(api.get("/api/v1/risk/metrics"))["var_95_1d"] == 9999.0
    assert _ok(api.get("/api/v1/risk/circuit-breakers"))["triggered"] == 1
    assert _ok(api.get("/api/v1/risk/health"))["status"] == "degraded"
    assert _ok(api.get("/api/v1/risk/events", params={"window": "7d"}))["count"] == 0


def test_the_feed_control_of_a_sandbox_without_a_feeder_says_so(api: httpx.Client) -> None:
    """The suite's sandbox runs no feeder (tests/test_sandbox_feed.py drives one): its control is a clear 404."""
    for response in (api.get("/_control/feed"), api.post("/_control/feed", json={"running": False})):
        assert response.status_code == 404 and "no market-data feeder" in response.json()["detail"]
