"""Issue 24: a cleanup root (or allowed root) that is, lies inside or holds a system tree, a PostgreSQL data
directory, the runbooks' own state or repositories, or the home of the user running them is refused when the
settings load (one line; exit 2 through the CLI), whatever ``force`` says; a rule selects every file only when it
says ``match_all``; a data directory deeper than the load looks is never entered by the walk.

No test here runs a cleanup on a system path: system paths only appear in settings that are refused, in dry runs,
or in a private mount namespace over a throwaway tmpfs. Real runs happen on trees under tmp_path only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from runbooks.adapters.cleanup import Budget, Ledger, Manifest, Walk, clean_tree, manifest_lines
from runbooks.core.errors import ConfigurationError
from runbooks.core.protected_paths import SYSTEM_TREES, Protected, find_data_directory, refusal
from runbooks.settings import CleanupSettings, FileRule, load_settings

# Where these tests' settings say the state is: outside every seed root (/tmp, /var/tmp, /var/log, /opt/ats).
# Only compared with roots at load, never created.
STATE = "/var/lib/runbooks-test-state-never-created"
OLD = time.time() - 30 * 86400
REPO = Path(__file__).resolve().parents[1]


# -- the decision, on plain values ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("root", "expected"), [
    ("/", "is / ("),
    ("/etc", "is /etc ("),
    ("/etc/ssl/private", "lies inside /etc ("),
    ("/usr/share", "lies inside /usr ("),
    ("/usr/local/cache", "lies inside /usr ("),
    ("/var/lib/dpkg", "is /var/lib/dpkg ("),
    ("/var/lib/apt/lists", "lies inside /var/lib/apt ("),
    ("/var/lib/docker/overlay2", "lies inside /var/lib/docker ("),
    ("/var/cache/apt/archives", "lies inside /var/cache/apt ("),
    ("/var", "is /var ("),
    ("/var/lib", "is /var/lib ("),
    ("/opt", "is /opt ("),
    ("/srv", "is /srv ("),
    ("/home", "is /home ("),
    ("/home/trader/tmp", "lies inside /home ("),
    ("/root", "is /root ("),
    ("/lib64", "is /lib64 ("),
    ("/libx32/x", "lies inside /libx32 ("),
    ("/boot", "is /boot ("),
    ("/dev/shm", "lies inside /dev ("),
    ("/proc/1", "lies inside /proc ("),
    ("/sys", "is /sys ("),
    ("/run/user/0", "lies inside /run ("),
    ("/var/spool/cron", "lies inside /var/spool ("),
    ("/var/mail", "is /var/mail ("),
    ("/media", "is /media ("),
    ("/mnt", "is /mnt ("),
])
def test_system_trees_are_refused(root: str, expected: str) -> None:
    why = refusal(root, SYSTEM_TREES)
    assert why is not None and why.startswith(expected), why


@pytest.mark.parametrize("root", ["/tmp", "/tmp/app", "/var/tmp", "/var/log", "/var/log/app", "/var/crash",
                                  "/opt/ats", "/opt/ats/tmp", "/var/lib/app/cache", "/srv/www/cache", "/mnt/scratch",
                                  "/var/cache/app", "/data/tmp"])
def test_cleanups_own_homes_and_application_directories_are_not(root: str) -> None:
    """FHS's temporary and log directories, and one application's directory inside /opt, /var/lib, /srv."""
    assert refusal(root, SYSTEM_TREES) is None


def test_holding_a_protected_directory_is_refused() -> None:
    kept = [Protected("/data/backups/runbooks", "the backup repository")]
    assert refusal("/data", kept) == "holds /data/backups/runbooks (the backup repository)"
    assert refusal("/data/backups/runbooks/x", kept) == "lies inside /data/backups/runbooks (the backup repository)"
    assert refusal("/data/backups/other", kept) is None
    assert refusal("/data/backups/runbooks-old", kept) is None  # a sibling sharing a prefix is not inside


# -- refused when the settings load ----------------------------------------------------------------------------
@pytest.fixture
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose state is out of the way: only what each test adds is refused."""
    config = tmp_path / "runbooks.toml"
    config.write_text(f'state_dir = "{STATE}"\n', encoding="utf-8")
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(config))
    return config


