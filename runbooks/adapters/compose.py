"""Docker Compose services through the engine's API (the Docker SDK), found by the labels Compose puts on the
containers it makes (``com.docker.compose.project``, ``com.docker.compose.service``), so no compose file and no
``docker compose`` binary are needed on the worker. One-off containers (``docker compose run``) are not the service.

A restart is the methtrader runbook's ``docker-compose restart <service>``: each container of the service restarted
in place (same container, same configuration; ``stop_timeout_seconds`` before SIGKILL). Recreating with a new
configuration (``up -d --force-recreate``) is a deploy, not this.

SDK errors are mapped here, once: an engine that is absent, refuses the connection or answers 5xx is
``DockerUnavailable`` (retried by the tasks), a 4xx ``ConfigurationError``. Messages never carry the credentials of a
``base_url``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import docker
import requests
from docker.errors import APIError, DockerException, NotFound

from runbooks.core.errors import ConfigurationError, DockerUnavailable
from runbooks.core.instants import parse_instant
from runbooks.core.redact import MASK, scrub
from runbooks.decisions.services import ContainerReading
from runbooks.settings.services import ComposeService

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"
TIMEOUT_SECONDS = 120
_USERINFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)[^@/]*@", re.I)
HINT_ENGINE = "start the Docker engine or set [services.compose.<name>] base_url"


def _where(service: ComposeService) -> str:
    if not service.base_url:
        return "the local Docker engine (DOCKER_HOST or /var/run/docker.sock)"
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", service.base_url)


def _unavailable(service: ComposeService, exc: BaseException, doing: str) -> NoReturn:
    text = " ".join((str(exc) or type(exc).__name__).split())
    if service.base_url:
        text = text.replace(service.base_url, _where(service))
    raise DockerUnavailable(f"{_where(service)} did not answer while {doing}: {scrub(text)[:300]}.",
                            hint=HINT_ENGINE) from None


@contextmanager
def _engine(service: ComposeService, doing: str) -> Iterator[None]:
    try:
        yield
    except APIError as exc:
        if exc.status_code is not None and exc.status_code >= 500:
            _unavailable(service, exc, doing)
        raise ConfigurationError(f"{_where(service)} refused the request while {doing}: {exc.status_code} "
                                 f"{scrub(str(exc.explanation or ''))[:200]}.",
                                 hint="check the engine's version (API 1.41 or newer) and the service's labels"
                                 ) from None
    except (requests.exceptions.RequestException, OSError, DockerException) as exc:
        _unavailable(service, exc, doing)


def connect(service: ComposeService) -> Any:
    """A ``docker.DockerClient`` for the service's engine; an absent engine fails here, as one line."""
    with _engine(service, "connecting"):
        if service.base_url:
            return docker.DockerClient(base_url=service.base_url, timeout=TIMEOUT_SECONDS)
        return docker.from_env(timeout=TIMEOUT_SECONDS)


def _filters(service: ComposeService) -> dict[str, Any]:
    return {"label": [f"{PROJECT_LABEL}={service.project}", f"{SERVICE_LABEL}={service.service}"]}


def read_containers(client: Any, service: ComposeService) -> list[ContainerReading]:
    """The service's containers (stopped ones included), by name."""
    found = []
    with _engine(service, f"listing {service.project}/{service.service}"):
        listed = client.api.containers(all=True, filters=_filters(service))
        for item in listed:
            if (item.get("Labels") or {}).get(ONEOFF_LABEL) == "True":
                continue
            try:
                info = client.api.inspect_container(item["Id"])
            except NotFound:  # removed between the list and the inspect
                continue
            found.append(_reading(info))
    return sorted(found, key=lambda c: c.name)


def _reading(info: dict[str, Any]) -> ContainerReading:
    state = info.get("State") or {}
    health = (state.get("Health") or {}).get("Status") or None
    return ContainerReading(id=info["Id"], name=str(info.get("Name") or info["Id"][:12]).lstrip("/"),
                            state=str(state.get("Status") or "unknown"), health=health,
                            restart_count=int(info.get("RestartCount") or 0),
                            started_at=parse_instant(state.get("StartedAt")),
                            exit_code=state.get("ExitCode") if state.get("Status") != "running" else None)


def restart_containers(client: Any, service: ComposeService, containers: list[ContainerReading]) -> list[str]:
    """Restart each container in place (``docker restart -t <stop_timeout_seconds>``); returns their names. One
    removed meanwhile is skipped: the wait then finds the service without it."""
    restarted = []
    for container in containers:
        with _engine(service, f"restarting {container.name}"):
            try:
                client.api.restart(container.id, timeout=service.stop_timeout_seconds)
            except NotFound:
                continue
        restarted.append(container.name)
    return restarted
