"""One interface over every place backups can live; flows never know which backend they use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Protocol

from runbooks.decisions.listing import IncompleteUpload, ObjectInfo  # noqa: F401  (re-exported)


class ObjectWriter(Protocol):
    """A streamed object: ``write`` in any chunk size, ``close`` makes it durable, ``abort`` discards it."""

    def write(self, data: bytes) -> int: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Repository(ABC):
    """Keys are ``/``-separated paths relative to the repository root."""

    url: str

    @abstractmethod
    def check_writable(self) -> None:
        """Raise RepositoryNotWritable (permanent) or RepositoryUnavailable (transient) if writes would fail."""

    @abstractmethod
    def open_writer(self, key: str) -> ObjectWriter: ...

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write a small object atomically: readers see all of it or nothing."""

    @abstractmethod
    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create a small object only if no object has that key: True if this call created it.

        The one atomic claim the repository offers; two writers racing for a key never both win.
        """

    @abstractmethod
    def replace_bytes_if(self, key: str, data: bytes, *, expect: bytes) -> bool:
        """Overwrite a small object only if it still exists and holds ``expect``: True if this call replaced it.

        A refresh (a lock's heartbeat) must never recreate an object someone else removed or replaced.
        """

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def check_exists(self) -> None:
        """Raise RepositoryNotFound if the repository itself (directory, bucket) is missing: a mistyped path
        must not read as "no backups"."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete keys; a key already gone is not an error."""

    def list_incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        return []

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:  # noqa: B027 - optional hook
        """Backends without multipart uploads have nothing to abort."""
