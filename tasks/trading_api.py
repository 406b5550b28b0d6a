"""Tasks on the trading platform's operations API: read the trading state, halt (kill switch), pause, resume.
Runbooks use them through ``runbooks.frame.TradingGuard``, which decides whether a resume is still theirs."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from runbooks.settings import ApiSettings
from runbooks.trading import TradingApi
from tasks.policies import TRANSIENT_RETRY


@task(name="read-trading-status", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def read_trading_status(*, api: ApiSettings | None) -> dict[str, Any]:
    """Returns:
    The operations status (``trading_mode``: running / paused / halted)."""
    client = TradingApi(api)
    try:
        return client.status()
    finally:
        client.close()


@task(name="halt-trading", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def halt_trading(*, api: ApiSettings | None, reason: str, actor: str) -> dict[str, Any]:
    """Activate the kill switch (idempotent: halting a halted platform is a no-op for it).

    Returns:
        The operations status after the call.
    """
    client = TradingApi(api)
    try:
        status = client.kill_switch(reason=reason, actor=actor)
    finally:
        client.close()
    get_run_logger().warning("Trading HALTED via kill switch: %s", reason)
    return status


@task(name="pause-trading", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def pause_trading(*, api: ApiSettings | None, reason: str, actor: str) -> dict[str, Any]:
    """Pause trading (soft: no new orders; idempotent).

    Returns:
        The operations status after the call.
    """
    client = TradingApi(api)
    try:
        status = client.pause(reason=reason, actor=actor)
    finally:
        client.close()
    get_run_logger().warning("Trading PAUSED: %s", reason)
    return status


@task(name="resume-trading-if-ours", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def resume_trading_if_ours(*, api: ApiSettings | None, actor: str, changed_at: str | None,
                           held_by: str | None = None) -> dict[str, Any]:
    """Resume trading (with the confirmation code) only while the halt in force is ``held_by``'s own (default:
    ``actor``, this run), unchanged since ``changed_at``. Each attempt, retries included, reads the status again:
    a responder who pressed the kill switch between two attempts keeps trading halted.

    Returns:
        The status read before deciding, with ``resumed`` set to whether this call resumed trading.
    """
    client = TradingApi(api)
    try:
        now = client.status()
        ours = (now.get("trading_mode") in ("halted", "paused") and now.get("paused_by") == (held_by or actor)
                and changed_at is not None and now.get("changed_at") == changed_at)
        if ours:
            client.resume(actor=actor)
            get_run_logger().info("Trading resumed by %r", actor)
    finally:
        client.close()
    return {**now, "resumed": ours}
