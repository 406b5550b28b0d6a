"""Point-in-time recovery, set up: the protected cluster archives its WAL to a pgBackRest repository (seed 002: the
position database's RPO is one minute; a nightly dump loses up to a day).

Trigger: ``runbooks run pitr-setup`` or the ``pitr-setup`` on-demand deployment, once per cluster and again after
any change to ``[pitr]`` (it is idempotent). Plan first: without parameters it only prints the plan (the settings
it would change, the config, whether PostgreSQL must restart) and its hash; ``confirm=<hash>`` applies exactly that
plan (``dry_run=false`` alone waits for an operator's approval in the UI). Blast radius: pgBackRest's config and
stanza, the protected cluster's archive settings (ALTER SYSTEM: archive_mode, archive_command, archive_timeout,
wal_level) and, only with ``restart=true``, a fast restart of PostgreSQL that disconnects every session.
Rollback: automatic. The stanza is created before any setting changes, and the settings this run is about to
change are recorded first; if anything fails after ALTER SYSTEM, they are put back from that record (reloaded, and
with ``restart=true`` restarted again when archive_mode was already live). Whatever it cannot put back itself, its
report spells out as exact commands. The repository is left as it is.

One setup of a server at a time: a run that applies (never a dry run) holds the advisory lock ``runbooks-pitr-setup``
on the protected server from before it inspects the cluster and makes its plan, through the approval wait (a paused
run holds it, as a paused restore does), the config, the stanza, ALTER SYSTEM, the restart, the check and a
failure's put-back. Another applying run is refused in one line (after ``lock_wait_seconds``) before it changes
anything. Every step that changes something is destructive: it first proves the lock is still held, and a run that
lost it stops.

The lock is a session of the very server the run restarts: ``pg_ctl restart -m fast`` ends every session, the
lock's own too, so the lock is gone from the moment the restart begins. The restart step proves the lock before it
restarts (nothing after that instant inside the step changes anything), and the run takes the lock back at once
after it, before anything else that changes something (the check, a put-back). A run that finds it taken in that
gap stops: it neither checks nor puts anything back, since the run that holds the lock now owns the server's
archive settings, and its report says so. The put-back's own restart is the last change a failed run makes; only
reads follow it, so the lock is not taken back after it. A host lock (``flock``) would survive the restart, but it
is the worker's state directory's, not the server's: two workers or containers with their own state directories
would both get one. The advisory lock is the server's own, and taking it also cancels the approvals of runs killed
while paused.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import psycopg
from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from runbooks.adapters.postgres import AdvisoryLock, failure_line
from runbooks.core.errors import ConfigurationError, LockBusy, LockLost, Refused, RunbookError
from runbooks.core.redact import scrub_data
from runbooks.decisions.pitr import (
    PitrPaths,
    PreviousSetting,
    SetupPlan,
    StanzaInfo,
    archive_command,
    pitr_paths,
    plan_setup,
    protected_cluster,
    render_config,
    socket_problem,
    sql_literal,
    undo_statements,
)
from runbooks.decisions.report import report_tail, started, table
from runbooks.frame import Approval, RunbookResult, RunbookRun, request_approval, resource_lock
from runbooks.frame.approval import POLL_HELP, TIMEOUT_HELP
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import takes
from runbooks.frame.window import ChangeWindow, change_window, require_change_window
from runbooks.settings import DatabaseSettings, PitrSettings, Settings, resolve_secret
from runbooks.tasks.pgbackrest import (
    check_stanza,
    check_timeout,
    configure_archiving,
    inspect_cluster,
    pending_restart,
    pg_ctl_as_owner,
    put_back_settings,
    read_config_text,
    read_info,
    record_settings,
    restart_cluster,
    stanza_create,
    write_config,
)
from runbooks.tasks.reports import publish_report

RUNBOOK = "pitr-setup"
# The lock names the runbook, not a database: what a setup changes (archive settings, a restart) is the whole
# server's, and the advisory lock already lives on that server (the maintenance database of the protected cluster,
# as every resource_lock), so two setups of one server exclude each other whatever their stanza or worker. It is not
# restore's key: ``runbooks-restore:<database>`` is one database's (two restores of different databases on one
# server run side by side), so no single key of restore's means "this server". A restore, pitr-restore or backup
# caught by this run's restart loses its sessions and fails (a restore's own lock check then stops it before its
# next change); the change window keeps such restarts outside the trading sessions.
LOCK_KEY = f"runbooks-{RUNBOOK}"


class PitrSetupParameters(BaseModel):
    """The repository, stanza and archive settings are in ``[pitr]``; these say how far this run may go."""

    model_config = ConfigDict(extra="forbid")

    restart: bool = Field(default=False, description="Restart PostgreSQL (fast: sessions are disconnected) when "
                          "turning archive_mode on needs it, and again to put it back if the setup then fails. "
                          "Off: the run sets the settings and stops for you to restart.")
    dry_run: bool | None = Field(default=None, description="Print the plan and its hash; change nothing. Unset: "
                                 "a dry run unless confirm is given. False without confirm: wait for an "
                                 "operator's approval of the plan.")
    confirm: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$",
                                description="The plan hash a dry run printed: applies exactly that plan.")
    approval_timeout_seconds: int = Field(default=1800, ge=10, le=86400,
                                          description=TIMEOUT_HELP)
    approval_poll_seconds: int = Field(default=5, ge=1, le=300, description=POLL_HELP)
    lock_wait_seconds: int = Field(default=0, ge=0, le=86400, description="Wait this long for another pitr-setup "
                                   "of the same server to finish; then this run is refused, nothing changed.")
    in_session_reason: str | None = Field(default=None, max_length=500, description="restart=true while a gating "
                                          "market is in session: why the restart cannot wait for the close; "
                                          "without it the run is refused until the close.")

    @property
    def applies(self) -> bool:
        return self.dry_run is False or (self.dry_run is None and self.confirm is not None)

    def change_window(self, settings: Settings) -> ChangeWindow | None:
        """A setup that may restart PostgreSQL (every session disconnected) waits for every gating market's close
        unless given a reason; a setup without restart changes no running session, and a plan with restart only
        reports what the window would say."""
        if not self.restart:
            return None
        check = require_change_window if self.applies else change_window
        return check(settings.calendars(gating_only=True), work="pitr-setup with restart=true",
                     in_session_reason=self.in_session_reason)

    def check_against(self, settings: Settings) -> None:
        """OutsideChangeWindow before any run (the CLI calls it; the flow repeats it first)."""
        self.change_window(settings)


class PitrSetupResult(RunbookResult):
    stanza: str = ""
    config_path: str = ""
    data_directory: str = ""
    archive_command: str = ""
    plan: SetupPlan | None = None
    approval: Approval | None = None
    change_window: ChangeWindow | None = Field(default=None, description="the market calendar when a restart "
                                               "was allowed")
    would_change: dict[str, str] = Field(default_factory=dict, description="setting -> value to be set")
    previous: list[PreviousSetting] = Field(default_factory=list, description="this run's record of the settings "
                                            "it changes, read just before ALTER SYSTEM")
    changed: list[str] = Field(default_factory=list)
    config_written: bool = False
    restarted: bool = False
    waiting_for_restart: list[str] = Field(default_factory=list)
    checked: bool = False
    info: StanzaInfo | None = None
    put_back: list[str] = Field(default_factory=list, description="settings put back after a failure")
    put_back_restarted: bool = False
    still_changed: list[str] = Field(default_factory=list, description="settings the run could not put back")
    dry_run: bool = False


def _head(result: PitrSetupResult) -> str:
    if result.dry_run:
        return "DRY RUN (plan only)"
    if result.succeeded:
        return "OK"
    if result.put_back and not result.still_changed:
        return "FAILED — previous settings put back"
    if result.still_changed:
        return "FAILED — settings NOT put back (see next steps)"
    return "FAILED"


def render_report(result: PitrSetupResult) -> str:
    lines = [f"# PITR setup of stanza {result.stanza} — {_head(result)}", "",
             f"{started(result)}. Config "
             f"`{result.config_path}`, data directory `{result.data_directory}`.", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.change_window is not None:
        window = result.change_window
        refused = result.dry_run and window.in_session and not window.in_session_reason
        lines += [f"Change window: {window.summary()}"
                  + ("; applying this plan would be refused without in_session_reason." if refused else "."), ""]
    plan = result.plan
    if plan is not None:
        lines += ["## Plan", table(["step", "what"], [
            ["plan hash (confirm)", f"`{plan.plan_hash}`"],
            ["pgBackRest config", f"{'write' if plan.config_changes else 'unchanged'} `{plan.config_path}`"],
            ["stanza", f"stanza-create `{plan.stanza}` (idempotent), before any setting changes"],
            ["settings", ", ".join(c.name for c in plan.changes) or "none to change"],
            ["restart", "not needed" if not plan.restart_needed else
             ("PostgreSQL is restarted (fast: sessions are disconnected)" if plan.restart else
              "needed; this run stops before it (restart=false)")],
            ["then", "pgbackrest check: a WAL switch that must reach the repository"]])]
        if plan.changes:
            done = set(result.changed)
            lines += ["## Archive settings", table(["setting", "now", "to be", "restart", "done"], [
                [c.name, f"`{c.running}`", f"`{c.wanted}`", "yes" if c.needs_restart else "no",
                 "would set" if result.dry_run else ("put back" if c.name in result.put_back else
                                                     ("set" if c.name in done else "not set"))]
                for c in plan.changes])]
    if result.previous:
        lines += ["## Settings before this run (its record)", table(["setting", "running", "postgresql.auto.conf"], [
            [p.name, f"`{p.running}`", f"`{p.auto_conf}`" if p.auto_conf is not None else "(not set)"]
            for p in result.previous])]
    if result.approval is not None:
        a = result.approval
        lines += [f"Approval: {'approved' if a.approved else 'not approved'} by {a.approver} ({a.via}): {a.reason}.",
                  ""]
    if result.waiting_for_restart:
        lines += [f"Waiting for a restart of PostgreSQL: {', '.join(result.waiting_for_restart)}.", ""]
    if result.info is not None:
        lines += [f"Stanza status: **{result.info.status}**; archive check "
                  f"{'passed' if result.checked else 'not run'}.", ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _confirm_command(plan: SetupPlan) -> str:
    return f"runbooks run pitr-setup{' --param restart=true' if plan.restart else ''} --param confirm={plan.plan_hash}"


def _plan_steps(result: PitrSetupResult, plan: SetupPlan) -> None:
    result.next_steps.append(f"Nothing was changed. To apply exactly this plan: `{_confirm_command(plan)}` (or, "
                             f"on the deployment, dry_run=false and confirm={plan.plan_hash}).")
    if plan.stops_for_restart:
        result.next_steps.append("archive_mode/wal_level need a restart of PostgreSQL. With restart=false the run "
                                 "sets them and stops for you to restart in a quiet window; to have it restart "
                                 "PostgreSQL itself (fast: sessions are disconnected), dry-run again with "
                                 "restart=true and confirm that plan's hash.")


def _restart_command(pitr: PitrSettings, paths: PitrPaths, data_directory: Path) -> str:
    return pg_ctl_as_owner(pitr, data_directory, f"-l {paths.log / 'postgresql-restart.log'} -m fast -w restart")


def _hold_again(run: RunbookRun[PitrSetupResult], lock: AdvisoryLock) -> None:
    """After this run restarted the server its lock's session is gone: take the lock again (no wait), or raise
    LockLost when another run took it in between (that run acts on the server now)."""
    try:
        lock.ensure()
        return
    except LockLost:
        pass
    with run.step("take lock again", key=lock.key):
        lock.release()  # the ended session's connection
        try:
            lock.acquire(wait_seconds=0)
        except LockBusy as exc:
            raise LockLost(f"PostgreSQL's restart ended this run's lock session, and another run took the lock "
                           f"{lock.key!r} before this one could take it back ({exc.message}).",
                           hint="that run owns the server's archive settings now: read its report; this run "
                           "changes nothing more.") from None


def _put_back(run: RunbookRun[PitrSetupResult], result: PitrSetupResult, *, params: PitrSetupParameters,
              database: DatabaseSettings, pitr: PitrSettings, paths: PitrPaths, data_directory: Path,
              lock: AdvisoryLock, restarting: bool) -> None:
    """After a failure past ALTER SYSTEM: the recorded settings back in postgresql.auto.conf, reloaded, and
    restarted again when a restart had made ours live (restart=true); then what the server runs is compared with
    the record, and what still differs becomes exact commands in the report. Under the lock only: taken back first
    when this run's restart may have ended it; a run that lost it puts nothing back (another run acts now)."""
    names = [p.name for p in result.previous]
    before = {p.name: p for p in result.previous}
    restart = _restart_command(pitr, paths, data_directory)
    try:
        if restarting:
            _hold_again(run, lock)
        with run.step("put previous settings back", destructive=True) as figures:
            pending = [n for n in put_back_settings(database=database, previous=result.previous) if n in names]
            result.put_back = names
            if pending and params.restart:
                restart_cluster(pitr=pitr, paths=paths, data_directory=data_directory)
                result.put_back_restarted = True
            now = {p.name: p for p in record_settings(database=database, names=names)}
            result.still_changed = [n for n in names if n in now and now[n].running != before[n].running]
            figures.update(put_back=",".join(names), restarted=result.put_back_restarted,
                           still_changed=",".join(result.still_changed) or "-")
    except LockLost as exc:
        run.logger.error("Did not put the archive settings back: %s", failure_line(exc, where="the lock"))
        result.still_changed = names
        result.next_steps.append(
            "This run lost its lock, so it did not put the settings back: another pitr-setup may be changing this "
            "server now. Read that run's report first. Only if none runs, undo this run's changes as a superuser in "
            f"psql: `{' '.join(undo_statements(result.previous))}`, then restart PostgreSQL as the cluster's owner: "
            f"`{restart}`.")
        return
    except (RunbookError, psycopg.Error, OSError) as exc:
        why = failure_line(exc, where="putting the archive settings back")
        run.logger.error("Could not put the archive settings back: %s", why)
        result.still_changed = names
        result.next_steps.append(f"The settings could not be put back ({why}). As a superuser in psql: "
                                 f"`{' '.join(undo_statements(result.previous))}`, then restart PostgreSQL as the "
                                 f"cluster's owner: `{restart}` (or its service manager, e.g. systemctl restart "
                                 "postgresql).")
        return
    if not result.still_changed:
        result.next_steps.append(f"The previous settings are back ({', '.join(names)})"
                                 + (", and PostgreSQL was restarted to apply them" if result.put_back_restarted
                                    else "") + ": archiving is as it was before this run.")
        return
    still = result.still_changed
    if not result.put_back_restarted:
        result.next_steps.append(
            f"The previous settings are back in postgresql.auto.conf, but {', '.join(still)} "
            f"{'takes' if len(still) == 1 else 'take'} effect only when PostgreSQL restarts (until then archiving "
            "stays on and failing, and WAL piles up in pg_wal). Restart it in a quiet window as the cluster's owner: "
            f"`{restart}` (or its service manager, e.g. systemctl restart postgresql).")
        return
    statements = [f"ALTER SYSTEM SET {n} = {sql_literal(before[n].running)};" for n in still]
    result.next_steps.append(
        f"{', '.join(still)} {'runs' if len(still) == 1 else 'run'} differently than before this run although "
        "postgresql.auto.conf is as it was: it already held "
        + ", ".join(f"{n} = {before[n].auto_conf!r}" for n in still)
        + " waiting for a restart, which this run made. To run as before, as a superuser in psql: "
        f"`{' '.join([*statements, 'SELECT pg_reload_conf();'])}`, then restart as the cluster's owner: `{restart}`.")


