"""Tasks that talk to PostgreSQL: probe and dump databases and the cluster's globals (backup); check, create,
fill, validate, publish, swap and drop databases (restore)."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import psycopg
from prefect import get_run_logger
from psycopg import sql
from pydantic import BaseModel, Field

from runbooks import __version__
from runbooks.adapters.catalog import BackupCatalog, BackupClaim
from runbooks.adapters.dbproperties import (
    DatabaseProperties,
    apply_database_properties,
    create_database_like,
    read_database_properties,
)
from runbooks.adapters.pipeline import CompressingSink, stream_command, stream_into
from runbooks.adapters.postgres import (
    CheckResult,
    admin_params,
    connect,
    count_rows,
    database_errors,
    database_exists,
    database_oid,
    database_size,
    describe,
    drop_database,
    exported_snapshot,
    libpq_env,
    pg_tool,
    postgres_error,
    rename_databases,
    run_checks,
    server_identity,
    tool_error,
    tool_version,
)
from runbooks.adapters.records import DatabaseRecord, RestoreRecords
from runbooks.adapters.roles import RoleCreated, apply_role_plan, is_clean_cluster, plan_missing_roles
from runbooks.core.errors import ConfigurationError, DatabaseInUse, InsufficientPrivilege, Refused, RunbookError
from runbooks.decisions.manifest import ArchivedFile, BackupManifest, SnapshotInfo, StoredObject
from runbooks.settings import DatabaseSettings, IntegrityCheck
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task

MB = 1_000_000


class DatabaseProbe(BaseModel):
    name: str
    server_version: str
    size_bytes: int


@step_task("probe-database", **TRANSIENT_RETRY)
def probe_database(*, name: str, database: DatabaseSettings) -> DatabaseProbe:
    """Connect and read the server version and database size (fails fast on bad credentials or dbname).

    Returns:
        What a dry run reports and the flow checks before writing anything.
    """
    params = database.conninfo()
    with connect(params, where=f"database {name!r} ({describe(params)})") as conn:
        version = conn.execute("SHOW server_version").fetchone()
        return DatabaseProbe(name=name, server_version=str(version[0] if version else "?"),
                             size_bytes=database_size(conn))


def _progress(name: str):  # type: ignore[no-untyped-def]
    logger = get_run_logger()

    def report(raw: int, stored: int, seconds: float) -> None:
        logger.info("pg_dump %r: %.0f MB read, %.0f MB stored, %.1f MB/s", name, raw / MB, stored / MB,
                    raw / MB / max(seconds, 1e-6))

    return report


@step_task("dump-database", **TRANSIENT_RETRY)
def dump_database(
    *,
    catalog: BackupCatalog,
    claim: BackupClaim,
    name: str,
    database: DatabaseSettings,
    level: int,
    threads: int,
    flow_run_id: str | None = None,
) -> BackupManifest:
    """Stream ``pg_dump -Fc`` of one database into the repository from an exported snapshot.

    The row counts are taken in the same snapshot, so they are exactly what the dump holds. On failure the
    partial objects are removed; the returned manifest is not yet published (verification comes first).

    Returns:
        The manifest to verify and publish.
    """
    logger = get_run_logger()
    params = database.conninfo()
    where = f"pg_dump of {name!r} ({describe(params)})"
    started_at = datetime.now(UTC)
    backup_id = claim.backup_id
    key = f"{claim.prefix('database', name)}/dump.pgc.zst"
    try:
        with exported_snapshot(params, where=f"database {name!r} ({describe(params)})") as (snap, conn):
            with database_errors(f"properties of {name!r}"):
                properties = read_database_properties(conn, str(conn.info.dbname))
                size = database_size(conn)
            pg_dump = pg_tool("pg_dump", snap.server_major)
            argv = [pg_dump, "--format=custom", "--compress=0", f"--snapshot={snap.snapshot_id}", "--no-password"]
            counts: dict[str, int] = {}
            errors: list[BaseException] = []

            def count() -> None:
                try:
                    counts.update(count_rows(conn, beside_dump=True))
                except BaseException as exc:  # surfaced after the dump
                    errors.append(exc)

            counter = threading.Thread(target=count, name=f"count-{name}", daemon=True)
            logger.info("Dumping %r at WAL %s into %r", name, snap.wal_lsn, key)
            try:
                stats = stream_command(
                    argv,
                    env=libpq_env(params),
                    repository=catalog.repository,
                    key=key,
                    level=level,
                    threads=threads,
                    classify_error=lambda text: tool_error(text, where=where),
                    progress=_progress(name),
                    on_start=lambda _proc: counter.start(),
                )
            except BaseException:
                if counter.is_alive():
                    try:  # never close the connection under a running count: cancel it and wait
                        conn.cancel_safe(timeout=10)
                    except psycopg.Error:  # the server is gone: the count fails on its own connection
                        pass
                    counter.join()
                raise
            counter.join()
            if errors:
                if isinstance(errors[0], psycopg.Error):
                    raise postgres_error(errors[0], where=f"row counts of {name!r}")
                raise errors[0]
    except BaseException:
        catalog.discard(claim, "database", name, [key], release=False)  # a retry keeps the claim
        raise
    finished_at = datetime.now(UTC)
    logger.info(
        "Dumped %r: %.1f MB -> %.1f MB stored in %.1f s (%.1f MB/s)", name, stats.raw_bytes / MB,
        stats.stored_bytes / MB, stats.seconds, stats.raw_bytes / MB / max(stats.seconds, 1e-6),
    )
    return BackupManifest(
        backup_id=backup_id,
        kind="database",
        name=name,
        server_version=snap.server_version,
        tools={"pg_dump": tool_version(pg_dump), "runbooks": __version__, "compression": "zstd"},
        host=socket.gethostname(),
        flow_run_id=flow_run_id,
        started_at=started_at,
        finished_at=finished_at,
        snapshot=SnapshotInfo(wal_lsn=snap.wal_lsn, taken_at=snap.taken_at, in_recovery=snap.in_recovery),
        objects=[
            StoredObject(role="dump", key=key, format="pg_dump custom", bytes=stats.raw_bytes,
                         stored_bytes=stats.stored_bytes, sha256=stats.sha256)
        ],
        row_counts=counts,
        database=properties,
        database_bytes=size,
    )


class _HashingReader:
    """What tarfile reads from a file, hashed on the way: the checksum is of exactly the bytes archived."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def _tar_files(files: list[Path], archived: list[ArchivedFile]):  # type: ignore[no-untyped-def]
    def produce(sink: CompressingSink) -> None:
        with tarfile.open(fileobj=sink, mode="w|") as archive:  # type: ignore[call-overload]
            for path in files:
                with open(path, "rb") as handle:
                    info = archive.gettarinfo(fileobj=handle, arcname=str(path).lstrip("/"))
                    reader = _HashingReader(handle)
                    archive.addfile(info, reader)
                archived.append(ArchivedFile(path=str(path.absolute()), bytes=info.size,
                                             sha256=reader.digest.hexdigest(), mode=info.mode & 0o7777))

    return produce


