"""Client of the trading platform's operations API (the seeds' /api/v1/operations endpoints)."""

from __future__ import annotations

from typing import Any

from runbooks.adapters.api import JsonApi
from runbooks.core.errors import TradingApiRefused, TradingApiUnavailable

CONFIRMATION_CODE = "CONFIRM_RESUME"


class TradingApi(JsonApi):
    label = "trading API"
    section = "trading_api"
    unavailable = TradingApiUnavailable
    refused = TradingApiRefused
    missing_hint = "add [trading_api] base_url (and token) to the settings, or run with halt_trading=false."

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.call(method, path, body)

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/operations/status")

    def pause(self, *, reason: str, actor: str) -> dict[str, Any]:
        return self._call("POST", "/api/v1/operations/pause", {"reason": reason, "paused_by": actor})

    def kill_switch(self, *, reason: str, actor: str) -> dict[str, Any]:
        return self._call("POST", "/api/v1/operations/kill-switch", {"reason": reason, "activated_by": actor})

    def resume(self, *, actor: str, position_size_fraction: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"resumed_by": actor, "confirmation_code": CONFIRMATION_CODE}
        if position_size_fraction is not None:  # a gradual restart, where the platform supports it
            body["position_size_fraction"] = position_size_fraction
        return self._call("POST", "/api/v1/operations/resume", body)

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A POST at a path the settings name (paper mode, the drawdown limit's reset, the exchange's reconnect)."""
        return self.call("POST", path, body)

    def data_status(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/data/status")

    def read(self, path: str, *, window: str | None = None) -> dict[str, Any]:
        """A read at a path the settings name (the weekly report's P&L and risk endpoints)."""
        return self.call("GET", path, params={"window": window} if window else None)
