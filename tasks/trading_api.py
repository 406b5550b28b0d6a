"""Tasks on the trading platform's operations API: read the trading state, halt (kill switch), pause, resume.
Runbooks use them through ``runbooks.frame.TradingGuard``, which decides whether a resume is still theirs.
Each task, retries included, gives up within ``[trading_api] retry_budget_seconds`` (30 s): a frozen API (it
accepts the connection and never answers) is reported then, not after every retry's full read timeout.
The weekly report reads the P&L and the risk engine's figures here, at the paths its settings name."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger
from prefect.context import TaskRunContext

from runbooks.adapters.trading import TradingApi
from runbooks.core.errors import TradingApiUnavailable, TransientError
from runbooks.decisions.weekly import (
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
from runbooks.settings import ApiSettings
from runbooks.tasks.policies import TRANSIENT_RETRY, retry_if_transient, step_task


def budget_left(api: ApiSettings) -> float:
    """Seconds left of ``retry_budget_seconds`` for this task run, counted from its first attempt (Prefect keeps a
    task run's ``start_time`` across retries, so the waits between attempts count too); outside a task run, the
    whole budget."""
    context = TaskRunContext.get()
    start = context.task_run.start_time if context is not None else None
    if start is None:
        return api.retry_budget_seconds
    return api.retry_budget_seconds - (datetime.now(UTC) - start).total_seconds()


def _next_attempt_fits(context: TaskRunContext, left: float) -> bool:
    """Whether the next retry starts before the budget ends, at the longest its jittered delay can be: a frozen API
    costs the full timeout per attempt, so the retries alone (4, 2-16 s apart, 10 s each) took 80 s a task, not
    the 30 s promised; an attempt that would start past the budget is not worth its wait."""
    delays = context.task.retry_delay_seconds
    if isinstance(delays, Sequence):
        delay = float(delays[min(context.task_run.run_count - 1, len(delays) - 1)]) if delays else 0.0
    else:
        delay = float(delays or 0)
    return delay * (1 + (context.task.retry_jitter_factor or 0)) < left


@contextmanager
def trading_api_attempt(api: ApiSettings | None, then: str | None = None) -> Iterator[TradingApi]:
    """One attempt of a trading API task: a client whose requests never wait past the task run's retry budget
    (``[trading_api] retry_budget_seconds``). On the last attempt (no retry follows: none left, the budget is
    spent, or no task run at all), a ``TradingApiUnavailable`` leaves with a hint for the operator (the API and
    its URL to check, then rerun) instead of "the task retries"; use with ``TRADING_API_RETRY``, which retries
    no such final error."""
    client = TradingApi(api, deadline=None if api is None else time.monotonic() + budget_left(api))
    assert api is not None  # TradingApi refused a missing [trading_api] with a ConfigurationError
    try:
        yield client
    except TradingApiUnavailable as exc:
        context = TaskRunContext.get()
        attempts = context.task_run.run_count if context is not None else 1
        left = budget_left(api)
        if context is not None and attempts <= context.task.retries and _next_attempt_fits(context, left):
            raise  # a retry follows: its hint is still true
        spent = (f" in {api.retry_budget_seconds - left:.0f} s (trading_api.retry_budget_seconds is "
                 f"{api.retry_budget_seconds:g})" if context is not None and attempts <= context.task.retries
                 else "")
        raise exc.exhausted(attempts=attempts, hint=(
            f"{attempts} attempt{'s' if attempts != 1 else ''} failed{spent}, no retry follows. "
            + (then or f"Check the trading API at {api.base_url} is up and answers (the URL is trading_api.base_url), "
               "then run the runbook again."))) from None
    finally:
        client.close()


def _retry_unless_exhausted(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_if_transient``, except for an error that left its last attempt (``exhausted``): when the retry
    budget runs out before the retries do, no retry follows."""
    if not retry_if_transient(task, task_run, state):
        return False
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as err:  # result unavailable: judged as retry_if_transient judges it
        exc = err
    return not (isinstance(exc, TransientError) and exc.attempts is not None)


TRADING_API_RETRY: dict[str, Any] = {**TRANSIENT_RETRY, "retry_condition_fn": _retry_unless_exhausted}


@step_task("read-trading-status", **TRADING_API_RETRY)
def read_trading_status(*, api: ApiSettings | None) -> dict[str, Any]:
    """Returns:
    The operations status (``trading_mode``: running / paused / halted)."""
    with trading_api_attempt(api) as client:
        return client.status()


def _read_back(client: TradingApi, *, took: tuple[str, ...], what: str) -> dict[str, Any]:
    """The status read after a halt: an answer to the POST is not proof (a proxy, a cache or a platform bug can
    say yes to a switch that did not move), so a halt counts only once the status says trading is held."""
    status = client.status()
    mode = status.get("trading_mode")
    if mode not in took:
        raise TradingApiUnavailable(
            f"the trading API accepted the {what} but its status still reads trading_mode={mode!r}.",
            hint=f"retried; if it persists, {what} by hand and check the platform (the USD/COP playbook's "
                 "section 3.3).")
    return status


_UNCONFIRMED = ("The {what} is not confirmed: read the trading status (it may have taken effect), check the trading "
                "API (trading_api.base_url) and the platform (the USD/COP playbook's section 3.3), then run the "
                "runbook again.")


@step_task("halt-trading", **TRADING_API_RETRY)
def halt_trading(*, api: ApiSettings | None, reason: str, actor: str) -> dict[str, Any]:
    """Activate the kill switch (idempotent: halting a halted platform is a no-op for it), then read the status
    back; a switch the status does not show is retried, then fails the task.

    Returns:
        The operations status read after the call.
    """
    with trading_api_attempt(api, then=_UNCONFIRMED.format(what="kill switch")) as client:
        client.kill_switch(reason=reason, actor=actor)
        status = _read_back(client, took=("halted",), what="kill switch")
    get_run_logger().warning("Trading HALTED via kill switch: %s", reason)
    return status


@step_task("pause-trading", **TRADING_API_RETRY)
def pause_trading(*, api: ApiSettings | None, reason: str, actor: str) -> dict[str, Any]:
    """Pause trading (soft: no new orders; idempotent), then read the status back as ``halt_trading`` does. A
    platform found halted (someone pressed the kill switch meanwhile) is held all the same.

    Returns:
        The operations status read after the call.
    """
    with trading_api_attempt(api, then=_UNCONFIRMED.format(what="pause")) as client:
        client.pause(reason=reason, actor=actor)
        status = _read_back(client, took=("paused", "halted"), what="pause")
    get_run_logger().warning("Trading PAUSED: %s", reason)
    return status


@step_task("resume-trading-if-ours", mutates=True, **TRADING_API_RETRY)
def resume_trading_if_ours(*, api: ApiSettings | None, actor: str, changed_at: str | None,
                           held_by: str | None = None, mode: str | None = None) -> dict[str, Any]:
    """Resume trading (with the confirmation code) only while the halt in force is ``held_by``'s own (default:
    ``actor``, this run), unchanged since ``changed_at`` (and still in ``mode``, ``paused`` or ``halted``, when
    given). Each attempt, retries included, reads the status again: a responder who pressed the kill switch
    between two attempts keeps trading halted.

    Returns:
        The status read before deciding, with ``resumed`` set to whether this call resumed trading.
    """
    with trading_api_attempt(api, then="Trading may still be held by this run: check the trading API is up, "
                             "read its status, and resume with CONFIRM_RESUME by hand if the halt in force is this "
                             "run's.") as client:
        now = client.status()
        ours = (now.get("trading_mode") in ("halted", "paused") and (mode is None or now.get("trading_mode") == mode)
                and now.get("paused_by") == (held_by or actor)
                and changed_at is not None and now.get("changed_at") == changed_at)
        if ours:
            client.resume(actor=actor)
            get_run_logger().info("Trading resumed by %r", actor)
    return {**now, "resumed": ours}


def _read(api: ApiSettings | None, path: str, window: str | None = None) -> dict[str, Any]:
    with trading_api_attempt(api) as client:
        return client.read(path, window=window)


@step_task("read-pnl", **TRADING_API_RETRY)
def read_pnl(*, api: ApiSettings | None, path: str, window: str) -> PnlFigures:
    """Seed 003's ``/api/trading/pnl`` over ``window`` (e.g. ``7d``).

    Returns:
        Total, realized and unrealized P&L, trades, win rate, Sharpe, drawdown and the daily series.
    """
    return parse_pnl(_read(api, path, window), window=window)


@step_task("read-risk-metrics", **TRADING_API_RETRY)
def read_risk_metrics(*, api: ApiSettings | None, path: str) -> RiskMetrics:
    """Returns:
    Drawdown, value at risk and exposure as the risk engine reports them now."""
    return parse_risk_metrics(_read(api, path))


@step_task("read-circuit-breakers", **TRADING_API_RETRY)
def read_circuit_breakers(*, api: ApiSettings | None, path: str) -> list[CircuitBreaker]:
    """Returns:
    Each circuit breaker with its state (seed 003: ``/api/risk/circuit-breakers``)."""
    return parse_breakers(_read(api, path))


@step_task("read-risk-health", **TRADING_API_RETRY)
def read_risk_health(*, api: ApiSettings | None, path: str) -> str:
    """Returns:
    The risk engine's status word (seed 003: ``/api/risk/health``)."""
    return parse_risk_health(_read(api, path))


@step_task("read-risk-events", **TRADING_API_RETRY)
def read_risk_events(*, api: ApiSettings | None, path: str, window: str) -> RiskEvents:
    """Returns:
    How many risk events the window held, by severity (seed 003: ``/api/risk/events``)."""
    return parse_risk_events(_read(api, path, window))
