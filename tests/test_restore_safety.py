"""Regression tests of issue 6 §2: a restore cannot destroy what it protects. Each one failed before the fix."""

from __future__ import annotations

import contextvars
import json
import threading
import time
import uuid

import httpx
import psycopg
import pytest

from runbooks.flows.restore import keep_names
from runbooks_sandbox import SandboxState
from tests.approvals import decide_when_paused
from tests.pgfixtures import (
    admin_dsn,
    create_fidelity_db,
    databases,
    drop_db,
    drop_db_and_copies,
    set_database_env,
)
from tests.repositories import catalog
from tests.runs import restore, run_backup
from tests.test_restore import APPROVE, operations, scalar


def backup(*names: str, retention: bool = True) -> None:
    """A backup of ``names`` that must succeed (the tests here are about what a restore does with it)."""
    state, result = run_backup(databases=list(names), apply_retention=retention)
    assert state.is_completed(), result


def sql(sandbox: SandboxState, statement: str, dbname: str = "postgres", **user: str) -> None:
    dsn = admin_dsn(sandbox, dbname)
    if user:
        dsn = sandbox.cluster().dsn(dbname, user["user"], user["password"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture
def fresh(config: SandboxState, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A fidelity database in the inventory; removed with everything named after it."""
    name = create_fidelity_db(config)
    set_database_env(monkeypatch, config, name)
    yield name
    drop_db_and_copies(config, name)


def test_a_forged_comment_never_gets_the_live_database_dropped(config: SandboxState) -> None:
    """As the application role, mark trading_db as a scratch copy of itself: the sweep must not drop it."""
    backup("trading_db")
    forged = 'runbooks-scratch {"source": "trading_db"}'
    app = {"user": "trading_user", "password": config.app_password or ""}
    sql(config, f"COMMENT ON DATABASE trading_db IS '{forged}'", "trading_db", **app)
    target = f"x_{uuid.uuid4().hex[:8]}"
    try:
        state, result = restore(database="trading_db", target_database=target)
        assert state.is_completed(), result
        assert "trading_db" in databases(config) and result.scratch_swept == []
        assert scalar(config, "trading_db", "SELECT count(*) FROM trades") > 0
    finally:
        sql(config, "COMMENT ON DATABASE trading_db IS NULL")
        drop_db(config, target)


def test_only_a_database_the_records_show_is_overwritten(config: SandboxState, fresh: str) -> None:
    backup(fresh)
    state, result = restore(database=fresh, mode="new")
    assert state.is_completed(), result
    recovery = f"{fresh}_recovery"
    # Promoted by hand: renamed away and another database takes the name (with a forged mark, even).
    sql(config, f'ALTER DATABASE "{recovery}" RENAME TO "{fresh}_promoted"')
    sql(config, f'CREATE DATABASE "{recovery}"')
    sql(config, f"""COMMENT ON DATABASE "{recovery}" IS 'runbooks-recovery {{}}'""")
    sql(config, "CREATE TABLE keep_me (x int)", recovery)
    state, result = restore(database=fresh, mode="new", overwrite_target=True)
    assert state.is_failed() and "was not made by a restore" in result.error
    assert scalar(config, recovery, "SELECT count(*) FROM keep_me") == 0 and f"{fresh}_promoted" in databases(config)


def test_a_recovery_database_in_use_is_not_dropped(config: SandboxState, fresh: str) -> None:
    backup(fresh)
    state, result = restore(database=fresh, mode="new")
    assert state.is_completed(), result
    with psycopg.connect(admin_dsn(config, f"{fresh}_recovery")) as session:  # someone is looking at it
        state, result = restore(database=fresh, mode="new", overwrite_target=True)
        assert state.is_failed() and "other sessions" in result.error
        assert session.execute("SELECT 1").fetchone() == (1,)
    assert f"{fresh}_recovery" in databases(config)


def test_replace_carries_every_database_property(config: SandboxState, fresh: str,
                                                 simulator: httpx.Client) -> None:
    role = f"desk_{uuid.uuid4().hex[:6]}"
    sql(config, f"CREATE ROLE {role} NOLOGIN")
    sql(config, "CREATE SCHEMA \"Odd Schema\"", fresh)
    for statement in [f'ALTER DATABASE "{fresh}" SET search_path = "$user", public, "Odd Schema"',
                      f'ALTER ROLE {role} IN DATABASE "{fresh}" SET work_mem = \'3MB\'',
                      f'REVOKE ALL ON DATABASE "{fresh}" FROM PUBLIC',
                      f'GRANT CONNECT ON DATABASE "{fresh}" TO {role} WITH GRANT OPTION',
                      f'ALTER DATABASE "{fresh}" CONNECTION LIMIT 17',
                      f'ALTER DATABASE "{fresh}" OWNER TO trading_user']:
        sql(config, statement)

    def properties() -> tuple[object, ...]:
        with psycopg.connect(admin_dsn(config)) as conn:
            row = conn.execute(
                "SELECT pg_get_userbyid(datdba), datconnlimit, ARRAY(SELECT unnest(datacl)::text ORDER BY 1),"
                " (SELECT array_agg(coalesce(pg_get_userbyid(setrole), '') || ':' || array_to_string(setconfig, ';')"
                "  ORDER BY setrole) FROM pg_db_role_setting WHERE setdatabase = d.oid)"
                " FROM pg_database d WHERE datname = %s", [fresh]).fetchone()
        assert row is not None
        return tuple(row)

    try:
        before = properties()
        backup(fresh)
        state, dry = restore(database=fresh, mode="replace", dry_run=True)
        state, result = restore(database=fresh, mode="replace", confirm=dry.plan.plan_hash)
        assert state.is_completed(), result
        assert properties() == before
        with psycopg.connect(admin_dsn(config, fresh)) as conn:
            assert conn.execute("SHOW search_path").fetchone() == ('"$user", public, "Odd Schema"',)
            assert conn.execute("SELECT count(*) FROM market.orders").fetchone() == (500,)  # unqualified works too
    finally:
        drop_db_and_copies(config, fresh)
        sql(config, f"DROP ROLE IF EXISTS {role}")


def test_the_copy_gets_the_source_encoding_and_locale(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"latin_{uuid.uuid4().hex[:8]}"
    sql(config, f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'")
    sql(config, "CREATE TABLE t (s text); INSERT INTO t VALUES ('Bogotá')", name)
    set_database_env(monkeypatch, config, name)
    try:
        backup(name)
        state, result = restore(database=name, mode="new")
        assert state.is_completed(), result
        query = "SELECT pg_encoding_to_char(encoding), datcollate FROM pg_database WHERE datname = current_database()"
        assert scalar(config, f"{name}_recovery", query.replace("datcollate", "datcollate || ''")) == "LATIN1"
        assert scalar(config, f"{name}_recovery", "SELECT s FROM t") == "Bogotá"
    finally:
        drop_db_and_copies(config, name)


def test_integrity_checks_are_configuration_and_never_fail_a_matching_restore(
        config: SandboxState, monkeypatch: pytest.MonkeyPatch, fresh: str) -> None:
    # A schema unlike the seeds': positions without entry_price, and a 'filled' trade status that is valid here.
    sql(config, "CREATE TABLE positions (symbol text, quantity numeric, status text);"
                "CREATE TABLE trades (id int, status text); INSERT INTO trades VALUES (1, 'filled')", fresh)
    checks = [{"name": "null prices", "sql": "SELECT count(*) FROM positions WHERE entry_price IS NULL",
               "expect": 0},
              {"name": "odd statuses", "sql": "SELECT count(*) FROM trades WHERE status NOT IN ('open', 'closed')",
               "expect": 0},
              {"name": "trade statuses", "sql": "SELECT status, count(*) FROM trades GROUP BY 1"}]
    monkeypatch.setenv(f"RUNBOOKS_DATABASES__{fresh.upper()}__CHECKS", json.dumps(checks))
    backup(fresh)
    state, result = restore(database=fresh, mode="new")
    assert state.is_completed(), result
    by_name = {c.name: c for c in result.validation.checks}
    assert by_name["null prices"].status == "could_not_run" and "42703" in by_name["null prices"].error
    assert by_name["odd statuses"].status == "failed" and by_name["odd statuses"].value == "1"
    assert by_name["trade statuses"].status == "reported" and by_name["trade statuses"].rows == [["filled", "1"]]


def test_live_writers_do_not_fail_a_good_replace(config: SandboxState, fresh: str,
                                                 simulator: httpx.Client) -> None:
    """Ingestion keeps writing to the live database through the kill switch and the swap."""
    backup(fresh)
    state, dry = restore(database=fresh, mode="replace", dry_run=True)
    stop = threading.Event()
    written = []

    def ingest() -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(admin_dsn(config, fresh), autocommit=True, connect_timeout=2) as conn:
                    while not stop.is_set():
                        conn.execute("INSERT INTO market.ticks VALUES (now() - interval '10 months', 1)")
                        written.append(1)
                        time.sleep(0.005)
            except psycopg.Error:
                time.sleep(0.05)  # terminated by the swap: reconnect, as a feed would

    writer = threading.Thread(target=ingest, daemon=True)
    writer.start()
    try:
        state, result = restore(database=fresh, mode="replace", confirm=dry.plan.plan_hash)
    finally:
        stop.set()
        writer.join(10)
    assert state.is_completed(), result
    assert len(written) > 10
    assert operations(simulator) == ["kill-switch", "resume"]


def test_kept_names_fit_postgres_and_never_collide() -> None:
    """Named for the backup (never the clock), within 63 bytes, the backup id and the number never cut off."""
    live = "d" * 63
    names = keep_names(live, "20261123T020001Z")
    first, second, third = next(names), next(names), next(names)
    assert all(len(n.encode()) <= 63 for n in (first, second, third)) and len({first, second, third}) == 3
    assert first.endswith("_pre_restore_20261123T020001Z") and second.endswith("_pre_restore_20261123T020001Z_2")
    assert next(keep_names(live, "20261123T020001Z")) == first  # the same inputs, the same name: a dry run's
    assert next(keep_names(live, "20261124T020001Z")) != first
    assert len(next(keep_names("é" * 40, "20261123T020001Z")).encode()) <= 63  # never splits a character


@pytest.mark.slow  # three restores, one waiting out the trading API's retry budget: run with the drills
def test_prerequisites_are_checked_before_any_expensive_work(config: SandboxState, fresh: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    backup(fresh)

    def expensive(result) -> list[str]:  # type: ignore[no-untyped-def]
        return [s.step for s in result.timeline if s.step.startswith(("fetch", "pg_restore", "create scratch"))]

    with monkeypatch.context() as m:  # no trading API answering
        m.setenv("RUNBOOKS_TRADING_API__BASE_URL", "http://127.0.0.1:1")
        state, result = restore(database=fresh, mode="replace", approval_timeout_seconds=5)
    assert state.is_failed() and "unreachable" in result.error and expensive(result) == []
    with monkeypatch.context() as m:  # no room on the server's disk for a second copy and the reserve
        m.setenv("RUNBOOKS_RESTORE__SERVER_DISK_RESERVE_PERCENT", "100")
        state, result = restore(database=fresh, mode="new")
    assert state.is_failed() and "server's disk" in result.error and expensive(result) == []
    role = f"weak_{uuid.uuid4().hex[:6]}"
    sql(config, f"CREATE ROLE {role} LOGIN PASSWORD 'weak-pw-123'")
    try:
        with monkeypatch.context() as m:  # a role that may not create databases
            m.setenv(f"RUNBOOKS_DATABASES__{fresh.upper()}__DSN", config.cluster().dsn(fresh, role, "weak-pw-123"))
            state, result = restore(database=fresh, mode="new")
        assert state.is_failed() and "may not create databases" in result.error and expensive(result) == []
    finally:
        sql(config, f"DROP ROLE {role}")
    assert not [d for d in databases(config) if d.startswith(f"{fresh}_")]


def test_a_lost_lock_stops_the_run_before_the_swap(config: SandboxState, fresh: str,
                                                   simulator: httpx.Client) -> None:
    backup(fresh)
    done: dict = {}  # type: ignore[type-arg]

    def run() -> None:
        done["state"], done["result"] = restore(database=fresh, mode="replace", approval_poll_seconds=1,
                                                approval_timeout_seconds=120)

    paused = decide_when_paused(None)
    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,))
    thread.start()
    paused.join(120)
    sql(config, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE 'runbooks restore%'")
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(paused.seen[0], run_input=APPROVE)  # type: ignore[attr-defined]
    thread.join(120)
    assert done["state"].is_failed() and "was lost" in done["result"].error
    assert done["result"].kept_live_as is None and operations(simulator) == []  # no halt, no swap
    assert scalar(config, fresh, "SELECT count(*) FROM market.orders") == 500
    assert not [d for d in databases(config) if d.startswith(f"{fresh}_")]


def test_retention_never_deletes_the_backup_a_pending_plan_is_built_on(
        config: SandboxState, fresh: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backup(fresh)
    cat = catalog()
    [older] = cat.list_backups(kind="database", name=fresh)
    backup(fresh, retention=False)  # two backups the same day: the default policy would keep only the newest
    done: dict = {}  # type: ignore[type-arg]

    def run() -> None:
        done["state"], done["result"] = restore(database=fresh, mode="replace", backup_id=older.backup_id,
                                                approval_poll_seconds=1, approval_timeout_seconds=120)

    paused = decide_when_paused(None)
    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,))
    thread.start()
    paused.join(120)
    for period in ("DAILY", "WEEKLY", "MONTHLY"):  # keep only the newest...
        monkeypatch.setenv(f"RUNBOOKS_BACKUP__RETENTION__{period}", "0")
    backup(fresh)  # ...the nightly backup runs during the approval wait
    ids = [m.backup_id for m in cat.list_backups(kind="database", name=fresh)]
    assert older.backup_id in ids and len(ids) == 2  # the held one and the newest
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(paused.seen[0], run_input={**APPROVE, "approve": False})  # type: ignore[attr-defined]
    thread.join(120)
    assert done["result"].status == "rejected"
    backup(fresh)  # no longer held: retention may take it now
    assert older.backup_id not in [m.backup_id for m in cat.list_backups(kind="database", name=fresh)]


def test_a_run_killed_while_paused_has_its_orphan_cancelled(config: SandboxState, fresh: str,
                                                            prefect_api: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    from prefect.client.orchestration import get_client

    backup(fresh)
    paused = decide_when_paused(None)
    proc = subprocess.Popen([sys.executable, "-m", "runbooks.cli", "run", "restore", "--param", f"database={fresh}",
                             "--param", "mode=replace"], env={**os.environ, "PREFECT_API_URL": prefect_api},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        paused.join(180)
        [orphan] = paused.seen  # type: ignore[attr-defined]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(orphan).state.type.value == "PAUSED"  # a form nobody can use
    state, result = restore(database=fresh, mode="new", dry_run=True)  # the next run of that runbook and database
    assert state.is_completed(), result
    with get_client(sync_client=True) as client:
        after = client.read_flow_run(orphan).state
    assert after.type.value == "CANCELLED" and "orphaned approval" in (after.message or "")


def test_a_swap_that_would_fail_is_refused_before_trading_is_halted(
        config: SandboxState, fresh: str, monkeypatch: pytest.MonkeyPatch,
        simulator: httpx.Client) -> None:
    """The live database's owner (not a superuser) restores it; a superuser-only setting on the database cannot be
    carried to the copy. That is found before approval and the kill switch, not after."""
    owner = f"owner_{uuid.uuid4().hex[:6]}"
    sql(config, f"CREATE ROLE {owner} LOGIN PASSWORD 'owner-pw-123' CREATEDB CREATEROLE")
    sql(config, f"GRANT pg_signal_backend, pg_read_all_data TO {owner}")
    sql(config, f'ALTER DATABASE "{fresh}" OWNER TO {owner}')
    sql(config, f'ALTER DATABASE "{fresh}" SET log_min_duration_statement = 1000')
    try:
        backup(fresh)
        monkeypatch.setenv(f"RUNBOOKS_DATABASES__{fresh.upper()}__DSN", config.cluster().dsn(fresh, owner,
                                                                                              "owner-pw-123"))
        state, dry = restore(database=fresh, mode="replace", no_owner=True, dry_run=True)
        assert state.is_completed(), dry
        state, result = restore(database=fresh, mode="replace", no_owner=True, confirm=dry.plan.plan_hash)
        assert state.is_failed() and "superuser" in result.error, result.error
        assert [s.step for s in result.timeline][-1] == "rehearse swap" and operations(simulator) == []
        assert result.kept_live_as is None and scalar(config, fresh, "SELECT count(*) FROM market.orders") == 500
        assert not [d for d in databases(config) if d.startswith(f"{fresh}_")]
    finally:
        drop_db_and_copies(config, fresh)
        sql(config, f"DROP OWNED BY {owner}; DROP ROLE {owner}")
