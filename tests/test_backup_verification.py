"""The weekly backup verification against the sandbox's real repository and backups: a good one passes, a flipped
byte fails, a damaged newest one is shown as damaged (an older good one never stands in), an old one is stale."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.artifacts import Artifact

from runbooks.flows.backup_verification import verify_backups_flow
from runbooks.frame import outcome
from runbooks_sandbox import SandboxState
from tests.processes import wait_for
from tests.repositories import catalog, configured_repository_path
from tests.runs import run_backup


def verify(**params: Any) -> tuple[Any, Any]:
    state = verify_backups_flow(**params, return_state=True)
    return state, outcome(state)


def back_up() -> str:
    state, result = run_backup(databases=["trading_db"])
    assert state.is_completed(), result
    return str(result.items[0].backup_id)


def newest_dir() -> Path:
    cat = catalog()
    manifest = cat.list_backups(kind="database", name="trading_db")[-1]
    return Path(cat.repository.root) / manifest.objects[0].key.rsplit("/", 1)[0]  # type: ignore[attr-defined]


def test_a_good_backup_passes_and_turns_stale_with_age(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
    backup_id = back_up()
    state, result = verify()
    assert state.is_completed(), result
    [found] = result.databases
    assert (found.database, found.status, found.backup_id) == ("trading_db", "passed", backup_id)
    assert 0 <= found.age_hours < 1 and found.bytes > 0
    report = Artifact.get("backup-verification-report")
    assert report is not None and "1 of 1 newest backups verified" in str(report.data)
    monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS__BACKUP_STALE_AFTER", "PT10S")
    taken = datetime.strptime(backup_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    wait_for(lambda: (datetime.now(UTC) - taken).total_seconds() > 12, timeout=30)
    state, result = verify()
    assert state.is_failed() and result.databases[0].status == "stale"
    assert "trading_db: stale" in result.error and "backup-on-demand" in result.next_steps[0]


def test_a_flipped_byte_fails_and_a_damaged_newest_backup_is_shown_not_skipped(config: SandboxState) -> None:
    older = back_up()
    wait_for(lambda: datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") > older, timeout=5)
    newest = back_up()
    dump = next(p for p in newest_dir().iterdir() if p.name.endswith(".zst"))
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    state, result = verify()
    assert state.is_failed()
    [found] = result.databases
    assert (found.status, found.backup_id) == ("failed", newest) and found.detail
    (newest_dir() / "manifest.json").write_text("{ not a manifest")
    state, result = verify()
    [found] = result.databases
    assert state.is_failed() and (found.status, found.backup_id) == ("damaged", newest)  # not the older good one
    assert "manifest" in found.detail


def test_no_backup_is_missing_and_an_unknown_database_is_refused(config: SandboxState) -> None:
    state, result = verify()  # a mistyped repository URL is not "no backups"
    assert state.is_failed() and "does not exist" in result.error and not result.databases
    configured_repository_path().mkdir(mode=0o700)
    state, result = verify()
    assert state.is_failed() and result.databases[0].status == "missing"
    state, result = verify(databases=["nope_db"])
    assert state.is_failed() and "not in the inventory: nope_db" in result.error and not result.databases
