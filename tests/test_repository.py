"""The backup repository under concurrency, staleness, damage and snooping (issue 7's defects), local and S3."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runbooks.adapters.catalog import BackupCatalog, BackupClaim
from runbooks.adapters.workdirs import OWNER
from runbooks.core.errors import LockLost
from runbooks.flows.backup import BackupResult
from runbooks_sandbox import SandboxState
from tests.pgfixtures import create_bulk_db, drop_db_and_copies, set_database_env
from tests.processes import kill_run_at, wait_for
from tests.repositories import catalog, configured_repository_path, local_repository_path
from tests.runs import restore, run_backup

SUBJECTS = [("database", "trading_db"), ("cluster", "main")]
MOMENT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


@pytest.fixture(params=["local", "s3"])
def repo_config(request: pytest.FixtureRequest) -> SandboxState:
    return request.getfixturevalue("config" if request.param == "local" else "s3_config")  # type: ignore[no-any-return]


def backup(*databases: str, cluster: bool = False, retention: bool = False) -> BackupResult:
    """A backup of ``databases`` that must succeed."""
    state, result = run_backup(databases=list(databases), include_cluster=cluster, apply_retention=retention)
    assert state.is_completed() and result.succeeded, result
    return result


# -- 1. backup ids are claimed atomically; a run deletes only what it wrote ---------------------------------------
def test_racing_claims_never_share_a_backup_id(repo_config: SandboxState) -> None:
    """Six runs starting in the same second: six ids, each directory locked by exactly its own run."""
    cat = catalog()
    start = threading.Barrier(6)
    claims: list[BackupClaim] = []
    errors: list[BaseException] = []

    def racer() -> None:
        other = catalog()  # its own client, as another process would have
        start.wait()
        try:
            claims.append(other.claim(SUBJECTS, flow_run_id=None, now=MOMENT))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len({c.backup_id for c in claims}) == 6
        for c in claims:
            for kind, name in SUBJECTS:
                assert cat.read_lock(c.prefix(kind, name)) == c.token
    finally:
        for c in claims:
            c.close()
    assert cat.unfinished() == []  # closing a claim that wrote nothing leaves nothing


def test_a_write_in_flight_is_no_leftover_but_one_a_killed_writer_left_is(config: SandboxState) -> None:
    """Another run's atomic write between its temporary file and the link (seen in CI: two backups in the same
    second) must not read as a lockless leftover, or a sweep deletes the file under the writer; an hour-old one
    was left by a killed writer and is swept."""
    cat = catalog()
    root = configured_repository_path()
    prefix = root / "databases" / "trading_db" / "20260101T000000Z"
    prefix.mkdir(parents=True)
    in_flight = prefix / f".lock.json.{uuid.uuid4().hex}.tmp"
    in_flight.write_bytes(b"{}")
    assert cat.stale_leftovers(stale_after=timedelta(minutes=5)) == []
    hour_ago = time.time() - 3700
    os.utime(in_flight, (hour_ago, hour_ago))
    [left] = cat.stale_leftovers(stale_after=timedelta(minutes=5))
    assert left.keys == [str(in_flight.relative_to(root))] and cat.remove_leftover(left)
    assert not in_flight.exists()


def test_a_claim_never_reuses_the_id_of_a_finished_backup(repo_config: SandboxState) -> None:
    cat = catalog()
    cat.repository.put_bytes("databases/trading_db/20260302T020000Z/manifest.json", b"{}")  # lock long gone
    claim = cat.claim(SUBJECTS, flow_run_id=None, now=MOMENT)
    try:
        assert claim.backup_id == "20260302T020001Z"
    finally:
        claim.close()
    assert cat.repository.exists("databases/trading_db/20260302T020000Z/manifest.json")


def test_discard_deletes_only_what_the_run_wrote(repo_config: SandboxState) -> None:
    cat = catalog()
    claim = cat.claim([("database", "trading_db")], flow_run_id=None, now=MOMENT)
    prefix = claim.prefix("database", "trading_db")
    cat.repository.put_bytes(f"{prefix}/dump.pgc.zst", b"ours")
    cat.repository.put_bytes(f"{prefix}/evidence.txt", b"someone else's")
    cat.discard(claim, "database", "trading_db", [f"{prefix}/dump.pgc.zst"])
    claim.close()
    keys = sorted(o.key for o in cat.repository.list_objects(prefix + "/"))
    assert keys == [f"{prefix}/evidence.txt"]


def test_a_lost_claim_is_never_published(repo_config: SandboxState) -> None:
    """If another run swept or replaced the lock, this run's manifest is not written over whatever is there."""
    cat = catalog()
    claim = cat.claim([("database", "trading_db")], flow_run_id=None, now=MOMENT, heartbeat_seconds=0.2)
    prefix = claim.prefix("database", "trading_db")
    try:
        cat.repository.put_bytes(f"{prefix}/lock.json", b'{"token": "someone else"}')
        time.sleep(0.6)  # the heartbeat notices and stops refreshing a lock it no longer holds
        assert json.loads(cat.repository.get_bytes(f"{prefix}/lock.json")) == {"token": "someone else"}
        with pytest.raises(LockLost):
            claim.ensure("database", "trading_db")
    finally:
        claim.close()
    assert cat.repository.exists(f"{prefix}/lock.json")  # not ours: not deleted either


