"""The trading platform simulator: the trading and inference API endpoints the seeds' runbooks call, with state,
bearer-token auth, and a test-control surface (``/_control``) to set metrics, staleness, latency and failures.

Serve it with ``python -m runbooks.sandbox.simulator --port PORT --token TOKEN [--dsn DSN]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import UTC, datetime, timedelta
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


class SimulatorState:
    """Everything the simulator remembers; ``reset`` restores the defaults."""

    def __init__(self, dsn: str | None = None) -> None:
        self.dsn = dsn
        self.reset()

    def reset(self) -> None:
        self.trading_mode: Literal["running", "paused", "halted"] = "running"
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


class DataControl(BaseModel):
    staleness_seconds: float | None = None
    last_bar_at: datetime | None = None
    use_database: bool = False


def create_app(*, token: str, dsn: str | None = None) -> FastAPI:
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

            for prefix, seconds in list(state.latency.items()):
                if applies("latency", prefix) and seconds > 0 and state.latency_left.get(prefix, 1) > 0:
                    if prefix in state.latency_left:
                        state.latency_left[prefix] -= 1
                    await asyncio.sleep(seconds)
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

    def ops_status() -> dict[str, Any]:
        return {"trading_mode": state.trading_mode, "kill_switch_active": state.kill_switch_active,
                "paused_by": state.paused_by, "reason": state.pause_reason,
                "changed_at": state.changed_at.isoformat(), "history": state.operations[-20:]}

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
        record("resume", req.resumed_by, None)
        return ops_status()

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
        return {"status": "reset"}

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
    uvicorn.run(create_app(token=token, dsn=args.dsn or os.environ.get("SIMULATOR_DSN")), host=args.host,
                port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
