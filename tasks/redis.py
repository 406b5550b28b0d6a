"""Tasks that talk to Redis: back it up into the repository (seed 001's ``backup-redis.sh``), check its health,
restore a backup into an instance of its own, and replace a live instance's data (seed 001's "Redis Recovery")."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger
from pydantic import BaseModel, Field

from runbooks import __version__
from runbooks.adapters import redis as rd
from runbooks.adapters.catalog import BackupCatalog, BackupClaim
from runbooks.adapters.pipeline import fetch_object
from runbooks.core.errors import RunbookError, VerificationFailed
from runbooks.core.redact import scrub
from runbooks.decisions.health import HealthCheck
from runbooks.decisions.manifest import BackupManifest, RedisSnapshot, StoredObject
from runbooks.decisions.redis import redis_checks
from runbooks.settings.redis import RedisSettings
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task

MB = 1_000_000


class RedisProbe(BaseModel):
    name: str
    version: str
    key_count: int
    used_memory: int
    rdb: str


@step_task("probe-redis", **TRANSIENT_RETRY)
def probe_redis(*, name: str, settings: RedisSettings) -> RedisProbe:
    """What a dry run reports: the server answers, its size, and where its RDB file is."""
    where = f"Redis {name!r} ({settings.address()})"
    with rd.connect(settings, where=where) as client, rd.redis_errors(where):
        server = rd.info(client)
        rdb = rd.rdb_location(client, settings, where=where)
        return RedisProbe(name=name, version=str(server.get("redis_version", "?")),
                          key_count=sum(rd.keyspace(client).values()), used_memory=int(server.get("used_memory", 0)),
                          rdb=str(rdb))


@step_task("dump-redis", **TRANSIENT_RETRY)
def dump_redis(*, catalog: BackupCatalog, claim: BackupClaim, name: str, settings: RedisSettings, level: int,
               threads: int, flow_run_id: str | None = None) -> BackupManifest:
    """``BGSAVE``, wait for it, then stream the RDB it wrote into the repository, ``redis-check-rdb`` counting its
    keys on the way. On failure the partial object is removed; the manifest returned is not yet published."""
    logger = get_run_logger()
    where = f"Redis {name!r} ({settings.address()})"
    started_at = datetime.now(UTC)
    key = f"{claim.prefix('redis', name)}/dump.rdb.zst"
    try:
        with rd.connect(settings, where=where) as client:
            saved, stats, check = rd.save_and_stream(client, settings, repository=catalog.repository, key=key,
                                                     level=level, threads=threads, where=where)
            logger.info("Redis %r saved at %s in %.1f s", name, f"{saved.saved_at:%H:%M:%S}Z", saved.seconds)
    except BaseException:
        catalog.discard(claim, "redis", name, [key], release=False)  # a retry keeps the claim
        raise
    logger.info("Dumped Redis %r: %d keys, %.1f MB -> %.1f MB stored in %.1f s", name, check.keys,
                stats.raw_bytes / MB, stats.stored_bytes / MB, stats.seconds)
    return BackupManifest(
        backup_id=claim.backup_id, kind="redis", name=name, server_version=saved.version,
        tools={"redis-check-rdb": rd.tool_version(rd.CHECK_RDB), "runbooks": __version__, "compression": "zstd"},
        host=socket.gethostname(), flow_run_id=flow_run_id, started_at=started_at, finished_at=datetime.now(UTC),
        objects=[StoredObject(role="rdb", key=key, format="redis rdb", bytes=stats.raw_bytes,
                              stored_bytes=stats.stored_bytes, sha256=stats.sha256)],
        redis=RedisSnapshot(key_count=check.keys, expires=check.expires, already_expired=check.already_expired,
                            keyspace=saved.keyspace, saved_at=saved.saved_at, save_seconds=saved.seconds,
                            while_saving=saved.while_saving))


@step_task("check-redis-health")
def check_redis_health(*, name: str, settings: RedisSettings) -> list[HealthCheck]:
    """Seed 001's ``redis-cli ping``, and what keeps Redis healthy: memory, the last save, clients."""
    started = time.monotonic()
    where = f"Redis {name!r} ({settings.address()})"
    try:
        with rd.connect(settings, where=where) as client, rd.redis_errors(where):
            ping = time.monotonic() - started
            server = rd.info(client)
            try:
                maxclients = int(client.config_get("maxclients").get("maxclients") or 10000)
            except RunbookError:
                maxclients = 10000
    except RunbookError as exc:
        return [HealthCheck(name=f"redis {name}", status="failed", detail=scrub(exc.message)[:200],
                            seconds=time.monotonic() - started)]
    return redis_checks(name, server, maxclients, settings=settings, now=datetime.now(UTC), ping_seconds=ping)


