"""Configuration files on this host, and reloading what reads them.

Files:
- Only a path of the group's list is ever read as "the file" or written: ``allowed`` is checked on every call, so a
  path that arrives through a parameter, a backup's manifest or a record is refused even if a caller forgot.
- A symlink is refused (``O_NOFOLLOW``, and the resolved path must be the path as written: a link in a parent
  directory would move the write elsewhere), as is anything but a regular file.
- A write is atomic and private until it lands: a new temporary file in the same directory (0600, created
  exclusively), the bytes, the original's mode and owner, ``fsync``, ``rename`` over the original, ``fsync`` of the
  directory. A reader sees the old file or the new one, never half of one; a killed run leaves at most a
  ``.<name>.runbooks-tmp-*`` beside it.
- A kept version is a new 0600 file (``O_EXCL``) owned by the runbooks' user.

Reloads:
- PM2: ``pm2 reload <ecosystem> --only <app> --update-env`` (the operations runbook's ``pm2 reload
  ecosystem.config.cjs``, one app), through ``runbooks.adapters.pm2``'s own runner (its minimal environment, its
  daemon check, its errors).
- PostgreSQL: ``SELECT pg_reload_conf()``, then ``pg_file_settings`` and ``pg_hba_file_rules`` (the files as the
  server parses them now) must show no error, and the server must answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from runbooks.adapters.postgres import connect, database_errors
from runbooks.adapters.repository.local import make_private_dirs
from runbooks.core.errors import ConfigurationError, Refused
from runbooks.decisions.config_rollback import KeptRecord

TEMP_MARK = ".runbooks-tmp-"


class ConfigFile(BaseModel):
    """A file as read: its bytes, checksum, mode and owner."""

    model_config = ConfigDict(frozen=True)

    path: str
    data: bytes
    sha256: str
    mode: int
    uid: int
    gid: int


def _allowed_or_raise(path: Path, allowed: Iterable[Path]) -> None:
    if path not in set(allowed):
        raise Refused(f"{str(path)!r} is not one of the group's configuration files; config-rollback writes only "
                      "those.", hint="name a file of [config_rollback.groups.<group>] files; nothing was done.")


def _not_linked_or_raise(path: Path) -> None:
    try:
        real = Path(os.path.realpath(path))
    except OSError as exc:
        raise Refused(f"{str(path)!r} cannot be resolved: {exc.strerror}.", hint="check the path; nothing was "
                      "done.") from None
    if real != path:
        raise Refused(f"{str(path)!r} is (or lies below) a symbolic link to {str(real)!r}; config-rollback never "
                      "writes through a link.", hint="list the real path in [config_rollback.groups.<group>] files; "
                      "nothing was done.")


def _read(path: Path, *, max_bytes: int) -> ConfigFile:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Refused(f"{str(path)!r} does not exist; config-rollback replaces existing files only.",
                      hint="restore it by hand, or remove it from the files parameter; nothing was done.") from None
    except OSError as exc:
        what = "is a symbolic link" if os.path.islink(path) else f"cannot be read: {exc.strerror}"
        raise Refused(f"{str(path)!r} {what}.", hint="config-rollback reads regular files only; nothing was "
                      "done.") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"{str(path)!r} is not a regular file.", hint="config-rollback reads regular files only; "
                          "nothing was done.")
        if info.st_size > max_bytes:
            raise Refused(f"{str(path)!r} holds {info.st_size} bytes, more than max_bytes ({max_bytes}).",
                          hint="raise [config_rollback.groups.<group>] max_bytes if it really is a configuration "
                          "file; nothing was done.")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Refused(f"{str(path)!r} grew beyond max_bytes ({max_bytes}) while read.", hint="try again; nothing "
                      "was done.")
    return ConfigFile(path=str(path), data=data, sha256=hashlib.sha256(data).hexdigest(),
                      mode=stat.S_IMODE(info.st_mode), uid=info.st_uid, gid=info.st_gid)


def read_config(path: Path, *, allowed: Iterable[Path], max_bytes: int) -> ConfigFile:
    """The file ``path`` of the group (``allowed``), refused when outside it, a link, not regular or too large."""
    _allowed_or_raise(path, allowed)
    _not_linked_or_raise(path)
    return _read(path, max_bytes=max_bytes)


def read_copy(path: Path, *, max_bytes: int) -> ConfigFile:
    """A copy the runbook made (a kept version, a file unpacked from a backup): never a link, a regular file."""
    return _read(path, max_bytes=max_bytes)


def current_sha256(path: Path, *, allowed: Iterable[Path], max_bytes: int) -> str | None:
    """The file's checksum now, None when it cannot be read as a regular file of the group."""
    try:
        return read_config(path, allowed=allowed, max_bytes=max_bytes).sha256
    except Refused:
        return None


