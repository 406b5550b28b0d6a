"""Automations as code: what on-call hears from the Prefect server when no runbook is there to say it.

- a runbook run that **failed** (deployments tagged ``notify-on-failure``) or **crashed** (any ``runbooks`` run);
- a **stale or failing table** (``runbooks.data.finding``, at most once per table per ``repeat_after``; the
  data-freshness runbook pauses trading itself);
- **no successful backup** of an inventory database for ``backup_stale_after`` (26 h): a proactive P1, raised by
  the absence of ``runbooks.backup.succeeded``, not by a failed run (a backup that never ran fails no run);
- with ``[trading_safety] stop_on_p0`` (off by default): a **P0 escalation** of data-freshness or health-check runs
  the ``emergency-stop`` deployment.

The degradation → model-rollback automation is a deployment trigger in ``prefect.yaml``. Messages are seed 004's
incident-start template, sent through the notification blocks of each severity (``[notifications]``); the server
fills in the run's details. Apply with ``python deployments/automations.py apply`` (``--dry-run`` prints them):
automations are matched by name and created or updated; ones this configuration no longer makes are listed, never
deleted. A severity with no notification block is refused before any change (its automations would tell nobody).
Each description says what the automation watches and what it sends: the UI shows its trigger as "A custom trigger".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

from prefect.automations import AutomationCore, EventTrigger, Posture, RunDeployment, SendNotification
from prefect.events.actions import ActionTypes
from prefect.exceptions import ObjectNotFound

from runbooks.core.errors import ConfigurationError, RunbookError
from runbooks.decisions.incidents import Notice, render
from runbooks.settings import Settings, Severity, load_settings

PREFIX = "runbooks: "
# The server renders these. ``ui_url`` needs PREFECT_UI_URL in the server's environment; without it the run's id.
RUN_URL = "{{ (flow_run|ui_url) or ('flow run ' ~ flow_run.id) }}"
EVENT_RUN_URL = "{{ (flow_run|ui_url) or 'the data-freshness run (Prefect UI: Events)' }}"
RUN_STARTED = "{{ flow_run.start_time or flow_run.expected_start_time }} (UTC)"
WATCH_STARTED = "runbooks.backup.watch-started"
BlockIds = Callable[[Severity], list[UUID]]


def _actions(settings: Settings, blocks: BlockIds, notice: Notice, *, started: str) -> list[ActionTypes]:
    subject, body = render(notice, settings.notifications, started=started)
    return [SendNotification(block_document_id=block, subject=subject, body=body) for block in blocks(notice.severity)]


def _run_trigger(states: list[str], tag: str) -> EventTrigger:
    return EventTrigger(expect={f"prefect.flow-run.{s}" for s in states},
                        match={"prefect.resource.id": "prefect.flow-run.*"},
                        match_related={"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{tag}"},
                        posture=Posture.Reactive, threshold=1, within=timedelta(0))


STOP_DEPLOYMENT = "emergency-stop/emergency-stop"  # flow/deployment, as prefect.yaml deploys it
P0_SOURCES = ["runbooks.data-freshness.*", "runbooks.health-check.*", "runbooks.database-connections.*"]


def stop_on_p0(deployment_id: UUID) -> AutomationCore:
    """``[trading_safety] stop_on_p0``: a P0 escalation of data-freshness, health-check or database-connections (a
    ``runbooks.escalation`` event labelled ``runbooks.severity = P0``) runs the emergency stop."""
    return AutomationCore(
        name=f"{PREFIX}emergency stop on P0", description="Watches runbooks.escalation events labelled "
        "runbooks.severity P0 from data-freshness, health-check and database-connections runs (e.g. a trading "
        "database unavailable, P0 in "
        "the USD/COP playbook). Runs the emergency-stop deployment with the event's reason: trading halts, verified, "
        "and on-call is paged P0 by that run. On because [trading_safety] stop_on_p0 = true.",
        trigger=EventTrigger(expect={"runbooks.escalation"},
                             match={"prefect.resource.id": P0_SOURCES, "runbooks.severity": "P0"},
                             posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[RunDeployment(source="selected", deployment_id=deployment_id, job_variables=None, parameters={
            "reason": "P0 from {{ event.resource['runbooks.runbook'] }}: {{ event.payload.reason | truncate(400) }}",
            "initiated_by": "automation ({{ event.event }} {{ event.id }})"})])


def desired(settings: Settings, blocks: BlockIds, stop_deployment: UUID | None = None) -> list[AutomationCore]:
    """Every automation this configuration makes, in a stable order. ``stop_deployment``: the emergency-stop
    deployment's id, needed when ``[trading_safety] stop_on_p0`` is on."""
    cfg = settings.notifications
    run_notice = Notice(kind="start", severity="P2", title="{{ flow.name }}: run {{ flow_run.name }} "
                        "{{ flow_run.state.name }}", impact="the runbook did not finish its work",
                        details=["{{ flow_run.state.message }}"],
                        actions=["Read the run's report artifact and logs, fix, rerun from the deployment"],
                        flow_run_url=RUN_URL)
    automations = [
        AutomationCore(name=f"{PREFIX}runbook run failed", description="Watches runbook runs tagged "
                       "notify-on-failure (every scheduled maintenance and recovery runbook, prefect.yaml) that end "
                       "Failed or TimedOut. Sends on-call a P2 incident (the USD/COP playbook's P2 example: "
                       "'scheduled jobs failing') with the "
                       "state message and a link to the run.",
                       trigger=_run_trigger(["Failed", "TimedOut"], "notify-on-failure"),
                       actions=_actions(settings, blocks, run_notice, started=RUN_STARTED)),
        AutomationCore(name=f"{PREFIX}runbook run crashed", description="Watches every run tagged runbooks "
                       "that ends Crashed (its process died, so nothing in it could report). Sends on-call a P2 "
                       "incident with a link to the run.",
                       trigger=_run_trigger(["Crashed"], "runbooks"),
                       actions=_actions(settings, blocks, run_notice.model_copy(update={
                           "impact": "the runbook's process died: what it did is in its events and report, if any"}),
                           started=RUN_STARTED)),
        AutomationCore(name=f"{PREFIX}stale data", description="Watches runbooks.data.finding events: a "
                       "monitored table stale, failing its quality checks or unmeasurable, from a data-freshness run "
                       "that did not notify on-call itself. Sends on-call a P2 incident with the table, the reason "
                       f"and what the runbook did, at most once per table per {cfg.repeat_after}.",
                       # Not when the data-freshness run notified on-call itself (it paused or resumed).
                       trigger=EventTrigger(expect={"runbooks.data.finding"},
                                            match={"prefect.resource.id": "runbooks.table.*",
                                                   "runbooks.notified": "false"},
                                            for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1,
                                            within=cfg.repeat_after),
                       actions=_actions(settings, blocks, Notice(
                           kind="start", severity="P2",
                           title="stale data: {{ event.resource['prefect.resource.name'] }}",
                           impact="{{ 'trading gated on it' if event.payload.gates_trading else 'report only' }}; "
                           "runbook action: {{ event.payload.action }}",
                           details=["{{ event.payload.severity }}: {{ event.payload.reason }}"],
                           actions=["The data-freshness runbook pauses and resumes trading itself (the USD/COP "
                                    "playbook's 'Data Source Down', section 3.3): check the data source"],
                           flow_run_url=EVENT_RUN_URL),
                           started="{{ event.occurred }} (UTC)")),
    ]
    seconds = cfg.backup_stale_after.total_seconds()
    span = (f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min" if seconds >= 60
            else f"{seconds:g} s")
    for name in sorted(settings.databases):
        automations.append(AutomationCore(
            name=f"{PREFIX}no backup of {name}", description=f"Watches for the absence of "
            f"runbooks.backup.succeeded for database {name}: none for {span} since its last one (or since apply). "
            "Sends on-call a P1 incident (a restore would lose everything since) once per outage.",
            # Each successful backup (or the watch starting, when applied) starts the window afresh, so it fires
            # `within` after the last one: Prefect's heartbeat pattern (the same event in `after` and `expect`).
            trigger=EventTrigger(after={"runbooks.backup.succeeded", WATCH_STARTED},
                                 expect={"runbooks.backup.succeeded"},
                                 match={"prefect.resource.id": f"runbooks.database.{name}"},
                                 posture=Posture.Proactive, threshold=1, within=cfg.backup_stale_after),
            actions=_actions(settings, blocks, Notice(
                kind="start", severity="P1", title=f"no successful backup of {name} for {span}",
                impact=f"a restore of {name} would lose everything written since its last backup",
                details=[f"no runbooks.backup.succeeded event for database {name} in {span} (since its last "
                         "successful backup, or since the automations were applied)"],
                actions=[f"Run backup-on-demand with databases=['{name}'] and read its report",
                         "Check the backup-nightly runs and the worker"]), started=f"{span} ago or earlier")))
    if settings.trading_safety.stop_on_p0:
        if stop_deployment is None:
            raise ConfigurationError("[trading_safety] stop_on_p0 is on, but the emergency-stop deployment is not "
                                     "known to the Prefect server.", hint="deploy it first (prefect --no-prompt "
                                     "deploy --name emergency-stop), then apply again; no automation was changed.")
        automations.append(stop_on_p0(stop_deployment))
    return automations


