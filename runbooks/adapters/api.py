"""One JSON-over-HTTP client for the platform's APIs (trading, inference): bearer token, timeout, and HTTP
statuses mapped to our errors in one place, so a retry policy can tell a timeout (retried) from a 4xx (not).
A ``deadline`` bounds every request of a client: each waits ``timeout_seconds`` at most and never past it, so a
caller that passes the deadline of its whole retry budget is told of a frozen API within that budget."""

from __future__ import annotations

import time
from typing import Any

import httpx

from runbooks.core.errors import AuthenticationFailed, ConfigurationError, PermanentError, TransientError
from runbooks.settings import ApiSettings


class JsonApi:
    """Subclasses name the API, its settings section and the two errors it raises."""

    label = "API"
    section = "api"
    unavailable: type[TransientError] = TransientError
    refused: type[PermanentError] = PermanentError
    missing_hint = "add the section to the settings"

    def __init__(self, settings: ApiSettings | None, client: httpx.Client | None = None, *,
                 deadline: float | None = None) -> None:
        """``deadline``: a ``time.monotonic()`` instant no request may wait past (None: ``timeout_seconds`` alone)."""
        if settings is None:
            raise ConfigurationError(f"no {self.label} is configured ([{self.section}]).", hint=self.missing_hint)
        self.base_url = settings.base_url.rstrip("/")
        self.timeout_seconds = settings.timeout_seconds
        self.deadline = deadline
        token = settings.bearer()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.Client(base_url=self.base_url, headers=headers,
                                              timeout=settings.timeout_seconds)

    def _refused(self, message: str, status: int) -> PermanentError:
        return self.refused(message)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             params: dict[str, str] | None = None) -> dict[str, Any]:
        timeout = self.timeout_seconds
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:  # nothing left to wait with: calling a frozen API again would only delay the page
                raise self.unavailable(f"{self.label} {self.base_url} not called for {method} {path}: the time "
                                       "allowed for this call, retries included, is spent.",
                                       hint=f"check the {self.label} is up ({self.section}.retry_budget_seconds "
                                       "bounds the retries).")
            timeout = min(self.timeout_seconds, left)
        try:
            response = self._client.request(method, path, json=body, params=params, timeout=timeout)
        except httpx.TransportError as exc:  # refused, reset, timed out: the same call may work later
            raise self.unavailable(
                f"{self.label} {self.base_url} unreachable on {method} {path} ({type(exc).__name__}).",
                hint=f"check the {self.label} is up; transient errors are retried.",
            ) from None
        if response.status_code in (401, 403):
            raise AuthenticationFailed(f"{self.label} refused {method} {path}: {response.status_code}.",
                                       hint=f"check {self.section}.token (or its Secret block).")
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise self.unavailable(f"{self.label} {method} {path} answered {response.status_code}.",
                                   hint="transient; the task retries.")
        if response.status_code >= 400:
            raise self._refused(f"{self.label} refused {method} {path}: {response.status_code} "
                                f"{response.text[:200]}.", response.status_code)
        try:
            data = response.json()
        except ValueError:
            raise self.unavailable(f"{self.label} {method} {path} answered {response.status_code} with a body "
                                   "that is not JSON.", hint="a proxy or a restarting server; retried.") from None
        if not isinstance(data, dict):
            raise self._refused(f"{self.label} {method} {path} answered a JSON {type(data).__name__}, not an "
                                "object.", response.status_code)
        return data

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> JsonApi:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
