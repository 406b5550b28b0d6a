"""Notify on-call through a Prefect notification block (``SlackWebhook``, ``PagerDutyWebHook``,
``CustomWebhookNotificationBlock``, …) named in the settings, rather than hand-written webhook code.

A notification is best effort: a runbook that paused trading has done its job even if Slack is down, so a failed
notification is logged and reported, never raised. Every secret field of the block (webhook URLs, keys) is
registered for scrubbing before it is used, so an error that quotes it is scrubbed too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from runbooks.redact import register_secret, scrub

if TYPE_CHECKING:
    from runbooks.frame.run import RunbookRun

Severity = Literal["P1", "P2", "P3", "info"]


def _register_block_secrets(block: object) -> None:
    """Secret fields (``SecretStr``, ``SecretDict``) and any URL: a webhook URL often is the credential."""
    for name in getattr(type(block), "model_fields", {}):
        value: Any = getattr(block, name, None)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif not (isinstance(value, str) and "url" in name):
            continue
        if isinstance(value, dict):
            register_secret(*[str(v) for v in value.values() if v])
        elif isinstance(value, str):
            register_secret(value)


def notify(run: RunbookRun, *, severity: Severity, subject: str, body: str) -> str:
    """Send ``[severity] subject`` through the configured block. Returns what happened, for the report."""
    name = run.settings.notifications.block
    run.steps.event("notification", severity=severity, subject=subject, block=name)
    if not name:
        return "no notification block configured ([notifications] block)"
    from prefect.blocks.core import Block

    try:
        block: Any = Block.load(name, _sync=True)  # type: ignore[call-arg]
        _register_block_secrets(block)
        block.notify(body=scrub(body), subject=scrub(f"[{severity}] {subject}"), _sync=True)
    except Exception as exc:  # noqa: BLE001 - best effort: never undo or hide the action it reports
        text = scrub(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
        run.logger.warning("Notification via %r failed: %s", name, text)
        return f"notification via {name!r} FAILED: {text}"
    return f"notified via {name!r}"
