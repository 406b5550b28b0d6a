"""Point-in-time recovery, the restore: the protected cluster as it was at ``target_time`` (or at the end of the
archive), restored by pgBackRest into a NEW cluster on a free loopback port, promoted, validated, and the RPO
achieved reported.

Trigger: ``runbooks run pitr-restore --param target_time=2026-11-24T13:05:00Z`` or the ``pitr-restore`` on-demand
deployment (seed 002: the position database's RPO is one minute). Blast radius: a new directory under
``<pitr work_dir>/restores`` and a new PostgreSQL on 127.0.0.1; the source cluster and the repository are only
read, and the restored cluster's archiving is off so it never writes into the source's stanza. Rollback: stop
the new cluster and remove its directory. Pointing the platform at it is the operator's decision (the report
says how).
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Annotated

import psycopg
from prefect import flow
from prefect.states import State
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from runbooks.adapters.postgres import CheckResult, connect, failure_line
from runbooks.adapters.workdirs import OWNER, WorkDirs
from runbooks.core.errors import Refused, RunbookError
from runbooks.decisions.pitr import RecoveryPoint, parse_target, pitr_paths, protected_cluster
from runbooks.decisions.report import report_tail, started, table
from runbooks.frame import RunbookResult, RunbookRun
from runbooks.frame.names import instant, run_name, run_parameters
from runbooks.frame.parameters import takes
from runbooks.settings import DatabaseSettings, PitrSettings
from runbooks.tasks.pgbackrest import (
    MarkerCount,
    RestoredCluster,
    check_restored_database,
    count_markers,
    database_names,
    inspect_cluster,
    pg_ctl_as_owner,
    read_recovery_point,
    restore_into_new_cluster,
    restored_databases,
    start_restored,
    stop_restored,
)

RUNBOOK = "pitr-restore"
PURPOSE = "pitr-restore"


def _target(value: str) -> str:
    parse_target(value)
    return value


TargetTime = Annotated[str, Field(max_length=64), AfterValidator(_target)]


class PitrRestoreParameters(BaseModel):
    """Where to stop replaying WAL; the repository and stanza are ``[pitr]``."""

    model_config = ConfigDict(extra="forbid")

    target_time: TargetTime = Field(default="latest", description="'latest' (everything archived) or an ISO 8601 "
                                    "time with a zone, e.g. 2026-11-24T13:05:00Z: transactions committed after "
                                    "it are not replayed.")
    backup_label: str | None = Field(default=None, pattern=r"^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$",
                                     description="restore from this backup set (pgBackRest label); None: the newest "
                                     "one before the target")
    keep_running: bool = Field(default=True, description="Leave the restored cluster running (a recovery); off: "
                               "stop and remove it after validation (a drill).")


class MarkerCheck(BaseModel):
    restored: MarkerCount | None = None
    source: MarkerCount | None = Field(default=None, description="the same count on the source, when it answers")
    ok: bool | None = None
    detail: str = ""


class PitrRestoreResult(RunbookResult):
    stanza: str = ""
    target_time: str = "latest"
    restored_at: str | None = Field(default=None, description="where the new cluster listens (no password)")
    data_directory: str | None = None
    kept_running: bool = False
    point: RecoveryPoint | None = None
    marker: MarkerCheck | None = None
    checks: dict[str, list[CheckResult]] = Field(default_factory=dict)
    source_untouched: bool | None = Field(default=None, description="the source's system identifier and "
                                          "postmaster are the same after the restore as before")
    absent: list[str] = Field(default_factory=list, description="inventory databases of the source that the "
                              "restored cluster does not hold")


def render_report(result: PitrRestoreResult) -> str:
    lines = [f"# PITR restore of stanza {result.stanza} to {result.target_time} — "
             f"{'OK' if result.succeeded else 'FAILED'}", "",
             f"{started(result)}.", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.restored_at:
        lines += [f"Restored cluster: `{result.restored_at}`, data directory `{result.data_directory}` "
                  f"({'running' if result.kept_running else 'stopped and removed after validation'}).", ""]
    if result.point is not None:
        p = result.point
        lines += [f"Last transaction replayed: {p.last_replayed_at or '-'}; achieved RPO "
                  f"**{'-' if p.rpo_seconds is None else f'{p.rpo_seconds:.1f} s'}** against "
                  f"{'the target' if p.target else 'the restore start'} ({p.reference}); timeline {p.timeline}.", ""]
    if result.marker is not None:
        lines += [f"Marker table: {result.marker.detail}", ""]
    if result.absent:
        lines += [f"Not in the restored cluster (the source has them): {', '.join(result.absent)}.", ""]
    rows = [[db, c.name, c.status, c.value or "-", c.expect or "-"] for db, cs in result.checks.items() for c in cs]
    if rows:
        lines += ["## Integrity checks", table(["database", "check", "status", "value", "expected"], rows)]
    if result.source_untouched is not None:
        lines += [f"Source cluster untouched: {'yes' if result.source_untouched else 'NO'}.", ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _source_databases(params: dict[str, object]) -> set[str] | None:
    """The source's databases, or None when it does not answer (the disaster)."""
    try:
        return database_names(params, where="the source cluster")
    except (RunbookError, psycopg.Error):
        return None


