"""Notify on-call through Prefect notification blocks (``SlackWebhook``, ``PagerDutyWebHook``,
``CustomWebhookNotificationBlock``, …) routed by severity in the settings, rather than hand-written webhook code.
Messages follow seed 004's templates (:mod:`runbooks.decisions.incidents`).

A notification is best effort: a runbook that paused trading has done its job even if Slack is down, so a failed
notification is logged and reported, never raised. Every secret field of a block (webhook URLs, keys) is
registered for scrubbing before it is used, so an error that quotes it is scrubbed too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runbooks.adapters.notification_blocks import register_block_secrets
from runbooks.core.redact import scrub
from runbooks.decisions.incidents import Notice, render

if TYPE_CHECKING:
    from runbooks.frame.run import RunbookRun


def _send(name: str, subject: str, body: str) -> None:
    from prefect.blocks.core import Block

    block: Any = Block.load(name, _sync=True)  # type: ignore[call-arg]
    register_block_secrets(block)
    if hasattr(block, "raise_on_failure"):  # apprise blocks (Slack, PagerDuty, ...) only log a failed send otherwise
        with block.raise_on_failure():
            block.notify(body=scrub(body), subject=scrub(subject), _sync=True)
    else:
        block.notify(body=scrub(body), subject=scrub(subject), _sync=True)


def notify(run: RunbookRun[Any], notice: Notice) -> str:
    """Send ``notice`` to every block of its severity. Returns what happened, for the report; never raises."""
    try:
        return _notify(run, notice)
    except Exception as exc:  # noqa: BLE001 - best effort: the runbook has acted; say so, do not undo it
        text = scrub(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
        run.logger.warning("Notification of %r failed: %s", notice.title, text)
        return f"notification FAILED: {text}"


def _notify(run: RunbookRun[Any], notice: Notice) -> str:
    from prefect.runtime import flow_run

    settings = run.settings.notifications
    if notice.flow_run_url is None:
        notice = notice.model_copy(update={"flow_run_url": flow_run.ui_url or
                                           (f"flow run {run.flow_run_id}" if run.flow_run_id else None)})
    if notice.started_at is None:
        notice = notice.model_copy(update={"started_at": run.started_at})
    subject, body = render(notice, settings)
    names = settings.blocks_for(notice.severity)
    run.steps.event("notification", severity=notice.severity, kind=notice.kind, subject=subject,
                    blocks=", ".join(names))
    if not names:
        return f"no notification block configured for {notice.severity} ([notifications] block)"
    outcomes = []
    for name in names:
        try:
            _send(name, subject, body)
        except Exception as exc:  # noqa: BLE001 - one dead block does not keep the message from the others
            text = scrub(f"{type(exc).__name__}: {exc or 'not delivered'}".splitlines()[0])[:300]
            run.logger.warning("Notification via %r failed: %s", name, text)
            outcomes.append(f"notification via {name!r} FAILED: {text}")
        else:
            outcomes.append(f"notified via {name!r}")
    return "; ".join(outcomes) + f" ({notice.severity} {notice.kind})"
