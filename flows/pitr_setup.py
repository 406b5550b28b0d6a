"""Point-in-time recovery, set up: the protected cluster archives its WAL to a pgBackRest repository (seed 002: the
position database's RPO is one minute; a nightly dump loses up to a day).

Trigger: ``runbooks run pitr-setup`` or the ``pitr-setup`` on-demand deployment, once per cluster and again after
any change to ``[pitr]`` (it is idempotent). Blast radius: the protected cluster's archive settings (ALTER
SYSTEM: archive_mode, archive_command, archive_timeout, wal_level) and, only with ``restart=true``, a fast restart
of PostgreSQL that disconnects every session. Rollback: ``ALTER SYSTEM RESET`` those four and restart; the
repository is left as it is. ``dry_run`` shows what would change and touches nothing.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from runbooks.errors import ConfigurationError, Refused, RunbookError
from runbooks.frame import RunbookResult, RunbookRun
from runbooks.pitr import StanzaInfo, archive_command, pitr_paths, protected_cluster, render_config
from runbooks.redact import scrub, scrub_data
from runbooks.report import table, timeline_markdown
from runbooks.settings import resolve_secret
from tasks.pgbackrest import (
    check_stanza,
    configure_archiving,
    inspect_cluster,
    pending_restart,
    read_info,
    restart_cluster,
    stanza_create,
    write_config,
)

RUNBOOK = "pitr-setup"


class PitrSetupParameters(BaseModel):
    """The repository, stanza and archive settings are in ``[pitr]``; these say how far this run may go."""

    model_config = ConfigDict(extra="forbid")

    restart: bool = Field(default=False, description="Restart PostgreSQL (fast: sessions are disconnected) when "
                          "turning archive_mode on needs it. Off: the run stops and says so.")
    dry_run: bool = Field(default=False, description="Show the settings that would change; change nothing.")


class PitrSetupResult(RunbookResult):
    stanza: str = ""
    config_path: str = ""
    data_directory: str = ""
    archive_command: str = ""
    would_change: dict[str, str] = Field(default_factory=dict, description="setting -> value to be set")
    changed: list[str] = Field(default_factory=list)
    config_written: bool = False
    restarted: bool = False
    waiting_for_restart: list[str] = Field(default_factory=list)
    checked: bool = False
    info: StanzaInfo | None = None
    dry_run: bool = False


def render_report(result: PitrSetupResult) -> str:
    head = "DRY RUN" if result.dry_run else ("OK" if result.succeeded else "FAILED")
    lines = [f"# PITR setup of stanza {result.stanza} — {head}", "",
             f"Started {result.started_at:%Y-%m-%d %H:%M:%S} UTC, {result.seconds:.1f} s. Config "
             f"`{result.config_path}`, data directory `{result.data_directory}`.", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    lines += ["## Archive settings", table(["setting", "value", "done"], [
        [k, f"`{v}`", "would set" if result.dry_run else ("set" if k in result.changed else "already so")]
        for k, v in result.would_change.items()])]
    if result.waiting_for_restart:
        lines += [f"Waiting for a restart of PostgreSQL: {', '.join(result.waiting_for_restart)}.", ""]
    if result.info is not None:
        lines += [f"Stanza status: **{result.info.status}**; archive check "
                  f"{'passed' if result.checked else 'not run'}.", ""]
    lines += ["## Timeline", timeline_markdown(result.timeline)]
    if result.next_steps:
        lines += ["", "## Next steps", *[f"- {s}" for s in result.next_steps]]
    return "\n".join(lines)


@flow(name=RUNBOOK, log_prints=False)
def pitr_setup_flow(parameters: PitrSetupParameters | None = None) -> State:
    """Config, archive settings, (restart), stanza, check: each step idempotent, so a rerun finishes the job."""
    params = parameters or PitrSetupParameters()
    run: RunbookRun[PitrSetupResult] = RunbookRun(RUNBOOK, resource=lambda s: f"pitr:{s.pitr.stanza}")
    settings, pitr = run.settings, run.settings.pitr
    paths = pitr_paths(settings)
    result = PitrSetupResult(started_at=run.started_at, stanza=pitr.stanza, config_path=str(paths.config),
                             dry_run=params.dry_run)
    try:
        database = protected_cluster(settings)
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
        result.archive_command = archive_command(pitr, paths)
        wanted = {"archive_mode": "on", "archive_command": result.archive_command,
                  "archive_timeout": str(int(pitr.archive_timeout.total_seconds())), "wal_level": "replica"}
        if facts.settings.get("wal_level") == "logical":
            wanted.pop("wal_level")  # logical already archives everything replica does
        result.would_change = {k: v for k, v in wanted.items() if facts.settings.get(k) != v}
        text = render_config(pitr, paths, data_directory=data_directory, port=facts.port, user=facts.user,
                             s3_key_secret=resolve_secret(pitr.s3_key_secret, pitr.s3_key_secret_block))
        if params.dry_run:
            run.logger.info("Dry run: would write %s and set %s", paths.config, scrub_data(result.would_change))
            result.next_steps.append("Rerun without dry_run to apply.")
            result.succeeded = True
            return run.conclude(result, render=render_report, report_key="pitr-setup-report",
                                description=f"PITR setup of stanza {pitr.stanza} (dry run)")
        with run.step("write config", path=str(paths.config)) as figures:
            result.config_written = write_config(pitr=pitr, paths=paths, text=text)
            figures.update(changed=result.config_written)
        with run.step("configure archiving") as figures:
            result.changed = configure_archiving(database=database, wanted=wanted)
            result.waiting_for_restart = pending_restart(database=database)
            figures.update(changed=",".join(result.changed) or "-", pending=",".join(result.waiting_for_restart))
        if result.waiting_for_restart:
            if not params.restart:
                raise Refused(f"{', '.join(result.waiting_for_restart)} take effect only when PostgreSQL restarts.",
                              hint="restart it in a quiet window (systemctl restart postgresql) and rerun, or rerun "
                              "with restart=true to have this runbook restart it (sessions are disconnected).")
            with run.step("restart PostgreSQL"):
                restart_cluster(pitr=pitr, paths=paths, data_directory=data_directory)
                result.restarted = True
                result.waiting_for_restart = pending_restart(database=database)
        with run.step("create stanza"):
            stanza_create(pitr=pitr, paths=paths)
        with run.step("check archiving"):
            check_stanza(pitr=pitr, paths=paths)
            result.checked = True
        with run.step("read repository") as figures:
            result.info = read_info(pitr=pitr, paths=paths)
            figures.update(status=result.info.status, backups=len(result.info.backups))
        if not result.info.backups:
            result.next_steps.append("Take the first full backup now: runbooks run pitr-backup --param kind=full "
                                     "(until then no point in time can be restored).")
        result.succeeded = True
    except RunbookError as exc:
        result.error = scrub(str(exc))
        run.logger.error("PITR setup failed: %s", result.error)
    return run.conclude(result, render=render_report, report_key="pitr-setup-report",
                        description=f"PITR setup of stanza {pitr.stanza}")