def _block_ids(settings: Settings) -> BlockIds:
    """Each severity's notification blocks as the server knows them; a missing one is refused before any change."""
    from prefect.blocks.core import Block

    found: dict[str, UUID] = {}
    for name in {n for s in settings.notifications.severities for n in settings.notifications.blocks_for(s)}:
        try:
            block: Any = Block.load(name, _sync=True)  # type: ignore[call-arg]
        except (ValueError, RuntimeError) as exc:
            raise ConfigurationError(f"notification block {name!r} named in [notifications] cannot be loaded "
                                     f"({str(exc).splitlines()[0][:200]}).",
                                     hint="make it with 'runbooks notifications setup' (docs/notifications.md), "
                                     "or fix the name; no automation was changed.") from None
        found[name] = block._block_document_id
    return lambda severity: [found[n] for n in settings.notifications.blocks_for(severity)]


def refuse_missing_blocks(settings: Settings) -> None:
    """An automation whose severity has no notification block would tell nobody: refused (exit 2) before any
    change, as a block that does not exist is, rather than skipped with exit 0 and on-call never hearing of it."""
    marks = {severity: uuid4() for severity in settings.notifications.severities}  # a stand-in block per severity
    severity_of = {mark: severity for severity, mark in marks.items()}
    silent: dict[str, list[str]] = {}
    for automation in desired(settings, lambda severity: [marks[severity]], stop_deployment=uuid4()):
        for action in automation.actions:
            if not isinstance(action, SendNotification):
                continue
            severity = severity_of[action.block_document_id]
            if not settings.notifications.blocks_for(severity):
                silent.setdefault(severity, []).append(automation.name)
    if not silent:
        return
    missing = sorted(silent)
    names = sorted({name for names in silent.values() for name in names})
    raise ConfigurationError(
        f"no notification block for {', '.join(missing)}: [notifications] block and [notifications.severities."
        f"{missing[0]}] blocks are both empty, so {len(names)} automation(s) would notify nobody "
        f"({', '.join(repr(n) for n in names[:3])}{', …' if len(names) > 3 else ''}).",
        hint="name a block in runbooks.toml ([notifications] block = 'slack-webhook/<name>', or "
        "RUNBOOKS_NOTIFICATIONS__BLOCK), make it with 'runbooks notifications setup', and rerun apply; no "
        "automation was changed.")


