"""Tasks on the model registry (the inference API first): read what serves, its evidence, the rollback targets
and whether predictions flow; request a rollback. Reads are retried on timeouts and 5xx, never on a 4xx; the
rollback request is idempotent per attempt, so its retry never rolls back twice, and tells this run's own request
that timed out but took effect from a version someone else had already rolled back to."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.context import TaskRunContext

from runbooks.adapters.registry import Candidate, Predictions, Reading, RegistryRef, Serving
from runbooks.core.errors import InferenceApiRefused, Refused
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task


@step_task("read-serving-model", **TRANSIENT_RETRY)
def read_serving(ref: RegistryRef) -> Serving:
    registry = ref.open()
    try:
        return registry.serving(ref.model_id)
    finally:
        registry.close()


@step_task("read-model-evidence", **TRANSIENT_RETRY)
def read_evidence(ref: RegistryRef, *, window: str) -> Reading:
    """The serving version's metrics over ``window`` and the router's feature drift."""
    registry = ref.open()
    try:
        return registry.read(ref.model_id, window)
    finally:
        registry.close()


@step_task("read-rollback-targets", **TRANSIENT_RETRY)
def read_rollback_targets(ref: RegistryRef) -> list[Candidate]:
    registry = ref.open()
    try:
        return registry.rollback_targets(ref.model_id)
    finally:
        registry.close()


@step_task("read-predictions", **TRANSIENT_RETRY)
def read_predictions(ref: RegistryRef) -> Predictions:
    registry = ref.open()
    try:
        return registry.predictions(ref.model_id)
    finally:
        registry.close()


def _attempt() -> int:
    """Which attempt of the running task this is (1 when called outside a task run, e.g. through ``.fn``)."""
    context = TaskRunContext.get()
    return context.task_run.run_count if context is not None else 1


@step_task("request-rollback", mutates=True, **TRANSIENT_RETRY)
def request_rollback(ref: RegistryRef, *, from_version: str, target_version: str,
                     reason: str, initiated_by: str) -> dict[str, Any]:
    """Ask the registry to serve ``target_version`` instead of ``from_version``. Each attempt first reads what
    serves: a router someone else moved since the decision is refused, never rolled back further, and a retry
    after a request that took effect but whose answer was lost (it timed out) finds the target serving and asks
    nothing more. The target is always named, so the registry can never pick another.

    Who moved the router decides the report. On the first attempt, nothing of this run has reached the registry:
    the target serving is someone else's doing (``already_serving``). On a retry, the router served
    ``from_version`` when this run decided, and the earlier attempt sent the request: the target serving now is
    this run's rollback whose answer was lost (``answer_lost``). (An earlier attempt that failed before sending,
    followed by a human rolling back to the very same target in the seconds between, would read as this run's;
    the model's lock keeps every other run of this runbook out.)

    Returns:
        The registry's answer, with ``already_serving`` set when the target served before this run asked, and
        ``answer_lost`` when this run's earlier request took effect although its answer never came back.
    """
    registry = ref.open()
    retry = _attempt() > 1
    try:
        now = registry.serving(ref.model_id).version
        if now == target_version:
            return _took_effect_before(ref, target_version, retry=retry)
        if now != from_version:
            raise Refused(f"the router now serves {now}, not {from_version} as when the rollback was decided.",
                          hint="someone else changed the serving version: look before rolling back further.")
        try:
            answer = registry.roll_back(ref.model_id, target_version=target_version, reason=reason,
                                        initiated_by=initiated_by)
        except InferenceApiRefused as exc:
            # 409 with the target serving: a request carried out between the read and this one (on a retry, the
            # earlier attempt's, landing late). Anything else stands.
            if exc.status == 409 and registry.serving(ref.model_id).version == target_version:
                return _took_effect_before(ref, target_version, retry=retry)
            raise
        get_run_logger().warning("Rollback of %s to %s requested as %r: %s", ref.model_id, target_version,
                                 initiated_by, reason)
        return {**answer, "already_serving": False, "answer_lost": False}
    finally:
        registry.close()


def _took_effect_before(ref: RegistryRef, target_version: str, *, retry: bool) -> dict[str, Any]:
    """The target serves before this attempt asked: this run's earlier request (on a retry), or someone else's."""
    if retry:
        get_run_logger().warning("Rollback of %s to %s: the earlier request's answer was lost, but it took effect "
                                 "(the router serves %s now)", ref.model_id, target_version, target_version)
    return {"already_serving": not retry, "answer_lost": retry, "to_version": target_version}
