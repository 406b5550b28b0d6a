"""Where model versions live and how the serving one is swapped: an interface, so the model-rollback runbook does
not care whether it talks to the inference API (seed 004's endpoints, the first backend) or, later, an MLflow
Model Registry (champion alias swap). A backend maps its own payloads to these models and its HTTP errors to
ours (transient: retried; a 4xx: not)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote

from pydantic import BaseModel, Field

from runbooks.adapters.api import JsonApi
from runbooks.core.errors import ConfigurationError, InferenceApiRefused, InferenceApiUnavailable, PermanentError
from runbooks.decisions.models import Candidate, ModelEvidence  # noqa: F401  (Candidate re-exported)
from runbooks.settings import ApiSettings


class Serving(BaseModel):
    """What the router serves now."""

    model_id: str
    version: str
    healthy: bool | None = None
    routing: str | None = None


class Predictions(BaseModel):
    """Whether the serving model is producing predictions (seed 004: ``/health/consistency/<model>``)."""

    version: str | None = None
    flowing: bool
    detail: str = ""


class MetricPoint(BaseModel):
    at: datetime | None = None
    sharpe: float | None = None
    win_rate: float | None = None
    error_rate: float | None = None
    latency_seconds: float | None = None


class Reading(BaseModel):
    """The live evidence on the serving version, and the recent series behind it."""

    evidence: ModelEvidence
    history: list[MetricPoint] = Field(default_factory=list)


class ModelRegistry(Protocol):
    kind: str

    def serving(self, model_id: str) -> Serving: ...

    def read(self, model_id: str, window: str) -> Reading: ...

    def rollback_targets(self, model_id: str) -> list[Candidate]: ...

    def roll_back(self, model_id: str, *, target_version: str, reason: str, initiated_by: str) -> dict[str, Any]: ...

    def predictions(self, model_id: str) -> Predictions: ...

    def close(self) -> None: ...


def _number(data: dict[str, Any], *names: str) -> float | None:
    """The first of ``names`` that is a number; a reading the API does not give stays None, never 0."""
    for name in names:
        value = data.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _when(value: Any) -> datetime | None:
    """A timestamp the API gave, or None when it gave none or something that is not one."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) and str(value) else None


def _latency_seconds(data: dict[str, Any]) -> float | None:
    seconds = _number(data, "latency_seconds", "latency_s")
    if seconds is not None:
        return seconds
    millis = _number(data, "latency_ms_p95", "latency_ms")
    return millis / 1000 if millis is not None else None


def _evidence(model_id: str, version: str | None, data: dict[str, Any], max_psi: float | None) -> ModelEvidence:
    losses = _number(data, "consecutive_losses")
    return ModelEvidence(model_id=model_id, version=version, sharpe=_number(data, "sharpe_ratio", "sharpe"),
                         win_rate=_number(data, "win_rate"), error_rate=_number(data, "error_rate"),
                         consecutive_losses=int(losses) if losses is not None else None, max_psi=max_psi,
                         latency_seconds=_latency_seconds(data))


class InferenceApiRegistry(JsonApi):
    """Seed 004's inference API: ``/models/router/status``, ``/models/<id>/metrics``, ``/models/router/drift``,
    ``/models/rollback-targets``, ``POST /models/rollback``, ``/health/consistency/<id>``."""

    kind = "inference-api"
    label = "inference API"
    section = "inference_api"
    unavailable = InferenceApiUnavailable
    refused = InferenceApiRefused
    missing_hint = "add [inference_api] base_url (and token) to the settings."

    def _refused(self, message: str, status: int) -> PermanentError:
        return InferenceApiRefused(message, status=status)

    def serving(self, model_id: str) -> Serving:
        data = self.call("GET", "/api/v1/models/router/status")
        version = _text(data.get("active_version"))
        if version is None:
            raise InferenceApiRefused("inference API router status names no active_version.", status=200)
        healthy = data.get("healthy")
        return Serving(model_id=_text(data.get("active_model_id")) or model_id, version=version,
                       healthy=healthy if isinstance(healthy, bool) else None, routing=_text(data.get("routing")))

    def read(self, model_id: str, window: str) -> Reading:
        metrics = self.call("GET", f"/api/v1/models/{quote(model_id, safe='')}/metrics", params={"window": window})
        drift = self.call("GET", "/api/v1/models/router/drift")
        evidence = _evidence(model_id, _text(metrics.get("version")), metrics, _number(drift, "max_psi"))
        points = metrics.get("history")
        history = [MetricPoint(at=_when(point.get("at")), sharpe=_number(point, "sharpe_ratio", "sharpe"),
                               win_rate=_number(point, "win_rate"), error_rate=_number(point, "error_rate"),
                               latency_seconds=_latency_seconds(point))
                   for point in (points if isinstance(points, list) else []) if isinstance(point, dict)]
        return Reading(evidence=evidence, history=history)

    def rollback_targets(self, model_id: str) -> list[Candidate]:
        data = self.call("GET", "/api/v1/models/rollback-targets")
        candidates = []
        targets = data.get("targets")
        for item in targets if isinstance(targets, list) else []:
            version = _text(item.get("version")) if isinstance(item, dict) else None
            if not isinstance(item, dict) or item.get("model_id", model_id) != model_id or version is None:
                continue
            metrics = item.get("metrics")
            metrics = metrics if isinstance(metrics, dict) else {}
            candidates.append(Candidate(version=version, deployed_at=_when(item.get("deployed_at")),
                                        status=_text(item.get("status")),
                                        recorded=_evidence(model_id, version, metrics, None)))
        return candidates

    def roll_back(self, model_id: str, *, target_version: str, reason: str, initiated_by: str) -> dict[str, Any]:
        return self.call("POST", "/api/v1/models/rollback", {"reason": reason, "initiated_by": initiated_by,
                                                             "target_version": target_version})

    def predictions(self, model_id: str) -> Predictions:
        data = self.call("GET", f"/api/v1/health/consistency/{quote(model_id, safe='')}")
        recent = _number(data, "predictions_last_5m")
        flowing = data.get("status") in ("consistent", "ok", "healthy") and (recent is None or recent > 0)
        detail = f"status {data.get('status')!r}" + (f", {recent:.0f} predictions in 5 min" if recent is not None
                                                     else "") + f", last at {data.get('last_prediction_at')}"
        return Predictions(version=_text(data.get("version")), flowing=flowing, detail=detail)


RegistryKind = Literal["inference-api"]


class RegistryRef(BaseModel):
    """Which registry, reached how, for which model: what the registry tasks are given (they open it per call)."""

    kind: RegistryKind
    api: ApiSettings | None
    model_id: str

    def open(self) -> ModelRegistry:
        if self.kind == "inference-api":
            return InferenceApiRegistry(self.api)
        raise ConfigurationError(f"model registry {self.kind!r} is not supported.", hint="use 'inference-api'.")
