"""The local Docker engine for the tests, and the objects they make on it.

No registry is reachable, so the session imports one tiny image built here from ``/bin/busybox``. Everything a
test makes carries the session's label and its own (``docker_label``), and the cleanup tests pass that label as
``only_label``: a test never selects, and its teardown never removes, what it did not make on a shared engine.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from collections.abc import Iterator
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from runbooks.adapters.dockerclean import connect
from runbooks.core.errors import DockerUnavailable
from runbooks.settings import DockerRule

BUSYBOX = Path("/bin/busybox")
SESSION = uuid.uuid4().hex[:12]
SESSION_LABEL = "runbooks.test"  # = SESSION on everything this session makes (containers inherit it from the image)
RUN_LABEL = "runbooks.test.run"
PROTECT = "runbooks.protect"
# A tag per session: two sessions on one engine must not move each other's tag.
BASE_IMAGE = f"runbooks-test/busybox:{SESSION}"


def docker_required() -> bool:
    """Whether CI asked for a failure instead of a skip when no engine answers.

    ``tests/conftest.py`` drops every ``RUNBOOKS_*`` variable before the suite starts (settings must not leak from
    the environment), so the variable is also read from the environment this process was started with.
    """
    if os.environ.get("RUNBOOKS_REQUIRE_DOCKER") == "1":
        return True
    try:
        initial = Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"RUNBOOKS_REQUIRE_DOCKER=1" in initial


def _unavailable(why: str) -> None:
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    text = f"no Docker engine at {where}: {why.rstrip('.')}; start dockerd as .ci/run does"
    if docker_required():
        pytest.fail(text, pytrace=False)
    pytest.skip(text)


@cache
def rootfs() -> bytes:
    """A root file system holding busybox and the applets the tests run, as an uncompressed tarball."""
    if not BUSYBOX.is_file():
        _unavailable(f"{BUSYBOX} is missing to build the test image (install busybox-static)")
    data = BUSYBOX.read_bytes()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        folder = tarfile.TarInfo("bin")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        binary = tarfile.TarInfo("bin/busybox")
        binary.size, binary.mode = len(data), 0o755
        tar.addfile(binary, io.BytesIO(data))
        for applet in ("sh", "true", "sleep"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.LNKTYPE, "bin/busybox", 0o755
            tar.addfile(link)
    return out.getvalue()


def import_image(client: Any, labels: dict[str, str], *, tag: str | None = None) -> str:
    """Import the busybox root file system with ``labels``; untagged it is a dangling image. Returns its id."""
    repository, _, version = (tag or "").partition(":")
    changes = [f"LABEL {key}={value}" for key, value in labels.items()]
    answer = client.api.import_image_from_data(rootfs(), repository=repository or None, tag=version or None,
                                               changes=changes)
    last = [line for line in str(answer).splitlines() if line.strip()][-1]
    image_id = json.loads(last)["status"]
    assert str(image_id).startswith("sha256:"), answer
    return str(image_id)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A ``docker.DockerClient`` to the local engine with the session's base image imported; skipped (failed when
    ``RUNBOOKS_REQUIRE_DOCKER=1``) when no engine answers. At the end it removes everything the session made."""
    try:
        client = connect(DockerRule(older_than=timedelta(0)))
    except DockerUnavailable as exc:
        _unavailable(exc.message)
    import_image(client, {SESSION_LABEL: SESSION}, tag=BASE_IMAGE)
    try:
        yield client
    finally:
        remove_labelled(client, f"{SESSION_LABEL}={SESSION}")
        client.close()


@pytest.fixture
def docker_label(docker_engine: Any) -> Iterator[str]:
    """A label ``key=value`` unique to one test; its teardown force-removes every object carrying it."""
    label = f"{RUN_LABEL}={uuid.uuid4().hex}"
    yield label
    remove_labelled(docker_engine, label)


def remove_labelled(client: Any, label: str) -> None:
    """Force-remove the containers, then images, then volumes carrying ``label`` ('key=value')."""
    from docker.errors import NotFound

    for container in client.api.containers(all=True, filters={"label": label}):
        try:
            client.api.remove_container(container["Id"], force=True, v=True)
        except NotFound:
            pass
    for image in client.api.images(all=True, filters={"label": label}):
        try:
            client.api.remove_image(image["Id"], force=True)
        except NotFound:
            pass
    for volume in client.api.volumes(filters={"label": label}).get("Volumes") or []:
        try:
            client.api.remove_volume(volume["Name"], force=True)
        except NotFound:
            pass


# -- what the tests make --------------------------------------------------------------------------------------------

def labels_for(label: str, *, protect: bool = False) -> dict[str, str]:
    key, _, value = label.partition("=")
    labels = {SESSION_LABEL: SESSION, key: value}
    if protect:
        labels[PROTECT] = "yes"
    return labels


def created_container(client: Any, label: str, *, protect: bool = False, image: str = BASE_IMAGE,
                      command: list[str] | None = None, volume: str | None = None) -> Any:
    """A container created and never started (status ``created``)."""
    return client.containers.create(image, command or ["true"], network_mode="none",
                                    labels=labels_for(label, protect=protect),
                                    volumes={volume: {"bind": "/data", "mode": "rw"}} if volume else None)


def exited_container(client: Any, label: str, *, protect: bool = False, image: str = BASE_IMAGE,
                     volume: str | None = None) -> Any:
    """A container that ran ``true`` and exited (status ``exited``)."""
    container = created_container(client, label, protect=protect, image=image, volume=volume)
    container.start()
    assert container.wait(timeout=30)["StatusCode"] == 0
    container.reload()
    assert container.status == "exited", container.status
    return container


def running_container(client: Any, label: str, *, protect: bool = False, volume: str | None = None) -> Any:
    """A container running ``sleep 600``, without network."""
    container = created_container(client, label, protect=protect, command=["sleep", "600"], volume=volume)
    container.start()
    container.reload()
    assert container.status == "running", container.status
    return container


def dangling_image(client: Any, label: str, *, protect: bool = False) -> str:
    """An untagged image (a nonce label makes each one distinct). Returns its id."""
    return import_image(client, {**labels_for(label, protect=protect), "runbooks.test.nonce": uuid.uuid4().hex})


def volume(client: Any, label: str, *, protect: bool = False) -> str:
    """A named volume no container uses. Returns its name."""
    name = f"runbooks-test-{uuid.uuid4().hex[:16]}"
    client.volumes.create(name=name, labels=labels_for(label, protect=protect))
    return name
