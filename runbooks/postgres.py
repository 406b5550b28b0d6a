"""PostgreSQL plumbing shared by the tasks: binaries, connections, error classification, snapshots."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from runbooks.errors import (
    AuthenticationFailed,
    ConfigurationError,
    DatabaseNotFound,
    DatabaseUnavailable,
    LockBusy,
    RunbookError,
    ToolFailed,
)
from runbooks.redact import scrub

_ENV_NAMES = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "sslmode": "PGSSLMODE", "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY", "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL", "connect_timeout":
    "PGCONNECT_TIMEOUT", "options": "PGOPTIONS", "application_name": "PGAPPNAME",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "gssencmode": "PGGSSENCMODE",
}


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


def libpq_env(params: Mapping[str, Any], *, dbname: str | None = None) -> dict[str, str]:
    """Environment for a libpq tool: the password travels in PGPASSWORD, never on a command line (ps)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in params.items():
        if value is None:
            continue
        env[_ENV_NAMES.get(key, "PG" + key.upper().replace("_", ""))] = str(value)
    if dbname is not None:
        env["PGDATABASE"] = dbname
    return env


def describe(params: Mapping[str, Any]) -> str:
    """``user@host:port/dbname`` for messages (no password)."""
    return f"{params.get('user', '?')}@{params.get('host', 'localhost')}:{params.get('port', 5432)}/" \
           f"{params.get('dbname', '?')}"


def classify(text: str, *, where: str, secrets: list[str]) -> RunbookError:
    """Turn libpq/psql/pg_dump error text into a permanent or transient error with a next step."""
    clean = scrub(text.strip(), secrets)
    lines = [line.strip() for line in clean.splitlines() if line.strip()]
    marked = [line for line in lines if any(m in line for m in ("error", "FATAL", "failed"))]
    first = (marked or lines or ["no error text"])[0]
    lowered = clean.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered \
            or "authentication failed" in lowered or "pg_hba.conf" in lowered:
        return AuthenticationFailed(
            f"{where}: the server rejected the credentials ({first}).",
            hint="fix the password (RUNBOOKS_DATABASES__<NAME>__PASSWORD or its Secret block) or pg_hba.conf.",
        )
    if re.search(r'database ".*" does not exist', lowered):
        return DatabaseNotFound(
            f"{where}: {first}.", hint="check the dbname in the DSN; 'psql -l' lists the server's databases."
        )
    if re.search(r'role ".*" does not exist', lowered):
        return AuthenticationFailed(f"{where}: {first}.", hint="fix the user in the DSN.")
    transient_marks = ("connection refused", "could not connect", "timeout expired", "the database system is",
                       "too many clients", "server closed the connection", "connection reset",
                       "no route to host", "could not translate host name", "terminating connection")
    if any(mark in lowered for mark in transient_marks):
        return DatabaseUnavailable(
            f"{where}: the server is unreachable ({first}).",
            hint="check that PostgreSQL is running and the host/port in the DSN; transient errors are retried.",
        )
    return ToolFailed(f"{where}: {first}", hint="see the task log for the tool's full error output.")


def connect(params: Mapping[str, Any], *, secrets: list[str], where: str, **kwargs: Any) -> psycopg.Connection:
    try:
        return psycopg.connect(**{"connect_timeout": 10, **params}, **kwargs)
    except psycopg.OperationalError as exc:
        raise classify(str(exc), where=where, secrets=secrets) from None


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
def exported_snapshot(params: Mapping[str, Any], *, secrets: list[str], where: str) -> Iterator[
        tuple[Snapshot, psycopg.Connection]]:
    """Hold a REPEATABLE READ transaction open and export its snapshot for ``pg_dump --snapshot``."""
    conn = connect(params, secrets=secrets, where=where, autocommit=True)
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


def count_rows(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row count of every user table (partitions counted as their own leaves) in the open transaction."""
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
    # Runs beside pg_dump on the same cores: one process, no parallel workers competing with the dump.
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
SCRATCH_MARK = "runbooks-scratch"  # a database a restore is filling; removable by the next restore
RECOVERY_MARK = "runbooks-recovery"  # a finished restore into a new database; overwritable on request


def admin_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The same server and role, on the maintenance database (CREATE/ALTER/DROP DATABASE run from there)."""
    return {**params, "dbname": "postgres"}


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def database_mark(conn: psycopg.Connection, name: str) -> tuple[str, dict[str, Any]] | None:
    """The runbooks mark in a database's comment, if any: (mark, metadata)."""
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [name]
    ).fetchone()
    if not row or not row[0]:
        return None
    mark, _, meta = str(row[0]).partition(" ")
    if mark not in (SCRATCH_MARK, RECOVERY_MARK):
        return None
    try:
        return mark, dict(json.loads(meta or "{}"))
    except ValueError:
        return mark, {}


def mark_text(mark: str, meta: Mapping[str, Any]) -> str:
    return f"{mark} {json.dumps(dict(meta), default=str)}"