@step_task("dump-cluster", **TRANSIENT_RETRY)
def dump_cluster(
    *,
    catalog: BackupCatalog,
    claim: BackupClaim,
    cluster_name: str,
    database: DatabaseSettings | None,
    config_files: list[Path],
    level: int,
    threads: int,
    flow_run_id: str | None = None,
) -> BackupManifest | None:
    """Back up what a clean cluster needs before any database: roles (``pg_dumpall --globals-only``) and the
    configured configuration files (tar).

    Returns:
        The unpublished manifest, or None when neither globals nor config files are configured.
    """
    logger = get_run_logger()
    if database is None and not config_files:
        logger.info("No cluster DSN and no config files configured: skipping globals/config backup")
        return None
    missing = [str(p) for p in config_files if not p.is_file()]
    if missing:
        raise ConfigurationError(
            f"configured config files not found: {', '.join(missing)}.",
            hint="fix cluster.config_files in the settings (only regular files are archived).",
        )
    started_at = datetime.now(UTC)
    backup_id = claim.backup_id
    prefix = claim.prefix("cluster", cluster_name)
    written: list[str] = []
    objects: list[StoredObject] = []
    tools = {"runbooks": __version__, "compression": "zstd"}
    server_version = None
    archived: list[ArchivedFile] = []
    try:
        if database is not None:
            params = database.conninfo()
            where = f"pg_dumpall --globals-only ({describe(params)})"
            with connect(params, where=where) as conn:
                row = conn.execute("SELECT current_setting('server_version'),"
                                   " current_setting('server_version_num')::int").fetchone()
            assert row is not None
            server_version, major = str(row[0]), int(row[1]) // 10000
            pg_dumpall = pg_tool("pg_dumpall", major)
            tools["pg_dumpall"] = tool_version(pg_dumpall)
            key = f"{prefix}/globals.sql.zst"
            written.append(key)
            stats = stream_command(
                [pg_dumpall, "--globals-only", "--no-password"], env=libpq_env(params),
                repository=catalog.repository, key=key, level=level, threads=threads,
                classify_error=lambda text: tool_error(text, where=where),
            )
            objects.append(StoredObject(role="globals", key=key, format="sql", bytes=stats.raw_bytes,
                                        stored_bytes=stats.stored_bytes, sha256=stats.sha256))
            logger.info("Dumped cluster globals of %r: %d bytes", cluster_name, stats.raw_bytes)
        if config_files:
            key = f"{prefix}/config.tar.zst"
            written.append(key)
            stats = stream_into(_tar_files(config_files, archived), repository=catalog.repository, key=key, level=level,
                                threads=threads)
            objects.append(StoredObject(role="config", key=key, format="tar", bytes=stats.raw_bytes,
                                        stored_bytes=stats.stored_bytes, sha256=stats.sha256))
            logger.info("Archived %d config files of %r", len(config_files), cluster_name)
    except BaseException:
        catalog.discard(claim, "cluster", cluster_name, written, release=False)
        raise
    return BackupManifest(
        backup_id=backup_id, kind="cluster", name=cluster_name, server_version=server_version, tools=tools,
        host=socket.gethostname(), flow_run_id=flow_run_id, started_at=started_at, finished_at=datetime.now(UTC),
        objects=objects, files=archived,
    )



