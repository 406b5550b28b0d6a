"""The repository a test's settings name: the stores a test reads back from it (the backup catalog, the restore
records), and where a local one lies on disk.

A test that reaches into the repository's files needs the directory behind its ``file://`` URL. Stripping the
scheme off as text (``url.removeprefix("file://")``) turns an ``s3://bucket/prefix`` URL, left unchanged, into the
relative path ``s3:/bucket/prefix``, and the test then writes a directory named ``s3:`` into whatever directory
pytest runs from (one was committed at the root of the checkout that way). This helper reads the URL as
``open_repository`` does and refuses every other scheme.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import psycopg

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.postgres import server_identity
from runbooks.adapters.records import RestoreRecords
from runbooks.adapters.repository import open_repository
from runbooks.settings import load_settings
from runbooks_sandbox import SandboxState
from tests.pgfixtures import admin_dsn


def catalog() -> BackupCatalog:
    """The backup catalog of the repository the current settings name (a client of its own on each call, as
    another process would have)."""
    return BackupCatalog(open_repository(load_settings().repository))


def restore_records(sandbox: SandboxState) -> RestoreRecords:
    """The restore records of the sandbox's server in the repository the current settings name."""
    with psycopg.connect(admin_dsn(sandbox)) as conn:
        server = server_identity(conn, psycopg.conninfo.conninfo_to_dict(admin_dsn(sandbox)))
    return RestoreRecords(open_repository(load_settings().repository), server)


def local_repository_path(url: str) -> Path:
    """The absolute directory of a ``file://`` repository URL, parsed as
    ``runbooks.adapters.repository.open_repository`` parses it.

    Raises:
        ValueError: the URL names another scheme (``s3://`` …), a remote host, or a relative path: there is no
            local directory to touch, and guessing one would write into the working directory.
    """
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise ValueError(f"repository URL {url!r} is not a file:// URL: this test reaches into a local repository's "
                         "files. HINT: use the `config` fixture (a local repository), not `s3_config`, for it.")
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"repository URL {url!r} names the host {parsed.netloc!r}: not a local directory. HINT: "
                         "write file:///absolute/path.")
    path = Path(unquote(parsed.path))
    if not path.is_absolute():
        raise ValueError(f"repository URL {url!r} is not an absolute path. HINT: write file:///absolute/path.")
    return path


def configured_repository_path() -> Path:
    """The directory of the repository the current settings name (a test's ``config`` fixture sets one)."""
    return local_repository_path(load_settings().repository.url)
