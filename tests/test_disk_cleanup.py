"""The disk-cleanup runbook on real trees, a real small filesystem (tmpfs), the sandbox's PostgreSQL and
repository: selection, safety limits, watermarks, dry run equal to the real run, bad input, kept databases."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runbooks.adapters.cleanup import Budget, Ledger, Manifest, Usage, Walk, clean_tree, manifest_lines, measure, survey
from runbooks.adapters.postgres import server_identity
from runbooks.adapters.records import DatabaseRecord, RestoreRecords
from runbooks.adapters.repository import open_repository
from runbooks.flows.disk_cleanup import CleanupResult, plan_hash
from runbooks.settings import FileRule, load_settings
from runbooks_sandbox import SandboxState
from tests.approvals import decide_when_paused
from tests.repositories import catalog
from tests.runs import run_backup, run_cleanup

DAY = 86400
OLD = time.time() - 30 * DAY


def write(path: Path, size: int = 1000, *, age_days: float = 0, content: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if content is not None else os.urandom(size))
    if age_days:
        moment = time.time() - age_days * DAY
        os.utime(path, (moment, moment))
    return path


def walk_of(*, dry_run: bool = False, force: bool = True, ledger: Ledger | None = None, max_files: int = 10**9,
            max_bytes: int = 10**15, manifest: Path | None = None, held: set[tuple[int, int]] | None = None,
            protected: list[str] | None = None) -> Walk:
    return Walk(ledger=ledger or Ledger([], high=85, low=80, force=force), budget=Budget(max_files, max_bytes),
                manifest=Manifest(manifest), protected_patterns=protected if protected is not None else
                ["*.pid", "postmaster.*", "pg_wal", "[0-9A-F]" * 24], held=held or set(), dry_run=dry_run)


def rule(root: Path, **kw: Any) -> FileRule:
    """Every file older than 7 days under ``root`` unless patterns are given (then only those names)."""
    defaults: dict[str, Any] = {"older_than": timedelta(days=7), "match_all": "patterns" not in kw}
    return FileRule(name=kw.pop("name", "logs"), roots=[root], **{**defaults, **kw})


request_cleanup: list[Path] = []


@pytest.fixture(autouse=True, scope="module")
def _remove_flood_dirs() -> Iterator[None]:
    yield
    for path in request_cleanup:
        subprocess.run(["chmod", "-R", "u+rwx", str(path)], check=False)
        subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Old and new logs, protected names, and links and files outside the root that must survive."""
    root = tmp_path / "logs"
    outside = write(tmp_path / "outside" / "precious.log", age_days=30)
    write(root / "app" / "old.log", age_days=30)
    write(root / "app" / "old.log.1", age_days=30)
    write(root / "app" / "new.log", age_days=1)
    write(root / "app" / "deep" / "er" / "old.log", age_days=10)
    write(root / "run" / "app.pid", age_days=30)
    write(root / "db" / "postmaster.pid", age_days=30)
    write(root / "db" / "pg_wal" / "000000010000000000000001", age_days=30)
    write(root / "db" / "000000010000000000000002", age_days=30)
    write(root / "notes.txt", age_days=30)
    (root / "link-to-outside.log").symlink_to(outside)
    (root / "dir-link").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(root / "fifo.log")
    return root


def test_deletes_only_old_regular_files_under_the_root(tree: Path, tmp_path: Path) -> None:
    outcome = clean_tree(rule(tree, patterns=["*.log", "*.log.*", "*"], match_all=True), tree, walk_of())
    left = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    assert "app/new.log" in left and "link-to-outside.log" in left and "dir-link" in left and "fifo.log" in left
    assert not (tree / "app" / "old.log").exists() and not (tree / "app" / "deep" / "er" / "old.log").exists()
    assert not (tree / "notes.txt").exists()
    for protected in ("run/app.pid", "db/postmaster.pid", "db/pg_wal/000000010000000000000001",
                      "db/000000010000000000000002"):
        assert (tree / protected).exists(), protected
    assert (tmp_path / "outside" / "precious.log").exists()
    assert outcome.files == 4 and outcome.bytes >= 4000
    assert outcome.skipped["symbolic link"] == 2 and outcome.skipped["not a regular file"] == 1
    assert outcome.skipped["protected"] == 4  # two pid files, the WAL segment, the pg_wal directory


def test_patterns_select_by_name(tree: Path) -> None:
    outcome = clean_tree(rule(tree, patterns=["*.log"]), tree, walk_of())
    assert outcome.files == 2
    assert (tree / "app" / "old.log.1").exists() and (tree / "notes.txt").exists()


def test_dry_run_plans_exactly_what_the_real_run_does(tree: Path, tmp_path: Path) -> None:
    r = rule(tree, match_all=True)
    dry = clean_tree(r, tree, walk_of(dry_run=True, manifest=tmp_path / "dry.gz"))
    before = sorted(str(p) for p in tree.rglob("*"))
    assert sorted(str(p) for p in tree.rglob("*")) == before  # nothing touched
    real = clean_tree(r, tree, walk_of(manifest=tmp_path / "real.gz"))
    planned = [(m.path, m.bytes) for m in manifest_lines(tmp_path / "dry.gz")]
    done = [(m.path, m.bytes) for m in manifest_lines(tmp_path / "real.gz")]
    assert sorted(planned) == sorted(done) and len(done) == dry.files == real.files == 4  # two unlink threads
    assert {m.action for m in manifest_lines(tmp_path / "dry.gz")} == {"would-delete"}
    assert {m.action for m in manifest_lines(tmp_path / "real.gz")} == {"deleted"}
    assert all(not Path(path).exists() for path, _ in done)


