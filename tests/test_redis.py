"""Redis (the memory/learning system) against real redis-servers the tests start: backup into the repository,
restore into a new instance with equal key counts, a damaged RDB refused, a failing BGSAVE reported, the live
instance's data replaced (its previous data backed up first), and its health."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from runbooks.flows.redis_restore import redis_restore_flow
from runbooks.frame import outcome
from runbooks.settings import load_settings
from runbooks.tasks.redis import check_redis_health
from runbooks_sandbox import SandboxState
from tests.redisfixtures import RedisServer, fill, kill_all, leftover_servers, start_redis
from tests.repositories import catalog
from tests.runs import run_backup


def redis_restore(**params: Any) -> tuple[Any, Any]:
    state = redis_restore_flow(**params, return_state=True)
    return state, outcome(state)


@pytest.fixture
def live(config: SandboxState, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
         tmp_path: Path) -> RedisServer:
    """A filled Redis in the inventory as ``memory``; restores work under this test's state directory."""
    redis_server.env(monkeypatch)
    monkeypatch.setenv("RUNBOOKS_STATE_DIR", str(tmp_path / "state"))
    fill(redis_server)
    return redis_server


def back_up_redis() -> Any:
    state, result = run_backup(include_databases=False, include_cluster=False)
    assert state.is_completed(), result
    [item] = result.items
    assert (item.kind, item.name, item.status) == ("redis", "memory", "succeeded"), item
    return item


def test_backup_then_restore_into_a_new_instance_holds_every_key(live: RedisServer, tmp_path: Path) -> None:
    item = back_up_redis()
    [manifest] = catalog().list_backups(kind="redis", name="memory")
    assert manifest.backup_id == item.backup_id and manifest.verified
    assert manifest.redis is not None and manifest.redis.key_count == 2 * 204
    assert manifest.redis.keyspace == {"db0": 204, "db3": 204}
    assert manifest.objects[0].role == "rdb" and manifest.objects[0].stored_bytes < manifest.objects[0].bytes
    live.client().set("written:after", "the backup")  # not in the backup: the copy must not have it

    try:
        state, result = redis_restore(instance="memory")
        assert state.is_completed(), result
        assert result.status == "succeeded" and result.check.passed, result.check
        assert result.check.keyspace == {"db0": 204, "db3": 204}
        copy = RedisServer(directory=Path(result.workdir), port=result.port,
                           password=_requirepass(Path(result.workdir) / "redis.conf"), proc=None)  # type: ignore[arg-type]
        assert copy.client(3).hget("agent:3", "trades") == "42"
        assert copy.client(0).lrange("episodes:0", 0, -1) == [str(i) for i in range(50)]
        assert copy.client(0).get("written:after") is None
        assert (Path(result.workdir) / "redis.conf").stat().st_mode & 0o777 == 0o600
        assert Path(result.workdir).stat().st_mode & 0o777 == 0o700
        assert live.password not in _requirepass(Path(result.workdir) / "redis.conf")
    finally:
        kill_all(leftover_servers(tmp_path))


def _requirepass(conf: Path) -> str:
    return next(line.split(" ", 1)[1] for line in conf.read_text().splitlines() if line.startswith("requirepass "))


def test_a_damaged_rdb_is_refused_and_nothing_is_started(live: RedisServer, tmp_path: Path) -> None:
    item = back_up_redis()
    [manifest] = catalog().list_backups(kind="redis", name="memory")
    stored = Path(load_settings().repository.url.removeprefix("file://")) / manifest.objects[0].key
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    state, result = redis_restore(instance="memory", backup_id=item.backup_id)
    assert state.is_failed()
    assert result.status == "failed", result
    assert "is damaged" in (result.error or ""), result.error
    assert leftover_servers(tmp_path) == []
    assert not any((tmp_path / "state").rglob("dump.rdb"))  # the work directory went with it


