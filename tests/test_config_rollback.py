"""config-rollback: the diff as the plan, approval by hash, the replaced files kept, the owner reloaded and checked,
and a rollback that breaks health put back by the run itself. On a PM2 daemon of the test's own (a private PM2_HOME)
whose app reads its ecosystem file's env, on files the test makes, and on a PostgreSQL cluster of the test's own for
the backup-archive source. Masking and the plan hash are tested on plain values.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runbooks.adapters.configfiles import ConfigFile, KeptRecords, read_config, write_config
from runbooks.core.errors import Refused
from runbooks.decisions.config_rollback import (
    ConfigPlan,
    FilePlan,
    changed_since_plan,
    config_diff,
    mask_line,
    mask_lines,
    plan_hash,
)
from runbooks.flows.config_rollback import ConfigRollbackResult, config_rollback_flow
from runbooks.frame import outcome
from runbooks_sandbox import SandboxState
from tests.pgfixtures import running_cluster
from tests.pm2 import PM2, Pm2Daemon, pm2_available
from tests.runs import run_backup

# End to end on real processes (PM2 daemons, servers, approvals): the drills' half of the suite, run in CI too.
pytestmark = pytest.mark.slow

SECRET = "tok-9f2c7e51d0a4"
# Exits at once while its CRASH_MARKER exists (PM2 restarts it until it gives up: errored), else runs until stopped.
# At once, not after a delay: on a loaded machine a slow start must not look like "online for stable_seconds".
APP = """const fs = require("fs");
if (fs.existsSync(process.env.CRASH_MARKER)) { process.exit(1); }
setInterval(() => {}, 1000);
"""


# -- plain values ------------------------------------------------------------------------------------------------------

def test_secret_values_are_masked_in_the_diff_and_the_hash_covers_both_checksums() -> None:
    assert mask_line("password = hunter2") == "password = ***"
    assert mask_line('  DB_PASSWORD: "x y",') == "  DB_PASSWORD: ***,"
    assert mask_line("export API_KEY=abc") == "export API_KEY=***"
    assert SECRET not in mask_line(f'module.exports = {{env: {{"API_TOKEN": "{SECRET}", "FOO": "1"}}}}')
    assert mask_line("work_mem = 4MB") == "work_mem = 4MB"
    # A hostile review's forms: short and signing keys, flags in argv, a YAML value on the next line.
    for line in ["MYSQL_PWD=S3cr3tQ", "ADMIN_PW: 'S3cr3tQ'", "JWT_SIGNING=S3cr3tQ", "SESSION_SIGNING_SALT: S3cr3tQ",
                 "  args: '--password S3cr3tQ --port 3000'", "  args: ['--db-pass', 'S3cr3tQ'],",
                 "node app.js --api-key=S3cr3tQ"]:
        assert "S3cr3tQ" not in mask_line(line), line
    assert "--port 3000" in mask_line("  args: '--password S3cr3tQ --port 3000'")
    yaml = ["db:\n", "  password:\n", "    S3cr3tQ\n", "  host: db\n", "token: |\n", "  S3cr3tQ-line\n", "port: 1\n"]
    shown = "".join(mask_lines(yaml))
    assert "S3cr3tQ" not in shown and "host: db" in shown and "port: 1" in shown, shown
    diff = config_diff("/etc/app.conf", b"a = 1\napi_token = old-secret-1\n", b"a = 2\napi_token = new-secret-2\n")
    assert "-a = 1" in diff and "+a = 2" in diff and "secret-1" not in diff and "secret-2" not in diff
    assert config_diff("/x", b"same", b"same") == ""
    files = [FilePlan(path="/x", current_sha256="a" * 64, target_sha256="b" * 64, current_bytes=1, target_bytes=1,
                      changes=True)]
    h = plan_hash(group="g", source="kept", origin="v1", files=files)
    other = [files[0].model_copy(update={"current_sha256": "c" * 64})]
    assert h != plan_hash(group="g", source="kept", origin="v1", files=other)
    plan = ConfigPlan(group="g", source="kept", version="v1", owner="o", files=files, plan_hash=h)
    assert changed_since_plan(plan, {"/x": "a" * 64}) == []
    assert changed_since_plan(plan, {"/x": "c" * 64}) == ["/x"]


def test_the_adapter_writes_only_listed_regular_files_keeping_mode_and_owner(tmp_path: Path) -> None:
    listed, other = tmp_path / "app.conf", tmp_path / "other.conf"
    listed.write_bytes(b"a = 1\n")
    listed.chmod(0o640)
    other.write_bytes(b"untouched\n")
    current = read_config(listed, allowed=[listed], max_bytes=1000)
    write_config(listed, b"a = 2\n", allowed=[listed], like=current)
    assert listed.read_bytes() == b"a = 2\n" and listed.stat().st_mode & 0o777 == 0o640
    assert not [p for p in tmp_path.iterdir() if ".runbooks-tmp-" in p.name]
    like_other = ConfigFile(path=str(other), data=b"", sha256="", mode=0o644, uid=os.getuid(), gid=os.getgid())
    with pytest.raises(Refused, match="not one of the group's configuration files"):
        write_config(other, b"owned\n", allowed=[listed], like=like_other)
    assert other.read_bytes() == b"untouched\n"
    link = tmp_path / "link.conf"
    link.symlink_to(other)
    with pytest.raises(Refused, match="symbolic link"):
        read_config(link, allowed=[link], max_bytes=1000)
    with pytest.raises(Refused, match="symbolic link"):
        write_config(link, b"through the link\n", allowed=[link], like=like_other)
    assert other.read_bytes() == b"untouched\n" and link.is_symlink()


# -- a PM2 app whose configuration is its ecosystem file ---------------------------------------------------------------

def ecosystem(daemon: Pm2Daemon, *, crash: bool, feature: str) -> str:
    """Multi-line, like a real one: the app crash-loops when its CRASH_MARKER exists (the broken configuration)."""
    marker = daemon.marker if crash else daemon.apps / "no-such-marker"
    return "\n".join([
        "module.exports = {",
        "  apps: [{",
        '    name: "cfgapp",',
        f"    script: {json.dumps(str(daemon.apps / 'crashy.js'))},",
        "    env: {",
        f"      CRASH_MARKER: {json.dumps(str(marker))},",
        f'      API_TOKEN: "{SECRET}",',
        f'      FEATURE: "{feature}",',
        "    },",
        "  }],",
        "};", ""])


@pytest.fixture(name="cfg_daemon")
def cfg_daemon_fixture() -> Iterator[Pm2Daemon]:
    """A daemon of this test's own (never ~/.pm2) running ``cfgapp`` from a healthy ecosystem file."""
    pm2_available()
    root = Path(tempfile.mkdtemp(prefix="rb-cfg-"))  # short: PM2's sockets live in PM2_HOME
    daemon = Pm2Daemon(home=root / "home", apps=root / "apps", ecosystem=root / "apps" / "ecosystem.config.cjs",
                       marker=root / "apps" / "crash")
    daemon.apps.mkdir()
    (daemon.apps / "crashy.js").write_text(APP)
    daemon.marker.write_text("present: the app crashes when its configuration points here\n")
    daemon.ecosystem.write_text(ecosystem(daemon, crash=False, feature="one"))
    try:
        daemon.pm2("start", str(daemon.ecosystem))
        daemon.wait("cfgapp", lambda app: app["pm2_env"]["status"] == "online")
        yield daemon
    finally:
        subprocess.run([PM2, "kill"], env=daemon.env(), capture_output=True, timeout=60, check=False,
                       stdin=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


def settings_env(monkeypatch: pytest.MonkeyPatch, daemon: Pm2Daemon, tmp_path: Path, **service: Any) -> None:
    monkeypatch.setenv("RUNBOOKS_SERVICES", json.dumps({"pm2": {"cfgapp": daemon.service("cfgapp", **service)}}))
    monkeypatch.setenv("RUNBOOKS_CONFIG_ROLLBACK", json.dumps({
        "record_dir": str(tmp_path / "records"),
        "groups": {"app": {"files": [str(daemon.ecosystem)], "owner": "pm2", "service": "cfgapp"}}}))


def rollback(**params: Any) -> tuple[Any, ConfigRollbackResult]:
    state = config_rollback_flow(**{"group": "app", "reason": "test: config rollback", **params}, return_state=True)
    result = outcome(state)
    assert isinstance(result, ConfigRollbackResult), result
    return state, result


def env_of(daemon: Pm2Daemon) -> dict[str, Any]:
    app = daemon.jlist()["cfgapp"]
    return {"pid": app["pid"], "status": app["pm2_env"]["status"], "FEATURE": app["pm2_env"].get("FEATURE")}


def kept_files(daemon: Pm2Daemon) -> list[Path]:
    return sorted(p for p in daemon.apps.iterdir() if ".runbooks-" in p.name and ".runbooks-tmp-" not in p.name)


def test_dry_run_shows_the_diff_a_stale_confirm_changes_nothing_and_a_confirmed_rollback_reloads_healthy(
        cfg_daemon: Pm2Daemon, config: SandboxState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env(monkeypatch, cfg_daemon, tmp_path)
    state, kept = rollback(action="keep")  # the seed's "cp ecosystem.config.cjs ecosystem.config.backup.cjs"
    assert state.is_completed(), kept.error
    assert kept.kept_version and [p.stat().st_mode & 0o777 for p in kept_files(cfg_daemon)] == [0o600]
    good = cfg_daemon.ecosystem.read_text()

    cfg_daemon.ecosystem.write_text(ecosystem(cfg_daemon, crash=False, feature="two"))  # a deploy changed it
    cfg_daemon.pm2("reload", str(cfg_daemon.ecosystem), "--only", "cfgapp", "--update-env")
    before = cfg_daemon.wait("cfgapp", lambda app: app["pm2_env"].get("FEATURE") == "two")
    deployed = cfg_daemon.ecosystem.read_text()

    state, dry = rollback(dry_run=True)
    assert state.is_completed(), dry.error
    assert dry.plan and dry.plan.version == kept.kept_version and len(dry.plan.changing) == 1
    diff = dry.plan.changing[0].diff
    assert '-      FEATURE: "two",' in diff and '+      FEATURE: "one",' in diff
    assert SECRET not in diff and SECRET not in json.dumps(dry.model_dump(mode="json"))
    assert cfg_daemon.ecosystem.read_text() == deployed and env_of(cfg_daemon)["pid"] == before["pid"]
    assert len(kept_files(cfg_daemon)) == 1

    cfg_daemon.ecosystem.write_text(ecosystem(cfg_daemon, crash=False, feature="three"))  # changed after the plan
    changed = cfg_daemon.ecosystem.read_text()
    state, stale = rollback(confirm=dry.plan.plan_hash)
    assert state.is_failed() and stale.error and "does not match this plan's hash" in stale.error
    assert cfg_daemon.ecosystem.read_text() == changed and len(kept_files(cfg_daemon)) == 1 and not stale.written

    state, dry = rollback(dry_run=True)
    assert dry.plan
    state, done = rollback(confirm=dry.plan.plan_hash)
    assert state.is_completed(), done.error
    assert done.outcome == "rolled back and healthy" and done.health and done.health.healthy
    assert cfg_daemon.ecosystem.read_text() == good
    assert cfg_daemon.ecosystem.stat().st_mode & 0o777 == 0o644  # the original's mode
    after = env_of(cfg_daemon)
    assert after["FEATURE"] == "one" and after["status"] == "online" and after["pid"] != before["pid"]
    replaced = [p for p in kept_files(cfg_daemon) if p.name.endswith(str(done.kept_version))]
    assert [p.read_text() for p in replaced] == [changed] and replaced[0].stat().st_mode & 0o777 == 0o600
    record = KeptRecords(tmp_path / "records").load("app")
    assert [v.version for v in record.versions] == [kept.kept_version, done.kept_version]


def test_a_rollback_that_breaks_health_rolls_back_itself(cfg_daemon: Pm2Daemon, config: SandboxState,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env(monkeypatch, cfg_daemon, tmp_path, healthy_timeout_seconds=8, stable_seconds=4)
    good = cfg_daemon.ecosystem.read_text()
    cfg_daemon.ecosystem.write_text(ecosystem(cfg_daemon, crash=True, feature="broken"))
    state, kept = rollback(action="keep")  # a version that crashes the app, kept earlier
    assert state.is_completed(), kept.error
    cfg_daemon.ecosystem.write_text(good)

    state, dry = rollback(dry_run=True, version=kept.kept_version)
    assert dry.plan and "+      FEATURE: \"broken\"," in dry.plan.changing[0].diff
    state, result = rollback(version=kept.kept_version, confirm=dry.plan.plan_hash)
    assert state.is_failed(), result.health
    assert result.rolled_back_itself and result.outcome == "rolled back itself"
    assert result.health and not result.health.healthy
    assert result.error and result.error.startswith("rolled back itself:") and "healthy again" in result.error
    assert result.put_back == [str(cfg_daemon.ecosystem)] and not result.not_put_back
    assert result.health_after_put_back and result.health_after_put_back.healthy
    assert cfg_daemon.ecosystem.read_text() == good
    app = env_of(cfg_daemon)
    assert app["FEATURE"] == "one" and app["status"] == "online"


def test_a_file_outside_the_group_is_refused_before_anything(cfg_daemon: Pm2Daemon, config: SandboxState,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env(monkeypatch, cfg_daemon, tmp_path)
    elsewhere = tmp_path / "not-in-the-group.conf"
    elsewhere.write_text("mine\n")
    state, result = rollback(files=[str(elsewhere)], confirm="0" * 12)
    assert state.is_failed() and result.error and "is not a file of group 'app'" in result.error
    assert result.plan is None and elsewhere.read_text() == "mine\n"
    assert not (tmp_path / "records").exists() and not kept_files(cfg_daemon)
    state, result = rollback(group="nosuch")
    assert state.is_failed() and result.error and "no group 'nosuch'" in result.error


def test_a_file_changed_while_the_plan_waits_for_approval_is_refused_and_nothing_is_written(
        config: SandboxState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No PM2 daemon needed: the run stops before the reload. The operator approves the plan they saw, but the file
    changed while the run was paused: re-read under the lock, it no longer matches the plan."""
    import contextvars
    import threading

    from prefect.flow_runs import resume_flow_run

    from tests.approvals import paused_run

    conf = tmp_path / "app.conf"
    conf.write_text("a = 1\n")
    monkeypatch.setenv("RUNBOOKS_SERVICES", json.dumps({"pm2": {"x": {
        "app": "x", "ecosystem_file": str(tmp_path / "ecosystem.config.cjs"), "pm2_home": str(tmp_path / "nopm2")}}}))
    monkeypatch.setenv("RUNBOOKS_CONFIG_ROLLBACK", json.dumps({
        "record_dir": str(tmp_path / "records"),
        "groups": {"app": {"files": [str(conf)], "owner": "pm2", "service": "x"}}}))
    state, kept = rollback(action="keep")
    assert state.is_completed(), kept.error
    conf.write_text("a = 2\n")
    errors: list[str] = []

    def change_then_approve() -> None:
        try:
            paused = paused_run(timeout=60)
            conf.write_text("a = 3\n")  # someone edits the file while the plan waits
            resume_flow_run(paused.id, run_input={"approve": True, "approver": "carol", "reason": "diff read"})
        except Exception as exc:  # noqa: BLE001 - shown by the assertion below
            errors.append(repr(exc))

    helper = threading.Thread(target=contextvars.copy_context().run, args=(change_then_approve,), daemon=True)
    helper.start()
    state, result = rollback(approval_poll_seconds=1, approval_timeout_seconds=60)
    helper.join(30)
    assert not errors, errors
    assert result.approval and result.approval.approved and result.approval.approver == "carol"
    assert state.is_failed() and result.error and "changed since the plan was made" in result.error
    assert conf.read_text() == "a = 3\n" and not result.written and result.kept_version is None
    assert len(KeptRecords(tmp_path / "records").load("app").versions) == 1
    assert len([p for p in tmp_path.iterdir() if ".runbooks-" in p.name]) == 1


# -- PostgreSQL: the backup's archive as the source --------------------------------------------------------------------

def test_a_postgresql_config_file_comes_back_from_a_cluster_backup_and_the_server_reloads_it(
        config: SandboxState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(tempfile.mkdtemp(prefix="rb-cfg-pg-", dir=Path(os.environ["XDG_STATE_HOME"])))
    root.chmod(0o755)  # as root, the server runs as the postgres OS user
    try:
        with running_cluster(root) as cluster:
            conf = cluster.datadir / "postgresql.conf"
            dsn = cluster.dsn()
            monkeypatch.setenv("RUNBOOKS_CLUSTER", json.dumps({"name": "cfgtest", "dsn": dsn,
                                                               "config_files": [str(conf)]}))
            monkeypatch.setenv("RUNBOOKS_CONFIG_ROLLBACK", json.dumps({
                "record_dir": str(tmp_path / "records"),
                "groups": {"pg": {"files": [str(conf)], "owner": "postgres", "healthy_timeout_seconds": 20}}}))
            state, backup = run_backup(include_databases=False, include_redis=False, apply_retention=False)
            assert state.is_completed(), backup
            original, owner = conf.read_bytes(), (conf.stat().st_uid, conf.stat().st_mode & 0o777)

            conf.write_bytes(original + b"\nwork_mem = '7MB'\n")  # a change since the backup, taken by the server
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_reload_conf()")
                assert _setting(dsn, "work_mem") == "7MB"

            state, dry = rollback(group="pg", source="backup", dry_run=True)
            assert state.is_completed(), dry.error
            assert dry.plan and "-work_mem = '7MB'" in dry.plan.changing[0].diff
            state, done = rollback(group="pg", source="backup", confirm=dry.plan.plan_hash)
            assert state.is_completed(), done.error
            assert done.health and done.health.healthy and done.plan and done.plan.backup_id
            assert conf.read_bytes() == original and (conf.stat().st_uid, conf.stat().st_mode & 0o777) == owner
            assert _setting(dsn, "work_mem") == "4MB"

            # A kept version the server cannot parse: the run puts the file back and reloads again.
            conf.write_bytes(original + b"\nwork_mem = = broken\n")
            state, kept = rollback(group="pg", action="keep")
            assert state.is_completed(), kept.error
            conf.write_bytes(original)
            state, dry = rollback(group="pg", version=kept.kept_version, dry_run=True)
            assert dry.plan
            state, broken = rollback(group="pg", version=kept.kept_version, confirm=dry.plan.plan_hash)
            assert state.is_failed() and broken.rolled_back_itself, broken.error
            assert broken.health and not broken.health.healthy and "postgresql.conf" in broken.health.detail
            assert broken.health_after_put_back and broken.health_after_put_back.healthy
            assert conf.read_bytes() == original
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _setting(dsn: str, name: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])
