"""Tasks on the trading platform's modes, risk overrides and exchange link: paper mode, the return to live trading,
the daily drawdown limit's manual override, the exchange's status and reconnect (the trading system runbook's
circuit-breaker and exchange procedures). Each reads back what it changed; the changes are ``mutates`` tasks, run
only inside a destructive step."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, Field

from runbooks.core.errors import Refused, TradingApiUnavailable
from runbooks.decisions.weekly import parse_breakers
from runbooks.settings import ApiSettings
from runbooks.tasks.policies import step_task
from runbooks.tasks.trading_api import TRADING_API_RETRY, trading_api_attempt


class ExchangeStatus(BaseModel):
    """The exchange link as the trading API reports it."""

    connected: bool | None = Field(description="None: the answer did not say")
    status: str = "unknown"
    exchange: str | None = None
    last_heartbeat_at: datetime | None = None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ExchangeStatus:
        connected = body.get("connected")
        status = str(body.get("status") or ("connected" if connected else "unknown"))
        if not isinstance(connected, bool):
            connected = {"connected": True, "up": True, "disconnected": False, "down": False}.get(status.lower())
        heartbeat = body.get("last_heartbeat_at")
        try:
            at = datetime.fromisoformat(str(heartbeat)) if heartbeat else None
        except ValueError:
            at = None
        return cls(connected=connected, status=status, exchange=body.get("exchange"), last_heartbeat_at=at)


@step_task("read-exchange-status", **TRADING_API_RETRY)
def read_exchange_status(*, api: ApiSettings | None, path: str) -> ExchangeStatus:
    """Returns:
    The exchange link (the trading system runbook's ``/api/exchange/status``)."""
    with trading_api_attempt(api) as client:
        return ExchangeStatus.parse(client.read(path))


@step_task("reconnect-exchange", **TRADING_API_RETRY)
def reconnect_exchange(*, api: ApiSettings | None, path: str) -> dict[str, Any]:
    """Ask the platform to restart its exchange connection (idempotent: a connected link reconnects harmlessly).

    Returns:
        The platform's answer; whether it took is read from the status afterwards.
    """
    with trading_api_attempt(api) as client:
        return client.post(path)


@step_task("switch-to-paper", mutates=True, **TRADING_API_RETRY)
def switch_to_paper(*, api: ApiSettings | None, path: str, actor: str, reason: str, expected: dict[str, Any]
                    ) -> dict[str, Any]:
    """Paper mode (orders simulated, none reach the exchange), only while the platform is still exactly as the run
    read and judged it (``expected``: its ``trading_mode``, ``paused_by`` and ``changed_at``): each attempt, retries
    included, reads first, so a halt someone pressed meanwhile is never turned into paper. Then read back: paper,
    held by ``actor``.

    Returns:
        The status read before deciding, with ``switched`` (this call, or an earlier attempt whose answer was
        lost, put it in paper mode) and, when switched, ``after`` (the status read back).
    """
    keys = ("trading_mode", "paused_by", "changed_at")
    with trading_api_attempt(api, then="Paper mode is not confirmed: read the trading status and switch by hand "
                             "(the trading system runbook's 'Switch to Paper Mode').") as client:
        now = client.status()
        if now.get("trading_mode") == "paper" and now.get("paused_by") == actor:
            return {**now, "switched": True, "after": now}  # an earlier attempt took; its answer was lost
        if any(now.get(k) != expected.get(k) for k in keys):
            return {**now, "switched": False}
        client.post(path, {"requested_by": actor, "reason": reason})
        after = client.status()
    if after.get("trading_mode") != "paper" or after.get("paused_by") != actor:
        raise TradingApiUnavailable(f"the trading API accepted paper mode but its status reads trading_mode="
                                    f"{after.get('trading_mode')!r} held by {after.get('paused_by')!r}.",
                                    hint="retried (each retry reads first); if it persists, switch by hand.")
    get_run_logger().warning("Trading switched to PAPER mode: %s", reason)
    return {**now, "switched": True, "after": after}


@step_task("resume-live-trading", mutates=True, **TRADING_API_RETRY)
def resume_live(*, api: ApiSettings | None, actor: str, held_by: str, changed_at: str | None,
                position_size_fraction: float | None) -> dict[str, Any]:
    """Resume live trading with the confirmation code, only while the platform is still in the paper mode
    ``held_by`` set at ``changed_at`` (each attempt reads again: someone who halted meanwhile keeps it halted).
    Once the resume is sent, a read-back that fails does not undo the answer: ``after`` is then None.

    Returns:
        The status read before deciding, with ``resumed`` and, after a resume, ``after`` (the status read back,
        or None when it could not be read).
    """
    with trading_api_attempt(api, then="Live trading may not have resumed: read the trading status; resume with "
                             "CONFIRM_RESUME by hand only if it is still in this run's paper mode.") as client:
        now = client.status()
        ours = (now.get("trading_mode") == "paper" and now.get("paused_by") == held_by
                and changed_at is not None and now.get("changed_at") == changed_at)
        if not ours:
            return {**now, "resumed": False}
        client.resume(actor=actor, position_size_fraction=position_size_fraction)
        try:
            after: dict[str, Any] | None = client.status()
        except TradingApiUnavailable as exc:
            get_run_logger().warning("Live trading resumed, but its status could not be read back: %s", exc)
            after = None
    if after is not None and after.get("trading_mode") != "running":
        raise Refused(f"the trading API accepted the resume but its status reads trading_mode="
                      f"{after.get('trading_mode')!r}.", hint="read the status and resume by hand.")
    get_run_logger().warning("LIVE trading resumed by %r (position size fraction %s)", actor, position_size_fraction)
    return {**now, "resumed": True, "after": after}


@step_task("reset-drawdown-limit", mutates=True, **TRADING_API_RETRY)
def reset_drawdown_limit(*, api: ApiSettings | None, path: str, breakers_path: str, breaker: str, actor: str,
                         reason: str) -> str:
    """The daily drawdown limit's manual override, then the breakers read back: ``breaker`` must be armed again.

    Returns:
        The breaker's state read back.
    """
    with trading_api_attempt(api) as client:
        client.post(path, {"reset_by": actor, "reason": reason})
        found = [b for b in parse_breakers(client.read(breakers_path)) if b.name == breaker]
    if not found:
        raise Refused(f"the trading API lists no circuit breaker named {breaker!r} after the reset.",
                      hint="check [trading_safety.resume] drawdown_breaker.")
    if found[0].tripped:
        raise TradingApiUnavailable(f"the drawdown limit reset was accepted but {breaker!r} still reads "
                                    f"{found[0].state!r}.", hint="retried; if it persists, reset it by hand.")
    get_run_logger().warning("Daily drawdown limit %r reset by %r: %s", breaker, actor, reason)
    return found[0].state
