"""What every task shares: never cached, and a retry policy where transient failures back off and retry and
permanent ones fail at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from runbooks.core.errors import PermanentError, TransientError

RETRIES = 4
RETRY_DELAYS = exponential_backoff(backoff_factor=2)  # 2, 4, 8, 16 s
RETRY_JITTER = 0.5  # up to ±50 % so parallel runs do not retry in lockstep
P = ParamSpec("P")
T = TypeVar("T")


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


def step_task(name: str, **options: Any) -> Callable[[Callable[P, T]], Task[P, T]]:
    """A runbook task: named for the UI, never cached (every run must look again: a cached "backup verified" or
    "disk at 40 %" would be a lie), retried only as ``options`` say (``**TRANSIENT_RETRY`` where a retry helps)."""
    return task(name=name, cache_policy=NO_CACHE, **options)
