"""Point-in-time recovery against a real cluster and real pgBackRest: archiving set up, a full backup, rows written
a known time apart, a restore to a time between two of them into a new cluster, a broken archive_command caught,
and the source never touched."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runbooks.adapters.cluster import PostgresCluster, server_os_user
from runbooks.adapters.postgres import pg_bindir
from runbooks.core.errors import ConfigurationError
from runbooks.decisions.pitr import ArchiverState, PitrPaths, judge_archiver, parse_info, parse_target, render_config
from runbooks.frame import outcome
from runbooks.settings import PitrSettings
from runbooks_sandbox import SandboxState
from tests.disks import traversable_dir
from tests.pgfixtures import running_cluster

# Drills on real clusters with pgBackRest (about 3 minutes in all): `make test` and CI run them after the suite.
pytestmark = pytest.mark.slow


def _private_tmp(prefix: str) -> Path:
    """Short paths (a Unix socket path holds at most 107 bytes) the postgres OS user may use when we are root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if (user := server_os_user()) is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


@contextmanager
def protected(prefix: str) -> Iterator[PostgresCluster]:
    """A cluster to protect, with a Unix socket (pgBackRest needs one): archiving off until pitr-setup turns it on."""
    sockets = _private_tmp("rbpg-")
    try:
        with traversable_dir(prefix) as root, running_cluster(root / "pg", socket_directory=sockets) as cluster:
            yield cluster
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture(scope="module")
def source() -> Iterator[PostgresCluster]:
    with protected("runbooks-pitr-src-") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def pitr_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="runbooks-pitr-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pitr_env(source: PostgresCluster, pitr_root: Path, sandbox: SandboxState,
             monkeypatch: pytest.MonkeyPatch) -> PostgresCluster:
    monkeypatch.setenv("RUNBOOKS_CONFIG", sandbox.config_path)
    monkeypatch.setenv("RUNBOOKS_PITR__DSN", source.dsn())
    monkeypatch.setenv("RUNBOOKS_PITR__WORK_DIR", str(pitr_root))
    monkeypatch.setenv("RUNBOOKS_PITR__SOCKET_DIRECTORY", str(source.socket_directory))
    monkeypatch.setenv("RUNBOOKS_PITR__STANZA", "positions")
    monkeypatch.setenv("RUNBOOKS_PITR__ARCHIVE_TIMEOUT", "30s")
    return source


