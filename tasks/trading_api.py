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


@task(name="resume-trading", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def resume_trading(*, api: ApiSettings | None, actor: str) -> dict[str, Any]:
    """Resume trading with the confirmation code the API requires.

    Returns:
        The operations status after the call.
    """
    client = TradingApi(api)
    try:
        status = client.resume(actor=actor)
    finally:
        client.close()
    get_run_logger().info("Trading resumed by %r", actor)
    return status
