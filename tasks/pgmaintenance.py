"""Tasks for a database's own size (seed 000 "Check Database Size"): sizes, largest tables, dead tuples,
``VACUUM (ANALYZE)``, and the ``_pre_restore_`` databases replace restores kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from prefect import get_run_logger
from psycopg import sql
from pydantic import BaseModel, Field

from runbooks.adapters.postgres import admin_params, connect, database_errors, database_oid, describe, drop_database
from runbooks.adapters.records import RestoreRecords
from runbooks.core.errors import InsufficientPrivilege, Refused
from runbooks.settings import DatabaseRule, DatabaseSettings
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task

PRE_RESTORE_MARK = "_pre_restore_"


class TableSize(BaseModel):
    schema_: str = Field(alias="schema")
    table: str
    bytes: int = Field(description="pg_total_relation_size: heap, indexes and TOAST")
    live_rows: int
    dead_rows: int
    last_vacuum: datetime | None = Field(default=None, description="the later of the last manual and auto vacuum")
    bloated: bool = Field(default=False, description="over the rule's dead-tuple lines: VACUUM (ANALYZE) helps")

    model_config = {"populate_by_name": True}

    @property
    def qualified(self) -> str:
        return f"{self.schema_}.{self.table}"


class DatabaseSize(BaseModel):
    name: str = Field(description="inventory name")
    bytes: int = Field(description="pg_database_size")
    largest: list[TableSize] = Field(default_factory=list)
    bloated: list[TableSize] = Field(default_factory=list, description="tables over the dead-tuple lines")
    vacuumed: list[str] = Field(default_factory=list, description="tables VACUUM (ANALYZE) ran on")


class KeptDatabase(BaseModel):
    """A database named like a replace restore's kept copy, and what the runbooks' own record says about it."""

    name: str
    server: str = Field(description="the cluster it is on (as the records name it)")
    oid: int
    bytes: int
    recorded: bool = Field(description="the runbooks' record shows a replace restore kept this very database (OID)")
    kept_at: datetime | None = Field(default=None, description="when, by the record (never read from the name)")
    source: str | None = None
    droppable: bool = Field(default=False, description="recorded and older than the rule's age: may be dropped "
                            "with approval")
    why: str = ""


_TABLES = """
SELECT s.schemaname, s.relname, pg_total_relation_size(s.relid), s.n_live_tup, s.n_dead_tup,
       GREATEST(s.last_vacuum, s.last_autovacuum)
