"""Tasks for the local disks: usage, the largest consumers, and the file rules' walks (runbooks.adapters.cleanup)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from runbooks.adapters.cleanup import Consumer, TreeOutcome, Usage, Walk, clean_tree, measure, survey
from runbooks.decisions.report import human_bytes
from runbooks.settings import FileRule
from runbooks.tasks.policies import step_task


@step_task("measure-disks")
def measure_disks(*, paths: list[Path]) -> list[Usage]:
    """``df`` of each path (a path missing on this host is logged and left out)."""
    usages = []
    for path in paths:
        try:
            usages.append(measure(path))
        except OSError as exc:
            get_run_logger().warning("Cannot measure %s: %s", path, exc.strerror)
    return usages


@step_task("survey-disk")
def survey_disk(*, paths: list[Path], top: int) -> dict[str, list[Consumer]]:
    """``du --max-depth=1`` of each path that exists: where the space went, for the report."""
    found: dict[str, list[Consumer]] = {}
    for path in paths:
        try:
            found[str(path)] = survey(path, top=top)
        except OSError as exc:
            get_run_logger().info("Not surveyed %s: %s", path, exc.strerror)
    return found


@step_task("clean-files", mutates=True)
def clean_files(*, rule: FileRule, root: Path, walk: Walk) -> TreeOutcome:
    """One file rule on one root. Not retried: the walk itself is the retry (a rerun selects what is left)."""
    outcome = clean_tree(rule, root, walk)
    for found in outcome.data_directories:
        get_run_logger().warning("%s %s: not entered %r: a PostgreSQL data directory (PG_VERSION beside global/)",
                                 rule.name, root, found)
    verb = {"delete": "deleted", "compress": "compressed"}[rule.action]
    get_run_logger().info("%s %s: %s %d files, %s%s%s", rule.name, root, ("would have " if walk.dry_run else "") +
                          verb, outcome.files, human_bytes(outcome.bytes),
                          f"; {outcome.state}: {outcome.why}" if outcome.why else "",
                          f"; not touched: {outcome.skipped}" if outcome.skipped else "")
    return outcome
