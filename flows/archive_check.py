"""Point-in-time recovery, watched: WAL archiving against seed 002's one-minute RPO, every minute. It pauses
nothing (trading does not depend on the archive); it notifies on-call when the RPO is at risk.

Trigger: the ``archive-check-every-minute`` deployment, or ``runbooks run archive-check``. Blast radius: one row in
the marker table (``[pitr] marker_table`` in ``marker_database``), which a point-in-time restore counts to prove
what it replayed, and which keeps a quiet cluster archiving every ``archive_timeout``. Rollback: none.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from runbooks.core.errors import RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.incidents import Notice
from runbooks.decisions.pitr import (
    ArchiveJudgement,
    ArchiverState,
    PitrPaths,
    archive_command,
    judge_archiver,
    pitr_paths,
    protected_cluster,
)
from runbooks.decisions.report import report_tail, started, table
from runbooks.frame import RunbookResult, RunbookRun, notify
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import takes
from runbooks.settings import PitrSettings
from runbooks.tasks.pgbackrest import pg_ctl_as_owner, read_archiver, write_marker

RUNBOOK = "archive-check"


class ArchiveCheckParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    marker: bool = Field(default=True, description="Write a marker row first (restores count them; it also keeps a "
                         "quiet cluster's WAL moving, so archiving is proven every archive_timeout).")
    notify: bool = Field(default=True, description="Notify on-call when the RPO is at risk.")


class ArchiveCheckResult(RunbookResult):
    stanza: str = ""
    state: ArchiverState | None = None
    judgement: ArchiveJudgement | None = None
    notification: str | None = None


def render_report(result: ArchiveCheckResult) -> str:
    verdict = result.judgement.verdict.upper() if result.judgement else "FAILED"
    lines = [f"# Archive check of stanza {result.stanza} — {verdict}", "",
             f"{started(result)}."
             + (f" Notification: {result.notification}." if result.notification else ""), ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.state is not None:
        s = result.state
        lines += [table(["reading", "value"], [
            ["archive_mode / archive_timeout", f"{s.archive_mode} / {s.archive_timeout_seconds:.0f} s"],
            ["last archived", f"{s.last_archived_wal or '-'} at {s.last_archived_at or '-'}"],
            ["last failed", f"{s.last_failed_wal or '-'} at {s.last_failed_at or '-'} ({s.failed_count} failures)"],
            ["waiting to be archived", f"{s.ready_count} segment(s), oldest since {s.oldest_ready_at or '-'}"],
            ["pg_wal", f"{s.wal_bytes / 2**20:.0f} MiB" if s.wal_bytes is not None else "-"]])]
    if result.judgement and result.judgement.reasons:
        lines += ["## Why", *[f"- {r}" for r in result.judgement.reasons], ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _next_steps(state: ArchiverState, verdict: str, *, pitr: PitrSettings, paths: PitrPaths) -> list[str]:
    """What on-call does about it, with the exact commands."""
    if verdict == "off":
        return ["Turn archiving on with pitr-setup: `runbooks run pitr-setup` prints the plan and its hash, "
                "`runbooks run pitr-setup --param confirm=<hash>` applies it.",
                "Until then a disaster loses every write since the last backup."]
    config = f"--config={paths.config} --stanza={pitr.stanza}"
    restart = pg_ctl_as_owner(pitr, Path(state.data_directory or "<data directory>"), "-m fast restart")
    steps = []
    if verdict == "failing":
        steps.append(f"Archiving fails ({state.failed_count} failures, last {state.last_failed_wal}): the server "
                     "log shows pgBackRest's ERROR line after each 'archive command failed'; as the cluster's OS "
                     f"user, `pgbackrest {config} check` reproduces it (it waits for a WAL switch to arrive).")
        steps.append("Until it is fixed, every finished WAL segment stays in pg_wal"
                     + (f" ({state.wal_bytes / 2**20:.0f} MiB now)" if state.wal_bytes is not None else "")
                     + ": fix the repository (space, permissions, reachability) before the disk fills. If it cannot "
                     "be fixed in time, turning archiving off stops the growth and gives up point-in-time recovery "
                     "until pitr-setup runs again: as a superuser, `ALTER SYSTEM SET archive_mode = 'off';`, then "
                     f"restart PostgreSQL as the cluster's owner (`{restart}`, or its service manager, e.g. "
                     "systemctl restart postgresql).")
    else:
        steps.append(f"Read the reasons above; as the cluster's OS user, `pgbackrest {config} check` tests archiving "
                     "by hand, and `runbooks run pitr-setup` (its plan, then confirm=<hash>) puts the settings back "
                     "as [pitr] says.")
    steps.append("Until WAL reaches the repository again, a disaster loses every write since "
                 f"{state.last_archived_at or 'the last archived segment'}.")
    return steps


def _run_name() -> str:
    p = run_parameters()
    return run_name(RUNBOOK, None if p.get("marker", True) else "no-marker",
                    None if p.get("notify", True) else "no-notify", stamp=True)


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(ArchiveCheckParameters)
def archive_check_flow(params: ArchiveCheckParameters) -> State:
    run: RunbookRun[ArchiveCheckResult] = RunbookRun(RUNBOOK, resource=lambda s: f"pitr:{s.pitr.stanza}")
    settings, pitr = run.settings, run.settings.pitr
    result = ArchiveCheckResult(started_at=run.started_at, stanza=pitr.stanza)
    run.report(result, render=render_report, key="archive-check-report",
               description=f"Archive check of stanza {pitr.stanza}")
    try:
        database = protected_cluster(settings)
        if params.marker:
            with run.step("write marker"):
                write_marker(database=database, pitr=pitr, note=run.actor)
        with run.step("read archiver") as figures:
            result.state = read_archiver(database=database)
            expected = archive_command(pitr, pitr_paths(settings))
            result.judgement = judge_archiver(result.state, rpo=pitr.rpo, expected_command=expected)
            figures.update(verdict=result.judgement.verdict, waiting=result.state.ready_count,
                           failed=result.state.failed_count)
        run.steps.event("archive.status", verdict=result.judgement.verdict, waiting=result.state.ready_count)
        if result.judgement.verdict != "ok":
            result.next_steps += _next_steps(result.state, result.judgement.verdict, pitr=pitr,
                                             paths=pitr_paths(settings))
        result.succeeded = result.judgement.verdict == "ok"
        if not result.succeeded:
            result.error = "; ".join(result.judgement.reasons)
    except RunbookError as exc:
        result.error = scrub(str(exc))
        run.logger.error("Archive check failed: %s", result.error)
    if not result.succeeded and params.notify:
        verdict = result.judgement.verdict if result.judgement else "unknown"
        result.notification = notify(run, Notice(
            kind="start", severity="P1" if verdict in ("failing", "off") else "P2",
            title=f"archive-check: the position database's RPO is at risk ({verdict})",
            impact=f"writes since the last archived WAL would be lost in a disaster (RPO {pitr.rpo})",
            details=[result.error or verdict], actions=result.next_steps or ["Read the run's report"]))
    return run.conclude(result)
