"""Hostile review of the repository's guarantees (claims, locks, sweeps, damage, work dirs).

Each test states the guarantee it attacks. Most build the repository by hand (a LocalRepository in tmp_path, or
a fresh moto S3 prefix) so they run in milliseconds; none runs a flow.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.logging import disable_run_logger

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.processes import ProcessIdentity, _start_time
from runbooks.adapters.repository import open_repository
from runbooks.adapters.repository.local import LocalRepository
from runbooks.adapters.workdirs import OWNER, WorkDirs, WorkOwner
from runbooks.core.errors import BackupDamaged, LockLost, RepositoryNotWritable
from runbooks.decisions.manifest import BackupManifest, StoredObject, Verification, parse_backup_id
from runbooks.settings import load_settings
from runbooks.tasks.storage import resolve_backup_or_raise
from runbooks_sandbox import SandboxState
from tests.processes import wait_for
from tests.repositories import catalog

MOMENT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
STALE = timedelta(minutes=10)


# -- helpers --------------------------------------------------------------------------------------------------------
@pytest.fixture
def local(tmp_path: Path) -> BackupCatalog:
    """A local repository of its own, no sandbox needed."""
    root = tmp_path / "repository"
    root.mkdir(mode=0o700)
    return BackupCatalog(LocalRepository(root))


@pytest.fixture(params=["local", "s3"])
def any_repo(request: pytest.FixtureRequest) -> BackupCatalog:
    request.getfixturevalue("config" if request.param == "local" else "s3_config")
    return catalog()


def make_manifest(name: str, backup_id: str, *, keys: list[str] | None = None, kind: str = "database",
                  verified: bool = True) -> BackupManifest:
    started = parse_backup_id(backup_id)
    prefix = f"{'databases' if kind == 'database' else 'clusters'}/{name}/{backup_id}"
    objects = [StoredObject(role="dump", key=k, format="pg_dump custom", bytes=1, stored_bytes=1, sha256="0" * 64)
               for k in (keys or [f"{prefix}/dump.pgc.zst"])]
    return BackupManifest(backup_id=backup_id, kind=kind, name=name, host="h",  # type: ignore[arg-type]
                          started_at=started, finished_at=started + timedelta(seconds=5), objects=objects,
                          verification=Verification(status="passed" if verified else "failed",
                                                    checked_at=started, seconds=1.0))


def publish_raw(cat: BackupCatalog, manifest: BackupManifest, *, write_objects: bool = True) -> str:
    prefix = f"{'databases' if manifest.kind == 'database' else 'clusters'}/{manifest.name}/{manifest.backup_id}"
    if write_objects:
        for obj in manifest.objects:
            cat.repository.put_bytes(obj.key, f"dump of {manifest.name} {manifest.backup_id}".encode())
    cat.repository.put_bytes(f"{prefix}/manifest.json", manifest.model_dump_json().encode())
    return prefix


def write_lock(cat: BackupCatalog, prefix: str, *, host: str = "another-host", pid: int = 1,
               started: str | None = None, machine: str | None = None, beat: datetime | str,
               dump: bool = True) -> None:
    lock = {"token": uuid.uuid4().hex, "writer": {"host": host, "pid": pid, "started": started, "machine": machine},
            "started_at": beat if isinstance(beat, str) else beat.isoformat(),
            "heartbeat_at": beat if isinstance(beat, str) else beat.isoformat(), "flow_run_id": None}
    cat.repository.put_bytes(f"{prefix}/lock.json", json.dumps(lock).encode())
    if dump:
        cat.repository.put_bytes(f"{prefix}/dump.pgc.zst", b"a dump being written")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def sweep(cat: BackupCatalog, *, now: datetime | None = None) -> list[str]:
    removed = []
    for leftover in cat.stale_leftovers(stale_after=STALE, now=now):
        if cat.remove_leftover(leftover):
            removed.append(leftover.prefix)
    return removed


# == DEFECTS (these fail today) =====================================================================================

# -- a local repository reached through a symlink ------------------------------------------------------------------
def test_a_repository_whose_root_is_a_symlink_lists_its_backups(tmp_path: Path) -> None:
    """``file:///backups`` where /backups -> /mnt/nas/backups: listing must work (today: ValueError, so every
    backup run crashes in its leftover sweep and ``backups list`` prints a traceback)."""
    real = tmp_path / "nas"
    real.mkdir()
    (tmp_path / "backups").symlink_to(real)
    cat = BackupCatalog(LocalRepository(tmp_path / "backups"))
    publish_raw(cat, make_manifest("trading_db", "20260101T000000Z"))
    assert [m.backup_id for m in cat.list_backups()] == ["20260101T000000Z"]
    assert cat.stale_leftovers(stale_after=STALE) == []


# -- symlinks inside the repository --------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["another-backup", "outside-the-repository"])
def test_sweeping_a_leftover_never_follows_a_symlink_in_it(local: BackupCatalog, tmp_path: Path,
                                                           target: str) -> None:
    """A leftover holding a symlink: the sweep removes the link, never what it points at, and never crashes.
    Today LocalRepository._path resolves the link, so delete() unlinks the *target* (another published backup's
    dump), or raises ValueError (target outside the root), which stops every backup run at its sweep."""
    repo = local.repository
    assert isinstance(repo, LocalRepository)
    if target == "another-backup":
        publish_raw(local, make_manifest("other_db", "20260101T000000Z"))
        victim = repo.root / "databases/other_db/20260101T000000Z/dump.pgc.zst"
    else:
        victim = tmp_path / "outside.txt"
        victim.write_bytes(b"not the repository's")
    before = victim.read_bytes()
    leftover = repo.root / "databases/trading_db/20260102T000000Z"
    leftover.mkdir(parents=True)
    (leftover / "dump.pgc.zst").symlink_to(victim)

    sweep(local)

    assert victim.read_bytes() == before


# -- manifests whose objects lie outside their directory ----------------------------------------------------------
@pytest.mark.parametrize("form", ["foreign-key", "dotdot-key"])
def test_retention_never_deletes_objects_outside_the_backups_directory(any_repo: BackupCatalog, form: str) -> None:
    """A manifest that parses and names its own directory, but lists another backup's dump (a hand-recovered
    manifest, an edited one, an attacker). Retention deletes what scan() offers it: it must not reach another
    backup. Fix: scan() lists such a manifest as damaged (objects outside its prefix), and delete_backup only
    deletes keys under its own prefix."""
    cat = any_repo
    publish_raw(cat, make_manifest("other_db", "20260101T000000Z"))
    victim = "databases/other_db/20260101T000000Z/dump.pgc.zst"
    key = victim if form == "foreign-key" else f"databases/trading_db/20260102T000000Z/../../../{victim}"
    publish_raw(cat, make_manifest("trading_db", "20260102T000000Z", keys=[key]), write_objects=False)

    for manifest in cat.scan(kind="database", name="trading_db").manifests:
        cat.delete_backup(manifest)  # what apply_retention does with a backup outside the policy

    assert cat.repository.exists(victim)
    assert cat.repository.get_bytes(victim) == b"dump of other_db 20260101T000000Z"


# -- lock.json / manifest.json that validate but carry naive timestamps -------------------------------------------
def test_a_lock_with_naive_timestamps_does_not_stop_the_sweep(local: BackupCatalog) -> None:
    """Valid JSON, valid model, no time zone: today stale_leftovers raises TypeError (naive vs aware), so one such
    file stops every backup run before any dump. Fix: AwareDatetime in BackupLock (and BackupHold), so it is an
    unreadable lock judged by the object's own time."""
    write_lock(local, "databases/trading_db/20260101T000000Z", beat="2026-01-01T00:00:00")
    stale = local.stale_leftovers(stale_after=STALE, now=datetime.now(UTC) + timedelta(hours=1))
    assert [s.prefix for s in stale] == ["databases/trading_db/20260101T000000Z"]


