"""The operator's command line, run as a real subprocess against the sandbox and the test Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from runbooks.sandbox import SandboxState


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runbooks.cli", *args], env=env, capture_output=True, text=True,
                          timeout=180)


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
    assert json.loads(cli(env, "backups", "list", "--json").stdout) == []


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
