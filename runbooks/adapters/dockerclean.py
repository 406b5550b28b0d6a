"""Docker leftovers through the engine's API: ``docker system prune``, but selective and re-checked.

``select`` decides, from one rule, exactly which stopped containers, dangling images, build cache entries and
unused volumes qualify; a dry run shows that list and a real run hands the same list to ``remove``. ``remove``
re-reads each object just before removing it and skips what changed since (started, tagged, put to use), so an
approved plan never removes more than it showed. Engine-wide prunes are never used for containers, images or
volumes: they would remove what the plan did not show.

Docker SDK errors are mapped here, once: an engine that is absent, refuses or answers 5xx is
``DockerUnavailable`` (retried); a removal the engine refuses (409 and other API errors) is a ``DockerFailure``
in the outcome and the run goes on. Messages are one line, end with a ``HINT:`` and never carry the credentials of
a ``base_url``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn

import docker
import requests
from docker.errors import APIError, DockerException, NotFound
from pydantic import BaseModel

from runbooks.core.errors import ConfigurationError, DockerUnavailable
from runbooks.core.instants import parse_instant
from runbooks.core.redact import MASK, scrub
from runbooks.settings import DockerRule

# Long enough for the engine to delete a large image or container layer (vfs copies whole root filesystems),
# short enough that a hung engine fails the task instead of hanging the run.
TIMEOUT_SECONDS = 120
STOPPED = ("exited", "created", "dead")
HINT_ENGINE = "start dockerd or set [cleanup] rules docker base_url"
_USERINFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^@/]*)@", re.I)
# Build cache ids are BuildKit's random base-32 strings; the engine filters on them as a regular expression, so
# anything else is refused rather than passed on as a pattern.
_CACHE_ID = re.compile(r"^[A-Za-z0-9]+$")

DockerKind = Literal["container", "image", "build-cache", "volume"]


class DockerObject(BaseModel):
    kind: DockerKind
    id: str
    """full id; a volume's name"""
    name: str
    """what a human recognises: container name, short image id, volume name, build cache description"""
    created_at: datetime | None
    bytes: int
    """what removing it reclaims as the engine reports it; 0 when unknown"""
    detail: str = ""


class DockerFailure(BaseModel):
    object: DockerObject
    error: str


class DockerOutcome(BaseModel):
    removed: list[DockerObject]
    failed: list[DockerFailure]
    skipped: list[DockerFailure]
    """changed since selection: now running, now protected, now tagged or used"""
    reclaimed_bytes: int
    stopped_early: bool


# -- where SDK errors enter ------------------------------------------------------------------------------------------

def _where(base_url: str | None) -> str:
    """The engine's address for a message, without any credentials it carries."""
    if not base_url:
        from_env = os.environ.get("DOCKER_HOST")
        return _where(from_env) + " (DOCKER_HOST)" if from_env else "unix:///var/run/docker.sock (default)"
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", base_url)


def _secrets(base_url: str | None) -> list[str]:
    match = _USERINFO.match(base_url or os.environ.get("DOCKER_HOST") or "")
    if not match:
        return []
    userinfo = match["userinfo"]
    return [userinfo, *userinfo.split(":", 1)[1:]]


def _one_line(exc: BaseException, base_url: str | None = None) -> str:
    """An exception as one short line, scrubbed of the base_url's credentials."""
    if isinstance(exc, APIError):
        reason = exc.response.reason if exc.response is not None else ""
        text = f"{exc.status_code} {exc.explanation or reason}"
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    if base_url:
        text = text.replace(base_url, _where(base_url))
    text = scrub(text, _secrets(base_url))
    return text if len(text) <= 300 else text[:297] + "..."


def _unavailable(base_url: str | None, exc: BaseException, doing: str) -> NoReturn:
    raise DockerUnavailable(f"Docker engine at {_where(base_url)} did not answer while {doing}: "
                            f"{_one_line(exc, base_url)}.", hint=HINT_ENGINE) from None


