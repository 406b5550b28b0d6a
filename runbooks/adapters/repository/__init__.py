"""Backup repository backends behind one interface; ``open_repository`` picks one from the settings."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from runbooks.adapters.repository.base import IncompleteUpload, ObjectInfo, ObjectWriter, Repository
from runbooks.settings import RepositorySettings, resolve_secret

__all__ = ["IncompleteUpload", "ObjectInfo", "ObjectWriter", "Repository", "open_repository"]


def open_repository(settings: RepositorySettings) -> Repository:
    parsed = urlparse(settings.url)
    if parsed.scheme == "file":
        from runbooks.adapters.repository.local import LocalRepository

        return LocalRepository(Path(unquote(parsed.path)))
    from runbooks.adapters.repository.s3 import S3Repository

    return S3Repository(
        bucket=parsed.netloc,
        prefix=parsed.path,
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        access_key_id=settings.access_key_id,
        secret_access_key=resolve_secret(settings.secret_access_key, settings.secret_access_key_block),
        sse=settings.sse,
        sse_kms_key_id=settings.sse_kms_key_id,
        part_size_mb=settings.part_size_mb,
        max_concurrency=settings.max_concurrency,
    )
