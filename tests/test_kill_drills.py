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

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from flows.backup import BackupParameters, backup_databases
from flows.restore import RestoreParameters, RestoreResult, restore_database_flow
from runbooks.postgres import server_identity
from runbooks.records import RestoreRecords
from runbooks.repository import open_repository
from runbooks.sandbox import SandboxState
from runbooks.settings import load_settings
from tests.events import runbook_events, steps_of
from tests.pgfixtures import admin_dsn, content_checksums, create_fidelity_db, drop_db, set_database_env
from tests.processes import children_named, freeze_when, wait_for

pytestmark = pytest.mark.slow


# -- helpers -----------------------------------------------------------------------------------------------------
def start_run(runbook: str, *params: str, prefect_api: str) -> subprocess.Popen[bytes]:
    """``runbooks run RUNBOOK -p …`` in its own process group (so one SIGKILL takes its children too)."""
    argv = [sys.executable, "-m", "runbooks.cli", "run", runbook]
    for param in params:
        argv += ["--param", param]
    return subprocess.Popen(argv, env={**os.environ, "PREFECT_API_URL": prefect_api}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the run and everything it started: no finally block, no atexit, no cleanup of any kind."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def sql_rows(sandbox: SandboxState, query: str, params: list[Any] | None = None, dbname: str = "postgres") -> list[Any]:
    with psycopg.connect(admin_dsn(sandbox, dbname)) as conn:
        return conn.execute(query, params or []).fetchall()  # type: ignore[arg-type]


def databases(sandbox: SandboxState) -> dict[str, int]:
    return {name: int(oid) for name, oid in sql_rows(sandbox, "SELECT datname, oid FROM pg_database "
                                                              "WHERE NOT datistemplate")}


def restore_records(sandbox: SandboxState) -> RestoreRecords:
    with psycopg.connect(admin_dsn(sandbox)) as conn:
        server = server_identity(conn, psycopg.conninfo.conninfo_to_dict(admin_dsn(sandbox)))
    return RestoreRecords(open_repository(load_settings().repository), server)


def restore(**params: Any) -> tuple[Any, RestoreResult]:
    state = restore_database_flow(parameters=RestoreParameters(**params), return_state=True)
    return state, state.result(raise_on_failure=False)


def trading(simulator: httpx.Client) -> dict[str, Any]:
    return dict(simulator.get("/api/v1/operations/status").json())


def flow_run_of(resource: str, step: str) -> str:
    """The id of the flow run that emitted ``runbooks.step.started`` for ``step`` on ``resource`` (the killed
    run's own events are all that is left of it besides its state)."""
    events = runbook_events(resource, until=lambda ev: ("started", step) in steps_of(ev))
    for event in events:
        if event.event == "runbooks.step.started" and event.payload.get("step") == step:
            return next(r.id.removeprefix("prefect.flow-run.") for r in event.related
                        if r.id.startswith("prefect.flow-run."))
    raise AssertionError(f"no {step!r} step on {resource}")


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
    state = backup_databases(parameters=BackupParameters(databases=[name], include_cluster=False),
                             return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    with psycopg.connect(admin_dsn(config, name), autocommit=True) as conn:
        conn.execute("DELETE FROM market.orders WHERE id > 100")
        conn.execute("INSERT INTO market.ticks VALUES ('2026-02-14 00:00+00', 1)")
    original = content_checksums(config, name)
    assert original != restored
    _, dry = restore(database=name, mode="replace", dry_run=True)
    assert dry.plan is not None, dry.error
    yield {"name": name, "oid": databases(config)[name], "original": original, "restored": restored,
           "confirm": dry.plan.plan_hash}
    for db in databases(config):
        if db.startswith(name):
            drop_db(config, db)


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
    flow_run_id = flow_run_of(f"runbooks.restore.{name}", "pg_restore -j 2")

    # What it left: the live database as it was, a recorded scratch copy, its work directory; trading untouched.
    dbs = databases(config)
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
    assert len(beats) == 1  # the one sent when the run started; the next was due 180 s later

    # The next run sweeps the scratch copy and the work directory, then does the whole job.
    state, result = restore(database=name, mode="replace", confirm=live["confirm"])
    assert state.is_completed(), result.error
    assert result.scratch_swept == [scratch] and len(result.work_dirs_swept) == 1
    assert scratch not in databases(config) and restore_records(config).get(scratch) is None
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

    dbs = databases(config)
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

    dbs = databases(config)
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
