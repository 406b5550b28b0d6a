"""Severity routing and seed 004's message templates, through Prefect notification blocks to real HTTP receivers
on loopback; the escalation matrix and contacts from the settings."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect import flow
from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
from pydantic import ValidationError

from runbooks.decisions.incidents import Notice, PostIncident, escalation_line, post_incident_markdown, render
from runbooks.frame import RunbookRun, notify
from runbooks.settings import NotificationSettings, Severity
from tests.receivers import Inbox


class Receivers:
    """Named receivers (``tests.receivers.Inbox``), each behind its own CustomWebhookNotificationBlock."""

    def __init__(self) -> None:
        self.got: dict[str, list[str]] = {}
        self._inboxes: list[Inbox] = []

    def add(self, label: str, *, down: bool = False) -> str:
        inbox = Inbox()
        self.got[label] = inbox.texts
        if down:
            inbox.close()  # nothing listens there any more
        else:
            self._inboxes.append(inbox)
        name = f"{label}-{uuid.uuid4().hex[:8]}"
        CustomWebhookNotificationBlock(name=label, url=inbox.url, json_data={"text": "{{subject}}\n{{body}}"},
                                       allow_private_urls=True).save(name)
        return f"custom-webhook/{name}"

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.close()


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    box = Receivers()
    yield box
    box.close()


@flow
def _notify_flow(notices: list[Notice]) -> list[str]:
    run: RunbookRun[Any] = RunbookRun("notify-test", resource="x")
    return [notify(run, notice) for notice in notices]


def _notice(severity: Severity, kind: str = "start") -> Notice:
    return Notice.model_validate({"kind": kind, "severity": severity, "title": f"{severity} drill",
                                  "impact": "none", "details": ["symptom"], "actions": ["action"]})


def test_each_severity_goes_to_its_blocks_and_a_dead_one_fails_alone(receivers: Receivers,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pager, slack, default = receivers.add("pager"), receivers.add("slack"), receivers.add("default")
    dead = receivers.add("dead", down=True)
    # An apprise block (SlackWebhook) whose endpoint is down: apprise only logs that, unless asked to raise.
    dead_slack = f"slack-webhook/dead-{uuid.uuid4().hex[:8]}"
    SlackWebhook(url="json://127.0.0.1:9/hook").save(dead_slack.split("/")[1])
    monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS", json.dumps({
        "block": default, "severities": {"P0": {"blocks": [pager, slack]}, "P1": {"blocks": [dead, slack]},
                                         "P2": {"blocks": [dead_slack]}}}))
    outcomes = _notify_flow([_notice("P0"), _notice("P1"), _notice("P3"), _notice("P2")])
    assert [len(receivers.got[k]) for k in ("pager", "slack", "default", "dead")] == [1, 2, 1, 0]
    assert receivers.got["pager"][0].startswith("[P0] INCIDENT: P0 drill")
    assert [t.splitlines()[0] for t in receivers.got["slack"]] == ["[P0] INCIDENT: P0 drill", "[P1] INCIDENT: P1 drill"]
    assert receivers.got["default"][0].startswith("[P3] INCIDENT: P3 drill")
    # The dead receiver's failure is reported, and the P1 still reached the block after it.
    assert "FAILED" in outcomes[1] and f"notified via {slack!r}" in outcomes[1]
    assert "FAILED" not in outcomes[0] + outcomes[2]
    assert outcomes[3].startswith(f"notification via {dead_slack!r} FAILED: NotificationError")


def test_the_start_message_carries_the_escalation_row_and_contacts_from_the_settings(receivers: Receivers,
                                                                                    monkeypatch: pytest.MonkeyPatch
                                                                                    ) -> None:
    block = receivers.add("oncall")
    monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS", json.dumps({
        "block": block, "timezone": "UTC", "contacts": {"On-Call Primary": "@alice", "On-Call Secondary": "@bob",
                                                        "Engineering Lead": "@carol", "Trading Lead": "@dan",
                                                        "CTO": "@erin", "Team Lead": "@frank"},
        "severities": {"P1": {"escalation": [{"after_minutes": 0, "who": "On-Call Primary"},
                                             {"after_minutes": 20, "who": "Trading Lead"}]}}}))
    _notify_flow([_notice("P1")])
    [text] = receivers.got["oncall"]
    assert "Severity: P1 (High; respond: 15 minutes; resolve within 2 h)" in text
    assert "On-Call: @alice" in text
    assert "Escalation: On-Call Primary (@alice) now; + Trading Lead (@dan) at 20 min" in text
    assert "Initial Symptoms:\n- symptom" in text and "Actions Being Taken:\n- action" in text
    assert "(UTC)" in text


def test_update_and_resolved_templates() -> None:
    settings = NotificationSettings()
    started = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
    update = Notice(kind="update", severity="P2", title="t", impact="degraded", status="Mitigating",
                    details=["tried X"], root_cause="feed stalled", actions=["restart feed"])
    subject, body = render(update, settings)
    assert subject == "[P2] UPDATE: t"
    assert "Status: Mitigating" in body and "Current Theory: feed stalled" in body
    assert "Next Steps:\n- restart feed" in body
    resolved = Notice(kind="resolved", severity="P1", title="t", impact="10 min paused", resolution="resumed",
                      started_at=started, actions=["find why"])
    subject, body = render(resolved, settings, now=started + timedelta(hours=1, minutes=5))
    assert subject == "[P1] RESOLVED: t"
    assert "Duration: 1 h 5 min" in body and "Resolution: resumed" in body and "- [ ] find why" in body
    assert escalation_line(settings, "P0") == ("On-Call Primary (@oncall-primary) now; + Engineering Lead "
                                               "(@eng-lead) at 15 min; + CTO (@cto) at 30 min")


def test_post_incident_report_follows_seed_002() -> None:
    started = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    text = post_incident_markdown(
        PostIncident(title="db replaced", severity="P1", lead="oncall-bob", what_happened="bad write",
                     resolution="restored", action_items=["drop the kept copy"]),
        started_at=started, seconds=754, timeline=[(started + timedelta(seconds=5), "halt trading: ok (0.1 s)")],
        flow_run_id="0123456789abcdef")
    for part in ("**Incident ID**: INC-20261124-01234567", "**Duration**: 13 min", "**Lead**: oncall-bob",
                 "- **03:00:05** - halt trading: ok (0.1 s)", "### What Happened\nbad write", "### Where We Got Lucky",
                 "| drop the kept copy |"):
        assert part in text


@pytest.mark.parametrize(("settings", "refusal"), [
    ({"timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"severities": {"P1": {"escalation": [{"after_minutes": 0, "who": "Nobody"}]}}},
     "not in [notifications.contacts]"),
    ({"block": "not a block name"}, "String should match pattern"),
    ({"severities": {"P1": {"resolution_minutes": 0}}}, "greater than 0"),
])
def test_bad_notification_settings_are_refused(settings: dict[str, Any], refusal: str) -> None:
    with pytest.raises(ValidationError, match=refusal.replace("[", r"\[").replace("]", r"\]")):
        NotificationSettings.model_validate(settings)


def test_a_configured_severity_keeps_the_seed_fields_it_does_not_name() -> None:
    settings = NotificationSettings.model_validate({"block": "slack-webhook/all",
                                                    "severities": {"P0": {"blocks": ["pager-duty-web-hook/p"]}}})
    assert settings.blocks_for("P0") == ["pager-duty-web-hook/p"] and settings.blocks_for("P2") == ["slack-webhook/all"]
    assert [s.who for s in settings.severities["P0"].escalation] == ["On-Call Primary", "Engineering Lead", "CTO"]


def test_environment_overrides_reach_one_severity_and_one_contact(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings lower-cases nested environment keys: P1 and CTO must still be found."""
    from runbooks.core.errors import ConfigurationError
    from runbooks.settings import load_settings

    monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS__SEVERITIES__P1__BLOCKS", '["slack-webhook/oncall"]')
    monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS__CONTACTS__CTO", "@bob")
    settings = load_settings().notifications
    assert settings.blocks_for("P1") == ["slack-webhook/oncall"] and settings.severities["P1"].name == "High"
    assert settings.contacts["CTO"] == "@bob" and settings.contacts["On-Call Primary"] == "@oncall-primary"
    monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS__SEVERITIES__P1__BLOCKS", "slack-webhook/oncall")  # not JSON
    with pytest.raises(ConfigurationError, match="is JSON"):
        load_settings()


def test_a_naive_start_time_and_a_severity_model_are_taken_as_meant() -> None:
    from runbooks.settings import SeverityLevel

    notice = Notice(kind="resolved", severity="P2", title="t", impact="i", started_at=datetime(2026, 11, 24, 3, 0))
    _, body = render(notice, NotificationSettings(), now=datetime(2026, 11, 24, 4, 0, tzinfo=UTC))
    assert "Duration: 1 h" in body
    level = SeverityLevel(name="x", criteria="c", response="r", resolution_minutes=5, blocks=["slack-webhook/a"])
    settings = NotificationSettings(severities={"P1": level})
    assert settings.blocks_for("P1") == ["slack-webhook/a"] and settings.severities["P1"].name == "x"
