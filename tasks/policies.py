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


MUTATES = "mutates"  # the tag of a task that changes what the platform, an operator or another run relies on


def step_task(name: str, *, mutates: bool = False, **options: Any) -> Callable[[Callable[P, T]], Task[P, T]]:
    """A runbook task: named for the UI, never cached (every run must look again: a cached "backup verified" or
    "disk at 40 %" would be a lie), retried only as ``options`` say (``**TRANSIENT_RETRY`` where a retry helps).

    ``mutates``: it changes or removes what someone relies on (a database, a file, trading, a setting). A flow
    calls it only inside a destructive step (``run.step(..., destructive=...)``), which first proves the run still
    holds its lock; the task's runs carry the tag ``mutates`` in the UI. tests/test_frame_rules.py checks every
    flow."""
    tags = {MUTATES} if mutates else set()
    return task(name=name, cache_policy=NO_CACHE, tags=tags, **options)
