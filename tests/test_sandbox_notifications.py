"""Issue 26: `runbooks sandbox up` runs a webhook receiver for on-call, names its block in the config's
[notifications] and makes that block on its Prefect server, so a newcomer sees a page arrive in
``notifications.log``; `sandbox status` shows where; `sandbox down` stops the receiver and removes the log. The
receiver's token (the block's secret) is printed nowhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import bare_env, cli, sandbox_up

PAGE = """
from typing import Any

from prefect import flow

from runbooks.frame import RunbookRun, notify
from runbooks.decisions.incidents import Notice


@flow
def page() -> str:
    run: RunbookRun[Any] = RunbookRun("sandbox-page", resource="x")
    return notify(run, Notice.model_validate({"kind": "start", "severity": "P1", "title": "sandbox drill",
                                              "impact": "none", "details": ["symptom"], "actions": ["action"]}))


print(page())
"""


def _wait_for(log: Path, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and text in (found := log.read_text()):
            return found
        time.sleep(0.2)
    raise AssertionError(f"{text!r} did not arrive in {log} within {timeout} s")


@pytest.mark.slow
def test_a_page_arrives_in_the_sandboxs_notifications_log() -> None:
    env = bare_env(COLUMNS="200")
    with sandbox_up(env, "runbooks-sandbox-notify-") as (parent, box, up):
        state = json.loads((box / "state.json").read_text())
        token = state["receiver_token"]
        status = json.loads(cli(env, "sandbox", "status", "--json", "--dir", str(box), cwd=parent).stdout)
        notified = status["notifications"]
        log = box / "notifications.log"
        assert notified == {"receiver": f"http://127.0.0.1:{state['receiver_port']}", "up": True,
                            "block": "custom-webhook/sandbox-oncall", "log": str(log), "messages": 0}
        assert '[notifications]\nblock = "custom-webhook/sandbox-oncall"' in (box / "runbooks.toml").read_text()

        # A runbook's page, through the frame's notify and the block the sandbox's config names.
        config = str(box / "runbooks.toml")
        run_env = {**env, "RUNBOOKS_CONFIG": config, "PREFECT_API_URL": status["prefect"]["api_url"]}
        paged = subprocess.run([sys.executable, "-c", PAGE], env=run_env, capture_output=True, text=True, timeout=180,
                               cwd=parent)
        assert paged.returncode == 0 and "notified via 'custom-webhook/sandbox-oncall'" in paged.stdout, \
            paged.stdout + paged.stderr[-3000:]
        _wait_for(log, "[P1] INCIDENT: sandbox drill")

        tried = cli({**env, "RUNBOOKS_CONFIG": config}, "notifications", "test", cwd=parent)
        assert tried.stdout.strip() == "delivered via custom-webhook/sandbox-oncall", tried.stdout + tried.stderr
        _wait_for(log, "[runbooks] test notification")
        table = cli(env, "sandbox", "status", "--dir", str(box), cwd=parent)
        assert f"{notified['receiver']} -> {log} (2 received)" in table.stdout, table.stdout

        for proc in (up, paged, tried, table):
            assert token not in proc.stdout + proc.stderr
        assert all(token not in p.read_text(errors="replace") for p in box.glob("*.log"))

        down = cli(env, "sandbox", "down", "--dir", str(box), cwd=parent, timeout=120)
        assert f"stopped receiver (pid {state['pids']['receiver']})" in down.stdout, down.stdout + down.stderr
        assert not box.exists()