def test_a_manifest_with_naive_timestamps_does_not_break_the_listing(local: BackupCatalog) -> None:
    """Today scan() sorts naive and aware started_at together: TypeError, so 'backups list', every restore and
    retention crash on one hand-edited manifest. Fix: AwareDatetime in BackupManifest (then it is damaged), or
    normalise to UTC as retention._utc does."""
    publish_raw(local, make_manifest("trading_db", "20260101T000000Z"))
    naive = make_manifest("trading_db", "20260102T000000Z")
    prefix = publish_raw(local, naive)
    body = naive.model_dump_json().replace('Z"', '"').replace('+00:00"', '"')  # as a foreign writer would
    local.repository.put_bytes(f"{prefix}/manifest.json", body.encode())
    scan = local.scan()
    seen = {m.backup_id for m in scan.manifests} | {d.backup_id for d in scan.damaged}
    assert seen == {"20260101T000000Z", "20260102T000000Z"}


# -- clocks and host identity ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("skew", ["ahead", "behind"])
def test_a_writers_clock_skew_neither_keeps_a_dead_backup_nor_sweeps_a_live_one(local: BackupCatalog,
                                                                                skew: str) -> None:
    """The lock's object time comes from the storage's clock, heartbeat_at from the writer's. stale_leftovers takes
    the max of both, so a writer whose clock runs a year ahead, once dead, is not swept for a year (its dump
    occupies the repository). Fix: judge by the lock object's modified time when there is one."""
    now = datetime.now(UTC)
    prefix = "databases/trading_db/20260101T000000Z"
    if skew == "ahead":
        write_lock(local, prefix, beat=now + timedelta(days=365))  # dead since now; its clock said next year
        assert [s.prefix for s in local.stale_leftovers(stale_after=STALE, now=now + timedelta(hours=1))] == [prefix]
    else:
        write_lock(local, prefix, beat=now - timedelta(hours=1))  # alive, beating now; its clock is an hour late
        assert local.stale_leftovers(stale_after=STALE, now=now) == []