@contextmanager
def _engine(client: Any, doing: str) -> Iterator[None]:
    """Map connection failures and 5xx answers to ``DockerUnavailable``; a 4xx to ``ConfigurationError`` (the
    request itself was wrong: a malformed label filter or an engine too old for the API)."""
    base_url = getattr(getattr(client, "api", None), "base_url", None)
    try:
        yield
    except APIError as exc:
        if exc.status_code is not None and exc.status_code >= 500:
            _unavailable(base_url, exc, doing)
        raise ConfigurationError(f"Docker engine at {_where(base_url)} refused the request while {doing}: "
                                 f"{_one_line(exc, base_url)}.",
                                 hint="check [cleanup] rules docker only_label and the engine's version "
                                      "(API 1.41 or newer)") from None
    except (requests.exceptions.RequestException, OSError, DockerException) as exc:
        _unavailable(base_url, exc, doing)


def connect(rule: DockerRule) -> Any:
    """A ``docker.DockerClient`` for ``rule.base_url`` (None: DOCKER_HOST or the default socket).

    The SDK negotiates the API version on construction, so an absent or refusing engine fails here, as one
    ``DockerUnavailable`` line, instead of in the middle of a selection.
    """
    try:
        if rule.base_url:
            client = docker.DockerClient(base_url=rule.base_url, timeout=TIMEOUT_SECONDS)
        else:
            client = docker.from_env(timeout=TIMEOUT_SECONDS)
    except (DockerException, requests.exceptions.RequestException, OSError) as exc:
        _unavailable(rule.base_url, exc, "connecting")
    return client


def data_root(client: Any) -> str:
    """The engine's data directory (``DockerRootDir``): the file system a cleanup of it frees space on."""
    with _engine(client, "reading its info"):
        return str(client.info()["DockerRootDir"])


# -- selection -------------------------------------------------------------------------------------------------------

