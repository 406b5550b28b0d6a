"""A backup repository in a local (or mounted) directory: the embedded default."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from runbooks.errors import BackupNotFound, RepositoryNotWritable
from runbooks.repository.base import ObjectInfo, Repository

_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC, errno.EDQUOT}


def _not_writable(root: Path, exc: OSError) -> RepositoryNotWritable:
    return RepositoryNotWritable(
        f"backup repository {str(root)!r} is not writable: {exc.strerror or exc}.",
        hint="point repository.url at a writable directory (or fix its owner/permissions/free space).",
    )


class LocalWriter:
    def __init__(self, root: Path, path: Path) -> None:
        self._root = root
        self._path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "wb")  # noqa: SIM115 - closed in close()/abort()
        except OSError as exc:
            raise _not_writable(root, exc) from None

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
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
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"key {key!r} escapes the repository")
        return path

    def check_writable(self) -> None:
        probe = self.root / f".write-probe-{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise _not_writable(self.root, exc) from None

    def open_writer(self, key: str) -> LocalWriter:
        return LocalWriter(self.root, self._path(key))

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            handle = open(self._path(key), "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise BackupNotFound(f"object {key!r} is missing from {self.url}.") from None
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)  # atomic: a reader sees the old object, the new one, or none
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in _NOT_WRITABLE:
                raise _not_writable(self.root, exc) from None
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BackupNotFound(f"object {key!r} is missing from {self.url}.") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                full = Path(dirpath) / name
                try:
                    stat = full.stat()
                except FileNotFoundError:
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
            while current != self.root.resolve() and current.is_relative_to(self.root.resolve()):
                try:
                    current.rmdir()
                except OSError:
                    break
                current = current.parent

    def remove_all(self) -> None:
        """Used by the sandbox teardown only."""
        shutil.rmtree(self.root, ignore_errors=True)
