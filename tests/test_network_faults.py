"""Drills: the network misbehaves between the runbooks and PostgreSQL, the S3 server and the trading API
(tests/faultproxy.py on loopback). A backup or restore either completes whole after its retries or fails cleanly:
no partial backup listed, no half-restored database in place, the source untouched. Trading is never assumed
halted without the status saying so."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from runbooks.adapters.catalog import BackupCatalog
from runbooks.flows.backup import BackupResult
from runbooks.frame import outcome
from runbooks.settings import load_settings
from runbooks_sandbox import SandboxState
from runbooks_sandbox.environment import BUCKET
from tests.disks import tmpfs
from tests.faultproxy import FaultProxy, s3_error
from tests.pgfixtures import (
    admin_dsn,
    content_checksums,
    create_bulk_db,
    create_fidelity_db,
    databases,
    drop_db,
    drop_db_and_copies,
    set_database_env,
)
from tests.processes import children_named, runbooks_command, wait_for
from tests.repositories import catalog
from tests.runs import restore, run_backup, without_retry_delays

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bulk(sandbox: SandboxState) -> Iterator[tuple[str, dict[str, str]]]:
    """~15 MB of poorly compressible rows (a multipart upload at 5 MiB parts), and its checksums."""
    name = create_bulk_db(sandbox, rows=150_000, prefix="faults", primary_key=True)
    yield name, content_checksums(sandbox, name)
    drop_db_and_copies(sandbox, name)


def backup(name: str) -> tuple[Any, BackupResult]:
    """A backup of the one database ``name``, nothing of the cluster."""
    return run_backup(databases=[name], include_cluster=False)


def assert_whole(sandbox: SandboxState, name: str, sums: dict[str, str]) -> None:
    """The one listed backup verifies and restores (through the runbook, directly) to the source's rows."""
    [listed] = catalog().list_backups()
    assert listed.name == name
    target = f"{name}_check_{uuid.uuid4().hex[:4]}"
    state, result = restore(database=name, mode="new", target_database=target)
    assert state.is_completed(), result
    assert content_checksums(sandbox, target) == sums
    drop_db(sandbox, target)


def assert_nothing_left(cat: BackupCatalog) -> None:
    assert cat.list_backups() == []
    assert cat.unfinished() == []
    assert cat.repository.list_incomplete_uploads("") == []


# -- S3 ----------------------------------------------------------------------------------------------------


@pytest.fixture
def s3_proxy(sandbox: SandboxState, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """This test's S3 prefix reached through a fault proxy in front of moto's server (HTTP mode, no rule yet)."""
    assert sandbox.s3_config_path and sandbox.s3_port
    proxy = FaultProxy(("127.0.0.1", sandbox.s3_port), http_rule=lambda _m, _p: None)
    monkeypatch.setenv("RUNBOOKS_CONFIG", sandbox.s3_config_path)
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", f"s3://{BUCKET}/faults-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__PART_SIZE_MB", "5")
    with proxy:
        yield proxy


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the dump task's retry policy (count, condition) but not its real-world delays (2 to 16 s)."""
    from runbooks.tasks.postgres import dump_database

    without_retry_delays(monkeypatch, dump_database)


@pytest.fixture
def one_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dump task retries once, not four times: where S3 keeps failing, each attempt already waits through
    botocore's own five (~20 s), and the drill is about failing cleanly, not about the count."""
    from runbooks.tasks.postgres import dump_database

    monkeypatch.setattr(dump_database, "retries", 1)


def first_attempt_fails(status: int, code: str, methods: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """A rule answering ``status``/``code`` to the first attempt of every request of ``methods`` (by method, path
    and query: each part of a multipart upload fails once), as S3 does under load."""
    seen: set[tuple[str, str]] = set()
    lock = threading.Lock()

    def rule(method: str, path: str):  # type: ignore[no-untyped-def]
        with lock:
            if method not in methods or (method, path) in seen:
                return None
            seen.add((method, path))
        return s3_error(status, code)

    return rule


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError"),
                                              (503, "ServiceUnavailable")])
