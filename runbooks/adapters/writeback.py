"""Start the kernel's writeback of a file while it is being written, so that finishing it costs little.

A big file written at full speed and then ``fsync``-ed (a backup in the local repository) or read by another
process right away (the dump ``pg_restore -j`` reads) otherwise leaves all its pages dirty at the end: the fsync
waits for all of them, or the kernel writes them back while ``pg_restore`` and PostgreSQL compete for the same
disk and for the dirty-page budget. ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` (Linux; what PostgreSQL's
``*_flush_after`` settings use) queues the pages written so far without waiting; elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

FLUSH_EVERY = 32 << 20  # bytes written between two writeback requests
SYNC_FILE_RANGE_WRITE = 2

_sync_file_range: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _sync_file_range = _libc.sync_file_range
        _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        _sync_file_range.restype = ctypes.c_int
    except (OSError, AttributeError):
        _sync_file_range = None


class Writeback:
    """Track bytes written to ``fd`` and queue them for writeback every ``every`` bytes (never blocks)."""

    def __init__(self, fd: int, every: int = FLUSH_EVERY) -> None:
        self.fd = fd
        self.every = every
        self.written = 0
        self.flushed = 0

    def wrote(self, n: int) -> None:
        self.written += n
        if self.written - self.flushed >= self.every:
            start_writeback(self.fd, self.flushed, self.written - self.flushed)
            self.flushed = self.written


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Queue ``length`` bytes at ``offset`` of ``fd`` for writeback; False where that is not available."""
    if _sync_file_range is None:
        return False
    return bool(_sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0)


def available() -> bool:
    return _sync_file_range is not None and hasattr(os, "fdatasync")
