"""Locks per resource. A run holds the lock for as long as it may change the resource (its approval wait
included), re-checks it before each destructive step, and, once it holds it, cancels the orphaned approvals of
runs that were killed while holding it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from runbooks.frame.approval import cancel_orphaned_approvals
from runbooks.frame.run import RunbookRun
from runbooks.postgres import AdvisoryLock


def lock_tag(key: str) -> str:
    return "runbooks-lock-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@contextmanager
def resource_lock(run: RunbookRun, *, server: Mapping[str, Any], key: str,
                  wait_seconds: float) -> Iterator[AdvisoryLock]:
    """Hold ``key`` as a PostgreSQL advisory lock on ``server`` (works across hosts) for the block.

    Every destructive step of the run (``run.step(..., destructive=True)``) first proves the lock is still held.
    """
    lock = AdvisoryLock(server, key, holder=f"runbooks {run.runbook} {run.flow_run_id}")
    with run.step("take lock", key=key):
        lock.acquire(wait_seconds=wait_seconds)
    run.steps.before_destructive.append(lock.ensure)
    try:
        if run.flow_run_id:
            cancel_orphaned_approvals(run, tag=lock_tag(key))
        yield lock
    finally:
        run.steps.before_destructive.remove(lock.ensure)
        lock.release()
