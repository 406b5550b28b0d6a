"""The trading guard: halt (kill switch) or pause trading for a risky change, and resume afterwards only if the
halt in force is still the one this run made. A responder who pressed the kill switch meanwhile keeps trading
halted; so does a platform that does not say who halted it.

A hold may outlive the run that made it (data-freshness pauses in one scheduled run and lifts the pause in a later
one): a guard made with ``TradingGuard.keeping_holds`` (or given ``holds=``) writes a ``TradingHold`` in the
repository when it halts, with the platform's ``changed_at`` read right after the call, and ``resume_recorded``
lets a later run lift that hold only while the platform still matches the record (same mode, ``paused_by`` and
``changed_at``). Anyone's action since moves ``changed_at``, so their hold is never lifted; the record is then
forgotten. A kill switch recorded this way is left for a human."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from runbooks.adapters.repository import open_repository
from runbooks.adapters.trading_holds import TradingHolds
from runbooks.core.errors import RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.freshness import TradingHold
from runbooks.frame.run import RunbookRun
from runbooks.settings import ApiSettings
from runbooks.tasks.trading_api import halt_trading, pause_trading, read_trading_status, resume_trading_if_ours

REPOSITORY_UNAVAILABLE = "the backup repository is not available"


class Halt(BaseModel):
    """What ``TradingGuard.halt`` did, for the caller's report."""

    how: Literal["kill-switch", "pause"]
    status: dict[str, Any] = Field(description="the platform's status read back after the call")
    ours: bool = Field(description="the platform names this run as the holder (else someone's hold was in force)")
    record: TradingHold | None = Field(default=None, description="the hold record written, for a hold that "
                                      "outlives the run")
    unrecorded: str | None = Field(default=None, description="why a hold meant to outlive the run could not be "
                                   "recorded: no later run lifts it, a human does")