# -- restore ------------------------------------------------------------------------------------------------------
# Every database a restore creates is in its own record (runbooks.adapters.records), and it drops only what that record
# says it made, still under the same name and OID, never one of the inventory, never one with other sessions.


class ValidationReport(BaseModel):
    """What a restored database looks like next to its manifest (and, optionally, the live database)."""

    database: str
    row_counts: dict[str, int]
    mismatches: dict[str, list[int]] = Field(default_factory=dict, description="table -> [manifest, restored]")
    checks: list[CheckResult] = Field(default_factory=list, description="configured integrity checks")
    live_deltas: dict[str, int] | None = Field(default=None, description="table -> restored minus live rows")

    @property
    def passed(self) -> bool:
        return not self.mismatches


class Prerequisites(BaseModel):
    """What a restore checked before any expensive work."""

    role: str
    superuser: bool
    server_free_bytes: int | None = Field(description="free space where the server keeps its data (None: unknown)")
    needed_bytes: int
    notes: list[str] = Field(default_factory=list)


@contextmanager
def _admin(database: DatabaseSettings, where: str) -> Iterator[tuple[dict[str, Any], psycopg.Connection]]:
    """A connection to the maintenance database with the inventory database's credentials, errors mapped."""
    params = database.conninfo()
    with connect(admin_params(params), where=f"server of {describe(params)}", autocommit=True) as conn:
        with database_errors(where):
            yield params, conn


def _server_major(conn: psycopg.Connection) -> int:
    return int(str(conn.execute("SHOW server_version_num").fetchone()[0])) // 10000  # type: ignore[index]


@step_task("identify-server", **TRANSIENT_RETRY)
def identify_server(*, database: DatabaseSettings) -> str:
    """Returns:
    The cluster's identity under which the restore records of its databases are kept."""
    with _admin(database, "identifying the server") as (params, conn):
        return server_identity(conn, params)


_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