def test_s3_errors_on_every_write_are_retried_and_the_backup_is_whole(
        sandbox: SandboxState, bulk: tuple[str, dict[str, str]], s3_proxy: FaultProxy,
        monkeypatch: pytest.MonkeyPatch, status: int, code: str) -> None:
    name, sums = bulk
    set_database_env(monkeypatch, sandbox, name)
    s3_proxy.http_rule = first_attempt_fails(status, code, ("PUT", "POST"))
    state, result = backup(name)
    assert state.is_completed(), result
    parts = [a for a in s3_proxy.counts.answered if "partNumber=" in a or "uploadId" in a]
    assert len(s3_proxy.counts.answered) >= 4 and parts, s3_proxy.counts.answered  # the faults really fired
    s3_proxy.http_rule = first_attempt_fails(status, code, ("GET", "HEAD"))
    assert_whole(sandbox, name, sums)
    assert any(a.startswith("GET") for a in s3_proxy.counts.answered)  # the restore's reads were refused once too


def test_s3_failing_every_completion_fails_the_backup_cleanly_and_the_next_run_is_whole(
        sandbox: SandboxState, bulk: tuple[str, dict[str, str]], s3_proxy: FaultProxy,
        monkeypatch: pytest.MonkeyPatch, fast_retries: None, one_retry: None) -> None:
    name, sums = bulk
    set_database_env(monkeypatch, sandbox, name)
    # Every part lands; completing the multipart upload answers 503 SlowDown, every time.
    s3_proxy.http_rule = lambda method, path: (s3_error(503, "SlowDown")
                                               if method == "POST" and "uploadId=" in path else None)
    state, result = backup(name)
    assert state.is_failed()
    [item] = result.items
    assert item.status == "failed" and "S3" in (item.error or ""), item
    completions = [a for a in s3_proxy.counts.answered if a.startswith("POST") and "uploadId=" in a]
    assert len(completions) >= 2 * 5  # botocore's attempts, in each of the task's (here 2: see below)
    assert_nothing_left(catalog())  # no listed partial backup, no multipart upload left open
    s3_proxy.http_rule = lambda _m, _p: None
    state, result = backup(name)
    assert state.is_completed(), result
    assert_whole(sandbox, name, sums)


