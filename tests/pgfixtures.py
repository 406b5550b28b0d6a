"""Shared test helpers for PostgreSQL: a database exercising every feature a dump must carry, a bulky one, the
databases of the sandbox's cluster, and ways to compare two databases and restore a backup from the repository with
plain pg_restore."""

from __future__ import annotations

import secrets
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.cluster import PostgresCluster, free_port
from runbooks.adapters.pipeline import iter_decompressed
from runbooks.adapters.postgres import libpq_env, pg_tool
from runbooks.decisions.manifest import BackupManifest
from runbooks_sandbox import SandboxState

FIDELITY_SQL = r"""
CREATE SCHEMA market;
CREATE SCHEMA "Risk Desk";
CREATE TYPE market.side AS ENUM ('buy', 'sell');
CREATE DOMAIN market.price AS numeric(12,4) CHECK (VALUE > 0);
CREATE TABLE market.orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    side        market.side NOT NULL,
    px          market.price NOT NULL,
    qty         numeric NOT NULL,
    notional    numeric GENERATED ALWAYS AS (px * qty) STORED,
    tags        text[] NOT NULL DEFAULT '{}',
    meta        jsonb,
    raw         bytea,
    created_at  timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00'
);
INSERT INTO market.orders (side, px, qty, tags, meta, raw)
SELECT (ARRAY['buy','sell']::market.side[])[1 + g % 2], 3900 + g, g * 10, ARRAY['t' || g, 'x,y', 'quote"d'],
       jsonb_build_object('g', g, 'nested', jsonb_build_object('a', ARRAY[g, g+1]), 'uni', 'Bogotá ✓'),
       decode(md5(g::text), 'hex') || '\x00ff'::bytea
FROM generate_series(1, 500) g;
CREATE TABLE market.ticks (ts timestamptz NOT NULL, px numeric NOT NULL) PARTITION BY RANGE (ts);
CREATE TABLE market.ticks_2026_01 PARTITION OF market.ticks FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE market.ticks_2026_02 PARTITION OF market.ticks FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
INSERT INTO market.ticks
SELECT '2026-01-01'::timestamptz + g * interval '1 hour', 3900 + g FROM generate_series(0, 1000) g;
CREATE TABLE "Risk Desk"."Limits; DROP TABLE x; --" ("Weird Col" text PRIMARY KEY, "select" int);
INSERT INTO "Risk Desk"."Limits; DROP TABLE x; --" VALUES ('USD/COP', 1), (E'tab\there', 2), (E'new\nline', 3);
CREATE VIEW market.big_orders AS SELECT id, side, notional FROM market.orders WHERE notional > 100000;
CREATE FUNCTION market.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.meta := coalesce(NEW.meta, '{}'::jsonb) || '{"touched": true}'; RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE INSERT ON market.orders FOR EACH ROW EXECUTE FUNCTION market.touch();
CREATE TABLE market.docs (id int PRIMARY KEY, blob oid);
INSERT INTO market.docs VALUES (1, lo_from_bytea(0, convert_to(repeat('large object payload ', 5000), 'UTF8')));
COMMENT ON TABLE market.orders IS 'orders with every column type a dump must carry';
"""


def admin_dsn(sandbox: SandboxState, dbname: str = "postgres") -> str:
    return sandbox.cluster().dsn(dbname)


