"""The trading platform simulator: the trading and inference API endpoints the seeds' runbooks call, with state,
bearer-token auth, and a test-control surface (``/_control``) to set metrics, staleness, latency and failures, and
to stop and resume the sandbox's market-data feeder (``/_control/feed``: a dead feed on demand). With a database,
the simulated platform honours its ``system_config`` row ``trading_mode`` (``halt``: trading is halted, whatever
the API's own switch says), the trading system runbook's database kill switch.

Serve it with ``python -m runbooks_sandbox.simulator --port PORT [--dsn DSN]``; the token comes from
``SIMULATOR_TOKEN`` and the feeder's control directory from ``SIMULATOR_FEED_DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

CONFIRMATION_CODE = "CONFIRM_RESUME"


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    """A naive time is UTC (as timestamptz is stored): comparing it with an aware 'now' would raise."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class ModelVersion(BaseModel):
    model_id: str
    version: str
    status: Literal["active", "standby", "retired"]
    deployed_at: datetime
    healthy: bool = True
    metrics: dict[str, float] = Field(default_factory=dict)
    metrics_history: list[dict[str, Any]] = Field(default_factory=list)


HEALTHY_METRICS = {"sharpe_ratio": 1.12, "win_rate": 0.54, "error_rate": 0.01, "latency_ms_p95": 85.0,
                   "consecutive_losses": 1.0}


def _default_models() -> list[ModelVersion]:
    base = _now() - timedelta(days=40)
    versions = []
    for i, status in enumerate(["retired", "standby", "standby", "active"], start=1):
        versions.append(ModelVersion(model_id="ppo_primary", version=f"v{i}", status=status,  # type: ignore[arg-type]
                                     deployed_at=base + timedelta(days=10 * i), metrics=dict(HEALTHY_METRICS)))
    return versions


def _default_daily_pnl() -> list[dict[str, float]]:
    """31 days of realized P&L and trade counts, oldest first: deterministic, mostly winning, a few losing days."""
    return [{"pnl": round(1200 * math.sin(day * 1.7) + 150, 2), "trades": 40 + (day * 7) % 13} for day in range(31)]


DEFAULT_RISK_METRICS: dict[str, Any] = {
    "current_drawdown_pct": 1.8, "max_drawdown_pct": 4.2, "var_95_1d": 4600.0, "var_99_1d": 6850.0,
    "gross_exposure": 312_500.0, "net_exposure": 77_500.0, "exposure_limit": 500_000.0, "leverage": 1.25,
    "currency": "USD"}


def _default_breakers() -> dict[str, dict[str, Any]]:
    return {"daily_drawdown_limit": {"state": "armed", "threshold_pct": 5.0, "current_pct": 1.8},
            "var_limit": {"state": "armed", "threshold": 6250.0, "current": 4600.0},
            "order_rate": {"state": "armed", "threshold_per_min": 120, "current_per_min": 34}}


def _default_risk_events() -> list[dict[str, Any]]:
    """Ages in hours: three inside a week, one inside a month, none older."""
    return [{"hours_ago": 5, "severity": "warning", "type": "var_limit_approached", "message": "VaR at 82 % of limit"},
            {"hours_ago": 30, "severity": "info", "type": "position_limit_adjusted", "message": "EURUSD limit raised"},
            {"hours_ago": 75, "severity": "critical", "type": "daily_drawdown_limit",
             "message": "DDL triggered at -5.1 %, reset by desk"},
            {"hours_ago": 400, "severity": "warning", "type": "exposure_limit_approached",
             "message": "gross exposure at 91 % of limit"}]


def _window_hours(window: str) -> int:
    """``24h``, ``7d``, ``2w`` in hours; anything else is a 400, as the platform answers."""
    match = re.fullmatch(r"(\d{1,4})([hdw])", window)
    if not match:
        raise HTTPException(status_code=400, detail=f"window {window!r} must look like 24h, 7d or 2w")
    return int(match[1]) * {"h": 1, "d": 24, "w": 168}[match[2]]