def apply(settings: Settings, *, dry_run: bool = False) -> list[str]:
    """Create or update every automation by name; one line per automation. An automation an operator disabled
    stays disabled. Then the backup watch of every database starts (its window begins now)."""
    from prefect.client.orchestration import get_client

    refuse_missing_blocks(settings)
    lines = []
    with get_client(sync_client=True) as client:
        wanted = desired(settings, _block_ids(settings), stop_deployment=_stop_deployment(client, settings))
        existing = {a.name: a for a in client.read_automations() if a.name.startswith(PREFIX)}
        for automation in wanted:
            current = existing.pop(automation.name, None)
            if current is None:
                verb = "would create" if dry_run else "created"
                if not dry_run:
                    client.create_automation(automation)
            else:
                automation.enabled = current.enabled
                if AutomationCore.model_validate(current.model_dump(exclude={"id"})) == automation:
                    verb = "unchanged"
                else:
                    verb = "would update" if dry_run else "updated"
                    if not dry_run:
                        client.update_automation(current.id, automation)
            lines.append(f"{verb:<9} {automation.name}" + ("" if automation.enabled else " (disabled in the UI)"))
        lines += [f"left      {name}: not made by this configuration (delete it in the UI if obsolete)"
                  for name in sorted(existing)]
    if not dry_run:
        _start_backup_watch(sorted(settings.databases))
    return lines


def _stop_deployment(client: Any, settings: Settings) -> UUID | None:
    """The emergency-stop deployment's id, when the stop-on-P0 automation needs it (None if not deployed)."""
    if not settings.trading_safety.stop_on_p0:
        return None
    try:
        return UUID(str(client.read_deployment_by_name(STOP_DEPLOYMENT).id))
    except ObjectNotFound:
        return None


def _start_backup_watch(databases: list[str]) -> None:
    """A database never backed up still gets its window: each watch starts at the event sent here."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    for name in databases:
        emit_event(event=WATCH_STARTED, resource={"prefect.resource.id": f"runbooks.database.{name}",
                                                  "prefect.resource.name": f"database.{name}"})
    EventsWorker.drain_all(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deployments/automations.py", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["apply"])
    parser.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    args = parser.parse_args(argv)
    import httpx
    from prefect.settings import PREFECT_API_URL

    try:
        api = PREFECT_API_URL.value()
        if not api:
            raise ConfigurationError("PREFECT_API_URL is not set, so the automations would go to a temporary "
                                     "server and vanish with it.", hint="export PREFECT_API_URL=http://<server>:4200/api"
                                     " (or use a Prefect profile) and rerun.")
        try:
            for line in apply(load_settings(), dry_run=args.dry_run):
                print(line)
        except (httpx.HTTPError, OSError, ObjectNotFound) as exc:
            raise ConfigurationError(f"the Prefect API at {api} refused or could not be reached "
                                     f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}).",
                                     hint="check PREFECT_API_URL and that the server is up; the automations "
                                     "listed above (if any) were applied.") from None
    except RunbookError as exc:
        print(f"runbooks: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
