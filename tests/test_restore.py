"""The restore runbook against the real sandbox: all three modes, approvals, trading halt/resume through the
simulator, refusals that change nothing, corrupted backups, and serialized concurrent restores."""

from __future__ import annotations

import contextvars
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prefect.artifacts import Artifact
from pydantic import ValidationError

from runbooks.adapters.records import DatabaseRecord
from runbooks.flows.restore import RestoreParameters
from runbooks.tasks.reports import artifact_key
from runbooks_sandbox import SandboxState
from tests.approvals import decide_when_paused
from tests.pgfixtures import (
    admin_dsn,
    content_checksums,
    create_fidelity_db,
    databases,
    drop_db_and_copies,
    schema_dump,
    set_database_env,
)
from tests.processes import wait_for
from tests.repositories import catalog, restore_records
from tests.runs import restore, run_backup


def make_recorded_scratch(sandbox: SandboxState, name: str, source: str) -> None:
    """What a restore killed during pg_restore leaves: a scratch database, recorded with its OID."""
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", [name]).fetchone()[0]  # type: ignore[index]
    records = restore_records(sandbox)
    records.put(DatabaseRecord(server=records.server, name=name, oid=oid, kind="scratch", source=source,
                               backup_id="20260101T000000Z", flow_run_id="killed"))


APPROVE = {"approve": True, "approver": "oncall-alice", "reason": "positions table corrupted at 01:40"}
REJECT = {"approve": False, "approver": "oncall-bob", "reason": "backup too old"}


def scalar(sandbox: SandboxState, dbname: str, query: str):  # type: ignore[no-untyped-def]
    with psycopg.connect(admin_dsn(sandbox, dbname)) as conn:
        row = conn.execute(query).fetchone()
        return row[0] if row else None


def operations(simulator: httpx.Client) -> list[str]:
    calls = simulator.get("/_control/state").json()["calls"]
    return [c["path"].rsplit("/", 1)[-1] for c in calls if c["method"] == "POST"]


