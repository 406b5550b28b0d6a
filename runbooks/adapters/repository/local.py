"""A backup repository in a local (or mounted) directory: the embedded default.

Everything it creates is private to the account running the runbooks: directories 0700, files 0600 (dumps hold
the data, the globals script holds SCRAM hashes). A root directory someone else made keeps its mode.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG

from runbooks.adapters.repository.base import ObjectInfo, Repository
from runbooks.adapters.writeback import Writeback
from runbooks.core.errors import BackupNotFound, RepositoryNotFound, RepositoryNotWritable

DIR_MODE = 0o700
FILE_MODE = 0o600
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC, errno.EDQUOT}


def _not_writable(root: Path, exc: OSError) -> RepositoryNotWritable:
    return RepositoryNotWritable(
        f"backup repository {str(root)!r} is not writable: {exc.strerror or exc}.",
        hint="point repository.url at a writable directory (or fix its owner/permissions/free space).",
    )


_TMP_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")  # what _write_tmp names its files
TMP_IN_FLIGHT_SECONDS = 3600  # an atomic write takes milliseconds; an hour-old one was left by a killed writer


def make_private_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """``mkdir -p`` where every directory created is 0700 (``Path.mkdir(parents=True)`` gives the parents
    the umask's default mode, usually 0755)."""
    for attempt in range(5):
        missing = []
        current = path
        while not current.is_dir():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        try:
            for directory in reversed(missing):
                try:
                    directory.mkdir(mode=mode)
                except FileExistsError:
                    continue
                directory.chmod(mode)  # mkdir's mode is filtered by the umask; be exact
            return
        except FileNotFoundError:  # a concurrent delete removed an empty parent meanwhile: again
            if attempt == 4:
                raise


def open_private(path: Path) -> int:
    """A new (or truncated) file that only its owner can read, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


class LocalWriter:
    def __init__(self, root: Path, path: Path) -> None:
        self._root = root
        self._path = path
        try:
            make_private_dirs(path.parent)
            self._file = os.fdopen(open_private(path), "wb")
        except OSError as exc:
            raise _not_writable(root, exc) from None
        # Written back as it grows, so the fsync in close() waits for the last few MB, not the whole object.
        self._writeback = Writeback(self._file.fileno())

    def write(self, data: bytes) -> int:
        try:
            n = self._file.write(data)
            self._writeback.wrote(n)
            return n
        except OSError as exc:
            raise _not_writable(self._root, exc) from None

    def close(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise _not_writable(self._root, exc) from None
        finally:
            self._file.close()

    def abort(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)


class LocalRepository(Repository):
    def __init__(self, root: Path) -> None:
        self.url = root.as_uri()
        self.root = root.resolve()  # a root reached through a symlink (/backups -> /mnt/nas) is the same place

    def _path(self, key: str) -> Path:
        """The path of ``key``: plain segments only, and never through a symlink inside the repository (a link
        someone planted there is not followed to read or delete what it points at)."""
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
            raise RepositoryNotWritable(f"object key {key!r} escapes or is malformed in {self.url}.",
                                        hint="a manifest or record naming it is damaged; nothing was done.")
        path = self.root.joinpath(*[p for p in parts if p])
        current = self.root
        for part in parts[:-1]:
            current = current / part
            if current.is_symlink():
                raise RepositoryNotWritable(f"{str(current)!r} in the repository is a symlink; it is never followed.",
                                            hint="remove it by hand; nothing was done.")
        return path

    def check_writable(self) -> None:
        probe = self.root / f".write-probe-{uuid.uuid4().hex}"
        try:
            make_private_dirs(self.root)
            os.close(open_private(probe))
            probe.unlink()
        except OSError as exc:
            raise _not_writable(self.root, exc) from None

    def check_exists(self) -> None:
        if not self.root.is_dir():
            raise RepositoryNotFound(
                f"backup repository {str(self.root)!r} does not exist"
                + (" (it is a file)." if self.root.exists() else "."),
                hint="check repository.url (RUNBOOKS_REPOSITORY__URL); the first backup run creates it.")

    def open_writer(self, key: str) -> LocalWriter:
        return LocalWriter(self.root, self._path(key))

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            handle = os.fdopen(os.open(self._path(key), os.O_RDONLY | os.O_NOFOLLOW), "rb")
        except FileNotFoundError:
            raise BackupNotFound(f"object {key!r} is missing from {self.url}.") from None
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def _write_tmp(self, path: Path, data: bytes) -> Path:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        make_private_dirs(path.parent)
        try:
            with os.fdopen(open_private(tmp), "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    @staticmethod
    def _sync_dir(directory: Path) -> None:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            tmp = self._write_tmp(path, data)
            try:
                os.replace(tmp, path)  # atomic: a reader sees the old object, the new one, or none
            finally:
                tmp.unlink(missing_ok=True)
            self._sync_dir(path.parent)
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                raise _not_writable(self.root, exc) from None
            raise

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            tmp = self._write_tmp(path, data)
            try:
                os.link(tmp, path)  # atomic create-if-absent, and the object is complete once it has its name
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                return self._create_exclusive(path, data)  # a filesystem without hard links
            finally:
                tmp.unlink(missing_ok=True)
            self._sync_dir(path.parent)
            return True
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                raise _not_writable(self.root, exc) from None
            raise

    def replace_bytes_if(self, key: str, data: bytes, *, expect: bytes) -> bool:
        """In place, never creating: if a sweeper unlinks the file meanwhile, this writes into the unlinked inode
        and the object stays gone. The new content is padded with spaces to the old length (JSON ignores them),
        so a reader never sees it truncated."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno in _NOT_WRITABLE:
                raise _not_writable(self.root, exc) from None
            raise
        try:
            current = os.pread(fd, max(len(expect), 1) + 4096, 0)
            if current.rstrip(b" ") != expect.rstrip(b" "):
                return False
            body = data.ljust(len(current), b" ")
            os.pwrite(fd, body, 0)
            if len(body) > len(current):
                os.ftruncate(fd, len(body))
            os.fsync(fd)
            return True
        finally:
            os.close(fd)

    @staticmethod
    def _create_exclusive(path: Path, data: bytes) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def get_bytes(self, key: str) -> bytes:
        try:
            with os.fdopen(os.open(self._path(key), os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise BackupNotFound(f"object {key!r} is missing from {self.url}.") from None

    def exists(self, key: str) -> bool:
        path = self._path(key)
        return path.is_file() and not path.is_symlink()

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        if base.is_symlink() or not base.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(base):  # never descends into symlinked directories
            for name in filenames:
                full = Path(dirpath) / name
                try:
                    stat = full.lstat()
                except FileNotFoundError:
                    continue
                if not S_ISREG(stat.st_mode):
                    continue  # a symlink (or anything else) planted here is not an object of ours
                if _TMP_NAME.fullmatch(name) and time.time() - stat.st_mtime < TMP_IN_FLIGHT_SECONDS:
                    # Another writer's atomic write in flight (written, not yet linked or renamed): not an object.
                    # Listed, a sweep took it for a lockless leftover and deleted it under the writer's feet.
                    # Only one left behind by a killed writer (an hour old) is listed, for the sweeps to remove.
                    continue
                yield ObjectInfo(
                    key=full.relative_to(self.root).as_posix(),
                    size=stat.st_size,
                    modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                )

    def delete(self, keys: list[str]) -> None:
        parents: set[Path] = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            parents.add(path.parent)
        # Remove directories left empty, deepest first, never the root itself.
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            current = parent
            while current != self.root and current.is_relative_to(self.root):
                try:
                    current.rmdir()
                except OSError:
                    break
                current = current.parent

    def remove_all(self) -> None:
        """Used by the sandbox teardown only."""
        shutil.rmtree(self.root, ignore_errors=True)
