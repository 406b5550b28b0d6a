"""Automations as code (deployments/automations.py), applied to a real `prefect server` whose trigger and action
services fire them, and heard by real HTTP receivers behind Prefect notification blocks."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from prefect import flow, tags
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.settings import PREFECT_API_URL, temporary_settings

from runbooks_sandbox import SandboxState
from tests.pgfixtures import set_database_env
from tests.receivers import Inbox

# The drills: a real server whose trigger services fire on real windows (the 26 h P1 waits out a 10 s one).
slow = pytest.mark.slow
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "config" / "runbooks.example.toml"


def _load_automations() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "deployments_automations", Path(__file__).resolve().parents[1] / "deployments" / "automations.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


automations = _load_automations()


@pytest.fixture
def on_server(real_prefect_server: str, config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> Iterator[Inbox]:
    """The real server as this test's Prefect API, a block on it named as the default notification block, and
    every automation of ours removed afterwards."""
    inbox = Inbox()
    with temporary_settings({PREFECT_API_URL: real_prefect_server}):
        name = f"oncall-{uuid.uuid4().hex[:8]}"
        CustomWebhookNotificationBlock(name="oncall", url=inbox.url, json_data={"text": "{{subject}}\n{{body}}"},
                                       allow_private_urls=True).save(name)
        monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS__BLOCK", f"custom-webhook/{name}")
        try:
            yield inbox
        finally:
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                for automation in client.read_automations():
                    if automation.name.startswith(automations.PREFIX):
                        client.delete_automation(automation.id)
            inbox.close()


def _emit(api: str, event: str, resource: str, labels: dict[str, str] | None = None, **payload: Any) -> None:
    body = {"id": str(uuid.uuid4()), "occurred": datetime.now(UTC).isoformat(), "event": event,
            "resource": {"prefect.resource.id": resource, "prefect.resource.name": resource.removeprefix("runbooks."),
                         **(labels or {})},
            "payload": payload}
    httpx.post(f"{api}/events", json=[body], timeout=10).raise_for_status()


@slow
def test_apply_is_idempotent_and_leaves_what_it_did_not_make(on_server: Inbox, real_prefect_server: str,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.automations import AutomationCore, EventTrigger
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # made by hand, with our prefix: never ours to delete
        client.create_automation(AutomationCore(name=f"{automations.PREFIX}someone else's",
                                                trigger=EventTrigger(expect={"x.y"}), actions=[]))
    assert automations.main(["apply", "--dry-run"]) == 0
    planned = capsys.readouterr().out.splitlines()
    assert planned[0].startswith("would create runbooks: runbook run failed")
    assert automations.main(["apply"]) == 0
    first = capsys.readouterr().out.splitlines()
    made = sorted(line.split(None, 1)[1] for line in first if line.startswith("created"))
    assert made == sorted(["runbooks: runbook run failed", "runbooks: runbook run crashed", "runbooks: stale data",
                           *[f"runbooks: no backup of {name}" for name in _inventory()]])
    assert any(line.startswith("left") and "someone else's" in line for line in first)
    assert automations.main(["apply"]) == 0
    assert all(line.startswith(("unchanged", "left")) for line in capsys.readouterr().out.splitlines())
    monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS__REPEAT_AFTER", "PT10M")
    assert automations.main(["apply"]) == 0
    assert "updated   runbooks: stale data" in capsys.readouterr().out.splitlines()
    with get_client(sync_client=True) as client:  # the hand-made one is still there
        assert client.read_automations_by_name(f"{automations.PREFIX}someone else's")


def _inventory() -> list[str]:
    from runbooks.settings import load_settings

    return sorted(load_settings().databases)


@slow
def test_a_missing_block_or_no_server_is_one_line_and_changes_nothing(on_server: Inbox,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS", json.dumps({"severities": {"P1": {"blocks": ["slack-webhook/nope"]}}}))
    assert automations.main(["apply"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'slack-webhook/nope'" in err and "HINT:" in err and "Traceback" not in err
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert not [a for a in client.read_automations() if a.name.startswith(automations.PREFIX)]
    monkeypatch.delenv("RUNBOOKS_NOTIFICATIONS")
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert automations.main(["apply"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be reached" in err and "Traceback" not in err


@slow
def test_stale_data_notifies_once_per_table_and_a_failed_runbook_run_notifies(on_server: Inbox,
                                                                               real_prefect_server: str,
                                                                               capsys: pytest.CaptureFixture[str]
                                                                               ) -> None:
    assert automations.main(["apply"]) == 0
    capsys.readouterr()
    told, untold = {"runbooks.notified": "true"}, {"runbooks.notified": "false"}
    # The run that paused trading told on-call itself: no second message for that finding.
    _emit(real_prefect_server, "runbooks.data.finding", "runbooks.table.market.bars", told, severity="error",
          reason="stale for 12 min", gates_trading=True, action="paused trading")
    for _ in range(2):  # the second finding for the same table within repeat_after is not sent again
        _emit(real_prefect_server, "runbooks.data.finding", "runbooks.table.market.ohlcv", untold, severity="error",
              reason="stale for 14.2 min (error after 10 min)", gates_trading=True, action="paused trading")
    _emit(real_prefect_server, "runbooks.data.finding", "runbooks.table.market.trades", untold, severity="unknown",
          reason="missing_table", gates_trading=False, action="none")
    on_server.wait_for(lambda t: "table.market.trades" in t)
    assert not [t for t in on_server.texts if "table.market.bars" in t]
    text = on_server.wait_for(lambda t: "table.market.ohlcv" in t)
    assert text.startswith("[P2] INCIDENT: stale data: table.market.ohlcv")
    assert "error: stale for 14.2 min (error after 10 min)" in text and "trading gated on it" in text
    assert "runbook action: paused trading" in text and "Escalation: On-Call Primary (@oncall-primary) now" in text
    assert sum("table.market.ohlcv" in t for t in on_server.texts) == 1

    @flow(name="runbooks-automation-probe")
    def probe() -> None:
        raise RuntimeError("the probe failed on purpose")

    with tags("runbooks", "notify-on-failure"):
        state = probe(return_state=True)
    assert state.is_failed()
    text = on_server.wait_for(lambda t: "runbooks-automation-probe" in t)
    assert text.splitlines()[0].startswith("[P2] INCIDENT: runbooks-automation-probe: run ")
    assert text.splitlines()[0].endswith(" Failed") and "the probe failed on purpose" in text


@slow
def test_no_successful_backup_raises_a_p1_a_window_after_the_last_one(on_server: Inbox, real_prefect_server: str,
                                                                      config: SandboxState,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    quiet, busy = "ledger_db", _inventory()[0]
    set_database_env(monkeypatch, config, quiet)  # only its name matters here: nothing connects to it
    monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS__BACKUP_STALE_AFTER", "PT10S")  # the least Prefect allows
    assert {quiet, busy} <= set(_inventory())
    stop = threading.Event()

    def backups() -> None:  # the busy database is backed up every 2 s until `stop`; the quiet one never
        while not stop.is_set():
            _emit(real_prefect_server, "runbooks.backup.succeeded", f"runbooks.database.{busy}", backup_id="x")
            stop.wait(2)

    worker = threading.Thread(target=backups, daemon=True)
    worker.start()
    try:
        assert automations.main(["apply"]) == 0
        capsys.readouterr()
        # Never backed up: its window starts when the automations are applied.
        text = on_server.wait_for(lambda t: f"no successful backup of {quiet}" in t, timeout=120)
        time.sleep(5)  # past the end of the first window the busy database was in
        assert not [t for t in on_server.texts if f"no successful backup of {busy}" in t]
    finally:
        stop.set()
        worker.join()
    assert text.startswith(f"[P1] INCIDENT: no successful backup of {quiet} for 10 s")
    assert f"Run backup-on-demand with databases=['{quiet}']" in text
    # Its backups stop: the P1 comes once its last backup is a window old.
    stopped = len(on_server.texts)
    text = on_server.wait_for(lambda t: f"no successful backup of {busy}" in t, timeout=120)
    assert on_server.texts.index(text) >= stopped


# --- issue 26: automations that say what they are, and none that tells nobody ---


def test_every_automation_says_what_it_watches_and_what_it_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI shows our triggers as "A custom trigger": the description is all an operator reads there."""
    from runbooks.settings import load_settings

    monkeypatch.setenv("RUNBOOKS_CONFIG", str(EXAMPLE_CONFIG))
    made = automations.desired(load_settings(), lambda _severity: [uuid.uuid4()])
    assert len(made) >= 4
    for automation in made:
        severities = {action.subject[1:3] for action in automation.actions}  # "[P2] INCIDENT: …"
        assert automation.description.startswith("Watches "), automation.name
        assert [f"Sends on-call a {s} incident" in automation.description for s in severities] == [True], (
            automation.name, automation.description)