@step_task("check-restore-prerequisites", **TRANSIENT_RETRY)
def check_restore_prerequisites(*, database: DatabaseSettings, live: str, replace: bool, needed_bytes: int,
                                reserve_percent: float) -> Prerequisites:
    """Refuse before any fetch or pg_restore: the role may create databases (and, to replace, rename the live one
    and end its sessions), and the server's disk has room for a second copy plus the reserve.

    Returns:
        What was checked; a free-space check that cannot be made here (remote server) is a note, not a refusal.
    """
    with _admin(database, "checking restore privileges") as (params, conn):
        row = conn.execute(
            "SELECT current_user, rolsuper, rolcreatedb, pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'),"
            " coalesce((SELECT pg_has_role(current_user, datdba, 'MEMBER') FROM pg_database WHERE datname = %s),"
            " false) FROM pg_roles WHERE rolname = current_user", [live]).fetchone()
        assert row is not None
        role, superuser, createdb, signal, owns_live = row
        if not (superuser or createdb):
            raise InsufficientPrivilege(f"role {role!r} may not create databases, so nothing can be restored.",
                                        hint="use a DSN of a role with CREATEDB (or a superuser); nothing was done.")
        if replace and not (superuser or (owns_live and signal)):
            raise InsufficientPrivilege(
                f"role {role!r} cannot replace {live!r}: it needs to own it and be a member of pg_signal_backend "
                "(or be a superuser) to rename it and end its sessions.",
                hint="use a superuser DSN for the restore, or mode=new; nothing was done.")
        if replace and not superuser and conn.execute(
                "SELECT NOT r.rolcreaterole AND EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d"
                " ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole <> 0)"
                " FROM pg_roles r WHERE r.rolname = current_user", [live]).fetchone() == (True,):
            raise InsufficientPrivilege(
                f"role {role!r} cannot carry the per-role settings of {live!r} (ALTER ROLE ... IN DATABASE needs "
                "CREATEROLE).", hint="use a superuser DSN for the restore; nothing was done.")
        data_directory = None
        if superuser or conn.execute("SELECT pg_has_role(current_user, 'pg_read_all_settings', 'MEMBER')"
                                     ).fetchone() == (True,):
            data_directory = str(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
    free: int | None = None
    notes: list[str] = []
    host = str(params.get("host") or "")
    if data_directory and (host in _LOCAL_HOSTS or host.startswith("/")) and Path(data_directory).exists():
        usage = shutil.disk_usage(data_directory)
        free = usage.free
        need = needed_bytes + int(usage.total * reserve_percent / 100)
        if free < need:
            raise Refused(f"the database server's disk has {free / MB:.0f} MB free; a second copy needs about "
                          f"{needed_bytes / MB:.0f} MB plus the {reserve_percent:g}% reserve.",
                          hint="free space on the server or lower restore.server_disk_reserve_percent; nothing "
                          "was done.")
    else:
        notes.append("free space on the database server not checked (not a local server, or the role may not "
                     f"read data_directory); about {needed_bytes / MB:.0f} MB are needed")
    get_run_logger().info("Prerequisites of restoring into the server of %r met (role %r)", live, role)
    return Prerequisites(role=role, superuser=superuser, server_free_bytes=free, needed_bytes=needed_bytes,
                         notes=notes)


class Sweep(BaseModel):
    dropped: list[str] = Field(default_factory=list, description="dropped (dry-run: would drop)")
    left: list[str] = Field(default_factory=list, description="recorded but not dropped, and why")


def _owned_by_restore_role(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT pg_get_userbyid(datdba) = current_user FROM pg_database WHERE datname = %s",
                       [name]).fetchone()
    return bool(row and row[0])


def _take_back_lent(conn: psycopg.Connection, name: str) -> bool:
    """A scratch copy a killed (or disconnected) restore had lent to its source's owner for pg_restore (see
    ``_lend_database``: only a restore role that is not a superuser lends, to a role it is a member of). Take it
    back so it can be dropped; any other owner stays refused."""
    row = conn.execute(
        "SELECT NOT r.rolsuper AND pg_has_role(current_user, d.datdba, 'MEMBER') FROM pg_database d "
        "JOIN pg_roles r ON r.rolname = current_user WHERE d.datname = %s", [name]).fetchone()
    if not (row and row[0]):
        return False
    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(sql.Identifier(name)))
    return True