class TradingGuard:
    def __init__(self, run: RunbookRun[Any], api: ApiSettings | None, *, holds: TradingHolds | None = None) -> None:
        """``holds``: where a hold that outlives the run is recorded (see ``keeping_holds``); without it every
        halt is this run's alone, resumed by ``resume_if_ours`` or left for a human."""
        self.run = run
        self.api = api
        self.actions: list[str] = []  # what happened to trading, in order, for the report
        self._ours: dict[str, Any] | None = None  # the status right after our halt
        self.holds = holds
        self.keeps_holds = holds is not None  # halts are recorded to outlive the run
        self.holds_problem: str | None = None  # why the hold records cannot be read or written, when they cannot
        self._recorded: TradingHold | None = None  # the hold record read by ``recorded_hold`` or written by ``halt``
        self._read = False

    @classmethod
    def keeping_holds(cls, run: RunbookRun[Any], api: ApiSettings | None) -> TradingGuard:
        """A guard whose halts outlive the run: recorded in the backup repository under the run's runbook and the
        trading API's URL, for a later run of the same runbook to lift. An unreachable repository never stands
        between the runbook and a halt: the halt is made all the same and left for a human to lift."""
        guard = cls(run, api)
        guard.keeps_holds = True
        try:
            if api is None:
                raise RunbookError("no trading API is configured")
            guard.holds = TradingHolds(open_repository(run.settings.repository), api.base_url)
        except (RunbookError, OSError) as exc:
            run.logger.warning("Backup repository unavailable for hold records: %s", scrub(str(exc)))
            guard.holds_problem = REPOSITORY_UNAVAILABLE
        return guard

    def check(self) -> dict[str, Any]:
        """Prerequisite: the API answers (before any expensive work). Returns the current status."""
        return read_trading_status(api=self.api)

    def recorded_hold(self) -> TradingHold | None:
        """The hold an earlier run of this runbook recorded, or None: none, or it could not be read (then
        ``holds_problem`` says why, and no resume is decided from it). Reading it never stands between stale data
        and a halt."""
        self._read = True
        if self.holds is None:
            return None
        try:
            self._recorded = self.holds.get(self.run.runbook)
        except (RunbookError, OSError) as exc:
            self.holds_problem = scrub(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
            self.run.logger.warning("Hold record unreadable (%s): no resume is decided from it", self.holds_problem)
            self._recorded = None
        return self._recorded

    def halt(self, *, reason: str, how: Literal["kill-switch", "pause"] = "kill-switch",
             escalate: bool = False) -> Halt | None:
        """Halt or pause trading, unless someone's halt is in force already: that stands as it is (pressing again
        would overwrite who halted it and why) and None is returned. ``escalate``: a pause in force, anyone's, is
        escalated to the kill switch (data-freshness beyond ``kill_after``); a kill switch in force still stands.
        A guard that keeps holds records this one when the platform names this run as its holder."""
        before = read_trading_status(api=self.api)
        mode = before.get("trading_mode")
        if mode != "running" and not (escalate and how == "kill-switch" and mode == "paused"):
            self.actions.append(f"already {mode} by {before.get('paused_by')!r} ({before.get('reason')}); "
                                "left as it was, and it will not be resumed by this run")
            self.run.steps.event("trading.left-as-is", mode=mode, paused_by=before.get("paused_by"))
            return None
        # Recorded first: a halt that took effect but whose answer was lost is still reported.
        self.actions.append(f"HALTED via {how} (was {mode!r}) as {self.run.actor!r}: {reason}")
        call = halt_trading if how == "kill-switch" else pause_trading
        self._ours = call(api=self.api, actor=self.run.actor, reason=reason)
        self.run.steps.event("trading.halted", how=how, actor=self.run.actor, reason=reason)
        done = Halt(how=how, status=self._ours, ours=self._ours.get("paused_by") == self.run.actor)
        if self.keeps_holds and done.ours:
            self._record(done, reason=reason)
        return done

    def _record(self, done: Halt, *, reason: str) -> None:
        """Write the hold record of a halt this run made. A record that cannot be written leaves the halt to a
        human: no later run can prove it is still the runbook's own."""
        mode: Literal["paused", "halted"] = "halted" if done.how == "kill-switch" else "paused"
        record = TradingHold(actor=self.run.actor, mode=mode, changed_at=done.status.get("changed_at"), reason=reason,
                            flow_run_id=self.run.flow_run_id, at=datetime.now(UTC))
        try:
            if self.holds is None:
                raise RunbookError(self.holds_problem or REPOSITORY_UNAVAILABLE)
            if record.changed_at is None:
                self.run.logger.warning("The platform gave no changed_at: this %s cannot be proven ours later, so a "
                                        "human resumes it", "pause" if mode == "paused" else "kill switch")
            self.holds.put(self.run.runbook, record)
            done.record = self._recorded = record
        except (RunbookError, OSError) as exc:
            done.unrecorded = scrub(str(exc))
            self.run.logger.error("Trading %s, but its record could not be written (%s): a human resumes it", mode,
                                  done.unrecorded)

    def resume_if_ours(self) -> bool:
        """Resume only if trading is still held by the halt this run made. Returns whether it resumed."""
        if self._ours is None:
            return False
        now = self._resume(held_by=self.run.actor, changed_at=self._ours.get("changed_at"))
        if self._recorded is not None and self._recorded.actor == self.run.actor:
            self.forget_hold()  # resumed, or someone's hold is in force now: either way no longer ours to lift
        if now["resumed"]:
            self.actions.append("resumed with CONFIRM_RESUME (the halt in force was still this run's)")
            self._ours = None
        return bool(now["resumed"])

    def resume_recorded(self) -> dict[str, Any] | None:
        """Resume the hold an earlier run of this runbook recorded, only while the platform still matches the
        record (same mode, ``paused_by`` and ``changed_at``), and forget the record: it was resumed, or the hold in
        force is no longer the one recorded (someone acted since). A recorded kill switch, or a hold recorded
        without ``changed_at``, is left for a human, record kept; so is anything when no record was found.

        Returns:
            None when nothing was tried; else the status read before deciding, with ``resumed`` set.
        """
        record = self._recorded if self._read else self.recorded_hold()
        if record is None or record.mode != "paused" or record.changed_at is None:
            return None
        now = self._resume(held_by=record.actor, changed_at=record.changed_at, mode=record.mode)
        if now["resumed"]:
            self.actions.append(f"resumed with CONFIRM_RESUME (the {record.mode} hold in force was still the one "
                                f"{record.actor!r} recorded at {record.changed_at})")
        self.forget_hold()
        return now

    def _resume(self, *, held_by: str, changed_at: str | None, mode: str | None = None) -> dict[str, Any]:
        now = resume_trading_if_ours(api=self.api, actor=self.run.actor, held_by=held_by, changed_at=changed_at,
                                     mode=mode)
        if not now["resumed"]:
            who = now.get("paused_by") or "someone (the platform does not say who)"
            whose = "this run's halt" if held_by == self.run.actor else f"the hold {held_by!r} recorded"
            self.actions.append(f"NOT resumed: trading is {now.get('trading_mode')!r}, held by {who!r} "
                                f"({now.get('reason')}) since {whose}")
            self.run.steps.event("trading.left-halted", mode=now.get("trading_mode"), paused_by=now.get("paused_by"))
            self.run.logger.warning("Trading not resumed: the halt in force is no longer %s (%r)", whose, who)
            return now
        self.run.steps.event("trading.resumed", actor=self.run.actor, paused_by=held_by)
        return now

    def forget_hold(self) -> None:
        """Forget this runbook's hold record (resumed, or obsolete). A failure only warns: the next run decides
        again from the platform's state."""
        self._recorded = None
        if self.holds is None:
            return
        try:
            self.holds.forget(self.run.runbook)
        except (RunbookError, OSError) as exc:
            self.run.logger.warning("Could not forget the hold record (%s); the next run decides again",
                                    scrub(str(exc)))

    @property
    def left_halted(self) -> bool:
        """True when this run halted trading and did not resume it."""
        return self._ours is not None