def test_connections_cut_mid_upload_and_mid_download_are_retried_and_nothing_is_half(
        sandbox: SandboxState, bulk: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw TCP proxy cutting the connection after 2 MB (mid-part), three times."""
    name, sums = bulk
    assert sandbox.s3_config_path and sandbox.s3_port
    set_database_env(monkeypatch, sandbox, name)
    with FaultProxy(("127.0.0.1", sandbox.s3_port)) as proxy:
        monkeypatch.setenv("RUNBOOKS_CONFIG", sandbox.s3_config_path)
        monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", f"s3://{BUCKET}/cuts-{uuid.uuid4().hex[:12]}")
        monkeypatch.setenv("RUNBOOKS_REPOSITORY__ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("RUNBOOKS_REPOSITORY__PART_SIZE_MB", "5")
        proxy.cut_after, proxy.cuts = 2 * 1024 * 1024, 3
        state, result = backup(name)
        assert state.is_completed(), result
        assert proxy.counts.cut == 3
        proxy.cut_after, proxy.cuts = 1024 * 1024, 2  # now mid-download
        assert_whole(sandbox, name, sums)
        assert proxy.counts.cut == 5


# -- PostgreSQL --------------------------------------------------------------------------------------------


@pytest.fixture
def pg_proxy(sandbox: SandboxState) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", sandbox.postgres_port)) as proxy:
        yield proxy


def test_a_slow_link_to_postgres_still_gives_a_whole_backup(
        config: SandboxState, bulk: tuple[str, dict[str, str]], pg_proxy: FaultProxy,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name, sums = bulk
    set_database_env(monkeypatch, config, name, port=pg_proxy.port)
    pg_proxy.latency = 0.005  # per chunk, both ways
    state, result = backup(name)
    assert state.is_completed(), result
    pg_proxy.latency = 0
    set_database_env(monkeypatch, config, name)
    assert_whole(config, name, sums)


def test_a_connection_cut_mid_dump_never_lists_a_partial_backup(
        config: SandboxState, bulk: tuple[str, dict[str, str]], pg_proxy: FaultProxy,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name, sums = bulk
    set_database_env(monkeypatch, config, name, port=pg_proxy.port)
    pg_proxy.cut_after, pg_proxy.cuts = 4 * 1024 * 1024, 1
    state, result = backup(name)
    assert pg_proxy.counts.cut == 1
    assert state.is_completed(), result  # the dump task's retry made a whole one
    set_database_env(monkeypatch, config, name)
    assert_whole(config, name, sums)


def test_refused_connections_fail_the_backup_cleanly(
        config: SandboxState, bulk: tuple[str, dict[str, str]], pg_proxy: FaultProxy,
        monkeypatch: pytest.MonkeyPatch, fast_retries: None) -> None:
    name, _sums = bulk
    set_database_env(monkeypatch, config, name, port=pg_proxy.port)
    pg_proxy.down()
    state, result = backup(name)
    assert state.is_failed()
    assert "unreachable" in (result.items[0].error or "") or "connect" in (result.items[0].error or "").lower()
    assert_nothing_left(catalog())


def test_a_connection_cut_mid_restore_leaves_no_half_restored_database(
        config: SandboxState, bulk: tuple[str, dict[str, str]], pg_proxy: FaultProxy,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name, sums = bulk
    set_database_env(monkeypatch, config, name)
    state, result = backup(name)
    assert state.is_completed(), result
    set_database_env(monkeypatch, config, name, port=pg_proxy.port)
    target = f"{name}_cut"
    pg_proxy.cut_after, pg_proxy.cuts = 6 * 1024 * 1024, 1
    state, result = restore(database=name, mode="new", target_database=target)
    assert pg_proxy.counts.cut == 1
    if state.is_completed():  # the restore step retried from a fresh scratch copy
        assert content_checksums(config, target) == sums
    else:
        assert target not in databases(config)
    assert not [db for db in databases(config) if db.startswith(name) and db not in (name, target)], \
        databases(config)  # no scratch copy left
    assert content_checksums(config, name) == sums  # the source untouched


def test_postgres_stopped_mid_dump_and_mid_restore(
        config: SandboxState, bulk: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A real stop (`pg_ctl stop -m fast`) while pg_dump, then pg_restore, streams; started again 1 s later."""
    name, sums = bulk
    set_database_env(monkeypatch, config, name)
    cluster = config.cluster()

    frozen: list[int] = []

    def rows_copied(database: str) -> int:
        """Bytes COPY has sent into ``database`` so far (pg_stat_progress_copy), or 0."""
        with psycopg.connect(admin_dsn(config)) as conn:
            row = conn.execute("SELECT coalesce(sum(p.bytes_processed), 0) FROM pg_stat_progress_copy p "
                               "JOIN pg_database d ON d.oid = p.datid WHERE d.datname LIKE %s",
                               [f"{database.split('_bounced')[0]}_restore_%"]).fetchone()
        return int(row[0]) if row else 0

    def bytes_copied_out(database: str) -> int:
        """Bytes pg_dump's COPY TO has read out of ``database`` so far: midway by the server's own progress (the
        repository lists no write in flight, so its objects cannot tell)."""
        with psycopg.connect(admin_dsn(config)) as conn:
            row = conn.execute("SELECT coalesce(sum(p.bytes_processed), 0) FROM pg_stat_progress_copy p "
                               "JOIN pg_database d ON d.oid = p.datid WHERE d.datname = %s "
                               "AND p.command = 'COPY TO'", [database]).fetchone()
        return int(row[0]) if row else 0

    def bounce(tool: str, processes: int, midway: Callable[[], bool]) -> threading.Thread:
        """Freeze ``tool`` (its ``processes``: pg_restore -j 2 is three) once ``midway()``, stop the server under
        it, start it, let the tool go on: its connections are gone, whatever it was sending. An idle machine
        dumps these 16 MB in 0.3 s, so the tool runs in 10 ms slices until it is midway (never on a timer)."""
        def run() -> None:
            pids: list[int] = wait_for(lambda: len(children_named(os.getpid(), tool)) >= processes  # type: ignore[assignment]
                                       and children_named(os.getpid(), tool), timeout=120, interval=0.002)
            try:
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                while not midway():
                    for pid in pids:
                        os.kill(pid, signal.SIGCONT)
                    time.sleep(0.01)
                    for pid in pids:
                        os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:  # it finished before it was ever seen midway: the assertion says so
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                return
            frozen.extend(pids)
            cluster.stop()
            cluster.start()
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    try:
        thread = bounce("pg_dump", 1, lambda: bytes_copied_out(name) > 0)
        state, result = backup(name)
        thread.join(timeout=120)
        assert not thread.is_alive() and frozen, "pg_dump was never caught midway"
        assert state.is_completed(), result  # the dump task retried once the server was back
        [listed] = catalog().list_backups()

        target = f"{name}_bounced"
        thread = bounce("pg_restore", 3, lambda: rows_copied(target) > 0)
        state, result = restore(database=name, mode="new", target_database=target)
        thread.join(timeout=120)
        assert not thread.is_alive() and len(frozen) > 1, "pg_restore was never caught midway"
        if state.is_completed():
            assert content_checksums(config, target) == sums
            drop_db(config, target)
        else:
            assert target not in databases(config)
            state, result = restore(database=name, mode="new", target_database=target)
            assert state.is_completed(), result  # the next run sweeps the scratch and completes
            assert content_checksums(config, target) == sums
            drop_db(config, target)
        assert not [db for db in databases(config) if db.startswith(name) and db != name], databases(config)
        assert content_checksums(config, name) == sums
        assert [m.backup_id for m in catalog().list_backups()] == [listed.backup_id]
    finally:
        if not cluster.is_running():
            cluster.start()


# -- the trading API ---------------------------------------------------------------------------------------


@pytest.fixture
def api_proxy(sandbox: SandboxState, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The trading API (and the inference API: the simulator serves both) reached through a fault proxy."""
    assert sandbox.simulator_port
    with FaultProxy(("127.0.0.1", sandbox.simulator_port), http_rule=lambda _m, _p: None) as proxy:
        monkeypatch.setenv("RUNBOOKS_TRADING_API__BASE_URL", f"http://127.0.0.1:{proxy.port}")
        yield proxy


def lying_switch(path_suffix: str):  # type: ignore[no-untyped-def]
    """A platform (or a proxy in front of it) that answers 200 to a halt and does nothing."""
    def rule(method: str, path: str):  # type: ignore[no-untyped-def]
        if method == "POST" and path.endswith(path_suffix):
            return 200, "OK", {"Content-Type": "application/json"}, b'{"trading_mode": "halted", "ok": true}'
        return None
    return rule


def test_a_kill_switch_that_does_not_take_is_never_assumed(
        config: SandboxState, api_proxy: FaultProxy, simulator: httpx.Client) -> None:
    from runbooks.core.errors import TradingApiUnavailable
    from runbooks.tasks.trading_api import halt_trading as halt
    from runbooks.tasks.trading_api import pause_trading as pause

    halt_trading, pause_trading = halt.with_options(retries=0), pause.with_options(retries=0)
    settings = load_settings()
    api_proxy.http_rule = lying_switch("/kill-switch")
    with pytest.raises(TradingApiUnavailable, match="still reads trading_mode='running'"):
        halt_trading(api=settings.trading_api, reason="drill", actor="drill")
    api_proxy.http_rule = lying_switch("/pause")
    with pytest.raises(TradingApiUnavailable, match="still reads"):
        pause_trading(api=settings.trading_api, reason="drill", actor="drill")
    assert simulator.get("/api/v1/operations/status").json()["trading_mode"] == "running"
    api_proxy.http_rule = lambda _m, _p: None  # an honest platform: the read-back agrees
    status = halt_trading(api=settings.trading_api, reason="drill", actor="drill")
    assert status["trading_mode"] == "halted" and status["paused_by"] == "drill"


def test_a_slow_trading_api_is_waited_for_within_the_timeout(
        config: SandboxState, api_proxy: FaultProxy, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from runbooks.tasks.trading_api import pause_trading as pause
    from runbooks.tasks.trading_api import read_trading_status as read

    pause_trading, read_trading_status = pause.with_options(retries=0), read.with_options(retries=0)

    monkeypatch.setenv("RUNBOOKS_TRADING_API__TIMEOUT_SECONDS", "2")
    settings = load_settings()
    api_proxy.latency = 0.5  # under the timeout: answered
    status = pause_trading(api=settings.trading_api, reason="drill", actor="drill")
    assert status["trading_mode"] == "paused"
    api_proxy.latency = 3  # over it: a transient error the task retries, never a hang
    from runbooks.core.errors import TradingApiUnavailable
    with pytest.raises(TradingApiUnavailable, match="unreachable"):
        read_trading_status(api=settings.trading_api)


def test_a_replace_restore_whose_halt_does_not_take_never_swaps(
        config: SandboxState, bulk: tuple[str, dict[str, str]], api_proxy: FaultProxy,
        simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kill switch answers yes and does nothing: the swap must not happen (the live database is untouched),
    and the run says so; it never resumes what it never held."""
    from runbooks.tasks.trading_api import halt_trading

    without_retry_delays(monkeypatch, halt_trading)
    name, sums = bulk
    set_database_env(monkeypatch, config, name)
    state, result = backup(name)
    assert state.is_completed(), result
    plan_state, plan = restore(database=name, mode="replace", dry_run=True)
    assert plan_state.is_completed(), plan
    api_proxy.http_rule = lying_switch("/kill-switch")
    before = {db for db in databases(config) if db.startswith(name)}
    state, result = restore(database=name, mode="replace", confirm=plan.plan.plan_hash)
    assert state.is_failed(), result
    assert "kill switch" in (result.error or ""), result.error
    assert content_checksums(config, name) == sums
    assert {db for db in databases(config) if db.startswith(name)} == before  # scratch dropped, nothing swapped
    posts = [c["path"] for c in simulator.get("/_control/state").json()["calls"] if c["method"] == "POST"]
    assert not any(p.endswith("/resume") for p in posts)


def test_model_rollback_with_the_inference_api_down_retries_then_fails_and_changes_nothing(
        config: SandboxState, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch,
        webhook: tuple[list[dict[str, Any]], str]) -> None:
    from runbooks.flows.model_rollback import model_rollback_flow
    from runbooks.tasks.models import read_evidence, read_serving, request_rollback

    without_retry_delays(monkeypatch, read_serving, read_evidence, request_rollback)
    received, _canary = webhook
    simulator.post("/_control/metrics", json={"metrics": {"sharpe_ratio": 0.22, "win_rate": 0.31,
                                                          "error_rate": 0.02}}).raise_for_status()
    assert simulator.get("/api/v1/models/router/status").json()["active_version"] == "v4"
    with FaultProxy(("127.0.0.1", config.simulator_port or 0)) as proxy:
        monkeypatch.setenv("RUNBOOKS_INFERENCE_API__BASE_URL", f"http://127.0.0.1:{proxy.port}")
        proxy.down()
        state = model_rollback_flow(monitor_minutes=0, poll_seconds=0.2,
                                    return_state=True)
        result = outcome(state)
    assert state.is_failed()
    assert "unreachable" in (result.error or ""), result.error
    assert simulator.get("/api/v1/models/router/status").json()["active_version"] == "v4"  # nothing half-done
    assert not [c for c in simulator.get("/_control/state").json()["calls"] if c["method"] == "POST"
                and c["path"].startswith("/api/v1/models")]
    [message] = received  # escalated once the retries ran out
    assert "[P1] INCIDENT: model-rollback: inference API unreachable" in message["text"]
    assert result.notification and result.notification.startswith("notified")


# -- the repository's disk -------------------------------------------------------------------------------


@pytest.fixture
def small_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: SandboxState) -> Iterator[Path]:
    """The local repository on a 6 MB tmpfs: the dump (8 MB stored) cannot fit."""
    with tmpfs(tmp_path / "disk", size_mb=6) as mount:
        monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", (mount / "repository").as_uri())
        yield mount


def test_a_full_repository_disk_fails_the_backup_cleanly_and_frees_what_it_wrote(
        config: SandboxState, bulk: tuple[str, dict[str, str]], small_repository: Path,
        monkeypatch: pytest.MonkeyPatch, fast_retries: None) -> None:
    name, _sums = bulk
    set_database_env(monkeypatch, config, name)
    state, result = backup(name)
    assert state.is_failed()
    [item] = result.items
    assert "space" in (item.error or "").lower(), item.error
    assert_nothing_left(catalog())
    used = shutil.disk_usage(small_repository).used
    assert used < 512 * 1024, f"{used} bytes left behind on the full disk"
    small = create_fidelity_db(config)  # the freed disk takes a backup that fits
    try:
        set_database_env(monkeypatch, config, small)
        state, result = backup(small)
        assert state.is_completed(), result
        assert [m.name for m in catalog().list_backups()] == [small]
    finally:
        drop_db(config, small)


# -- issue 24: the trading API down past every retry -------------------------------------------------------------
FAST_STATUS_RETRIES = """
from runbooks.tasks.trading_api import read_trading_status
read_trading_status.retry_delay_seconds = [0.05] * 4  # the count and the condition stay; only the waits go
"""


def test_the_trading_api_down_past_its_retries_says_what_to_do_next_without_a_traceback(
        config: SandboxState, simulator: httpx.Client, prefect_api: str) -> None:
    """Every status read answers 503. Each retry's note may say the task retries; once the retries are spent the
    error says so and what to do (check the API at its URL, run again), and the CLI prints no traceback."""
    backup_state, backed_up = run_backup(databases=["trading_db"], include_cluster=False)
    assert backup_state.is_completed(), backed_up
    url = load_settings().trading_api.base_url  # type: ignore[union-attr]
    simulator.post("/_control/failures", json={"path_prefix": "/api/v1/operations", "status": 503,
                                               "count": 100}).raise_for_status()
    try:
        proc = subprocess.run(
            runbooks_command("run", "restore", "--param", "database=trading_db", "--param", "mode=replace",
                             "--param", "dry_run=true", before=FAST_STATUS_RETRIES),
            env={**os.environ, "PREFECT_API_URL": prefect_api}, capture_output=True, text=True, timeout=300)
    finally:
        simulator.post("/_control/reset").raise_for_status()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    assert "Retry 4/4" in proc.stderr  # the retries did happen
    [error] = [line for line in proc.stdout.splitlines() if "Error:" in line]
    assert "answered 503" in error and "5 attempts failed, no retry follows" in error and url in error, error
    assert "the task retries" not in proc.stdout, proc.stdout
    final = [line for line in proc.stderr.splitlines() if "Finished in state Failed" in line][-1]
    assert "no retry follows" in final and "the task retries" not in final, final


def test_the_last_attempt_of_a_trading_task_carries_the_operators_hint(config: SandboxState,
                                                                      simulator: httpx.Client) -> None:
    from runbooks.core.errors import TradingApiUnavailable
    from runbooks.tasks.trading_api import halt_trading, read_trading_status

    settings = load_settings()
    simulator.post("/_control/failures", json={"path_prefix": "/api/v1/operations", "status": 503,
                                               "count": 100}).raise_for_status()
    try:
        with pytest.raises(TradingApiUnavailable) as read:
            read_trading_status.with_options(retries=1, retry_delay_seconds=0)(api=settings.trading_api)
        with pytest.raises(TradingApiUnavailable) as halt:
            halt_trading.with_options(retries=0)(api=settings.trading_api, reason="drill", actor="drill")
    finally:
        simulator.post("/_control/reset").raise_for_status()
    assert read.value.attempts == 2 and "2 attempts failed" in str(read.value) and "retries" not in str(read.value)
    assert halt.value.attempts == 1 and "kill switch is not confirmed" in str(halt.value)
    assert simulator.get("/api/v1/operations/status").json()["trading_mode"] == "running"


# -- issue 26: a frozen trading API is reported within the retry budget ------------------------------------------
def test_a_frozen_trading_api_fails_the_step_within_the_retry_budget(
        config: SandboxState, api_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API accepts the connection and reads the request, then never answers. Each attempt used to wait the
    whole read timeout and the task retried 4 times with 2-16 s between (2 min 45 s to page over two reads); now
    the task, retries included, gives up within ``retry_budget_seconds``, with the operator's hint."""
    from runbooks.adapters.trading import TradingApi
    from runbooks.core.errors import TradingApiUnavailable
    from runbooks.tasks.trading_api import read_trading_status

    thaw = threading.Event()
    api_proxy.http_rule = lambda _m, _p: thaw.wait(120) and None  # frozen until the test ends
    monkeypatch.setenv("RUNBOOKS_TRADING_API__TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("RUNBOOKS_TRADING_API__RETRY_BUDGET_SECONDS", "8")  # room for two attempts
    api = load_settings().trading_api
    assert api is not None and api.retry_budget_seconds == 8
    try:
        with pytest.raises(TradingApiUnavailable) as frozen:  # the task's own retry policy: 4 retries, 2-16 s
            read_trading_status(api=api)
        calls = api_proxy.counts.connections
        with pytest.raises(TradingApiUnavailable, match="not called"):  # a spent budget calls nothing more
            TradingApi(api, deadline=time.monotonic() - 1).status()
        assert api_proxy.counts.connections == calls
    finally:
        thaw.set()
    # Without the budget the task's policy makes 5 attempts (2 s read timeouts, 30 s of delays); the budget cuts it.
    assert frozen.value.attempts is not None and 2 <= frozen.value.attempts < 5, frozen.value
    assert calls == frozen.value.attempts  # each attempt reached the frozen API (one connection each)
    assert "ReadTimeout" in str(frozen.value) and "no retry follows" in str(frozen.value)
    assert "retry_budget_seconds" in str(frozen.value) and api.base_url in str(frozen.value)
