"""Weekly backup verification: the restore runbook's ``verify`` mode on the newest backup of every database in the
inventory, so a backup that rotted in the repository is found on a quiet Sunday, not during an incident.

Trigger: ``runbooks run backup-verification`` or the ``backup-verification-weekly`` deployment (Sundays 04:00
UTC). Blast radius: none; it reads the repository (and runs ``pg_restore --list`` on each dump). It fails when the
newest backup of a database is missing, damaged, failed its verification, or is older than
``[notifications] backup_stale_after``. Rollback: nothing to roll back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.repository import open_repository
from runbooks.core.errors import ConfigurationError, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.report import human_bytes, report_tail, started, table
from runbooks.frame import RunbookResult, RunbookRun
from runbooks.frame.names import listed, run_name, run_parameters
from runbooks.frame.parameters import InventoryChoices, takes
from runbooks.settings import InventoryName, Settings
from runbooks.tasks.storage import verify_backup

RUNBOOK = "backup-verification"
Status = Literal["passed", "failed", "damaged", "missing", "stale"]


class VerificationParameters(BaseModel):
    """Which databases; the default is the whole inventory."""

    model_config = ConfigDict(extra="forbid")

    databases: list[Annotated[InventoryName, InventoryChoices("databases")]] = Field(
        default_factory=list, description="Inventory names to verify; empty: all.")

    def check_against(self, settings: Settings) -> None:
        """Refuse (ConfigurationError) a database the inventory lacks; the CLI calls it before any run."""
        for name in self.databases:
            settings.database_or_raise(name)


class DatabaseVerification(BaseModel):
    database: str
    status: Status
    backup_id: str | None = None
    age_hours: float | None = None
    bytes: int | None = None
    detail: str = ""
    seconds: float = 0.0


class VerificationResult(RunbookResult):
    databases: list[DatabaseVerification] = Field(default_factory=list)


def render_report(result: VerificationResult) -> str:
    bad = [d for d in result.databases if d.status != "passed"]
    lines = [f"# Weekly backup verification — {'OK' if result.succeeded else 'FAILED'}", "",
             f"{started(result)}; "
             f"{len(result.databases) - len(bad)} of {len(result.databases)} newest backups verified.", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    lines += [table(["database", "status", "newest backup", "age", "size", "detail"],
                    [[d.database, d.status.upper() if d.status != "passed" else d.status, d.backup_id or "-",
                      f"{d.age_hours:.1f} h" if d.age_hours is not None else "-",
                      human_bytes(d.bytes) if d.bytes is not None else "-", d.detail or "-"]
                     for d in result.databases])]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _check(catalog: BackupCatalog, name: str, stale_hours: float) -> DatabaseVerification:
    """The newest backup of ``name``, whatever its state: an older good one never stands in for it."""
    scan = catalog.scan(kind="database", name=name)
    newest = scan.manifests[-1] if scan.manifests else None
    damaged = scan.damaged[-1] if scan.damaged else None
    if damaged is not None and (newest is None or damaged.backup_id > newest.backup_id):
        return DatabaseVerification(database=name, status="damaged", backup_id=damaged.backup_id,
                                    detail=damaged.recovery(catalog.repository.url))
    if newest is None:
        return DatabaseVerification(database=name, status="missing", detail=f"no backup in {catalog.repository.url}")
    found = DatabaseVerification(database=name, status="passed", backup_id=newest.backup_id, bytes=newest.bytes,
                                 age_hours=(datetime.now(UTC) - newest.started_at).total_seconds() / 3600)
    verification = verify_backup(catalog=catalog, manifest=newest)
    found.seconds = verification.seconds
    if not newest.verified:
        found.status, found.detail = "failed", "failed its verification when it was taken"
    elif verification.status != "passed":
        found.status, found.detail = "failed", verification.detail or verification.status
    elif found.age_hours is not None and found.age_hours > stale_hours:
        found.status, found.detail = "stale", f"older than {stale_hours:g} h: the nightly backup is not running"
    return found


def _run_name() -> str:
    return run_name(RUNBOOK, listed(run_parameters().get("databases")), stamp=True)


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(VerificationParameters)
def verify_backups_flow(params: VerificationParameters) -> State:
    """Re-read the newest backup of every database: sizes, SHA-256, and the dump's table of contents."""
    run: RunbookRun[VerificationResult] = RunbookRun(RUNBOOK, resource="+".join(params.databases) or "all")
    result = VerificationResult(started_at=run.started_at)
    run.report(result, render=render_report, key="backup-verification-report",
               description="Weekly backup verification report")
    settings = run.settings
    try:
        names = params.databases or sorted(settings.databases)
        unknown = [n for n in names if n not in settings.databases]
        if unknown:
            raise ConfigurationError(f"not in the inventory: {', '.join(unknown)}.",
                                     hint=f"pick from {', '.join(sorted(settings.databases)) or '(none)'}.")
        if not names:
            raise ConfigurationError("the inventory has no databases.", hint="add [databases.<name>] to the config.")
        catalog = BackupCatalog(open_repository(settings.repository))
        catalog.repository.check_exists()  # a mistyped repository.url is not "no backups"
        stale = settings.notifications.backup_stale_after.total_seconds() / 3600
        for name in names:
            with run.step(f"verify {name}") as figures:
                try:
                    found = _check(catalog, name, stale)
                except RunbookError as exc:
                    found = DatabaseVerification(database=name, status="failed", detail=scrub(str(exc)))
                except Exception as exc:  # noqa: BLE001 - one database's surprise still leaves the others checked
                    run.logger.exception("Verifying the newest backup of %r failed unexpectedly", name)
                    found = DatabaseVerification(database=name, status="failed",
                                                 detail=scrub(f"{type(exc).__name__}: {exc}")[:500])
                result.databases.append(found)
                figures.update(status=found.status, backup_id=found.backup_id)
            if found.status != "passed":
                run.steps.event("backup-verification.failed", about=f"database.{name}", status=found.status,
                                backup_id=found.backup_id, detail=found.detail)
                result.next_steps.append(f"{name}: {found.status}: run backup-on-demand with databases=['{name}'], "
                                         "then 'runbooks backups list' to see every backup's state.")
    except RunbookError as exc:
        result.error = scrub(str(exc))
    result.succeeded = result.error is None and all(d.status == "passed" for d in result.databases)
    if not result.succeeded and result.error is None:
        result.error = "; ".join(f"{d.database}: {d.status}" for d in result.databases if d.status != "passed")
    return run.conclude(result)
