"""Serve every runbook from one long-running process: the single-host alternative to a work pool and a worker.

The deployments are the ones in ``prefect.yaml`` (names, schedules, parameters, descriptions, tags), so the
nightly backup keeps its 02:00 UTC schedule and operators find the same names in the UI. A runbook of
``runbooks.flows.RUNBOOKS`` without an entry there is served on demand as ``<name>-on-demand``. Work pools and pull
steps do not apply: this process runs the flows itself, from this checkout.

Run ``python deployments/serve.py`` with ``PREFECT_API_URL`` pointing at the Prefect server. Stopping it
(Ctrl-C, SIGTERM) pauses the schedules until it serves again. One host only: with several ``hosts`` in the settings
it refuses to serve (use the work pool, ``deployments/per_host.py`` and a worker per host).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from prefect import serve
from prefect.schedules import Schedule
from prefect.types.entrypoint import EntrypointType

from runbooks.flows import RUNBOOKS, Runbook

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO_ROOT / "prefect.yaml"

_SCHEDULE_KEYS = {"cron", "interval", "rrule", "timezone", "day_or", "active", "parameters", "slug"}


def entrypoint_of(runbook: Runbook) -> str:
    """The ``path/to/module.py:flow`` entrypoint that ``prefect.yaml`` uses for this runbook."""
    return runbook.entrypoint


def schedule_of(item: dict[str, Any]) -> Schedule:
    """A ``prefect.yaml`` schedule entry as a Prefect schedule; refuses keys it would otherwise drop."""
    unknown = set(item) - _SCHEDULE_KEYS
    if unknown:
        raise ValueError(f"schedule {item!r}: keys {sorted(unknown)} are not supported by deployments/serve.py")
    fields = dict(item)
    if isinstance(fields.get("interval"), int | float):
        fields["interval"] = timedelta(seconds=fields["interval"])
    return Schedule(**fields)


def triggers_of(entry: dict[str, Any]) -> list[Any]:
    """A ``prefect.yaml`` entry's triggers, validated as ``prefect deploy`` validates them."""
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(DeploymentTriggerTypes)
    return [adapter.validate_python(spec) for spec in entry.get("triggers") or []]


def build_deployments(config: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """One served deployment per ``prefect.yaml`` entry of each runbook, or an on-demand one if it has none."""
    entries = yaml.safe_load(config.read_text()).get("deployments") or []
    deployments: list[RunnerDeployment] = []
    for runbook in RUNBOOKS.values():
        flow, _model, _render = runbook.load()
        mine = [e for e in entries if e.get("entrypoint") == entrypoint_of(runbook)]
        for entry in mine or [{"name": f"{runbook.name}-on-demand", "tags": ["runbooks", runbook.name, "on-demand"]}]:
            deployments.append(flow.to_deployment(
                name=entry["name"],
                schedules=[schedule_of(s) for s in entry.get("schedules") or []],
                triggers=triggers_of(entry),
                parameters=entry.get("parameters") or {},
                description=entry.get("description"),
                tags=entry.get("tags"),
                enforce_parameter_schema=entry.get("enforce_parameter_schema", True),
                concurrency_limit=entry.get("concurrency_limit"),
                # Import path, not file path: the entrypoint does not depend on the directory serve starts in.
                entrypoint_type=EntrypointType.MODULE_PATH,
            ))
    return deployments


def main() -> int:
    # Same working directory as the worker's pull step gives a flow run: ./runbooks.toml is the inventory.
    os.chdir(REPO_ROOT)
    from runbooks.core.errors import ConfigurationError, RunbookError
    from runbooks.settings import load_settings

    try:
        settings = load_settings()
        if settings.several_hosts:
            raise ConfigurationError(
                f"the settings declare {len(settings.hosts)} hosts ({', '.join(settings.hosts)}), but serve.py runs "
                "every runbook in this one process on this host: the other hosts' disks would never be cleaned or "
                "checked.", hint="use the work pool and a worker per host: python deployments/per_host.py write, "
                "then prefect deploy --all --prefect-file prefect.hosts.yaml (docs/scale-out.md); nothing was served.")
    except RunbookError as exc:
        print(f"runbooks: {exc}", file=sys.stderr)
        return 2
    serve(*build_deployments())
    return 0


if __name__ == "__main__":
    sys.exit(main())
