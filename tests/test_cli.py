"""The operator's command line, run as a real subprocess against the sandbox and the test Prefect server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbooks.flows import RUNBOOKS
from runbooks.frame import outcome
from runbooks_sandbox import SandboxState
from tests import disks
from tests.processes import ROOT, bare_env, cli, one_error_line

EVIL = "\x1b]0;PWNED\x07\x1b[31m[bold]evil[/bold]"  # retitles and recolours a terminal; rich markup


def assert_no_raw_controls(text: str) -> None:
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text), repr(text)


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    """A directory the postgres OS user can enter (pytest's own tmp dirs are 0700 under root)."""
    with disks.traversable_dir("runbooks-cli-") as path:
        yield path


def test_run_backup_then_list_and_show(config: SandboxState, prefect_api: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = cli(env, "run", "backup", "--json", "--param", "include_cluster=false")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["succeeded"] is True
    [item] = result["items"]
    assert item["name"] == "trading_db" and item["verification"]["status"] == "passed"

    listed = json.loads(cli(env, "backups", "list", "--json").stdout)
    assert [(m["backup_id"], m["name"]) for m in listed] == [(item["backup_id"], "trading_db")]

    human = cli(env, "backups", "list", "--database", "trading_db")
    assert human.returncode == 0 and item["backup_id"] in human.stdout and "passed" in human.stdout

    shown = json.loads(cli(env, "backups", "show", item["backup_id"]).stdout)
    assert shown["backup_id"] == item["backup_id"] and shown["row_counts"]["public.trades"] > 0


def test_dry_run_through_cli_is_readable(config: SandboxState, prefect_api: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = cli(env, "run", "backup", "--param", "dry_run=true")
    assert proc.returncode == 0, proc.stderr
    assert "dry run" in proc.stdout and "trading_db" in proc.stdout and "Timeline" in proc.stdout
    listed = cli(env, "backups", "list", "--json")  # a dry run wrote nothing, not even the repository
    assert listed.returncode == 2 and "does not exist" in listed.stderr and listed.stdout == ""


def test_sandbox_status_prints_endpoints_without_passwords(sandbox: SandboxState) -> None:
    proc = cli(dict(os.environ), "sandbox", "status", "--json", "--dir", sandbox.root)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["running"] is True and status["config"] == sandbox.config_path
    assert status["postgres"]["dsns"]["trading_db"].endswith(f"127.0.0.1:{sandbox.postgres_port}/trading_db")
    assert status["repository"]["s3"]["endpoint_url"] == sandbox.s3_endpoint
    assert status["simulator"]["url"] == sandbox.simulator_url and status["simulator"]["up"] is True
    for secret in (sandbox.superuser_password, sandbox.app_password, sandbox.s3_secret, sandbox.simulator_token):
        assert secret and secret not in proc.stdout


# --- issue 7: the command line ---


def test_run_help_lists_the_runbooks_of_the_registry() -> None:
    proc = cli(bare_env(), "run", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "more to come" not in proc.stdout
    for name in RUNBOOKS:
        assert name in proc.stdout


def test_repeated_param_is_refused(tmp_path: Path) -> None:
    proc = cli(bare_env(), "run", "backup", "--param", "dry_run=true", "--param", "dry_run=false", cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "'dry_run'" in line and "more than once" in line and "HINT:" in line


def test_parameter_errors_name_runbook_and_field(tmp_path: Path) -> None:
    field = cli(bare_env(), "run", "restore", "--param", "database=trading_db", "--param", "jobs=99", cwd=tmp_path)
    assert field.returncode == 2
    assert "restore.jobs: Input should be less than or equal to 32" in one_error_line(field)

    model = cli(bare_env(), "run", "restore", "--param", "database=x", "--param", "target_database=x",
                cwd=tmp_path)
    assert model.returncode == 2
    line = one_error_line(model)
    assert "restore: target_database equals the source 'x'" in line
    assert ": :" not in line and "Value error" not in line


def test_a_parameter_naming_what_the_settings_lack_is_refused_before_any_run(tmp_path: Path) -> None:
    proc = cli(bare_env(), "run", "data-freshness", "--param", 'tables=["nope"]', cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "'nope'" in line and "not in [freshness] tables" in line and "HINT:" in line
    assert "Beginning flow run" not in proc.stdout + proc.stderr


def test_invalid_toml_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "inventory.toml"
    config.write_text('[repository\nurl = "file:///srv"\n')
    for args in (("backups", "list"), ("run", "backup")):
        proc = cli(bare_env(RUNBOOKS_CONFIG=str(config)), *args, cwd=tmp_path)
        assert proc.returncode == 2
        line = one_error_line(proc)
        assert "not valid TOML" in line and str(config) in line and "HINT:" in line


def test_malformed_dsn_port_is_refused_before_any_work(tmp_path: Path) -> None:
    config = tmp_path / "inventory.toml"
    config.write_text('[databases.trading_db]\ndsn = "postgresql://app:secret-pw@db:54x2/trading_db"\n')
    proc = cli(bare_env(RUNBOOKS_CONFIG=str(config)), "run", "backup", cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "databases.trading_db.dsn" in line and "port '54x2'" in line and "secret-pw" not in line


def test_bad_value_from_the_environment_is_blamed_on_the_variable(tmp_path: Path) -> None:
    config = tmp_path / "inventory.toml"
    config.write_text('[repository]\nurl = "file:///srv/backups"\n')
    proc = cli(bare_env(RUNBOOKS_CONFIG=str(config), RUNBOOKS_REPOSITORY__URL="ftp://x"), "backups", "list",
               cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "environment variable RUNBOOKS_REPOSITORY__URL" in line and str(config) not in line


def test_control_characters_and_markup_from_the_user_are_escaped(tmp_path: Path) -> None:
    proc = cli(bare_env(), "run", EVIL, cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert_no_raw_controls(proc.stderr)
    assert "\\x1b]0;PWNED\\x07" in line and "[bold]evil[/bold]" in line

    status = cli(bare_env(), "sandbox", "status", "--dir", str(tmp_path / EVIL), cwd=tmp_path)
    assert status.returncode == 1
    assert_no_raw_controls(status.stdout + status.stderr)
    assert "[bold]evil[/bold]" in status.stdout


def test_escape_sequences_in_a_parameter_never_reach_the_terminal(config: SandboxState, prefect_api: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = cli(env, "run", "restore", "--param", f"database={EVIL}", "--param", "mode=verify")
    assert proc.returncode != 0
    assert_no_raw_controls(proc.stdout + proc.stderr)
    assert "\\x1b]0;PWNED" in proc.stdout + proc.stderr


def test_password_hint_keeps_its_placeholder(config: SandboxState, prefect_api: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "RUNBOOKS_DATABASES__TRADING_DB__PASSWORD": "wrong-pw"}
    proc = cli(env, "run", "backup", "--param", "include_cluster=false")
    assert proc.returncode == 1
    assert "rejected the credentials" in proc.stdout
    assert "RUNBOOKS_DATABASES____PASSWORD" not in proc.stdout
    assert re.search(r"RUNBOOKS_DATABASES__(<NAME>|TRADING_DB)__PASSWORD", proc.stdout), proc.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as the postgres OS user")
def test_sandbox_up_where_postgres_cannot_enter_says_why() -> None:
    cwd = Path(tempfile.mkdtemp(prefix="runbooks-0700-"))  # 0700, like mktemp -d
    try:
        proc = cli(bare_env(), "sandbox", "up", "--no-prefect", cwd=cwd)
        assert proc.returncode == 2
        line = one_error_line(proc)
        assert f"the postgres OS user cannot enter {cwd}" in line and "--dir" in line
        assert "Command '[" not in line
        assert not (cwd / ".sandbox").exists()
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


BROKEN = {  # a module each child imports first, replaced by one that dies while starting
    "moto S3 server": "moto",
    "simulator": "uvicorn",
    "Prefect server": "prefect",
}


@pytest.mark.parametrize("what", list(BROKEN))
def test_sandbox_child_dying_while_starting_is_reported_at_once(what: str, traversable_dir: Path,
                                                                 tmp_path: Path) -> None:
    fake = tmp_path / "fake" / BROKEN[what]
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import sys\nsys.stderr.write('broken on purpose by the test\\n')\n"
                                      "sys.exit(7)\n")
    env = bare_env(PYTHONPATH=f"{tmp_path / 'fake'}:{ROOT}")
    proc = cli(env, "sandbox", "up", "--dir", str(traversable_dir / "sb"), cwd=traversable_dir, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr.split("broken on purpose")[0]
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: the sandbox did not start: {what} exited with 7 while starting"), proc.stderr
    assert "broken on purpose by the test" in proc.stderr  # the tail of its log
    # "exited with 7" is the death noticed; a child that was never noticed would end in "did not answer within".
    assert not (traversable_dir / "sb").exists()


# --- issue 24: output an operator can read, at any width ---


def test_shorten_keeps_both_ends_of_an_absurd_value_and_every_other_word() -> None:
    from runbooks.cli import LONG_VALUE, shorten

    path = "/srv/" + "d" * 5000 + "/dump.pgc.zst"
    line = shorten(f"backup repository '{path}' does not exist. HINT: check repository.url.")
    assert line.startswith("backup repository '/srv/ddd") and line.endswith("/dump.pgc.zst' does not exist. HINT: "
                                                                              "check repository.url.")
    assert len(line) < 300 and "[4,900 characters]" in line  # says how much it left out (of 5,020)
    ordinary = "a path of ordinary length " + "/var/lib/postgresql/15/main/" * 5
    assert shorten(ordinary) == ordinary and len("/var/lib/postgresql/15/main/" * 5) <= LONG_VALUE


@pytest.mark.parametrize("length", [3000, 5000])
def test_an_absurdly_long_path_is_one_short_error_line(tmp_path: Path, length: int) -> None:
    """A mistyped repository path of thousands of characters (under PATH_MAX, and over it): one line, exit 2, its
    start and end shown, the rest left out, the HINT kept."""
    middle = "/".join(["d" * 199] * (length // 200))
    path = f"/srv/start-of-path/{middle}/end-of-path"
    config = tmp_path / "inventory.toml"
    config.write_text(f'[repository]\nurl = "file://{path}"\n')
    proc = cli(bare_env(RUNBOOKS_CONFIG=str(config)), "backups", "list", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc)
    assert len(line) < 800, len(line)
    assert "/srv/start-of-path/" in line and "/end-of-path" in line and "characters]" in line and "HINT:" in line


def test_backups_list_honours_columns_and_says_why_a_backup_is_damaged(config: SandboxState, prefect_api: str,
                                                                      tmp_path: Path) -> None:
    """At 80 columns every backup id is whole and no line is longer; why a backup is damaged is a line of its own
    under the table, and the warning on stderr is one line however long (never hard-wrapped mid-path)."""
    from runbooks.flows.backup import backup_databases

    state = backup_databases(databases=["trading_db"], include_cluster=False,
                             return_state=True)
    assert state.is_completed(), outcome(state)
    good = state.result().items[0].backup_id
    [backup_dir] = (tmp_path / "repository" / "databases" / "trading_db").iterdir()
    damaged = backup_dir.parent / "20260101T000000Z"
    shutil.copytree(backup_dir, damaged)
    (damaged / "manifest.json").write_text("{ not json")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "80"}
    proc = cli(env, "backups", "list")
    assert proc.returncode == 1, proc.stderr
    heading, *lines = proc.stdout.splitlines()
    assert heading == f"backups in {(tmp_path / 'repository').as_uri()}"  # a URL to copy: one line, whole
    assert max(len(line) for line in lines) <= 80, proc.stdout
    assert good in proc.stdout and "20260101T000000Z" in proc.stdout and "…" not in proc.stdout, proc.stdout
    [row] = [line for line in lines if line.startswith("20260101T000000Z") and "DAMAGED" in line.split()]
    assert "manifest" not in row  # the table says DAMAGED; why is a sentence under it
    assert "20260101T000000Z database trading_db: DAMAGED, manifest unreadable" in " ".join(proc.stdout.split())
    [warning] = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert "20260101T000000Z" in warning and "remove the directory by hand" in warning, proc.stderr


def test_sandbox_status_honours_columns_and_never_cuts_an_endpoint(sandbox: SandboxState) -> None:
    """Too narrow for the table: each component as a record, every DSN whole (rich alone cuts them to "postg…")."""
    proc = cli({**os.environ, "COLUMNS": "60"}, "sandbox", "status", "--dir", sandbox.root)
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 60, proc.stdout
    assert "…" not in proc.stdout and f"127.0.0.1:{sandbox.postgres_port}/trading_db" in proc.stdout


DRAIN = """
import logging, sys
from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from prefect.logging.configuration import setup_logging
setup_logging()
if sys.argv[1] == "cli":
    from runbooks.cli import prepare_log_output
    prepare_log_output()
for i in range(2000):
    emit_event(event="runbooks.test.drain", resource={"prefect.resource.id": f"runbooks.test.{i}"})
logging.getLogger("runbooks.test").warning("our own warning stays")
EventsWorker.drain_all()
"""


def test_prefect_drain_notes_never_reach_stderr_and_our_warnings_do(prefect_api: str) -> None:
    """Prefect's events worker, draining at exit with events still queued, writes "EventsWorker - Still processing
    items"; the CLI's logging keeps that off stderr. The same process without it shows the note (so the test sees
    the real thing), and our own warnings show either way."""
    env = {**bare_env(), "PREFECT_API_URL": prefect_api}
    plain = subprocess.run([sys.executable, "-c", DRAIN, "plain"], env=env, capture_output=True, text=True,
                           timeout=180)
    assert "Still processing items" in plain.stderr, plain.stderr[-2000:]
    quiet = subprocess.run([sys.executable, "-c", DRAIN, "cli"], env=env, capture_output=True, text=True,
                           timeout=180)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Still processing items" not in quiet.stderr, quiet.stderr[-2000:]
    assert "our own warning stays" in quiet.stderr and "our own warning stays" in plain.stderr


def test_markets_says_open_or_closed_why_and_when_at_any_instant(tmp_path: Path) -> None:
    config = tmp_path / "runbooks.toml"
    config.write_text('[markets.usd_cop]\ntimezone = "America/Bogota"\nopen = "08:00"\nclose = "13:00"\n'
                      'holidays = "CO"\n[markets.crypto]\nalways_open = true\n')
    env = bare_env(RUNBOOKS_CONFIG=str(config))

    friday = json.loads(cli(env, "markets", "--at", "2026-12-04T13:05:00-05:00", "--json").stdout)
    assert friday["usd_cop"]["open"] is False and friday["usd_cop"]["kind"] == "after-close"
    assert friday["usd_cop"]["next_open"] == "2026-12-07T13:00:00+00:00"  # Monday 08:00 COT
    assert friday["crypto"]["open"] is True and friday["crypto"]["gating"] is False
    holiday = json.loads(cli(env, "markets", "--at", "2027-01-11T10:00:00-05:00", "--json").stdout)
    assert holiday["usd_cop"]["kind"] == "holiday" and "Epiphany" in holiday["usd_cop"]["reason"]
    session = cli({**env, "COLUMNS": "100"}, "markets", "--at", "2026-12-07T10:00:00-05:00")
    assert session.returncode == 0 and "OPEN" in session.stdout and "usd_cop" in session.stdout

    for bad in ("2026-12-07T10:00:00", "tomorrow"):
        proc = cli(env, "markets", "--at", bad)
        assert proc.returncode == 2 and one_error_line(proc)


def test_a_mistyped_parameter_gets_the_runbooks_own_closest_name(tmp_path: Path) -> None:
    config = tmp_path / "runbooks.toml"
    config.write_text('[databases.trading_db]\ndsn = "host=127.0.0.1 port=1 dbname=trading_db"\n')
    proc = cli(bare_env(RUNBOOKS_CONFIG=str(config)), "run", "restore", "--param", "database=trading_db",
               "--param", "dryrun=true")
    assert proc.returncode == 2 and "restore.dryrun: unknown name (did you mean 'dry_run'?)" in one_error_line(proc)
