"""Configuration files as tasks: read a group's files, the versions the runbook kept and the files a cluster backup
archived; keep the current files, write the targets, reload what reads them, check the server took them, and let old
kept versions go. Every write goes through ``runbooks.adapters.configfiles``, which refuses any path outside the
group's list. None of these retry: a file that cannot be read or written now is a fact for the operator.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from runbooks.adapters import compose
from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.configfiles import (
    ConfigFile,
    KeptRecords,
    keep_copy,
    postgres_config_errors,
    read_config,
    read_copy,
    reload_postgres,
    remove_copy,
    write_config,
)
from runbooks.adapters.pm2 import reload_pm2
from runbooks.core.errors import Refused, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.config_rollback import (
    KeptFile,
    KeptRecord,
    KeptVersion,
    kept_name,
    next_version,
    versions_to_prune,
)
from runbooks.decisions.manifest import BackupManifest
from runbooks.settings.config_rollback import ConfigGroup
from runbooks.settings.services import ComposeService, Pm2Service
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task
from runbooks.tasks.services import Recovery
from runbooks.tasks.storage import RestoredFile


@step_task("read-config-files")
def read_config_files(*, group: ConfigGroup, paths: list[Path]) -> list[ConfigFile]:
    """Each of ``paths`` as it is now (refused: outside the group, a link, not a regular file, too large)."""
    return [read_config(p, allowed=group.files, max_bytes=group.max_bytes) for p in paths]


@step_task("read-kept-version")
def read_kept_version(*, records: KeptRecords, group_name: str, group: ConfigGroup, version: str | None,
                      paths: list[Path]) -> tuple[KeptVersion, dict[str, ConfigFile]]:
    """The kept version (the newest when ``version`` is None) from the runbook's own record, and each of ``paths``
    as it was kept, checked against the checksum recorded when it was kept.

    Returns:
        The version, and the kept bytes by file path.
    """
    record = records.load(group_name)
    found = record.find(version)
    if found is None:
        listed = ", ".join(v.version for v in record.versions[-5:]) or "none"
        raise Refused(f"group {group_name!r} has no kept version {version or '(newest)'} (newest kept: {listed}).",
                      hint="name one of them, or roll back from a backup (source=backup); nothing was done.")
    copies: dict[str, ConfigFile] = {}
    for path in paths:
        entry = found.file(str(path))
        if entry is None:
            raise Refused(f"kept version {found.version} of {group_name!r} holds no copy of {str(path)!r}.",
                          hint="leave that file out (files parameter), or pick another version; nothing was done.")
        kept = Path(entry.kept_as)
        if kept.parent != group.kept_directory(path) or kept.name != kept_name(path.name, found.version):
            raise Refused(f"the record names {entry.kept_as!r} as the copy of {str(path)!r}, which is not where "
                          "config-rollback keeps it.", hint="the record was edited; move it aside. Nothing was done.")
        copy = read_copy(kept, max_bytes=group.max_bytes)
        if copy.sha256 != entry.sha256:
            raise Refused(f"the kept copy {entry.kept_as!r} changed since it was kept (checksum differs).",
                          hint="pick another version or source=backup; nothing was done.")
        copies[str(path)] = copy
    return found, copies


@step_task("find-config-backup", **TRANSIENT_RETRY)
def find_config_backup(*, catalog: BackupCatalog, cluster: str, backup_id: str) -> BackupManifest:
    """The verified cluster backup ``backup_id`` (``latest``: the newest) that archived configuration files.

    Returns:
        Its manifest; refused when there is none (nothing to put back from).
    """
    found = [m for m in catalog.list_backups(kind="cluster", name=cluster)
             if any(o.role == "config" for o in m.objects) and (backup_id == "latest" or m.backup_id == backup_id)]
    if not found:
        raise Refused(f"no cluster backup {'' if backup_id == 'latest' else backup_id + ' '}of {cluster!r} holds "
                      "configuration files.", hint="list them with 'runbooks backups list'; [cluster] config_files "
                      "names what a backup archives. Nothing was done.")
    manifest = found[-1]
    if not manifest.verified:
        raise Refused(f"cluster backup {manifest.backup_id} of {cluster!r} failed verification when it was taken; "
                      "nothing is put back from it.", hint="pick another with backup_id; nothing was done.")
    get_run_logger().info("Using cluster backup %s of %r (taken %s)", manifest.backup_id, cluster,
                          f"{manifest.started_at:%Y-%m-%d %H:%M:%S}Z")
    return manifest


@step_task("read-backup-config")
def read_backup_config(*, restored: list[RestoredFile], backup_id: str, group: ConfigGroup,
                       paths: list[Path]) -> dict[str, ConfigFile]:
    """Each of ``paths`` as a cluster backup archived it (unpacked by ``restore_config_files``), only when it
    matches the checksum taken as it was archived.

    Returns:
        The archived bytes by file path.
    """
    by_path = {f.path: f for f in restored}
    found: dict[str, ConfigFile] = {}
    for path in paths:
        entry = by_path.get(str(path))
        if entry is None or entry.restored_to is None:
            raise Refused(f"backup {backup_id} did not archive {str(path)!r}.", hint="leave that file out (files "
                          "parameter), pick another backup, or list it in [cluster] config_files for the next "
                          "backups; nothing was done.")
        if entry.status != "intact":
            raise Refused(f"{str(path)!r} in backup {backup_id} is {entry.status} against the checksum taken as it "
                          "was archived; it is never put back.", hint="pick another backup; nothing was done.")
        found[str(path)] = read_copy(Path(entry.restored_to), max_bytes=group.max_bytes)
    return found


@step_task("keep-config-files", mutates=True)
def keep_config_files(*, records: KeptRecords, group_name: str, group: ConfigGroup, files: list[ConfigFile],
                      why: str, flow_run_id: str | None) -> KeptVersion:
    """Copy each file as it is now beside it (or into ``kept_dir``) as ``<name>.runbooks-<UTC time>``, 0600, and
    add the version to the runbook's record (the only list a later rollback or prune reads).

    Returns:
        The version kept.
    """
    record = records.load(group_name)
    version = next_version(datetime.now(UTC), {v.version for v in record.versions})
    kept: list[KeptFile] = []
    for file in files:
        path = Path(file.path)
        target = group.kept_directory(path) / kept_name(path.name, version)
        keep_copy(target, file.data)
        kept.append(KeptFile(path=file.path, kept_as=str(target), sha256=file.sha256, bytes=len(file.data)))
        get_run_logger().info("Kept %r as %r", file.path, str(target))
    entry = KeptVersion(version=version, kept_at=datetime.now(UTC), why=why[:500], flow_run_id=flow_run_id,
                        files=kept)
    records.save(KeptRecord(group=group_name, versions=[*record.versions, entry]))
    return entry


@step_task("write-config-files", mutates=True)
def write_config_files(*, group: ConfigGroup, writes: list[tuple[ConfigFile, bytes]]) -> list[str]:
    """Replace each file (as read: its mode and owner are kept) with its target, atomically.

    Returns:
        The paths written.
    """
    written = []
    for current, data in writes:
        write_config(Path(current.path), data, allowed=group.files, like=current)
        get_run_logger().info("Wrote %r (%d bytes, mode %o)", current.path, len(data), current.mode)
        written.append(current.path)
    return written


@step_task("reload-config-owner", mutates=True)
def reload_config_owner(*, service: Pm2Service | ComposeService | None, server: Mapping[str, Any] | None,
                        where: str) -> datetime:
    """Make the owner read its files again: ``pm2 reload … --update-env``, a restart of the Compose service's
    containers, or ``pg_reload_conf()``.

    Returns:
        When the reload was asked (a healthy service must have started after it).
    """
    at = datetime.now(UTC)
    if isinstance(service, Pm2Service):
        reload_pm2(service)
    elif isinstance(service, ComposeService):
        client = compose.connect(service)
        try:
            containers = compose.read_containers(client, service)
            if not containers:
                raise Refused(f"no container of {where} exists to restart.", hint="bring it up with docker compose "
                              "up -d; the files are written, so it reads them as it starts.")
            compose.restart_containers(client, service, containers)
        finally:
            client.close()
    else:
        assert server is not None
        reload_postgres(server, where=where)
    get_run_logger().info("Reloaded %s", where)
    return at


@step_task("verify-postgres-config")
def verify_postgres_config(*, server: Mapping[str, Any], where: str, timeout_seconds: float,
                           poll_seconds: float = 1.0) -> Recovery:
    """Until the server answers (a reload does not stop it, but it may be restarting meanwhile) or the timeout;
    then ``pg_file_settings`` / ``pg_hba_file_rules`` must show no error. An error there means the server kept its
    previous value for that line: the files are not what it runs, and waiting does not change that."""
    started = time.monotonic()
    readings = 0
    while True:
        readings += 1
        try:
            errors = postgres_config_errors(server, where=where)
        except RunbookError as exc:
            detail = scrub(exc.message)[:300]
            if time.monotonic() - started >= timeout_seconds:
                return Recovery(healthy=False, detail=detail, readings=readings, seconds=time.monotonic() - started)
            time.sleep(poll_seconds)
            continue
        detail = scrub("; ".join(errors))[:500] if errors else "answers; no error in its configuration files"
        return Recovery(healthy=not errors, detail=detail, readings=readings, seconds=time.monotonic() - started)


@step_task("prune-kept-versions", mutates=True)
def prune_kept_versions(*, records: KeptRecords, group_name: str, group: ConfigGroup, keep: int,
                        protect: set[str]) -> list[str]:
    """Delete the kept versions beyond ``keep`` (oldest first), only those the record lists and only copies that
    still hold what was kept; a copy changed since stays, and so does its entry.

    Returns:
        The versions removed from the record.
    """
    record = records.load(group_name)
    removed = []
    for version in versions_to_prune(record, keep=keep, protect=protect):
        # Only where this runbook keeps copies, under its own name: a record edited to name another file deletes
        # nothing (the same check a rollback makes before it reads a copy).
        astray = [f.kept_as for f in version.files if Path(f.kept_as).parent != group.kept_directory(Path(f.path))
                  or Path(f.kept_as).name != kept_name(Path(f.path).name, version.version)]
        if astray:
            get_run_logger().warning("Kept version %s of %r names copies where config-rollback keeps none (%s): "
                                     "left in place", version.version, group_name, ", ".join(astray))
            continue
        left = [f for f in version.files if not remove_copy(Path(f.kept_as), sha256=f.sha256)]
        if left:
            get_run_logger().warning("Kept version %s of %r: %s changed since kept, left in place", version.version,
                                     group_name, ", ".join(f.kept_as for f in left))
            continue
        removed.append(version.version)
    if removed:
        records.save(KeptRecord(group=group_name, versions=[v for v in record.versions if v.version not in removed]))
        get_run_logger().info("Deleted kept versions %s of %r", ", ".join(removed), group_name)
    return removed
