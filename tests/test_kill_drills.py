"""Kill drills (issue 13): the flow process SIGKILLed at the dangerous moments of a replace restore and of a disk
cleanup, what Prefect shows for such a run, and two runs of one recovery runbook at once.

Each kill is a real SIGKILL of the whole ``runbooks run`` process group (as the OOM killer or a lost host would),
at a point found from the outside (a child process, a session waiting in ``pg_stat_activity``, a file, the
simulator's call log); then the next run must find and clean what was left, and the data must be whole. What is
already covered elsewhere is not repeated here: a killed pg_dump and a backup killed mid-upload
(test_backup_faults.py), a restore in mode ``new`` killed mid-pg_restore and concurrent restores (test_restore.py),
a run killed while paused (test_restore_safety.py), a drill killed mid-pg_restore (test_drill.py).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from runbooks.adapters.cleanup import MANIFEST_FLUSH_LINES, measure
from runbooks.adapters.repository import open_repository
from runbooks.frame import outcome
from runbooks.settings import load_settings
from runbooks_sandbox import SandboxState
from tests.events import runbook_events, steps_of
from tests.pgfixtures import (
    admin_dsn,
    content_checksums,
    create_fidelity_db,
    database_oids,
    drop_db_and_copies,
    set_database_env,
)
from tests.processes import (
    children_named,
    freeze_when,
    is_stopped,
    kill_group,
    start_run,
    stopping_before,
    wait_for,
)
from tests.repositories import catalog, restore_records
from tests.runs import restore, run_backup, run_cleanup

pytestmark = pytest.mark.slow


# -- helpers -----------------------------------------------------------------------------------------------------
def sql_rows(sandbox: SandboxState, query: str, params: list[Any] | None = None, dbname: str = "postgres") -> list[Any]:
    with psycopg.connect(admin_dsn(sandbox, dbname)) as conn:
        return conn.execute(query, params or []).fetchall()  # type: ignore[arg-type]


def trading(simulator: httpx.Client) -> dict[str, Any]:
    return dict(simulator.get("/api/v1/operations/status").json())


def flow_run_of(resource: str, step: str, timeout: float = 30) -> str:
    """The id of the newest flow run that emitted ``runbooks.step.started`` for ``step`` on ``resource`` (a killed
    run's own events are all that is left of it besides its state)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOrder, EventResourceFilter

    deadline = time.monotonic() + timeout
    while True:  # events reach the server asynchronously
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=EventFilter(resource=EventResourceFilter(id=[resource]),
                                                         event=EventNameFilter(name=["runbooks.step.started"]),
                                                         order=EventOrder.DESC), limit=50)
        for event in page.events:
            if event.payload.get("step") == step:
                return next(r.id.removeprefix("prefect.flow-run.") for r in event.related
                            if r.id.startswith("prefect.flow-run."))
        if time.monotonic() > deadline:
            raise AssertionError(f"no {step!r} step on {resource}")
        time.sleep(0.5)