@contextmanager
def running_cluster(root: Path, **options: Any) -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of the test's own in ``root`` (``options``: more ``PostgresCluster`` fields), on a free
    port, started for the block and destroyed after it, its directory with it."""
    cluster = PostgresCluster(root=root, port=free_port(), superuser_password=secrets.token_urlsafe(16), **options)
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def create_fidelity_db(sandbox: SandboxState) -> str:
    """A fresh database with schemas, enums, domains, jsonb, arrays, bytea, identity and generated columns,
    partitions, a view, a function, a trigger, a large object and a table whose name needs quoting."""
    name = f"fidelity_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(admin_dsn(sandbox, name), autocommit=True) as conn:
        conn.execute(FIDELITY_SQL)
    return name


def create_bulk_db(sandbox: SandboxState, *, rows: int, prefix: str = "bulk", random: bool = True,
                   primary_key: bool = False) -> str:
    """A fresh database ``PREFIX_xxxxxxxx`` holding one table ``blobs`` of ``rows`` rows: enough bytes for a dump or
    a restore to still be running when a test interrupts it. ``random``: two columns of random md5 text (~100 bytes
    a row that compress poorly, e.g. for S3 to need a multipart upload); otherwise one column, the md5 of the row
    number."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    columns = ("md5(random()::text) || md5(random()::text) AS a, md5(random()::text) AS b" if random
               else "md5(g::text) AS a")
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(admin_dsn(sandbox, name), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE blobs AS SELECT g AS id, {} FROM generate_series(1, {}) g").format(
            sql.SQL(columns), sql.Literal(rows)))
        if primary_key:
            conn.execute("ALTER TABLE blobs ADD PRIMARY KEY (id)")
    return name


def database_oids(sandbox: SandboxState) -> dict[str, int]:
    """Every database of the sandbox's cluster (templates aside) and its OID: a database dropped and made again
    under the same name has another."""
    with psycopg.connect(admin_dsn(sandbox)) as conn:
        return {name: int(oid) for name, oid in
                conn.execute("SELECT datname, oid FROM pg_database WHERE NOT datistemplate")}


def databases(sandbox: SandboxState) -> set[str]:
    """The names of the sandbox cluster's databases, templates aside."""
    return set(database_oids(sandbox))


def drop_db(sandbox: SandboxState, name: str) -> None:
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_db_and_copies(sandbox: SandboxState, name: str) -> None:
    """Drop ``name`` and every database whose name starts with it: what restores of a test's (uniquely named)
    database made beside it (``_recovery``, scratch ``_restore_…``, kept ``_pre_restore_…`` copies)."""
    for db in databases(sandbox):
        if db.startswith(name):
            drop_db(sandbox, db)


def schema_dump(sandbox: SandboxState, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn(sandbox, dbname))
    text = subprocess.run([pg_tool("pg_dump"), "--schema-only"], env=libpq_env(params), capture_output=True,
                          text=True, check=True).stdout
    # \restrict lines carry a random per-dump key (PostgreSQL security releases of 2025): not schema.
    return "\n".join(line for line in text.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def content_checksums(sandbox: SandboxState, dbname: str) -> dict[str, str]:
    """md5 of every table's rows in a stable order, plus every large object's bytes."""
    sums: dict[str, str] = {}
    with psycopg.connect(admin_dsn(sandbox, dbname)) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2").fetchall()
        for schema, table in tables:
            row = conn.execute(sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text),"
                                       " '')) FROM ONLY {} t").format(sql.Identifier(schema, table))).fetchone()
            assert row is not None
            sums[f"{schema}.{table}"] = f"{row[0]}:{row[1]}"
        for oid, digest in conn.execute("SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1"):
            sums[f"lo:{oid}"] = digest
    return sums


def restore_with_pg_restore(sandbox: SandboxState, catalog: BackupCatalog, manifest: BackupManifest,
                            target: str, workdir: Path) -> None:
    """What an operator does by hand: fetch, decompress, plain pg_restore into a new database."""
    dump = workdir / f"{manifest.name}.dump"
    with open(dump, "wb") as handle:
        for chunk in iter_decompressed(catalog.repository.iter_chunks(manifest.objects[0].key)):
            handle.write(chunk)
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn(sandbox, target))
    subprocess.run([pg_tool("pg_restore"), "--exit-on-error", "-d", target, str(dump)],
                   env=libpq_env(params), check=True, capture_output=True)


def set_database_env(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxState, dbname: str,
                     port: int | None = None) -> None:
    """Add a database to the inventory through the environment (as an operator would override the file), reached
    directly or through ``port`` (a fault proxy in front of the cluster)."""
    dsn = admin_dsn(sandbox, dbname)
    if port is not None:
        dsn = dsn.replace(f"127.0.0.1:{sandbox.postgres_port}/", f"127.0.0.1:{port}/")
    monkeypatch.setenv(f"RUNBOOKS_DATABASES__{dbname.upper()}__DSN", dsn)
