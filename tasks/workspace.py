"""Tasks on this host's work directories: the local files a runbook run needs while it works."""

from __future__ import annotations

from prefect import get_run_logger
from pydantic import BaseModel

from runbooks.adapters.workdirs import WorkDirs
from runbooks.decisions.report import human_bytes
from runbooks.tasks.policies import step_task


class WorkDirReport(BaseModel):
    path: str
    bytes: int
    reason: str
    removed: bool


@step_task("sweep-work-directories", mutates=True)
def sweep_work_directories(*, workdirs: WorkDirs, dry_run: bool, purpose: str) -> list[WorkDirReport]:
    """Give back the space killed runs left behind (a fetched dump can be as large as the database) before
    the free-space check counts it as used.

    Returns:
        One report per directory of a run that is gone; ``removed`` is False in dry-run.
    """
    logger = get_run_logger()
    reports = []
    for swept in workdirs.sweep(dry_run=dry_run, purpose=purpose):
        logger.info("%s work directory %s (%s): %s", "Would remove" if dry_run else "Removed", swept.path,
                    human_bytes(swept.bytes), swept.reason)
        reports.append(WorkDirReport(path=swept.path, bytes=swept.bytes, reason=swept.reason, removed=swept.removed))
    return reports