def _label_matcher(rule: DockerRule) -> Callable[[dict[str, str] | None], bool]:
    """Whether an object's labels let the rule consider it: never ``protect_label``; with ``only_label``, only
    objects carrying it ('key' or 'key=value')."""
    key, sep, value = (rule.only_label or "").partition("=")

    def qualifies(labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        if rule.protect_label in labels:
            return False
        if not rule.only_label:
            return True
        return key in labels and (not sep or labels[key] == value)

    return qualifies


def _engine_label_filter(rule: DockerRule) -> dict[str, Any]:
    return {"label": rule.only_label} if rule.only_label else {}


def _old_enough(created_at: datetime | None, cutoff: datetime, rule: DockerRule) -> bool:
    # An object whose age the engine does not tell is only old enough when any age is.
    if created_at is None:
        return rule.older_than <= timedelta(0)
    return created_at <= cutoff


def _epoch(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) and value > 0 else None


def _size(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0  # absent (omitted when 0) or -1: unknown


def select(client: Any, rule: DockerRule, *, now: datetime) -> list[DockerObject]:
    """What ``rule`` would remove, in removal order: containers, dangling images, build cache, volumes.

    The engine's filters narrow the listing; the label and age rules are applied here again, so the result is
    exactly what the rule means whatever the engine's filters do. Build cache carries no labels: with
    ``only_label`` none is selected.

    Args:
        now: the selection time; objects created after ``now - rule.older_than`` are too young.
    Returns:
        The plan; hand this same list to ``remove``.
    """
    cutoff = now - rule.older_than
    qualifies = _label_matcher(rule)
    selected: list[DockerObject] = []
    chosen: set[str] = set()
    if rule.containers:
        with _engine(client, "listing stopped containers"):
            containers = client.api.containers(all=True, size=True, filters={"status": list(STOPPED),
                                                                             **_engine_label_filter(rule)})
        for c in containers:
            created_at = _epoch(c.get("Created"))
            if (c.get("State") in STOPPED and qualifies(c.get("Labels"))
                    and _old_enough(created_at, cutoff, rule)):
                names = c.get("Names") or []
                chosen.add(c["Id"])
                selected.append(DockerObject(kind="container", id=c["Id"],
                                             name=names[0].lstrip("/") if names else c["Id"][:12],
                                             created_at=created_at, bytes=_size(c.get("SizeRw")),
                                             detail=str(c.get("Status") or c.get("State")).lower()))
    if rule.images:
        with _engine(client, "listing dangling images"):
            # Every container, whatever its labels: a stopped container keeps its image, and only the containers
            # this plan removes first release theirs.
            everything = client.api.containers(all=True)
            images = client.api.images(filters={"dangling": True, **_engine_label_filter(rule)})
        used = {c.get("ImageID") for c in everything if c["Id"] not in chosen}
        for i in images:
            created_at = _epoch(i.get("Created"))
            tags = [t for t in i.get("RepoTags") or [] if t != "<none>:<none>"]
            if (not tags and i["Id"] not in used and qualifies(i.get("Labels"))
                    and _old_enough(created_at, cutoff, rule)):
                selected.append(DockerObject(kind="image", id=i["Id"], name=_short(i["Id"]), created_at=created_at,
                                             bytes=_size(i.get("Size")), detail="dangling"))
    if rule.build_cache and not rule.only_label:
        with _engine(client, "reading its disk usage"):
            cache = client.df().get("BuildCache") or []
        for b in cache:
            last_used = parse_instant(b.get("LastUsedAt")) or parse_instant(b.get("CreatedAt"))
            if not b.get("InUse") and _old_enough(last_used, cutoff, rule):
                selected.append(DockerObject(kind="build-cache", id=b["ID"],
                                             name=str(b.get("Description") or b.get("Type") or b["ID"]),
                                             created_at=parse_instant(b.get("CreatedAt")), bytes=_size(b.get("Size")),
                                             detail=f"{b.get('Type', 'cache')}, last used {b.get('LastUsedAt')}"))
    if rule.volumes:
        with _engine(client, "listing unused volumes"):
            listed = client.api.volumes(filters={"dangling": True, **_engine_label_filter(rule)})
            sizes = {v["Name"]: (v.get("UsageData") or {}).get("Size") for v in client.df().get("Volumes") or []}
        for v in listed.get("Volumes") or []:
            created_at = parse_instant(v.get("CreatedAt"))
            if qualifies(v.get("Labels")) and _old_enough(created_at, cutoff, rule):
                selected.append(DockerObject(kind="volume", id=v["Name"], name=v["Name"], created_at=created_at,
                                             bytes=_size(sizes.get(v["Name"])), detail="unused"))
    return selected


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


# -- removal ---------------------------------------------------------------------------------------------------------

def _still_qualifies(client: Any, obj: DockerObject, rule: DockerRule) -> str | None:
    """Why ``obj`` must now be left alone, or None. Raises ``NotFound`` when it is already gone."""
    if obj.kind == "container":
        found = client.api.inspect_container(obj.id)
        status = (found.get("State") or {}).get("Status")
        if status not in STOPPED:
            return f"now {status}"
        if rule.protect_label in ((found.get("Config") or {}).get("Labels") or {}):
            return f"now carries {rule.protect_label!r}"
    elif obj.kind == "image":
        found = client.api.inspect_image(obj.id)
        tags = [t for t in found.get("RepoTags") or [] if t != "<none>:<none>"]
        if tags:
            return f"now tagged {', '.join(tags)}"
        if rule.protect_label in ((found.get("Config") or {}).get("Labels") or {}):
            return f"now carries {rule.protect_label!r}"
        users = client.api.containers(all=True, filters={"ancestor": obj.id})
        if users:
            return f"now used by container {users[0]['Id'][:12]}"
    elif obj.kind == "volume":
        found = client.api.inspect_volume(obj.id)
        if rule.protect_label in (found.get("Labels") or {}):
            return f"now carries {rule.protect_label!r}"
        users = client.api.containers(all=True, filters={"volume": obj.id})
        if users:
            return f"now used by container {users[0]['Id'][:12]}"
    return None


def _remove_one(client: Any, obj: DockerObject) -> None:
    if obj.kind == "container":
        client.api.remove_container(obj.id, v=False, force=False)  # force=False: the engine refuses a running one
    elif obj.kind == "image":
        client.api.remove_image(obj.id, force=False, noprune=True)  # 409 while used; untagged parents stay
    elif obj.kind == "volume":
        client.api.remove_volume(obj.id, force=False)  # refused (409) while a container uses it


def _remove_cache(client: Any, obj: DockerObject, rule: DockerRule) -> tuple[int | None, str | None]:
    """Prune one build cache entry: (bytes reclaimed, None), or (None, why it was kept).

    The engine has no per-entry removal; its prune accepts one ``id`` filter value, matched as a regular
    expression, so the id is anchored. ``until`` lets the engine itself re-check the age, and it never prunes an
    entry in use. ``all`` is needed for entries shared with an image.
    """
    if not _CACHE_ID.match(obj.id):
        raise ValueError(f"unexpected build cache id {obj.id!r}")
    filters: dict[str, Any] = {"id": f"^{obj.id}$"}
    if rule.older_than > timedelta(0):
        filters["until"] = f"{int(rule.older_than.total_seconds())}s"
    answer = client.api.prune_builds(filters=filters, all=True)
    if obj.id not in (answer.get("CachesDeleted") or []):
        return None, "in use, used since selection, or already gone"
    return _size(answer.get("SpaceReclaimed")), None


def remove(client: Any, objects: list[DockerObject], rule: DockerRule, *,
           enough: Callable[[int], bool] = lambda freed: False) -> DockerOutcome:
    """Remove ``objects`` (a ``select`` result) in their order, re-checking each just before.

    An object that no longer qualifies is skipped with why; one already gone counts as removed with 0 bytes
    ("already gone"); one the engine refuses (409 conflict, any other API error) is a failure and the run goes
    on. After each removal ``enough(reclaimed so far)`` may stop the run early.

    ``reclaimed_bytes`` adds up the bytes the engine reported for what was removed: a container's writable layer,
    an image's whole ``Size`` (layers shared with other images are counted too, so it may overstate), a build
    cache entry's ``SpaceReclaimed``, a volume's usage.

    Raises:
        DockerUnavailable: the engine stopped answering; a retry re-checks everything, so it is safe.
    """
    removed: list[DockerObject] = []
    failed: list[DockerFailure] = []
    skipped: list[DockerFailure] = []
    reclaimed = 0
    base_url = client.api.base_url
    for obj in objects:
        try:
            if obj.kind == "build-cache":
                freed, why = _remove_cache(client, obj, rule)
                if freed is None:
                    skipped.append(DockerFailure(object=obj, error=why or "kept"))
                    continue
                done = obj.model_copy(update={"bytes": freed})
            else:
                why = _still_qualifies(client, obj, rule)
                if why:
                    skipped.append(DockerFailure(object=obj, error=why))
                    continue
                _remove_one(client, obj)
                done = obj
        except NotFound:
            done = obj.model_copy(update={"bytes": 0, "detail": "already gone"})
        except APIError as exc:
            failed.append(DockerFailure(object=obj, error=_one_line(exc, base_url)))
            continue
        except ValueError as exc:
            failed.append(DockerFailure(object=obj, error=str(exc)))
            continue
        except (requests.exceptions.RequestException, OSError, DockerException) as exc:
            _unavailable(base_url, exc, f"removing {obj.kind} {obj.name!r}")
        removed.append(done)
        reclaimed += done.bytes
        if enough(reclaimed):
            return DockerOutcome(removed=removed, failed=failed, skipped=skipped, reclaimed_bytes=reclaimed,
                                 stopped_early=len(removed) + len(failed) + len(skipped) < len(objects))
    return DockerOutcome(removed=removed, failed=failed, skipped=skipped, reclaimed_bytes=reclaimed,
                         stopped_early=False)
