"""The database-connections runbook against the sandbox's real PostgreSQL, on a database and roles of the test's own:
real sessions idle in a transaction (an application's, a superuser's, a replication role's, the runbooks' own), an
active long query; only the application's idle transaction is terminated, and only while the pool is at its
threshold; a dry run terminates nothing; a session that moved on since the plan is left alone; literals in query
text never reach the result or the report."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import LiteralString

import psycopg
import pytest
from prefect.states import State
from psycopg import sql

from runbooks.adapters.connections import open_pool_session, read_pool, terminate_idle
from runbooks.decisions.connections import (
    PoolReading,
    Session,
    judge_idle,
    plan_hash,
    scrub_literals,
    usage_of,
)
from runbooks.flows.database_connections import ConnectionsResult, database_connections_flow, render_report
from runbooks.frame import outcome
from runbooks_sandbox import SandboxState
from tests.events import runbook_events
from tests.pgfixtures import admin_dsn, set_database_env

SECRETS = ("tok_SECRET_idle_4242", "tok_SECRET_active_4242", "987654321")
IDLE_STATES = ("idle in transaction", "idle in transaction (aborted)")


@dataclass
class Pool:
    """A database of the test's own, its roles, and the sessions the test holds open on it."""

    sandbox: SandboxState
    db: str
    app: str
    repl: str
    password: str
    conns: dict[str, psycopg.Connection] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def dsn(self, role: str | None = None) -> str:
        cluster = self.sandbox.cluster()
        return cluster.dsn(self.db) if role is None else cluster.dsn(self.db, role, self.password)

    def open(self, key: str, *, role: str | None, application: str, autocommit: bool = False) -> int:
        conn = psycopg.connect(self.dsn(role), application_name=application, autocommit=autocommit)
        self.conns[key] = conn
        return int(conn.info.backend_pid)

    def idle_in_transaction(self, key: str, *, role: str | None, application: str,
                            statement: LiteralString = "SELECT 1") -> int:
        pid = self.open(key, role=role, application=application)
        self.conns[key].execute(statement)
        return pid

    def long_query(self, key: str) -> int:
        pid = self.open(key, role=self.app, application="report-job", autocommit=True)
        conn = self.conns[key]

        def run() -> None:
            try:
                conn.execute("SELECT pg_sleep(30), 'tok_SECRET_active_4242'")
            except psycopg.Error:
                pass  # cancelled at teardown

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)
        return pid

    def states(self) -> dict[int, str | None]:
        """pid -> state of every client session on the test's database (read from another database)."""
        with psycopg.connect(admin_dsn(self.sandbox), autocommit=True) as conn:
            return {int(pid): state for pid, state in conn.execute(
                "SELECT pid, state FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
                [self.db])}

    def wait_idle_past(self, seconds: float, *pids: int) -> None:
        """Until every pid has been in its state for more than ``seconds`` (server clock)."""
        deadline = time.monotonic() + 30
        with psycopg.connect(admin_dsn(self.sandbox), autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
                                   " AND state_change < now() - make_interval(secs => %s)",
                                   [list(pids), seconds]).fetchone()
                if row and row[0] == len(pids):
                    return
                time.sleep(0.2)
        raise AssertionError(f"sessions {pids} never aged past {seconds} s")


@pytest.fixture
def pool(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pool]:
    tag = uuid.uuid4().hex[:8]
    box = Pool(config, db=f"conns_{tag}", app=f"conns_app_{tag}", repl=f"conns_repl_{tag}",
               password=uuid.uuid4().hex)
    with psycopg.connect(admin_dsn(config), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(box.db)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(box.app),
                                                                       sql.Literal(box.password)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(sql.Identifier(box.repl),
                                                                                   sql.Literal(box.password)))
    with psycopg.connect(box.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO orders VALUES (1, 'x')")
        conn.execute(sql.SQL("GRANT SELECT, UPDATE ON orders TO {}").format(sql.Identifier(box.app)))
    set_database_env(monkeypatch, config, box.db)
    monkeypatch.setenv("RUNBOOKS_CONNECTIONS__DATABASES", f'["{box.db}"]')  # never the suite's other databases
    monkeypatch.setenv("RUNBOOKS_CONNECTIONS__IDLE_IN_TRANSACTION", "1s")
    monkeypatch.setenv("RUNBOOKS_CONNECTIONS__LONG_QUERY", "1s")
    monkeypatch.setenv("RUNBOOKS_CONNECTIONS__EXHAUSTED_PERCENT", "1")  # the suite's own sessions fill 1 %
    try:
        yield box
    finally:
        with psycopg.connect(admin_dsn(config), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [box.db])
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(box.db)))
            for role in (box.app, box.repl):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        for c in box.conns.values():
            c.close()
        for t in box.threads:
            t.join(timeout=5)


