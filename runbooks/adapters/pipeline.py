"""Streaming: a tool's stdout → zstd → SHA-256 → repository object, never staged on local disk.

Memory is bounded by the chunk size plus the repository writer's buffers (S3: a few parts), whatever the
database size. The compressed stream carries zstd's content checksum so a restore detects a damaged frame too.
"""

from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from runbooks.adapters.repository import ObjectWriter, Repository
from runbooks.adapters.writeback import Writeback
from runbooks.core.errors import RunbookError, ToolFailed, VerificationFailed

CHUNK = 1 << 20


@dataclass
class StreamStats:
    raw_bytes: int
    stored_bytes: int
    sha256: str
    seconds: float


class CompressingSink:
    """A file-like ``write`` target that compresses, hashes and forwards to a repository writer."""

    def __init__(self, writer: ObjectWriter, *, level: int, threads: int) -> None:
        self._writer = writer
        self._compressor = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True).compressobj()
        self._sha = hashlib.sha256()
        self.raw_bytes = 0
        self.stored_bytes = 0

    def _emit(self, data: bytes) -> None:
        if data:
            self._sha.update(data)
            self.stored_bytes += len(data)
            self._writer.write(data)

    def write(self, data: bytes | memoryview) -> int:
        self.raw_bytes += len(data)
        self._emit(self._compressor.compress(data))
        return len(data)

    def finish(self) -> str:
        self._emit(self._compressor.flush())
        self._writer.close()
        return self._sha.hexdigest()


Progress = Callable[[int, int, float], None]


def stream_command(
    argv: list[str],
    *,
    env: dict[str, str],
    repository: Repository,
    key: str,
    level: int,
    threads: int,
    classify_error: Callable[[str], RunbookError],
    progress: Progress | None = None,
    progress_every: float = 10.0,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> StreamStats:
    """Run ``argv`` and stream its stdout into ``key``; on any failure the partial object is discarded."""
    started = time.monotonic()
    writer = repository.open_writer(key)
    sink = CompressingSink(writer, level=level, threads=threads)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=env, bufsize=0)
    except OSError as exc:
        writer.abort()
        raise ToolFailed(f"could not start {argv[0]}: {exc.strerror}.",
                         hint="check the PostgreSQL client tools (RUNBOOKS_PG_BINDIR).") from None
    if on_start:
        on_start(proc)
    stderr_chunks: list[bytes] = []
    assert proc.stderr is not None and proc.stdout is not None
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        last = started
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            n = proc.stdout.readinto(buf)  # type: ignore[attr-defined]  # unbuffered FileIO
            if not n:
                break
            sink.write(view[:n])
            if progress and time.monotonic() - last >= progress_every:
                last = time.monotonic()
                progress(sink.raw_bytes, sink.stored_bytes, last - started)
        returncode = proc.wait()
        reader.join()
        if returncode != 0:
            text = b"".join(stderr_chunks).decode(errors="replace")
            if returncode < 0:
                raise ToolFailed(f"{argv[0].rsplit('/', 1)[-1]} was killed by signal {-returncode}.",
                                 hint="nothing was listed; rerun the backup.")
            raise classify_error(text)
        digest = sink.finish()
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        writer.abort()
        raise
    finally:
        reader.join(timeout=5)  # the pipe reaches EOF once the tool is gone
        proc.stdout.close()
        proc.stderr.close()
    return StreamStats(sink.raw_bytes, sink.stored_bytes, digest, time.monotonic() - started)


def stream_into(
    produce: Callable[[CompressingSink], None], *, repository: Repository, key: str, level: int, threads: int
) -> StreamStats:
    """Stream what ``produce`` writes (e.g. a tar archive) into ``key``."""
    started = time.monotonic()
    writer = repository.open_writer(key)
    sink = CompressingSink(writer, level=level, threads=threads)
    try:
        produce(sink)
        digest = sink.finish()
    except BaseException:
        writer.abort()
        raise
    return StreamStats(sink.raw_bytes, sink.stored_bytes, digest, time.monotonic() - started)


def iter_decompressed(chunks: Iterator[bytes]) -> Iterator[bytes]:
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    for chunk in chunks:
        out = decompressor.decompress(chunk)
        if out:
            yield out


@dataclass
class ObjectCheck:
    sha256: str
    stored_bytes: int
    listing: str | None
    error: str | None = None  # why the content does not decode / list, if it does not