def refused(monkeypatch: pytest.MonkeyPatch, *, allowed: list[str], roots: list[str] | None = None,
            **rule: Any) -> str:
    section = {"allowed_roots": allowed, "watch": [], "survey": [],
               "rules": [{"kind": "files", "name": "x", "roots": roots or allowed, "patterns": ["*.log"], **rule}]}
    monkeypatch.setenv("RUNBOOKS_CLEANUP", json.dumps(section))
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message and "HINT:" in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize(("root", "expected"), [
    ("/etc", "allowed root '/etc' is /etc (host-specific system configuration"),
    ("/usr/share", "allowed root '/usr/share' lies inside /usr ("),
    ("/var", "allowed root '/var' is /var ("),
    ("/var/lib", "allowed root '/var/lib' is /var/lib ("),
    ("/opt", "allowed root '/opt' is /opt ("),
    ("/srv", "allowed root '/srv' is /srv ("),
    ("/home", "allowed root '/home' is /home ("),
    ("/root", "allowed root '/root' is /root ("),
    ("/lib64", "allowed root '/lib64' is /lib64 ("),
    ("/", "allowed root '/' is / ("),
])
def test_a_system_tree_is_refused_at_load(inventory: Path, monkeypatch: pytest.MonkeyPatch, root: str,
                                          expected: str) -> None:
    message = refused(monkeypatch, allowed=[root])
    assert expected in message and "cleanup.allowed_roots.'0' (environment variable RUNBOOKS_CLEANUP)" in message


def test_the_running_users_home_is_refused(inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = str(Path.home())
    message = refused(monkeypatch, allowed=[home])
    assert f"allowed root {home!r}" in message and "cleanup never deletes there" in message


def test_a_home_anywhere_is_refused_as_the_users_home(inventory: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home" / "trader"
    (home / "cache").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    message = refused(monkeypatch, allowed=[str(home / "cache")])
    assert f"lies inside {home} (the home of the user running the runbooks)" in message
    assert f"holds {home} (the home" in refused(monkeypatch, allowed=[str(tmp_path)])


def test_a_link_to_a_system_tree_is_refused(inventory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "area").mkdir()
    (tmp_path / "area" / "conf").symlink_to("/etc", target_is_directory=True)
    (tmp_path / "etc-link").symlink_to("/etc", target_is_directory=True)
    message = refused(monkeypatch, allowed=[str(tmp_path / "etc-link")])
    assert f"allowed root '{tmp_path}/etc-link' resolves to '/etc', which is /etc (" in message
    message = refused(monkeypatch, allowed=[str(tmp_path / "area")], roots=[str(tmp_path / "area" / "conf")])
    assert f"cleanup.rules.'0'.roots.'0' (environment variable RUNBOOKS_CLEANUP): rule 'x': root " \
           f"'{tmp_path}/area/conf' resolves to '/etc', which is /etc (" in message


def fake_cluster(path: Path) -> Path:
    """What marks a PostgreSQL data directory (a stopped one: no postmaster.pid), with old files in it."""
    (path / "global").mkdir(parents=True)
    (path / "base" / "1").mkdir(parents=True)
    for name in ("PG_VERSION", "global/pg_control", "base/1/1259", "postgresql.auto.conf"):
        (path / name).write_bytes(b"15\n" if name == "PG_VERSION" else os.urandom(100))
        os.utime(path / name, (OLD, OLD))
    return path


@pytest.mark.parametrize(("where", "expected"), [
    ("pg/15/main", "is the PostgreSQL data directory"),
    ("pg/15/main/base", "lies inside the PostgreSQL data directory"),
    ("pg", "holds the PostgreSQL data directory"),
    ("pg/15", "holds the PostgreSQL data directory"),
])
def test_a_postgresql_data_directory_is_refused_running_or_not(inventory: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, where: str,
                                                                expected: str) -> None:
    cluster = fake_cluster(tmp_path / "pg" / "15" / "main")
    message = refused(monkeypatch, allowed=[str(tmp_path / where)])
    assert f"{expected} '{cluster}' (PG_VERSION beside global/; running or not)" in message


@pytest.mark.parametrize(("setting", "value", "what"), [
    ("repository", {"url": "REPO"}, "the backup repository, repository.url"),
    ("state_dir", "DIR", "the runbooks' state directory, state_dir"),
    ("pitr", {"repo_path": "DIR"}, "the pgBackRest repository, pitr.repo_path"),
    ("pitr", {"work_dir": "DIR"}, "pgBackRest's work directory, pitr.work_dir"),
    ("drill", {"work_dir": "DIR"}, "the DR drills' work directory, drill.work_dir"),
    ("restore", {"work_dir": "DIR"}, "the restores' work directory, restore.work_dir"),
])
def test_what_the_runbooks_keep_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str,
                                           value: Any, what: str) -> None:
    kept = tmp_path / "kept"
    (kept / "sub").mkdir(parents=True)
    literal = json.dumps(value).replace("REPO", kept.as_uri()).replace("DIR", str(kept))
    config = tmp_path / "runbooks.toml"
    lines = [] if setting == "state_dir" else [f'state_dir = "{STATE}"']
    parsed = json.loads(literal)
    if isinstance(parsed, dict):
        lines += [f"[{setting}]", *(f"{k} = {json.dumps(v)}" for k, v in parsed.items())]
    else:
        lines.insert(0, f"{setting} = {json.dumps(parsed)}")
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(config))
    for root, relation in [(kept, "is"), (kept / "sub", "lies inside"), (tmp_path, "holds")]:
        message = refused(monkeypatch, allowed=[str(root)])
        assert f"allowed root '{root}' {relation} {kept} ({what}): cleanup never deletes there" in message, message
        assert "or move that directory out of it" in message