def _window_days(window: str) -> int:
    """The window in whole days, at least one: the daily P&L series it covers."""
    return max(1, math.ceil(_window_hours(window) / 24))


class SimulatorState:
    """Everything the simulator remembers; ``reset`` restores the defaults."""

    def __init__(self, dsn: str | None = None) -> None:
        self.dsn = dsn
        self.generation = 0
        self.reset()

    def reset(self) -> None:
        self.generation += 1  # a request held by injected latency across a reset is dropped, never applied
        self.trading_mode: Literal["running", "paused", "halted", "paper"] = "running"
        self.kill_switch_active = False
        self.paused_by: str | None = None
        self.pause_reason: str | None = None
        self.changed_at = _now()
        self.models = _default_models()
        self.router_stuck = False
        self.predictions_stalled = False
        self.on_activation: dict[str, dict[str, float]] = {}  # version -> live metrics once it serves again
        self.drift: dict[str, float] = {"returns_5m": 0.04, "volatility_1h": 0.06, "spread": 0.03}
        self.last_bar_at: datetime | None = None  # None: read from the database when a DSN is set
        self.latency: dict[str, float] = {}  # path prefix -> seconds
        self.latency_left: dict[str, int] = {}  # path prefix -> how many more requests are slowed (absent: all)
        self.failures: dict[str, list[int]] = {}  # path prefix -> [status, remaining count]
        self.methods: dict[str, str] = {}  # "latency:<prefix>" / "failure:<prefix>" -> the only method affected
        self.calls: list[dict[str, Any]] = []
        self.operations: list[dict[str, Any]] = []
        self.daily_pnl = _default_daily_pnl()  # oldest first; the last entry is yesterday
        self.unrealized_pnl = 2150.0
        self.capital = 250_000.0
        self.pnl_overrides: dict[str, Any] = {}  # fields answered as set, whatever the series says
        self.risk_metrics = dict(DEFAULT_RISK_METRICS)
        self.breakers = _default_breakers()
        self.risk_health = "healthy"
        self.risk_events = _default_risk_events()
        self.kill_switch_ignored = False  # the kill switch answers 200 and changes nothing (a platform bug)
        self.position_size_fraction = 1.0  # a gradual restart trades this fraction of the usual size
        self.exchange_connected = True
        self.reconnect_fixes = True  # a reconnect brings the exchange back
        self.status_failures_after_resume = 0  # the next N status reads after a resume answer 503

    def active(self) -> ModelVersion:
        return next(m for m in self.models if m.status == "active")


class PauseRequest(BaseModel):
    reason: str = "unspecified"
    paused_by: str = "unknown"


class KillRequest(BaseModel):
    reason: str = "unspecified"
    activated_by: str = "unknown"


class ResumeRequest(BaseModel):
    resumed_by: str
    confirmation_code: str
    position_size_fraction: float | None = Field(default=None, gt=0, le=1, description="a gradual restart: trade "
                                                 "this fraction of the usual position size (absent: all of it)")


class PaperRequest(BaseModel):
    requested_by: str
    reason: str = "unspecified"


class ResetDdlRequest(BaseModel):
    reset_by: str
    reason: str


class AfterResumeControl(BaseModel):
    status_failures: int = Field(ge=0, le=100, description="the next N status reads after a resume answer 503 (a "
                                 "resume whose read-back fails)")


class ExchangeControl(BaseModel):
    connected: bool | None = None
    reconnect_fixes: bool | None = Field(default=None, description="false: a reconnect leaves it down")


class RollbackRequest(BaseModel):
    reason: str
    initiated_by: str
    target_version: str | None = None


class MetricsControl(BaseModel):
    model_id: str = "ppo_primary"
    version: str | None = None  # default: the active version
    metrics: dict[str, float]
    healthy: bool | None = None


class ActivationControl(BaseModel):
    """Metrics a version shows once it is made active again: a rolled-back model that degrades in turn."""

    version: str
    metrics: dict[str, float]