FROM pg_stat_user_tables s
ORDER BY pg_total_relation_size(s.relid) DESC
"""


@step_task("read-database-size", **TRANSIENT_RETRY)
def read_database_size(*, name: str, database: DatabaseSettings, rule: DatabaseRule) -> DatabaseSize:
    """pg_database_size, the largest tables and the bloated ones (dead rows over both of the rule's lines)."""
    params = database.conninfo()
    with connect(params, where=f"database {describe(params)}", autocommit=True) as conn, \
            database_errors(f"reading the size of {name!r}"):
        conn.execute("SET statement_timeout = '60s'")
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        size = DatabaseSize(name=name, bytes=int(row[0]) if row else 0)
        for schema, table, total, live, dead, vacuumed in conn.execute(_TABLES).fetchall():
            entry = TableSize(schema=schema, table=table, bytes=int(total), live_rows=int(live), dead_rows=int(dead),
                              last_vacuum=vacuumed)
            entry.bloated = dead >= rule.dead_tuples_min and dead >= rule.dead_ratio_min * max(live, 1)
            if len(size.largest) < rule.largest:
                size.largest.append(entry)
            if entry.bloated:
                size.bloated.append(entry)
    return size


# Who may VACUUM a table (vacuum_is_relation_owner): its owner, the database's owner (not for shared catalogs), a
# superuser, and from PostgreSQL 17 a holder of MAINTAIN. Anyone else gets a WARNING and a VACUUM that "succeeds"
# having done nothing, so the runbook asks first rather than report a vacuum that never happened.
_NOT_VACUUMABLE = """
SELECT t.schema || '.' || t.name
FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS t(schema, name)
JOIN pg_namespace n ON n.nspname = t.schema
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.name
JOIN pg_database d ON d.datname = current_database()
WHERE NOT (pg_has_role(c.relowner, 'USAGE') OR (pg_has_role(d.datdba, 'USAGE') AND NOT c.relisshared){maintain})
ORDER BY 1
"""


@step_task("vacuum-tables", mutates=True, **TRANSIENT_RETRY)
def vacuum_tables(*, name: str, database: DatabaseSettings, tables: list[tuple[str, str]], full: bool) -> list[str]:
    """``VACUUM (ANALYZE)`` (marks dead rows reusable; returns only trailing pages to the OS) or, approved,
    ``VACUUM (FULL, ANALYZE)`` (rewrites the table under an exclusive lock: reads and writes wait).

    Raises:
        InsufficientPrivilege: the role may not vacuum some of the tables (nothing was vacuumed).
    """
    params = database.conninfo()
    done: list[str] = []
    options = sql.SQL("FULL, ANALYZE" if full else "ANALYZE")
    with connect(params, where=f"database {describe(params)}", autocommit=True) as conn:
        with database_errors(f"checking who may vacuum tables of {name!r}"):
            maintain = " OR has_table_privilege(c.oid, 'MAINTAIN')" if conn.info.server_version >= 170000 else ""
            refused = [r[0] for r in conn.execute(_NOT_VACUUMABLE.format(maintain=maintain), {  # type: ignore[arg-type]
                "schemas": [s for s, _ in tables], "names": [t for _, t in tables]}).fetchall()]
        if refused:
            raise InsufficientPrivilege(
                f"role {params.get('user')!r} may not VACUUM {', '.join(refused)} in {name!r}: only a table's owner, "
                "the database's owner or a superuser can, and PostgreSQL would skip it with a warning; nothing was "
                "vacuumed.", hint="grant the cleanup role membership in the owner role (deployments/roles.sql), "
                "or disable vacuum in the databases rule.", sqlstate="42501")
        for schema, table in tables:
            with database_errors(f"vacuuming {schema}.{table} in {name!r}"):
                conn.execute(sql.SQL("VACUUM ({}) {}.{}").format(options, sql.Identifier(schema),
                                                                 sql.Identifier(table)))
            done.append(f"{schema}.{table}")
            get_run_logger().info("VACUUM (%s) %s.%s in %r", "FULL, ANALYZE" if full else "ANALYZE", schema, table,
                                  name)
    return done


@step_task("find-kept-databases", **TRANSIENT_RETRY)
def find_kept_databases(*, database: DatabaseSettings, records: RestoreRecords, older_than: timedelta,
                        protected: set[str]) -> list[KeptDatabase]:
    """Every database whose name carries ``_pre_restore_``, with what the record says. The name only finds
    candidates; whether one may be dropped comes from the record (same OID) alone."""
    params = database.conninfo()
    now = datetime.now(UTC)
    found: list[KeptDatabase] = []
    with connect(admin_params(params), where=f"server of {describe(params)}", autocommit=True) as conn, \
            database_errors("listing the databases restores kept"):
        rows = conn.execute("SELECT datname, oid::bigint, pg_database_size(oid) FROM pg_database "
                            "WHERE strpos(datname, %s) > 0 ORDER BY datname", [PRE_RESTORE_MARK]).fetchall()
    for name, oid, size in rows:
        record = records.get(name)
        kept = KeptDatabase(name=name, server=records.server, oid=int(oid), bytes=int(size), recorded=False)
        if name in protected:
            kept.why = "a database of the inventory"
        elif record is None or record.kind != "pre-restore":
            kept.why = "no record of a restore keeping it: drop it by hand if it is not needed"
        elif record.oid != kept.oid:
            kept.why = f"not the database the restore kept (OID {kept.oid}, recorded {record.oid})"
        else:
            kept.recorded, kept.kept_at, kept.source = True, record.created_at, record.source
            age = now - record.created_at
            kept.droppable = age >= older_than
            kept.why = "" if kept.droppable else f"kept {age.days} days ago: younger than {older_than.days} days"
        found.append(kept)
    return found


@step_task("drop-kept-database", mutates=True, **TRANSIENT_RETRY)
def drop_kept_database(*, database: DatabaseSettings, records: RestoreRecords, name: str,
                       protected: set[str]) -> Literal["dropped", "gone"]:
    """Drop an approved kept database, only while the record shows a replace restore kept this very one.
    PostgreSQL refuses while anyone is connected (no FORCE): nobody's session is cut."""
    params = database.conninfo()
    with connect(admin_params(params), where=f"server of {describe(params)}", autocommit=True) as conn:
        record = records.get(name)
        oid = database_oid(conn, name)
        if oid is None:
            if record is not None:
                records.delete(name)
            return "gone"
        if name in protected:
            raise Refused(f"refusing to drop {name!r}: it is a database of the inventory.",
                          hint="nothing was dropped.")
        if record is None or record.kind != "pre-restore" or record.oid != oid:
            raise Refused(f"refusing to drop {name!r}: the runbooks' record does not show a replace restore kept "
                          "this database.", hint="drop it by hand if that is really intended; nothing was dropped.")
        drop_database(conn, name)
    records.delete(name)
    get_run_logger().info("Dropped %r, kept by a replace restore on %s", name, f"{record.created_at:%Y-%m-%d}")
    return "dropped"
