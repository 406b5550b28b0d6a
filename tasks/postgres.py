"""Tasks that talk to PostgreSQL: probe a database, dump a database, dump the cluster's globals."""

from __future__ import annotations

import socket
import tarfile
import threading
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from runbooks import __version__
from runbooks.catalog import BackupCatalog
from runbooks.errors import ConfigurationError
from runbooks.manifest import BackupManifest, SnapshotInfo, StoredObject
from runbooks.pipeline import CompressingSink, stream_command, stream_into
from runbooks.postgres import (
    classify,
    connect,
    count_rows,
    database_size,
    describe,
    exported_snapshot,
    libpq_env,
    pg_tool,
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