def test_a_rule_root_is_checked_like_an_allowed_root(inventory: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An allowed root may pass (its data directory lies deeper than the load looks) and a root inside it not."""
    cluster = fake_cluster(tmp_path / "area" / "srv" / "pg" / "db")
    message = refused(monkeypatch, allowed=[str(tmp_path / "area")], roots=[str(cluster)])
    assert "cleanup.rules.'0'.roots.'0'" in message and f"rule 'x': root '{cluster}' is the PostgreSQL" in message


def test_the_issue_config_is_refused_through_the_cli_with_exit_2(tmp_path: Path) -> None:
    """Issue 24's config, as a dry run and forced: refused before anything, one line, exit 2."""
    config = tmp_path / "runbooks.toml"
    config.write_text(textwrap.dedent(f"""\
        state_dir = "{STATE}"
        [cleanup]
        allowed_roots = ["/etc"]
        [[cleanup.rules]]
        kind = "files"
        name = "tmp"
        roots = ["/etc"]
        older_than = "10d"
        remove_empty_dirs = true
        """), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKS_")} | {"RUNBOOKS_CONFIG": str(config)}
    done = subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "disk-cleanup", "--param", "dry_run=true",
                           "--param", "force=true"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line and done.stdout == "", done.stderr
    assert "allowed root '/etc' is /etc (host-specific system configuration" in line
    assert "rule 'tmp' names no patterns: it would delete every file older than 10d under /etc" in line
    assert "HINT:" in line


def test_the_seed_defaults_still_load(inventory: Path) -> None:
    settings = load_settings()
    tmp = settings.cleanup.rule("tmp")
    assert isinstance(tmp, FileRule) and tmp.match_all and tmp.patterns == ["*"]
    assert [str(r) for r in settings.cleanup.allowed_roots] == ["/var/log", "/var/tmp", "/tmp", "/opt/ats"]
    assert "PG_VERSION" in settings.cleanup.protected
    assert not Path(STATE).exists()


def test_the_example_cleanup_section_loads() -> None:
    import tomllib

    section = tomllib.loads((REPO / "config" / "runbooks.example.toml").read_text())["cleanup"]
    cleanup = CleanupSettings.model_validate(section)
    assert [r.name for r in cleanup.rules if isinstance(r, FileRule) and r.match_all] == ["tmp"]


# -- "every file" must be said --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("patterns", "expected"), [
    (None, "rule 'x' names no patterns: it would delete every file older than 7d under /srv/app/tmp"),
    (["*"], "rule 'x' patterns ['*'] select any name"),
    (["?*"], "select any name"),
    (["*.log", "*"], "select any name"),
    (["??*"], "select any name"),  # nearly every name: the hostile review's ways around match_all
    (["[!-]*"], "select any name"),
    (["*[!é]"], "select any name"),
])
def test_a_rule_selecting_every_file_needs_match_all(patterns: list[str] | None, expected: str) -> None:
    kw: dict[str, Any] = {} if patterns is None else {"patterns": patterns}
    with pytest.raises(ValidationError) as info:
        FileRule(name="x", roots=[Path("/srv/app/tmp")], **kw)
    assert expected in str(info.value) and "set match_all = true if every file is meant" in str(info.value)
    rule = FileRule(name="x", roots=[Path("/srv/app/tmp")], match_all=True, **kw)
    assert rule.patterns == (patterns or ["*"]) and FileRule.model_validate(rule.model_dump()) == rule


def test_match_all_with_some_patterns_is_contradictory() -> None:
    with pytest.raises(ValidationError, match="select only some names"):
        FileRule(name="x", roots=[Path("/srv/app/tmp")], match_all=True, patterns=["*.log"])
    assert FileRule(name="x", roots=[Path("/srv/app/tmp")], patterns=["*.log"]).match_all is False


