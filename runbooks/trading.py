"""Client of the trading platform's operations API (the seeds' /api/v1/operations endpoints)."""

from __future__ import annotations

from typing import Any

import httpx

from runbooks.errors import AuthenticationFailed, ConfigurationError, TradingApiRefused, TradingApiUnavailable
from runbooks.settings import ApiSettings

CONFIRMATION_CODE = "CONFIRM_RESUME"


class TradingApi:
    def __init__(self, settings: ApiSettings | None, client: httpx.Client | None = None) -> None:
        if settings is None:
            raise ConfigurationError(
                "no trading API is configured, so trading cannot be halted or resumed.",
                hint="add [trading_api] base_url (and token) to the settings, or run with halt_trading=false.",
            )
        self.base_url = settings.base_url.rstrip("/")
        token = settings.bearer()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.Client(base_url=self.base_url, headers=headers,
                                              timeout=settings.timeout_seconds)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise TradingApiUnavailable(
                f"trading API {self.base_url} unreachable on {method} {path} ({type(exc).__name__}).",
                hint="check the trading API is up; transient errors are retried.",
            ) from None
        if response.status_code in (401, 403):
            raise AuthenticationFailed(f"trading API refused {method} {path}: {response.status_code}.",
                                       hint="check trading_api.token (or its Secret block).")
        if response.status_code >= 500 or response.status_code == 429:
            raise TradingApiUnavailable(f"trading API {method} {path} answered {response.status_code}.",
                                        hint="transient; the task retries.")
        if response.status_code >= 400:
            raise TradingApiRefused(f"trading API refused {method} {path}: {response.status_code} "
                                    f"{response.text[:200]}.")
        return dict(response.json())

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/operations/status")

    def pause(self, *, reason: str, actor: str) -> dict[str, Any]:
        return self._call("POST", "/api/v1/operations/pause", {"reason": reason, "paused_by": actor})

    def kill_switch(self, *, reason: str, actor: str) -> dict[str, Any]:
        return self._call("POST", "/api/v1/operations/kill-switch", {"reason": reason, "activated_by": actor})

    def resume(self, *, actor: str) -> dict[str, Any]:
        return self._call("POST", "/api/v1/operations/resume",
                          {"resumed_by": actor, "confirmation_code": CONFIRMATION_CODE})

    def data_status(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/data/status")

    def close(self) -> None:
        self._client.close()
