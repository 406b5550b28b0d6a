"""PostgreSQL's connection pool as the ``database-connections`` runbook sees it: ``pg_stat_activity``'s client
backends with their roles' flags, the server's limits, and ``pg_terminate_backend`` of exactly a planned session.

A session is identified by its pid *and* the instants PostgreSQL gives it (``backend_start``, ``xact_start``,
``state_change``): a pid is reused by the next connection, and a session that committed and went idle in another
transaction since the plan is not the session the plan judged. The termination re-checks all of it, and every
rule that spares a session, in the same statement that sends the signal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from runbooks.adapters.postgres import connect, database_errors
from runbooks.decisions.connections import (
    IDLE_IN_TRANSACTION,
    Outcome,
    PoolReading,
    Session,
    Termination,
    scrub_literals,
)

_SESSIONS = """
SELECT a.pid, a.datname, a.usename, coalesce(r.rolsuper, false), coalesce(r.rolreplication, false),
       coalesce(a.application_name, ''), a.client_addr::text, a.state, a.backend_start, a.xact_start,
       a.state_change, a.query_start,
       extract(epoch FROM now() - a.state_change)::float8, extract(epoch FROM now() - a.xact_start)::float8,
       extract(epoch FROM now() - a.query_start)::float8,
       a.wait_event_type || ':' || a.wait_event, coalesce(a.query, ''), a.pid = pg_backend_pid()
FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.backend_type = 'client backend'
ORDER BY a.pid
"""

_LIMITS = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
         + coalesce(current_setting('reserved_connections', true), '0')::int,
       current_setting('server_version'), current_setting('server_version_num')::int,
       r.rolsuper, pg_has_role('pg_read_all_stats', 'USAGE'), pg_has_role('pg_signal_backend', 'USAGE')
FROM pg_roles r WHERE r.rolname = current_user
"""

# Every condition the plan was made on, again, in the statement that signals: a session that moved on (committed,
# began another transaction, ran a statement) or a pid now another connection's is left alone.
_TERMINATE = """
SELECT {signal}
FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.pid = %(pid)s AND a.backend_start = %(backend_start)s
  AND a.xact_start IS NOT DISTINCT FROM %(xact_start)s AND a.state_change = %(state_change)s
  AND a.state = ANY(%(states)s) AND a.backend_type = 'client backend'
  AND a.state_change < now() - make_interval(secs => %(limit)s)
  AND a.datname = ANY(%(databases)s)
  AND NOT r.rolsuper AND NOT r.rolreplication
  AND coalesce(a.application_name, '') NOT LIKE %(own)s ESCAPE '\\'
  AND a.pid <> pg_backend_pid()
"""


def session_params(params: Mapping[str, Any], *, application_name: str) -> dict[str, Any]:
    """The database's connection, named as the runbooks' own (never terminated by this runbook or judged a
    leak), with a statement timeout: a server this full may be slow, and a run must still end."""
    options = " ".join(filter(None, [str(params.get("options") or ""), "-c statement_timeout=15000"]))
    return {**params, "application_name": application_name[:63], "options": options}


def open_pool_session(params: Mapping[str, Any], *, application_name: str, where: str) -> psycopg.Connection:
    return connect(session_params(params, application_name=application_name), where=where, autocommit=True)


def read_pool(conn: psycopg.Connection, *, server: str, query_chars: int) -> PoolReading:
    """The server's limits, its client backends and the runbooks' role's privileges. Each query is its own
    statement in autocommit, so each sees a fresh ``pg_stat_activity``; query text is scrubbed here, before
    it leaves this function."""
    with database_errors(f"reading the connections of {server}"):
        limits = conn.execute(_LIMITS).fetchone()
        assert limits is not None
        max_conn, reserved, version, _version_num, superuser, read_all, signal = limits
        rows = conn.execute(_SESSIONS).fetchall()
        db_limits: dict[str, int] = dict(conn.execute("SELECT datname, datconnlimit FROM pg_database WHERE datallowconn"
                                      " AND datconnlimit >= 0").fetchall())
        role_limits: dict[str, int] = dict(conn.execute("SELECT rolname, rolconnlimit FROM pg_roles WHERE rolcanlogin"
                                        " AND rolconnlimit >= 0").fetchall())
    sessions = [Session(pid=r[0], database=r[1], role=r[2], superuser=r[3], replication=r[4], application_name=r[5],
                        client=r[6], state=r[7], backend_start=r[8], xact_start=r[9], state_change=r[10],
                        query_start=r[11], idle_seconds=r[12], xact_seconds=r[13], query_seconds=r[14], wait=r[15],
                        query=scrub_literals(r[16], limit=query_chars) if query_chars else "", this_run=r[17])
                for r in rows]
    return PoolReading(server=server, server_version=version, max_connections=max_conn, reserved_connections=reserved,
                       database_limits=db_limits, role_limits=role_limits, sessions=sessions, superuser=superuser,
                       can_read_all=bool(superuser or read_all), can_signal=bool(superuser or signal))


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def terminate_idle(conn: psycopg.Connection, sessions: Sequence[Session], *, databases: Sequence[str],
                   limit_seconds: float, own_prefix: str, dry_run: bool, server: str) -> list[Termination]:
    """``pg_terminate_backend`` each of ``sessions`` that is still the one planned and still qualifies (same
    backend and transaction, still idle in it past ``limit_seconds``, none of the spared kinds). ``dry_run``:
    the same statement with the signal left out, so the plan shows what the act would find.

    Returns:
        One outcome per session: terminated (it was gone within 5 s, on PostgreSQL 14+), would terminate,
        moved on (not signalled), signal failed.
    """
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    major = int(row[0]) // 10000 if row else 0
    # From PostgreSQL 14 the call waits (up to 5 s) for the backend to exit and says whether it did.
    signal = "true" if dry_run else ("pg_terminate_backend(a.pid, 5000)" if major >= 14
                                     else "pg_terminate_backend(a.pid)")
    statement = _TERMINATE.format(signal=signal)
    done: list[Termination] = []
    for s in sessions:
        with database_errors(f"terminating session {s.pid} on {server}"):
            hit = conn.execute(statement, {
                "pid": s.pid, "backend_start": s.backend_start, "xact_start": s.xact_start,
                "state_change": s.state_change, "states": list(IDLE_IN_TRANSACTION), "limit": limit_seconds,
                "databases": list(databases), "own": _like_prefix(own_prefix)}).fetchone()
        outcome: Outcome = ("moved on" if hit is None else "would terminate" if dry_run
                   else "terminated" if hit[0] else "signal failed")
        done.append(Termination(pid=s.pid, database=s.database, role=s.role, application_name=s.application_name,
                                outcome=outcome))
    return done
