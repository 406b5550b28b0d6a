"""``runbooks sandbox down`` deletes only what a sandbox made, decided from its own record: never a directory that
merely was named (a home, a project), never through a ``.sandbox`` link, never a file someone put inside, and it
stops only processes whose recorded pid still runs our child. Every tree here is made by the test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runbooks_sandbox import Sandbox, SandboxState
from tests.disks import traversable_dir
from tests.processes import bare_env, cli, one_error_line


@pytest.fixture
def parent() -> Iterator[Path]:
    """A directory of the test's own; traversable, since the cluster runs as the postgres OS user under root."""
    with traversable_dir("runbooks-sandbox-down-") as path:
        yield path


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() if p.is_file() else "<dir>" for p in sorted(root.rglob("*"))}


def _precious(root: Path) -> Path:
    (root / "important" / "deep").mkdir(parents=True)
    (root / "important" / "deep" / "data.txt").write_text("precious\n")
    (root / "notes.txt").write_text("mine\n")
    return root


def _up(root: Path, **kwargs: bool) -> tuple[Sandbox, SandboxState]:
    box = Sandbox(root)
    options = {"s3": False, "simulator": False, "prefect": False, "feeder": False, **kwargs}
    return box, box.up(size_mb=1, feed_interval=60, progress=lambda _m: None, **options)


def _alive(pid: int) -> bool:
    """Running (the sandbox's children are this process's: a stopped one lingers as a zombie until reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_a_directory_that_is_not_a_sandbox_is_refused_and_left_whole(parent: Path) -> None:
    victim = _precious(parent / "notasandbox")
    before = _tree(victim)
    proc = cli(bare_env(), "sandbox", "down", "--dir", str(victim), cwd=parent)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert f"{victim} is not a sandbox this tool made (no state record); nothing was removed. HINT:" in line
    assert proc.stdout == ""
    assert _tree(victim) == before


def _record(root: Path, **changes: object) -> SandboxState:
    return SandboxState(root=str(root), created_at=datetime.now(UTC), size_mb=1, postgres_port=1,
                        superuser_password="x", app_password="y", config_path=str(root / "runbooks.toml"),
                        **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("forgery", ["names-another-directory", "world-readable", "a-link-to-a-record", "not-json"])
def test_a_record_the_sandbox_did_not_write_decides_nothing(forgery: str, parent: Path) -> None:
    victim = _precious(parent / "victim")
    record = victim / "state.json"
    if forgery == "names-another-directory":  # e.g. a sandbox's directory copied elsewhere
        record.write_text(_record(parent / "elsewhere").model_dump_json())
    elif forgery == "world-readable":
        record.write_text(_record(victim).model_dump_json())
        record.chmod(0o644)
    elif forgery == "a-link-to-a-record":
        (parent / "real.json").write_text(_record(victim).model_dump_json())
        (parent / "real.json").chmod(0o600)
        record.symlink_to(parent / "real.json")
    else:
        record.write_text("{not json")
    if forgery != "world-readable" and not record.is_symlink():
        record.chmod(0o600)
    before = _tree(victim)
    proc = cli(bare_env(), "sandbox", "down", "--dir", str(victim), cwd=parent)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is not a sandbox this tool made (" in one_error_line(proc)
    assert _tree(victim) == before


def test_a_sandbox_link_is_refused_and_its_target_untouched(parent: Path) -> None:
    target = _precious(parent / "target")
    (parent / "work").mkdir()
    (parent / "work" / ".sandbox").symlink_to("../target")
    before = _tree(target)
    proc = cli(bare_env(), "sandbox", "down", cwd=parent / "work")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert "is not a sandbox this tool made (it is a symbolic link to ../target); nothing was removed." in line
    assert _tree(target) == before and (parent / "work" / ".sandbox").is_symlink()


@pytest.mark.slow  # end to end on real servers: run with the drills, to keep the suite short
def test_down_stops_the_sandbox_removes_what_it_made_and_keeps_a_users_file(parent: Path) -> None:
    root = parent / "box"
    box, state = _up(root, feeder=True)
    feeder = state.pids["feeder"]
    assert state.cluster().is_running() and _alive(feeder)
    (root / "mine.txt").write_text("keep me\n")

    # A link to a real sandbox is refused too, with everything still running.
    (parent / "link").symlink_to(root)
    link = cli(bare_env(), "sandbox", "down", "--dir", str(parent / "link"), cwd=parent)
    assert link.returncode == 2 and "symbolic link" in one_error_line(link)
    assert state.cluster().is_running() and _alive(feeder)

    proc = cli(bare_env(), "sandbox", "down", "--dir", str(root), cwd=parent)
    assert proc.returncode == 0, proc.stderr
    assert f"stopped feeder (pid {feeder})" in proc.stdout and "stopped PostgreSQL" in proc.stdout
    assert f"kept {root}" in proc.stdout and "mine.txt" in proc.stdout
    assert not state.cluster().is_running() and not _alive(feeder)
    assert sorted(p.name for p in root.iterdir()) == ["mine.txt"]
    assert (root / "mine.txt").read_text() == "keep me\n"


def test_a_recorded_pid_that_now_runs_another_program_is_left_alone(parent: Path) -> None:
    root = parent / "box"
    box, state = _up(root)
    # The record's pid reused by someone else's program, which leads its own process group as ours did.
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        state.pids["simulator"] = other.pid
        box._save(state)
        done = box.down()
        assert f"left pid {other.pid} alone: it is no longer the sandbox's simulator" in done
        assert other.poll() is None
        assert not state.cluster().is_running() and not root.exists()
    finally:
        other.kill()
        other.wait()


def test_a_half_made_sandbox_removes_only_what_it_made(parent: Path) -> None:
    root = _precious(parent / "existing")
    before = _tree(root)

    def fail_while_seeding(message: str) -> None:
        if "seeding" in message:
            raise RuntimeError("interrupted while seeding")

    box = Sandbox(root)
    with pytest.raises(RuntimeError, match="interrupted while seeding"):
        box.up(size_mb=1, s3=False, simulator=False, prefect=False, feeder=False, progress=fail_while_seeding)
    assert _tree(root) == before  # the cluster it had started is gone with its files; the user's stay
    assert not _processes_under(root / "postgres")


def _processes_under(directory: Path) -> list[int]:
    """Pids whose command line names ``directory`` (a postmaster runs with ``-D <datadir>``)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(directory).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