def test_a_live_writer_on_another_machine_with_the_same_hostname_is_not_swept(local: BackupCatalog) -> None:
    """Cloned VMs, containers all called 'localhost', `docker run --hostname backup` on two hosts sharing one
    bucket: the lock names our hostname but another boot id, and its heartbeat is fresh. Today the pid is looked up
    in *our* process table, found missing, and a live backup is swept mid-write. Fix: treat the writer as on this
    host only if the boot id (the first half of ProcessIdentity.started) or /etc/machine-id matches too; otherwise
    judge it by its heartbeat."""
    prefix = "databases/trading_db/20260101T000000Z"
    write_lock(local, prefix, host=socket.gethostname(), pid=dead_pid(), started="another-machines-boot-id:4242",
               machine="another-machines-boot-id:4026531836", beat=datetime.now(UTC))
    assert local.stale_leftovers(stale_after=STALE) == []


# -- If-None-Match ignored by the server ---------------------------------------------------------------------------
def test_a_server_that_ignores_if_none_match_never_gives_two_runs_one_backup_id(s3_config: SandboxState) -> None:
    """s3.put_bytes_if_absent says 'a server that ignores the header would let two writers win; the catalog reads
    the claim back'. The read-back only catches an overwrite that lands before it: a run claiming after the first
    one finished its claim overwrites the first lock and wins the same id (then both write dump.pgc.zst, and the
    loser's discard deletes the winner's dump). Fix: S3Repository.check_writable (or the first claim) probes the
    condition: a second conditional PUT of a probe key must get 412, else refuse the repository."""
    def ignoring() -> BackupCatalog:
        repo = open_repository(load_settings().repository)

        def unconditional(key: str, data: bytes) -> bool:
            repo.put_bytes(key, data)  # 200 OK whatever exists: what such a server answers
            return True

        repo.put_bytes_if_absent = unconditional  # type: ignore[method-assign]
        return BackupCatalog(repo)

    with pytest.raises(RepositoryNotWritable, match="conditional writes"):
        ignoring().repository.check_writable()  # the backup run's first step: refused before any claim
    open_repository(load_settings().repository).check_writable()  # moto honours the condition: accepted


