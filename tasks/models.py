"""Tasks on the model registry (the inference API first): read what serves, its evidence, the rollback targets
and whether predictions flow; request a rollback. Reads are retried on timeouts and 5xx, never on a 4xx; the
rollback request is idempotent per attempt, so its retry never rolls back twice."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from runbooks.errors import InferenceApiRefused, Refused
from runbooks.registry import Candidate, Predictions, Reading, RegistryRef, Serving
from tasks.policies import TRANSIENT_RETRY


@task(name="read-serving-model", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def read_serving(ref: RegistryRef) -> Serving:
    registry = ref.open()
    try:
        return registry.serving(ref.model_id)
    finally:
        registry.close()


@task(name="read-model-evidence", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def read_evidence(ref: RegistryRef, *, window: str) -> Reading:
    """The serving version's metrics over ``window`` and the router's feature drift."""
    registry = ref.open()
    try:
        return registry.read(ref.model_id, window)
    finally:
        registry.close()


@task(name="read-rollback-targets", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def read_rollback_targets(ref: RegistryRef) -> list[Candidate]:
    registry = ref.open()
    try:
        return registry.rollback_targets(ref.model_id)
    finally:
        registry.close()


@task(name="read-predictions", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def read_predictions(ref: RegistryRef) -> Predictions:
    registry = ref.open()
    try:
        return registry.predictions(ref.model_id)
    finally:
        registry.close()


@task(name="request-rollback", cache_policy=NO_CACHE, **TRANSIENT_RETRY)
def request_rollback(ref: RegistryRef, *, from_version: str, target_version: str,
                     reason: str, initiated_by: str) -> dict[str, Any]:
    """Ask the registry to serve ``target_version`` instead of ``from_version``. Each attempt first reads what
    serves: a retry after a request that took effect but whose answer was lost finds the target serving and asks
    nothing more, and a router someone else moved since the decision is refused, never rolled back further. The
    target is always named, so the registry can never pick another.

    Returns:
        The registry's answer, with ``already_serving`` set when nothing had to be asked.
    """
    registry = ref.open()
    try:
        now = registry.serving(ref.model_id).version
        if now == target_version:
            return {"already_serving": True, "to_version": target_version}
        if now != from_version:
            raise Refused(f"the router now serves {now}, not {from_version} as when the rollback was decided.",
                          hint="someone else changed the serving version: look before rolling back further.")
        try:
            answer = registry.roll_back(ref.model_id, target_version=target_version, reason=reason,
                                        initiated_by=initiated_by)
        except InferenceApiRefused as exc:
            # 409 after a lost answer: the first request did it. Anything else stands.
            if exc.status == 409 and registry.serving(ref.model_id).version == target_version:
                return {"already_serving": True, "to_version": target_version}
            raise
        get_run_logger().warning("Rollback of %s to %s requested as %r: %s", ref.model_id, target_version,
                                 initiated_by, reason)
        return {**answer, "already_serving": False}
    finally:
        registry.close()