class FailureControl(BaseModel):
    path_prefix: str
    method: str | None = None  # None: every method
    status: int = 503
    count: int = 1


class LatencyControl(BaseModel):
    path_prefix: str = "/api/v1"
    method: str | None = None  # None: every method
    seconds: float = Field(default=0.0, ge=0, le=60)
    count: int | None = Field(default=None, ge=0, description="slow only the next N requests; None: all")


class PnlControl(BaseModel):
    """The P&L the trading API answers: a daily series (oldest first) and fields answered as given."""

    daily: list[dict[str, float]] | None = Field(default=None, description="[{pnl, trades}], oldest first")
    unrealized_pnl: float | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)


class RiskControl(BaseModel):
    metrics: dict[str, Any] | None = None  # merged into the risk metrics
    breakers: dict[str, str] | None = None  # breaker name -> state (armed, triggered)
    health: str | None = None
    events: list[dict[str, Any]] | None = None  # replaces the events: [{hours_ago, severity, type, message}]


class FeedControl(BaseModel):
    running: bool = Field(description="false: the feeder writes no bars (a dead feed) until set true again")


class KillSwitchControl(BaseModel):
    ignored: bool = Field(description="true: POST kill-switch answers 200 and halts nothing (to hang it or fail "
                          "it, use /_control/latency or /_control/failures on /api/v1/operations/kill-switch)")


class DataControl(BaseModel):
    staleness_seconds: float | None = None
    last_bar_at: datetime | None = None
    use_database: bool = False