def _source_identity(params: dict[str, object]) -> tuple[str, int] | None:
    """The source's system identifier and postmaster start: both unchanged means nothing restarted or replaced it."""
    try:
        with connect(params, where="the source cluster", autocommit=True) as conn:
            row = conn.execute("SELECT (SELECT system_identifier::text FROM pg_control_system()), "
                               "extract(epoch FROM pg_postmaster_start_time())::bigint").fetchone()
    except (RunbookError, psycopg.Error):
        return None
    return (str(row[0]), int(row[1])) if row else None


def _stop_left_clusters(workdirs: WorkDirs, pitr_settings: PitrSettings) -> list[str]:
    """Restores killed midway leave a directory (and maybe a postmaster): stop and remove them. A finished restore
    hands its directory over (no owner record), so a sweep never touches a recovered cluster."""
    def stop(path: Path) -> bool:
        return stop_restored(pitr_settings, RestoredCluster(path, 0))  # still running: left for the next sweep

    swept = workdirs.sweep(dry_run=False, purpose=PURPOSE, before_remove=stop)
    return [str(s.path) for s in swept]


def _run_name() -> str:
    p = run_parameters()
    label = p.get("backup_label")
    return run_name(RUNBOOK, "to", instant(p.get("target_time")) or "latest", "from" if label else None, label,
                    None if p.get("keep_running", True) else "stopped")


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(PitrRestoreParameters)
def pitr_restore_flow(params: PitrRestoreParameters) -> State:
    """Restore, start, promote, prove (markers, integrity checks), report the RPO; the source is only read."""
    run: RunbookRun[PitrRestoreResult] = RunbookRun(RUNBOOK, resource=lambda s: f"pitr:{s.pitr.stanza}")
    settings, pitr = run.settings, run.settings.pitr
    paths = pitr_paths(settings)
    target = parse_target(params.target_time)
    result = PitrRestoreResult(started_at=run.started_at, stanza=pitr.stanza, target_time=params.target_time)
    run.report(result, render=render_report, key="pitr-restore-report",
               description=f"PITR restore of stanza {pitr.stanza} to {params.target_time}")
    workdirs = WorkDirs(paths.restores, traversable=True)
    cluster: RestoredCluster | None = None
    done = inspect = False
    try:
        if target is not None and target > run.started_at:  # before anything: an hours-long restore would fail
            raise Refused(f"target_time {params.target_time} is later than now: WAL not yet written cannot be "
                          "replayed.", hint="use 'latest' for everything archived, or an earlier time. Nothing "
                          "was done.")
        source = protected_cluster(settings)
        source_params = {**source.conninfo(), "dbname": "postgres"}
        before = _source_identity(source_params)
        if not paths.config.is_file():
            raise RunbookError(f"pgBackRest is not set up for stanza {pitr.stanza!r} on this host ({paths.config} "
                               "is missing).", hint="run 'runbooks run pitr-setup' (with the same [pitr] settings) "
                               "on this host first.")
        with run.step("sweep killed restores") as figures:
            figures.update(removed=len(_stop_left_clusters(workdirs, pitr)))
        try:
            source_data: Path | None = (pitr.data_directory or inspect_cluster.with_options(retries=0)(
                database=source).data_directory)
        except RunbookError:
            source_data = pitr.data_directory  # the source is down (the disaster): restore all the same
        with run.step("restore", target=params.target_time) as figures:
            workdir = workdirs.create(PURPOSE, flow_run_id=run.flow_run_id)
            cluster = restore_into_new_cluster(pitr=pitr, paths=paths, workdir=workdir, source_data=source_data,
                                               target=target, label=params.backup_label)
            figures.update(port=cluster.port, data_directory=str(cluster.datadir))
        with run.step("replay and promote") as figures:
            start_restored(pitr=pitr, cluster=cluster, source=source, target=target, timeout=pitr.restore_timeout)
            result.point = read_recovery_point(cluster=cluster, source=source, target=target,
                                               started_at=run.started_at)
            figures.update(last_replayed=str(result.point.last_replayed_at), rpo_seconds=result.point.rpo_seconds)
        result.restored_at = f"postgresql://{source.conninfo().get('user') or 'postgres'}@127.0.0.1:{cluster.port}/"
        result.data_directory = str(cluster.datadir)
        with run.step("count markers") as figures:
            result.marker = _check_markers(cluster, source, source_params, pitr.marker_database, pitr.marker_table,
                                           target)
            figures.update(ok=result.marker.ok, detail=result.marker.detail)
        with run.step("integrity checks") as figures:
            present = restored_databases(cluster, source)
            on_source = _source_databases(source_params)
            for name, database in settings.databases.items():
                dbname = str(database.conninfo().get("dbname") or name)
                if dbname not in present:
                    if on_source is not None and dbname in on_source:
                        result.absent.append(name)  # the source has it: missing from the restore
                    continue  # another cluster's database
                result.checks[name] = check_restored_database(cluster=cluster, source=source, dbname=dbname,
                                                              checks=database.checks)
            figures.update(databases=len(result.checks), absent=len(result.absent),
                           failed=sum(c.status in ("failed", "could_not_run")
                                      for cs in result.checks.values() for c in cs))
        after = _source_identity(source_params)
        result.source_untouched = None if before is None or after is None else before == after
        failed = [f"{db}: {c.name} ({c.status})" for db, cs in result.checks.items() for c in cs
                  if c.status in ("failed", "could_not_run")]
        if result.absent and target is None:  # a database made after a time target is rightly absent
            failed.append(f"database(s) {', '.join(result.absent)} of the source are not in the restored cluster")
        if result.marker and result.marker.ok is False:
            failed.append(f"marker table: {result.marker.detail}")
        if result.source_untouched is False:
            failed.append("the source cluster restarted or changed during the restore")
        if failed:
            inspect = params.keep_running
            raise RunbookError("the restored cluster did not validate: " + "; ".join(failed),
                               hint=(f"it is left running for inspection at {result.restored_at} (the next "
                                     "pitr-restore stops and removes it); do not point the platform at it."
                                     if inspect else "it was stopped and removed; the source was not touched."))
        done = True
        result.succeeded = True
        if params.keep_running:
            (workdir / OWNER).unlink(missing_ok=True)  # handed over: no sweep ever removes a recovered cluster
            result.kept_running = True
            result.next_steps.append(
                f"The restored cluster runs at {result.restored_at} (data {cluster.datadir}). Validate the "
                "platform against it, then repoint the application's DSN, or dump what you need from it. Stop it "
                f"with: {pg_ctl_as_owner(pitr, Path(cluster.datadir), 'stop')}.")
    except (RunbookError, psycopg.Error, OSError) as exc:  # a connection dropped mid-query is reported too
        result.error = failure_line(exc, where="the PITR restore")
        run.logger.error("PITR restore failed: %s", result.error)
    finally:
        if cluster is not None and inspect:
            workdirs.release(cluster.root)  # kept for inspection; the next restore's sweep stops and removes it
            result.kept_running = True
        elif cluster is not None and not (done and params.keep_running):
            with run.step("remove restored cluster") as figures:
                stopped = stop_restored(pitr, cluster)
                if stopped:
                    shutil.rmtree(cluster.root, ignore_errors=True)
                figures.update(stopped=stopped, removed=stopped)
                if not stopped:
                    run.logger.error("The restored cluster in %s did not stop; its directory is left for the next "
                                     "pitr-restore's sweep.", cluster.root)
    return run.conclude(result)


