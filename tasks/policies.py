"""Retry policy shared by every task: transient failures back off and retry, permanent ones fail at once."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from runbooks.core.errors import PermanentError, TransientError

RETRIES = 4
RETRY_DELAYS = exponential_backoff(backoff_factor=2)  # 2, 4, 8, 16 s
RETRY_JITTER = 0.5  # up to ±50 % so parallel runs do not retry in lockstep


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only our TransientError family and raw connection errors; never a PermanentError."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as err:  # result unavailable: judge by the exception that got us here
        exc = err
    if isinstance(exc, PermanentError):
        return False
    return isinstance(exc, TransientError | ConnectionError | TimeoutError)


TRANSIENT_RETRY: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_jitter_factor": RETRY_JITTER,
    "retry_condition_fn": retry_if_transient,
}