def create_app(*, token: str, dsn: str | None = None, feed_dir: Path | None = None) -> FastAPI:
    app = FastAPI(title="Trading platform simulator", version="1.0")
    state = SimulatorState(dsn)
    app.state.sim = state

    def require_token(request: Request) -> None:
        if request.headers.get("authorization") != f"Bearer {token}":
            raise HTTPException(status_code=401, detail="missing or invalid bearer token")

    @app.middleware("http")
    async def faults_and_log(request: Request, call_next):  # type: ignore[no-untyped-def]
        path = request.url.path
        if path.startswith("/api/"):
            body = (await request.body()).decode(errors="replace")
            entry: dict[str, Any] = {"at": _now().isoformat(), "method": request.method, "path": path, "body": body}
            state.calls.append(entry)
            def applies(kind: str, prefix: str) -> bool:
                return path.startswith(prefix) and state.methods.get(f"{kind}:{prefix}", request.method) == \
                    request.method

            generation = state.generation
            for prefix, seconds in list(state.latency.items()):
                if applies("latency", prefix) and seconds > 0 and state.latency_left.get(prefix, 1) > 0:
                    if prefix in state.latency_left:
                        state.latency_left[prefix] -= 1
                    await asyncio.sleep(seconds)
            if state.generation != generation:  # reset while it hung: the client gave up long ago, drop it
                entry["status"] = 503
                return JSONResponse({"detail": "dropped: the simulator was reset while it was held"}, status_code=503)
            for prefix, failure in list(state.failures.items()):
                if applies("failure", prefix) and failure[1] > 0:
                    failure[1] -= 1
                    entry["status"] = failure[0]
                    return JSONResponse({"detail": "injected failure"}, status_code=failure[0])
            try:
                response = await call_next(request)
            except Exception:
                entry["status"] = 500  # what the client gets; without it a crash would look like a call in flight
                raise
            entry["status"] = response.status_code
            return response
        return await call_next(request)

    def database_mode() -> tuple[str, datetime | None] | None:
        """The platform's ``system_config`` trading mode (the trading system runbook's database kill switch), which
        the simulated platform honours like its own switch; None without a database or when it cannot be read."""
        if not state.dsn:
            return None
        import psycopg

        try:
            with psycopg.connect(state.dsn, connect_timeout=2, application_name="simulator") as conn:
                row = conn.execute("SELECT value, updated_at FROM system_config WHERE key = 'trading_mode'").fetchone()
        except psycopg.Error:
            return None
        return None if row is None else (str(row[0]), row[1])

    def set_database_mode(value: str) -> None:
        if state.dsn:
            import psycopg

            try:
                with psycopg.connect(state.dsn, connect_timeout=2, application_name="simulator") as conn:
                    conn.execute("UPDATE system_config SET value = %s, updated_at = now() WHERE key = 'trading_mode'",
                                 [value])
            except psycopg.Error:
                pass

    def ops_status() -> dict[str, Any]:
        status = {"trading_mode": state.trading_mode, "kill_switch_active": state.kill_switch_active,
                  "paused_by": state.paused_by, "reason": state.pause_reason,
                  "changed_at": state.changed_at.isoformat(), "position_size_fraction": state.position_size_fraction,
                  "history": state.operations[-20:]}
        db = database_mode()
        status["database_mode"] = db[0] if db else None
        if db and db[0] == "paper" and state.trading_mode == "running":
            status.update(trading_mode="paper", paused_by="system_config", reason="system_config trading_mode = "
                          "'paper'", changed_at=_aware(db[1]).isoformat() if db[1] else status["changed_at"])
        if db and db[0] == "halt" and state.trading_mode != "halted":
            status.update(trading_mode="halted", kill_switch_active=True, paused_by="system_config",
                          reason="system_config trading_mode = 'halt'",
                          changed_at=_aware(db[1]).isoformat() if db[1] else status["changed_at"])
        return status

    def record(action: str, actor: str, reason: str | None) -> None:
        state.changed_at = _now()
        state.operations.append({"action": action, "by": actor, "reason": reason, "at": state.changed_at.isoformat()})

    @app.get("/api/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "healthy", "trading_mode": state.trading_mode, "active_model": state.active().version,
                "components": {"api": "up", "database": "up" if state.dsn else "simulated", "inference": "up"}}

    auth = [Depends(require_token)]

    @app.get("/api/v1/operations/status", dependencies=auth)
    def operations_status() -> dict[str, Any]:
        return ops_status()

    @app.post("/api/v1/operations/pause", dependencies=auth)
    def pause(req: PauseRequest) -> dict[str, Any]:
        if state.trading_mode == "running":
            state.trading_mode, state.paused_by, state.pause_reason = "paused", req.paused_by, req.reason
        record("pause", req.paused_by, req.reason)
        return ops_status()

    @app.post("/api/v1/operations/kill-switch", dependencies=auth)
    def kill_switch(req: KillRequest) -> dict[str, Any]:
        if state.kill_switch_ignored:
            return {**ops_status(), "accepted": True}
        state.trading_mode, state.kill_switch_active = "halted", True
        state.paused_by, state.pause_reason = req.activated_by, req.reason
        record("kill-switch", req.activated_by, req.reason)
        return ops_status()

    @app.post("/api/v1/operations/resume", dependencies=auth)
    def resume(req: ResumeRequest) -> dict[str, Any]:
        if req.confirmation_code != CONFIRMATION_CODE:
            raise HTTPException(status_code=400, detail="confirmation_code must be CONFIRM_RESUME")
        state.trading_mode, state.kill_switch_active = "running", False
        state.paused_by = state.pause_reason = None
        state.position_size_fraction = req.position_size_fraction or 1.0
        db = database_mode()
        if db and db[0] in ("halt", "paper"):  # resuming lifts every switch, the database's too
            set_database_mode("live")
        record("resume", req.resumed_by, None)
        answer = ops_status()
        if state.status_failures_after_resume:
            prefix = "/api/v1/operations/status"
            state.failures[prefix] = [503, state.status_failures_after_resume]
            state.methods[f"failure:{prefix}"] = "GET"
            state.status_failures_after_resume = 0
        return answer

    @app.post("/api/v1/operations/paper", dependencies=auth)
    def paper(req: PaperRequest) -> dict[str, Any]:
        """The trading system runbook's "Switch to Paper Mode": orders are simulated, none reach the exchange."""
        state.trading_mode, state.kill_switch_active = "paper", False
        state.paused_by, state.pause_reason = req.requested_by, req.reason
        db = database_mode()
        if db and db[0] == "halt":  # paper lifts the database's halt into paper
            set_database_mode("paper")
        record("paper", req.requested_by, req.reason)
        return ops_status()

    @app.get("/api/v1/exchange/status", dependencies=auth)
    def exchange_status() -> dict[str, Any]:
        return {"exchange": "simulated-fx", "connected": state.exchange_connected,
                "status": "connected" if state.exchange_connected else "disconnected",
                "last_heartbeat_at": (_now() - timedelta(seconds=1 if state.exchange_connected else 600)).isoformat()}

    @app.post("/api/v1/exchange/reconnect", dependencies=auth)
    def exchange_reconnect() -> dict[str, Any]:
        if state.reconnect_fixes:
            state.exchange_connected = True
        state.operations.append({"action": "exchange-reconnect", "by": "api", "reason": None, "at": _now().isoformat()})
        return {"accepted": True, **exchange_status()}

    @app.post("/api/v1/risk/reset-ddl", dependencies=auth)
    def reset_ddl(req: ResetDdlRequest) -> dict[str, Any]:
        """The trading system runbook's manual override of the daily drawdown limit."""
        state.breakers.setdefault("daily_drawdown_limit", {})["state"] = "armed"
        # Not record(): a breaker reset is no change of the trading mode, so the status's changed_at stays.
        state.operations.append({"action": "reset-ddl", "by": req.reset_by, "reason": req.reason,
                                 "at": _now().isoformat()})
        return {"reset": True, "breaker": {"name": "daily_drawdown_limit", **state.breakers["daily_drawdown_limit"]}}

    @app.get("/api/v1/data/status", dependencies=auth)
    def data_status() -> dict[str, Any]:
        last = state.last_bar_at
        source = "simulated"
        if last is None and state.dsn:
            import psycopg

            with psycopg.connect(state.dsn, connect_timeout=5) as conn:
                row = conn.execute('SELECT max("timestamp") FROM ohlcv_usdcop_5m').fetchone()
            last, source = (row[0] if row else None), "database"
        if last is None:
            last = _now()
        last = _aware(last)
        staleness = (_now() - last).total_seconds()
        return {"source": "twelvedata", "read_from": source, "last_bar_at": last.isoformat(),
                "staleness_seconds": staleness, "status": "fresh" if staleness <= 600 else "stale"}

    @app.get("/api/v1/models", dependencies=auth)
    def models() -> dict[str, Any]:
        return {"models": [m.model_dump(mode="json", exclude={"metrics_history"}) for m in state.models]}

    @app.get("/api/v1/models/router/status", dependencies=auth)
    def router_status() -> dict[str, Any]:
        active = state.active()
        return {"active_model_id": active.model_id, "active_version": active.version,
                "deployed_at": active.deployed_at.isoformat(), "healthy": active.healthy,
                "routing": "primary"}

    @app.get("/api/v1/models/rollback-targets", dependencies=auth)
    def rollback_targets() -> dict[str, Any]:
        active = state.active()
        targets = [m for m in state.models if m.status == "standby" and m.deployed_at < active.deployed_at]
        targets.sort(key=lambda m: m.deployed_at, reverse=True)
        return {"current_version": active.version,
                "targets": [m.model_dump(mode="json", exclude={"metrics_history"}) for m in targets]}

    @app.post("/api/v1/models/rollback", dependencies=auth)
    def rollback(req: RollbackRequest) -> dict[str, Any]:
        active = state.active()
        candidates = [m for m in state.models if m.status == "standby" and m.deployed_at < active.deployed_at
                      and (req.target_version is None or m.version == req.target_version)]
        if not candidates:
            raise HTTPException(status_code=409, detail="no rollback target available")
        target = max(candidates, key=lambda m: m.deployed_at)
        if not state.router_stuck:
            active.status, target.status = "standby", "active"
            if target.version in state.on_activation:
                target.metrics.update(state.on_activation.pop(target.version))
                target.metrics_history.append({"at": _now().isoformat(), **target.metrics})
        state.operations.append({"action": "rollback", "by": req.initiated_by, "reason": req.reason,
                                 "from": active.version, "to": target.version, "at": _now().isoformat()})
        return {"status": "accepted", "from_version": active.version, "to_version": target.version}

    @app.get("/api/v1/models/router/drift", dependencies=auth)
    def drift() -> dict[str, Any]:
        max_psi = max(state.drift.values(), default=0.0)
        return {"psi": state.drift, "max_psi": max_psi, "drift_detected": max_psi > 0.2}

    @app.get("/api/v1/models/{model_id}/metrics", dependencies=auth)
    def metrics(model_id: str, window: str = "1d", version: str | None = None) -> dict[str, Any]:
        chosen = [m for m in state.models if m.model_id == model_id
                  and (m.version == version if version else m.status == "active")]
        if not chosen:
            raise HTTPException(status_code=404, detail=f"unknown model {model_id!r}")
        model = chosen[0]
        return {"model_id": model_id, "version": model.version, "window": window, **model.metrics,
                "history": model.metrics_history[-100:]}

    @app.get("/api/v1/health/consistency/{model_id}", dependencies=auth)
    def consistency(model_id: str) -> dict[str, Any]:
        """Seed 004's feature-consistency check of the serving model: are predictions flowing, on sane features."""
        active = state.active()
        if model_id != active.model_id:
            raise HTTPException(status_code=404, detail=f"unknown model {model_id!r}")
        flowing = not state.predictions_stalled and active.healthy
        return {"model_id": model_id, "version": active.version,
                "status": "consistent" if flowing else "inconsistent",
                "predictions_last_5m": 60 if flowing else 0,
                "last_prediction_at": (_now() - timedelta(minutes=0 if flowing else 10)).isoformat(),
                "feature_checks": {"missing_features": 0, "nan_ratio": 0.0}}

    @app.get("/api/v1/trading/pnl", dependencies=auth)
    def pnl(window: str = "1d") -> dict[str, Any]:
        """Seed 003's ``/api/trading/pnl`` over a window: realized P&L of the last N days, the open positions'
        unrealized P&L, and the daily series behind them."""
        days = state.daily_pnl[-_window_days(window):]
        today = _now().date()
        daily: list[dict[str, Any]] = [{"date": (today - timedelta(days=len(days) - i)).isoformat(), "pnl": d["pnl"],
                  "trades": int(d.get("trades", 0))} for i, d in enumerate(days)]
        realized = round(sum(d["pnl"] for d in days), 2)
        total = round(realized + state.unrealized_pnl, 2)
        equity, peak, drawdown = state.capital, state.capital, 0.0
        for d in days:
            equity += d["pnl"]
            peak = max(peak, equity)
            drawdown = max(drawdown, (peak - equity) / peak)
        returns = [d["pnl"] / state.capital for d in days]
        sharpe = (statistics.mean(returns) / statistics.stdev(returns) * math.sqrt(252)
                  if len(returns) > 1 and statistics.stdev(returns) > 0 else None)
        trades = sum(d["trades"] for d in daily)
        body: dict[str, Any] = {
            "window": window, "currency": "USD", "realized_pnl": realized, "unrealized_pnl": state.unrealized_pnl,
            "total_pnl": total, "return_pct": round(100 * total / state.capital, 4), "trades": trades,
            "winning_days": sum(1 for d in days if d["pnl"] > 0), "losing_days": sum(1 for d in days if d["pnl"] < 0),
            "win_rate": round(sum(d["trades"] for d in daily if d["pnl"] > 0) / trades, 4) if trades else None,
            "sharpe_ratio": round(sharpe, 3) if sharpe is not None else None,
            "max_drawdown_pct": round(100 * drawdown, 3), "daily": daily}
        body.update(state.pnl_overrides)
        return body

    @app.get("/api/v1/risk/metrics", dependencies=auth)
    def risk_metrics() -> dict[str, Any]:
        return {**state.risk_metrics, "as_of": _now().isoformat()}

    @app.get("/api/v1/risk/circuit-breakers", dependencies=auth)
    def circuit_breakers() -> dict[str, Any]:
        breakers = [{"name": name, **spec} for name, spec in state.breakers.items()]
        return {"breakers": breakers, "triggered": sum(1 for b in breakers if b["state"] == "triggered")}

    @app.get("/api/v1/risk/health", dependencies=auth)
    def risk_health() -> dict[str, Any]:
        return {"status": state.risk_health, "risk_engine": "up" if state.risk_health == "healthy" else "degraded",
                "last_calculation_at": _now().isoformat()}

    @app.get("/api/v1/risk/events", dependencies=auth)
    def risk_events(window: str = "1d") -> dict[str, Any]:
        hours = _window_hours(window)
        now = _now()
        events = [{"at": (now - timedelta(hours=e["hours_ago"])).isoformat(),
                   **{k: v for k, v in e.items() if k != "hours_ago"}}
                  for e in state.risk_events if e["hours_ago"] <= hours]
        by_severity: dict[str, int] = {}
        for event in events:
            by_severity[str(event.get("severity"))] = by_severity.get(str(event.get("severity")), 0) + 1
        return {"window": window, "count": len(events), "by_severity": by_severity, "events": events}

    def _only(key: str, method: str | None) -> None:
        if method:
            state.methods[key] = method.upper()
        else:
            state.methods.pop(key, None)

    # -- test control ------------------------------------------------------------------------------------
    @app.get("/_control/state", dependencies=auth)
    def control_state() -> dict[str, Any]:
        return {"operations": ops_status(), "calls": state.calls, "router_stuck": state.router_stuck,
                "models": [m.model_dump(mode="json") for m in state.models], "drift": state.drift}

    @app.post("/_control/reset", dependencies=auth)
    def control_reset() -> dict[str, str]:
        state.reset()
        db = database_mode()
        if db and db[0] != "live":
            set_database_mode("live")
        if feed_dir is not None:
            from runbooks_sandbox.feeder import set_running

            set_running(feed_dir, True)  # the default is a live feed
        return {"status": "reset"}

    def feed_state() -> dict[str, Any]:
        from runbooks_sandbox.feeder import is_running, read_status

        if feed_dir is None:
            raise HTTPException(status_code=404, detail="this simulator has no market-data feeder to control")
        status = read_status(feed_dir)
        return {"running": is_running(feed_dir), "last_tick": status.model_dump(mode="json") if status else None}

    @app.get("/_control/feed", dependencies=auth)
    def control_feed_state() -> dict[str, Any]:
        return feed_state()

    @app.post("/_control/feed", dependencies=auth)
    def control_feed(req: FeedControl) -> dict[str, Any]:
        from runbooks_sandbox.feeder import set_running

        if feed_dir is not None:
            set_running(feed_dir, req.running)
        return feed_state()  # 404 without a feeder

    @app.post("/_control/metrics", dependencies=auth)
    def control_metrics(req: MetricsControl) -> dict[str, Any]:
        model = next((m for m in state.models if m.model_id == req.model_id
                      and (m.version == req.version if req.version else m.status == "active")), None)
        if model is None:
            raise HTTPException(status_code=404, detail="unknown model/version")
        model.metrics.update(req.metrics)
        model.metrics_history.append({"at": _now().isoformat(), **model.metrics})
        if req.healthy is not None:
            model.healthy = req.healthy
        return model.model_dump(mode="json")

    @app.post("/_control/drift", dependencies=auth)
    def control_drift(psi: dict[str, float]) -> dict[str, float]:
        state.drift.update(psi)
        return state.drift

    @app.post("/_control/router", dependencies=auth)
    def control_router(stuck: bool) -> dict[str, bool]:
        state.router_stuck = stuck
        return {"router_stuck": stuck}

    @app.post("/_control/predictions", dependencies=auth)
    def control_predictions(stalled: bool) -> dict[str, bool]:
        state.predictions_stalled = stalled
        return {"predictions_stalled": stalled}

    @app.post("/_control/on-activation", dependencies=auth)
    def control_on_activation(req: ActivationControl) -> dict[str, Any]:
        state.on_activation[req.version] = req.metrics
        return {"on_activation": state.on_activation}

    @app.post("/_control/latency", dependencies=auth)
    def control_latency(req: LatencyControl) -> dict[str, float]:
        state.latency[req.path_prefix] = req.seconds
        _only(f"latency:{req.path_prefix}", req.method)
        state.latency_left.pop(req.path_prefix, None)
        if req.count is not None:
            state.latency_left[req.path_prefix] = req.count
        return state.latency

    @app.post("/_control/failures", dependencies=auth)
    def control_failures(req: FailureControl) -> dict[str, Any]:
        state.failures[req.path_prefix] = [req.status, req.count]
        _only(f"failure:{req.path_prefix}", req.method)
        return {"failures": state.failures}

    @app.post("/_control/pnl", dependencies=auth)
    def control_pnl(req: PnlControl) -> dict[str, Any]:
        if req.daily is not None:
            state.daily_pnl = [{"pnl": float(d["pnl"]), "trades": float(d.get("trades", 0))} for d in req.daily]
        if req.unrealized_pnl is not None:
            state.unrealized_pnl = req.unrealized_pnl
        state.pnl_overrides.update(req.overrides)
        return {"daily": state.daily_pnl, "unrealized_pnl": state.unrealized_pnl, "overrides": state.pnl_overrides}

    @app.post("/_control/risk", dependencies=auth)
    def control_risk(req: RiskControl) -> dict[str, Any]:
        if req.metrics is not None:
            state.risk_metrics.update(req.metrics)
        for name, breaker_state in (req.breakers or {}).items():
            state.breakers.setdefault(name, {})["state"] = breaker_state
        if req.health is not None:
            state.risk_health = req.health
        if req.events is not None:
            state.risk_events = req.events
        return {"metrics": state.risk_metrics, "breakers": state.breakers, "health": state.risk_health,
                "events": state.risk_events}

    @app.post("/_control/after-resume", dependencies=auth)
    def control_after_resume(req: AfterResumeControl) -> dict[str, int]:
        state.status_failures_after_resume = req.status_failures
        return {"status_failures": req.status_failures}

    @app.post("/_control/exchange", dependencies=auth)
    def control_exchange(req: ExchangeControl) -> dict[str, Any]:
        if req.connected is not None:
            state.exchange_connected = req.connected
        if req.reconnect_fixes is not None:
            state.reconnect_fixes = req.reconnect_fixes
        return {"connected": state.exchange_connected, "reconnect_fixes": state.reconnect_fixes}

    @app.post("/_control/kill-switch", dependencies=auth)
    def control_kill_switch(req: KillSwitchControl) -> dict[str, bool]:
        state.kill_switch_ignored = req.ignored
        return {"ignored": state.kill_switch_ignored}

    @app.post("/_control/data", dependencies=auth)
    def control_data(req: DataControl) -> dict[str, Any]:
        if req.use_database:
            state.last_bar_at = None
        elif req.last_bar_at is not None:
            state.last_bar_at = _aware(req.last_bar_at)
        elif req.staleness_seconds is not None:
            state.last_bar_at = _now() - timedelta(seconds=req.staleness_seconds)
        return {"last_bar_at": state.last_bar_at.isoformat() if state.last_bar_at else None}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    token = os.environ.get("SIMULATOR_TOKEN")  # from the environment: never on a command line
    if not token:
        raise SystemExit("SIMULATOR_TOKEN must be set")
    feed_dir = os.environ.get("SIMULATOR_FEED_DIR")
    uvicorn.run(create_app(token=token, dsn=args.dsn or os.environ.get("SIMULATOR_DSN"),
                           feed_dir=Path(feed_dir) if feed_dir else None),
                host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
