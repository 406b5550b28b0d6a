"""PostgreSQL plumbing shared by the tasks: binaries, connections, the error boundary (SQLSTATE), snapshots, and
the cluster administration a restore needs (safe drop, atomic renames, a lock that can be re-checked, checks)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from runbooks.core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    DatabaseInUse,
    DatabaseNotFound,
    DatabaseUnavailable,
    InsufficientPrivilege,
    LockBusy,
    LockLost,
    QueryFailed,
    RunbookError,
    ToolFailed,
)
from runbooks.core.redact import scrub
from runbooks.settings import IntegrityCheck

_ENV_NAMES = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "sslmode": "PGSSLMODE", "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY", "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL", "connect_timeout":
    "PGCONNECT_TIMEOUT", "options": "PGOPTIONS", "application_name": "PGAPPNAME",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "gssencmode": "PGGSSENCMODE",
}


def server_env() -> dict[str, str]:
    """The whole environment of the PostgreSQL tools that start servers (pg_ctl, initdb) and of pgBackRest: never
    the worker's, which holds the runbooks' settings and secrets (RUNBOOKS_*, PGPASSWORD, S3 and API keys). A
    postmaster keeps its environment for life, readable in /proc by its OS user and by any superuser through
    COPY ... PROGRAM."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "TZ": "UTC"}


@cache
def pg_bindir(major: int | None = None) -> Path:
    """The directory of the PostgreSQL client tools, preferring the server's major version.

    pg_dump must be at least as new as the server; Debian installs every major side by side.
    """
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    if major is not None:
        for path in candidates:
            if int(path.parent.name) == major:
                return path
    if override := os.environ.get("RUNBOOKS_PG_BINDIR"):
        return Path(override)
    if candidates:
        return candidates[0]
    found = shutil.which("pg_dump")
    if found:
        return Path(found).parent
    raise ConfigurationError(
        "PostgreSQL client tools (pg_dump, pg_restore) were not found.",
        hint="install the postgresql-client package or set RUNBOOKS_PG_BINDIR.",
    )


def pg_tool(name: str, major: int | None = None) -> str:
    return str(pg_bindir(major) / name)


