"""One deployment per declared host for the runbooks about their worker's own machine, from ``prefect.yaml`` and
the settings' ``hosts``: what YAML cannot say (it knows no settings), so it is generated, never copied by hand.

``disk-cleanup`` cleans, and the host checks of ``health-check`` judge, the machine whose worker runs them. With
one work pool and several workers, whichever worker is free takes the next run, so a host's disk would be cleaned
only when its worker happened to be free. Each ``prefect.yaml`` deployment tagged ``per-host`` is therefore
replaced by one copy per host:

- named ``<deployment>-<host>``, on the work queue ``host-<host>`` of the same pool (only that host's worker pulls
  it: ``prefect worker start --pool runbooks --work-queue default --work-queue host-<host>``);
- with ``on_host: <host>``, so a worker of another host that pulls it anyway (a queue misassigned) refuses the run
  in one line before it measures anything;
- for ``health-check`` the platform's checks (APIs, databases, error logs) stay in the fleet-wide entry, run once
  by any worker with ``host: false``; each host's copy checks only that host (``platform: false``), so an API
  outage pages once, not once per host.

Every other deployment is written unchanged. Usage, from the checkout::

    python deployments/per_host.py write                # writes ./prefect.hosts.yaml
    prefect --no-prompt deploy --all --prefect-file prefect.hosts.yaml

Deploy that file instead of ``prefect.yaml`` while there are several hosts (and write it again after a change to
either ``prefect.yaml`` or ``hosts``). Bad settings are one line with a ``HINT:`` on stderr and exit 2, before
anything is written.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO_ROOT / "prefect.yaml"
OUTPUT = REPO_ROOT / "prefect.hosts.yaml"
PER_HOST_TAG = "per-host"
QUEUE_PREFIX = "host-"
DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class Split:
    """A runbook with a part for the whole fleet and a part per host: the fleet-wide entry keeps its name and runs
    once, on any worker; each host's copy does only the host's part."""

    fleet: dict[str, Any]  # parameters of the fleet-wide entry
    fleet_says: str  # its description
    host: dict[str, Any]  # parameters of each host's copy
    host_says: str  # their description, after "On host <host> only (...)."


# By entrypoint. A per-host runbook not named here is copied whole, and its prefect.yaml entry is not deployed.
SPLIT: dict[str, Split] = {
    "flows/health_check.py:health_check_flow": Split(
        fleet={"host": False},
        fleet_says="Daily health check of the platform, once for the fleet by any worker: trading and inference API "
        "health and latency, every database (SELECT 1, connections against max_connections) and recent errors in "
        "the configured logs, graded against the operations runbook's performance baseline. Each host's disk, memory "
        "and CPU: its own per-host deployment.",
        host={"platform": False},
        host_says="Daily health check of this host: its disk, memory and CPU (averaged over a window), graded "
        "against the operations runbook's performance baseline."),
}


def queue_of(host: str) -> str:
    """The work queue a host's worker pulls its own runs from."""
    return f"{QUEUE_PREFIX}{host}"


def per_host_deployment(entry: dict[str, Any], host: str) -> dict[str, Any]:
    """``entry`` for ``host`` alone: its name, queue, ``on_host`` parameter and a ``host:<host>`` tag."""
    if entry.get("triggers"):
        raise ValueError(f"deployment {entry['name']!r} is tagged {PER_HOST_TAG} and has triggers: an event would "
                         "run it on every host; give the per-host copies no triggers or drop the tag")
    split = SPLIT.get(entry["entrypoint"])
    says = split.host_says if split else " ".join(str(entry.get("description") or "").split())
    made = {"name": f"{entry['name']}-{host}", **copy.deepcopy(entry)}
    made["name"] = f"{entry['name']}-{host}"
    made["description"] = (f"On host {host} only (work queue {queue_of(host)}; a worker on another host refuses the "
                           f"run). {says}").strip()
    made["parameters"] = {**(entry.get("parameters") or {}), **(split.host if split else {}), "on_host": host}
    made["work_pool"] = {**entry["work_pool"], "work_queue_name": queue_of(host)}
    made["tags"] = [*entry.get("tags", []), f"host:{host}"]
    return made


def fleet_deployment(entry: dict[str, Any]) -> dict[str, Any] | None:
    """What stays of a per-host entry for the whole fleet (any worker), or None when all of it is per host."""
    split = SPLIT.get(entry["entrypoint"])
    if split is None:
        return None
    kept = {"name": entry["name"], **copy.deepcopy(entry)}
    kept["description"] = split.fleet_says
    kept["parameters"] = {**(entry.get("parameters") or {}), **split.fleet}
    kept["tags"] = [t for t in entry.get("tags", []) if t != PER_HOST_TAG]
    return kept


