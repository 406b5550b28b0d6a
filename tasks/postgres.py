"""Tasks that talk to PostgreSQL: probe a database, dump a database, dump the cluster's globals."""

from __future__ import annotations

import re
import socket
import subprocess
import tarfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from runbooks import __version__
from runbooks.catalog import BackupCatalog
from runbooks.errors import ConfigurationError
from runbooks.manifest import BackupManifest, SnapshotInfo, StoredObject
from runbooks.pipeline import CompressingSink, stream_command, stream_into
from runbooks.postgres import (
    SCRATCH_MARK,
    admin_params,
    classify,
    connect,
    copy_database_properties,
    count_rows,
    create_database,
    database_exists,
    database_mark,
    database_size,
    describe,
    drop_marked_database,
    exported_snapshot,
    integrity_report,
    libpq_env,
    marked_databases,
    pg_tool,
    rename_databases,
    tool_version,
)
from runbooks.settings import DatabaseSettings
from tasks.policies import TRANSIENT_RETRY

MB = 1_000_000


class DatabaseProbe(BaseModel):
    name: str
    server_version: str
    size_bytes: int


@task(name="probe-database", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def probe_database(*, name: str, database: DatabaseSettings, secrets: list[str]) -> DatabaseProbe:
    """Connect and read the server version and database size (fails fast on bad credentials or dbname).

    Returns:
        What a dry run reports and the flow checks before writing anything.
    """
    params = database.conninfo()
    secrets = [*secrets, str(params.get("password") or "")]  # a password from a Secret block is known only now
    with connect(params, secrets=secrets, where=f"database {name!r} ({describe(params)})") as conn:
        version = conn.execute("SHOW server_version").fetchone()
        return DatabaseProbe(name=name, server_version=str(version[0] if version else "?"),
                             size_bytes=database_size(conn))


def _progress(name: str):  # type: ignore[no-untyped-def]
    logger = get_run_logger()

    def report(raw: int, stored: int, seconds: float) -> None:
        logger.info("pg_dump %r: %.0f MB read, %.0f MB stored, %.1f MB/s", name, raw / MB, stored / MB,
                    raw / MB / max(seconds, 1e-6))

    return report


@task(name="dump-database", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def dump_database(
    *,
    catalog: BackupCatalog,
    name: str,
    database: DatabaseSettings,
    backup_id: str,
    level: int,
    threads: int,
    secrets: list[str],
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
    secrets = [*secrets, str(params.get("password") or "")]  # a password from a Secret block is known only now
    where = f"pg_dump of {name!r} ({describe(params)})"
    started_at = datetime.now(UTC)
    prefix = catalog.begin("database", name, backup_id, flow_run_id=flow_run_id)
    key = f"{prefix}/dump.pgc.zst"
    try:
        with exported_snapshot(params, secrets=secrets, where=f"database {name!r} ({describe(params)})") as (
            snap, conn
        ):
            pg_dump = pg_tool("pg_dump", snap.server_major)
            argv = [pg_dump, "--format=custom", "--compress=0", f"--snapshot={snap.snapshot_id}", "--no-password"]
            counts: dict[str, int] = {}
            errors: list[BaseException] = []

            def count() -> None:
                try:
                    counts.update(count_rows(conn))
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
                    classify_error=lambda text: classify(text, where=where, secrets=secrets),
                    progress=_progress(name),
                    on_start=lambda _proc: counter.start(),
                )
            except BaseException:
                if counter.is_alive():
                    conn.cancel_safe()  # never close the connection under a running count
                    counter.join()
                raise
            counter.join()
            if errors:
                raise classify(str(errors[0]), where=f"row counts of {name!r}", secrets=secrets)
    except BaseException:
        catalog.discard("database", name, backup_id)
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
    )


def _tar_files(files: list[Path]):  # type: ignore[no-untyped-def]
    def produce(sink: CompressingSink) -> None:
        with tarfile.open(fileobj=sink, mode="w|") as archive:  # type: ignore[call-overload]
            for path in files:
                archive.add(str(path), arcname=str(path).lstrip("/"), recursive=False)

    return produce


@task(name="dump-cluster", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def dump_cluster(
    *,
    catalog: BackupCatalog,
    cluster_name: str,
    database: DatabaseSettings | None,
    config_files: list[Path],
    backup_id: str,
    level: int,
    threads: int,
    secrets: list[str],
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
    prefix = catalog.begin("cluster", cluster_name, backup_id, flow_run_id=flow_run_id)
    objects: list[StoredObject] = []
    tools = {"runbooks": __version__, "compression": "zstd"}
    server_version = None
    try:
        if database is not None:
            params = database.conninfo()
            secrets = [*secrets, str(params.get("password") or "")]
            where = f"pg_dumpall --globals-only ({describe(params)})"
            with connect(params, secrets=secrets, where=where) as conn:
                row = conn.execute("SELECT current_setting('server_version'),"
                                   " current_setting('server_version_num')::int").fetchone()
            assert row is not None
            server_version, major = str(row[0]), int(row[1]) // 10000
            pg_dumpall = pg_tool("pg_dumpall", major)
            tools["pg_dumpall"] = tool_version(pg_dumpall)
            key = f"{prefix}/globals.sql.zst"
            stats = stream_command(
                [pg_dumpall, "--globals-only", "--no-password"], env=libpq_env(params),
                repository=catalog.repository, key=key, level=level, threads=threads,
                classify_error=lambda text: classify(text, where=where, secrets=secrets),
            )
            objects.append(StoredObject(role="globals", key=key, format="sql", bytes=stats.raw_bytes,
                                        stored_bytes=stats.stored_bytes, sha256=stats.sha256))
            logger.info("Dumped cluster globals of %r: %d bytes", cluster_name, stats.raw_bytes)
        if config_files:
            key = f"{prefix}/config.tar.zst"
            stats = stream_into(_tar_files(config_files), repository=catalog.repository, key=key, level=level,
                                threads=threads)
            objects.append(StoredObject(role="config", key=key, format="tar", bytes=stats.raw_bytes,
                                        stored_bytes=stats.stored_bytes, sha256=stats.sha256))
            logger.info("Archived %d config files of %r", len(config_files), cluster_name)
    except BaseException:
        catalog.discard("cluster", cluster_name, backup_id)
        raise
    return BackupManifest(
        backup_id=backup_id, kind="cluster", name=cluster_name, server_version=server_version, tools=tools,
        host=socket.gethostname(), flow_run_id=flow_run_id, started_at=started_at, finished_at=datetime.now(UTC),
        objects=objects,
    )



# -- restore ------------------------------------------------------------------------------------------------------
class ValidationReport(BaseModel):
    """What a restored database looks like next to its manifest (and, optionally, the live database)."""

    database: str
    row_counts: dict[str, int]
    mismatches: dict[str, list[int]] = Field(default_factory=dict, description="table -> [manifest, restored]")
    anomalies: dict[str, int] = Field(default_factory=dict, description="seeds' integrity checks: rows found")
    position_totals: list[list[str]] = Field(default_factory=list, description="symbol, quantity, value (open)")
    live_deltas: dict[str, int] | None = Field(default=None, description="table -> restored minus live rows")

    @property
    def passed(self) -> bool:
        return not self.mismatches


def _admin(database: DatabaseSettings, secrets: list[str]):  # type: ignore[no-untyped-def]
    params = database.conninfo()
    secrets = [*secrets, str(params.get("password") or "")]
    return params, secrets, connect(admin_params(params), secrets=secrets, where=f"server of {describe(params)}",
                                    autocommit=True)


@task(name="sweep-scratch-databases", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def sweep_scratch_databases(*, database: DatabaseSettings, source: str, secrets: list[str],
                            dry_run: bool = False) -> list[str]:
    """Drop the scratch databases that interrupted restores of ``source`` left behind.

    Called while holding the restore lock of ``source``, so none of them belongs to a live restore.

    Returns:
        The names dropped (dry-run: that would be dropped).
    """
    _params, secrets, conn = _admin(database, secrets)
    dropped = []
    with conn:
        for name, meta in marked_databases(conn, SCRATCH_MARK):
            if meta.get("source") == source:
                if dry_run:
                    get_run_logger().info("Would drop scratch database %r of an interrupted restore", name)
                    dropped.append(name)
                    continue
                drop_marked_database(conn, name, allowed=(SCRATCH_MARK,))
                dropped.append(name)
                get_run_logger().info("Dropped scratch database %r left by an interrupted restore (%s)", name,
                                      meta.get("flow_run_id"))
    return dropped


@task(name="inspect-target", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def inspect_target(*, database: DatabaseSettings, names: list[str], secrets: list[str]) -> dict[str, str | None]:
    """Returns:
    For each name: None if no such database, else its runbooks mark ('runbooks-recovery', …) or 'unmarked'."""
    _params, secrets, conn = _admin(database, secrets)
    with conn:
        found: dict[str, str | None] = {}
        for name in names:
            if not database_exists(conn, name):
                found[name] = None
            else:
                mark = database_mark(conn, name)
                found[name] = mark[0] if mark else "unmarked"
        return found


@task(name="create-scratch-database", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def create_scratch_database(*, database: DatabaseSettings, name: str, meta: dict[str, str],
                            secrets: list[str]) -> None:
    """Create the empty database a restore fills, marked so that it is recognisable and removable."""
    _params, secrets, conn = _admin(database, secrets)
    with conn:
        if database_exists(conn, name):
            drop_marked_database(conn, name, allowed=(SCRATCH_MARK,))  # a retry of this very task
        create_database(conn, name, mark=SCRATCH_MARK, meta=meta)
    get_run_logger().info("Created scratch database %r", name)


@task(name="drop-restore-database", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def drop_restore_database(*, database: DatabaseSettings, name: str, mark: str, secrets: list[str]) -> bool:
    """Drop a database a restore made — a scratch copy, or a previous recovery database the operator asked to
    overwrite — and only if it carries that ``mark`` ("already gone" is success)."""
    _params, secrets, conn = _admin(database, secrets)
    with conn:
        dropped = drop_marked_database(conn, name, allowed=(mark,))
    if dropped:
        get_run_logger().info("Dropped %s database %r", mark.removeprefix("runbooks-"), name)
    return dropped


_ROLE_STATEMENT = re.compile(r'^(?:CREATE|ALTER) ROLE ("(?:[^"]|"")+"|[^\s;]+)[\s;]')


def _role_name(token: str) -> str:
    return token[1:-1].replace('""', '"') if token.startswith('"') else token


@task(name="restore-globals", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def restore_globals(*, database: DatabaseSettings, globals_sql: Path, secrets: list[str]) -> list[str]:
    """Create the roles of the cluster backup that the target cluster lacks (a clean cluster), so restored
    objects keep their owners. Only the CREATE/ALTER ROLE statements of missing roles run: an existing role's
    password or attributes are never reset to the backup's.

    Returns:
        The roles created.
    """
    params, secrets, conn = _admin(database, secrets)
    with conn:
        present = {r for (r,) in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
        major = int(str(conn.execute("SHOW server_version_num").fetchone()[0])) // 10000  # type: ignore[index]
    wanted: list[str] = []
    statements: list[str] = []
    for line in globals_sql.read_text().splitlines():
        match = _ROLE_STATEMENT.match(line)
        if match and _role_name(match[1]) not in present:
            statements.append(line)
            if line.startswith("CREATE ROLE"):
                wanted.append(_role_name(match[1]))
    if not wanted:
        return []
    script = globals_sql.with_name("missing-roles.sql")
    script.write_text("\n".join(statements) + "\n")
    proc = subprocess.run([pg_tool("psql", major), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script)],
                          env=libpq_env(admin_params(params)), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise classify(proc.stderr, where="creating roles from the cluster backup", secrets=secrets)
    get_run_logger().info("Roles created from the cluster backup: %s", ", ".join(wanted))
    return wanted


@task(name="restore-database", cache_policy=NO_CACHE)  # no retry: a retry would meet a half-filled database
def restore_database(*, database: DatabaseSettings, target: str, dump_file: Path, jobs: int, no_owner: bool,
                     secrets: list[str]) -> float:
    """``pg_restore -j`` from the verified local copy into ``target`` (a scratch database).

    Returns:
        Seconds pg_restore took.
    """
    params, secrets, conn = _admin(database, secrets)
    with conn:
        major = int(str(conn.execute("SHOW server_version_num").fetchone()[0])) // 10000  # type: ignore[index]
    argv = [pg_tool("pg_restore", major), "--exit-on-error", f"--jobs={jobs}", "--no-password", "-d", target]
    if no_owner:
        argv += ["--no-owner", "--no-acl"]
    started = time.monotonic()
    proc = subprocess.run([*argv, str(dump_file)], env=libpq_env(params, dbname=target), capture_output=True,
                          text=True, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise classify(proc.stderr, where=f"pg_restore into {target!r}", secrets=secrets)
    get_run_logger().info("pg_restore -j %d into %r took %.1f s", jobs, target, seconds)
    return seconds


@task(name="validate-database", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def validate_database(*, database: DatabaseSettings, target: str, expected: dict[str, int],
                      compare_live: str | None, secrets: list[str]) -> ValidationReport:
    """Row counts against the manifest, the seeds' integrity checks, and optionally deltas to the live database.

    Returns:
        The report; ``passed`` is False when any table's row count differs from the manifest.
    """
    params = database.conninfo()
    secrets = [*secrets, str(params.get("password") or "")]
    with connect({**params, "dbname": target}, secrets=secrets, where=f"restored database {target!r}") as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        counts = count_rows(conn)
        anomalies, totals = integrity_report(conn)
    mismatches = {t: [expected.get(t, -1), counts.get(t, -1)] for t in sorted(set(expected) | set(counts))
                  if expected.get(t) != counts.get(t)}
    deltas = None
    if compare_live:
        where = f"live database {compare_live!r}"
        with connect({**params, "dbname": compare_live}, secrets=secrets, where=where) as live:
            live.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            live_counts = count_rows(live)
        deltas = {t: counts.get(t, 0) - live_counts.get(t, 0) for t in sorted(set(counts) | set(live_counts))}
    report = ValidationReport(database=target, row_counts=counts, mismatches=mismatches, anomalies=anomalies,
                              position_totals=[list(t) for t in totals], live_deltas=deltas)
    logger = get_run_logger()
    if mismatches:
        logger.error("Restored %r differs from the manifest in %d tables: %s", target, len(mismatches), mismatches)
    else:
        logger.info("Restored %r: row counts of %d tables match the manifest", target, len(counts))
    for label, n in anomalies.items():
        if n:
            logger.warning("Integrity check on %r: %d %s", target, n, label)
    return report


@task(name="rename-databases", cache_policy=NO_CACHE)
def rename_databases_task(*, database: DatabaseSettings, renames: list[tuple[str, str]], close: list[str],
                          comments: dict[str, str], secrets: list[str],
                          properties_from: tuple[str, str] | None = None) -> None:
    """Swap names and marks in one transaction (all or nothing). Not retried: an operator reads the report
    before anything touches names again. ``properties_from`` = (live, copy): first give the copy the live
    database's owner and settings."""
    _params, secrets, conn = _admin(database, secrets)
    with conn:
        if properties_from is not None:
            copy_database_properties(conn, source=properties_from[0], target=properties_from[1])
        rename_databases(conn, renames, close=close, comments=comments)
    for old, new in renames:
        get_run_logger().info("Renamed database %r -> %r", old, new)
