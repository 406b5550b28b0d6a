"""Regression tests for the hostile review of the DR game-day: one per defect found, each failing on the code it
was found in. What a drill extracts, stops, sweeps and records is only ever its own."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import zstandard

from runbooks.adapters.processes import ProcessIdentity
from runbooks.adapters.records import DrillRecords
from runbooks.adapters.repository import open_repository
from runbooks.adapters.workdirs import OWNER, WorkDirs, WorkOwner
from runbooks.settings import load_settings
from runbooks.tasks.drill import stop_cluster
from runbooks_sandbox import SandboxState
from tests.repositories import catalog
from tests.test_drill import back_up, damage, drill, leftovers, repo_dir


def escaping_tar(dest_len: int, escape_up: int, payload_path: str) -> bytes:
    """CVE-2025-4517's shape: symlink chains longer than PATH_MAX let tarfile's "data" filter (CPython < 3.11.13)
    resolve a link inside the destination that points outside it."""
    steps = "abcdefghijklmnop"
    component = "d" * ((os.pathconf("/", "PC_PATH_MAX") - dest_len - 1) // (len(steps) + 1))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", content: bytes = b"") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, linkname
            info.mode = 0o777 if kind == tarfile.DIRTYPE else 0o644
            info.size = len(content) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(content) if kind == tarfile.REGTYPE else None)
        path = ""
        for step in steps:
            add(os.path.join(path, component), tarfile.DIRTYPE)
            add(os.path.join(path, step), tarfile.SYMTYPE, component)
            path = os.path.join(path, component)
        linkpath = os.path.join(*steps, "l" * 254)
        add(linkpath, tarfile.SYMTYPE, os.path.join(*[".."] * len(steps)))
        add("escape", tarfile.SYMTYPE, os.path.join(linkpath, *[".."] * escape_up))
        add("escape/" + payload_path.lstrip("/"), content=b"written by a crafted config tar\n")
    return buf.getvalue()


def replace_object(repository: Path, backup_id: str, role: str, raw: bytes) -> None:
    """What someone who can write the repository can do: a new object, its manifest's checksums updated."""
    directory = repository / "clusters" / "sandbox" / backup_id
    stored = zstandard.ZstdCompressor().compress(raw)
    name = {"config": "config.tar.zst", "globals": "globals.sql.zst"}[role]
    (directory / name).write_bytes(stored)
    manifest = json.loads((directory / "manifest.json").read_text())
    for obj in manifest["objects"]:
        if obj["role"] == role:
            obj.update(sha256=hashlib.sha256(stored).hexdigest(), bytes=len(raw), stored_bytes=len(stored))
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_a_crafted_config_tar_writes_nothing_outside_the_drill(config: SandboxState, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    payload = outside / "pwned"
    backup_id = back_up()
    dest = load_settings().drill_root.resolve() / "dr-game-day-20261123T232000Z-abcdef12" / "config"
    replace_object(repo_dir(tmp_path), backup_id, "config", escaping_tar(len(str(dest)), len(dest.parts), str(payload)))
    state, result = drill(quality=False)
    assert not payload.exists()
    assert leftovers(config) == []
    # Refused members are shown, the databases are still drilled, and the configuration is not proven.
    assert result.databases and result.databases[0].proven
    assert {s.name: s.status for s in result.scorecard}["Configuration"] == "failed"
    assert any("not restored intact" in i for i in result.issues) and state.is_failed()


def test_a_corrupt_config_tar_fails_the_configuration_only(config: SandboxState, tmp_path: Path) -> None:
    backup_id = back_up()
    damage(repo_dir(tmp_path) / "clusters" / "sandbox" / backup_id / "config.tar.zst")
    state, result = drill(quality=False)
    assert state.is_failed() and [d.proven for d in result.databases] == [True]
    scores = {s.name: s for s in result.scorecard}
    assert scores["Configuration"].status == "failed" and scores["Historical Data"].status != "failed"
    assert any(i.startswith("configuration files ") and "damaged" in i for i in result.issues), result.issues


def test_a_damaged_cluster_backup_of_the_chosen_run_is_shown(config: SandboxState, tmp_path: Path) -> None:
    older = back_up()
    newer = back_up()
    (repo_dir(tmp_path) / "clusters" / "sandbox" / newer / "manifest.json").write_text("{not json")
    state, result = drill(quality=False)
    assert state.is_completed() and result.backup_id == newer
    assert any(f"run {newer}" in i and "DAMAGED" in i for i in result.issues), result.issues
    assert any(f"older cluster backup {older}" in i for i in result.issues), result.issues


def test_a_backup_without_per_file_checksums_is_unchecked_not_damaged(config: SandboxState, tmp_path: Path) -> None:
    backup_id = back_up()
    manifest_path = repo_dir(tmp_path) / "clusters" / "sandbox" / backup_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.pop("files")  # as written before the checksums were recorded
    manifest_path.write_text(json.dumps(manifest))
    state, result = drill(quality=False)
    assert state.is_completed(), result.error
    assert {f.status for f in result.config_files} == {"unchecked"}
    assert any("predates per-file checksums" in i for i in result.issues)


def test_a_config_only_cluster_backup_is_used(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
    """No cluster DSN (no roles backed up), config files configured: the files are still restored and checked."""
    settings = load_settings()
    files = json.dumps([str(p) for p in settings.cluster.config_files])
    toml = Path(config.config_path).read_text().replace(f'dsn = "{settings.cluster.dsn.get_secret_value()}"\n'
                                                         if settings.cluster.dsn else "", "", 1)
    patched = Path(config.root) / "config-only.toml"
    patched.write_text(toml)
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(patched))
    assert load_settings().cluster.dsn is None and json.dumps(
        [str(p) for p in load_settings().cluster.config_files]) == files
    back_up()
    state, result = drill(quality=False)
    assert [f.status for f in result.config_files] == ["intact", "intact"]
    assert {s.name: s.status for s in result.scorecard}["Configuration"] != "failed"
    assert any("without owners" in i for i in result.issues)


def test_an_existing_work_dir_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "var-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    WorkDirs(shared, traversable=True).create("dr-game-day", flow_run_id=None)
    assert shared.stat().st_mode & 0o7777 == 0o1777


def owned_dir(root: Path, name: str, *, purpose: str = "dr-game-day", host: str | None = None,
              pid: int | None = None, released: bool = False) -> Path:
    path = root / name
    path.mkdir(parents=True)
    writer = ProcessIdentity(host=host or socket.gethostname(), pid=pid or 2 ** 22 + 17, started=None)
    (path / OWNER).write_text(WorkOwner(writer=writer, purpose=purpose, created_at=datetime.now(UTC),
                                        released=released).model_dump_json())
    return path


def test_the_sweep_never_signals_a_process_a_stale_pid_file_names(tmp_path: Path) -> None:
    """After a reboot a killed drill's postmaster.pid names a PID some other process now has."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        left = owned_dir(tmp_path, "killed")
        (left / "cluster" / "data").mkdir(parents=True)
        (left / "cluster" / "data" / "postmaster.pid").write_text(f"{other.pid}\n{left}/cluster/data\n")
        assert stop_cluster(left)  # nothing of ours runs there
        swept = WorkDirs(tmp_path).sweep(dry_run=False, purpose="dr-game-day", before_remove=stop_cluster)
        assert [Path(s.path).name for s in swept] == ["killed"]
        assert other.poll() is None  # never signalled
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_the_sweep_leaves_other_hosts_and_other_runbooks(tmp_path: Path) -> None:
    elsewhere = owned_dir(tmp_path, "elsewhere", host="another-host", released=True)
    restore = owned_dir(tmp_path, "restore", purpose="restore")
    drill_dir = owned_dir(tmp_path, "drill", pid=os.getpid(), released=True)
    swept = WorkDirs(tmp_path).sweep(dry_run=False, purpose="dr-game-day")
    assert [Path(s.path) for s in swept] == [drill_dir]
    assert elsewhere.is_dir() and restore.is_dir()
    assert [Path(s.path) for s in WorkDirs(tmp_path).sweep(dry_run=False, purpose="restore")] == [restore]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root (CI runs as root)")
def test_the_sweep_never_trusts_an_owner_record_another_user_wrote(tmp_path: Path) -> None:
    """A server's OS user (postgres) that can write into a work directory could forge the record that says 'a dead
    run's, remove it': a record, or a directory, not ours decides nothing."""
    nobody = pwd.getpwnam("nobody")
    forged_record = owned_dir(tmp_path, "forged-record", released=True)
    os.chown(forged_record / OWNER, nobody.pw_uid, nobody.pw_gid)
    foreign_dir = owned_dir(tmp_path, "foreign-dir", released=True)
    os.chown(foreign_dir, nobody.pw_uid, nobody.pw_gid)
    linked = owned_dir(tmp_path, "linked-record", released=True)
    (tmp_path / "elsewhere.json").write_bytes((linked / OWNER).read_bytes())
    (linked / OWNER).unlink()
    (linked / OWNER).symlink_to(tmp_path / "elsewhere.json")
    mine = owned_dir(tmp_path, "mine", released=True)
    swept = WorkDirs(tmp_path).sweep(dry_run=False, purpose="dr-game-day")
    assert [Path(s.path) for s in swept] == [mine]
    assert forged_record.is_dir() and foreign_dir.is_dir() and linked.is_dir()


def test_a_cluster_the_runbooks_start_carries_none_of_the_workers_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A drill's (or the sandbox's) postmaster keeps its environment for life, readable by its OS user and by any
    superuser through COPY ... PROGRAM: none of the worker's settings or secrets go there."""
    from runbooks.adapters.cluster import PostgresCluster, free_port

    canary = f"canary-{os.urandom(8).hex()}"
    monkeypatch.setenv("RUNBOOKS_DATABASES__TRADING_DB__PASSWORD", canary)
    monkeypatch.setenv("PGPASSWORD", canary)
    root = Path(tempfile.mkdtemp(prefix="runbooks-env-"))
    root.chmod(0o755)
    cluster = PostgresCluster(root=root / "pg", port=free_port(), superuser_password="x" + os.urandom(6).hex())
    try:
        cluster.init()
        cluster.start()
        pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert canary.encode() not in environ and b"RUNBOOKS_" not in environ
    finally:
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_history_of_one_shows_only_this_drill(tmp_path: Path) -> None:
    from runbooks.adapters.repository.local import LocalRepository

    assert DrillRecords(LocalRepository(tmp_path), "main").recent(0) == []


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "dr-game-day", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override", [
    {"RUNBOOKS_DRILL__COMPONENTS": json.dumps([{"name": "Typo", "rto": "5m", "rpo": "1h",
                                                 "tables": ["trading_dbx.positions"]}])},
    {"RUNBOOKS_DATABASES__TRADING_COPY__DSN": "{dsn}"},
    {"RUNBOOKS_DRILL__WORK_DIR": "relative/dir"},
    {"RUNBOOKS_DRILL__WORK_DIR": "{closed}/drills"},
], ids=["component-not-in-inventory", "two-databases-one-name", "relative-work-dir", "closed-work-dir"])
def test_impossible_drill_settings_are_one_line_and_exit_2(config: SandboxState, tmp_path: Path,
                                                            prefect_api: str, override: dict[str, str]) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    dsn = load_settings().databases["trading_db"].dsn.get_secret_value()
    env = {**os.environ, "PREFECT_API_URL": prefect_api,
           **{k: v.replace("{dsn}", dsn).replace("{closed}", str(closed)) for k, v in override.items()}}
    if override.get("RUNBOOKS_DRILL__WORK_DIR", "").startswith("{closed}") and os.geteuid() != 0:
        pytest.skip("a directory closed to the server's OS user only exists when we are root")
    proc = cli(env=env)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "HINT" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    # Refused before any drill: nothing recorded in the trend.
    assert DrillRecords(open_repository(load_settings().repository), "sandbox").recent(10) == []


