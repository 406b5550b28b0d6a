"""Interrupted backups: killed pg_dump, killed flow process. Nothing is listed; the next run cleans up."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runbooks.flows.backup import backup_databases
from runbooks.frame import outcome
from runbooks_sandbox import SandboxState
from tests.pgfixtures import create_bulk_db, drop_db, set_database_env
from tests.processes import children_named, freeze_when, kill_group, start_run, wait_for
from tests.repositories import catalog


@pytest.fixture
def bulk_db(sandbox: SandboxState, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """~20 MB of poorly compressible rows: enough for a dump to still be running when we interrupt it, and
    for S3 to need a multipart upload (5 MiB parts)."""
    name = create_bulk_db(sandbox, rows=220_000)
    set_database_env(monkeypatch, sandbox, name)
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__PART_SIZE_MB", "5")
    yield name
    drop_db(sandbox, name)


def _has_partial_dump(name: str) -> bool:
    repo = catalog().repository
    if repo.list_incomplete_uploads("databases/"):
        return True
    return any(o.key.endswith("dump.pgc.zst") and o.size > 0 for o in repo.list_objects(f"databases/{name}/"))


def test_killed_pg_dump_lists_nothing_and_leaves_nothing(config: SandboxState, bulk_db: str) -> None:
    killed: list[int] = []

    def killer() -> None:
        [pid] = wait_for(lambda: children_named(os.getpid(), "pg_dump"))  # type: ignore[misc]
        freeze_when(pid, lambda: _has_partial_dump(bulk_db))
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    state = backup_databases(databases=[bulk_db], include_cluster=False,
                             return_state=True)
    thread.join(timeout=30)
    assert killed, "pg_dump was never interrupted"
    result = outcome(state)
    assert state.is_failed()
    [item] = result.items
    assert item.status == "failed" and "killed by signal 9" in item.error
    cat = catalog()
    assert cat.list_backups() == []
    assert cat.unfinished() == []  # the run removed its own partial objects
    assert list(cat.repository.list_objects("")) == []


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_killed_flow_process_is_swept_by_the_next_run(
    backend: str, request: pytest.FixtureRequest, bulk_db: str, prefect_api: str, tmp_path: Path
) -> None:
    """SIGKILL the whole `runbooks run backup` process midway (no chance to clean up), as an OOM kill would."""
    request.getfixturevalue("config" if backend == "local" else "s3_config")
    proc = start_run("backup", f'databases=["{bulk_db}"]', "include_cluster=false", prefect_api=prefect_api)
    try:
        wait_for(lambda: children_named(proc.pid, "pg_dump"), timeout=90)
        # Freeze the flow's process, not pg_dump: pg_dump may fit its whole output into the pipe and the
        # compressor's buffers and exit before the first partial object shows (seen in CI under load); with the
        # writer stopped, pg_dump blocks on the full pipe and the backup stays midway.
        freeze_when(proc.pid, lambda: _has_partial_dump(bulk_db))
        kill_group(proc)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    # pg_dump was in our process group: it is gone too.
    cat = catalog()
    assert cat.list_backups() == []
    [unfinished] = cat.unfinished()
    assert unfinished.prefix.startswith(f"databases/{bulk_db}/")
    if backend == "s3":
        assert unfinished.uploads, "an incomplete multipart upload should be left behind"

    state = backup_databases(databases=[bulk_db], include_cluster=False,
                             return_state=True)
    result = state.result()
    assert state.is_completed(), result
    [swept] = result.leftovers
    assert swept.prefix == unfinished.prefix and swept.removed
    assert "gone" in swept.reason
    assert cat.unfinished() == []
    assert cat.repository.list_incomplete_uploads("") == []
    assert [m.name for m in cat.list_backups()] == [bulk_db]


def test_a_live_backup_of_another_process_is_not_swept(config: SandboxState) -> None:
    """A lock held by a live process (here: this test process) is in progress, not a leftover."""
    cat = catalog()
    claim = cat.claim([("database", "trading_db")], flow_run_id=None, now=datetime(2026, 1, 1, tzinfo=UTC))
    try:
        cat.repository.put_bytes("databases/trading_db/20260101T000000Z/dump.pgc.zst", b"partial")
        state = backup_databases(databases=["trading_db"], include_cluster=False,
                                 return_state=True)
        assert state.is_completed()
        assert state.result().leftovers == []
        assert [u.prefix for u in cat.unfinished()] == ["databases/trading_db/20260101T000000Z"]
    finally:
        claim.close()
    # Dry-run listing of a stale one: report, do not delete.
    cat.repository.put_bytes("databases/trading_db/20250101T000000Z/dump.pgc.zst", b"orphan")
    dry = backup_databases(dry_run=True, return_state=True).result()
    assert [(lo.prefix, lo.removed) for lo in dry.leftovers] == [("databases/trading_db/20250101T000000Z", False)]
    assert cat.repository.exists("databases/trading_db/20250101T000000Z/dump.pgc.zst")