def _drop_recorded(conn: psycopg.Connection, records: RestoreRecords, name: str, *, kind: str,
                   protected: set[str]) -> bool:
    """Drop ``name`` only if our record says a restore made it (``kind``) and it is still that database.
    Returns False if it was already gone (its record is then removed)."""
    record = records.get(name)
    oid = database_oid(conn, name)
    if oid is None:  # already gone: success, and its record (if any) goes too
        if record is not None:
            records.delete(name)
        return False
    if name in protected:
        raise Refused(f"refusing to drop {name!r}: it is a database of the inventory.",
                      hint="a restore never drops a configured database; nothing was dropped.")
    if record is None or record.kind != kind or record.oid is None:
        raise Refused(f"refusing to drop {name!r}: the runbooks' records do not show a restore made it as a {kind}"
                      " database.", hint="drop it by hand if that is really intended.")
    if oid != record.oid:
        raise Refused(f"refusing to drop {name!r}: it is not the database a restore made under that name (OID "
                      f"{oid}, recorded {record.oid}).", hint="it was replaced by hand; drop it by hand if intended.")
    if not _owned_by_restore_role(conn, name) and not (kind == "scratch" and _take_back_lent(conn, name)):
        raise Refused(f"refusing to drop {name!r}: it is not owned by the restore's role, so a restore did not "
                      "leave it as it is.", hint="drop it by hand if that is really intended.")
    drop_database(conn, name)
    records.delete(name)
    return True


@step_task("sweep-restore-databases", mutates=True, **TRANSIENT_RETRY)
def sweep_restore_databases(*, database: DatabaseSettings, records: RestoreRecords, source: str,
                            protected: set[str], dry_run: bool = False) -> Sweep:
    """Drop the scratch databases that interrupted restores of ``source`` left behind, as recorded.

    Called while holding the restore lock of ``source``, so none of them belongs to a live restore.
    """
    logger = get_run_logger()
    sweep = Sweep()
    with _admin(database, "sweeping scratch databases") as (_params, conn):
        for record in records.all():
            if record.kind != "scratch" or record.source != source:
                continue
            if record.oid is None:
                if database_exists(conn, record.name):
                    sweep.left.append(f"{record.name}: its creation was interrupted before its OID was recorded, "
                                      "so it is not dropped automatically; check it and drop it by hand")
                else:
                    records.delete(record.name)
                continue
            if dry_run:
                logger.info("Would drop scratch database %r of an interrupted restore", record.name)
                sweep.dropped.append(record.name)
                continue
            try:
                if _drop_recorded(conn, records, record.name, kind="scratch", protected=protected):
                    sweep.dropped.append(record.name)
                    logger.info("Dropped scratch database %r left by interrupted run %s", record.name,
                                record.flow_run_id)
            except (Refused, DatabaseInUse) as exc:
                sweep.left.append(f"{record.name}: {exc}")
    for line in sweep.left:
        logger.warning("Scratch database not dropped: %s", line)
    return sweep


@step_task("inspect-target", **TRANSIENT_RETRY)
def inspect_target(*, database: DatabaseSettings, records: RestoreRecords,
                   name: str) -> Literal["absent", "recovery", "foreign"]:
    """Returns:
    ``absent``, ``recovery`` (a previous restore made it and it still is that database), or ``foreign``."""
    with _admin(database, f"inspecting {name!r}") as (_params, conn):
        oid = database_oid(conn, name)
    if oid is None:
        return "absent"
    record = records.get(name)
    return "recovery" if record and record.kind == "recovery" and record.oid == oid else "foreign"