def run(**params: object) -> tuple[State, ConnectionsResult]:
    state = database_connections_flow(**params, return_state=True)
    result = outcome(state)
    assert isinstance(result, ConnectionsResult), result
    return state, result


def test_only_the_applications_idle_transaction_is_terminated_and_a_dry_run_terminates_nothing(pool: Pool) -> None:
    leak = pool.idle_in_transaction(
        "leak", role=pool.app, application="trading-api",
        statement="UPDATE orders SET note = 'tok_SECRET_idle_4242' WHERE id = 987654321")
    admin = pool.idle_in_transaction("admin", role=None, application="psql")
    repl = pool.idle_in_transaction("repl", role=pool.repl, application="standby-tool")
    own = pool.idle_in_transaction("own", role=pool.app, application="runbooks backup 1234abcd")
    active = pool.long_query("active")
    pool.wait_idle_past(1.2, leak, admin, repl, own, active)

    state, dry = run(database=pool.db)  # dry_run is the default
    assert state.is_completed(), dry.error
    server = dry.servers[0]
    verdicts = {c.session.pid: (c.terminate, c.why) for c in server.idle}
    assert {pid for pid, (kill, _why) in verdicts.items() if kill} == {leak}
    assert "superuser" in verdicts[admin][1] and "replication" in verdicts[repl][1]
    assert "runbooks' own" in verdicts[own][1]
    assert active not in verdicts and [s.pid for s in server.long_queries] == [active]
    assert [(t.pid, t.outcome) for t in server.terminations] == [(leak, "would terminate")]
    assert dry.exhausted and dry.plan_hash and not dry.terminated
    assert server.proposal and "restart" in server.proposal and "max_connections" in server.proposal
    assert pool.states()[leak] == "idle in transaction"  # the dry run changed nothing
    report = render_report(dry)
    assert "would terminate" in report and dry.plan_hash in report
    for secret in SECRETS:  # the literals of both queries: neither in the result nor in the report
        assert secret not in dry.model_dump_json() and secret not in report
    assert any("UPDATE orders SET note = ? WHERE id = ?" in c.session.query for c in server.idle)

    state, acted = run(database=pool.db, dry_run=False, confirm=dry.plan_hash)
    assert state.is_completed(), acted.error
    assert acted.terminated == [leak]
    after = pool.states()
    assert leak not in after
    assert after[admin] in IDLE_STATES and after[repl] in IDLE_STATES and after[own] in IDLE_STATES
    assert after[active] == "active"  # the long query is listed, never touched
    with pytest.raises(psycopg.OperationalError):
        pool.conns["leak"].execute("SELECT 1")
    events = runbook_events(f"runbooks.database-connections.{pool.db}", names=["runbooks.escalation"],
                            until=lambda found: len(found) >= 2)
    assert events and events[-1].resource["runbooks.severity"] == "P0"