def test_budget_stops_early(tree: Path) -> None:
    outcome = clean_tree(rule(tree, match_all=True), tree, walk_of(max_files=2))
    assert outcome.files == 2 and outcome.state == "stopped" and "budget" in outcome.why
    assert sum(1 for p in tree.rglob("*") if p.is_file() and not p.is_symlink()) == 9 - 2
    by_bytes = clean_tree(rule(tree, match_all=True), tree, walk_of(max_bytes=5000))  # on-disk blocks: 4 KiB a file
    assert by_bytes.files == 1 and by_bytes.state == "stopped"


def test_open_files_are_left(tree: Path) -> None:
    from runbooks.adapters.cleanup import open_files

    with open(tree / "app" / "old.log", "rb"):
        outcome = clean_tree(rule(tree, patterns=["*.log"]), tree, walk_of(held=open_files()))
    assert (tree / "app" / "old.log").exists()
    assert outcome.skipped["open by a process"] == 1 and outcome.files == 1


def test_hard_links_free_nothing_until_the_last_goes(tmp_path: Path) -> None:
    root = tmp_path / "r"
    kept = write(tmp_path / "elsewhere.log", 100_000, age_days=30)
    root.mkdir()
    os.link(kept, root / "linked.log")
    outcome = clean_tree(rule(root), root, walk_of())
    assert outcome.files == 1 and outcome.bytes == 0 and kept.exists()


