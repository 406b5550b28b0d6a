"""Issue 26: `runbooks sandbox up` tells the operator what to export and where the UI is, and its Prefect server
knows its own UI address, so the automations' messages link to the run (the server's ``ui_url`` filter)."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.processes import bare_env, cli, sandbox_up


@pytest.mark.slow
def test_sandbox_up_prints_the_api_url_to_export_and_its_server_knows_the_ui_url() -> None:
    env = bare_env(COLUMNS="200")
    with sandbox_up(env, "runbooks-sandbox-urls-") as (parent, box, up):
        status = json.loads(cli(env, "sandbox", "status", "--json", "--dir", str(box), cwd=parent).stdout)
        api, ui = status["prefect"]["api_url"], status["prefect"]["ui"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api", api) and ui == api.removesuffix("/api")
        lines = up.stdout.splitlines()
        assert f"export PREFECT_API_URL={api}" in lines, up.stdout
        assert f"Prefect UI: {ui}" in lines, up.stdout
        # What the running server itself uses to render `flow_run|ui_url` in the automations' messages.
        settings = httpx.get(f"{api}/admin/settings", timeout=10).raise_for_status().json()
        assert settings["ui_url"] == ui, settings["ui_url"]