def test_an_rdb_that_redis_check_rdb_rejects_is_refused_before_loading(live: RedisServer, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup whose bytes match their checksum but whose RDB is truncated (written so by a faulty disk)."""
    from runbooks.adapters import redis as rd

    back_up_redis()
    [manifest] = catalog().list_backups(kind="redis", name="memory")
    original = rd.check_rdb_file

    def truncated_first(path: Path) -> rd.RdbCheck:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return original(path)

    monkeypatch.setattr(rd, "check_rdb_file", truncated_first)
    state, result = redis_restore(instance="memory", backup_id=manifest.backup_id)
    assert state.is_failed()
    assert "redis-check-rdb rejects" in (result.error or ""), result.error
    assert leftover_servers(tmp_path) == []


def test_a_failing_bgsave_is_reported_with_its_reason(config: SandboxState, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis cannot write its RDB (its data directory is gone): the backup fails with Redis' own reason, nothing
    is listed, and the health check shows the failed save."""
    server = start_redis(tmp_path / "doomed")
    try:
        server.env(monkeypatch)
        fill(server, keys=10, databases=(0,))
        shutil.rmtree(server.directory)  # Redis chdir()ed into it: the temporary RDB cannot be created
        state, result = run_backup(include_databases=False, include_cluster=False)
        assert state.is_failed()
        [item] = result.items
        assert item.status == "failed"
        assert "BGSAVE failed" in (item.error or ""), item.error
        assert catalog().list_backups(kind="redis") == []
        checks = {c.name: c for c in check_redis_health(name="memory", settings=load_settings().redis["memory"])}
        assert checks["redis memory last save"].status == "alert"
        assert "FAILED" in checks["redis memory last save"].detail
    finally:
        server.stop()


def test_replace_backs_up_the_live_data_then_loads_the_backup(live: RedisServer, tmp_path: Path) -> None:
    item = back_up_redis()
    client = live.client()
    client.set("written:after", "the backup")
    client.delete("memory:0:1", "memory:0:2")
    before = sum(v["keys"] for v in client.info("keyspace").values())
    try:
        state, dry = redis_restore(instance="memory", backup_id=item.backup_id, target="replace", dry_run=True)
        assert state.is_completed() and dry.status == "dry_run", dry
        assert dry.plan.live_keys == before and dry.plan.key_count == 408
        assert client.get("written:after") == "the backup"  # a dry run changes nothing

        state, result = redis_restore(instance="memory", backup_id=item.backup_id, target="replace",
                                      confirm=dry.plan.plan_hash)
        assert state.is_completed(), result
        assert result.status == "succeeded" and result.keyspace_after == {"db0": 204, "db3": 204}
        assert client.get("written:after") is None and client.get("memory:0:1") is not None
        assert client.info("replication")["role"] == "master"
        assert client.config_get("masterauth")["masterauth"] == ""  # put back as it was
        # The data from before the replace is a listed, verified backup.
        previous = [m for m in catalog().list_backups(kind="redis", name="memory")
                    if m.backup_id == result.previous_backup_id]
        assert previous and previous[0].verified and previous[0].redis.key_count == before
        assert leftover_servers(tmp_path) == []  # the copy it loaded from is stopped
    finally:
        kill_all(leftover_servers(tmp_path))


def test_replace_with_a_stale_confirm_is_refused_and_changes_nothing(live: RedisServer, tmp_path: Path) -> None:
    back_up_redis()
    live.client().set("written:after", "the backup")
    state, result = redis_restore(instance="memory", target="replace", confirm="0123456789ab")
    assert state.is_failed()
    assert "does not match this plan" in (result.error or "")
    assert live.client().get("written:after") == "the backup"
    assert leftover_servers(tmp_path) == []


def test_health_reads_ping_memory_save_and_clients(config: SandboxState, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_redis(tmp_path / "health", "--maxmemory", "1mb", "--maxclients", "10")
    try:
        server.env(monkeypatch)
        settings = load_settings().redis["memory"]
        fill(server, keys=2000, databases=(0,))  # close to the 1 MB limit (eviction policy noeviction refuses more)
        checks = {c.name: c for c in check_redis_health(name="memory", settings=settings)}
        assert checks["redis memory"].status == "ok" and "PONG" in checks["redis memory"].detail
        assert checks["redis memory memory"].status in ("warn", "alert") and checks["redis memory memory"].value
        assert checks["redis memory last save"].status in ("ok", "warn", "alert")
        held = [server.client() for _ in range(9)]
        for c in held:
            c.ping()
        checks = {c.name: c for c in check_redis_health(name="memory", settings=settings)}
        assert checks["redis memory clients"].status == "alert", checks["redis memory clients"]
        for c in held:
            c.close()
    finally:
        server.stop()
    [down] = check_redis_health(name="memory", settings=settings)
    assert down.status == "failed" and "did not answer" in down.detail
    assert server.password not in down.detail


def test_the_drill_restores_redis_and_scores_the_memory_component(live: RedisServer, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 002's memory/learning system (RTO 30 min, RPO 15 min): restored from its backup in the drill's clean
    environment, every key checked, scored; with the 15-minute schedule it meets its RPO, nightly it cannot."""
    from runbooks.flows.dr_game_day import dr_game_day_flow

    state, backed = run_backup()
    assert state.is_completed(), backed
    monkeypatch.setenv("RUNBOOKS_REDIS__MEMORY__BACKUP_INTERVAL", "15m")
    try:
        state = dr_game_day_flow(quality=False, return_state=True)
        result = outcome(state)
        assert state.is_completed(), (result.error, result.issues)
        [restored] = result.redis
        assert restored.proven and restored.loaded_keys == restored.expected_keys == 408, restored
        memory = {s.name: s for s in result.scorecard}["Memory/Learning System"]
        assert memory.backed_by == ["redis memory"] and memory.status == "met", memory
        assert memory.rto_seconds is not None and memory.rpo_seconds is not None
        assert "## Redis (the memory/learning system)" in result_report(result)

        monkeypatch.delenv("RUNBOOKS_REDIS__MEMORY__BACKUP_INTERVAL")  # the default: the nightly set only
        state = dr_game_day_flow(quality=False, return_state=True)
        nightly = {s.name: s for s in outcome(state).scorecard}["Memory/Learning System"]
        assert nightly.status == "missed" and any("backup-redis-15min" in r for r in nightly.reasons), nightly
    finally:
        kill_all(leftover_servers(tmp_path))
    assert leftover_servers(Path(load_settings().drill_root)) == []


def result_report(result: Any) -> str:
    from runbooks.flows.dr_game_day import render_report

    return render_report(result)


def test_the_rdb_is_streamed_while_redis_writes_it_and_checked_whole(live: RedisServer) -> None:
    """On the Redis host the save's temporary file is read as the child writes it (what lets compression overlap
    Redis' own serialization); the backup is the whole RDB all the same: every key, the checksum good."""
    live.client().config_set("rdb-key-save-delay", "500")  # Redis' own test knob: 0.5 ms per key saved
    item = back_up_redis()
    [manifest] = catalog().list_backups(kind="redis", name="memory")
    assert manifest.backup_id == item.backup_id
    assert manifest.redis is not None and manifest.redis.while_saving, manifest.redis
    assert manifest.redis.key_count == 408
    live.client().config_set("rdb-key-save-delay", "0")
    state, result = redis_restore(instance="memory")
    try:
        assert state.is_completed() and result.check.passed, result.check
    finally:
        kill_all(leftover_servers(Path(result.workdir or "/nonexistent").parent))


def test_a_replace_whose_load_outlasts_the_timeout_waits_for_it_and_puts_everything_back(
        live: RedisServer, tmp_path: Path) -> None:
    """Once the live instance loads the copy's data its old data is gone: the replace never gives up half-way (a
    read-only replica of a stopped copy, refusing writes). Its own masteruser/masterauth are put back."""
    item = back_up_redis()
    client = live.client()
    client.config_set("masteruser", "replicator")  # its own replication settings, which the replace must keep
    client.config_set("key-load-delay", "15000")  # Redis' test knob: 15 ms per key loaded (~6 s for 408 keys)
    try:
        state, result = redis_restore(instance="memory", backup_id=item.backup_id, target="replace",
                                      confirm=redis_restore(instance="memory", backup_id=item.backup_id,
                                                            target="replace", dry_run=True)[1].plan.plan_hash,
                                      sync_timeout_seconds=5)
        assert state.is_completed(), result
        assert client.info("replication")["role"] == "master"
        assert client.config_get("masteruser")["masteruser"] == "replicator"
        assert client.config_get("masterauth")["masterauth"] == ""
        client.set("writable", "again")
        assert leftover_servers(tmp_path) == []
    finally:
        client.config_set("key-load-delay", "0")
        kill_all(leftover_servers(tmp_path))


def test_a_save_killed_half_way_fails_the_backup_and_lists_nothing(live: RedisServer) -> None:
    """A FLUSHALL kills a running BGSAVE and Redis still says 'ok' of the last save: the backup says the save was
    aborted instead of listing a half file or the previous one as new."""
    import threading

    client = live.client()
    client.config_set("rdb-key-save-delay", "20000")  # 20 ms per key: an 8 s save
    timer = threading.Timer(1.5, lambda: live.client().flushall())
    timer.start()
    try:
        state, result = run_backup(include_databases=False, include_cluster=False)
    finally:
        timer.join()
        client.config_set("rdb-key-save-delay", "0")
    assert state.is_failed()
    [item] = result.items
    assert "aborted" in (item.error or "") or "redis-check-rdb rejects" in (item.error or ""), item.error
    assert catalog().list_backups(kind="redis") == []