@cache
def tool_version(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return out or "unknown"


APPLICATION_NAME = "runbooks"


def libpq_env(params: Mapping[str, Any], *, dbname: str | None = None) -> dict[str, str]:
    """Environment for a libpq tool: the password travels in PGPASSWORD, never on a command line (ps)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in params.items():
        if value is None:
            continue
        env[_ENV_NAMES.get(key, "PG" + key.upper().replace("_", ""))] = str(value)
    if dbname is not None:
        env["PGDATABASE"] = dbname
    if not params.get("application_name"):
        env["PGAPPNAME"] = APPLICATION_NAME  # pg_dump's and pg_restore's sessions are the runbooks' own too
    env.pop("LC_ALL", None)
    env["LC_MESSAGES"] = "C"  # the tools' messages are then the wording tool_error knows
    return env


def describe(params: Mapping[str, Any]) -> str:
    """``user@host:port/dbname`` for messages (no password)."""
    return f"{params.get('user', '?')}@{params.get('host', 'localhost')}:{params.get('port', 5432)}/" \
           f"{params.get('dbname', '?')}"


_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57", "40")  # connection, resources, operator intervention, rollback
_TRANSIENT_SQLSTATES = {"55P03"}  # lock_not_available (lock_timeout)
_TRANSIENT_MARKS = ("connection refused", "could not connect", "timeout expired", "the database system is",
                    "too many clients", "server closed the connection", "connection reset", "no route to host",
                    "could not translate host name", "terminating connection", "no such file or directory")


def _log_tool_output(where: str, text: str) -> None:
    """The scrubbed, complete stderr of a failed tool goes to the run log (the error keeps one line of it)."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        logger: Any = get_run_logger()
    except MissingContextError:
        import logging

        logger = logging.getLogger("runbooks")
    logger.warning("%s failed; its output:\n%s", where, text)


def _startup_error(text: str, where: str) -> RunbookError:
    """Errors before a session exists carry no SQLSTATE in libpq: judged by libpq's C-locale wording."""
    clean = scrub(text.strip())
    first = next((ln.strip() for ln in clean.splitlines() if ln.strip()), "no error text")
    lowered = clean.lower()
    if any(m in lowered for m in ("password authentication failed", "no password supplied",
                                  "authentication failed", "pg_hba.conf")):
        return AuthenticationFailed(f"{where}: the server rejected the credentials ({first}).",
                                    hint="fix the password of this connection (RUNBOOKS_DATABASES__<NAME>__PASSWORD "
                                    "for a database, RUNBOOKS_CLUSTER__PASSWORD for the cluster, or their Secret "
                                    "blocks) or pg_hba.conf.", sqlstate="28P01")
    if re.search(r'database ".*" does not exist', lowered):
        return DatabaseNotFound(f"{where}: {first}.", hint="check the dbname in the DSN; 'psql -l' lists the "
                                "server's databases.", sqlstate="3D000")
    if re.search(r'role ".*" does not exist', lowered):
        return AuthenticationFailed(f"{where}: {first}.", hint="fix the user in the DSN.", sqlstate="28000")
    if any(mark in lowered for mark in _TRANSIENT_MARKS):
        return DatabaseUnavailable(f"{where}: the server is unreachable ({first}).", hint="check that PostgreSQL "
                                   "is running and the host/port in the DSN; transient errors are retried.")
    return ToolFailed(f"{where}: {first}", hint="see the task log for the tool's full error output.")


def failure_line(exc: RunbookError | psycopg.Error | OSError, *, where: str) -> str:
    """A run's error as one scrubbed line: a psycopg error (a connection dropped mid-query) mapped like every
    database error, an OS error by its type and first line."""
    if isinstance(exc, psycopg.Error):
        exc = postgres_error(exc, where=where)
    if isinstance(exc, RunbookError):
        return scrub(str(exc))
    text = str(exc).strip()
    return scrub(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}")


def postgres_error(exc: psycopg.Error, *, where: str) -> RunbookError:
    """Map a psycopg error by its SQLSTATE (connection-phase errors, which have none, by libpq's wording)."""
    state = exc.sqlstate
    text = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if state is None:
        return _startup_error(str(exc), where)
    if state.startswith("28"):
        return AuthenticationFailed(f"{where}: {text}.", hint="fix the credentials or pg_hba.conf.", sqlstate=state)
    if state == "3D000":
        return DatabaseNotFound(f"{where}: {text}.", hint="check the database name.", sqlstate=state)
    if state == "42501":
        return InsufficientPrivilege(f"{where}: {text}.", hint="grant the role the privilege, or use a DSN of a "
                                     "role that has it.", sqlstate=state)
    if state == "55006":
        return DatabaseInUse(f"{where}: {text}.", hint="other sessions are connected; nothing was changed.",
                             sqlstate=state)
    if state.startswith(_TRANSIENT_SQLSTATE_CLASSES) or state in _TRANSIENT_SQLSTATES:
        return DatabaseUnavailable(f"{where}: {text}.", hint="transient; the task retries.", sqlstate=state)
    return QueryFailed(f"{where}: {text} (SQLSTATE {state}).", hint="see the task log for the statement that "
                       "failed.", sqlstate=state)


def tool_error(stderr: str, *, where: str) -> RunbookError:
    """A libpq tool (run with LC_MESSAGES=C) failed: log its whole scrubbed output, raise one mapped line."""
    clean = scrub(stderr.strip())
    _log_tool_output(where, clean)
    lines = [ln.strip() for ln in clean.splitlines() if ln.strip()]
    marked = [ln for ln in lines if any(m in ln for m in ("error", "ERROR", "FATAL", "failed"))]
    first = (marked or lines or ["no error text"])[0]
    mapped = _startup_error(clean, where)
    if isinstance(mapped, ToolFailed):
        return ToolFailed(f"{where}: {first}", hint="see the task log for the tool's full error output.")
    return mapped


@contextmanager
def database_errors(where: str) -> Iterator[None]:
    """The psycopg boundary: inside it, any psycopg error leaves as our mapped, scrubbed RunbookError."""
    try:
        yield
    except psycopg.Error as exc:
        raise postgres_error(exc, where=where) from None


def connect(params: Mapping[str, Any], *, where: str, **kwargs: Any) -> psycopg.Connection:
    with database_errors(where):
        # Named, so that the database-connections runbook never terminates the runbooks' own sessions (a backup's
        # exported snapshot sits idle in a transaction for the whole dump).
        return psycopg.connect(**{"connect_timeout": 10, "application_name": APPLICATION_NAME, **params}, **kwargs)


@dataclass
class Snapshot:
    """A consistent point in the database: pg_dump and the row counts both read exactly this."""

    snapshot_id: str
    wal_lsn: str
    taken_at: datetime
    in_recovery: bool
    server_version: str
    server_major: int
    row_counts: dict[str, int] = field(default_factory=dict)


@contextmanager
def exported_snapshot(params: Mapping[str, Any], *, where: str) -> Iterator[
        tuple[Snapshot, psycopg.Connection]]:
    """Hold a REPEATABLE READ transaction open and export its snapshot for ``pg_dump --snapshot``."""
    conn = connect(params, where=where, autocommit=True)
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute(
            "SELECT pg_export_snapshot(), pg_is_in_recovery(), clock_timestamp(),"
            " current_setting('server_version'), current_setting('server_version_num')::int,"
            " CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text"
        ).fetchone()
        assert row is not None
        snap = Snapshot(
            snapshot_id=row[0], in_recovery=row[1], taken_at=row[2], server_version=row[3],
            server_major=row[4] // 10000, wal_lsn=row[5],
        )
        yield snap, conn
    finally:
        conn.close()


def count_rows(conn: psycopg.Connection, *, beside_dump: bool = False) -> dict[str, int]:
    """Exact row count of every user table (partitions counted as their own leaves) in the open transaction.

    ``beside_dump``: one process, no parallel workers competing with pg_dump for the same cores; otherwise
    (validating a restored copy, nothing else running) the server may scan with parallel workers.
    """
    tables = conn.execute(
        """
        SELECT n.nspname, c.relname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2
        """
    ).fetchall()
    if not tables:
        return {}
    if beside_dump:
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
    parts = [
        sql.SQL("SELECT {label}, count(*) FROM ONLY {table}").format(
            label=sql.Literal(f"{schema}.{name}"), table=sql.Identifier(schema, name)
        )
        for schema, name in tables
    ]
    rows = conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall()
    return {label: int(count) for label, count in rows}


def database_size(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0




# -- cluster administration for restores ----------------------------------------------------------------------
NAME_LIMIT = 63  # bytes: PostgreSQL truncates longer identifiers silently (NAMEDATALEN - 1)


def fit_name(prefix: str, suffix: str) -> str:
    """``prefix + suffix`` within 63 bytes, shortening the prefix (never splitting a UTF-8 character)."""
    room = NAME_LIMIT - len(suffix.encode())
    cut = prefix.encode()[:max(room, 0)].decode(errors="ignore")
    return cut + suffix


def admin_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The same server and role, on the maintenance database (CREATE/ALTER/DROP DATABASE run from there)."""
    return {**params, "dbname": "postgres"}


def database_oid(conn: psycopg.Connection, name: str) -> int | None:
    row = conn.execute("SELECT oid::bigint FROM pg_database WHERE datname = %s", [name]).fetchone()
    return int(row[0]) if row else None


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return database_oid(conn, name) is not None


def server_identity(conn: psycopg.Connection, params: Mapping[str, Any]) -> str:
    """Which cluster this is: its system identifier when the role may read it, else where it listens."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
        if row:
            return f"sysid-{row[0]}"
    except psycopg.errors.InsufficientPrivilege:
        pass
    host = str(params.get("host") or params.get("hostaddr") or "local").replace("/", "_")
    return f"{host}-{params.get('port') or 5432}"


def other_sessions(conn: psycopg.Connection, name: str) -> int:
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                       [name]).fetchone()
    return int(row[0]) if row else 0


def drop_database(conn: psycopg.Connection, name: str, *, attempts: int = 20) -> None:
    """``DROP DATABASE`` without FORCE: PostgreSQL itself refuses while anyone is connected. Backends of a tool
    that just exited may linger for a moment, so "in use" is retried briefly before it is reported. While sessions
    are there the wait is a look at ``pg_stat_activity``: a DROP against them waits 5 s in the server each time."""
    for attempt in range(attempts):
        if attempt < attempts - 1 and other_sessions(conn, name):
            time.sleep(0.25)
            continue
        try:
            with database_errors(f"dropping database {name!r}"):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            return
        except DatabaseInUse:
            if attempt == attempts - 1:
                raise DatabaseInUse(f"database {name!r} has {other_sessions(conn, name)} other sessions; it is not "
                                    "dropped.", hint="find them in pg_stat_activity; a restore never terminates "
                                    "sessions on a database it drops.", sqlstate="55006") from None
            time.sleep(0.25)


def rename_databases(conn: psycopg.Connection, renames: list[tuple[str, str]], *, close: list[str],
                     attempts: int = 10, before: Any = None) -> None:
    """Rename several databases in one transaction, all or nothing.

    Sessions on ``close`` are terminated inside the same transaction, just before the renames; a client that
    reconnects in between makes the rename fail, and the whole transaction is simply tried again. No state
    (such as ALLOW_CONNECTIONS false) is ever left behind by a run that dies here. ``before(conn)`` runs first
    in the same transaction (e.g. giving the copy the live database's properties).
    """
    for attempt in range(attempts):
        try:
            with conn.transaction():
                if before is not None:
                    before(conn)
                for name in close:
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                                 " AND pid <> pg_backend_pid()", [name])
                for old, new in renames:
                    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old),
                                                                                 sql.Identifier(new)))
            return
        except psycopg.errors.ObjectInUse:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