class RedisRestoreCheck(BaseModel):
    """A restored instance against its manifest: every key the RDB holds was loaded (or had expired since)."""

    expected_keys: int
    loaded_keys: int
    expired_at_load: int
    keyspace: dict[str, int] = Field(default_factory=dict, description="keys per database now, in the copy")
    keyspace_at_save: dict[str, int] = Field(default_factory=dict)
    passed: bool
    detail: str


def compare_loaded(manifest: BackupManifest, loaded: dict[str, int], keyspace: dict[str, int]) -> RedisRestoreCheck:
    """Loaded + expired while loading must equal the keys ``redis-check-rdb`` read in the backup: a key
    short means the copy is not the backup."""
    assert manifest.redis is not None
    expected = manifest.redis.key_count
    got, expired = loaded.get("keys_loaded", -1), loaded.get("keys_expired", 0)
    passed = got + expired == expected and got >= 0
    detail = (f"{got} keys loaded + {expired} expired while loading = the {expected} the backup holds"
              if passed else f"{got} keys loaded + {expired} expired while loading, the backup holds {expected}")
    return RedisRestoreCheck(expected_keys=expected, loaded_keys=got, expired_at_load=expired, keyspace=keyspace,
                             keyspace_at_save=manifest.redis.keyspace, passed=passed, detail=detail)


@step_task("restore-redis-instance")
def restore_redis_instance(*, catalog: BackupCatalog, manifest: BackupManifest, workdir: Path,
                           settings: RedisSettings, timeout_seconds: float = 600,
                           bind: str = "127.0.0.1") -> tuple[rd.RestoredInstance, RedisRestoreCheck]:
    """Fetch the backup (checksum checked), check the RDB, start a ``redis-server`` of its own on it and compare
    what it loaded with the manifest. The instance is returned running; the caller stops it or hands it over."""
    obj = next(o for o in manifest.objects if o.role == "rdb")
    rdb = workdir / "dump.rdb"
    fetch_object(catalog.repository, obj.key, rdb, sha256=obj.sha256, stored_bytes=obj.stored_bytes)
    check = rd.check_rdb_file(rdb)
    if not check.ok:
        raise VerificationFailed(f"redis-check-rdb rejects backup {manifest.backup_id} of {manifest.name!r}: "
                                 f"{check.detail}.", hint="restore an older backup (runbooks backups list).")
    instance = rd.start_instance(rdb, workdir=workdir, settings=settings, bind=bind, timeout_seconds=timeout_seconds)
    try:
        client = instance.client(settings)
        with rd.redis_errors("the restored Redis"):
            client.ping()
            space = rd.keyspace(client)
        client.close()
    except BaseException:
        instance.stop()
        raise
    return instance, compare_loaded(manifest, instance.loaded, space)


@step_task("replace-redis-data", mutates=True)
def replace_redis_data(*, name: str, settings: RedisSettings, source: rd.RestoredInstance,
                       timeout_seconds: float = 600) -> rd.Loaded:
    """The live instance takes the restored copy's whole dataset (a full sync from it), then serves on its own."""
    where = f"Redis {name!r} ({settings.address()})"
    copy = source.client(settings)
    try:
        with rd.connect(settings, where=where) as client:
            return rd.load_from(client, source=copy, source_host=settings.restore_host, source_port=source.port,
                                source_password=source.password, timeout_seconds=timeout_seconds, where=where)
    finally:
        copy.close()


@step_task("read-redis-role")
def read_redis_role(*, name: str, settings: RedisSettings) -> tuple[str, dict[str, int]]:
    where = f"Redis {name!r} ({settings.address()})"
    with rd.connect(settings, where=where) as client, rd.redis_errors(where):
        return rd.replication_role(client), rd.keyspace(client)