def check_object(
    repository: Repository,
    key: str,
    *,
    list_argv: list[str] | None = None,
    env: dict[str, str] | None = None,
    decompress_all: bool = False,
    magic: bytes | None = None,
) -> ObjectCheck:
    """Re-read ``key``: SHA-256 over every stored byte, and optionally pipe it through ``pg_restore --list``.

    ``pg_restore --list`` stops reading after the archive's table of contents, so only the head is decompressed;
    the checksum still covers the whole object. ``magic``: the decompressed content must start with it (only the
    head is decompressed: a Redis RDB was read whole by redis-check-rdb on its way in).
    """
    sha = hashlib.sha256()
    size = 0
    proc = None
    out: list[bytes] = []
    err: list[bytes] = []
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    if list_argv:
        proc = subprocess.Popen(list_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env)
        threads = [
            threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
            threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
        ]
        for t in threads:
            t.start()
    feeding = proc is not None
    error: str | None = None
    head = b""
    try:
        for chunk in repository.iter_chunks(key):
            sha.update(chunk)
            size += len(chunk)
            if error is not None:
                continue  # keep hashing: a checksum mismatch is the more precise report
            try:
                if magic is not None and len(head) < len(magic):
                    head += decompressor.decompress(chunk)
                    if len(head) >= len(magic) and not head.startswith(magic):
                        error = f"object {key!r} does not start as it should ({magic!r})"
                elif decompress_all and not list_argv:
                    decompressor.decompress(chunk)
                elif feeding:
                    assert proc is not None and proc.stdin is not None
                    data = decompressor.decompress(chunk)
                    if data:
                        proc.stdin.write(data)
            except BrokenPipeError:
                feeding = False  # pg_restore has read the TOC and exited
            except zstandard.ZstdError as exc:
                error = f"object {key!r} is not a valid zstd stream: {exc}"
                feeding = False
    finally:
        if proc is not None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
            except BrokenPipeError:
                pass
            proc.wait()
            for t in threads:
                t.join()
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
    if magic is not None and error is None and not head.startswith(magic):
        error = f"object {key!r} does not start as it should ({magic!r})"
    listing = None
    if proc is not None and error is None:
        if proc.returncode != 0:
            text = b"".join(err).decode(errors="replace").strip()
            error = f"pg_restore --list rejected {key!r}: {text.splitlines()[-1] if text else proc.returncode}"
        else:
            listing = b"".join(out).decode(errors="replace")
    return ObjectCheck(sha.hexdigest(), size, listing, error)


def fetch_object(repository: Repository, key: str, dest: Path, *, sha256: str, stored_bytes: int,
                 settle: bool = True) -> int:
    """Stream ``key`` into ``dest`` decompressed, checking its SHA-256 and size against the manifest.

    The checksum covers the stored bytes, so it is known only at the end: on a mismatch the local copy is
    deleted and nothing downstream ever reads it. Returns the decompressed size.

    Hashing runs in a second thread beside decompression and the write (both release the GIL), and the file's
    pages are queued for writeback as they are written and are all on disk on return: ``pg_restore`` then reads
    a clean file from the page cache instead of competing with its writeback (measured in docs/benchmarks.md).
    ``settle=False`` leaves the writeback to the kernel (the DR drill: measured faster there, issue 9).
    """
    sha = hashlib.sha256()
    size = 0
    written = 0
    decompressor = zstandard.ZstdDecompressor().decompressobj(write_size=CHUNK)
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
    hasher = threading.Thread(target=_hash_queue, args=(chunks, sha), name="fetch-sha256", daemon=True)
    hasher.start()
    try:
        try:
            with os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
                os.fchmod(handle.fileno(), 0o600)  # the dump holds the data; the umask must not widen it
                writeback = Writeback(handle.fileno()) if settle else None
                for chunk in repository.iter_chunks(key):
                    chunks.put(chunk)
                    size += len(chunk)
                    try:
                        data = decompressor.decompress(chunk)
                    except zstandard.ZstdError as exc:
                        raise VerificationFailed(
                            f"object {key!r} is damaged ({exc}).",
                            hint="pick another backup with 'runbooks backups list'.",
                        ) from None
                    handle.write(data)
                    written += len(data)
                    if writeback is not None:
                        writeback.wrote(len(data))
                handle.flush()
                if settle:
                    os.fdatasync(handle.fileno())
        finally:
            chunks.put(None)
            hasher.join()
        if size != stored_bytes or sha.hexdigest() != sha256:
            raise VerificationFailed(
                f"object {key!r} does not match its manifest (read {size} bytes sha256 {sha.hexdigest()[:12]}…, "
                f"manifest {stored_bytes} bytes sha256 {sha256[:12]}…); it is corrupted.",
                hint="pick another backup with 'runbooks backups list'; never restore this one.",
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return written


def _hash_queue(chunks: queue.Queue[bytes | None], sha: hashlib._Hash) -> None:
    while (chunk := chunks.get()) is not None:
        sha.update(chunk)