# -- the walk never enters a data directory it meets ------------------------------------------------------------
def walk(*, dry_run: bool, manifest: Path | None = None) -> Walk:
    return Walk(ledger=Ledger([], high=85, low=80, force=True), budget=Budget(10**9, 10**15),
                manifest=Manifest(manifest), protected_patterns=list(CleanupSettings().protected), held=set(),
                dry_run=dry_run)


def test_a_walk_never_enters_a_data_directory_deeper_than_the_load_looks(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    cluster = fake_cluster(root / "a" / "b" / "c" / "cluster")
    (cluster / "pg_tblspc").mkdir()
    for path in [cluster / "pg_tblspc", cluster / "base" / "1", cluster / "base", cluster / "global", cluster]:
        os.utime(path, (OLD, OLD))
    inside = sorted(str(p) for p in cluster.rglob("*"))
    beside = root / "a" / "b" / "old.tmp"
    beside.write_bytes(b"x")
    os.utime(beside, (OLD, OLD))
    (root / "a" / "empty").mkdir()
    for d in (root / "a" / "empty", root / "a" / "b" / "c", root / "a" / "b", root / "a"):
        os.utime(d, (OLD, OLD))
    assert find_data_directory(str(root), depth=2, limit=100) is None  # too deep for the load: the walk's to find
    rule = FileRule(name="tmp", roots=[root], match_all=True, older_than=timedelta(days=10), remove_empty_dirs=True)
    dry = clean_tree(rule, root, walk(dry_run=True))
    real = clean_tree(rule, root, walk(dry_run=False, manifest=tmp_path / "m.gz"))
    assert sorted(str(p) for p in cluster.rglob("*")) == inside and (cluster / "PG_VERSION").exists()
    assert not beside.exists() and not (root / "a" / "empty").exists()
    for outcome in (dry, real):
        assert outcome.state == "done" and outcome.files == 1 and outcome.dirs_removed == 1, outcome
        assert outcome.data_directories == [str(cluster)]
        assert outcome.skipped["PostgreSQL data directory"] == 1
    assert {m.path for m in manifest_lines(tmp_path / "m.gz")} == {str(beside), str(root / "a" / "empty")}


def test_the_engine_refuses_a_system_tree_or_a_data_directory_as_its_root(tmp_path: Path) -> None:
    """Whoever calls it, bypassing the settings (a dry run: /etc is never walked)."""
    for root in (Path("/etc"), Path("/usr/share")):
        outcome = clean_tree(FileRule(name="x", roots=[root], patterns=["*.conf"]), root, walk(dry_run=True))
        assert outcome.state == "failed" and outcome.why.startswith(f"refused: {root} ") and outcome.files == 0
    cluster = fake_cluster(tmp_path / "cluster")
    for root in (cluster, cluster / "base"):
        outcome = clean_tree(FileRule(name="x", roots=[root], match_all=True), root, walk(dry_run=False))
        assert outcome.state == "failed" and "PostgreSQL data directory" in outcome.why
    assert (cluster / "base" / "1" / "1259").exists() and (cluster / "postgresql.auto.conf").exists()


SRV_SCRIPT = """
import os, sys, time
from pathlib import Path
from runbooks.adapters.cleanup import Budget, Ledger, Manifest, Walk, clean_tree
from runbooks.settings import FileRule
assert os.path.ismount("/srv") and os.listdir("/srv") == [], "not the private tmpfs"
victim = Path("/srv/old.log")
victim.write_bytes(b"x")
os.utime(victim, (time.time() - 30 * 86400,) * 2)
walk = Walk(ledger=Ledger([], high=85, low=80, force=True), budget=Budget(10**6, 10**12), manifest=Manifest(None),
            protected_patterns=[], held=set(), dry_run=False)
out = clean_tree(FileRule(name="x", roots=[Path("/srv")], match_all=True), Path("/srv"), walk)
print(out.state, victim.exists(), out.why)
"""


def test_a_real_run_on_a_system_tree_is_refused_in_a_private_mount_namespace() -> None:
    """Not a dry run: /srv is a fresh tmpfs in a mount namespace of this test's own, so even a broken refusal could
    only delete the one file the test wrote there."""
    if os.geteuid() != 0:
        pytest.skip("a private mount namespace needs root (CI runs as root)")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                           'mount -t tmpfs -o size=1m tmpfs /srv && exec "$0" -c "$1"', sys.executable, SRV_SCRIPT],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    state, survived, why = done.stdout.strip().split(" ", 2)
    assert (state, survived) == ("failed", "True") and why.startswith("refused: /srv is /srv ("), done.stdout