# -- a run deletes only what it wrote ------------------------------------------------------------------------------
def test_discard_after_losing_the_claim_deletes_nothing(any_repo: BackupCatalog) -> None:
    """The claim was lost (swept while paused, or a server ignoring If-None-Match) and another run now writes in
    the directory under its own lock. discard() still deletes 'its' keys, which are now the other run's objects.
    Fix: BackupCatalog.discard checks read_lock(prefix) == claim.token first and deletes nothing otherwise (the
    sweep handles what is left)."""
    cat = any_repo
    claim = cat.claim([("database", "trading_db")], flow_run_id=None, now=MOMENT)
    prefix = claim.prefix("database", "trading_db")
    try:
        write_lock(cat, prefix, beat=datetime.now(UTC), dump=False)  # another run's lock
        cat.repository.put_bytes(f"{prefix}/dump.pgc.zst", b"the other run's dump")
        cat.discard(claim, "database", "trading_db", [f"{prefix}/dump.pgc.zst"])
    finally:
        claim.close()
    assert cat.repository.get_bytes(f"{prefix}/dump.pgc.zst") == b"the other run's dump"


# -- the heartbeat ------------------------------------------------------------------------------------------------
class _FlakyRepository(LocalRepository):
    """One EIO (NFS hiccup) while the heartbeat writes the lock: an OSError that is not a RunbookError."""

    failures = 1

    def replace_bytes_if(self, key: str, data: bytes, *, expect: bytes) -> bool:
        if self.failures and threading.current_thread().name.startswith("backup-heartbeat"):
            self.failures -= 1
            raise OSError(errno.EIO, "Input/output error")
        return super().replace_bytes_if(key, data, expect=expect)


def test_the_heartbeat_survives_one_unexpected_storage_error(tmp_path: Path) -> None:
    """BackupClaim._beat catches RunbookError only; an OSError from the local backend (EIO/ESTALE are not in
    _NOT_WRITABLE) or a ValueError kills the thread silently, the lock goes stale and another host sweeps a live
    backup. Fix: catch Exception in _beat (log, try again next beat)."""
    repo = _FlakyRepository(tmp_path / "repository")
    cat = BackupCatalog(repo)
    claim = cat.claim([("database", "trading_db")], flow_run_id=None, heartbeat_seconds=0.05)
    key = f"{claim.prefix('database', 'trading_db')}/lock.json"
    try:
        wait_for(lambda: repo.failures == 0, timeout=5)
        after_failure = json.loads(repo.get_bytes(key))["heartbeat_at"]
        wait_for(lambda: json.loads(repo.get_bytes(key))["heartbeat_at"] > after_failure, timeout=2)
    finally:
        claim.close()


class _SweptMidBeat(LocalRepository):
    """A sweeper removes the lock just after the heartbeat read it (the writer had been paused > stale_after)."""

    armed = True

    def replace_bytes_if(self, key: str, data: bytes, *, expect: bytes) -> bool:
        if self.armed and key.endswith("/lock.json") and threading.current_thread().name.startswith(
                "backup-heartbeat"):
            self.armed = False
            self.delete([key])  # the sweeper wins the race just before the refresh lands
        return super().replace_bytes_if(key, data, expect=expect)