def test_parallel_backup_runs_each_publish_their_own_verified_backup(
    config: SandboxState, prefect_api: str, tmp_path: Path
) -> None:
    """Three `runbooks run backup` processes at once, as the issue reproduced the collision."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    logs = [tmp_path / f"run{i}.log" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-m", "runbooks.cli", "run", "backup", "--json", "--param",
                               'databases=["trading_db"]', "--param", "apply_retention=false"],
                              env=env, stdout=subprocess.PIPE, stderr=log.open("w")) for log in logs]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    failed = [(o[-3000:], log.read_text()[-3000:]) for p, o, log in zip(procs, outputs, logs, strict=True)
              if p.returncode != 0]
    assert failed == []
    results = [json.loads(o) for o in outputs]
    ids = {r["items"][0]["backup_id"] for r in results} | {r["items"][1]["backup_id"] for r in results}
    cat = catalog()
    manifests = cat.list_backups()
    assert len(ids) == 3 and {m.backup_id for m in manifests} == ids
    assert len(manifests) == 6 and all(m.verified for m in manifests)  # a database and a cluster backup each
    assert cat.unfinished() == []


# -- 2. stale means no heartbeat, not old -------------------------------------------------------------------------
def _foreign_lock(cat: BackupCatalog, prefix: str, *, started: datetime, beat: datetime) -> None:
    lock = {"token": uuid.uuid4().hex, "writer": {"host": "another-host", "pid": 1, "started": None},
            "started_at": started.isoformat(), "heartbeat_at": beat.isoformat(), "flow_run_id": None}
    cat.repository.put_bytes(f"{prefix}/lock.json", json.dumps(lock).encode())
    cat.repository.put_bytes(f"{prefix}/dump.pgc.zst", b"a slow dump in progress")


def test_a_long_backup_on_another_host_with_a_heartbeat_is_not_swept(repo_config: SandboxState) -> None:
    cat = catalog()
    now = datetime.now(UTC)
    _foreign_lock(cat, "databases/trading_db/20260101T000000Z", started=now - timedelta(days=2), beat=now)
    assert cat.stale_leftovers(stale_after=timedelta(minutes=10)) == []
    # Once the heartbeat stops for longer than stale_after, it is a leftover.
    [stale] = cat.stale_leftovers(stale_after=timedelta(minutes=10), now=now + timedelta(minutes=11))
    assert stale.prefix == "databases/trading_db/20260101T000000Z" and "no heartbeat" in stale.reason


def test_the_heartbeat_refreshes_a_running_claim(repo_config: SandboxState) -> None:
    cat = catalog()
    claim = cat.claim([("database", "trading_db")], flow_run_id=None, heartbeat_seconds=0.2)
    try:
        key = f"{claim.prefix('database', 'trading_db')}/lock.json"
        first = json.loads(cat.repository.get_bytes(key))["heartbeat_at"]
        wait_for(lambda: json.loads(cat.repository.get_bytes(key))["heartbeat_at"] > first, timeout=10)
    finally:
        claim.close()


# -- 3. a damaged manifest is shown, never hidden -----------------------------------------------------------------
def test_a_truncated_manifest_is_listed_as_damaged_and_latest_refuses_to_skip_it(
    repo_config: SandboxState, prefect_api: str, request: pytest.FixtureRequest
) -> None:
    first = backup("trading_db").items[0].backup_id
    second = backup("trading_db").items[0].backup_id
    cat = catalog()
    key = f"databases/trading_db/{second}/manifest.json"
    cat.repository.put_bytes(key, cat.repository.get_bytes(key)[:100])

    scan = cat.scan()
    assert [m.backup_id for m in scan.manifests] == [first]
    [damaged] = scan.damaged
    assert (damaged.backup_id, damaged.name) == (second, "trading_db")
    assert [o.key for o in damaged.objects] == [f"databases/trading_db/{second}/dump.pgc.zst"]

    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    listing = subprocess.run([sys.executable, "-m", "runbooks.cli", "backups", "list"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 1, listing
    assert second in listing.stdout and "DAMAGED" in listing.stdout
    assert "damaged" in listing.stderr.lower() and "Traceback" not in listing.stderr
    as_json = subprocess.run([sys.executable, "-m", "runbooks.cli", "backups", "list", "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert as_json.returncode == 1
    assert [b.get("status") for b in json.loads(as_json.stdout) if b["backup_id"] == second] == ["damaged"]

    state, result = restore(database="trading_db", mode="new", target_database="trading_db_dmg")
    assert state.is_failed() and second in result.error and "DAMAGED" in result.error
    assert f"backup_id={first}" in result.error  # says how to go on

    # Neither the sweep nor retention removes it; the backup run reports it.
    monkey = request.getfixturevalue("monkeypatch")
    monkey.setenv("RUNBOOKS_BACKUP__RETENTION__DAILY", "0")
    monkey.setenv("RUNBOOKS_BACKUP__RETENTION__WEEKLY", "0")
    monkey.setenv("RUNBOOKS_BACKUP__RETENTION__MONTHLY", "0")
    third = backup("trading_db", retention=True)
    assert third.leftovers == []
    assert third.items[0].retention.damaged == [second]
    assert cat.repository.exists(f"databases/trading_db/{second}/dump.pgc.zst")
    assert second in [d.backup_id for d in cat.scan().damaged]


# -- 4. the local repository is private ---------------------------------------------------------------------------
def test_local_repository_files_are_0600_and_directories_0700(config: SandboxState) -> None:
    old = os.umask(0o022)
    try:
        backup("trading_db", cluster=True)
    finally:
        os.umask(old)
    root = configured_repository_path()
    seen = 0
    for dirpath, _dirs, filenames in os.walk(root):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for name in filenames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) == 0o600, name
            seen += 1
    assert seen >= 4  # dump, manifests, globals.sql.zst


# -- 5. a killed restore's work directory is swept by the next run ------------------------------------------------
@pytest.fixture
def bulk_db(sandbox: SandboxState, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A dump of a few MB: pg_restore is still running when the test kills the run."""
    name = create_bulk_db(sandbox, rows=200_000, random=False)
    set_database_env(monkeypatch, sandbox, name)
    yield name
    drop_db_and_copies(sandbox, name)


