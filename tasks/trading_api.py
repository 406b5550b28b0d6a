"""Tasks on the trading platform's operations API: read the trading state, halt (kill switch), pause, resume.
Runbooks use them through ``runbooks.frame.TradingGuard``, which decides whether a resume is still theirs.
The weekly report reads the P&L and the risk engine's figures here, at the paths its settings name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from runbooks.errors import TradingApiUnavailable
from runbooks.settings import ApiSettings
from runbooks.trading import TradingApi
from runbooks.weekly import (
    CircuitBreaker,
    PnlFigures,
    RiskEvents,
    RiskMetrics,
    parse_breakers,
    parse_pnl,
    parse_risk_events,
    parse_risk_health,
    parse_risk_metrics,
)
from tasks.policies import TRANSIENT_RETRY


@contextmanager
def _last_attempt_says_what_next(api: ApiSettings | None, then: str | None = None) -> Iterator[None]:
    """On the task's last attempt (no retry follows, or no task run at all), a ``TradingApiUnavailable`` leaves
    with a hint for the operator (the API and its URL to check, then rerun) instead of "the task retries"."""
    try:
        yield
    except TradingApiUnavailable as exc:
        context = TaskRunContext.get()
        attempts = context.task_run.run_count if context is not None else 1
        if context is not None and attempts <= context.task.retries:
            raise  # a retry follows: its hint is still true
        where = f" at {api.base_url}" if api is not None else ""
        raise exc.exhausted(attempts=attempts, hint=(
            f"{attempts} attempt{'s' if attempts != 1 else ''} failed, no retry follows. "
            + (then or f"Check the trading API{where} is up and answers (the URL is trading_api.base_url), "
               "then run the runbook again."))) from None


@task(name="read-trading-status", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def read_trading_status(*, api: ApiSettings | None) -> dict[str, Any]:
    """Returns:
    The operations status (``trading_mode``: running / paused / halted)."""
    with _last_attempt_says_what_next(api):
        client = TradingApi(api)
        try:
            return client.status()
        finally:
            client.close()


def _read_back(client: TradingApi, *, took: tuple[str, ...], what: str) -> dict[str, Any]:
    """The status read after a halt: an answer to the POST is not proof (a proxy, a cache or a platform bug can
    say yes to a switch that did not move), so a halt counts only once the status says trading is held."""
    status = client.status()
    mode = status.get("trading_mode")
    if mode not in took:
        raise TradingApiUnavailable(
            f"the trading API accepted the {what} but its status still reads trading_mode={mode!r}.",
            hint=f"retried; if it persists, {what} by hand and check the platform (seed 004 section 3.3).")
    return status


_UNCONFIRMED = ("The {what} is not confirmed: read the trading status (it may have taken effect), check the trading "
                "API (trading_api.base_url) and the platform (seed 004 section 3.3), then run the runbook again.")


@task(name="halt-trading", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def halt_trading(*, api: ApiSettings | None, reason: str, actor: str) -> dict[str, Any]:
    """Activate the kill switch (idempotent: halting a halted platform is a no-op for it), then read the status
    back; a switch the status does not show is retried, then fails the task.

    Returns:
        The operations status read after the call.
    """
    with _last_attempt_says_what_next(api, then=_UNCONFIRMED.format(what="kill switch")):
        client = TradingApi(api)
        try:
            client.kill_switch(reason=reason, actor=actor)
            status = _read_back(client, took=("halted",), what="kill switch")
        finally:
            client.close()
    get_run_logger().warning("Trading HALTED via kill switch: %s", reason)
    return status


@task(name="pause-trading", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def pause_trading(*, api: ApiSettings | None, reason: str, actor: str) -> dict[str, Any]:
    """Pause trading (soft: no new orders; idempotent), then read the status back as ``halt_trading`` does. A
    platform found halted (someone pressed the kill switch meanwhile) is held all the same.

    Returns:
        The operations status read after the call.
    """
    with _last_attempt_says_what_next(api, then=_UNCONFIRMED.format(what="pause")):
        client = TradingApi(api)
        try:
            client.pause(reason=reason, actor=actor)
            status = _read_back(client, took=("paused", "halted"), what="pause")
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
    with _last_attempt_says_what_next(api, then="Trading may still be held by this run: check the trading API is "
                                      "up, read its status, and resume with CONFIRM_RESUME by hand if the halt in "
                                      "force is this run's."):
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


def _read(api: ApiSettings | None, path: str, window: str | None = None) -> dict[str, Any]:
    with _last_attempt_says_what_next(api):
        client = TradingApi(api)
        try:
            return client.read(path, window=window)
        finally:
            client.close()


@task(name="read-pnl", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def read_pnl(*, api: ApiSettings | None, path: str, window: str) -> PnlFigures:
    """Seed 003's ``/api/trading/pnl`` over ``window`` (e.g. ``7d``).

    Returns:
        Total, realized and unrealized P&L, trades, win rate, Sharpe, drawdown and the daily series.
    """
    return parse_pnl(_read(api, path, window), window=window)


@task(name="read-risk-metrics", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def read_risk_metrics(*, api: ApiSettings | None, path: str) -> RiskMetrics:
    """Returns:
    Drawdown, value at risk and exposure as the risk engine reports them now."""
    return parse_risk_metrics(_read(api, path))


@task(name="read-circuit-breakers", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def read_circuit_breakers(*, api: ApiSettings | None, path: str) -> list[CircuitBreaker]:
    """Returns:
    Each circuit breaker with its state (seed 003: ``/api/risk/circuit-breakers``)."""
    return parse_breakers(_read(api, path))


@task(name="read-risk-health", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def read_risk_health(*, api: ApiSettings | None, path: str) -> str:
    """Returns:
    The risk engine's status word (seed 003: ``/api/risk/health``)."""
    return parse_risk_health(_read(api, path))


@task(name="read-risk-events", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def read_risk_events(*, api: ApiSettings | None, path: str, window: str) -> RiskEvents:
    """Returns:
    How many risk events the window held, by severity (seed 003: ``/api/risk/events``)."""
    return parse_risk_events(_read(api, path, window))