def test_below_the_threshold_idle_transactions_are_listed_not_terminated(
        pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_CONNECTIONS__EXHAUSTED_PERCENT", "100")
    leak = pool.idle_in_transaction("leak", role=pool.app, application="trading-api")
    pool.wait_idle_past(1.2, leak)
    state, result = run(database=pool.db, dry_run=False)
    assert state.is_completed(), result.error
    assert not result.exhausted and not result.terminated and result.plan_hash is None
    assert [(c.session.pid, c.terminate) for c in result.servers[0].idle] == [(leak, False)]
    assert "below its threshold" in result.servers[0].idle[0].why
    assert pool.states()[leak] == "idle in transaction"


def test_a_confirmed_plan_that_no_longer_holds_terminates_nothing(pool: Pool) -> None:
    leak = pool.idle_in_transaction("leak", role=pool.app, application="trading-api")
    pool.wait_idle_past(1.2, leak)
    _state, dry = run(database=pool.db)
    assert dry.plan_hash
    other = pool.idle_in_transaction("other", role=pool.app, application="trading-api")
    pool.wait_idle_past(1.2, other)
    state, refused = run(database=pool.db, dry_run=False, confirm=dry.plan_hash)
    assert state.is_failed() and "not the confirmed" in (refused.error or "")
    assert not refused.terminated and {leak, other} <= set(pool.states())


def test_a_session_that_committed_between_plan_and_act_is_not_killed(pool: Pool) -> None:
    leak = pool.idle_in_transaction("leak", role=pool.app, application="trading-api")
    pool.wait_idle_past(1.2, leak)
    params = psycopg.conninfo.conninfo_to_dict(pool.dsn())
    with open_pool_session(params, application_name="runbooks test", where="test") as conn:
        reading = read_pool(conn, server="test", query_chars=200)
        usage = usage_of(reading, threshold_percent=1)
        planned = [c.session for c in judge_idle(reading, usage, databases={pool.db}, limit_seconds=1,
                                                  own_prefix="runbooks") if c.terminate]
        assert [s.pid for s in planned] == [leak]
        pool.conns["leak"].commit()  # the application finished its transaction...
        pool.conns["leak"].execute("SELECT 1")  # ...and began another, idle past the limit again
        pool.wait_idle_past(1.2, leak)
        done = terminate_idle(conn, planned, databases=[pool.db], limit_seconds=1, own_prefix="runbooks",
                              dry_run=False, server="test")
        assert [(t.pid, t.outcome) for t in done] == [(leak, "moved on")]
        assert pool.states()[leak] == "idle in transaction"  # the new transaction is not the one planned
        fresh = read_pool(conn, server="test", query_chars=200)  # the same check on a fresh plan does kill it
        again = [c.session for c in judge_idle(fresh, usage_of(fresh, threshold_percent=1), databases={pool.db},
                                               limit_seconds=1, own_prefix="runbooks") if c.terminate]
        done = terminate_idle(conn, again, databases=[pool.db], limit_seconds=1, own_prefix="runbooks",
                              dry_run=False, server="test")
        assert [(t.pid, t.outcome) for t in done] == [(leak, "terminated")]
    assert leak not in pool.states()


def test_an_unknown_database_is_refused_in_one_line(pool: Pool) -> None:
    state, result = run(database="no_such_db")
    assert state.is_failed() and "not in the inventory" in (result.error or "")
    assert not result.servers


# Pure decisions: plain values.

def _session(pid: int, **fields: object) -> Session:
    now = datetime.now(UTC)
    base: dict[str, object] = {"database": "db", "role": "app", "state": "idle in transaction",
                               "backend_start": now, "xact_start": now, "state_change": now, "idle_seconds": 600}
    return Session(pid=pid, **{**base, **fields})  # type: ignore[arg-type]


def _reading(*sessions: Session, role_limits: dict[str, int] | None = None) -> PoolReading:
    return PoolReading(server="s", server_version="15", max_connections=100, reserved_connections=3,
                       role_limits=role_limits or {}, sessions=list(sessions), superuser=True, can_read_all=True,
                       can_signal=True)


def test_a_role_at_its_own_connection_limit_counts_as_exhausted_for_its_sessions_only() -> None:
    reading = _reading(_session(1, role="app"), _session(2, role="app"), _session(3, role="batch"),
                       role_limits={"app": 2})
    usage = usage_of(reading, threshold_percent=90)
    assert [(u.scope, u.name, u.exhausted) for u in usage] == [("server", "s", False), ("role", "app", True)]
    verdicts = {c.session.pid: c.terminate for c in judge_idle(reading, usage, databases={"db"}, limit_seconds=300,
                                                               own_prefix="runbooks")}
    assert verdicts == {1: True, 2: True, 3: False}
    assert plan_hash(judge_idle(reading, usage, databases={"db"}, limit_seconds=300, own_prefix="runbooks")) \
        != plan_hash([])


@pytest.mark.parametrize(("query", "shown"), [
    ("SELECT * FROM t WHERE a = 'x''y' AND b = 42", "SELECT * FROM t WHERE a = ? AND b = ?"),
    ("ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD ?"),
    ("SELECT E'it\\'s', $body$ secret $$ $body$, $$x$$", "SELECT ?, ?, ?"),
    ("SELECT \"col'1\", t2.x3 FROM t2 WHERE y = $1 -- token=abc", "SELECT \"col'1\", t2.x3 FROM t2 WHERE y = $1"),
    ("SELECT 1.5e3, .5, 0x1F, x'FF' /* key 99 */", "SELECT ?, ?, ?, ?"),
    ("INSERT INTO t VALUES ('cut at the limit", "INSERT INTO t VALUES (?"),
    ("SELECT 'a'\u202e, 'b'", "SELECT ?, ?"),
    # A backslash ends nothing in a standard string; nested comments hide a quote (a hostile review's finds).
    ("SELECT 'C:\\', 'hunter2'", "SELECT ?, ?"),
    ("/* outer /* inner */ don't */ ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD ?"),
    ("SELECT U&'d\\0061t', b'101'", "SELECT ?, ?"),
])
def test_query_text_keeps_its_shape_and_loses_its_literals(query: str, shown: str) -> None:
    assert scrub_literals(query) == shown
