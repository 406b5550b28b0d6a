"""Docker cleanup against the real local engine, scoped by each test's own label: the selection is exactly the
stopped containers, dangling images (and, when asked, unused volumes) the rule means, never a running, protected,
tagged, used or young one; removal removes exactly that selection, re-checks each object first (started, tagged,
put to use since: skipped), counts one already gone as removed, stops once enough is freed, and prunes build cache
entry by entry; an absent engine is one ``DockerUnavailable`` line that keeps credentials out; the Prefect tasks
return the models from inside a flow."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound
from prefect import flow

from runbooks.adapters import dockerclean
from runbooks.adapters.dockerclean import DockerObject, DockerOutcome, connect, data_root, remove, select
from runbooks.core.errors import DockerUnavailable
from runbooks.settings import DockerRule
from runbooks.tasks.docker import remove_docker_objects, select_docker_objects
from tests.dockerd import (
    BASE_IMAGE,
    SESSION,
    SESSION_LABEL,
    created_container,
    dangling_image,
    docker_required,
    exited_container,
    running_container,
    volume,
)

IMAGE_BYTES = os.path.getsize("/bin/busybox") if os.path.exists("/bin/busybox") else 1


def rule(label: str, **overrides: Any) -> DockerRule:
    return DockerRule(**{"older_than": timedelta(0), "only_label": label, **overrides})


def exists(client: Any, kind: str, ident: str) -> bool:
    inspect = {"container": client.api.inspect_container, "image": client.api.inspect_image,
               "volume": client.api.inspect_volume}[kind]
    try:
        inspect(ident)
    except NotFound:
        return False
    return True


def plan(client: Any, docker_rule: DockerRule) -> list[DockerObject]:
    return select(client, docker_rule, now=datetime.now(UTC))


def test_the_selection_is_exactly_the_stopped_containers_and_dangling_images_and_removal_removes_them(
        docker_engine: Any, docker_label: str) -> None:
    client = docker_engine
    exited = exited_container(client, docker_label)
    created = created_container(client, docker_label)
    running = running_container(client, docker_label)
    protected = exited_container(client, docker_label, protect=True)
    image = dangling_image(client, docker_label)
    protected_image = dangling_image(client, docker_label, protect=True)
    unused_volume = volume(client, docker_label)
    docker_rule = rule(docker_label)

    selected = plan(client, docker_rule)

    assert [o.kind for o in selected] == ["container", "container", "image"]
    assert {o.id for o in selected[:2]} == {exited.id, created.id}
    assert selected[2].id == image and selected[2].detail == "dangling" and selected[2].bytes >= IMAGE_BYTES
    assert {o.name for o in selected[:2]} == {exited.name, created.name}

    outcome = remove(client, selected, docker_rule)

    assert [o.id for o in outcome.removed] == [o.id for o in selected]
    assert outcome.failed == [] and outcome.skipped == [] and not outcome.stopped_early
    assert outcome.reclaimed_bytes == sum(o.bytes for o in selected) >= IMAGE_BYTES
    for kind, ident in (("container", exited.id), ("container", created.id), ("image", image)):
        assert not exists(client, kind, ident), f"{kind} {ident} survived"
    for kind, ident in (("container", running.id), ("container", protected.id), ("image", protected_image),
                        ("image", BASE_IMAGE), ("volume", unused_volume)):
        assert exists(client, kind, ident), f"{kind} {ident} was removed"
    assert Path(data_root(client)).is_absolute()


def test_an_image_a_kept_container_uses_is_kept_and_one_a_removed_container_used_goes_after_it(
        docker_engine: Any, docker_label: str) -> None:
    client = docker_engine
    kept_image, freed_image = dangling_image(client, docker_label), dangling_image(client, docker_label)
    exited_container(client, docker_label, image=kept_image, protect=True)  # stopped, not selected: keeps its image
    user = exited_container(client, docker_label, image=freed_image)

    selected = plan(client, rule(docker_label))
    assert [(o.kind, o.id) for o in selected] == [("container", user.id), ("image", freed_image)]
    assert plan(client, rule(docker_label, containers=False)) == []  # without containers, both images stay used

    outcome = remove(client, selected, rule(docker_label))
    assert [o.id for o in outcome.removed] == [user.id, freed_image] and outcome.failed == []
    assert exists(client, "image", kept_image)


def test_only_unused_unprotected_volumes_are_selected_and_only_when_enabled(docker_engine: Any,
                                                                             docker_label: str) -> None:
    client = docker_engine
    unused = volume(client, docker_label)
    protected = volume(client, docker_label, protect=True)
    mounted_running, mounted_stopped = volume(client, docker_label), volume(client, docker_label)
    running_container(client, docker_label, volume=mounted_running)
    exited_container(client, docker_label, volume=mounted_stopped, protect=True)

    assert plan(client, rule(docker_label, containers=False)) == []
    selected = plan(client, rule(docker_label, containers=False, volumes=True))
    assert [(o.kind, o.id) for o in selected] == [("volume", unused)]

    outcome = remove(client, selected, rule(docker_label, volumes=True))
    assert [o.id for o in outcome.removed] == [unused]
    assert not exists(client, "volume", unused)
    for name in (protected, mounted_running, mounted_stopped):
        assert exists(client, "volume", name)


def test_nothing_younger_than_older_than_is_selected(docker_engine: Any, docker_label: str) -> None:
    client = docker_engine
    exited_container(client, docker_label)
    created_container(client, docker_label)
    dangling_image(client, docker_label)
    volume(client, docker_label)
    hour = rule(docker_label, older_than=timedelta(hours=1), volumes=True)

    assert select(client, hour, now=datetime.now(UTC)) == []
    # The same objects two hours from now are old enough: the age rule, not something else, kept them out.
    later = select(client, hour, now=datetime.now(UTC) + timedelta(hours=2))
    assert sorted(o.kind for o in later) == ["container", "container", "image", "volume"]


def test_removal_skips_what_changed_since_the_selection(docker_engine: Any, docker_label: str) -> None:
    client = docker_engine
    started = created_container(client, docker_label, command=["sleep", "600"])
    tagged, used = dangling_image(client, docker_label), dangling_image(client, docker_label)
    docker_rule = rule(docker_label)
    selected = plan(client, docker_rule)
    assert {o.id for o in selected} == {started.id, tagged, used}

    started.start()
    client.api.tag(tagged, "runbooks-test/tagged", SESSION)
    created_container(client, docker_label, image=used)
    outcome = remove(client, selected, docker_rule)

    assert outcome.removed == [] and outcome.failed == [] and outcome.reclaimed_bytes == 0
    why = {item.object.id: item.error for item in outcome.skipped}
    assert why[started.id] == "now running"
    assert why[tagged] == f"now tagged runbooks-test/tagged:{SESSION}"
    assert why[used].startswith("now used by container ")
    for kind, ident in (("container", started.id), ("image", tagged), ("image", used)):
        assert exists(client, kind, ident)


def test_removal_stops_once_enough_is_freed(docker_engine: Any, docker_label: str) -> None:
    client = docker_engine
    first, second = exited_container(client, docker_label), exited_container(client, docker_label)
    image = dangling_image(client, docker_label)
    selected = plan(client, rule(docker_label))
    assert len(selected) == 3

    outcome = remove(client, selected, rule(docker_label), enough=lambda freed: True)

    assert outcome.stopped_early and [o.id for o in outcome.removed] == [selected[0].id]
    left = {first.id, second.id, image} - {selected[0].id}
    assert all(exists(client, "image" if ident == image else "container", ident) for ident in left)


def test_an_object_removed_behind_its_back_counts_as_already_gone(docker_engine: Any, docker_label: str) -> None:
    client = docker_engine
    container = exited_container(client, docker_label)
    image = dangling_image(client, docker_label)
    selected = plan(client, rule(docker_label))
    assert [o.id for o in selected] == [container.id, image] and selected[1].bytes > 0

    container.remove()
    client.api.remove_image(image)
    outcome = remove(client, selected, rule(docker_label))

    assert [(o.id, o.bytes, o.detail) for o in outcome.removed] == [(container.id, 0, "already gone"),
                                                                    (image, 0, "already gone")]
    assert outcome.reclaimed_bytes == 0 and outcome.failed == [] and outcome.skipped == []


def test_a_removal_the_engine_refuses_is_a_failure_and_the_run_goes_on(
        docker_engine: Any, docker_label: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = docker_engine
    raced = created_container(client, docker_label, command=["sleep", "600"])
    image = dangling_image(client, docker_label)
    selected = plan(client, rule(docker_label))
    raced.start()
    # The container starts between the re-check and the removal: only the engine can refuse it now.
    monkeypatch.setattr(dockerclean, "_still_qualifies", lambda *_args: None)

    outcome = remove(client, selected, rule(docker_label))

    assert [f.object.id for f in outcome.failed] == [raced.id]
    assert outcome.failed[0].error.startswith("409 ") and "\n" not in outcome.failed[0].error
    assert [o.id for o in outcome.removed] == [image] and exists(client, "container", raced.id)


def test_build_cache_is_pruned_entry_by_entry_and_never_selected_under_a_label(
        docker_engine: Any, docker_label: str, tmp_path: Path) -> None:
    cli = shutil.which("docker", path="/usr/bin") or shutil.which("docker")
    if not cli:
        (pytest.fail if docker_required() else pytest.skip)("no docker CLI to make build cache with")
    client = docker_engine
    before = {b["ID"] for b in client.df().get("BuildCache") or []}
    (tmp_path / "blob").write_bytes(os.urandom(300_000))
    (tmp_path / "Dockerfile").write_text(f"FROM scratch\nCOPY blob /blob\n"
                                         f"LABEL {docker_label} {SESSION_LABEL}={SESSION}\n")
    build = subprocess.run([cli, "build", "-q", str(tmp_path)], env={**os.environ, "DOCKER_BUILDKIT": "1"},
                           capture_output=True, text=True, timeout=120)
    if build.returncode and "buildx" in build.stderr:
        pytest.skip(f"this docker CLI cannot build with BuildKit: {build.stderr.strip()}")
    assert build.returncode == 0, build.stderr
    ours = {b["ID"] for b in client.df().get("BuildCache") or []} - before
    try:
        assert ours
        assert plan(client, rule(docker_label, containers=False, images=False)) == []  # cache carries no labels
        engine_wide = DockerRule(older_than=timedelta(0), containers=False, images=False)
        selected = [o for o in plan(client, engine_wide) if o.id in ours]  # only ever remove what this test made
        assert {o.id for o in selected} == ours and {o.kind for o in selected} == {"build-cache"}
        older = engine_wide.model_copy(update={"older_than": timedelta(hours=1)})
        assert [o for o in select(client, older, now=datetime.now(UTC)) if o.id in ours] == []

        outcome = remove(client, selected, engine_wide)

        assert {o.id for o in outcome.removed} == ours and outcome.failed == [] and outcome.skipped == []
        assert outcome.reclaimed_bytes >= 300_000
        assert ours.isdisjoint(b["ID"] for b in client.df().get("BuildCache") or [])
    finally:  # build cache carries no label for docker_label's teardown to find
        for ident in ours:
            client.api.prune_builds(filters={"id": f"^{ident}$"}, all=True)


def test_an_absent_engine_is_one_line_with_a_hint() -> None:
    with pytest.raises(DockerUnavailable) as caught:
        connect(DockerRule(base_url="unix:///nonexistent.sock"))
    message = str(caught.value)
    assert "\n" not in message and "HINT: start dockerd" in message and "unix:///nonexistent.sock" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_credentials_in_the_engine_address_never_reach_the_message() -> None:
    with pytest.raises(DockerUnavailable) as caught:
        connect(DockerRule(base_url="tcp://user:secret@127.0.0.1:1"))
    message = str(caught.value)
    assert "secret" not in message and "HINT:" in message and "\n" not in message
    assert "127.0.0.1:1" in message


def test_the_tasks_select_and_remove_inside_a_flow(docker_engine: Any, docker_label: str) -> None:
    client = docker_engine
    container = exited_container(client, docker_label)
    first, second = dangling_image(client, docker_label), dangling_image(client, docker_label)
    docker_rule = rule(docker_label)

    @flow(name="docker-cleanup-test")
    def cleanup() -> tuple[list[DockerObject], DockerOutcome]:
        objects = select_docker_objects(rule=docker_rule, now=datetime.now(UTC))
        return objects, remove_docker_objects(rule=docker_rule, objects=objects, need_bytes=1)

    objects, outcome = cleanup()

    assert all(isinstance(o, DockerObject) for o in objects) and isinstance(outcome, DockerOutcome)
    assert [o.id for o in objects][0] == container.id and {o.id for o in objects[1:]} == {first, second}
    # The container's writable layer is empty (0 bytes), so need_bytes=1 is reached by the first image.
    assert [o.id for o in outcome.removed] == [o.id for o in objects[:2]] and outcome.stopped_early
    assert not exists(client, "container", container.id) and exists(client, "image", objects[2].id)