@step_task("create-scratch-database", mutates=True, **TRANSIENT_RETRY)
def create_scratch_database(*, database: DatabaseSettings, records: RestoreRecords, record: DatabaseRecord,
                            properties: DatabaseProperties | None, protected: set[str]) -> None:
    """Create the empty database a restore fills, with the source's encoding and locale, recorded as ours, and
    closed to PUBLIC so nothing but the restore writes to it before it is validated and swapped in."""
    with _admin(database, f"creating scratch database {record.name!r}") as (_params, conn):
        if database_exists(conn, record.name):  # a retry of this very task: it must be ours
            earlier = records.get(record.name)
            if (earlier is not None and earlier.oid is None and earlier.flow_run_id == record.flow_run_id
                    and record.flow_run_id is not None and _owned_by_restore_role(conn, record.name)):
                drop_database(conn, record.name)  # this run's attempt, interrupted before its OID was recorded
            else:
                _drop_recorded(conn, records, record.name, kind="scratch", protected=protected)
        records.put(record.model_copy(update={"oid": None}))
        create_database_like(conn, record.name, properties)
        records.put(record.model_copy(update={"oid": database_oid(conn, record.name)}))
        conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
            sql.Identifier(record.name)))
    get_run_logger().info("Created scratch database %r", record.name)


@step_task("drop-restore-database", mutates=True, **TRANSIENT_RETRY)
def drop_restore_database(*, database: DatabaseSettings, records: RestoreRecords, name: str,
                          kind: Literal["scratch", "recovery"], protected: set[str]) -> bool:
    """Drop a database a restore made (its scratch copy, or a previous recovery database the operator asked to
    overwrite), as its record shows. "Already gone" is success."""
    with _admin(database, f"dropping {name!r}") as (_params, conn):
        dropped = _drop_recorded(conn, records, name, kind=kind, protected=protected)
    if dropped:
        get_run_logger().info("Dropped %s database %r", kind, name)
    return dropped


@step_task("restore-roles", mutates=True, **TRANSIENT_RETRY)
def restore_roles(*, database: DatabaseSettings, globals_sql: Path,
                  mode: Literal["auto", "always"]) -> list[RoleCreated]:
    """Create the roles of the cluster backup that the target cluster lacks, in one transaction.

    ``auto``: bare NOLOGIN roles (owners for restored objects), unless the cluster is clean (a DR drill's new
    cluster): then as in the backup. ``always``: as in the backup, LOGIN and password included. Existing roles
    are never altered (a password rotated since the backup stays).

    Returns:
        Exactly what was created.
    """
    script = globals_sql.read_text()
    with _admin(database, "creating roles from the cluster backup") as (_params, conn):
        full = mode == "always" or is_clean_cluster(conn, script)
        present = {r for (r,) in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
        plan = plan_missing_roles(script, present=present, full=full)
        created = apply_role_plan(conn, plan)
    if created:
        get_run_logger().info("Roles created from the cluster backup: %s",
                              ", ".join(f"{r.name} ({r.attributes})" for r in created))
    return created


def _lend_database(conn: psycopg.Connection, name: str, owner: str | None) -> bool:
    """Make the source's owner the owner of scratch database ``name`` while pg_restore runs, when the restore's
    role is not a superuser but a member of that owner: ``ALTER TABLE … OWNER TO owner`` needs the new owner to have
    CREATE on the schema, which in ``public`` (PostgreSQL 15) only the database's owner has. Returns whether it did;
    ``restore_database`` then gives it back to the restore's role, whose ownership marks the copy as the restore's
    own (a failed copy is dropped only if it is)."""
    if owner is None:
        return False
    row = conn.execute("SELECT NOT rolsuper AND rolname <> %s AND pg_has_role(current_user, %s, 'MEMBER')"
                       " FROM pg_roles WHERE rolname = current_user AND EXISTS (SELECT 1 FROM pg_roles"
                       " WHERE rolname = %s)", [owner, owner, owner]).fetchone()
    if not (row and row[0]):
        return False
    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(owner)))
    return True