def flow_run_state(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state is not None
    return state.type.value


# -- restore, mode replace -----------------------------------------------------------------------------------------
@pytest.fixture
def live(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A database of the inventory with one verified backup, which then took writes the backup does not have:
    its checksums now ("original") and the backup's ("restored") differ, so a half swap cannot pass for either."""
    name = create_fidelity_db(config)
    set_database_env(monkeypatch, config, name)
    restored = content_checksums(config, name)
    state, backed_up = run_backup(databases=[name], include_cluster=False)
    assert state.is_completed(), backed_up
    with psycopg.connect(admin_dsn(config, name), autocommit=True) as conn:
        conn.execute("DELETE FROM market.orders WHERE id > 100")
        conn.execute("INSERT INTO market.ticks VALUES ('2026-02-14 00:00+00', 1)")
    original = content_checksums(config, name)
    assert original != restored
    _, dry = restore(database=name, mode="replace", dry_run=True)
    assert dry.plan is not None, dry.error
    yield {"name": name, "oid": database_oids(config)[name], "original": original, "restored": restored,
           "confirm": dry.plan.plan_hash}
    drop_db_and_copies(config, name)


def replace_run(live: dict[str, Any], prefect_api: str) -> subprocess.Popen[bytes]:
    """An unattended replace (the plan hash as ``confirm``), as the DR game-day or an operator at 3 a.m. runs it."""
    return start_run("restore", f"database={live['name']}", "mode=replace", f"confirm={live['confirm']}",
                     prefect_api=prefect_api)


def assert_no_restore_lock(sandbox: SandboxState, name: str) -> None:
    """The killed run's advisory lock went with its session: nobody holds it now."""
    held = sql_rows(sandbox, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                             "objid::bigint = (hashtext(%s)::bigint & 4294967295)", [f"runbooks-restore:{name}"])
    assert held == [(0,)]


def test_replace_killed_during_pg_restore_leaves_the_live_database_and_trading_untouched(
        config: SandboxState, live: dict[str, Any], simulator: httpx.Client, prefect_api: str) -> None:
    name = live["name"]
    proc = replace_run(live, prefect_api)
    try:
        [pid] = wait_for(lambda: children_named(proc.pid, "pg_restore"), timeout=120)  # type: ignore[misc]
        freeze_when(pid, lambda: True)
    finally:
        kill_group(proc)
    killed_at = datetime.now(UTC)
    flow_run_id = flow_run_of(f"runbooks.restore.{name}", "pg_restore -j 2")

    # What it left: the live database as it was, a recorded scratch copy, its work directory; trading untouched.
    dbs = database_oids(config)
    assert dbs[name] == live["oid"] and content_checksums(config, name) == live["original"]
    [scratch] = [d for d in dbs if d.startswith(f"{name}_restore_")]
    record = restore_records(config).get(scratch)
    assert record is not None and record.kind == "scratch" and record.oid == dbs[scratch]
    assert not [d for d in dbs if "_pre_restore_" in d]
    assert trading(simulator)["trading_mode"] == "running"
    assert [c for c in simulator.get("/_control/state").json()["calls"] if c["method"] == "POST"] == []
    assert_no_restore_lock(config, name)
    # Prefect: nothing reports the death. The run stays RUNNING; only its heartbeats stop.
    assert flow_run_state(flow_run_id) == "RUNNING"
    beats = runbook_events(f"prefect.flow-run.{flow_run_id}", names=["prefect.flow-run.heartbeat"],
                           until=lambda ev: len(ev) > 0, timeout=15)
    assert beats and all(b.occurred < killed_at for b in beats)  # sent at its start (then every 180 s), not after

    # The next run sweeps the scratch copy and the work directory, then does the whole job.
    state, result = restore(database=name, mode="replace", confirm=live["confirm"])
    assert state.is_completed(), result.error
    assert result.scratch_swept == [scratch] and len(result.work_dirs_swept) == 1
    assert scratch not in database_oids(config) and restore_records(config).get(scratch) is None
    assert content_checksums(config, name) == live["restored"]
    kept = result.kept_live_as
    assert kept is not None and content_checksums(config, kept) == live["original"]
    kept_record = restore_records(config).get(kept)
    assert kept_record is not None and kept_record.kind == "pre-restore" and kept_record.oid == live["oid"]
    assert trading(simulator)["trading_mode"] == "running"
    assert flow_run_state(flow_run_id) == "RUNNING"  # the next run does not (and cannot) mark it either


def test_replace_killed_inside_the_swap_transaction_changes_no_name(
        config: SandboxState, live: dict[str, Any], simulator: httpx.Client, prefect_api: str) -> None:
    """The swap is one transaction (properties, end sessions, rename live -> kept, copy -> live). The test holds
    the live database's catalog row so the first rename waits inside that transaction, and kills the run there:
    after the kill switch, before the commit."""
    name = live["name"]
    blocker = psycopg.connect(admin_dsn(config))
    try:
        blocker.execute("SELECT 1 FROM pg_database WHERE datname = %s FOR UPDATE", [name])
        proc = replace_run(live, prefect_api)
        try:
            wait_for(lambda: sql_rows(config, "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                                              "query LIKE 'ALTER DATABASE%%RENAME%%'"), timeout=180, interval=0.1)
        finally:
            kill_group(proc)
    finally:
        blocker.rollback()  # the waiting rename goes on, finds its client gone, and its transaction is rolled back
        blocker.close()
    wait_for(lambda: not sql_rows(config, "SELECT pid FROM pg_stat_activity WHERE query LIKE 'ALTER DATABASE%%' "
                                          "AND pid <> pg_backend_pid()"), timeout=30, interval=0.1)

    dbs = database_oids(config)
    assert dbs[name] == live["oid"] and content_checksums(config, name) == live["original"]  # never half
    assert not [d for d in dbs if "_pre_restore_" in d]
    [scratch] = [d for d in dbs if d.startswith(f"{name}_restore_")]
    assert content_checksums(config, scratch) == live["restored"]  # validated, and still only the scratch copy
    assert_no_restore_lock(config, name)
    halted = trading(simulator)
    assert halted["trading_mode"] == "halted" and halted["paused_by"].startswith("runbooks-restore:")

    # The next run: sweeps the scratch copy, swaps, but leaves the dead run's halt for a human (not its own).
    state, result = restore(database=name, mode="replace", confirm=live["confirm"])
    assert state.is_completed(), result.error
    assert result.scratch_swept == [scratch]
    assert content_checksums(config, name) == live["restored"]
    assert result.kept_live_as and content_checksums(config, result.kept_live_as) == live["original"]
    assert any(f"already halted by {halted['paused_by']!r}" in t for t in result.trading), result.trading
    assert trading(simulator)["paused_by"] == halted["paused_by"] and trading(simulator)["trading_mode"] == "halted"


def test_replace_killed_after_the_swap_while_resuming_trading(
        config: SandboxState, live: dict[str, Any], simulator: httpx.Client, prefect_api: str) -> None:
    """Killed after the swap committed, while its resume is being retried (the platform answers 503): the
    restored copy is live, the old database is kept and recorded, trading is left halted by the dead run."""
    name = live["name"]
    simulator.post("/_control/failures", json={"path_prefix": "/api/v1/operations/resume", "status": 503,
                                               "count": 1000, "method": "POST"}).raise_for_status()
    proc = replace_run(live, prefect_api)
    try:
        def resume_refused() -> bool:
            calls = simulator.get("/_control/state").json()["calls"]
            return any(c["path"].endswith("/resume") and c.get("status") == 503 for c in calls)

        wait_for(resume_refused, timeout=180, interval=0.1)
    finally:
        kill_group(proc)
    simulator.post("/_control/failures", json={"path_prefix": "/api/v1/operations/resume", "status": 503,
                                               "count": 0, "method": "POST"}).raise_for_status()

    dbs = database_oids(config)
    assert content_checksums(config, name) == live["restored"] and dbs[name] != live["oid"]
    [kept] = [d for d in dbs if d.startswith(f"{name}_pre_restore_")]
    assert dbs[kept] == live["oid"] and content_checksums(config, kept) == live["original"]
    kept_record = restore_records(config).get(kept)
    assert kept_record is not None and kept_record.kind == "pre-restore" and kept_record.oid == live["oid"]
    assert not [d for d in dbs if d.startswith(f"{name}_restore_")]
    assert not [r for r in restore_records(config).all() if r.kind == "scratch"]
    assert_no_restore_lock(config, name)
    halted = trading(simulator)
    assert halted["trading_mode"] == "halted" and halted["paused_by"].startswith("runbooks-restore:")
    # Its step events say how far it got: the swap finished, the resume started.
    flow_run_id = flow_run_of(f"runbooks.restore.{name}", "resume trading")
    events = runbook_events(f"runbooks.restore.{name}")
    assert ("finished", "swap databases") in steps_of(events, flow_run_id)
    assert ("finished", "resume trading") not in steps_of(events, flow_run_id)

    # The next run finds nothing to sweep; the kept database is offered to the disk cleanup as recorded.
    state, result = restore(database=name, mode="replace", dry_run=True)
    assert state.is_completed(), result.error
    assert result.scratch_swept == [] and result.scratch_left == [] and len(result.work_dirs_swept) == 1


# -- disk cleanup ----------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[int, int, float]]:
    """Every entry under ``root`` (links not followed): (mode, size, mtime), to prove nothing there changed."""
    seen: dict[str, tuple[int, int, float]] = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        seen[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime)
    return seen


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def age(path: Path, days: float) -> None:
    moment = time.time() - days * 86400
    os.utime(path, (moment, moment), follow_symlinks=False)


def cleanup_section(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *rules: dict[str, Any]) -> None:
    monkeypatch.setenv("RUNBOOKS_CLEANUP", json.dumps({
        "watch": [str(tmp_path)], "allowed_roots": [str(tmp_path / "root")], "survey": [], "rules": list(rules)}))


@pytest.fixture
def big_tree(tmp_path: Path) -> dict[str, Any]:
    """8,000 old logs in 80 old directories (still being deleted when it is killed), young ones beside them, a
    protected name, links out of the root, and a sibling tree outside the root that looks just the same."""
    root, outside = tmp_path / "root" / "logs", tmp_path / "outside"
    dirs = []
    for base, count in ((root, 80), (outside, 3)):
        for d in range(count):
            folder = base / f"svc-{d:03d}"
            folder.mkdir(parents=True)
            dirs.append(folder)
            for i in range(100):
                path = folder / f"app-{i:03d}.log"
                path.write_bytes(b"x" * 200)
                age(path, 30)
    young = {root / f"svc-{d:03d}" / "today.log" for d in range(0, 80, 7)}
    for path in young:
        path.write_bytes(b"fresh\n")
    (root / "svc-000" / "worker.pid").write_bytes(b"4242\n")
    age(root / "svc-000" / "worker.pid", 30)
    (root / "out.log").symlink_to(outside / "svc-000" / "app-000.log")
    (root / "out-dir").symlink_to(outside, target_is_directory=True)
    for path in [*dirs, root / "out.log", root / "out-dir"]:
        age(path, 30)
    return {"root": root, "outside": outside, "young": {str(p.relative_to(root)) for p in young},
            "outside_before": snapshot(outside)}


def manifests() -> list[Path]:
    return list((load_settings().state_dir.expanduser() / "cleanup").glob("*.jsonl.gz"))


def manifest_paths(path: Path) -> list[str]:
    """The paths a cleanup manifest lists, read the way ``zcat`` reads a stream that was cut off."""
    text = zlib.decompressobj(wbits=31).decompress(path.read_bytes()).decode()
    return [json.loads(line)["path"] for line in text.splitlines(keepends=True) if line.endswith("\n")]


def entries(root: Path) -> int:
    """Cheap enough to ask between two 10 ms slices of the run: names in the service directories."""
    return sum(len(os.listdir(d)) for d in root.glob("svc-*"))


def test_cleanup_killed_mid_deletion_touches_nothing_outside_and_the_next_run_finishes(
        config: SandboxState, big_tree: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        prefect_api: str) -> None:
    root = big_tree["root"]
    cleanup_section(monkeypatch, tmp_path, {"kind": "files", "name": "old-logs", "roots": [str(root)],
                                            "patterns": ["*.log"], "older_than": "7d", "remove_empty_dirs": True})
    total = entries(root)
    before = {d.name: len(os.listdir(d)) for d in root.glob("svc-*")}
    manifests_before = set(manifests())
    proc = start_run("disk-cleanup", "dry_run=false", "force=true", prefect_api=prefect_api)
    try:
        wait_for(lambda: children_named(proc.pid, "find"), timeout=120)
        freeze_when(proc.pid, lambda: entries(root) < total - 1000)  # well under way, far from done
    finally:
        kill_group(proc)
    left = files_under(root)
    assert len(big_tree["young"]) + 1 < len(left) < total - 1000, len(left)  # killed midway
    assert big_tree["young"] <= left and "svc-000/worker.pid" in left
    assert snapshot(big_tree["outside"]) == big_tree["outside_before"]
    assert (root / "out.log").is_symlink() and (root / "out-dir").is_symlink()
    touched = {d.name for d in root.glob("svc-*") if len(os.listdir(d)) != before[d.name]}
    # Its manifest (gzip without its end, as a killed writer leaves it) lists what it deleted, all but the last
    # few lines it had not flushed yet; nothing it lists is still there.
    [killed_manifest] = set(manifests()) - manifests_before
    listed = manifest_paths(killed_manifest)
    deleted = total - entries(root)
    assert deleted - MANIFEST_FLUSH_LINES - 2 <= len(listed) <= deleted, (len(listed), deleted)
    assert not [p for p in listed if os.path.lexists(p)]
    kept_busy = {p.split("/")[0] for p in big_tree["young"]}

    state, result = run_cleanup(dry_run=False, force=True)
    assert state.is_completed(), result.error
    [outcome] = result.files
    assert outcome.state == "done" and outcome.errors == []
    assert outcome.files == len(left) - len(big_tree["young"]) - 1  # the rest of the old logs, once each
    assert files_under(root) == big_tree["young"] | {"svc-000/worker.pid"}
    assert snapshot(big_tree["outside"]) == big_tree["outside_before"]
    assert (root / "out.log").is_symlink() and (root / "out-dir").is_symlink()
    # Directories only the next run emptied went (they were old). Those the killed run deleted from are young now
    # (their mtime is the kill's), so they wait until they are old enough, as any directory does.
    empty = {d.name for d in root.glob("svc-*") if not any(d.iterdir())}
    assert empty == touched - kept_busy
    assert outcome.dirs_removed == 80 - len(kept_busy | touched)


def log_text(megabytes: int) -> bytes:
    """Log lines gzip works on for a while (hex ids do not compress away)."""
    line = b"2026-11-20T02:00:00Z INFO fill order=%s qty=%d px=3912.50\n"
    return b"".join(line % (os.urandom(12).hex().encode(), i) for i in range(megabytes * 11_000))


def test_cleanup_killed_mid_compression_keeps_every_log_whole(
        config: SandboxState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str) -> None:
    """Killed while gzip writes a big rotated log: the original stays, beside a partial copy that is never taken
    for the log. A run killed after linking its copy but before removing the original (a microsecond window no
    signal can be aimed at from outside: built here as that run leaves it) leaves both whole. The next run
    finishes both and removes the partial copy."""
    root, outside = tmp_path / "root" / "logs", tmp_path / "outside"
    root.mkdir(parents=True)
    outside.mkdir()
    big = log_text(24)
    for path in (root / "app.log.1", outside / "app.log.1"):
        path.write_bytes(big)
        age(path, 3)
    small = log_text(1)
    (root / "api.log.2").write_bytes(small)
    (root / "api.log.2.gz").write_bytes(gzip.compress(small))
    for path in (root / "api.log.2", root / "api.log.2.gz"):
        age(path, 3)
    outside_before = snapshot(outside)
    cleanup_section(monkeypatch, tmp_path, {"kind": "files", "name": "rotated-logs", "roots": [str(root)],
                                            "patterns": ["*.log.[0-9]"], "older_than": "1d", "action": "compress"})

    def partial_copies() -> list[Path]:
        return [p for p in root.iterdir() if p.name.endswith(".runbooks-partial")]

    proc = start_run("disk-cleanup", "dry_run=false", "force=true", prefect_api=prefect_api)
    try:
        wait_for(lambda: children_named(proc.pid, "find"), timeout=120)
        freeze_when(proc.pid, lambda: any(p.name.startswith(".app.log.1.") and p.stat().st_size > 1 << 20
                                          for p in partial_copies()))
    finally:
        kill_group(proc)
    assert (root / "app.log.1").read_bytes() == big and not (root / "app.log.1.gz").exists()
    [partial] = [p for p in partial_copies() if p.name.startswith(".app.log.1.")]
    assert 0 < partial.stat().st_size
    assert gzip.decompress((root / "api.log.2.gz").read_bytes()) == small  # whole, whatever the killed run did
    api_left = (root / "api.log.2").exists()  # unless the killed run got to it first (find's order)
    assert not api_left or (root / "api.log.2").read_bytes() == small
    assert snapshot(outside) == outside_before

    state, result = run_cleanup(dry_run=False, force=True)
    assert state.is_completed(), result.error
    [outcome] = result.files
    assert outcome.errors == [] and outcome.leftovers == 1 and outcome.skipped == {}, outcome
    assert not (root / "app.log.1").exists() and gzip.decompress((root / "app.log.1.gz").read_bytes()) == big
    assert not (root / "api.log.2").exists() and gzip.decompress((root / "api.log.2.gz").read_bytes()) == small
    assert partial_copies() == []
    assert snapshot(outside) == outside_before
    assert outcome.files == 1 + api_left


# -- two runs of one recovery runbook at once ---------------------------------------------------------------------
def finish(proc: subprocess.Popen[bytes], timeout: float = 300) -> tuple[int, dict[str, Any]]:
    """Wait for a ``runbooks run … --json`` process; its exit status and result."""
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, json.loads(out)


def test_two_backups_of_one_database_at_once_never_share_or_sweep_a_directory(
        config: SandboxState, prefect_api: str) -> None:
    """The second backup runs from start to end while the first one's pg_dump is stopped mid-stream: it claims
    its own backup id, leaves the first one's unfinished directory alone, and both publish verified backups."""
    params = ('databases=["trading_db"]', "include_cluster=false", "apply_retention=false")
    first = start_run("backup", *params, as_json=True, prefect_api=prefect_api)
    try:
        [dump] = wait_for(lambda: children_named(first.pid, "pg_dump"), timeout=120)  # type: ignore[misc]
        os.kill(dump, signal.SIGSTOP)
        state, second = run_backup(databases=["trading_db"], include_cluster=False, apply_retention=False)
        os.kill(dump, signal.SIGCONT)
        code, result = finish(first)
    finally:
        if first.poll() is None:
            kill_group(first)
    assert state.is_completed(), second.error
    assert code == 0, result
    assert second.leftovers == [] and result["leftovers"] == []  # neither took the other for a killed run
    ids = {second.items[0].backup_id, result["items"][0]["backup_id"]}
    assert len(ids) == 2
    listed = catalog().list_backups(kind="database", name="trading_db")
    assert {m.backup_id for m in listed} == ids and all(m.verification.status == "passed" for m in listed)
    assert catalog().unfinished() == []


def test_two_cleanups_at_once_never_free_twice_what_the_disk_needs(
        config: SandboxState, small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        prefect_api: str) -> None:
    """A disk at 87.5 % needs 3 of its 20 old logs gone to be below 80 %. The first run is stopped as its walk
    starts (it holds the lock, has measured the disk and deleted nothing yet); a second run meanwhile must not
    measure the same disk and delete 3 more."""
    logs = small_disk / "logs"
    logs.mkdir()
    for i in range(28):
        (logs / f"app-{i:03d}.log").write_bytes(os.urandom(512 * 1024))
        if i < 20:
            age(logs / f"app-{i:03d}.log", 10 + i)
    monkeypatch.setenv("RUNBOOKS_CLEANUP", json.dumps({
        "watch": [str(small_disk)], "allowed_roots": [str(small_disk)], "survey": [], "high_watermark": 85,
        "low_watermark": 80, "rules": [{"kind": "files", "name": "old-logs", "roots": [str(logs)],
                                        "patterns": ["*.log"], "older_than": "7d"}]}))
    before = set(manifests())
    # It stops itself on entering its walk: stopped from outside when its manifest appeared, it had sometimes
    # deleted, measured again and let go of the lock by the time the signal landed (the second then ran alone).
    first = start_run("disk-cleanup", "dry_run=false", as_json=True, prefect_api=prefect_api,
                      before=stopping_before("runbooks.tasks.cleanup:clean_tree"))
    try:
        wait_for(lambda: is_stopped(first.pid) or first.poll() is not None, timeout=120)
        assert first.poll() is None, "the first run ended before its walk"
        assert set(manifests()) - before and len(os.listdir(logs)) == 28  # walk set up, nothing deleted yet
        state, second = run_cleanup(dry_run=False)
        os.kill(first.pid, signal.SIGCONT)
        code, result = finish(first)
    finally:
        if first.poll() is None:
            kill_group(first)
    first_run = flow_run_of(f"runbooks.disk-cleanup.{load_settings().host_name}", "measure disks")
    assert code == 0 and result["files"][0]["files"] == 3, result
    assert state.is_failed() and second.files == [], second
    assert second.error and "another disk-cleanup run" in second.error and first_run in second.error
    assert len(os.listdir(logs)) == 25 and measure(small_disk).percent < 80


def test_two_drills_at_once_the_second_is_refused(config: SandboxState, prefect_api: str) -> None:
    """Two game days on one host would share its cores and skew each other's time to recovery (the figure the
    drill exists to measure): the second is refused while the first runs, naming it."""
    from runbooks.flows.dr_game_day import DrillResult, dr_game_day_flow
    from tests.test_drill import back_up

    back_up()
    first = start_run("dr-game-day", "quality=false", as_json=True, prefect_api=prefect_api)
    frozen: list[int] = []
    try:
        # The first is frozen in pg_restore while the second runs: a small restore would otherwise be done, and the
        # first drill over, before the second even asks (seen in CI).
        frozen = wait_for(lambda: children_named(first.pid, "pg_restore"), timeout=180)  # type: ignore[assignment]
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        state = dr_game_day_flow(quality=False, return_state=True)
        second = outcome(state)
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        code, result = finish(first)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if first.poll() is None:
            kill_group(first)
    assert isinstance(second, DrillResult)
    first_run = flow_run_of("runbooks.dr-game-day.platform", "provision clean cluster")
    assert code == 0 and result["operational"], result.get("error")
    assert state.is_failed() and second.error and "another dr-game-day run" in second.error, second.error
    assert first_run in second.error
    assert second.cluster is None and second.databases == []  # it provisioned nothing
    # A drill that never ran is a refusal, not a failed DR: no scorecard, the holder named.
    assert second.refused and second.refused.startswith("refused: another drill is running"), second.refused
    assert second.scorecard == []


def test_two_model_rollbacks_at_once_roll_back_once(config: SandboxState, simulator: httpx.Client,
                                                    monkeypatch: pytest.MonkeyPatch, prefect_api: str) -> None:
    """A degradation alert and an engineer at once: the first run's rollback request is slow to answer; the
    second, started meanwhile, must not decide on what it reads then and send its own."""
    from runbooks.flows.model_rollback import model_rollback_flow

    monkeypatch.setenv("RUNBOOKS_MODELS__VERIFY_TIMEOUT", "5s")
    simulator.post("/_control/metrics", json={"metrics": {"sharpe_ratio": 0.22, "win_rate": 0.31,
                                                          "error_rate": 0.02}}).raise_for_status()
    simulator.post("/_control/latency", json={"path_prefix": "/api/v1/models/rollback", "method": "POST",
                                              "seconds": 4, "count": 1}).raise_for_status()

    def rollback_posts() -> list[dict[str, Any]]:
        return [c for c in simulator.get("/_control/state").json()["calls"]
                if c["method"] == "POST" and c["path"] == "/api/v1/models/rollback"]

    first = start_run("model-rollback", "monitor_minutes=0", "poll_seconds=0.2", "initiated_by=alert",
                      as_json=True, prefect_api=prefect_api)
    try:
        wait_for(rollback_posts, timeout=120, interval=0.05)  # its request is in flight
        state = model_rollback_flow(monitor_minutes=0, poll_seconds=0.2,
                                                                  initiated_by="oncall", return_state=True)
        second = outcome(state)
        code, result = finish(first)
    finally:
        if first.poll() is None:
            kill_group(first)
    first_run = flow_run_of("runbooks.model-rollback.ppo_primary", "roll back")
    assert code == 0 and result["action"] == "rolled back v4 -> v3" and result["verified"], result
    assert len(rollback_posts()) == 1
    assert state.is_failed() and "another model-rollback run" in (second.error or ""), second.error
    assert first_run in (second.error or "") and second.escalation is None


def test_a_model_rollback_killed_holding_its_lock_does_not_block_the_next(
        config: SandboxState, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch, prefect_api: str) -> None:
    """SIGKILLed while its rollback request is being retried (the API answers 503): its lock object stays in the
    repository, and the next run on this host takes it over at once (its holder's process is gone), sees from
    the record that the rollback never took, and does it."""
    from runbooks.flows.model_rollback import model_rollback_flow

    monkeypatch.setenv("RUNBOOKS_MODELS__VERIFY_TIMEOUT", "5s")
    simulator.post("/_control/metrics", json={"metrics": {"sharpe_ratio": 0.22, "win_rate": 0.31,
                                                          "error_rate": 0.02}}).raise_for_status()
    refused = {"path_prefix": "/api/v1/models/rollback", "method": "POST", "status": 503}
    simulator.post("/_control/failures", json={**refused, "count": 1000}).raise_for_status()
    proc = start_run("model-rollback", "monitor_minutes=0", "poll_seconds=0.2", prefect_api=prefect_api)
    try:
        wait_for(lambda: any(c["path"] == "/api/v1/models/rollback" and c.get("status") == 503
                             for c in simulator.get("/_control/state").json()["calls"]), timeout=120, interval=0.1)
    finally:
        kill_group(proc)
    simulator.post("/_control/failures", json={**refused, "count": 0}).raise_for_status()
    repository = open_repository(load_settings().repository)
    [lock] = [o.key for o in repository.list_objects("locks/model-rollback/")]
    assert simulator.get("/api/v1/models/router/status").json()["active_version"] == "v4"

    state = model_rollback_flow(monitor_minutes=0, poll_seconds=0.2,
                                return_state=True)
    result = outcome(state)
    assert state.is_completed(), result.error
    assert result.action == "rolled back v4 -> v3" and result.verified
    took_over = next(t for t in result.timeline if t.step == "take lock").figures.get("took_over")
    assert took_over and "runbooks-model-rollback:" in str(took_over)
    assert not repository.exists(lock)  # released at the end


def test_a_repository_lock_is_never_lost_to_its_own_heartbeat(config: SandboxState) -> None:
    """Found by the drill above under load: a destructive step's check read the lock object between a heartbeat's
    write and the holder noting what it wrote, and took its own beat for a take-over (LockLost mid-rollback)."""
    from runbooks.adapters.processes import ProcessIdentity
    from runbooks.frame.locks import LockHolder, RepositoryLease

    now = datetime.now(UTC)
    holder = LockHolder(token="t", runbook="drill", actor="runbooks-drill:test", writer=ProcessIdentity.current(),
                        since=now, heartbeat_at=now)
    lease = RepositoryLease(open_repository(load_settings().repository), "locks/drill/beats.json", holder,
                            heartbeat_seconds=0.001)
    lease.acquire(wait_seconds=0)
    try:
        for _ in range(2000):
            lease.ensure()
    finally:
        lease.release()


def test_a_lock_taken_over_from_a_longer_holder_is_held_and_released(tmp_path: Path) -> None:
    """A local repository pads a replaced lock body with spaces to the old length: a take-over from a holder whose
    record was longer (a deployment run's flow run id, a longer PID or host) read as lost at the first check, and
    the lock was left behind at the end (found by review)."""
    from runbooks.adapters.processes import ProcessIdentity
    from runbooks.adapters.repository.local import LocalRepository
    from runbooks.frame.locks import LockHolder, RepositoryLease

    repository = LocalRepository(tmp_path / "repo")
    old = datetime.now(UTC) - timedelta(hours=1)
    dead = LockHolder(token="dead", runbook="model-rollback", flow_run_id=str(uuid.uuid4()),
                      actor="runbooks-model-rollback:" + "x" * 40, since=old, heartbeat_at=old,
                      writer=ProcessIdentity.current().model_copy(update={"host": "gone-" + "h" * 40}))
    repository.put_bytes("locks/m.json", dead.model_dump_json().encode())
    now = datetime.now(UTC)
    ours = LockHolder(token="ours", runbook="model-rollback", actor="cli", writer=ProcessIdentity.current(),
                      since=now, heartbeat_at=now)
    lease = RepositoryLease(repository, "locks/m.json", ours, heartbeat_seconds=0.01,
                            stale_after=timedelta(seconds=60))
    lease.acquire(wait_seconds=0)
    assert lease.took_over is not None and lease.took_over.token == "dead"
    for _ in range(50):
        lease.ensure()  # never LockLost: the padding is not a take-over
    lease.release()
    assert not repository.exists("locks/m.json")


def test_a_model_rollback_that_loses_its_lock_stops_without_paging_or_halting(
        config: SandboxState, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch,
        webhook: tuple[list[dict[str, object]], str]) -> None:
    """The lock is taken over while the run chooses its target (here: removed, as a take-over from another host
    after missed heartbeats would): the run stops before the rollback, and neither pages P1 nor presses the kill
    switch over the run that now holds the lock (found by review: LockLost went down the escalation path)."""
    import threading

    from runbooks.flows.model_rollback import model_rollback_flow

    received, _canary = webhook
    monkeypatch.setenv("RUNBOOKS_MODELS__KILL_SWITCH_ON_ESCALATION", "true")
    simulator.post("/_control/metrics", json={"metrics": {"sharpe_ratio": 0.22, "win_rate": 0.31,
                                                          "error_rate": 0.02}}).raise_for_status()
    simulator.post("/_control/latency", json={"path_prefix": "/api/v1/models/rollback-targets", "method": "GET",
                                              "seconds": 3, "count": 1}).raise_for_status()
    repository = open_repository(load_settings().repository)

    def take_over() -> None:
        # The local repository writes a hidden ``.<name>.<uuid>.tmp`` before linking the lock into place: a
        # listing 10 ms apart can catch it, and deleting that would leave the lock held (seen once in CI).
        [lock] = wait_for(lambda: [o.key for o in repository.list_objects("locks/model-rollback/")  # type: ignore[misc]
                                   if not o.key.rsplit("/", 1)[-1].startswith(".")], timeout=60, interval=0.01)
        repository.delete([lock])  # the run is still gathering evidence: its targets answer in 3 s

    thread = threading.Thread(target=take_over, daemon=True)
    thread.start()
    state = model_rollback_flow(monitor_minutes=0, poll_seconds=0.2,
                                return_state=True)
    thread.join(timeout=60)
    result = outcome(state)
    assert state.is_failed() and "was lost" in (result.error or ""), result.error
    assert result.escalation is None and received == []
    assert simulator.get("/api/v1/models/router/status").json()["active_version"] == "v4"
    assert simulator.get("/api/v1/operations/status").json()["trading_mode"] == "running"