def _run_name() -> str:
    p = run_parameters()  # model_construct: the model's own 'applies' rule, without re-validating
    return run_name(RUNBOOK, "restart" if p.get("restart") else None,
                    dry_run=not PitrSetupParameters.model_construct(**p).applies)


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(PitrSetupParameters)
def pitr_setup_flow(params: PitrSetupParameters) -> State:
    """(Applying: the server's lock.) Plan; then, approved: config, stanza, record, archive settings, (restart,
    lock taken back), check; put back on failure."""
    run: RunbookRun[PitrSetupResult] = RunbookRun(RUNBOOK, resource=lambda s: f"pitr:{s.pitr.stanza}")
    settings, pitr = run.settings, run.settings.pitr
    paths = pitr_paths(settings)
    result = PitrSetupResult(started_at=run.started_at, stanza=pitr.stanza, config_path=str(paths.config),
                             dry_run=not params.applies)
    run.report(result, render=render_report, key="pitr-setup-report", description=f"PITR setup of stanza {pitr.stanza}")
    altered = stopped_for_restart = restarting = False
    database: DatabaseSettings | None = None
    data_directory: Path | None = None
    lock: AdvisoryLock | None = None
    held = ExitStack()  # the lock: held through the last change (a failure's put-back included), then the report
    try:
        if params.restart:
            with run.step("check change window") as figures:
                result.change_window = params.change_window(settings)
                if result.change_window is not None:
                    figures.update(change_window=result.change_window.summary(),
                                   in_session_reason=result.change_window.in_session_reason)
        database = protected_cluster(settings)
        if params.applies:  # before the plan: it is made, approved and applied with no other setup between
            try:
                lock = held.enter_context(resource_lock(run, server=database.conninfo(), key=LOCK_KEY,
                                                        wait_seconds=params.lock_wait_seconds))
            except LockBusy as exc:
                raise LockBusy(exc.message, hint="another pitr-setup of this server is under way or waits for "
                               "approval: wait for it to finish and read its report (Prefect UI: runs in "
                               "progress), or give lock_wait_seconds. Nothing was changed.",
                               holder=exc.holder) from None
        with run.step("inspect cluster") as figures:
            facts = inspect_cluster(database=database)
            figures.update(version=facts.version_num, data_directory=str(facts.data_directory))
        if facts.in_recovery:
            raise Refused("the protected cluster is a standby (in recovery); pgBackRest is set up on the primary.",
                          hint="point [pitr] dsn at the primary.")
        data_directory = pitr.data_directory or facts.data_directory
        if pitr.data_directory is not None and Path(pitr.data_directory).resolve() != facts.data_directory:
            raise ConfigurationError(f"[pitr] data_directory is {pitr.data_directory}, but the server says its data "
                                     f"directory is {facts.data_directory}.", hint="fix [pitr] data_directory.")
        if not (data_directory / "PG_VERSION").exists():
            raise ConfigurationError(f"the data directory {data_directory} is not on this host: pgBackRest runs on "
                                     "the database host (its archive_command runs there too).",
                                     hint="run this runbook on a worker on the database host.")
        result.data_directory = str(data_directory)
        if problem := socket_problem(facts.socket_directories, pitr.socket_directory):
            raise ConfigurationError(f"{problem}.", hint="set [pitr] socket_directory to a directory the server "
                                     "lists in unix_socket_directories, or give the server one (unix_socket_"
                                     "directories = '/var/run/postgresql', then a restart). Nothing was changed.")
        result.archive_command = archive_command(pitr, paths)
        wanted = {"archive_mode": "on", "archive_command": result.archive_command,
                  "archive_timeout": str(int(pitr.archive_timeout.total_seconds())), "wal_level": "replica"}
        if facts.settings.get("wal_level") == "logical":
            wanted.pop("wal_level")  # logical already archives everything replica does
        secret = resolve_secret(pitr.s3_key_secret, pitr.s3_key_secret_block)
        text = render_config(pitr, paths, data_directory=data_directory, port=facts.port, user=facts.user,
                             s3_key_secret=secret)
        public = render_config(pitr, paths, data_directory=data_directory, port=facts.port, user=facts.user,
                               s3_key_secret="(secret)" if secret else None)  # the plan hash never covers it
        plan = result.plan = plan_setup(
            stanza=pitr.stanza, system_identifier=facts.system_identifier, data_directory=data_directory,
            config_path=paths.config, config_public=public, config_changes=read_config_text(paths) != text,
            running=facts.settings, contexts=facts.contexts, wanted=wanted, restart=params.restart)
        result.would_change = {c.name: c.wanted for c in plan.changes}
        if result.dry_run:
            run.logger.info("Dry run: plan %s would write %s and set %s", plan.plan_hash, paths.config,
                            scrub_data(result.would_change))
            _plan_steps(result, plan)
            result.succeeded = True
            return run.conclude(result, description=f"PITR setup of stanza {pitr.stanza} (plan {plan.plan_hash})")
        assert lock is not None  # an applying run took it above
        with run.step("approval") as figures:
            if params.confirm is None:
                result.timeline = list(run.steps.timeline)
                publish_report(key="pitr-setup-plan", markdown=render_report(result),
                               description="PITR setup plan awaiting approval")
            result.approval = request_approval(
                run, plan_hash=plan.plan_hash, confirm=params.confirm,
                summary=f"Approve PITR setup plan `{plan.plan_hash}` of stanza {pitr.stanza}: set "
                        f"{', '.join(result.would_change) or 'no setting'}"
                        + ("; restart PostgreSQL" if plan.restart_needed and plan.restart else "") + "."
                        + (f" {result.change_window.summary()}." if result.change_window and
                           result.change_window.in_session else ""),
                timeout_seconds=params.approval_timeout_seconds, poll_seconds=params.approval_poll_seconds,
                plan_artifact="pitr-setup-plan")
            figures.update(approved=result.approval.approved, approver=result.approval.approver)
        if not result.approval.approved:
            result.declined = f"{result.approval.approver}: {result.approval.reason}"
            raise Refused(f"the plan {plan.plan_hash} was not approved ({result.approval.reason}).",
                          hint="nothing was changed; run the dry run again when ready.")
        with run.step("write config", destructive=True, path=str(paths.config)) as figures:
            result.config_written = write_config(pitr=pitr, paths=paths, text=text)
            figures.update(changed=result.config_written)
        # Before any setting: a cluster pgBackRest cannot reach stays as it was.
        with run.step("create stanza", destructive=True):
            stanza_create(pitr=pitr, paths=paths)
        if plan.changes:
            with run.step("record settings") as figures:
                result.previous = record_settings(database=database, names=[c.name for c in plan.changes])
                figures.update({f"{p.name} before": p.auto_conf if p.auto_conf is not None else "(not set)"
                                for p in result.previous})
            run.steps.event("pitr.settings.recorded", settings=[p.model_dump() for p in result.previous])
            planned = {c.name: c.running for c in plan.changes}
            if moved := [p.name for p in result.previous if planned.get(p.name) != p.running]:
                raise Refused(f"{', '.join(moved)} changed on the server since plan {plan.plan_hash} was made.",
                              hint="run the dry run again and confirm its hash; no setting was changed.")
            altered = True  # from here on, a failure puts the recorded settings back
            with run.step("configure archiving", destructive=True) as figures:
                result.changed = configure_archiving(database=database, wanted=result.would_change)
                figures.update(changed=",".join(result.changed) or "-")
        watched = set(wanted)
        result.waiting_for_restart = [n for n in pending_restart(database=database) if n in watched]
        if result.waiting_for_restart:
            if not params.restart:
                stopped_for_restart = True
                waiting = result.waiting_for_restart
                raise Refused(f"{', '.join(waiting)} {'takes' if len(waiting) == 1 else 'take'} effect only when "
                              "PostgreSQL restarts; the settings are in postgresql.auto.conf, the stanza exists.",
                              hint="restart PostgreSQL in a quiet window (the next steps say how) and run pitr-setup "
                              "again, or dry-run again with restart=true and confirm that plan.")
            # The lock is proven as this step starts; the restart then ends its session (every session), and
            # it is taken back before anything else changes.
            with run.step("restart PostgreSQL", destructive=True):
                restarting = True
                restart_cluster(pitr=pitr, paths=paths, data_directory=data_directory)
                result.restarted = True
            _hold_again(run, lock)
            result.waiting_for_restart = [n for n in pending_restart(database=database) if n in watched]
        # Destructive too: it switches WAL on the server and archives the segment into the repository.
        with run.step("check archiving", destructive=True, timeout_seconds=check_timeout(pitr)):
            check_stanza(pitr=pitr, paths=paths)
            result.checked = True
        with run.step("read repository") as figures:
            result.info = read_info(pitr=pitr, paths=paths)
            figures.update(status=result.info.status, backups=len(result.info.backups))
        if not result.info.backups:
            result.next_steps.append("Take the first full backup now: runbooks run pitr-backup --param kind=full "
                                     "(until then no point in time can be restored).")
        result.succeeded = True
    except (RunbookError, psycopg.Error, OSError) as exc:
        result.error = failure_line(exc, where="the PITR setup")
        run.logger.error("PITR setup failed: %s", result.error)
        if stopped_for_restart and data_directory is not None:
            restart = _restart_command(pitr, paths, data_directory)
            result.next_steps += [
                f"To finish: restart PostgreSQL in a quiet window as the cluster's owner: `{restart}` (or its "
                "service manager, e.g. systemctl restart postgresql), then run `runbooks run pitr-setup` again and "
                "confirm its plan (it only checks archiving then).",
                "To undo instead, before any restart (this run's record), as a superuser in psql: "
                f"`{' '.join(undo_statements(result.previous))}`" if result.previous else
                "Nothing of this run is to undo: the pending settings were there before it."]
        elif altered and database is not None and data_directory is not None and lock is not None:
            _put_back(run, result, params=params, database=database, pitr=pitr, paths=paths,
                      data_directory=data_directory, lock=lock, restarting=restarting)
    finally:
        held.close()
    return run.conclude(result)
