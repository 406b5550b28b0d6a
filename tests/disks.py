"""Small real filesystems for tests: a tmpfs of a given size (real watermarks, a real "No space left on device")."""

from __future__ import annotations

import os
import subprocess
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