def _sql(cluster: PostgresCluster, query: str, *args: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as conn:
        cur = conn.execute(query, args or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def _wait_archived(cluster: PostgresCluster, timeout: float = 60) -> None:
    """Switch WAL and wait until that segment is archived (what a quiet minute of archive_timeout would do)."""
    [(segment,)] = _sql(cluster, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [(last,)] = _sql(cluster, "SELECT last_archived_wal FROM pg_stat_archiver")
        if last is not None and last >= segment:
            return
        time.sleep(0.1)
    raise AssertionError(f"WAL segment {segment} was not archived within {timeout} s")


def _plan(restart: bool = True) -> Any:
    """pitr-setup as it runs with no other parameter: the plan (a dry run)."""
    from runbooks.flows.pitr_setup import pitr_setup_flow

    state = pitr_setup_flow(restart=restart, return_state=True)
    return state, outcome(state)


def _setup(restart: bool = True) -> Any:
    """The plan, then that plan confirmed by its hash (how an unattended setup runs)."""
    from runbooks.flows.pitr_setup import pitr_setup_flow

    state, plan = _plan(restart)
    if plan.plan is None:  # refused before a plan could be made
        return state, plan
    assert state.is_completed() and plan.dry_run, plan.error
    state = pitr_setup_flow(restart=restart, confirm=plan.plan.plan_hash,
                            return_state=True)
    return state, outcome(state)


def _auto_conf(cluster: PostgresCluster) -> dict[str, str]:
    """What ALTER SYSTEM has written (postgresql.auto.conf), as the server reads the file now."""
    rows = _sql(cluster, "SELECT name, setting FROM pg_file_settings WHERE sourcefile = "
                         "current_setting('data_directory') || '/postgresql.auto.conf' ORDER BY seqno")
    return dict(rows)  # type: ignore[arg-type]


def _reset_archiving(cluster: PostgresCluster) -> None:
    """Archiving off and nothing in postgresql.auto.conf, as on a new cluster."""
    for name in ("archive_mode", "archive_command", "archive_timeout"):
        _sql(cluster, f"ALTER SYSTEM RESET {name}")
    cluster.stop()
    cluster.start()


def _steps(result: Any) -> list[str]:
    """The run's step names, in order."""
    return [e.step for e in result.timeline]


# -- the runbooks, end to end --------------------------------------------------------------------------------------
def test_setup_stops_for_a_restart_then_archives_and_is_idempotent(pitr_env: PostgresCluster,
                                                                    pitr_root: Path) -> None:
    _reset_archiving(pitr_env)  # whatever ran before: archiving off, as on a new cluster
    [(started,)] = _sql(pitr_env, "SELECT pg_postmaster_start_time()")
    state, result = _setup(restart=False)
    assert state.is_failed() and "archive_mode takes effect only when PostgreSQL restarts" in (result.error or "")
    assert result.changed and "archive_mode" in result.waiting_for_restart
    assert _sql(pitr_env, "SELECT pg_postmaster_start_time()")[0][0] == started  # it did not restart on its own
    config = pitr_root / "pgbackrest.conf"
    assert config.stat().st_mode & 0o777 == 0o600
    # Its record: nothing of these was in postgresql.auto.conf before it.
    assert {p.name: p.auto_conf for p in result.previous} == {"archive_mode": None, "archive_command": None,
                                                              "archive_timeout": None}
    # The undo the report gives, typed into psql as it stands: nothing is left waiting for a restart.
    undo = next(s for s in result.next_steps if s.startswith("To undo instead"))
    statements = undo.split("`")[1]
    assert statements == ("ALTER SYSTEM RESET archive_mode; ALTER SYSTEM RESET archive_command; "
                          "ALTER SYSTEM RESET archive_timeout; SELECT pg_reload_conf();")
    for statement in statements.split(";")[:-1]:
        _sql(pitr_env, statement)
    time.sleep(0.3)
    assert _auto_conf(pitr_env) == {}  # the file as before: the next restart keeps archiving off
    assert _sql(pitr_env, "SHOW archive_mode")[0][0] == "off"
    # (pg_settings.pending_restart stays true for archive_mode until a restart: PostgreSQL clears the flag only when
    # a file sets the running value again, not when the line that differed is removed.)

    # Again, and this time finish by hand with the restart the report gives: pg_ctl as the cluster's owner.
    state, result = _setup(restart=False)
    assert state.is_failed() and result.waiting_for_restart == ["archive_mode"]
    finish = next(s for s in result.next_steps if s.startswith("To finish"))
    command = finish.split("`")[1]
    assert f"-D {pitr_env.datadir} " in command and "pg_ctl" in command
    if server_os_user() is not None:  # root is told to run it as the server's OS user
        assert command.startswith("runuser -u postgres -- ")
    done = subprocess.run(command, shell=True, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
                          cwd="/", check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _sql(pitr_env, "SELECT pg_postmaster_start_time()")[0][0] > started
    assert _sql(pitr_env, "SHOW archive_mode")[0][0] == "on"
    state, result = _setup(restart=False)  # after the restart: only the check is left
    assert state.is_completed(), result.error
    assert result.checked and not result.restarted and result.changed == []
    _reset_archiving(pitr_env)

    state, result = _setup(restart=True)
    assert state.is_completed(), result.error
    assert result.restarted and result.checked and result.info.status in ("ok", "no valid backups")
    assert _steps(result)[_steps(result).index("restart PostgreSQL") + 1] == "take lock again"
    # The restarted postmaster (and every backend and archive_command after it) keeps its environment for life:
    # none of the worker's settings or secrets (RUNBOOKS_PITR__DSN holds the superuser password).
    pid = int((pitr_env.datadir / "postmaster.pid").read_text().split()[0])
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"RUNBOOKS_" not in environ and pitr_env.superuser_password.encode() not in environ, \
        sorted(v.split(b"=")[0] for v in environ.split(b"\0"))
    assert _sql(pitr_env, "SHOW archive_mode")[0][0] == "on"
    assert "archive-push" in _sql(pitr_env, "SHOW archive_command")[0][0]

    state, result = _setup(restart=False)  # a rerun changes nothing and restarts nothing
    assert state.is_completed(), result.error
    assert result.changed == [] and not result.config_written and not result.restarted


def test_a_restore_to_a_time_between_two_writes_has_the_first_and_not_the_second(
        pitr_env: PostgresCluster, pitr_root: Path) -> None:
    from runbooks.flows.pitr_backup import pitr_backup_flow
    from runbooks.flows.pitr_restore import pitr_restore_flow

    assert _setup()[0].is_completed()
    state = pitr_backup_flow(kind="diff", return_state=True)
    backup = outcome(state)
    assert state.is_completed(), backup.error
    assert backup.backup.type == "full"  # no full one yet: pgBackRest takes one, and the report says so
    assert any("full" in step for step in backup.next_steps)

    _sql(pitr_env, "CREATE TABLE IF NOT EXISTS fills (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
    _sql(pitr_env, "TRUNCATE fills")
    time.sleep(1.1)  # pgBackRest picks a backup that ended in an earlier second than the target
    for i in (1, 2):
        _sql(pitr_env, "INSERT INTO fills (id) VALUES (%s)", i)  # each its own transaction
    time.sleep(0.3)
    [(target,)] = _sql(pitr_env, "SELECT clock_timestamp()")
    time.sleep(0.3)
    _sql(pitr_env, "INSERT INTO fills (id) VALUES (3)")
    _wait_archived(pitr_env)
    [(started,)] = _sql(pitr_env, "SELECT pg_postmaster_start_time()")
    data_before = sorted(p.name for p in (pitr_env.datadir / "base").iterdir())

    state = pitr_restore_flow(target_time=target.isoformat(), return_state=True)
    result = outcome(state)
    assert state.is_completed(), result.error
    port = int(result.restored_at.rsplit(":", 1)[1].strip("/"))
    assert port != pitr_env.port
    restored = PostgresCluster(root=Path(result.data_directory).parent, port=port,
                               superuser_password=pitr_env.superuser_password)
    try:
        assert [r[0] for r in _sql(restored, "SELECT id FROM fills ORDER BY id")] == [1, 2]
        assert _sql(restored, "SELECT pg_is_in_recovery()")[0][0] is False
        assert _sql(restored, "SHOW archive_mode")[0][0] == "off"  # never pushes into the source's stanza
        # The last transaction replayed is the second write (its commit follows its row's time), and the RPO is
        # what lies between it and the target.
        [(second_at,)] = _sql(pitr_env, "SELECT at FROM fills WHERE id = 2")
        point = result.point
        assert point.last_replayed_at is not None and second_at <= point.last_replayed_at <= target
        assert point.rpo_seconds == (target - point.last_replayed_at).total_seconds()
        assert result.point.timeline == 2
        assert result.marker.ok and result.source_untouched is True
    finally:
        subprocess_stop(restored)
    # The source: same postmaster, all three rows, its data directory's databases unchanged.
    assert _sql(pitr_env, "SELECT pg_postmaster_start_time()")[0][0] == started
    assert [r[0] for r in _sql(pitr_env, "SELECT id FROM fills ORDER BY id")] == [1, 2, 3]
    assert sorted(p.name for p in (pitr_env.datadir / "base").iterdir()) == data_before
    assert Path(result.data_directory).is_relative_to(pitr_root / "restores")


def test_a_tablespace_is_restored_under_the_work_directory_never_at_the_source_path(
        pitr_env: PostgresCluster, pitr_root: Path) -> None:
    """pgBackRest puts a tablespace back at its original path by default: the source's own directory."""
    from runbooks.flows.pitr_backup import pitr_backup_flow
    from runbooks.flows.pitr_restore import pitr_restore_flow

    space = _private_tmp("rbts-")
    space.chmod(0o700)
    _sql(pitr_env, f"CREATE TABLESPACE pitr_space LOCATION '{space}'")
    try:
        _sql(pitr_env, "CREATE TABLE spaced (id int) TABLESPACE pitr_space")
        _sql(pitr_env, "INSERT INTO spaced SELECT generate_series(1, 100)")
        assert _setup()[0].is_completed()
        assert pitr_backup_flow(kind="full", return_state=True).is_completed()
        _wait_archived(pitr_env)
        files = sorted(p.relative_to(space) for p in space.rglob("*"))
        state = pitr_restore_flow(return_state=True)  # latest, kept running
        result = outcome(state)
        assert state.is_completed(), result.error
        workdir = Path(result.data_directory).parent
        restored = PostgresCluster(root=workdir, port=int(result.restored_at.rsplit(":", 1)[1].strip("/")),
                                   superuser_password=pitr_env.superuser_password)
        try:
            assert _sql(restored, "SELECT count(*) FROM spaced")[0][0] == 100
            [(location,)] = _sql(restored, "SELECT pg_tablespace_location(oid) FROM pg_tablespace "
                                           "WHERE spcname = 'pitr_space'")
            assert Path(location).is_relative_to(workdir), location
        finally:
            subprocess_stop(restored)
        assert sorted(p.relative_to(space) for p in space.rglob("*")) == files  # nothing added to the source's
        assert _sql(pitr_env, "SELECT count(*) FROM spaced")[0][0] == 100
    finally:
        _sql(pitr_env, "DROP TABLE IF EXISTS spaced")
        _sql(pitr_env, "DROP TABLESPACE IF EXISTS pitr_space")
        shutil.rmtree(space, ignore_errors=True)


def subprocess_stop(cluster: PostgresCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


def test_a_target_past_the_archive_fails_cleanly_and_leaves_no_cluster(pitr_env: PostgresCluster,
                                                                        pitr_root: Path) -> None:
    """A time whose WAL never reached the repository (archiving broken since), and a time in the future."""
    from runbooks.flows.pitr_backup import pitr_backup_flow
    from runbooks.flows.pitr_restore import pitr_restore_flow

    assert _setup()[0].is_completed()
    assert pitr_backup_flow(kind="full", return_state=True).is_completed()
    _wait_archived(pitr_env)
    time.sleep(1.1)  # the target below must be in a later second than the backup's end
    _sql(pitr_env, "ALTER SYSTEM SET archive_command = '/bin/false'")
    _sql(pitr_env, "SELECT pg_reload_conf()")
    try:
        _sql(pitr_env, "CREATE TABLE IF NOT EXISTS unarchived (id int)")
        _sql(pitr_env, "INSERT INTO unarchived VALUES (1)")
        [(target,)] = _sql(pitr_env, "SELECT clock_timestamp()")
        _sql(pitr_env, "SELECT pg_switch_wal()")  # finished, but never archived
        state = pitr_restore_flow(target_time=target.isoformat(),
                                  return_state=True)
        result = outcome(state)
        assert state.is_failed() and "recovery ended before the target" in (result.error or ""), result.error
        assert "earlier target_time" in (result.error or "")
        assert not [p for p in (pitr_root / "restores").iterdir()]  # the half-made cluster is stopped and removed
    finally:
        _setup()  # puts the right archive_command back
        _sql(pitr_env, "DROP TABLE IF EXISTS unarchived")
    _wait_archived(pitr_env)

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    state = pitr_restore_flow(target_time=future, return_state=True)
    result = outcome(state)
    assert state.is_failed() and "later than now" in (result.error or "") and "Nothing was done" in result.error
    assert not [e for e in result.timeline if e.step == "restore"]  # refused before any restore began

    state = pitr_restore_flow(target_time="2000-01-01T00:00:00Z",
                              return_state=True)  # before every backup: pgBackRest finds no set to start from
    result = outcome(state)
    assert state.is_failed() and "no backup in the repository finished before 2000-01-01" in (result.error or "")
    assert not [p for p in (pitr_root / "restores").iterdir()]  # its work directory went with the failure


def test_a_broken_archive_command_is_caught_and_pages(pitr_env: PostgresCluster,
                                                     webhook: tuple[list[dict[str, Any]], str]) -> None:
    from runbooks.flows.archive_check import archive_check_flow

    received, _ = webhook
    assert _setup()[0].is_completed()
    state = archive_check_flow(return_state=True)
    assert state.is_completed(), outcome(state).error
    assert received == []
    _sql(pitr_env, "ALTER SYSTEM SET archive_command = '/bin/false'")
    _sql(pitr_env, "SELECT pg_reload_conf()")
    try:
        time.sleep(0.3)
        _sql(pitr_env, "SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        while _sql(pitr_env, "SELECT last_failed_wal IS NOT NULL AND (last_archived_time IS NULL OR "
                             "last_failed_time > last_archived_time) FROM pg_stat_archiver")[0][0] is not True:
            assert time.monotonic() < deadline, "the archiver never tried"
            time.sleep(0.2)
        state = archive_check_flow(return_state=True)
        result = outcome(state)
        assert state.is_failed() and result.judgement.verdict == "failing"
        assert any("failed at" in r for r in result.judgement.reasons)
        assert any("not the one pitr-setup configured" in r for r in result.judgement.reasons)
        assert len(received) == 1 and "P1" in str(received[0])
    finally:
        _setup()  # puts the right archive_command back
    _wait_archived(pitr_env)


def _cli(*args: str, prefect_api: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    return subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "pitr-setup", *args], env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def _untouched(cluster: PostgresCluster, root: Path) -> tuple[Any, ...]:
    """What a setup changes: the postmaster, postgresql.auto.conf, pgBackRest's config and repository."""
    config = root / "pgbackrest.conf"
    return (_sql(cluster, "SELECT pg_postmaster_start_time()")[0][0], _auto_conf(cluster),
            config.read_bytes() if config.exists() else None,
            sorted(str(p.relative_to(root)) for p in (root / "repo").rglob("*")) if (root / "repo").exists() else [])


def test_pitr_setup_without_parameters_only_plans_and_confirm_applies_that_plan(
        pitr_env: PostgresCluster, pitr_root: Path, prefect_api: str) -> None:
    """Issue 24: 'runbooks run pitr-setup' with no parameter used to ALTER SYSTEM at once."""
    _reset_archiving(pitr_env)
    before = _untouched(pitr_env, pitr_root)
    planned = _cli(prefect_api=prefect_api)
    assert planned.returncode == 0, planned.stderr
    assert "DRY RUN" in planned.stdout and "archive_mode" in planned.stdout
    hashes = set(re.findall(r"confirm=([0-9a-f]{12})", planned.stdout.replace("\n", "")))
    assert len(hashes) == 1, planned.stdout
    [plan_hash] = hashes
    assert plan_hash in planned.stdout.split("Next steps")[0]  # in the plan table too
    assert _untouched(pitr_env, pitr_root) == before
    assert _sql(pitr_env, "SHOW archive_mode")[0][0] == "off"

    # The plan covers whether the run may restart: restart=true is another plan, and this hash is refused there.
    state, refused = _confirmed(plan_hash, restart=True)
    assert state.is_failed() and "does not match" in (refused.error or ""), refused.error
    assert _untouched(pitr_env, pitr_root) == before

    state, planned_restart = _plan(restart=True)
    plan = planned_restart.plan
    assert state.is_completed() and plan.restart and plan.restart_needed and plan.plan_hash != plan_hash
    assert [c.name for c in plan.changes] == ["archive_mode", "archive_command", "archive_timeout"]
    assert _untouched(pitr_env, pitr_root) == before
    applied = _cli("--param", "restart=true", "--param", f'confirm="{plan.plan_hash}"', "--json",
                   prefect_api=prefect_api)
    assert applied.returncode == 0, (applied.stdout[-2000:], applied.stderr)
    result = json.loads(applied.stdout)
    assert result["approval"]["via"] == "confirm" and result["restarted"] and result["checked"]
    assert _sql(pitr_env, "SHOW archive_mode")[0][0] == "on"


def test_one_setup_of_a_server_at_a_time_and_its_lock_outlives_the_restart(pitr_env: PostgresCluster,
                                                                           pitr_root: Path) -> None:
    """Issue 27: pitr-setup restarted PostgreSQL under no lock, so two setups of one server could interleave. An
    applying run now holds the server's advisory lock from before its plan (a paused run too); a second one is
    refused in one line and changes nothing; a dry run takes no lock; the restart ends the lock's session and the
    run takes the lock back before its check."""
    from prefect.flow_runs import resume_flow_run

    from runbooks.adapters.postgres import AdvisoryLock
    from runbooks.core.errors import LockBusy
    from runbooks.flows.pitr_setup import LOCK_KEY, pitr_setup_flow
    from tests.approvals import act_when_paused, paused_run

    server = psycopg.conninfo.conninfo_to_dict(pitr_env.dsn())
    _reset_archiving(pitr_env)
    other = AdvisoryLock(server, LOCK_KEY, holder="test other pitr-setup")  # as another run's session holds it
    other.acquire(wait_seconds=0)
    try:
        before = _untouched(pitr_env, pitr_root)
        state, planned = _plan(restart=True)  # a dry run takes no lock
        assert state.is_completed() and planned.dry_run, planned.error
        assert "take lock" not in _steps(planned)
        plan_hash = planned.plan.plan_hash
        state, refused = _confirmed(plan_hash, restart=True)
        error = refused.error or ""
        assert state.is_failed() and "\n" not in error, error
        assert f"another run holds {LOCK_KEY!r}" in error and "test other pitr-setup" in error, error
        assert "Nothing was changed" in error and "lock_wait_seconds" in error, error
        assert _steps(refused) == ["check change window", "take lock"], _steps(refused)  # before it even looked
        assert refused.timeline[-1].outcome.startswith("failed") and refused.plan is None
        assert refused.approval is None and not refused.config_written and refused.previous == []
        assert _untouched(pitr_env, pitr_root) == before
        assert _sql(pitr_env, "SHOW archive_mode")[0][0] == "off"
    finally:
        other.release()

    # A run waiting for approval holds the lock while paused: no other run may take it then.
    seen: list[str] = []

    def probe_then_reject() -> None:
        paused = paused_run(timeout=120)
        probe = AdvisoryLock(server, LOCK_KEY, holder="test probe")
        try:
            probe.acquire(wait_seconds=0)
            probe.release()
            seen.append("free")
        except LockBusy as exc:
            seen.append(str(exc))
        resume_flow_run(paused.id, run_input={"approve": False, "approver": "oncall-bob", "reason": "not now"})
        seen.append(str(paused.id))

    approver = act_when_paused(probe_then_reject)
    state = pitr_setup_flow(restart=True, dry_run=False, approval_timeout_seconds=180, approval_poll_seconds=1,
                            return_state=True)
    approver.join(timeout=60)
    assert not approver.errors, approver.errors  # type: ignore[attr-defined]
    declined = outcome(state)
    assert declined.declined and "was not approved" in (declined.error or ""), declined.error  # not Failed: no page
    assert len(seen) == 2 and f"another run holds {LOCK_KEY!r}" in seen[0], seen
    assert f"runbooks pitr-setup {seen[1]}" in seen[0], seen  # the paused run's own session
    assert _steps(declined)[:3] == ["check change window", "take lock", "inspect cluster"], _steps(declined)
    assert _untouched(pitr_env, pitr_root) == before

    # Free again: the same plan applies; the restart ends the lock's session, the lock is taken back before the
    # check, and nobody holds it once the run is over.
    state, applied = _confirmed(plan_hash, restart=True)
    assert state.is_completed(), applied.error
    steps = _steps(applied)
    assert steps.index("take lock") < steps.index("inspect cluster") < steps.index("approval"), steps
    assert steps.index("restart PostgreSQL") + 1 == steps.index("take lock again") < steps.index("check archiving")
    assert applied.restarted and applied.checked and _sql(pitr_env, "SHOW archive_mode")[0][0] == "on"
    after = AdvisoryLock(server, LOCK_KEY, holder="test after")
    after.acquire(wait_seconds=0)
    after.release()


@pytest.fixture
def lone(sandbox: SandboxState, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[PostgresCluster, Path]]:
    """A cluster and a pgBackRest work directory of one test's own, archiving set up by pitr-setup, with a short
    RPO (the setup's check waits that long for its segment)."""
    if server_os_user() is None:
        pytest.skip("turning the repository read-only for the postgres OS user needs root (CI runs as root)")
    root = Path(tempfile.mkdtemp(prefix="runbooks-pitr-lone-"))
    root.chmod(0o711)
    try:
        with protected("runbooks-pitr-lone-src-") as cluster:
            for key, value in {"CONFIG": sandbox.config_path, "PITR__DSN": cluster.dsn(), "PITR__WORK_DIR": str(root),
                               "PITR__SOCKET_DIRECTORY": str(cluster.socket_directory), "PITR__STANZA": "positions",
                               "PITR__ARCHIVE_TIMEOUT": "10s", "PITR__RPO": "10s"}.items():
                monkeypatch.setenv(f"RUNBOOKS_{key}", value)
            state, result = _setup()
            assert state.is_completed(), result.error
            yield cluster, root
    finally:
        _repository_writable(root, True)
        shutil.rmtree(root, ignore_errors=True)


def _repository_writable(root: Path, writable: bool) -> None:
    """The stanza's WAL archive: the postgres OS user's (as pgBackRest made it), or root's and read-only to it (a
    repository that stopped taking WAL: a full or read-only disk, a wrong owner after a restore of the host)."""
    owner = pwd.getpwnam("postgres") if writable else pwd.getpwuid(0)
    archive = root / "repo" / "archive" / "positions"
    for directory in [archive, *(p for p in archive.rglob("*") if p.is_dir())] if archive.exists() else []:
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        directory.chmod(0o750 if writable else 0o755)


def _wait_failing(cluster: PostgresCluster) -> int:
    """Write, switch WAL and wait until the archiver has failed on that segment at least twice; its failed_count."""
    _sql(cluster, "CREATE TABLE IF NOT EXISTS wal_filler (id int)")
    _sql(cluster, "INSERT INTO wal_filler VALUES (1)")  # a switch with nothing written since the last one is none
    _sql(cluster, "SELECT pg_switch_wal()")
    deadline = time.monotonic() + 30
    first = None
    while True:
        [(failing, count)] = _sql(cluster, "SELECT last_failed_wal IS NOT NULL AND (last_archived_time IS NULL OR "
                                           "last_failed_time > last_archived_time), failed_count FROM pg_stat_archiver")
        if failing and first is None:
            first = count
        if failing and first is not None and count > first:
            return int(count)  # climbing
        assert time.monotonic() < deadline, "the archiver never failed (twice)"
        time.sleep(0.2)


def test_archive_check_fails_with_next_steps_when_pitr_setups_own_archiving_fails(
        lone: tuple[PostgresCluster, Path]) -> None:
    """The archive_command is pitr-setup's, the repository no longer takes WAL: failed_count climbs and WAL piles
    up in pg_wal. archive-check says so as a failure, with what to do next."""
    from runbooks.flows.archive_check import archive_check_flow, render_report

    cluster, root = lone
    _repository_writable(root, False)
    failures = _wait_failing(cluster)
    state = archive_check_flow(notify=False, return_state=True)
    result = outcome(state)
    assert state.is_failed() and result.judgement.verdict == "failing", result.error
    assert result.state.failed_count >= failures and result.state.wal_bytes > 0
    assert not any("not the one pitr-setup configured" in r for r in result.judgement.reasons)  # its own command
    assert any("failed at" in r and "pg_wal holds" in r for r in result.judgement.reasons)
    steps = " ".join(result.next_steps)
    assert f"pgbackrest --config={root / 'pgbackrest.conf'} --stanza=positions check" in steps
    assert "ALTER SYSTEM SET archive_mode = 'off';" in steps
    assert f"runuser -u postgres -- {pg_bindir() / 'pg_ctl'} -D {cluster.datadir} -m fast restart" in steps
    assert "pg_wal" in render_report(result) and "Next steps" in render_report(result)
    _repository_writable(root, True)
    _wait_archived(cluster)


def test_a_setup_that_fails_after_alter_system_puts_the_previous_settings_back(
        lone: tuple[PostgresCluster, Path]) -> None:
    """Issue 24: a failure after ALTER SYSTEM used to leave archive_mode on and WAL failing to archive. Here the
    stanza exists and the cluster is reachable, but the repository takes no WAL: the setup's check fails after it
    has set archive_mode and restarted, and the run puts back what its own record says, restarting again."""
    from runbooks.flows.pitr_setup import render_report

    cluster, root = lone
    _reset_archiving(cluster)
    _sql(cluster, "ALTER SYSTEM SET archive_timeout = '45s'")  # one setting ALTER SYSTEM had set before the run
    _sql(cluster, "SELECT pg_reload_conf()")
    [(started,)] = _sql(cluster, "SELECT pg_postmaster_start_time()")
    _repository_writable(root, False)
    state, result = _setup(restart=True)
    assert state.is_failed() and "pgbackrest check" in (result.error or ""), result.error
    assert result.restarted  # archive_mode was live, and archiving failing, before the put-back
    assert {p.name: p.auto_conf for p in result.previous} == {"archive_mode": None, "archive_command": None,
                                                              "archive_timeout": "45s"}
    assert result.put_back == ["archive_mode", "archive_command", "archive_timeout"]
    assert result.put_back_restarted and result.still_changed == []
    steps = _steps(result)  # the restart ended the lock's session: taken back, then the failed check, the put-back
    assert steps[steps.index("restart PostgreSQL"):] == ["restart PostgreSQL", "take lock again", "check archiving",
                                                         "put previous settings back"], steps
    assert result.timeline[-1].outcome == "ok"
    assert _sql(cluster, "SHOW archive_mode")[0][0] == "off"
    assert _auto_conf(cluster) == {"archive_timeout": "45s"}  # postgresql.auto.conf as it was
    assert _sql(cluster, "SELECT count(*) FROM pg_settings WHERE pending_restart")[0][0] == 0
    assert _sql(cluster, "SELECT pg_postmaster_start_time()")[0][0] > started
    assert any("archiving is as it was before this run" in s for s in result.next_steps), result.next_steps
    assert "previous settings put back" in render_report(result)


def test_a_cluster_pgbackrest_cannot_reach_is_refused_before_anything_changes(
        sandbox: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox's cluster had unix_socket_directories = '': stanza-create failed ('unable to find primary
    cluster') after archive_mode was already on. Now the plan refuses it, naming the socket, and changes nothing."""
    with traversable_dir("runbooks-pitr-nosock-") as root, running_cluster(root / "pg") as cluster:
        work = root / "pitr"
        for key, value in {"CONFIG": sandbox.config_path, "PITR__DSN": cluster.dsn(), "PITR__WORK_DIR": str(work),
                           "PITR__SOCKET_DIRECTORY": str(cluster.socket_dir), "PITR__STANZA": "positions"}.items():
            monkeypatch.setenv(f"RUNBOOKS_{key}", value)
        for confirm in (False, True):
            state, result = _plan() if not confirm else _confirmed("0123456789ab")
            assert state.is_failed() and result.plan is None
            assert "no Unix socket (unix_socket_directories = '')" in (result.error or ""), result.error
            assert "Nothing was changed" in result.error
        assert _auto_conf(cluster) == {} and _sql(cluster, "SHOW archive_mode")[0][0] == "off"
        assert not work.exists()  # not even pgBackRest's config


def _confirmed(plan_hash: str, restart: bool = True) -> Any:
    from runbooks.flows.pitr_setup import pitr_setup_flow

    state = pitr_setup_flow(restart=restart, confirm=plan_hash, return_state=True)
    return state, outcome(state)


def test_the_sandbox_cluster_listens_on_a_private_socket_its_pitr_settings_name(sandbox: SandboxState) -> None:
    """So pgBackRest reaches it as the README says ('runbooks run pitr-setup' on the sandbox), and no other OS user
    reaches its trusted local connections."""
    cluster = sandbox.cluster()
    assert cluster.socket_directory == cluster.socket_dir
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        assert conn.execute("SHOW unix_socket_directories").fetchone() == (str(cluster.socket_dir),)
    assert cluster.socket_dir.stat().st_mode & 0o777 == 0o700
    assert (cluster.socket_dir / f".s.PGSQL.{cluster.port}").is_socket()
    pitr = PitrSettings.model_validate(tomllib.loads(Path(sandbox.config_path).read_text())["pitr"])
    assert pitr.socket_directory == cluster.socket_dir and pitr.stanza == "sandbox"


# -- pure parts ----------------------------------------------------------------------------------------------------
def _state(**kw: Any) -> ArchiverState:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    base: dict[str, Any] = {"read_at": now, "archive_mode": "on", "archive_command": "pgbackrest ... %p",
                            "archive_timeout_seconds": 60, "last_archived_at": now - timedelta(seconds=30)}
    return ArchiverState(**(base | kw))


def test_the_archiver_is_judged_against_the_rpo() -> None:
    rpo = timedelta(minutes=1)
    assert judge_archiver(_state(), rpo=rpo).verdict == "ok"
    assert judge_archiver(_state(archive_mode="off"), rpo=rpo).verdict == "off"
    now = _state().read_at
    waiting = judge_archiver(_state(ready_count=3, oldest_ready_at=now - timedelta(seconds=90)), rpo=rpo)
    assert waiting.verdict == "at_risk" and waiting.waiting_seconds == 90
    assert judge_archiver(_state(ready_count=1, oldest_ready_at=now - timedelta(seconds=20)), rpo=rpo).verdict == "ok"
    failing = judge_archiver(_state(last_failed_at=now - timedelta(seconds=5), last_failed_wal="0001", failed_count=2),
                             rpo=rpo)
    assert failing.verdict == "failing"
    recovered = _state(last_failed_at=now - timedelta(seconds=50), last_archived_at=now - timedelta(seconds=10))
    assert judge_archiver(recovered, rpo=rpo).verdict == "ok"  # archived since the failure
    assert judge_archiver(_state(archive_timeout_seconds=0), rpo=rpo).verdict == "at_risk"
    assert judge_archiver(_state(archive_timeout_seconds=300), rpo=rpo).verdict == "at_risk"
    assert judge_archiver(_state(pending_restart=["archive_mode"]), rpo=rpo).verdict == "at_risk"


def test_targets_need_a_time_zone() -> None:
    assert parse_target("latest") is None
    assert parse_target("2026-11-24T13:05:00Z") == datetime(2026, 11, 24, 13, 5, tzinfo=UTC)
    assert parse_target("2026-11-24T15:05:00+02:00") == datetime(2026, 11, 24, 13, 5, tzinfo=UTC)
    for bad in ("2026-11-24T13:05:00", "yesterday", "2026-13-01T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_the_config_keeps_line_breaks_out_and_the_port_apart() -> None:
    paths = PitrPaths(root=Path("/srv/pitr"))
    s3 = PitrSettings(repo_type="s3", s3_bucket="backups", s3_endpoint="minio.internal:9000", s3_key="AK")
    text = render_config(s3, paths, data_directory=Path("/var/lib/postgresql/15/main"), port=5432, user="postgres",
                         s3_key_secret="s3cr3t")
    assert "repo1-s3-endpoint=minio.internal\n" in text and "repo1-storage-port=9000\n" in text
    assert "repo1-path=/pgbackrest\n" in text and "repo1-s3-key-secret=s3cr3t\n" in text
    assert "repo1-storage-verify-tls=y\n" in text and "repo1-storage-ca-file" not in text  # the system's CAs
    private_ca = s3.model_copy(update={"s3_ca_file": Path("/etc/ssl/minio-ca.pem")})
    assert "repo1-storage-ca-file=/etc/ssl/minio-ca.pem\n" in render_config(
        private_ca, paths, data_directory=Path("/d"), port=5432, user="postgres", s3_key_secret=None)
    with pytest.raises(ConfigurationError):
        render_config(PitrSettings(), paths, data_directory=Path("/data\nrepo1-path=/tmp"), port=5432,
                      user="postgres", s3_key_secret=None)
    with pytest.raises(ConfigurationError) as refused:  # a secret read from a file, its line break kept
        render_config(s3, paths, data_directory=Path("/d"), port=5432, user="postgres", s3_key_secret="s3cr3t\n")
    assert "s3cr3t" not in str(refused.value) and "repo1-s3-key-secret" in str(refused.value)


def test_info_lists_backups_and_the_archived_range() -> None:
    text = ('[{"name": "positions", "status": {"code": 0, "message": "ok"}, "archive": [{"id": "15-1", '
            '"min": "000000010000000000000001", "max": "000000010000000000000009"}], "backup": [{"label": '
            '"20261124-133332F", "type": "full", "error": false, "prior": null, "timestamp": {"start": 1795527212, '
            '"stop": 1795527215}, "info": {"size": 22992581, "repository": {"delta": 2811770, "size": 2811770}}, '
            '"archive": {"start": "000000010000000000000002", "stop": "000000010000000000000003"}}]}]')
    info = parse_info(text, "positions")
    assert info.status == "ok" and info.wal_max == "000000010000000000000009"
    assert info.newest and info.newest.label == "20261124-133332F" and info.newest.stored == 2811770
    assert parse_info(text, "other").status == "missing stanza path"


def test_the_drill_scores_both_paths_and_the_physical_one_meets_the_one_minute_rpo(
        pitr_env: PostgresCluster, config: SandboxState, simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 002's position database row (RTO 10 min, RPO 1 min): the nightly logical path cannot meet the RPO
    (a day between backups); the physical path, WAL archived every 30 s, does."""
    import json

    from runbooks.flows.backup import backup_databases
    from runbooks.flows.dr_game_day import dr_game_day_flow
    from runbooks.flows.pitr_backup import pitr_backup_flow

    _sql(pitr_env, "DROP DATABASE IF EXISTS positions_db")
    _sql(pitr_env, "CREATE DATABASE positions_db")
    _sql(pitr_env, "CREATE TABLE positions (symbol text PRIMARY KEY, qty numeric NOT NULL)", dbname="positions_db")
    _sql(pitr_env, "INSERT INTO positions VALUES ('USD/COP', 10), ('EUR/COP', -3)", dbname="positions_db")
    monkeypatch.setenv("RUNBOOKS_DATABASES", json.dumps({"positions_db": {
        "dsn": pitr_env.dsn("positions_db"),
        "checks": [{"name": "every position has a symbol", "sql": "SELECT count(*) FROM positions WHERE symbol "
                    "IS NULL", "expect": 0}]}}))
    monkeypatch.setenv("RUNBOOKS_DRILL__COMPONENTS", json.dumps([
        {"name": "Position Database", "rto": "10m", "rpo": "1m", "tables": ["positions_db.public.positions"]},
        {"name": "Configuration", "rto": "15m", "rpo": "5m", "config_files": True}]))
    assert _setup()[0].is_completed()
    assert backup_databases(include_cluster=False, return_state=True).is_completed()
    assert pitr_backup_flow(kind="full", return_state=True).is_completed()
    _sql(pitr_env, "INSERT INTO positions VALUES ('GBP/COP', 1)", dbname="positions_db")  # after both backups
    _wait_archived(pitr_env)  # what the next archive_timeout would do

    state = dr_game_day_flow(physical=True, quality=False, return_state=True)
    result = outcome(state)
    physical = result.physical
    assert physical is not None and physical.proven, (physical and physical.detail, result.error)
    assert state.is_completed() and result.operational, result.error
    logical = {s.name: s for s in result.scorecard}
    phys = {s.name: s for s in physical.scorecard}
    assert logical["Position Database"].status == "missed" and logical["Position Database"].rpo_met is False
    assert phys["Position Database"].status == "met", phys["Position Database"].reasons
    assert phys["Position Database"].rpo_met is True
    assert phys["Configuration"].status == "failed"  # files are not in a physical backup: said, not hidden
    assert "public.positions" in physical.databases["positions_db"]
    assert "Physical path" in _report_of(state)
    restores = Path(os.environ["RUNBOOKS_PITR__WORK_DIR"]) / "restores"
    assert not list(restores.iterdir())  # the physical path's cluster is gone


def _report_of(state: Any) -> str:
    from runbooks.flows.dr_game_day import render_report

    return render_report(outcome(state))


def test_no_canary_password_leaks_from_the_pitr_runbooks(pitr_env: PostgresCluster, pitr_root: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13's canary drill for the four PITR runbooks: a superuser whose password is a canary, each runbook
    run to success and to failure (a wrong password, a target past the archive), then the Prefect API (logs,
    artifacts, runs with parameters, events), the results, pgBackRest's own files and the process table."""
    from runbooks.flows.archive_check import archive_check_flow
    from runbooks.flows.pitr_backup import PitrBackupParameters, pitr_backup_flow
    from runbooks.flows.pitr_restore import PitrRestoreParameters, pitr_restore_flow
    from runbooks.flows.pitr_setup import PitrSetupParameters, pitr_setup_flow
    from tests.test_secrets_canary import ProcessTable, Runs, _canary, control_run, excerpts, found, read_prefect_api

    pg, wrong, control = _canary("pg"), _canary("pgwrong"), _canary("control")
    _sql(pitr_env, "DROP ROLE IF EXISTS canary_admin")
    _sql(pitr_env, f"CREATE ROLE canary_admin LOGIN SUPERUSER PASSWORD '{pg.value}'")
    dsn = pitr_env.dsn(user="canary_admin", password=pg.value)
    monkeypatch.setenv("RUNBOOKS_PITR__DSN", dsn)
    wrong_dsn = {"RUNBOOKS_PITR__DSN": pitr_env.dsn(user="canary_admin", password=wrong.value)}
    table = ProcessTable([pg, wrong, control])
    table.start()
    run = Runs(monkeypatch)
    try:
        plan = run("pitr-setup, plan", pitr_setup_flow, PitrSetupParameters(restart=True), expect="COMPLETED")
        run("pitr-setup", pitr_setup_flow, PitrSetupParameters(restart=True, confirm=plan.result.plan.plan_hash),
            expect="COMPLETED")
        run("pitr-setup, wrong password", pitr_setup_flow, PitrSetupParameters(), expect="FAILED", env=wrong_dsn)
        run("pitr-backup", pitr_backup_flow, PitrBackupParameters(kind="incr"), expect="COMPLETED")
        run("pitr-backup, wrong password", pitr_backup_flow, PitrBackupParameters(), expect="FAILED", env=wrong_dsn)
        run("archive-check", archive_check_flow, None, expect="COMPLETED")
        run("archive-check, wrong password", archive_check_flow, None, expect="FAILED", env=wrong_dsn)
        run("pitr-restore", pitr_restore_flow, PitrRestoreParameters(keep_running=False), expect="COMPLETED")
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        run("pitr-restore, past the archive", pitr_restore_flow, PitrRestoreParameters(target_time=future),
            expect="FAILED")
        control_run(control.value)
    finally:
        table.stop()
        # Run first (alone), archive-check created the marker table as canary_admin: keep it, owned by the admin.
        _sql(pitr_env, "REASSIGN OWNED BY canary_admin TO CURRENT_USER")
        _sql(pitr_env, "DROP ROLE IF EXISTS canary_admin")
    places = read_prefect_api(control)
    places["results and final states"] = "\n".join(r.text for r in run.done)
    places["pgBackRest's config, logs and restores"] = "\n".join(
        p.read_bytes().decode(errors="replace") for p in pitr_root.rglob("*") if p.is_file() and not p.is_symlink())
    for place in ("logs (Prefect API)", "artifacts", "flow runs (parameters, names, state messages)", "events"):
        assert control.found_in(places[place]), f"the control is not seen in {place}: that reader is blind"
    assert "control" in table.hits and "pgbackrest" in table.programs, sorted(table.programs)
    leaks = {place: found([pg, wrong], text) for place, text in places.items()}
    leaks["process table"] = sorted(set(table.hits) - {"control"})
    leaks = {place: names for place, names in leaks.items() if names}
    details = {place: excerpts([pg, wrong], places[place]) for place in leaks if place in places}
    assert not leaks, f"canary passwords found: {leaks}; where: {details}; processes: {table.hits}"


def test_the_setup_plan_hash_covers_the_cluster_the_changes_the_config_and_the_restart() -> None:
    from runbooks.decisions.pitr import plan_setup

    base: dict[str, Any] = {
        "stanza": "positions", "system_identifier": "7300000000000000001", "data_directory": Path("/d"),
        "config_path": Path("/w/pgbackrest.conf"), "config_public": "[global]\n", "config_changes": True,
        "running": {"archive_mode": "off", "archive_command": "(disabled)", "archive_timeout": "30",
                    "wal_level": "replica"},
        "contexts": {"archive_mode": "postmaster", "archive_command": "sighup", "archive_timeout": "sighup",
                     "wal_level": "postmaster"},
        "wanted": {"archive_mode": "on", "archive_command": "pgbackrest ... %p", "archive_timeout": "30",
                   "wal_level": "replica"},
        "restart": False}
    plan = plan_setup(**base)
    assert [c.name for c in plan.changes] == ["archive_mode", "archive_command"]  # the rest already so
    assert plan.restart_needed and plan.stops_for_restart and re.fullmatch(r"[0-9a-f]{12}", plan.plan_hash)
    assert plan_setup(**base).plan_hash == plan.plan_hash  # stable: a dry run's hash confirms the same plan
    for change in ({"restart": True}, {"system_identifier": "7300000000000000002"}, {"config_public": "[g]\n"},
                   {"running": {**base["running"], "archive_command": "/bin/true"}}, {"data_directory": Path("/e")}):
        assert plan_setup(**(base | change)).plan_hash != plan.plan_hash, change
    done = plan_setup(**(base | {"running": {**base["running"], "archive_mode": "on",
                                             "archive_command": "pgbackrest ... %p"}}))
    assert done.changes == [] and not done.restart_needed


def test_what_a_person_is_told_to_type_is_exact() -> None:
    from runbooks.decisions.pitr import PreviousSetting, pg_ctl_command, socket_problem, undo_statements
    from runbooks.tasks.pgbackrest import _last_error

    assert undo_statements([PreviousSetting(name="archive_mode", running="off"),
                            PreviousSetting(name="archive_command", running="x", auto_conf="cp %p '/a b/%f'")]) == [
        "ALTER SYSTEM RESET archive_mode;", "ALTER SYSTEM SET archive_command = 'cp %p ''/a b/%f''';",
        "SELECT pg_reload_conf();"]
    assert undo_statements([]) == []
    pg_ctl = Path("/usr/lib/postgresql/15/bin/pg_ctl")
    assert pg_ctl_command(pg_ctl, Path("/srv/pg data"), "-m fast restart", os_user="postgres", as_root=True) == (
        "runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D '/srv/pg data' -m fast restart")
    assert pg_ctl_command(pg_ctl, "/d", "stop", os_user="postgres", as_root=False).startswith("sudo -u postgres -- ")
    assert pg_ctl_command(pg_ctl, "/d", "stop", os_user=None, as_root=True) == f"{pg_ctl} -D /d stop"
    assert "no Unix socket" in (socket_problem("", Path("/var/run/postgresql")) or "")
    assert "/tmp/elsewhere" in (socket_problem("/tmp/elsewhere", Path("/var/run/postgresql")) or "")
    assert socket_problem("/tmp, /var/run/postgresql", Path("/var/run/postgresql")) is None
    output = ("WARN: unable to check pg1: [DbConnectError] unable to connect to 'dbname='postgres' port=5 "
              "user='postgres' host='/nope'': connection to server on socket \"/nope/.s.PGSQL.5\" failed: No such "
              "file or directory\nERROR: [056]: unable to find primary cluster - cannot proceed\n"
              "       HINT: are all available clusters in recovery?\n")
    line = _last_error(output)
    assert line.startswith("ERROR: [056]: unable to find primary cluster") and "/nope/.s.PGSQL.5" in line