def test_every_prefect_yaml_trigger_says_what_it_watches_and_does() -> None:
    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    triggers = [(d["name"], t) for d in spec["deployments"] for t in d.get("triggers") or []]
    assert triggers
    for deployment, trigger in triggers:
        text = trigger.get("description") or ""
        assert all(event in text for event in trigger["expect"]), (deployment, text)  # what it watches
        assert deployment in text, (deployment, text)  # what it does: runs that deployment


@pytest.mark.parametrize(("blocks", "missing", "names"), [
    ({}, "P1, P2", "'runbooks: no backup of trading_db', 'runbooks: runbook run crashed'"),
    ({"RUNBOOKS_NOTIFICATIONS__SEVERITIES__P2__BLOCKS": '["custom-webhook/oncall"]'}, "P1",
     "'runbooks: no backup of trading_db'"),
])
def test_a_severity_without_a_block_is_refused_in_one_line_before_the_server_is_asked(
        blocks: dict[str, str], missing: str, names: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Automations that would notify nobody were skipped with exit 0: on-call never heard, and nobody knew. Now
    refused, exit 2, naming what is missing and the command that creates a block. The API is a closed port: the
    refusal comes before any request (otherwise it would say the server could not be reached)."""
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(EXAMPLE_CONFIG))
    for key, value in blocks.items():
        monkeypatch.setenv(key, value)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert automations.main(["apply", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    line = captured.err
    assert line.startswith(f"runbooks: no notification block for {missing}: "), line
    assert names in line and "'runbooks notifications setup'" in line and "HINT:" in line, line
    assert "no automation was changed" in line and "could not be reached" not in line, line


@slow
def test_stop_on_p0_runs_the_emergency_stop_for_a_p0_escalation_only(on_server: Inbox, real_prefect_server: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Off by default (no automation, no deployment needed); on, it needs the emergency-stop deployment and runs
    it for a P0 escalation of health-check, not for a P1 nor for another runbook's P0."""
    from runbooks.core.errors import ConfigurationError
    from runbooks.flows.emergency_stop import EmergencyStopParameters
    from runbooks.settings import load_settings

    assert not any("emergency stop" in line for line in automations.apply(load_settings(), dry_run=True))
    monkeypatch.setenv("RUNBOOKS_TRADING_SAFETY__STOP_ON_P0", "true")
    with pytest.raises(ConfigurationError, match="emergency-stop deployment"):
        automations.apply(load_settings(), dry_run=True)
    spec = importlib.util.spec_from_file_location(
        "deployments_serve", Path(__file__).resolve().parents[1] / "deployments" / "serve.py")
    assert spec and spec.loader
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    (deployment,) = [d for d in serve.build_deployments() if d.name == "emergency-stop"]
    deployment_id = deployment.apply()
    assert "created   runbooks: emergency stop on P0" in automations.apply(load_settings())

    def runs() -> list[dict[str, Any]]:
        answer = httpx.post(f"{real_prefect_server}/flow_runs/filter",
                            json={"deployments": {"id": {"any_": [str(deployment_id)]}}}, timeout=10)
        answer.raise_for_status()
        return list(answer.json())

    health = {"runbooks.runbook": "health-check"}
    _emit(real_prefect_server, "runbooks.escalation", "runbooks.health-check.platform",
          {**health, "runbooks.severity": "P1"}, reason="not P0")
    _emit(real_prefect_server, "runbooks.escalation", "runbooks.model-rollback.ppo_primary",
          {"runbooks.runbook": "model-rollback", "runbooks.severity": "P0"}, reason="another runbook")
    _emit(real_prefect_server, "runbooks.escalation", "runbooks.health-check.platform",
          {**health, "runbooks.severity": "P0"}, reason="database trading_db unavailable (connection refused)")
    deadline = time.monotonic() + 60
    while not (found := runs()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(found) == 1, "the P0 escalation did not start an emergency stop"
    parameters = found[0]["parameters"]
    assert parameters["reason"] == "P0 from health-check: database trading_db unavailable (connection refused)"
    assert parameters["initiated_by"].startswith("automation (runbooks.escalation ")
    EmergencyStopParameters.model_validate(parameters)
    time.sleep(3)
    assert len(runs()) == 1  # neither the P1 nor the model-rollback P0 started one