def per_host_spec(spec: dict[str, Any], hosts: list[str]) -> dict[str, Any]:
    """``prefect.yaml``'s content with each ``per-host`` deployment replaced by its fleet-wide part (if any) and one
    copy per host, in the order of ``hosts``; its anchors section (``definitions``) is left out."""
    if not hosts:
        raise ValueError("no hosts to make deployments for")
    made = {key: value for key, value in spec.items() if key not in ("definitions", "deployments")}
    deployments: list[dict[str, Any]] = []
    for entry in spec.get("deployments") or []:
        if PER_HOST_TAG not in (entry.get("tags") or []):
            deployments.append({"name": entry["name"], **copy.deepcopy(entry)})
            continue
        if (kept := fleet_deployment(entry)) is not None:
            deployments.append(kept)
        deployments += [per_host_deployment(entry, host) for host in hosts]
    made["deployments"] = deployments
    return made


class _PlainDumper(yaml.SafeDumper):
    """No ``&id001`` anchors: the file is read by people (and diffed), and prefect.yaml's pool anchor is shared."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(spec: dict[str, Any], hosts: list[str], source: Path) -> str:
    header = [f"# Generated by `python deployments/per_host.py write` from {source.name} and the settings' hosts",
              f"# ({', '.join(hosts)}). Do not edit: change {source.name} or `hosts`, and write it again. Deploy with",
              "#   prefect --no-prompt deploy --all --prefect-file prefect.hosts.yaml",
              "# and start each host's worker with",
              "#   prefect worker start --pool runbooks --work-queue default --work-queue host-<host>",
              "# (RUNBOOKS_HOST_NAME=<host> in its environment). docs/scale-out.md explains why.", ""]
    return "\n".join(header) + yaml.dump(spec, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True, width=120)


def write(hosts: list[str], *, source: Path = PREFECT_YAML, output: Path = OUTPUT) -> list[str]:
    """Write the per-host file atomically (everything is worked out first); returns what to tell the operator: one
    line per per-host deployment, then the commands that come next."""
    spec = yaml.safe_load(source.read_text())
    made = per_host_spec(spec, hosts)
    text = render(made, hosts, source)
    shown = os.path.relpath(output) if output.is_absolute() and output.is_relative_to(Path.cwd()) else str(output)
    lines = [f"wrote {shown}: {len(made['deployments'])} deployments, these per host:"]
    lines += [f"  {d['name']:<40} work queue {d['work_pool'].get('work_queue_name', DEFAULT_QUEUE)}"
              for d in made["deployments"] if PER_HOST_TAG in d.get("tags", [])]
    lines += [f"next: prefect --no-prompt deploy --all --prefect-file {shown}"]
    lines += [f"on {host}: RUNBOOKS_HOST_NAME={host} prefect worker start --pool runbooks --work-queue "
              f"{DEFAULT_QUEUE} --work-queue {queue_of(host)}" for host in hosts]
    if gone := [e for e in spec.get("deployments") or []
                if PER_HOST_TAG in (e.get("tags") or []) and e["entrypoint"] not in SPLIT]:
        lines += ["if prefect.yaml was deployed to this server before, delete the deployments these copies replace "
                  "(or they still run on whichever worker is free): "
                  + "; ".join(f"prefect deployment delete {_flow_of(e)}/{e['name']}" for e in gone)]
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return lines


def _flow_of(entry: dict[str, Any]) -> str:
    """The flow name (the runbook's kebab-case name) of an entry: its module's ``RUNBOOK``."""
    from runbooks.flows import RUNBOOKS

    return next((name for name, runbook in RUNBOOKS.items() if runbook.entrypoint == entry["entrypoint"]),
                entry["entrypoint"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deployments/per_host.py", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["write"])
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to write (default {OUTPUT})")
    parser.add_argument("--prefect-file", type=Path, default=PREFECT_YAML, help="the deployments to start from")
    args = parser.parse_args(argv)
    from runbooks.core.errors import ConfigurationError, RunbookError
    from runbooks.settings import load_settings

    try:
        settings = load_settings()
        if not settings.hosts:
            raise ConfigurationError("the settings declare no hosts, so there is no host to make deployments for.",
                                     hint='declare the fleet at the top of runbooks.toml, e.g. hosts = ["worker-1", '
                                     '"worker-2"] (or RUNBOOKS_HOSTS), then write again; nothing was written.')
        try:
            lines = write(list(settings.hosts), source=args.prefect_file, output=args.output)
        except (OSError, yaml.YAMLError, ValueError, KeyError) as exc:
            raise ConfigurationError(f"cannot make the per-host deployments from {str(args.prefect_file)!r} into "
                                     f"{str(args.output)!r}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}.",
                                     hint="fix the file or the path; nothing was written.") from None
    except RunbookError as exc:
        print(f"runbooks: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