def test_compresses_rotated_logs_in_place(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    text = b"2026-11-01 INFO order filled\n" * 20_000
    write(root / "app.log.1", content=text, age_days=3)
    write(root / "app.log", content=text, age_days=3)
    write(root / "app.log.2.gz", content=gzip.compress(text), age_days=3)
    mtime = (root / "app.log.1").stat().st_mtime
    outcome = clean_tree(rule(root, action="compress", patterns=["*.log.[0-9]"], older_than=timedelta(days=1)),
                         root, walk_of())
    assert outcome.files == 1 and outcome.bytes > 0
    assert not (root / "app.log.1").exists() and (root / "app.log").exists()
    assert gzip.decompress((root / "app.log.1.gz").read_bytes()) == text
    assert (root / "app.log.1.gz").stat().st_mtime == pytest.approx(mtime, abs=1)
    assert oct((root / "app.log.1.gz").stat().st_mode & 0o777) == oct((root / "app.log").stat().st_mode & 0o777)
    assert not list(root.glob(".*partial"))


def test_removes_emptied_old_directories_but_never_the_root(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    write(root / "a" / "b" / "old", age_days=30)
    write(root / "c" / "old", age_days=30)
    write(root / "c" / "new", age_days=0)
    for d in (root / "a" / "b", root / "a", root / "c"):
        os.utime(d, (OLD, OLD))
    r = rule(root, name="tmp", remove_empty_dirs=True)
    dry = clean_tree(r, root, walk_of(dry_run=True))
    real = clean_tree(r, root, walk_of())
    assert dry.dirs_removed == real.dirs_removed == 2 and dry.files == real.files == 2
    assert root.is_dir() and not (root / "a").exists() and (root / "c" / "new").exists()


def test_never_enters_another_filesystem(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs inside the tree needs root (CI runs as root)")
    root = tmp_path / "r"
    mount = root / "mnt"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        write(mount / "old.log", age_days=30)
        write(root / "old.log", age_days=30)
        outcome = clean_tree(rule(root), root, walk_of())
        assert (mount / "old.log").exists() and not (root / "old.log").exists()
        assert outcome.files == 1
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_directory_swapped_for_a_link_is_not_followed(tmp_path: Path) -> None:
    """find lists root/a/old.log; before it is removed, root/a becomes a link to a victim directory."""
    root, victim = tmp_path / "root", tmp_path / "victim"
    write(root / "a" / "old.log", age_days=30)
    write(victim / "old.log", age_days=30)
    from runbooks.adapters import cleanup

    real = cleanup._Dirs.open

    def swapping(self: Any, relative: bytes) -> int:
        if relative == b"a" and (root / "a").is_dir() and not (root / "a").is_symlink():
            (root / "a" / "old.log").unlink()
            (root / "a").rmdir()
            (root / "a").symlink_to(victim, target_is_directory=True)
        return real(self, relative)

    cleanup._Dirs.open = swapping  # type: ignore[method-assign]
    try:
        outcome = clean_tree(rule(root), root, walk_of())
    finally:
        cleanup._Dirs.open = real  # type: ignore[method-assign]
    assert (victim / "old.log").exists()
    assert outcome.files == 0 and outcome.skipped.get("changed during the walk") == 1


def test_names_that_are_not_utf8_are_deleted_and_reported_escaped(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    odd = os.path.join(os.fsencode(root), b"caf\xe9\nline.log")
    with open(odd, "wb") as f:
        f.write(b"x")
    os.utime(odd, (OLD, OLD))
    outcome = clean_tree(rule(root), root, walk_of(manifest=tmp_path / "m.gz"))
    assert outcome.files == 1 and not os.path.exists(odd)
    assert outcome.samples == [f"{root}/caf\\xe9\nline.log"]
    outcome.model_dump_json()  # the result (and so the report) serialises
    assert [m.path for m in manifest_lines(tmp_path / "m.gz")] == outcome.samples


def test_a_root_reached_through_a_swapped_parent_is_refused(tmp_path: Path) -> None:
    """The allowed root's child is checked, then swapped for a link to a directory outside the allowlist."""
    outside = tmp_path / "etc"
    precious = write(outside / "logs" / "precious.log", age_days=30)
    user = tmp_path / "tmp" / "user"
    write(user / "logs" / "old.log", age_days=30)
    root = user / "logs"
    (user / "logs" / "old.log").unlink()
    (user / "logs").rmdir()
    user.rmdir()
    user.symlink_to(outside, target_is_directory=True)
    outcome = clean_tree(rule(root), root, walk_of())
    assert outcome.state == "failed" and "without following a link" in outcome.why
    assert precious.exists()


def test_compression_never_writes_through_a_planted_file(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    write(root / "app.log.1", content=b"line\n" * 1000, age_days=3)
    victim = write(tmp_path / "victim", content=b"keep me")
    for guess in (".app.log.1.gz.runbooks-partial", "app.log.1.gz.partial"):
        os.link(victim, root / guess)
    clean_tree(rule(root, action="compress", patterns=["*.log.[0-9]"], older_than=timedelta(days=1)), root,
               walk_of())
    assert victim.read_bytes() == b"keep me"
    assert gzip.decompress((root / "app.log.1.gz").read_bytes()) == b"line\n" * 1000


def test_compression_keeps_a_log_written_to_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runbooks.adapters import cleanup

    root = tmp_path / "logs"
    log = write(root / "app.log.1", content=b"line\n" * 1000, age_days=3)
    real = cleanup.shutil.copyfileobj

    def appending(src: Any, dst: Any, length: int = 0) -> None:
        real(src, dst, length)
        with open(log, "ab") as late:  # a writer that opens, appends and closes while the copy is made
            late.write(b"late line\n")

    monkeypatch.setattr(cleanup.shutil, "copyfileobj", appending)
    outcome = clean_tree(rule(root, action="compress", patterns=["*.log.[0-9]"], older_than=timedelta(days=0)),
                         root, walk_of())
    assert log.read_bytes().endswith(b"late line\n") and not (root / "app.log.1.gz").exists()
    assert outcome.files == 0 and outcome.skipped == {"written to while being compressed": 1}
    assert not list(root.glob(".*partial"))


def test_hard_links_inside_the_tree_count_once_when_the_last_goes(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for i in range(3):
        first = write(root / f"a{i}.log", 100_000, age_days=30)
        os.link(first, root / f"b{i}.log")
    outcome = clean_tree(rule(root), root, walk_of())
    assert outcome.files == 6 and outcome.bytes >= 3 * 100_000


def test_the_dry_run_sees_a_compressed_log_as_its_gz(tmp_path: Path) -> None:
    """rotated-logs compresses app.log.1 (it keeps its old mtime); old-logs then deletes app.log.1.gz."""
    text = b"2026-11-01 INFO order filled\n" * 20_000
    trees = []
    for name in ("dry", "real"):
        root = tmp_path / name
        write(root / "app.log.1", content=text, age_days=30)
        trees.append(root)
    outcomes = []
    for root, dry in zip(trees, (True, False), strict=True):
        walk = walk_of(dry_run=dry, manifest=tmp_path / f"{root.name}.gz")
        outcomes.append([clean_tree(rule(root, name="rotated-logs", action="compress", patterns=["*.log.[0-9]"],
                                         older_than=timedelta(days=1)), root, walk),
                         clean_tree(rule(root, name="old-logs", patterns=["*.log", "*.log.*"]), root, walk)])
        walk.manifest.close()
    (dry_compress, dry_delete), (real_compress, real_delete) = outcomes
    assert dry_delete.samples == [str(trees[0] / "app.log.1.gz")]
    assert real_delete.samples == [str(trees[1] / "app.log.1.gz")] and not list(trees[1].iterdir())
    assert dry_compress.files == real_compress.files == dry_delete.files == real_delete.files == 1
    dry_total, real_total = dry_compress.bytes + dry_delete.bytes, real_compress.bytes + real_delete.bytes
    assert dry_total == real_total  # both free the whole log in the end; only the split is estimated


def test_a_young_directory_keeps_its_old_parent(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    (root / "old" / "young").mkdir(parents=True)
    os.utime(root / "old", (OLD, OLD))
    r = rule(root, name="tmp", remove_empty_dirs=True)
    dry = clean_tree(r, root, walk_of(dry_run=True))
    real = clean_tree(r, root, walk_of())
    assert dry.dirs_removed == real.dirs_removed == 0 and (root / "old" / "young").is_dir()


def test_never_enters_a_bind_mount_of_the_same_filesystem(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root (CI runs as root)")
    root, outside = tmp_path / "r", tmp_path / "outside"
    precious = write(outside / "precious.log", age_days=30)
    (root / "bound").mkdir(parents=True)
    write(root / "old.log", age_days=30)
    subprocess.run(["mount", "--bind", str(outside), str(root / "bound")], check=True)
    try:
        outcome = clean_tree(rule(root), root, walk_of())
        assert precious.exists() and not (root / "old.log").exists()
        assert outcome.skipped.get("mount point") == 1
    finally:
        subprocess.run(["umount", str(root / "bound")], check=True)


def test_a_flood_of_find_errors_does_not_stall_the_walk() -> None:
    """Thousands of unreadable directories (as a user without CAP_DAC_READ_SEARCH) fill find's stderr."""
    tmp_path = Path(tempfile.mkdtemp(prefix="runbooks-flood-"))  # not under pytest's 0700 directories
    request_cleanup.append(tmp_path)
    root = tmp_path / "r"
    for i in range(1500):
        (root / f"locked-{i:04d}-{'x' * 40}").mkdir(parents=True, mode=0o000)
    write(root / "old.log", age_days=30)
    script = ("import sys; from pathlib import Path; from runbooks.adapters.cleanup import *; "
              "from runbooks.settings import FileRule; r = Path(sys.argv[1]); "
              "w = Walk(ledger=Ledger([], high=85, low=80, force=True), budget=Budget(10**6, 10**12), "
              "manifest=Manifest(None), protected_patterns=[], held=set(), dry_run=False); "
              "o = clean_tree(FileRule(name='x', roots=[r], match_all=True), r, w); "
              "print(o.files, o.skipped.get('error', 0))")
    command = [sys.executable, "-c", script, str(root)]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
        os.chmod(tmp_path, 0o777)
        os.chmod(root, 0o777)
        os.chmod(root / "old.log", 0o666)
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    files, errors = map(int, done.stdout.split())
    assert files == 1 and errors >= 20


def test_ledger_stops_at_the_low_watermark(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for i in range(10):
        write(root / f"f{i}.log", 40_960, age_days=30)
    device = os.stat(root).st_dev
    usage = Usage(path=str(root), device=device, total_bytes=1_000_000, used_bytes=900_000, available_bytes=100_000)
    ledger = Ledger([usage], high=85, low=80, force=False)
    outcome = clean_tree(rule(root), root, walk_of(ledger=ledger))
    need = usage.bytes_to(80)
    assert outcome.state == "stopped" and "low watermark" in outcome.why
    assert outcome.bytes >= need and outcome.bytes - 40_960 < need
    healthy = Ledger([usage.model_copy(update={"used_bytes": 500_000})], high=85, low=80, force=False)
    untouched = clean_tree(rule(root), root, walk_of(ledger=healthy))
    assert untouched.state == "skipped" and untouched.files == 0


def test_survey_lists_the_largest_children(tmp_path: Path) -> None:
    write(tmp_path / "s" / "big" / "x" / "a", 300_000)
    write(tmp_path / "s" / "small" / "b", 10_000)
    write(tmp_path / "s" / "file", 50_000)
    top = survey(tmp_path / "s", top=2)
    assert [c.path.rsplit("/", 1)[1] for c in top] == ["big", "file"]
    assert top[0].bytes >= 300_000


# -- the flow ----------------------------------------------------------------------------------------------------
def cleanup_settings(monkeypatch: pytest.MonkeyPatch, **section: Any) -> None:
    monkeypatch.setenv("RUNBOOKS_CLEANUP", json.dumps(section, default=str))


def fill(disk: Path, *, old: int, new: int, size: int = 512 * 1024) -> None:
    for i in range(old):
        write(disk / "logs" / f"app-{i:03d}.log", size, age_days=10 + i)
    for i in range(new):
        write(disk / "logs" / f"fresh-{i:03d}.log", size)


def disk_rules(disk: Path) -> dict[str, Any]:
    return {"watch": [str(disk)], "allowed_roots": [str(disk)], "survey": [str(disk)], "high_watermark": 85,
            "low_watermark": 80, "rules": [{"kind": "files", "name": "old-logs", "roots": [str(disk / "logs")],
                                            "patterns": ["*.log"], "older_than": "7d"}]}


def test_cleans_a_full_disk_down_to_the_low_watermark_and_no_further(config: SandboxState, small_disk: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fill(small_disk, old=20, new=8)  # 28 x 512 KiB of 16 MiB: 87.5 %
    assert measure(small_disk).percent >= 85
    cleanup_settings(monkeypatch, **disk_rules(small_disk))
    _, plan = run_cleanup()  # dry run by default
    assert plan.succeeded and plan.triggered and plan.dry_run and plan.healthy is None
    assert len(list((small_disk / "logs").iterdir())) == 28
    state, done = run_cleanup(dry_run=False)
    assert state.is_completed() and done.succeeded and done.healthy
    after = measure(small_disk)
    assert after.percent < 80
    assert done.files[0].files == plan.files[0].files == 3  # 87.5 % - 2 x 3.125 % is still 81.25 %
    left = sorted(p.name for p in (small_disk / "logs").iterdir())
    assert len(left) == 28 - done.files[0].files and all(f"fresh-{i:03d}.log" in left for i in range(8))
    planned = [m.path for m in manifest_lines(Path(plan.manifest or ""))]
    deleted = [m.path for m in manifest_lines(Path(done.manifest or ""))]
    assert sorted(planned) == sorted(deleted) and all(not Path(p).exists() for p in deleted)
    assert oct(Path(done.manifest or "").stat().st_mode & 0o777) == "0o600"
    assert any(c.path.endswith("/logs") for c in done.consumers[str(small_disk)])
    _, again = run_cleanup(dry_run=False)  # healthy now: nothing to do
    assert again.succeeded and not again.triggered and not again.files


def test_reports_a_disk_it_cannot_bring_below_the_high_watermark(config: SandboxState, small_disk: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fill(small_disk, old=1, new=28)  # 90.6 %: one file gone leaves 87.5 %
    cleanup_settings(monkeypatch, **disk_rules(small_disk))
    state, result = run_cleanup(dry_run=False)
    assert state.is_failed() and result.healthy is False and result.files[0].files == 1
    assert any("grow the disk" in step for step in result.next_steps)


def test_force_runs_every_rule_whatever_the_watermark(config: SandboxState, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "logs"
    write(root / "old.log", age_days=30)
    write(root / "new.log")
    cleanup_settings(monkeypatch, watch=[str(tmp_path)], allowed_roots=[str(root)], survey=[],
                     rules=[{"kind": "files", "name": "old-logs", "roots": [str(root)], "match_all": True}])
    _, idle = run_cleanup(dry_run=False)
    assert not idle.triggered and idle.succeeded and (root / "old.log").exists()
    _, forced = run_cleanup(dry_run=False, force=True)
    assert forced.succeeded and not (root / "old.log").exists() and (root / "new.log").exists()
    report = render(forced)
    assert "# Disk cleanup (forced) — freed " in report and "nothing to do" not in report  # issue 24's wording
    assert "forced, every selected rule ran anyway" in report
    assert "# Disk cleanup — nothing to do" in render(idle) and "freed" not in render(idle).splitlines()[0]


def render(result: CleanupResult) -> str:
    from runbooks.flows.disk_cleanup import render_report

    return render_report(result)


def fake_cluster(path: Path) -> Path:
    """A stopped PostgreSQL data directory as far as anyone can tell from its files (no postmaster.pid)."""
    for name in ("PG_VERSION", "global/pg_control", "base/1/1259", "pg_tblspc/.keep"):
        write(path / name, 100, age_days=30)
    for directory in (path / "pg_tblspc", path / "base" / "1", path / "base", path / "global", path):
        os.utime(directory, (OLD, OLD))
    return path


def test_force_never_enters_a_data_directory_deep_in_a_root(config: SandboxState, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24: 962 files of a stopped cluster were planned. One deeper than the settings look is met by the walk,
    which never enters it, forced and real (on this test's own tree)."""
    root = tmp_path / "scratch"
    cluster = fake_cluster(root / "app" / "old" / "pg" / "data")
    inside = sorted(str(p) for p in cluster.rglob("*"))
    beside = write(root / "app" / "old.tmp", age_days=30)
    for directory in (root / "app" / "old" / "pg", root / "app" / "old", root / "app"):
        os.utime(directory, (OLD, OLD))
    cleanup_settings(monkeypatch, watch=[str(tmp_path)], allowed_roots=[str(root)], survey=[],
                     rules=[{"kind": "files", "name": "tmp", "roots": [str(root)], "match_all": True,
                             "older_than": "10d", "remove_empty_dirs": True}])
    _, done = run_cleanup(dry_run=False, force=True)
    assert done.succeeded and not beside.exists()
    assert sorted(str(p) for p in cluster.rglob("*")) == inside
    assert done.files[0].data_directories == [str(cluster)] and done.files[0].dirs_removed == 0
    assert str(cluster) not in {m.path for m in manifest_lines(Path(done.manifest or ""))}
    assert f"Not entered in {root}: PostgreSQL data directories" in render(done)


def test_the_report_separates_errors_from_the_manifest_line() -> None:
    """Issue 24: "Operation not permitted Manifest of all 5 paths:" read as one line (a list needs a blank line
    after it, or the next paragraph continues its last item)."""
    from runbooks.adapters.cleanup import TreeOutcome

    outcome = TreeOutcome(rule="tmp", action="delete", root="/tmp", files=4,
                          errors=["/tmp/a/locked: Operation not permitted"])
    result = CleanupResult(started_at=datetime.now(UTC), dry_run=False, force=True, high_watermark=85,
                           low_watermark=80, files=[outcome], manifest="/state/cleanup/m.jsonl.gz", manifest_entries=5)
    report = render(result)
    assert "- /tmp/a/locked: Operation not permitted\n\nManifest of all 5 paths:" in report


def test_an_absurdly_long_path_is_shortened_in_the_report_and_whole_in_the_manifest(tmp_path: Path) -> None:
    """A 5,000-character path (deeper than PATH_MAX: built and removed relative to directory fds)."""
    root = tmp_path / "r"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    parts = [f"{i:02d}" + "d" * 197 for i in range(25)]
    try:
        for part in parts:
            os.mkdir(part, dir_fd=fd)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("old.log", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
        os.utime("old.log", (OLD, OLD), dir_fd=fd)
    finally:
        os.close(fd)
    outcome = clean_tree(rule(root), root, walk_of(manifest=tmp_path / "m.gz"))
    full = f"{root}/{'/'.join(parts)}/old.log"
    assert len(full) > 5000 and outcome.files == 1
    assert [m.path for m in manifest_lines(tmp_path / "m.gz")] == [full] == outcome.samples
    report = render(CleanupResult(started_at=datetime.now(UTC), dry_run=False, force=True, high_watermark=85,
                                  low_watermark=80, files=[outcome], manifest=str(tmp_path / "m.gz"),
                                  manifest_entries=1))
    assert full not in report and max(len(line) for line in report.splitlines()) < 400
    shown = next(line for line in report.splitlines() if line.startswith("- `"))
    assert shown.startswith(f"- `{str(root)[:20]}") and shown.endswith("dddd/old.log`") and "characters]…" in shown


LOGS = {"kind": "files", "name": "x", "patterns": ["*.log"]}


@pytest.mark.parametrize(("section", "expected"), [
    ({"rules": [{**LOGS, "roots": ["/"]}], "allowed_roots": ["/tmp"]}, "rule 'x': root '/' is / (the root directory"),
    ({"allowed_roots": ["/"]}, "allowed root '/' is / (the root directory"),
    ({"rules": [{**LOGS, "roots": ["relative/logs"]}]}, "is not an absolute path"),
    ({"rules": [{**LOGS, "roots": ["/etc"]}]}, "rule 'x': root '/etc' is /etc (host-specific system configuration"),
    ({"rules": [{**LOGS, "roots": ["/var/tmp/x"]}], "allowed_roots": ["/var"]}, "allowed root '/var' is /var ("),
    ({"rules": [{**LOGS, "roots": ["/tmp"], "older_than": "-7d"}]}, "must not be negative"),
    ({"rules": [{"kind": "files", "name": "x", "roots": ["/tmp"]}]}, "rule 'x' names no patterns"),
    ({"low_watermark": 90, "high_watermark": 85}, "must be below high_watermark"),
    ({"rules": [{**LOGS, "roots": ["/tmp/../etc"]}]}, "contains '..'"),
])
def test_bad_settings_are_refused_in_one_line_before_anything_is_deleted(
        config: SandboxState, tmp_path: Path, section: dict[str, Any], expected: str) -> None:
    """Refused when the settings load, forced or not. A dry run all the same: a test never asks for a real cleanup
    of a system path, even one it expects to be refused (issue 24)."""
    victim = write(tmp_path / "old.log", age_days=30)
    env = {**os.environ, "RUNBOOKS_CLEANUP": json.dumps(section)}
    done = subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "disk-cleanup", "-p", "dry_run=true",
                           "-p", "force=true"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert victim.exists()


@pytest.mark.parametrize(("problem", "expected"), [("missing", "does not exist"), ("link", "symbolic link"),
                                                   ("file", "is not a directory")])
def test_unusable_roots_are_refused_before_anything_is_deleted(config: SandboxState, tmp_path: Path, problem: str,
                                                               expected: str) -> None:
    first = tmp_path / "first"
    victim = write(first / "old.log", age_days=30)
    second = tmp_path / "second"
    if problem == "link":
        second.symlink_to(first, target_is_directory=True)
    elif problem == "file":
        write(second)
    section = {"allowed_roots": [str(first), str(second)], "watch": [str(tmp_path)],
               "rules": [{"kind": "files", "name": "x", "roots": [str(first), str(second)], "match_all": True}]}
    env = {**os.environ, "RUNBOOKS_CLEANUP": json.dumps(section)}
    done = subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "disk-cleanup", "-p", "dry_run=false",
                           "-p", "force=true"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and expected in done.stderr and "HINT:" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert victim.exists()


def test_unknown_rule_and_bad_parameters_are_refused(config: SandboxState, tmp_path: Path) -> None:
    env = {**os.environ, "RUNBOOKS_CLEANUP": json.dumps({"rules": []})}
    for args, expected in [(["-p", 'rules=["nope"]'], "has no rule 'nope'"),
                           (["-p", "confirm=xyz"], "confirm"),
                           (["-p", 'vacuum_full=["trading_db.trades"]'], "database.schema.table")]:
        done = subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "disk-cleanup", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr, done.stderr


# -- databases -----------------------------------------------------------------------------------------------------
def admin(config: SandboxState) -> psycopg.Connection:
    return psycopg.connect(config.cluster().dsn("postgres"), autocommit=True)


def test_kept_databases_are_reported_and_dropped_only_recorded_and_approved(config: SandboxState, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    ours, theirs, young = "trading_db_pre_restore_20261001T020000", "trading_db_pre_restore_20261002T020000", \
        "trading_db_pre_restore_20261120T020000"
    with admin(config) as conn:
        for name in (ours, theirs, young):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        oids = {name: conn.execute("SELECT oid::bigint FROM pg_database WHERE datname = %s", [name]).fetchone()[0]
                for name in (ours, young)}
        server = server_identity(conn, {"host": "x"})
    records = RestoreRecords(open_repository(settings.repository), server)
    records.put(DatabaseRecord(server=server, name=ours, oid=oids[ours], kind="pre-restore", source="trading_db",
                               backup_id="b", created_at=datetime.now(UTC) - timedelta(days=30)))
    records.put(DatabaseRecord(server=server, name=young, oid=oids[young], kind="pre-restore", source="trading_db",
                               backup_id="b"))
    cleanup_settings(monkeypatch, watch=[str(tmp_path)], allowed_roots=[str(tmp_path / "area")], survey=[],
                     rules=[{"kind": "databases", "largest": 3}])
    try:
        _, report = run_cleanup(dry_run=True)
        kept = {k.name: k for k in report.databases[0].kept}
        assert kept[ours].droppable and kept[ours].recorded
        assert not kept[theirs].recorded and not kept[theirs].droppable and "no record" in kept[theirs].why
        assert kept[young].recorded and not kept[young].droppable
        assert report.databases[0].sizes[0].name == "trading_db" and report.databases[0].sizes[0].bytes > 0
        assert len(report.databases[0].sizes[0].largest) == 3
        # Someone else's database with the same mark: refused before anything happens.
        state, refused = run_cleanup(dry_run=False, drop_pre_restore=[theirs], confirm="0" * 12)
        assert state.is_failed() and "cannot be dropped" in (refused.error or "")
        # Ours: the dry run prints the plan hash; a wrong confirm is refused, the right one drops it.
        _, planned = run_cleanup(dry_run=True, drop_pre_restore=[ours])
        assert planned.plan and planned.plan.plan_hash
        state, wrong = run_cleanup(dry_run=False, drop_pre_restore=[ours], confirm="f" * 12)
        assert state.is_failed() and "does not match" in (wrong.error or "") and not wrong.databases[0].dropped
        _, done = run_cleanup(dry_run=False, drop_pre_restore=[ours], confirm=planned.plan.plan_hash)
        assert done.succeeded and done.databases[0].dropped == [ours]
        with admin(config) as conn:
            names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        assert ours not in names and theirs in names and young in names
        assert records.get(ours) is None
    finally:
        with admin(config) as conn:
            for name in (ours, theirs, young):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_vacuum_analyze_runs_on_bloated_tables_when_enabled(config: SandboxState, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(config.cluster().dsn("trading_db"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bloat; CREATE TABLE bloat (id int); "
                     "ALTER TABLE bloat SET (autovacuum_enabled = false)")
        conn.execute("INSERT INTO bloat SELECT generate_series(1, 3000)")
        conn.execute("DELETE FROM bloat WHERE id > 1000")
        conn.execute("SELECT pg_stat_force_next_flush()")
    cleanup_settings(monkeypatch, watch=[str(tmp_path)], allowed_roots=[str(tmp_path / "area")], survey=[],
                     rules=[{"kind": "databases", "vacuum": True, "dead_tuples_min": 1000, "dead_ratio_min": 0.5}])
    try:
        _, dry = run_cleanup(dry_run=True, force=True)
        assert [t.table for t in dry.databases[0].sizes[0].bloated] == ["bloat"]
        assert not dry.databases[0].sizes[0].vacuumed
        _, done = run_cleanup(dry_run=False, force=True)
        assert done.databases[0].sizes[0].vacuumed == ["public.bloat"]
        with psycopg.connect(config.cluster().dsn("trading_db")) as conn:
            assert conn.execute("SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables "
                                "WHERE relname = 'bloat'").fetchone()[0]
        # VACUUM FULL only after an operator's approval (a paused run resumed with approver and reason; the
        # frame's rejection and timeout paths are tested with the restore).
        approving = decide_when_paused({"approve": True, "approver": "oncall", "reason": "after close"})
        _, approved = run_cleanup(dry_run=False, vacuum_full=["trading_db.public.bloat"], approval_poll_seconds=1)
        approving.join(timeout=30)
        assert approved.approval and approved.approval.approved and approved.approval.via == "operator"
        assert approved.databases[0].vacuumed_full == ["public.bloat"] and approved.succeeded
        assert "VACUUM (FULL, ANALYZE): public.bloat" in render(approved)
    finally:
        with psycopg.connect(config.cluster().dsn("trading_db"), autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS bloat")


def test_plan_hash_is_stable_over_order() -> None:
    from runbooks.flows.disk_cleanup import CleanupPlan

    assert plan_hash(CleanupPlan(drop=["a", "b"])) == plan_hash(CleanupPlan(drop=["b", "a"]))
    assert plan_hash(CleanupPlan(drop=["a"])) != plan_hash(CleanupPlan(vacuum_full=["a"]))


# -- Docker and backups through the flow -------------------------------------------------------------------------
def test_the_flow_prunes_exactly_the_docker_leftovers_it_selects(config: SandboxState, tmp_path: Path,
                                                                  docker_engine: Any, docker_label: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.dockerd import dangling_image, exited_container, running_container

    gone = [exited_container(docker_engine, docker_label).id, dangling_image(docker_engine, docker_label)]
    stays = [exited_container(docker_engine, docker_label, protect=True).id,
             running_container(docker_engine, docker_label).id]
    cleanup_settings(monkeypatch, watch=[str(tmp_path)], allowed_roots=[str(tmp_path / "area")], survey=[],
                     rules=[{"kind": "docker", "older_than": "0s", "only_label": docker_label}])
    _, dry = run_cleanup(force=True)
    planned = [o.id for o in dry.docker[0].planned]
    assert sorted(planned) == sorted(gone) and dry.freed_bytes > 0
    assert all(docker_engine.api.inspect_container(i) for i in stays)
    _, done = run_cleanup(force=True, dry_run=False)
    assert done.succeeded and done.docker[0].outcome is not None
    assert [o.id for o in done.docker[0].outcome.removed] == planned
    assert done.freed_bytes == done.docker[0].outcome.reclaimed_bytes > 0
    left = {c.id for c in docker_engine.containers.list(all=True, filters={"label": docker_label})}
    assert set(stays) <= left and gone[0] not in left
    assert gone[1] not in {i.id for i in docker_engine.images.list(all=True, filters={"label": docker_label})}


def test_the_flow_deletes_local_backups_beyond_retention_never_the_newest(config: SandboxState, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(3):
        state, result = run_backup(databases=["trading_db"], include_cluster=False, apply_retention=False)
        assert state.is_completed(), result
    monkeypatch.setenv("RUNBOOKS_BACKUP__RETENTION", json.dumps({"daily": 1, "weekly": 0, "monthly": 0}))
    cleanup_settings(monkeypatch, watch=[str(tmp_path)], allowed_roots=[str(tmp_path / "area")], survey=[],
                     rules=[{"kind": "backups"}])
    cat = catalog()
    ids = [m.backup_id for m in cat.scan(name="trading_db").manifests]
    assert len(ids) == 3
    _, dry = run_cleanup(force=True)
    assert dry.backups[0].removed == {"database trading_db": ids[:2]} and dry.backups[0].bytes > 0
    assert len(cat.scan(name="trading_db").manifests) == 3
    _, done = run_cleanup(force=True, dry_run=False)
    assert done.succeeded and done.backups[0].removed == {"database trading_db": ids[:2]}
    assert [m.backup_id for m in cat.scan(name="trading_db").manifests] == ids[2:]


def test_an_unreachable_docker_engine_fails_its_rule_not_the_rules_after_it(config: SandboxState, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "logs"
    write(root / "old.log", age_days=30)
    cleanup_settings(monkeypatch, watch=[str(tmp_path)], allowed_roots=[str(root)], survey=[],
                     rules=[{"kind": "docker", "base_url": f"unix://{tmp_path}/no-engine.sock"},
                            {"kind": "files", "name": "old-logs", "roots": [str(root)], "match_all": True}])
    state, result = run_cleanup(force=True, dry_run=False)
    assert state.is_failed() and not result.succeeded
    assert result.docker[0].state == "failed" and "HINT:" in result.docker[0].why
    assert result.files[0].files == 1 and not (root / "old.log").exists()
    assert any("Rule docker failed" in step for step in result.next_steps)


# -- issue 26: a per-host run is its host's ---------------------------------------------------------------------------
def own_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One old log under a root only this test made, the only root the settings allow; this host is worker-1."""
    root = tmp_path / "logs"
    write(root / "old.log", age_days=30)
    cleanup_settings(monkeypatch, watch=[str(tmp_path)], survey=[str(tmp_path)], allowed_roots=[str(root)],
                     rules=[{"kind": "files", "name": "old-logs", "roots": [str(root)], "match_all": True,
                             "older_than": "7d"}])
    monkeypatch.setenv("RUNBOOKS_HOST_NAME", "worker-1")
    return root


def test_a_run_for_another_host_is_refused_before_it_measures_anything(config: SandboxState, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-host deployment's run that another host's worker picked up would clean this host for that one: a real,
    forced run (on a tree this test made) fails at its first step saying so, and nothing is touched; from the CLI it
    is one line and exit 2."""
    root = own_tree(tmp_path, monkeypatch)
    state, result = run_cleanup(dry_run=False, force=True, on_host="worker-2")
    assert state.is_failed() and result.error, result
    assert "is for host 'worker-2', but it runs on 'worker-1': it would clean the wrong machine" in result.error
    assert [t.step for t in result.timeline] == ["check rules and roots"] and result.usage_before == []
    assert (root / "old.log").exists() and result.host == "worker-1"
    done = subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "disk-cleanup", "-p", "dry_run=false",
                           "-p", "force=true", "-p", "on_host=Worker-2"], env=dict(os.environ), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "is for host 'worker-2'" in done.stderr and "HINT:" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert (root / "old.log").exists()


def test_a_run_for_this_host_cleans_it_and_says_which_host(config: SandboxState, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client

    root = own_tree(tmp_path, monkeypatch)
    state, result = run_cleanup(dry_run=True, force=True, on_host="worker-1")
    assert state.is_completed() and result.host == "worker-1", result.error
    assert [o.files for o in result.files] == [1] and (root / "old.log").exists()  # a dry run: planned, not done
    assert "UTC on worker-1," in render(result)
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(state.state_details.flow_run_id).name
    assert name.startswith("disk-cleanup-worker-1-forced-dry-run-"), name
