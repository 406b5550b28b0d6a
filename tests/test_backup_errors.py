"""Bad input gets a clear error, loses nothing, lists no partial backup, and never leaks a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from runbooks.adapters.cluster import free_port
from runbooks.core.errors import ConfigurationError
from runbooks.settings import load_settings
from runbooks.tasks.postgres import dump_database, probe_database
from runbooks_sandbox import SandboxState
from tests.pgfixtures import admin_dsn
from tests.repositories import catalog, local_repository_path
from tests.runs import run_backup, without_retry_delays

CANARY = "canary-Pw-7f3a9c"


def flow_logs(state) -> str:  # type: ignore[no-untyped-def]
    """Everything the flow run and its task runs logged to the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    return "\n".join(log.message for log in logs)


def report_text() -> str:
    from prefect.artifacts import Artifact

    artifact = Artifact.get("backup-report-run")
    assert artifact is not None
    return str(artifact.data)


def nothing_listed() -> bool:
    cat = catalog()
    return cat.list_backups() == [] and cat.unfinished() == []


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the retry policy (count, condition) but not its real-world delays."""
    without_retry_delays(monkeypatch, dump_database, probe_database)


def test_unknown_database_is_refused_before_any_work(config: SandboxState) -> None:
    state, result = run_backup(databases=["trading_db", "no_such_db"])
    assert state.is_failed()
    assert "'no_such_db' is not in the inventory" in result.error and "HINT:" in result.error
    assert "trading_db" in result.error  # names what is configured
    assert result.items == [] and nothing_listed()
    assert "no_such_db" in report_text()


def test_database_missing_on_the_server(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_DATABASES__GHOST__DSN", admin_dsn(config, "ghost_db"))
    state, result = run_backup(databases=["ghost"], include_cluster=False)
    assert state.is_failed()
    [item] = result.items
    assert 'database "ghost_db" does not exist' in item.error and "HINT:" in item.error
    assert nothing_listed()


def test_unreachable_server_retries_then_fails_clearly(
    config: SandboxState, monkeypatch: pytest.MonkeyPatch, fast_retries: None
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("RUNBOOKS_DATABASES__TRADING_DB__DSN", f"postgresql://postgres:{CANARY}@127.0.0.1:{port}/x")
    state, result = run_backup(databases=["trading_db"], include_cluster=False)
    assert state.is_failed()
    [item] = result.items
    assert "unreachable" in item.error and "HINT:" in item.error
    logs = flow_logs(state)
    assert logs.count("Retrying") >= 1 or "Retry" in logs  # transient: the retry policy ran
    assert nothing_listed()
    assert CANARY not in logs + result.model_dump_json() + report_text()


def test_wrong_password_fails_at_once_without_leaking_it(
    config: SandboxState, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNBOOKS_DATABASES__TRADING_DB__PASSWORD", CANARY)
    state, result = run_backup(databases=["trading_db"], include_cluster=False)
    assert state.is_failed()
    [item] = result.items
    assert "rejected the credentials" in item.error and "HINT:" in item.error
    logs = flow_logs(state)
    assert "Retrying" not in logs  # permanent: no retry
    captured = capfd.readouterr()
    everything = logs + result.model_dump_json() + report_text() + captured.out + captured.err + str(state.message)
    assert CANARY not in everything
    assert nothing_listed()


def test_repository_not_writable(config: SandboxState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", (blocker / "repo").as_uri())
    state, result = run_backup()
    assert state.is_failed()
    assert "is not writable" in result.error and "HINT:" in result.error
    assert result.items == []


def test_malformed_repository_url_is_a_configuration_error(config: SandboxState,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("ftp://host/backups", "s3://", "file://relative/path", "not a url"):
        monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", url)
        with pytest.raises(ConfigurationError, match="repository.url") as info:
            load_settings()
        assert "HINT:" in str(info.value)


def test_cli_errors_are_clear_and_without_traceback(config: SandboxState, prefect_api: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runbooks.cli", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    local_repository_path(os.environ["RUNBOOKS_REPOSITORY__URL"]).mkdir(parents=True)
    bad_url = cli("backups", "list")
    assert bad_url.returncode == 0, bad_url.stderr  # sanity: the config itself works
    env["RUNBOOKS_REPOSITORY__URL"] = "ftp://nope"
    proc = cli("run", "backup")
    assert proc.returncode == 2 and "repository.url" in proc.stderr and "Traceback" not in proc.stderr
    env.pop("RUNBOOKS_REPOSITORY__URL")
    env["RUNBOOKS_REPOSITORY__URL"] = os.environ["RUNBOOKS_REPOSITORY__URL"]
    proc = cli("run", "backup", "--param", "databases=[\"nope\"]", "--json")  # refused before any flow run
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert "'nope' is not in the inventory" in proc.stderr and "Beginning flow run" not in proc.stderr
    proc = cli("run", "backup", "--param", "bogus=1")
    assert proc.returncode == 2 and "bogus" in proc.stderr
    proc = cli("run", "no-such-runbook")
    assert proc.returncode == 2 and "unknown runbook" in proc.stderr
    proc = cli("backups", "show", "20200101T000000Z")
    assert proc.returncode == 1 and "no backup 20200101T000000Z" in proc.stderr


def test_secrets_never_appear_in_a_successful_run(
    s3_config: SandboxState, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A canary database password and S3 secret key flow through a whole backup; none of it is printed."""
    with psycopg.connect(admin_dsn(s3_config), autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS canary_backup; CREATE ROLE canary_backup LOGIN PASSWORD '{CANARY}'"
                     " IN ROLE pg_read_all_data")
    monkeypatch.setenv("RUNBOOKS_DATABASES__TRADING_DB__DSN",
                       s3_config.cluster().dsn("trading_db", "canary_backup", CANARY))
    s3_canary = "canary-S3-secret-91be"
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__SECRET_ACCESS_KEY", s3_canary)  # moto accepts any key
    state, result = run_backup(databases=["trading_db"])
    assert state.is_completed(), result
    cat = catalog()
    manifests = "".join(m.model_dump_json() for m in cat.list_backups())
    captured = capfd.readouterr()
    everything = (flow_logs(state) + result.model_dump_json() + report_text() + manifests + captured.out
                  + captured.err)
    for secret in (CANARY, s3_canary):
        assert secret not in everything