@step_task("restore-database", mutates=True)  # no retry: a retry would meet a half-filled database
def restore_database(*, database: DatabaseSettings, target: str, dump_file: Path, jobs: int,
                     no_owner: bool, owner: str | None = None) -> float:
    """``pg_restore -j`` from the verified local copy into ``target`` (a scratch database).

    Args:
        owner: the source database's owner (from the manifest). A restore role that is not a superuser lends it
            the scratch database for the duration of pg_restore, so objects keep that owner.

    Returns:
        Seconds pg_restore took.
    """
    with _admin(database, "preparing pg_restore") as (params, conn):
        argv = [pg_tool("pg_restore", _server_major(conn)), "--exit-on-error", f"--jobs={jobs}", "--no-password",
                "-d", target]
        lent = not no_owner and _lend_database(conn, target, owner)
    if no_owner:
        argv += ["--no-owner", "--no-acl"]
    started = time.monotonic()
    try:
        proc = subprocess.run([*argv, str(dump_file)], env=libpq_env(params, dbname=target), capture_output=True,
                              text=True, check=False)
    finally:
        if lent:  # the restore's role owns what it made until the swap: the drop of a failed copy checks that
            with _admin(database, f"taking {target!r} back from {owner!r}") as (_params, conn):
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(sql.Identifier(target)))
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise tool_error(proc.stderr, where=f"pg_restore into {target!r}")
    get_run_logger().info("pg_restore -j %d into %r took %.1f s", jobs, target, seconds)
    return seconds


@step_task("analyze-database", **TRANSIENT_RETRY)
def analyze_database(*, database: DatabaseSettings, target: str) -> float:
    """``ANALYZE`` a freshly restored database: pg_restore leaves it without statistics, and until they exist the
    planner reads every time-range query as a scan of the whole table (what a DR runbook does after a restore).

    Returns:
        Seconds it took.
    """
    params = database.conninfo()
    started = time.monotonic()
    with connect({**params, "dbname": target}, where=f"restored database {target!r}", autocommit=True) as conn, \
            database_errors(f"analyzing {target!r}"):
        conn.execute("ANALYZE")
    return time.monotonic() - started


@step_task("validate-database", **TRANSIENT_RETRY)
def validate_database(*, database: DatabaseSettings, target: str, expected: dict[str, int],
                      checks: list[IntegrityCheck], compare_live: str | None) -> ValidationReport:
    """Row counts against the manifest (the gate), the configured integrity checks (reported), and optionally
    deltas to the live database.

    Returns:
        The report; ``passed`` is False when any table's row count differs from the manifest.
    """
    params = database.conninfo()
    with connect({**params, "dbname": target}, where=f"restored database {target!r}") as conn, \
            database_errors(f"validating {target!r}"):
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        counts = count_rows(conn)
        results = run_checks(conn, checks)
    mismatches = {t: [expected.get(t, -1), counts.get(t, -1)] for t in sorted(set(expected) | set(counts))
                  if expected.get(t) != counts.get(t)}
    deltas = None
    if compare_live:
        with connect({**params, "dbname": compare_live}, where=f"live database {compare_live!r}") as live, \
                database_errors(f"counting rows of {compare_live!r}"):
            live.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            live_counts = count_rows(live)
        deltas = {t: counts.get(t, 0) - live_counts.get(t, 0) for t in sorted(set(counts) | set(live_counts))}
    report = ValidationReport(database=target, row_counts=counts, mismatches=mismatches, checks=results,
                              live_deltas=deltas)
    logger = get_run_logger()
    if mismatches:
        logger.error("Restored %r differs from the manifest in %d tables: %s", target, len(mismatches), mismatches)
    else:
        logger.info("Restored %r: row counts of %d tables match the manifest", target, len(counts))
    for result in results:
        if result.status in ("failed", "could_not_run"):
            logger.warning("Integrity check %r on %r: %s %s", result.name, target, result.status,
                           result.error or f"(got {result.value}, healthy is {result.expect})")
    return report


@step_task("publish-recovery-database", mutates=True)
def publish_recovery_database(*, database: DatabaseSettings, records: RestoreRecords, scratch: str, target: str,
                              overwrite: bool, protected: set[str]) -> None:
    """Give the validated scratch copy its final name (dropping the previous recovery database first if asked);
    the record follows the database (same OID, new name, kind recovery)."""
    with _admin(database, f"publishing {target!r}") as (_params, conn):
        if overwrite:
            _drop_recorded(conn, records, target, kind="recovery", protected=protected)
        record = records.get(scratch)
        rename_databases(conn, [(scratch, target)], close=[])
        if record is not None:
            records.put(record.model_copy(update={"name": target, "kind": "recovery"}))
            records.delete(scratch)
    get_run_logger().info("Renamed database %r -> %r", scratch, target)