def test_the_heartbeat_never_recreates_a_lock_that_was_swept(tmp_path: Path) -> None:
    """_beat reads the lock, then put_bytes it unconditionally: a lock swept in between is recreated, the writer
    keeps 'holding' a directory whose objects the sweeper deleted, and publish() writes a manifest for them.
    Fix: a conditional refresh (S3: PUT with If-Match on the ETag just read; local: rename the lock aside, check
    the token, link it back), and publish() checks every manifest object exists before writing the manifest."""
    repo = _SweptMidBeat(tmp_path / "repository")
    cat = BackupCatalog(repo)
    claim = cat.claim([("database", "trading_db")], flow_run_id=None, heartbeat_seconds=0.05)
    prefix = claim.prefix("database", "trading_db")
    try:
        wait_for(lambda: not repo.armed, timeout=5)
        time.sleep(0.3)  # several more beats
        assert not repo.exists(f"{prefix}/lock.json")
        with pytest.raises(LockLost):
            claim.ensure("database", "trading_db")
    finally:
        claim.close()


# -- "latest before" and damaged backups ---------------------------------------------------------------------------
def test_latest_before_a_cutoff_refuses_to_skip_a_damaged_backup(local: BackupCatalog) -> None:
    """A (ok) < D (damaged) < cutoff < B (ok). 'latest before cutoff' is D: it must refuse, as plain 'latest' does.
    Today resolve_backup_or_raise compares D with the newest of *all* candidates (B), sees nothing newer damaged,
    and silently restores A. Fix: apply the 'before' filter to candidates before computing 'newest'."""
    publish_raw(local, make_manifest("trading_db", "20260101T000000Z"))
    damaged = "databases/trading_db/20260102T000000Z"
    local.repository.put_bytes(f"{damaged}/dump.pgc.zst", b"dump")
    local.repository.put_bytes(f"{damaged}/manifest.json", b'{"truncated')
    publish_raw(local, make_manifest("trading_db", "20260103T000000Z"))
    with disable_run_logger(), pytest.raises(BackupDamaged):
        resolve_backup_or_raise.fn(catalog=local, database="trading_db", backup_id="latest",
                                   before=datetime(2026, 1, 2, 12, 0, tzinfo=UTC))


# == ATTACKS THAT HOLD (pass today; kept as regression guards) =====================================================

@pytest.mark.parametrize("body", [b"", b"\x00garbage\xff", b'{"token": 5}', b"[" * 100_000, "directory"])
def test_a_garbage_lock_never_crashes_claim_or_sweep(local: BackupCatalog, body: bytes | str) -> None:
    """Empty, binary, wrong-typed, deeply nested, or a directory named lock.json: the claim moves on to the next
    second, the sweep judges the directory by the object's own time, nothing raises."""
    prefix = f"databases/trading_db/{MOMENT:%Y%m%dT%H%M%SZ}"
    repo = local.repository
    assert isinstance(repo, LocalRepository)
    if body == "directory":
        (repo.root / prefix / "lock.json").mkdir(parents=True)
    else:
        repo.put_bytes(f"{prefix}/lock.json", body)  # type: ignore[arg-type]
    claim = local.claim([("database", "trading_db")], flow_run_id=None, now=MOMENT)
    try:
        assert claim.backup_id == "20260302T020001Z"
    finally:
        claim.close()
    assert local.stale_leftovers(stale_after=STALE) == []  # fresh object: not stale yet
    local.stale_leftovers(stale_after=STALE, now=datetime.now(UTC) + timedelta(days=1))


def test_a_claim_that_fails_midway_leaves_no_lock(local: BackupCatalog) -> None:
    """The repository turns read-only between the first and the second subject: the first lock is released."""
    repo = local.repository
    original = repo.put_bytes_if_absent

    def refuse_clusters(key: str, data: bytes) -> bool:
        if key.startswith("clusters/"):
            raise RepositoryNotWritable("read-only file system")
        return original(key, data)

    repo.put_bytes_if_absent = refuse_clusters  # type: ignore[method-assign]
    with pytest.raises(RepositoryNotWritable):
        local.claim([("database", "trading_db"), ("cluster", "main")], flow_run_id=None, now=MOMENT)
    assert list(repo.list_objects("")) == []


