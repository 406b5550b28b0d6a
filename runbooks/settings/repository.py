"""``[repository]``: where backups live, a directory or an S3 bucket."""

from __future__ import annotations

import unicodedata
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from runbooks.settings.fields import SecretBlock, check_http_url


class RepositorySettings(BaseModel):
    """Where backups live: ``file:///abs/path`` or ``s3://bucket/prefix``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(default="file:///var/backups/runbooks", description="file:///path or s3://bucket/prefix")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint for MinIO/Ceph; None for AWS")
    region: str | None = Field(default=None)
    sse: Literal["AES256", "aws:kms"] | None = Field(default=None, description="server-side encryption")
    sse_kms_key_id: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    secret_access_key_block: SecretBlock | None = None
    part_size_mb: int = Field(default=16, ge=5, le=512, description="S3 multipart part size (grows for huge dumps)")
    max_concurrency: int = Field(default=2, ge=1, le=16, description="parallel part uploads")

    _endpoint = field_validator("endpoint_url")(check_http_url)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if any(unicodedata.category(ch) == "Cc" for ch in url):
            raise ValueError(f"repository URL {url!r} contains a control character")
        parsed = urlparse(url)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
                raise ValueError(f"repository URL {url!r} must be file:///absolute/path")
        elif parsed.scheme == "s3":
            if not parsed.netloc:
                raise ValueError(f"repository URL {url!r} has no bucket: use s3://bucket/prefix")
        else:
            raise ValueError(f"repository URL {url!r} must start with file:/// or s3://")
        return url