def can_write_or_raise(path: Path, *, like: ConfigFile) -> None:
    """Refuse before any change what a write could not do as promised: keep the file's owner (only root or the
    owner itself can) or create a file in its directory."""
    if os.geteuid() not in (0, like.uid):
        raise ConfigurationError(f"{str(path)!r} belongs to uid {like.uid}, and the runbooks run as uid "
                                 f"{os.geteuid()}: a rewritten file would change owner.", hint="run the worker as "
                                 "that user (or root) on this host; nothing was done.")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigurationError(f"cannot create files in {str(path.parent)!r} (an atomic write renames a new "
                                 "file over the old one).", hint="give the runbooks' user write access to that "
                                 "directory; nothing was done.")


def write_config(path: Path, data: bytes, *, allowed: Iterable[Path], like: ConfigFile) -> None:
    """Replace ``path`` (of the group) with ``data`` atomically, keeping ``like``'s mode and owner."""
    _allowed_or_raise(path, allowed)
    _not_linked_or_raise(path)
    if os.path.islink(path):
        raise Refused(f"{str(path)!r} became a symbolic link.", hint="nothing was written; check who changed it.")
    temporary = path.with_name(f".{path.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if (os.fstat(out.fileno()).st_uid, os.fstat(out.fileno()).st_gid) != (like.uid, like.gid):
                os.fchown(out.fileno(), like.uid, like.gid)
            os.fchmod(out.fileno(), like.mode)
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def keep_copy(kept: Path, data: bytes) -> None:
    """A new 0600 file ``kept`` holding ``data`` (never over an existing one, never through a link)."""
    make_private_dirs(kept.parent)
    fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            kept.unlink()
        raise
    _sync_directory(kept.parent)


def remove_copy(kept: Path, *, sha256: str) -> bool:
    """Delete a kept copy the record lists, only if it still holds what was kept (a regular file, not a link).
    Returns whether it was deleted (gone already counts: nothing to do)."""
    try:
        found = read_copy(kept, max_bytes=64 << 20)
    except Refused:
        return not os.path.lexists(kept)
    if found.sha256 != sha256:
        return False
    kept.unlink()
    return True


class KeptRecords:
    """The runbook's own record of the versions it kept, one JSON file per group (0600), rewritten atomically. The
    group's host lock serialises the runs that write it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, group: str) -> Path:
        return self.directory / f"{group}.json"

    def load(self, group: str) -> KeptRecord:
        path = self._path(group)
        try:
            return KeptRecord.model_validate_json(read_copy(path, max_bytes=16 << 20).data)
        except Refused:
            if not os.path.lexists(path):
                return KeptRecord(group=group)
            raise
        except ValidationError:
            raise ConfigurationError(f"the record of kept versions {str(path)!r} does not parse.",
                                     hint="move it aside (the kept copies stay beside the files); nothing was "
                                     "done.") from None

    def save(self, record: KeptRecord) -> None:
        make_private_dirs(self.directory)
        path = self._path(record.group)
        temporary = path.with_name(f".{path.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(record.model_dump_json(indent=2).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)


# -- reloads ----------------------------------------------------------------------------------------------------------

def reload_postgres(params: Mapping[str, Any], *, where: str) -> None:
    """``SELECT pg_reload_conf()`` (SIGHUP to the postmaster: every process re-reads the configuration files)."""
    with connect(params, where=where, autocommit=True) as conn, database_errors(where):
        conn.execute("SELECT pg_reload_conf()")


def postgres_config_errors(params: Mapping[str, Any], *, where: str) -> list[str]:
    """The errors the server finds in its configuration files now (``pg_file_settings``, ``pg_hba_file_rules``):
    a setting it could not apply, a line it could not parse. Empty: the files are as the server accepts them."""
    with connect(params, where=where, autocommit=True) as conn, database_errors(where):
        rows = conn.execute(
            "SELECT sourcefile, sourceline, name, error FROM pg_file_settings WHERE error IS NOT NULL "
            "UNION ALL SELECT 'pg_hba.conf', line_number, 'pg_hba', error FROM pg_hba_file_rules "
            "WHERE error IS NOT NULL").fetchall()
        conn.execute("SELECT 1")
    return [f"{source}:{line}: {name or '?'}: {error}" for source, line, name, error in rows]
