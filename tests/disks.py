"""Small real filesystems for tests: a tmpfs of a given size (real watermarks, a real "No space left on device"),
and temporary directories other OS users may enter."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(mount: Path, *, size_mb: int) -> Iterator[Path]:
    """Mount a ``size_mb`` tmpfs (mode 0700) at ``mount`` for the block. Needs root, which CI has."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@contextmanager
def traversable_dir(prefix: str) -> Iterator[Path]:
    """A new directory (mode 0755) for the block, removed with its contents after it. Not under pytest's own tmp
    directories, which are 0700 under root: a cluster runs as the postgres OS user then, and must pass through."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