def test_a_killed_restore_leaves_a_private_work_dir_that_the_next_run_removes(
    config: SandboxState, bulk_db: str, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "state" / "work"
    monkeypatch.setenv("RUNBOOKS_RESTORE__WORK_DIR", str(work))
    backup(bulk_db)
    kill_run_at([sys.executable, "-m", "runbooks.cli", "run", "restore", "--param", f"database={bulk_db}",
                 "--param", "mode=new", "--param", "restore_globals=never"],
                {**os.environ, "PREFECT_API_URL": prefect_api}, "pg_restore")
    [left] = [p for p in work.iterdir() if (p / OWNER).exists()]
    assert stat.S_IMODE(left.stat().st_mode) == 0o700
    assert (left / "dump.pgc").stat().st_size > 1_000_000
    assert stat.S_IMODE((left / "dump.pgc").stat().st_mode) == 0o600

    bystander = work / "not-ours"
    bystander.mkdir()
    state, result = restore(database=bulk_db, mode="new", target_database=f"{bulk_db}_again",
                            restore_globals="never")
    assert state.is_completed(), result.error
    [swept] = result.work_dirs_swept
    assert swept.path == str(left) and swept.removed and swept.bytes > 1_000_000
    assert not left.exists()
    assert bystander.is_dir()  # no owner record of ours: never touched
    assert [p for p in work.iterdir() if p != bystander] == []  # the run's own work dir is gone too


# -- 6. a mistyped repository is an error, not "no backups" -------------------------------------------------------
@pytest.mark.parametrize("url", ["file:///nonexistent/runbooks-repo", "s3://no-such-bucket-runbooks/x"])
def test_listing_a_repository_that_does_not_exist_is_an_error(
    config: SandboxState, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if url.startswith("s3"):
        assert config.s3_config_path
        monkeypatch.setenv("RUNBOOKS_CONFIG", config.s3_config_path)
    proc = subprocess.run([sys.executable, "-m", "runbooks.cli", "backups", "list"],
                          env={**os.environ, "RUNBOOKS_REPOSITORY__URL": url}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2


# -- 7. a test never turns an s3:// URL into a directory named "s3:" ----------------------------------------------
def test_a_test_reaches_only_into_a_local_repository(tmp_path: Path) -> None:
    """``url.removeprefix("file://")`` on an S3 URL is the relative path ``s3:/bucket/prefix``: a test that did
    that wrote a directory named ``s3:`` into the checkout (and it was committed). The tests' one helper refuses
    every URL that is not a local directory, and no such directory is left in the checkout or pytest's cwd."""
    assert local_repository_path((tmp_path / "a b%").as_uri()) == tmp_path / "a b%"
    assert local_repository_path(f"file://localhost{tmp_path}") == tmp_path
    for url in ("s3://runbooks-backups/test-1", "file://host/srv/backups", "file:relative/path", "/srv/backups"):
        with pytest.raises(ValueError, match="HINT:"):
            local_repository_path(url)
    checkout = Path(__file__).resolve().parents[1]
    leaked = sorted({str(p) for where in (checkout, Path.cwd()) for p in where.iterdir() if p.name.endswith(":")})
    assert leaked == [], "a test turned a URL into a relative path; remove these and fix the test"