class AdvisoryLock:
    """A session advisory lock on the server (any host, any process), held while the object lives.

    The session can vanish under the lock (``idle_session_timeout``, a TCP reset, pg_terminate_backend) and the
    lock with it, silently. So the session disables the idle timeout, keeps TCP alive, and ``ensure()`` proves
    the lock is still held; a runbook calls it before each destructive step.
    """

    def __init__(self, params: Mapping[str, Any], key: str, *, holder: str) -> None:
        self.key = key
        self._params = {**admin_params(params), "keepalives": 1, "keepalives_idle": 30,
                        "keepalives_interval": 10, "keepalives_count": 3, "application_name": holder[:63]}
        self._conn: psycopg.Connection | None = None

    def acquire(self, *, wait_seconds: float) -> None:
        conn = connect(self._params, where=f"lock {self.key!r}", autocommit=True)
        deadline = time.monotonic() + wait_seconds
        try:
            with database_errors(f"lock {self.key!r}"):
                conn.execute("SET idle_session_timeout = 0")
                conn.execute("SET idle_in_transaction_session_timeout = 0")
                while True:
                    row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [self.key]).fetchone()
                    if row and row[0]:
                        break
                    if time.monotonic() >= deadline:
                        raise LockBusy(f"another run holds {self.key!r}{self._holder(conn)}; runs never interleave.",
                                       hint="wait for it to finish (Prefect UI: runs in progress) or pass a longer "
                                       "lock wait.")
                    time.sleep(0.5)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _holder(self, conn: psycopg.Connection) -> str:
        """Who holds the lock, as its session names itself (``runbooks <runbook> <flow run id>``)."""
        row = conn.execute(
            "SELECT a.application_name, a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            " AND l.objid::bigint = (hashtext(%s)::bigint & 4294967295)"
            " AND l.classid::bigint = ((hashtext(%s)::bigint >> 32) & 4294967295) LIMIT 1",
            [self.key, self.key]).fetchone()
        if not row:
            return ""
        name, since = row
        return f" (session {name or 'without a name'!r}, connected since {since:%Y-%m-%d %H:%M:%S %Z})"

    def ensure(self) -> None:
        """Raise LockLost unless this session still holds the lock."""
        held = False
        if self._conn is not None:
            try:
                row = self._conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                         " AND pid = pg_backend_pid() AND granted").fetchone()
                held = bool(row and row[0])
            except psycopg.Error:
                held = False
        if not held:
            raise LockLost(f"the lock {self.key!r} was lost (its session ended); another run may now act on the "
                           "same resource, so this run stops before its next change.",
                           hint="read this run's report for what was already done, then rerun.")

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()  # closing the session releases the lock
            self._conn = None


class CheckResult(BaseModel):
    """One configured integrity check on a restored database."""

    name: str
    status: Literal["passed", "failed", "reported", "could_not_run"]
    value: str | None = None
    expect: str | None = None
    rows: list[list[str]] = Field(default_factory=list, description="first rows, for report-only checks")
    error: str | None = None


def run_checks(conn: psycopg.Connection, checks: Sequence[IntegrityCheck]) -> list[CheckResult]:
    """Run each check in its own savepoint: one that cannot run (a column this schema lacks) is reported as such
    and never stops the others."""
    results = []
    for check in checks:
        try:
            with conn.transaction():
                rows = conn.execute(check.sql).fetchmany(20)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            results.append(CheckResult(name=check.name, status="could_not_run",
                                       error=scrub(f"{exc.sqlstate}: {str(exc).strip().splitlines()[0]}")))
            continue
        if check.expect is None:
            results.append(CheckResult(name=check.name, status="reported",
                                       rows=[[str(v) for v in r] for r in rows]))
            continue
        value = str(rows[0][0]) if rows and rows[0] else None
        results.append(CheckResult(name=check.name, status="passed" if value == str(check.expect) else "failed",
                                   value=value, expect=str(check.expect)))
    return results
