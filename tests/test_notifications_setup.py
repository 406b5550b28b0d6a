"""`runbooks notifications setup | check | test` against the test Prefect server: the block it makes delivers to a
real receiver on loopback (through the runbooks' own ``notify`` and through ``test``), an update changes only the
secret, and every refusal is one line with a HINT, exit 2, before anything is made. The webhook URL (a canary)
never appears in the output nor in the block's plain fields."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from runbooks.decisions.incidents import Notice
from runbooks.frame import RunbookRun, notify
from tests.processes import ROOT, bare_env, one_error_line
from tests.receivers import Inbox


def runbooks(env: dict[str, str], *args: str, stdin: str = "", cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as a subprocess; its stdin is a pipe (never a terminal) holding ``stdin``."""
    return subprocess.run([sys.executable, "-m", "runbooks.cli", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=180, cwd=cwd)


def config(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "runbooks.toml"
    path.write_text("\n".join(["[notifications]", *lines, ""]))
    return path


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def plain_data(name: str) -> str | None:
    """The block document's data as the API gives it without secrets (what the UI and its events show), or None
    when there is no such block."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    slug, _, document = name.partition("/")
    with get_client(sync_client=True) as client:
        try:
            found = client.read_block_document_by_name(name=document, block_type_slug=slug, include_secrets=False)
        except ObjectNotFound:
            return None
    return json.dumps(found.data, default=str)


@pytest.fixture
def inbox() -> Any:
    box = Inbox()
    yield box
    box.close()


@flow
def _page(title: str) -> str:
    run: RunbookRun[Any] = RunbookRun("notifications-setup-test", resource="x")
    return notify(run, Notice.model_validate({"kind": "start", "severity": "P2", "title": title, "impact": "none",
                                              "details": ["symptom"], "actions": ["action"]}))


@pytest.mark.slow  # end to end on real servers: run with the drills, to keep the suite short
def test_setup_makes_a_block_that_delivers_and_never_shows_the_url(tmp_path: Path, prefect_api: str, inbox: Inbox,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    block, canary = f"custom-webhook/{unique('oncall')}", f"canary-{uuid.uuid4().hex}"
    path = config(tmp_path, f'block = "{block}"')
    env = bare_env(RUNBOOKS_CONFIG=str(path), PREFECT_API_URL=prefect_api)
    secret = private_file(tmp_path / "hook", f"# the on-call webhook\n{inbox.url}/{canary}\n")

    made = runbooks(env, "notifications", "setup", "--secret-file", str(secret), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"created {block} (CustomWebhookNotificationBlock) on {prefect_api}: "
                                  "notifications of P0, P1, P2, P3 go through it."), made.stdout
    assert canary not in made.stdout + made.stderr
    shown = plain_data(block)
    assert shown is not None and canary not in shown and "{{webhook_url}}" in shown  # the URL is in its secrets

    # The runbooks' own notify, through the block named in the settings, reaches the receiver.
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(path))
    outcome = _page("setup drill")
    assert outcome.startswith(f"notified via {block!r}"), outcome
    assert inbox.wait_for(lambda t: t.startswith("[P2] INCIDENT: setup drill"), timeout=30)

    tried = runbooks(env, "notifications", "test", cwd=tmp_path)
    assert (tried.returncode, tried.stdout.strip()) == (0, f"delivered via {block}"), tried.stderr
    assert inbox.wait_for(lambda t: t.startswith("[runbooks] test notification"), timeout=30)

    again = runbooks(env, "notifications", "setup", "--secret-file", str(secret), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith(f"unchanged {block} "), again.stdout + again.stderr
    checked = runbooks(env, "notifications", "check", cwd=tmp_path)
    assert (checked.returncode, checked.stdout.strip()) == (0, f"exists   {block} (P0, P1, P2, P3)"), checked.stderr
    for proc in (tried, again, checked):
        assert canary not in proc.stdout + proc.stderr


@pytest.mark.slow  # end to end on real servers: run with the drills, to keep the suite short
def test_an_update_replaces_only_the_url_and_keeps_the_operators_payload(tmp_path: Path, prefect_api: str,
                                                                         inbox: Inbox) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = f"custom-webhook/{unique('oncall')}"
    env = bare_env(RUNBOOKS_CONFIG=str(config(tmp_path, f'block = "{block}"')), PREFECT_API_URL=prefect_api)
    old = Inbox()
    try:
        made = runbooks(env, "notifications", "setup", "--secret-file", "-", stdin=f"{old.url}/first\n", cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        # The operator reshapes the payload in the UI; a new URL must not undo that.
        edited = CustomWebhookNotificationBlock.load(block.split("/")[1])
        edited.json_data = {"text": "EDITED {{subject}}"}
        edited.save(block.split("/")[1], overwrite=True)

        moved = runbooks(env, "notifications", "setup", "--secret-file", "-", stdin=f"{inbox.url}/second\n",
                         cwd=tmp_path)
        assert moved.returncode == 0 and moved.stdout.startswith(f"updated {block} "), moved.stdout + moved.stderr
        tried = runbooks(env, "notifications", "test", "--block", block, cwd=tmp_path)
        assert tried.returncode == 0, tried.stdout + tried.stderr
        assert inbox.wait_for(lambda t: t == "EDITED [runbooks] test notification", timeout=30)
        assert old.texts == []
    finally:
        old.close()


REFUSALS = {  # what the config names, what the secret is, extra arguments -> what the one line says
    "unknown block type": (['block = "pager-duty-web-hook/{name}"'], "http://127.0.0.1:9/{canary}", [],
                           "block type 'pager-duty-web-hook' of 'pager-duty-web-hook/{name}' is not one 'setup' makes "
                           "(did you mean 'pager-duty-webhook'?)"),
    "URL given nowhere": (['block = "custom-webhook/{name}"'], None, [],
                          "no webhook URL given for 'custom-webhook/{name}'. HINT: pass --secret-file PATH"),
    "file open to others": (['block = "custom-webhook/{name}"'], "http://127.0.0.1:9/{canary}", ["mode=0644"],
                            "is open to others (mode 0644), so they can read the webhook too. HINT: chmod 600"),
    "not a URL": (['block = "custom-webhook/{name}"'], "hooks.example.com/{canary}", [],
                  "the webhook URL from the secret file {file!r} is not a URL (scheme://host/...)."),
    "not http": (['block = "custom-webhook/{name}"'], "ftp://hooks.example.com/{canary}", [],
                 "is a ftp:// URL; a custom-webhook block takes https:// or http://."),
    "two values for one": (['block = "custom-webhook/{name}"'], "http://127.0.0.1:9/{canary}\nhttp://127.0.0.1:9/b",
                           [], "holds 2 value line(s); a custom-webhook block takes 1: webhook URL."),
    "several blocks, none chosen": (['block = "custom-webhook/{name}"', "[notifications.severities.P0]",
                                     'blocks = ["slack-webhook/{name}"]'], "http://127.0.0.1:9/{canary}", [],
                                    "names 2 blocks ('slack-webhook/{name}', 'custom-webhook/{name}'), each with its "
                                    "own secret. HINT: set them up one at a time: runbooks notifications setup --block "
                                    "slack-webhook/{name}"),
    "a block the settings do not name": (['block = "custom-webhook/{name}"'], "http://127.0.0.1:9/{canary}",
                                         ["--block", "custom-webhook/other"],
                                         "block 'custom-webhook/other' is not named in [notifications]"),
    "no Prefect API": (['block = "custom-webhook/{name}"'], "http://127.0.0.1:9/{canary}", ["no-api"],
                       "no Prefect API is configured (PREFECT_API_URL and [prefect] api_url are unset)"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_input_is_one_line_exit_2_and_nothing_is_made(case: str, tmp_path: Path, prefect_api: str) -> None:
    lines, secret, extra, expected = REFUSALS[case]
    name, canary = unique("refused"), f"canary-{uuid.uuid4().hex}"
    env = bare_env(RUNBOOKS_CONFIG=str(config(tmp_path, *(line.format(name=name) for line in lines))))
    if "no-api" not in extra:
        env["PREFECT_API_URL"] = prefect_api
    args = [arg for arg in extra if arg not in ("no-api", "mode=0644")]
    file = tmp_path / "hook"
    if secret is not None:
        private_file(file, secret.format(canary=canary) + "\n")
        if "mode=0644" in extra:
            file.chmod(0o644)
        args += ["--secret-file", str(file)]
    proc = runbooks(env, "notifications", "setup", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert expected.format(name=name, file=str(file)) in line and "HINT: " in line, line
    assert canary not in proc.stdout + proc.stderr
    assert proc.stdout == ""
    for slug in ("custom-webhook", "slack-webhook", "pager-duty-web-hook"):
        assert plain_data(f"{slug}/{name}") is None  # refused before anything was made


def test_an_unreachable_prefect_api_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = bare_env(RUNBOOKS_CONFIG=str(config(tmp_path, 'block = "custom-webhook/oncall"')),
                   PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    proc = runbooks(env, "notifications", "setup", "--secret-file", "-", stdin="http://127.0.0.1:9/canary-x\n",
                    cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert f"the Prefect API at http://127.0.0.1:{port}/api cannot be reached (ConnectError). HINT: start the server" \
        in line, line
    assert "canary-x" not in proc.stderr


def test_slack_and_pagerduty_secrets_go_into_secret_fields(tmp_path: Path, prefect_api: str) -> None:
    from prefect.blocks.notifications import PagerDutyWebHook, SlackWebhook

    slack, pager = f"slack-webhook/{unique('oncall')}", f"pager-duty-webhook/{unique('primary')}"
    canary = uuid.uuid4().hex
    env = bare_env(RUNBOOKS_CONFIG=str(config(tmp_path, f'block = "{slack}"', "[notifications.severities.P0]",
                                              f'blocks = ["{pager}", "{slack}"]')), PREFECT_API_URL=prefect_api)
    url = f"https://hooks.slack.com/services/T0000/B0000/{canary}"
    made = runbooks(env, "notifications", "setup", "--block", slack, "--secret-file", "-", stdin=url, cwd=tmp_path)
    assert made.returncode == 0 and made.stdout.startswith(f"created {slack} (SlackWebhook)"), made.stderr
    keys = private_file(tmp_path / "pd", f"routing-{canary}\napi-{canary}\n")
    paged = runbooks(env, "notifications", "setup", "--block", pager, "--secret-file", str(keys), cwd=tmp_path)
    assert paged.returncode == 0 and paged.stdout.startswith(f"created {pager} (PagerDutyWebHook)"), paged.stderr
    assert "notifications of P0 go through it" in paged.stdout
    for proc in (made, paged):
        assert canary not in proc.stdout + proc.stderr
    for name in (slack, pager):
        shown = plain_data(name)
        assert shown is not None and canary not in shown, shown
    assert SlackWebhook.load(slack.split("/")[1]).url.get_secret_value() == url
    loaded = PagerDutyWebHook.load(pager.split("/")[1])
    assert (loaded.integration_key.get_secret_value(), loaded.api_key.get_secret_value(), loaded.notify_type) == \
        (f"routing-{canary}", f"api-{canary}", "failure")


@pytest.mark.slow  # end to end on real servers: run with the drills, to keep the suite short
def test_check_names_each_missing_block_and_how_to_make_it(tmp_path: Path, prefect_api: str, inbox: Inbox) -> None:
    made, missing, by_hand = (f"custom-webhook/{unique('oncall')}", f"slack-webhook/{unique('gone')}",
                              f"discord-webhook/{unique('chat')}")
    env = bare_env(RUNBOOKS_CONFIG=str(config(tmp_path, f'block = "{made}"', "[notifications.severities.P0]",
                                              f'blocks = ["{missing}", "{by_hand}"]')), PREFECT_API_URL=prefect_api)
    setup = runbooks(env, "notifications", "setup", "--block", made, "--secret-file", "-", stdin=inbox.url,
                     cwd=tmp_path)
    assert setup.returncode == 0, setup.stderr
    proc = runbooks(env, "notifications", "check", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        f"MISSING  {missing} (P0): runbooks notifications setup --block {missing}",
        f"MISSING  {by_hand} (P0): create it in the Prefect UI (Blocks)",
        f"exists   {made} (P1, P2, P3)"]
    as_json = json.loads(runbooks(env, "notifications", "check", "--json", cwd=tmp_path).stdout)
    assert [(b["block"], b["exists"]) for b in as_json["blocks"]] == [(missing, False), (by_hand, False),
                                                                       (made, True)]
    tried = runbooks(env, "notifications", "test", cwd=tmp_path)
    assert tried.returncode == 1
    assert f"NOT delivered via {missing}: no such block on this server" in tried.stdout
    assert f"delivered via {made}" in tried.stdout.splitlines()


def test_the_hidden_prompt_takes_the_url_without_echoing_it(tmp_path: Path, prefect_api: str, inbox: Inbox) -> None:
    """In a terminal (a real pseudo-terminal here) and without --secret-file, setup asks with echo off."""
    block, canary = f"custom-webhook/{unique('oncall')}", f"canary-{uuid.uuid4().hex}"
    env = bare_env(RUNBOOKS_CONFIG=str(config(tmp_path, f'block = "{block}"')), PREFECT_API_URL=prefect_api,
                   COLUMNS="200")
    pid, terminal = pty.fork()
    if pid == 0:  # the child: the CLI, with the pseudo-terminal as its controlling terminal
        try:
            os.chdir(tmp_path)
            os.execve(sys.executable, [sys.executable, "-m", "runbooks.cli", "notifications", "setup"],
                      {**env, "PYTHONPATH": str(ROOT)})
        finally:
            os._exit(127)  # never go on as a copy of pytest
    seen, answered = b"", False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # Typed only once the prompt has turned echo off (turning it off flushes what was typed before).
        if not answered and b"(hidden):" in seen and not termios.tcgetattr(terminal)[3] & termios.ECHO:
            os.write(terminal, f"{inbox.url}/{canary}\n".encode())
            answered = True
        ready, _, _ = select.select([terminal], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    else:
        os.kill(pid, signal.SIGKILL)  # no answer within the deadline: fail below, do not wait forever
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    text = seen.decode(errors="replace")
    assert answered and os.waitstatus_to_exitcode(status) == 0, text
    assert f"webhook URL for {block} (hidden):" in text and f"created {block} " in text, text
    assert canary not in text  # not echoed, not printed
    tried = runbooks(env, "notifications", "test", cwd=tmp_path)
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert inbox.wait_for(lambda t: t.startswith("[runbooks] test notification"), timeout=30)
