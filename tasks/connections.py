"""Tasks on a PostgreSQL server's connection pool: read it, and terminate exactly the planned idle-in-transaction
sessions (re-checked in the statement that signals)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from prefect import get_run_logger

from runbooks.adapters.connections import open_pool_session, read_pool, terminate_idle
from runbooks.decisions.connections import PoolReading, Session, Termination
from runbooks.settings import DatabaseSettings
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task


def server_of(params: Mapping[str, Any]) -> str:
    """``host:port`` of a connection (no role, no password): several databases of the inventory on one server
    share one pool, read once."""
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    return f"{host}:{params.get('port') or 5432}"


@step_task("read-connection-pool", **TRANSIENT_RETRY)
def read_connection_pool(*, database: DatabaseSettings, application_name: str, query_chars: int) -> PoolReading:
    """Args:
        database: a database of the server, whose connection (and role) the reading uses.
        application_name: this run's session name (the runbooks' own prefix).
        query_chars: query text kept per session, after its literals are scrubbed.

    Returns:
        The server's limits, every client backend and the role's privileges.
    """
    params = database.conninfo()
    server = server_of(params)
    with open_pool_session(params, application_name=application_name, where=f"connections of {server}") as conn:
        return read_pool(conn, server=server, query_chars=query_chars)


@step_task("terminate-idle-sessions", mutates=True)
def terminate_idle_sessions(*, database: DatabaseSettings, sessions: list[Session], databases: list[str],
                            idle_limit: timedelta, own_prefix: str, application_name: str,
                            dry_run: bool) -> list[Termination]:
    """``pg_terminate_backend`` of each planned session that is still the one planned and still qualifies; its open
    transaction rolls back. Never retried: a session that vanished is "moved on", not a reason to look again.

    Returns:
        One outcome per session (``would terminate`` for each that still qualifies, in a dry run).
    """
    params = database.conninfo()
    server = server_of(params)
    with open_pool_session(params, application_name=application_name, where=f"terminating on {server}") as conn:
        done = terminate_idle(conn, sessions, databases=databases, limit_seconds=idle_limit.total_seconds(),
                              own_prefix=own_prefix, dry_run=dry_run, server=server)
    logger = get_run_logger()
    for t in done:
        if t.outcome == "terminated":
            logger.warning("Terminated session %d (%r of %r on %r, idle in transaction)", t.pid, t.role,
                           t.application_name, t.database)
        elif t.outcome != "would terminate":
            logger.info("Session %d %s: left alone", t.pid, t.outcome)
    return done
