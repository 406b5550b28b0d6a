"""Issue 26: `runbooks sandbox up` tells the operator what to export and where the UI is, and its Prefect server
knows its own UI address, so the automations' messages link to the run (the server's ``ui_url`` filter)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.test_cli import bare_env, cli


@pytest.mark.slow
def test_sandbox_up_prints_the_api_url_to_export_and_its_server_knows_the_ui_url() -> None:
    parent = Path(tempfile.mkdtemp(prefix="runbooks-sandbox-urls-"))  # the postgres OS user must pass through
    parent.chmod(0o755)
    box = parent / "sb"
    env = bare_env(COLUMNS="200")
    try:
        up = cli(env, "sandbox", "up", "--size", "1MB", "--dir", str(box), cwd=parent, timeout=300)
        assert up.returncode == 0, up.stderr[-3000:]
        status = json.loads(cli(env, "sandbox", "status", "--json", "--dir", str(box), cwd=parent).stdout)
        api, ui = status["prefect"]["api_url"], status["prefect"]["ui"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api", api) and ui == api.removesuffix("/api")
        lines = up.stdout.splitlines()
        assert f"export PREFECT_API_URL={api}" in lines, up.stdout
        assert f"Prefect UI: {ui}" in lines, up.stdout
        # What the running server itself uses to render `flow_run|ui_url` in the automations' messages.
        settings = httpx.get(f"{api}/admin/settings", timeout=10).raise_for_status().json()
        assert settings["ui_url"] == ui, settings["ui_url"]
    finally:
        cli(env, "sandbox", "down", "--dir", str(box), cwd=parent, timeout=120)
        shutil.rmtree(parent, ignore_errors=True)
