"""Running a runbook the way most tests do: its flow called in this process, which returns its final state and the
result model that state carries (failed or not), for the test to assert on both."""

from __future__ import annotations

from typing import Any

import pytest

from runbooks.flows.backup import BackupResult, backup_databases
from runbooks.flows.disk_cleanup import CleanupResult, disk_cleanup_flow
from runbooks.flows.restore import RestoreResult, restore_database_flow
from runbooks.frame import outcome


def run_backup(**params: Any) -> tuple[Any, BackupResult]:
    """``backup_databases(**params)``: its state and result."""
    state = backup_databases(**params, return_state=True)
    return state, outcome(state)


def restore(**params: Any) -> tuple[Any, RestoreResult]:
    """``restore_database_flow(**params)``: its state and result."""
    state = restore_database_flow(**params, return_state=True)
    return state, outcome(state)


def run_cleanup(**params: Any) -> tuple[Any, CleanupResult]:
    """``disk_cleanup_flow(**params)``: its state and result."""
    state = disk_cleanup_flow(**params, return_state=True)
    return state, outcome(state)


def without_retry_delays(monkeypatch: pytest.MonkeyPatch, *tasks: Any) -> None:
    """Keep each task's retry policy (count, condition) but not its real-world delays (seconds each)."""
    for task in tasks:
        monkeypatch.setattr(task, "retry_delay_seconds", [0.05] * 4)