def mark_database(conn: psycopg.Connection, name: str, mark: str, meta: Mapping[str, Any]) -> None:
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name),
                                                               sql.Literal(mark_text(mark, meta))))


def marked_databases(conn: psycopg.Connection, mark: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for (name,) in conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall():
        marked = database_mark(conn, name)
        if marked and marked[0] == mark:
            found.append((name, marked[1]))
    return found


def create_database(conn: psycopg.Connection, name: str, *, mark: str, meta: Mapping[str, Any]) -> None:
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    mark_database(conn, name, mark, meta)


def drop_marked_database(conn: psycopg.Connection, name: str, *, allowed: tuple[str, ...]) -> bool:
    """Drop ``name`` only if it carries one of the ``allowed`` marks: a restore never drops anything it did
    not create. Returns False if it was already gone."""
    if not database_exists(conn, name):
        return False
    marked = database_mark(conn, name)
    if marked is None or marked[0] not in allowed:
        raise ToolFailed(f"refusing to drop database {name!r}: it was not created by a runbooks restore.",
                         hint="drop it by hand if that is really intended.")
    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    return True


def rename_databases(conn: psycopg.Connection, renames: list[tuple[str, str]], *, close: list[str],
                     comments: Mapping[str, str] | None = None, attempts: int = 10) -> None:
    """Rename several databases and set their comments (marks) in one transaction, all or nothing.

    Sessions on ``close`` are terminated inside the same transaction, just before the renames; a client that
    reconnects in between makes the rename fail, and the whole transaction is simply tried again. No state
    (such as ALLOW_CONNECTIONS false) is ever left behind by a run that dies here.
    """
    for attempt in range(attempts):
        try:
            with conn.transaction():
                for name in close:
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                                 " AND pid <> pg_backend_pid()", [name])
                for old, new in renames:
                    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old),
                                                                                 sql.Identifier(new)))
                for name, comment in (comments or {}).items():
                    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name),
                                                                               sql.Literal(comment)))
            return
        except psycopg.errors.ObjectInUse:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


def copy_database_properties(conn: psycopg.Connection, *, source: str, target: str) -> None:
    """Give ``target`` the owner and per-database settings of ``source`` (what pg_restore without --create
    does not carry), so a swapped-in copy behaves like the database it replaces."""
    row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [source]).fetchone()
    if row:
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(target), sql.Identifier(row[0])))
    settings = conn.execute(
        "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
        " WHERE d.datname = %s AND s.setrole = 0", [source]).fetchall()
    for (setting,) in settings:
        name, _, value = str(setting).partition("=")
        conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(sql.Identifier(target), sql.Identifier(name),
                                                                     sql.Literal(value)))


@contextmanager
def advisory_lock(params: Mapping[str, Any], key: str, *, wait_seconds: float, secrets: list[str],
                  holder: str) -> Iterator[None]:
    """A session advisory lock on the server (any host, any process) held for the duration of the block."""
    conn = connect(admin_params(params), secrets=secrets, where=f"lock {key!r}", autocommit=True)
    deadline = time.monotonic() + wait_seconds
    try:
        conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(holder[:63])))
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key]).fetchone()
            if row and row[0]:
                break
            if time.monotonic() >= deadline:
                raise LockBusy(
                    f"another run holds {key!r}; runs never interleave.",
                    hint="wait for it to finish (Prefect UI: runs in progress) or pass a longer lock wait.",
                )
            time.sleep(0.5)
        yield
    finally:
        conn.close()  # closing the session releases the lock


INTEGRITY_CHECKS = {
    # From the seeds' data-corruption runbook (002): each should count zero rows.
    "positions with NULL entry_price or current_price": (
        "positions", "SELECT count(*) FROM positions WHERE entry_price IS NULL OR current_price IS NULL"),
    "trades with a status outside open/closed/cancelled": (
        "trades", "SELECT count(*) FROM trades WHERE status NOT IN ('open', 'closed', 'cancelled')"),
}
POSITION_TOTALS = ("SELECT symbol, SUM(quantity)::text, SUM(quantity * entry_price)::text FROM positions"
                   " WHERE status = 'open' GROUP BY symbol ORDER BY symbol")


def integrity_report(conn: psycopg.Connection) -> tuple[dict[str, int], list[tuple[str, str, str]]]:
    """Run the seeds' integrity checks where their tables exist: anomalies per check, open position totals."""
    anomalies: dict[str, int] = {}
    for label, (table, query) in INTEGRITY_CHECKS.items():
        if conn.execute("SELECT to_regclass(%s)", [table]).fetchone() == (None,):
            continue
        row = conn.execute(query).fetchone()
        anomalies[label] = int(row[0]) if row else 0
    totals: list[tuple[str, str, str]] = []
    if conn.execute("SELECT to_regclass('positions')").fetchone() != (None,):
        totals = [(str(a), str(b), str(c)) for a, b, c in conn.execute(POSITION_TOTALS).fetchall()]
    return anomalies, totals