@step_task("swap-databases", mutates=True)
def swap_databases(*, database: DatabaseSettings, records: RestoreRecords, live: str, scratch: str,
                   keep_as: str, source: str = "", backup_id: str = "", flow_run_id: str | None = None) -> None:
    """In one transaction: give the copy the live database's properties (owner, settings, per-role settings,
    privileges, connection limit), end the live database's sessions, rename live -> ``keep_as`` and copy -> live.
    Not retried: an operator reads the report before anything touches names again."""
    with _admin(database, f"swapping {scratch!r} in for {live!r}") as (_params, conn):
        scratch_oid = database_oid(conn, scratch)
        live_oid = database_oid(conn, live)
        if database_exists(conn, keep_as):
            raise Refused(f"database {keep_as!r} already exists, so the live database cannot be kept under that "
                          "name.", hint="rerun the restore; nothing was swapped.")

        def carry(tx: psycopg.Connection) -> None:
            apply_database_properties(tx, scratch, read_database_properties(tx, live))

        rename_databases(conn, [(live, keep_as), (scratch, live)], close=[live], before=carry)
        if database_oid(conn, live) != scratch_oid:
            raise Refused(f"after the swap {live!r} is not the restored copy.", hint="inspect the databases by hand.")
    get_run_logger().info("Swapped: %r kept as %r, restored copy is now %r", live, keep_as, live)
    try:
        records.delete(scratch)  # the copy is the live database now: never a restore's to drop
    except RunbookError as exc:  # the next sweep finds no database under that name and removes the record
        get_run_logger().warning("Could not remove the record of %r after the swap: %s", scratch, exc)
    try:  # what disk cleanup may later offer to drop (with approval): only this database, by its OID
        records.put(DatabaseRecord(server=records.server, name=keep_as, oid=live_oid, kind="pre-restore",
                                   source=source or live, backup_id=backup_id, flow_run_id=flow_run_id))
    except RunbookError as exc:  # without a record it is only reported, never dropped
        get_run_logger().warning("Could not record the kept database %r: %s", keep_as, exc)


@step_task("locate-databases", **TRANSIENT_RETRY)
def locate_databases(*, database: DatabaseSettings, names: list[str]) -> dict[str, int | None]:
    """Returns:
    Each name's OID, or None if no database has it (e.g. to learn whether a failed swap changed anything)."""
    with _admin(database, "looking up databases") as (_params, conn):
        return {name: database_oid(conn, name) for name in names}


@step_task("rehearse-swap", **TRANSIENT_RETRY)
def rehearse_swap(*, database: DatabaseSettings, live: str, scratch: str) -> None:
    """Before approval (and before trading is halted): give the copy the live database's properties in a
    transaction that is rolled back, and make sure the live database's sessions can be ended, so a swap never
    fails for want of a privilege after trading was halted."""
    with _admin(database, f"rehearsing the swap of {scratch!r} in for {live!r}") as (_params, conn):
        try:
            with conn.transaction(force_rollback=True):
                apply_database_properties(conn, scratch, read_database_properties(conn, live))
        except psycopg.Error as exc:
            mapped = postgres_error(exc, where=f"giving the copy the properties of {live!r}")
            raise type(mapped)(mapped.message, hint="restore with a superuser DSN; nothing was changed.",
                               sqlstate=mapped.sqlstate) from None
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_roles r ON r.rolname = a.usename WHERE a.datname = %s"
            " AND r.rolsuper AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)", [live]).fetchone()
        if row and row[0]:
            raise InsufficientPrivilege(f"superuser sessions are connected to {live!r}, and the restore's role may "
                                        "not end them.", hint="restore with a superuser DSN, or close those "
                                        "sessions; nothing was changed.", sqlstate="42501")
