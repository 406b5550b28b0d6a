"""The trading guard: halt (kill switch) or pause trading for a risky change, and resume afterwards only if the
halt in force is still the one this run made. A responder who pressed the kill switch meanwhile keeps trading
halted; so does a platform that does not say who halted it."""

from __future__ import annotations

from typing import Any, Literal

from runbooks.frame.run import RunbookRun
from runbooks.settings import ApiSettings
from runbooks.tasks.trading_api import halt_trading, pause_trading, read_trading_status, resume_trading_if_ours


class TradingGuard:
    def __init__(self, run: RunbookRun, api: ApiSettings | None) -> None:
        self.run = run
        self.api = api
        self.actions: list[str] = []  # what happened to trading, in order, for the report
        self._ours: dict[str, Any] | None = None  # the status right after our halt

    def check(self) -> dict[str, Any]:
        """Prerequisite: the API answers (before any expensive work). Returns the current status."""
        return read_trading_status(api=self.api)

    def halt(self, *, reason: str, how: Literal["kill-switch", "pause"] = "kill-switch") -> None:
        before = read_trading_status(api=self.api)
        mode = before.get("trading_mode")
        if mode != "running":
            # Someone else's halt stands as it is (pressing again would overwrite who halted it and why).
            self.actions.append(f"already {mode} by {before.get('paused_by')!r} ({before.get('reason')}); "
                                "left as it was, and it will not be resumed by this run")
            self.run.steps.event("trading.left-as-is", mode=mode, paused_by=before.get("paused_by"))
            return
        # Recorded first: a halt that took effect but whose answer was lost is still reported.
        self.actions.append(f"HALTED via {how} (was {mode!r}) as {self.run.actor!r}: {reason}")
        call = halt_trading if how == "kill-switch" else pause_trading
        self._ours = call(api=self.api, actor=self.run.actor, reason=reason)
        self.run.steps.event("trading.halted", how=how, actor=self.run.actor, reason=reason)

    def resume_if_ours(self) -> bool:
        """Resume only if trading is still held by the halt this run made. Returns whether it resumed."""
        if self._ours is None:
            return False
        now = resume_trading_if_ours(api=self.api, actor=self.run.actor, changed_at=self._ours.get("changed_at"))
        if not now["resumed"]:
            who = now.get("paused_by") or "someone (the platform does not say who)"
            self.actions.append(f"NOT resumed: trading is {now.get('trading_mode')!r}, held by {who!r} "
                                f"({now.get('reason')}) since this run's halt")
            self.run.steps.event("trading.left-halted", mode=now.get("trading_mode"), paused_by=now.get("paused_by"))
            self.run.logger.warning("Trading not resumed: the halt in force is no longer this run's (%r)", who)
            return False
        self.actions.append("resumed with CONFIRM_RESUME (the halt in force was still this run's)")
        self.run.steps.event("trading.resumed", actor=self.run.actor)
        self._ours = None
        return True

    @property
    def left_halted(self) -> bool:
        """True when this run halted trading and did not resume it."""
        return self._ours is not None