# -- second review ----------------------------------------------------------------------------------------------
def test_a_fresh_work_dir_is_reachable_by_the_servers_os_user(tmp_path: Path) -> None:
    """The parents a drill creates are 0711 like its root: a fresh host's state_dir does not close the way."""
    import shutil
    import tempfile

    from runbooks.adapters.cluster import closed_directory, server_os_user

    base = Path(tempfile.mkdtemp(prefix="runbooks-open-"))  # not pytest's 0700 tmp: an enterable base
    base.chmod(0o755)
    try:
        root = base / "fresh" / "a" / "drills"
        workdir = WorkDirs(root, traversable=True).create("dr-game-day", flow_run_id=None)
        assert [(base / p).stat().st_mode & 0o777 for p in ("fresh", "fresh/a", "fresh/a/drills")] == [0o711] * 3
        user = server_os_user()
        if user is not None:  # as root (CI): asked of the system as the postgres user
            assert closed_directory(workdir / "cluster", user) is None
    finally:
        shutil.rmtree(base)


def test_host_files_outside_cluster_config_files_are_never_read(config: SandboxState, tmp_path: Path) -> None:
    """A manifest naming /dev/zero (no object changed) must not make the drill read it forever."""
    import threading

    from prefect import flow

    from runbooks.tasks.storage import restore_config_files

    backup_id = back_up()
    path = repo_dir(tmp_path) / "clusters" / "sandbox" / backup_id / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"].append({"path": "/dev/zero", "bytes": 1, "sha256": "0" * 64, "mode": 0o644})
    path.write_text(json.dumps(manifest))
    settings = load_settings()
    cat = catalog()
    [cluster_manifest] = [m for m in cat.list_backups(kind="cluster") if m.backup_id == backup_id]
    found: list[object] = []

    @flow
    def restore_files() -> None:
        found.extend(restore_config_files(catalog=cat, manifest=cluster_manifest, dest=tmp_path / "w" / "config",
                                          originals=settings.cluster.config_files))

    (tmp_path / "w").mkdir()
    worker = threading.Thread(target=restore_files, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "restoring the config files still reads a device"
    statuses = {f.path: (f.status, f.against_original) for f in found}  # type: ignore[attr-defined]
    assert statuses["/dev/zero"] == ("missing", "not_configured")


def test_the_sweep_never_stops_what_a_planted_data_link_points_at(tmp_path: Path) -> None:
    elsewhere = tmp_path / "someone-elses-data"
    elsewhere.mkdir()
    other = subprocess.Popen(["sleep", "60"], cwd=elsewhere)  # "running in that data directory"
    try:
        (elsewhere / "postmaster.pid").write_text(f"{other.pid}\n{elsewhere}\n")
        left = owned_dir(tmp_path, "killed")
        (left / "cluster").mkdir()
        (left / "cluster" / "data").symlink_to(elsewhere)
        from runbooks.tasks.drill import running_postmaster

        assert running_postmaster(left / "cluster" / "data") is None
        assert stop_cluster(left)
        assert other.poll() is None
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_a_cluster_under_a_deep_work_dir_starts(tmp_path: Path) -> None:
    """A drill's cluster listens on TCP only: a Unix socket under a work dir like /home/<user>/.local/state/...
    overflowed the 107 bytes a socket path may have, and the server stopped at start saying only "database
    system is shut down"."""
    from runbooks.adapters.cluster import PostgresCluster, free_port

    base = Path(tempfile.mkdtemp(prefix="runbooks-deep-"))  # not under pytest's 0700 tmp: postgres must enter
    try:
        base.chmod(0o755)
        root = base / ("d" * 60) / "dr-game-day-20261124T000000Z-0123abcd" / "cluster"
        root.parent.mkdir(parents=True, mode=0o755)
        root.parent.parent.chmod(0o755)
        assert len(os.fsencode(root / "run" / ".s.PGSQL.65535")) > 107
        cluster = PostgresCluster(root=root, port=free_port(), superuser_password="drill")
        cluster.init()
        cluster.start()
        try:
            with psycopg.connect(cluster.dsn()) as conn:
                assert conn.execute("SHOW unix_socket_directories").fetchone() == ("",)
        finally:
            cluster.stop()
        assert not cluster.is_running()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- issue 24: a drill that never ran, and a scorecard that reads ------------------------------------------------
@contextmanager
def drill_running_elsewhere(flow_run_id: str) -> Iterator[None]:
    """What a running drill holds on this host: the flock on ``<state_dir>/locks/dr-game-day.lock`` (a real lock,
    held through another open file), with its name written in the file as the holder writes it."""
    from runbooks.adapters.repository.local import make_private_dirs
    from runbooks.frame.locks import LockHolder

    directory = load_settings().state_dir.expanduser() / "locks"
    make_private_dirs(directory)
    fd = os.open(directory / "dr-game-day.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        now = datetime.now(UTC)
        holder = LockHolder(token="first", runbook="dr-game-day", flow_run_id=flow_run_id, actor="oncall-first",
                            writer=ProcessIdentity.current(), since=now, heartbeat_at=now)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.model_dump_json().encode(), 0)
        yield
    finally:
        os.close(fd)


def test_a_drill_refused_because_another_runs_says_so_and_shows_no_scorecard(config: SandboxState, tmp_path: Path,
                                                                             prefect_api: str) -> None:
    """Two drills 0.5 s apart: the second never ran. It says "refused: another drill is running" and who holds the
    host, with no verdict on the platform, no scorecard of FAILED components, and nothing in the trend."""
    repo_dir(tmp_path).mkdir()
    first = "0f1d2c3b-aaaa-4bbb-8ccc-123456789abc"
    with drill_running_elsewhere(first):
        proc = cli("--param", "quality=false", env={**os.environ, "PREFECT_API_URL": prefect_api})
    assert proc.returncode == 1, (proc.stdout[-3000:], proc.stderr[-3000:])
    head = proc.stdout.strip().splitlines()[0]
    assert "refused: another drill is running" in head, proc.stdout
    assert first in proc.stdout and "oncall-first" in proc.stdout  # who holds it
    for never in ("scorecard", "FAILED", "NOT proven", "targets met", "not restored"):
        assert never not in proc.stdout, (never, proc.stdout)
    assert "Traceback" not in proc.stderr
    assert DrillRecords(open_repository(load_settings().repository), "sandbox").recent(10) == []


def test_a_drill_on_another_host_holds_the_repository_lease_and_this_drill_is_refused(config: SandboxState,
                                                                                     tmp_path: Path) -> None:
    """Issue 26: the host lock is this host's only; a drill running on another host of the fleet holds the cluster's
    drill lease in the shared repository (its heartbeat fresh), and a drill here is refused, naming it, before it
    sweeps, picks a backup or provisions anything. The other's lease is left as it was."""
    from runbooks.frame.locks import LockHolder

    repo_dir(tmp_path).mkdir()
    repository = open_repository(load_settings().repository)
    now = datetime.now(UTC)
    other = LockHolder(token="elsewhere", runbook="dr-game-day", flow_run_id="5e7a0c1d-bbbb-4ccc-8ddd-0123456789ab",
                       actor="runbooks-dr-game-day:5e7a0c1d", host_name="worker-2", since=now, heartbeat_at=now,
                       writer=ProcessIdentity(host="worker-2", pid=4242, started="x:1", machine="another-machine"))
    key = "locks/dr-game-day/sandbox.json"
    body = other.model_dump_json().encode()
    assert repository.put_bytes_if_absent(key, body)
    state, result = drill(quality=False)
    assert state.is_failed() and result.refused is not None, (state.message, result.error)
    assert result.refused.startswith("refused: another drill is running"), result.refused
    assert "5e7a0c1d-bbbb-4ccc-8ddd-0123456789ab" in result.refused and "on worker-2" in result.refused
    assert [t.step for t in result.timeline][-1] == "take lock"
    assert not any(t.step in ("sweep killed drills", "pick backup set") for t in result.timeline), result.timeline
    assert result.scorecard == []  # nothing scored: the drill never ran
    assert repository.get_bytes(key).rstrip(b" ") == body
    assert DrillRecords(repository, "sandbox").recent(10) == []


@pytest.mark.parametrize("columns", ["80", "40", None], ids=["80-columns", "40-columns", "piped"])
def test_the_scorecard_reads_at_any_width(config: SandboxState, prefect_api: str, columns: str | None) -> None:
    """A drill that stops at once (no repository) still scores every component. At 80 columns the table holds short
    cells only, names whole; why each component failed is a line of its own under it, the error said once; at 40
    the rows become records; piped, 160 columns and nothing cut."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PREFECT_API_URL": prefect_api}
    if columns:
        env["COLUMNS"] = columns
    proc = cli("--param", "quality=false", env=env)
    assert proc.returncode == 1, (proc.stdout[-3000:], proc.stderr[-3000:])
    width = int(columns or 160)
    assert max(len(line) for line in proc.stdout.splitlines()) <= width, proc.stdout
    assert "…" not in proc.stdout, proc.stdout
    words = " ".join(proc.stdout.split())
    components = load_settings().drill.components
    for component in components:
        assert f"{component.name} (" in words, (component.name, proc.stdout)  # its own line under the table
    assert words.count("not restored: the drill stopped (see the error)") >= len(
        [c for c in components if c.covered])
    assert words.count("does not exist") == 1, proc.stdout  # the repository error, once
