"""Point-in-time recovery, the physical backups: pgBackRest full (weekly) and differential (daily) backups of the
protected cluster, beside the nightly logical dumps (which stay for per-database restores and portability).

Trigger: the ``pitr-backup-full-weekly`` and ``pitr-backup-diff-daily`` deployments, or ``runbooks run
pitr-backup``. Blast radius: reads the cluster (a checkpoint at the start), writes the pgBackRest repository;
pgBackRest expires what ``[pitr] retention_full`` / ``retention_diff`` no longer keep (with their WAL). Rollback:
none needed; an interrupted backup is resumed or discarded by pgBackRest's next backup, never listed as valid.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from runbooks.core.errors import ConfigurationError, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.pitr import BackupType, PhysicalBackup, StanzaInfo, pitr_paths, protected_cluster
from runbooks.decisions.report import human_bytes, report_tail, started, table
from runbooks.frame import RunbookResult, RunbookRun
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import takes
from runbooks.tasks.pgbackrest import read_info, take_backup, write_marker

RUNBOOK = "pitr-backup"


class PitrBackupParameters(BaseModel):
    """Which kind of physical backup; where and how long they are kept is ``[pitr]``."""

    model_config = ConfigDict(extra="forbid")

    kind: BackupType = Field(default="diff", description="full, diff (changes since the last full) or incr "
                             "(since the last backup). pgBackRest takes a full one when there is none yet.")


class PitrBackupResult(RunbookResult):
    stanza: str = ""
    kind: str = ""
    backup: PhysicalBackup | None = None
    info: StanzaInfo | None = None


def render_report(result: PitrBackupResult) -> str:
    lines = [f"# PITR backup ({result.kind}) of stanza {result.stanza} — {'OK' if result.succeeded else 'FAILED'}",
             "", f"{started(result)}.", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.info is not None:
        lines += [f"Repository: {len(result.info.backups)} backup(s), WAL archived {result.info.wal_min or '-'} to "
                  f"{result.info.wal_max or '-'}, status {result.info.status}.", "",
                  table(["label", "type", "taken", "seconds", "database", "stored"],
                        [[b.label + (" (this run)" if result.backup and b.label == result.backup.label else ""),
                          b.type, f"{b.started_at:%Y-%m-%d %H:%M}Z",
                          f"{(b.stopped_at - b.started_at).total_seconds():.0f}", human_bytes(b.size),
                          human_bytes(b.stored)] for b in result.info.backups])]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _run_name() -> str:
    return run_name(RUNBOOK, run_parameters().get("kind") or "diff", stamp=True)


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(PitrBackupParameters)
def pitr_backup_flow(params: PitrBackupParameters) -> State:
    run: RunbookRun[PitrBackupResult] = RunbookRun(RUNBOOK, resource=lambda s: f"pitr:{s.pitr.stanza}")
    settings, pitr = run.settings, run.settings.pitr
    paths = pitr_paths(settings)
    result = PitrBackupResult(started_at=run.started_at, stanza=pitr.stanza, kind=params.kind)
    run.report(result, render=render_report, key="pitr-backup-report",
               description=f"PITR {params.kind} backup of stanza {pitr.stanza}")
    try:
        if not paths.config.is_file():
            raise ConfigurationError(f"pgBackRest is not set up for stanza {pitr.stanza!r} ({paths.config} is "
                                     "missing).", hint="run 'runbooks run pitr-setup' first.")
        database = protected_cluster(settings)
        with run.step("write marker"):
            write_marker(database=database, pitr=pitr, note=f"{RUNBOOK} {params.kind} {run.actor}")
        with run.step("back up", kind=params.kind) as figures:
            # pgBackRest's own lock keeps other backups of the stanza out: one that started after this moment is
            # this run's (its timestamps are whole seconds).
            since = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
            take_backup(pitr=pitr, paths=paths, kind=params.kind)
            result.info = read_info(pitr=pitr, paths=paths)
            new = [b for b in result.info.backups if b.started_at >= since]
            result.backup = new[-1] if new else None
            if result.backup is None:
                raise RunbookError("pgBackRest reported success but lists no new backup.",
                                   hint="run 'pgbackrest info' by hand and read its log.")
            figures.update(label=result.backup.label, type=result.backup.type, bytes=result.backup.size,
                           stored=result.backup.stored)
        if result.backup.type != params.kind:
            result.next_steps.append(f"pgBackRest took a {result.backup.type} backup instead of {params.kind} "
                                     "(there was no prior full backup to build on).")
        result.succeeded = True
    except RunbookError as exc:
        result.error = scrub(str(exc))
        run.logger.error("PITR backup failed: %s", result.error)  # the deployments' notify-on-failure pages
    return run.conclude(result)