def _check_markers(cluster: RestoredCluster, source: DatabaseSettings, source_params: dict[str, object],
                   dbname: str, table_name: str, target: datetime | None) -> MarkerCheck:
    check = MarkerCheck()
    check.restored = count_markers(cluster.params(source, dbname), table_name, target)
    try:
        check.source = count_markers({**source_params, "dbname": dbname}, table_name, target)
    except RunbookError:
        check.source = None
    if check.restored is None:
        if check.source is not None and target is not None and check.source.up_to_target:
            check.ok = False
            check.detail = (f"no {table_name} table in {dbname}, though the source has {check.source.up_to_target} "
                            "row(s) up to the target")
        else:
            check.detail = f"no {table_name} table in {dbname} (the archive check writes it)"
        return check
    r = check.restored
    newest = f"newest {r.newest:%Y-%m-%d %H:%M:%S}Z" if r.newest else "none"
    if target is not None and r.after_target:
        check.ok, check.detail = False, f"{r.after_target} row(s) written after the target are present ({newest})"
    elif check.source is not None and target is not None and check.source.up_to_target != r.up_to_target:
        check.ok = False
        check.detail = (f"{r.up_to_target} row(s) up to the target, the source has {check.source.up_to_target} "
                        f"({newest})")
    else:
        check.ok = True
        check.detail = (f"{r.up_to_target} row(s) up to the target"
                        + (f", as on the source; {check.source.after_target} written after it are absent"
                           if check.source is not None and target is not None else "") + f" ({newest})")
    return check