@pytest.fixture
def source(config: SandboxState, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A fidelity database in the inventory, with one verified backup in this test's repository."""
    name = create_fidelity_db(config)
    set_database_env(monkeypatch, config, name)
    state, result = run_backup(databases=[name])
    assert state.is_completed(), result
    yield name
    drop_db_and_copies(config, name)


def test_verify_mode_touches_no_database(config: SandboxState, source: str) -> None:
    before = databases(config)
    state, result = restore(database=source, mode="verify")
    assert state.is_completed(), result
    assert result.verification.status == "passed" and result.verification.toc_entries > 10
    assert databases(config) == before


def test_new_mode_restores_an_identical_copy_and_leaves_the_source(config: SandboxState, source: str) -> None:
    source_schema, source_content = schema_dump(config, source), content_checksums(config, source)
    state, result = restore(database=source, mode="new", jobs=2)
    assert state.is_completed(), result
    target = f"{source}_recovery"
    assert result.target == target and result.validation.passed and result.time_to_restore_seconds is not None
    assert schema_dump(config, target) == source_schema == schema_dump(config, source)
    assert content_checksums(config, target) == source_content == content_checksums(config, source)
    record = restore_records(config).get(target)
    assert record is not None and record.kind == "recovery" and record.source == source
    assert not [d for d in databases(config) if "_restore_" in d]  # no scratch left
    assert not [r for r in restore_records(config).all() if r.kind == "scratch"]

    # Again into the same target: refused unless overwrite_target, which then replaces it.
    state, result = restore(database=source, mode="new")
    assert state.is_failed() and "already exists" in result.error and "overwrite_target" in result.error
    state, result = restore(database=source, mode="new", overwrite_target=True)
    assert state.is_completed(), result


def test_refusals_change_nothing(config: SandboxState, source: str) -> None:
    with psycopg.connect(admin_dsn(config), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{source}_keep"')
    before = databases(config)
    state, result = restore(database=source, mode="new", target_database=f"{source}_keep")
    assert state.is_failed() and "was not made by a restore" in result.error and "HINT" in result.error
    state, result = restore(database=source, backup_id="20200101T000000Z")
    assert state.is_failed() and "no backup 20200101T000000Z" in result.error and "HINT" in result.error
    state, result = restore(database=source, before="2001-01-01T00:00:00Z")
    assert state.is_failed() and "no backup of" in result.error and "first one is" in result.error
    state, result = restore(database="not_in_inventory")
    assert state.is_failed() and "not in the inventory" in result.error
    with pytest.raises(ValidationError, match="use mode=replace"):
        RestoreParameters(database=source, mode="new", target_database=source)
    assert databases(config) == before


def test_corrupted_backup_is_refused(config: SandboxState, source: str) -> None:
    cat = catalog()
    [manifest] = cat.list_backups(kind="database", name=source)
    path = Path(cat.repository.root) / manifest.objects[0].key  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    before = databases(config)
    state, result = restore(database=source, mode="verify")
    assert state.is_failed() and "does not verify" in result.error
    state, result = restore(database=source, mode="new")
    assert state.is_failed() and ("corrupted" in result.error or "damaged" in result.error)
    assert databases(config) == before


def test_replace_with_approval_halts_swaps_and_resumes(config: SandboxState, source: str,
                                                       simulator: httpx.Client) -> None:
    # After the backup, the live database takes a bad write we want to undo.
    with psycopg.connect(admin_dsn(config, source), autocommit=True) as conn:
        conn.execute("DELETE FROM market.orders WHERE id > 100")
    with psycopg.connect(admin_dsn(config), autocommit=True) as conn:  # database-level properties to carry over
        conn.execute(f'ALTER DATABASE "{source}" OWNER TO trading_user')
        conn.execute(f"ALTER DATABASE \"{source}\" SET work_mem = '7MB'")
    approver = decide_when_paused(APPROVE)
    state, result = restore(database=source, mode="replace", approval_poll_seconds=1,
                            approval_timeout_seconds=180)  # a lost approver fails the test, not hangs it
    approver.join(5)
    assert state.is_completed(), (result, approver.errors)  # type: ignore[attr-defined]
    assert (result.approval.approved, result.approval.approver, result.approval.reason, result.approval.via) == (
        True, APPROVE["approver"], APPROVE["reason"], "operator")
    assert scalar(config, source, "SELECT count(*) FROM market.orders") == 500  # restored
    kept = result.kept_live_as
    assert kept and kept.startswith(f"{source}_pre_restore_")
    assert scalar(config, kept, "SELECT count(*) FROM market.orders") == 100  # the old live one, kept
    assert operations(simulator) == ["kill-switch", "resume"]  # halt before the swap, resume after
    assert simulator.get("/api/v1/operations/status").json()["trading_mode"] == "running"
    assert result.validation.live_deltas["market.orders"] == 400
    assert restore_records(config).get(source) is None  # the live database is never a droppable scratch
    kept_record = restore_records(config).get(kept)  # the disk cleanup's only evidence that it may offer to drop it
    assert kept_record and kept_record.kind == "pre-restore" and kept_record.source == source
    with psycopg.connect(admin_dsn(config)) as conn:
        assert kept_record.oid == conn.execute("SELECT oid::bigint FROM pg_database WHERE datname = %s",
                                               [kept]).fetchone()[0]
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [source])
        assert owner.fetchone() == ("trading_user",)
    assert scalar(config, source, "SHOW work_mem") == "7MB"


@pytest.mark.parametrize("decision", [REJECT, None], ids=["rejected", "timed-out"])
def test_replace_rejected_or_timed_out_changes_nothing(config: SandboxState, source: str, simulator: httpx.Client,
                                                       decision: dict | None) -> None:  # type: ignore[type-arg]
    before, content = databases(config), content_checksums(config, source)
    approver = decide_when_paused(decision)
    state, result = restore(database=source, mode="replace", approval_poll_seconds=1,
                            approval_timeout_seconds=120 if decision else 3)
    approver.join(5)
    # A decision (or its absence), not an outage: Completed, so the failure automation pages no one.
    assert state.is_completed() and not result.succeeded and result.declined
    assert result.status == ("rejected" if decision else "timed_out")
    assert databases(config) == before and content_checksums(config, source) == content
    assert operations(simulator) == []  # trading untouched
    if decision:
        assert "oncall-bob" in result.error


def test_replace_unattended_with_the_plan_hash(config: SandboxState, source: str, simulator: httpx.Client,
                                              webhook: tuple[list[dict[str, Any]], str]) -> None:
    received, _canary = webhook
    state, dry = restore(database=source, mode="replace", dry_run=True)
    assert state.is_completed() and dry.status == "dry_run"
    assert databases(config) >= {source} and operations(simulator) == []
    state, wrong = restore(database=source, mode="replace", confirm="000000000000")
    assert state.is_failed() and "does not match this plan" in wrong.error
    assert operations(simulator) == []
    state, result = restore(database=source, mode="replace", confirm=dry.plan.plan_hash)
    assert state.is_completed(), result
    assert result.approval.approver == "confirm parameter (unattended)" and result.approval.via == "confirm"
    assert operations(simulator) == ["kill-switch", "resume"]
    # On-call hears it is resolved (seed 004 template); seed 002's post-incident report is drafted from the run.
    assert [m["text"].splitlines()[0] for m in received] == [f"[P1] RESOLVED: restore: {source} replaced from "
                                                             f"{result.backup_id}"]
    assert f"Drop {result.kept_live_as} once satisfied" in received[0]["text"]
    report = Artifact.get(artifact_key(f"restore-post-incident-{source}"))
    assert report is not None and report.flow_run_id is not None
    text = str(report.data)
    assert text.startswith(f"# Post-incident report: {source} replaced from backup")
    assert "**Lead**: confirm parameter (unattended)" in text and result.backup_id in text
    assert "swap databases: ok" in text and "## Action Items" in text and f"Drop {result.kept_live_as}" in text


def test_the_kept_name_of_the_dry_run_is_the_one_approved_and_used(config: SandboxState, source: str,
                                                                   simulator: httpx.Client) -> None:
    """Issue 24: the dry run said the live database would be kept as ``…T034257``, the approved plan ``…T034305``,
    the run kept it as ``…T034307``. The kept name is in the plan and under its hash, derived from the plan's
    inputs: a dry run now and a confirmed run later name the same database, which the rollback names; a second
    replace of the same backup gets another name (and so another hash), never colliding with the first."""
    with psycopg.connect(admin_dsn(config, source), autocommit=True) as conn:
        conn.execute("DELETE FROM market.orders WHERE id > 100")  # the live database now differs from the backup
    _, dry = restore(database=source, mode="replace", dry_run=True)
    planned = dry.plan.keep_live_as
    assert planned and planned not in databases(config)
    state, result = restore(database=source, mode="replace", confirm=dry.plan.plan_hash)
    assert state.is_completed(), result
    assert (result.plan.keep_live_as, result.kept_live_as, result.plan.plan_hash) == (planned, planned,
                                                                                       dry.plan.plan_hash)
    assert scalar(config, planned, "SELECT count(*) FROM market.orders") == 100  # the old live database, there
    assert any(f'ALTER DATABASE "{planned}" RENAME TO "{source}"' in s for s in result.next_steps), result.next_steps

    # The same backup again: the first run's kept database holds that name, so the plan and its hash differ.
    _, again = restore(database=source, mode="replace", dry_run=True)
    assert again.plan.keep_live_as not in (None, planned) and again.plan.plan_hash != dry.plan.plan_hash
    # A database that takes the planned name after the dry run changes the plan: its confirm no longer matches.
    with psycopg.connect(admin_dsn(config), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{again.plan.keep_live_as}"')
    before, content = databases(config), content_checksums(config, source)
    state, refused = restore(database=source, mode="replace", confirm=again.plan.plan_hash)
    assert state.is_failed() and "does not match this plan" in refused.error, refused.error
    assert databases(config) == before and content_checksums(config, source) == content  # nothing swapped


def test_trading_already_halted_stays_halted(config: SandboxState, source: str, simulator: httpx.Client) -> None:
    simulator.post("/api/v1/operations/kill-switch", json={"reason": "incident", "activated_by": "oncall"})
    state, dry = restore(database=source, mode="replace", dry_run=True)
    state, result = restore(database=source, mode="replace", confirm=dry.plan.plan_hash)
    assert state.is_completed(), result
    assert operations(simulator) == ["kill-switch"]  # the responder's only: not pressed again, not resumed
    status = simulator.get("/api/v1/operations/status").json()
    assert status["trading_mode"] == "halted" and status["paused_by"] == "oncall"  # who halted it is kept
    assert any("already halted by 'oncall'" in t for t in result.trading)


def test_concurrent_restores_of_one_database_never_interleave(config: SandboxState, source: str,
                                                             simulator: httpx.Client) -> None:
    """A replace waiting for approval holds the lock: a second restore is refused at once, or waits its turn."""
    first: dict = {}  # type: ignore[type-arg]

    def run_first() -> None:
        first["state"], first["result"] = restore(database=source, mode="replace", approval_poll_seconds=1,
                                                  approval_timeout_seconds=120)

    paused = decide_when_paused(None)  # only to know when the first run is paused (holding the lock)
    thread = threading.Thread(target=contextvars.copy_context().run, args=(run_first,))
    thread.start()
    paused.join(120)
    state, refused = restore(database=source, mode="new", target_database=f"{source}_second")
    assert state.is_failed() and "another run holds" in refused.error
    assert f"{source}_second" not in databases(config)

    from prefect.flow_runs import resume_flow_run

    waiter: dict = {}  # type: ignore[type-arg]

    def run_waiting() -> None:
        waiter["state"], waiter["result"] = restore(database=source, mode="new", target_database=f"{source}_third",
                                                    lock_wait_seconds=120)

    second = threading.Thread(target=contextvars.copy_context().run, args=(run_waiting,))
    second.start()

    def lock_sessions() -> int:  # the holder and the waiter, each on its own lock session
        with psycopg.connect(admin_dsn(config, "postgres")) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'runbooks restore%'"
                               ).fetchone()
            return int(row[0]) if row else 0

    wait_for(lambda: lock_sessions() >= 2, timeout=120, interval=0.2)
    released_at = datetime.now(UTC)  # the first run holds the lock at least until it is resumed
    resume_flow_run(paused.seen[0], run_input=REJECT)  # type: ignore[attr-defined]
    thread.join(120)
    second.join(180)
    assert first["result"].status == "rejected"
    assert waiter["state"].is_completed(), waiter["result"]
    lock_step = next(s for s in waiter["result"].timeline if s.step == "take lock")
    acquired_at = lock_step.started_at + timedelta(seconds=lock_step.seconds)
    assert lock_step.started_at < released_at <= acquired_at  # it waited, and got the lock only after the first


def test_a_killed_restore_leaves_a_scratch_the_next_run_removes(config: SandboxState, source: str) -> None:
    """What a restore killed during pg_restore leaves: a marked scratch database (the source untouched)."""
    scratch = f"{source}_restore_20260101000000"
    make_recorded_scratch(config, scratch, source)
    state, result = restore(database=source, mode="new", dry_run=True)
    assert state.is_completed() and result.scratch_swept == [scratch] and scratch in databases(config)
    state, result = restore(database=source, mode="new")
    assert state.is_completed(), result
    assert result.scratch_swept == [scratch]
    assert scratch not in databases(config)


def test_restore_process_killed_midway(config: SandboxState, source: str, prefect_api: str) -> None:
    """SIGKILL `runbooks run restore` during pg_restore: the source is untouched, the scratch database is
    marked, and the next restore drops it."""
    import os
    import sys

    from tests.processes import kill_run_at

    content = content_checksums(config, source)
    kill_run_at([sys.executable, "-m", "runbooks.cli", "run", "restore", "--param", f"database={source}"],
                {**os.environ, "PREFECT_API_URL": prefect_api}, "pg_restore")
    scratch = [d for d in databases(config) if d.startswith(f"{source}_restore_")]
    assert len(scratch) == 1
    record = restore_records(config).get(scratch[0])
    assert record is not None and record.kind == "scratch" and record.oid is not None  # recorded before pg_restore
    assert content_checksums(config, source) == content
    # Its report was never published, but its timeline is on the server: each step as it happened.
    from tests.events import runbook_events, steps_of

    events = runbook_events(f"runbooks.restore.{source}",
                            until=lambda ev: ("started", "pg_restore -j 2") in steps_of(ev))
    assert steps_of(events)[-2:] == [("finished", "create scratch database"), ("started", "pg_restore -j 2")]
    assert ("finished", "fetch and verify backup") in steps_of(events)
    state, result = restore(database=source, mode="new")
    assert state.is_completed(), result
    assert result.scratch_swept == scratch


def test_missing_roles_come_from_the_cluster_backup_and_existing_ones_are_untouched(
    config: SandboxState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role that owned objects at backup time is gone; trading_user's password was rotated since. The restore
    creates only the missing role, and the rotated password still works."""
    name = create_fidelity_db(config)
    set_database_env(monkeypatch, config, name)
    with psycopg.connect(admin_dsn(config), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS desk_analyst; CREATE ROLE desk_analyst LOGIN PASSWORD 'analyst-pw'")
    with psycopg.connect(admin_dsn(config, name), autocommit=True) as conn:
        conn.execute("ALTER TABLE market.docs OWNER TO desk_analyst")
    try:
        state, _ = run_backup(databases=[name])
        assert state.is_completed()
        with psycopg.connect(admin_dsn(config, name), autocommit=True) as conn:
            conn.execute("REASSIGN OWNED BY desk_analyst TO postgres; DROP OWNED BY desk_analyst")
        with psycopg.connect(admin_dsn(config), autocommit=True) as conn:
            conn.execute("DROP ROLE desk_analyst")
            conn.execute("ALTER ROLE trading_user PASSWORD 'rotated-after-backup'")
        state, result = restore(database=name, mode="new")
        assert state.is_completed(), result
        # Dropped on purpose: it comes back only as an owner, without LOGIN and without its old password hash.
        assert [(r.name, r.login, r.with_password) for r in result.roles_created] == [("desk_analyst", False, False)]
        with psycopg.connect(admin_dsn(config)) as conn:
            assert conn.execute("SELECT rolcanlogin, rolpassword IS NULL FROM pg_authid WHERE rolname ="
                                " 'desk_analyst'").fetchone() == (False, True)
        assert "SCRAM" not in result.model_dump_json()
        owner = scalar(config, f"{name}_recovery",
                       "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'market.docs'::regclass")
        assert owner == "desk_analyst"
        with psycopg.connect(config.cluster().dsn(name, "trading_user", "rotated-after-backup")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("trading_user",)
    finally:
        drop_db_and_copies(config, name)
        with psycopg.connect(admin_dsn(config), autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS desk_analyst")
            conn.execute(f"ALTER ROLE trading_user PASSWORD '{config.app_password}'")
