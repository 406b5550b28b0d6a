"""Tasks on the Docker engine: select the leftovers a cleanup rule names, then remove exactly that selection.

Both retry transient failures: selection only reads, and removal re-checks every object and counts one already
gone as removed, so a retry after a lost answer never removes more than the plan.
"""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger

from runbooks.adapters.dockerclean import DockerObject, DockerOutcome, connect, remove, select
from runbooks.settings import DockerRule
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task


@step_task("select-docker-objects", **TRANSIENT_RETRY)
def select_docker_objects(*, rule: DockerRule, now: datetime) -> list[DockerObject]:
    """What ``rule`` would remove: the plan a dry run shows and a real run hands to ``remove_docker_objects``.

    Args:
        rule: the docker cleanup rule.
        now: the run's reference time; objects younger than ``rule.older_than`` before it are kept.
    Returns:
        Containers, dangling images, build cache entries and volumes, in removal order.
    """
    client = connect(rule)
    try:
        objects = select(client, rule, now=now)
    finally:
        client.close()
    get_run_logger().info("Docker rule %r selects %d objects (%d bytes)", rule.name, len(objects),
                          sum(o.bytes for o in objects))
    return objects


@step_task("remove-docker-objects", mutates=True, **TRANSIENT_RETRY)
def remove_docker_objects(*, rule: DockerRule, objects: list[DockerObject],
                          need_bytes: int | None = None) -> DockerOutcome:
    """Remove ``objects`` (a selection of ``rule``), skipping what changed since it was made.

    A byte count rather than a callable says when to stop, so the task's arguments stay serialisable.

    Args:
        rule: the rule the objects were selected by (its protect label is re-checked).
        objects: the selection, in its order.
        need_bytes: stop once this much has been reclaimed; None: remove them all.
    Returns:
        What was removed, skipped (with why) and failed, and the bytes reclaimed.
    """
    logger = get_run_logger()
    client = connect(rule)
    try:
        outcome = remove(client, objects, rule,
                         enough=lambda freed: need_bytes is not None and freed >= need_bytes)
    finally:
        client.close()
    for obj in outcome.removed:
        logger.info("Removed Docker %s %r (%d bytes%s)", obj.kind, obj.name, obj.bytes,
                    f", {obj.detail}" if obj.detail == "already gone" else "")
    for item in outcome.skipped:
        logger.info("Skipped Docker %s %r: %s", item.object.kind, item.object.name, item.error)
    for item in outcome.failed:
        logger.warning("Could not remove Docker %s %r: %s", item.object.kind, item.object.name, item.error)
    if outcome.stopped_early:
        logger.info("Stopped after reclaiming %d bytes (%s needed)", outcome.reclaimed_bytes, need_bytes)
    return outcome