def test_no_heartbeat_after_publish_and_closing_twice_is_harmless(local: BackupCatalog) -> None:
    claim = local.claim([("database", "trading_db")], flow_run_id=None, now=MOMENT, heartbeat_seconds=0.02)
    prefix = claim.prefix("database", "trading_db")
    manifest = make_manifest("trading_db", claim.backup_id)
    local.repository.put_bytes(f"{prefix}/dump.pgc.zst", b"dump")
    local.publish(manifest, claim)
    local.publish(manifest, claim)  # a retried publish task: idempotent
    time.sleep(0.2)
    claim.close()
    claim.close()
    assert sorted(o.key.rsplit("/", 1)[1] for o in local.repository.list_objects(prefix + "/")) == [
        "dump.pgc.zst", "manifest.json"]
    # A different manifest for the same directory is refused, never written over the published one.
    with pytest.raises(LockLost):
        local.publish(make_manifest("trading_db", claim.backup_id, verified=False), claim)
    assert BackupManifest.model_validate_json(local.repository.get_bytes(f"{prefix}/manifest.json")) == manifest
    other = local.claim([("database", "trading_db")], flow_run_id=None, now=MOMENT)
    other.close()
    assert other.backup_id != claim.backup_id


def test_the_work_dir_sweep_follows_no_symlink_and_spares_live_owners(tmp_path: Path) -> None:
    """Only real directories with an owner record of a gone process on this host are removed; a symlinked entry
    and a symlink inside a swept directory are never followed; this very process and a foreign host are kept;
    a reused pid (same pid, other start time) counts as gone."""
    root = tmp_path / "work"
    root.mkdir(mode=0o700)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_bytes(b"keep me")

    def owned(name: str, **writer: object) -> Path:
        path = root / name
        path.mkdir()
        ident = {"host": socket.gethostname(), "pid": dead_pid(), "started": None, **writer}
        record = WorkOwner(writer=ProcessIdentity(**ident), purpose="restore",  # type: ignore[arg-type]
                           created_at=datetime.now(UTC))
        (path / OWNER).write_text(record.model_dump_json())
        return path

    (precious / OWNER).write_text(WorkOwner(writer=ProcessIdentity(host=socket.gethostname(), pid=dead_pid()),
                                            purpose="restore", created_at=datetime.now(UTC)).model_dump_json())
    (root / "link").symlink_to(precious)
    dead = owned("dead")
    (dead / "escape").symlink_to(precious)
    mine = owned("mine", pid=os.getpid(), started=_start_time(os.getpid()))
    reused = owned("reused", pid=os.getpid(), started="old-boot:1")
    foreign = owned("foreign", host="another-host")
    (root / "no-record").mkdir()

    swept = {Path(s.path).name for s in WorkDirs(root).sweep(dry_run=False, purpose="restore")}

    assert swept == {"dead", "reused"}
    assert not dead.exists() and not reused.exists()
    assert mine.is_dir() and foreign.is_dir() and (root / "no-record").is_dir()
    assert (precious / "data").read_bytes() == b"keep me" and (root / "link").is_symlink()


def test_an_empty_or_partial_owner_record_is_never_swept(tmp_path: Path) -> None:
    """WorkDirs.create writes the record after mkdir; a sweep in between (or after a crash mid-write) sees an
    empty or partial record and must leave the directory."""
    root = tmp_path / "work"
    for name, body in (("empty", b""), ("partial", b'{"writer": {"host": "')):
        (root / name).mkdir(parents=True)
        (root / name / OWNER).write_bytes(body)
    assert WorkDirs(root).sweep(dry_run=False, purpose="restore") == []
    assert sorted(p.name for p in root.iterdir()) == ["empty", "partial"]
