"""The disk-cleanup engine: watermarks, a budget, and one streaming walk that both plans (dry run) and acts.

Safety is tmpreaper's and systemd-tmpfiles': a walk starts only at a root inside the allowlist and outside every
system tree and PostgreSQL data directory, opens every directory relative to its parent with ``O_NOFOLLOW`` (a
directory swapped for a symbolic link mid-walk is never entered), stays on the root's filesystem, touches regular
files only, never a name matching a protected pattern, a file some process holds open, nor anything in a
PostgreSQL data directory it meets below the root (running or not), and stops at the run's budget. A dry run goes
through the very same code and only skips the ``unlink``: its plan is what the real run does, as long as nothing
else writes meanwhile.

Memory is bounded by the tree's depth (one open directory and its subdirectory names per level), not its size;
the manifest of what went is streamed to a file, and only its first lines are kept for the report.
"""

from __future__ import annotations

import collections
import errno
import fnmatch
import gzip
import json
import os
import queue
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, Field

from runbooks.core.errors import ConfigurationError, Refused
from runbooks.core.protected_paths import (
    data_directory_refusal,
    is_data_directory,
    root_refusal,
    system_refusal,
)
from runbooks.settings import CleanupSettings, FileRule

COMPRESS_ESTIMATE = 0.9  # a dry run's guess of what gzip frees of a text log (measured logs: 85-95 %)
SAMPLES = 20  # paths (and errors) per rule kept in the result (the manifest file has them all)
PARTIAL_SUFFIX = b".runbooks-partial"  # a compression's copy before it is complete and linked to NAME.gz
PARTIAL_GLOB = ".*" + PARTIAL_SUFFIX.decode()
MANIFEST_FLUSH_LINES = 100  # a SIGKILLed run's manifest misses at most this many of its last lines
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Usage(BaseModel):
    """One filesystem as ``df`` shows it: percent = used / (used + available), reserved blocks excluded."""

    path: str
    device: int
    total_bytes: int
    used_bytes: int
    available_bytes: int

    @property
    def percent(self) -> float:
        size = self.used_bytes + self.available_bytes
        return 100.0 * self.used_bytes / size if size else 0.0

    def bytes_to(self, percent: float) -> int:
        """Bytes to free so usage is strictly below ``percent``."""
        size = self.used_bytes + self.available_bytes
        return max(0, self.used_bytes - int(size * percent / 100) + 1)


def measure(path: Path) -> Usage:
    st = os.statvfs(path)
    return Usage(path=str(path), device=os.stat(path).st_dev, total_bytes=st.f_blocks * st.f_frsize,
                 used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize, available_bytes=st.f_bavail * st.f_frsize)


class Ledger:
    """How much each filesystem still needs to lose to get below the low watermark, shared by every rule of a run.

    Only filesystems at or above the high watermark need anything; ``force`` makes every filesystem want
    everything the rules select. Dry and real runs account the same way (blocks of files whose last link goes),
    so the plan stops where the real run stops."""

    def __init__(self, usages: Iterable[Usage], *, high: float, low: float, force: bool) -> None:
        self.force = force
        self.need: dict[int, int] = {}
        self.freed: Counter[int] = Counter()
        for usage in usages:
            if usage.percent >= high and usage.device not in self.need:
                self.need[usage.device] = usage.bytes_to(low)

    @property
    def triggered(self) -> bool:
        return self.force or bool(self.need)

    def wants(self, device: int) -> bool:
        return self.force or (device in self.need and self.freed[device] < self.need[device])

    def remaining(self, device: int) -> int | None:
        """Bytes still to free on ``device``; None: no limit (force)."""
        if self.force:
            return None
        return max(0, self.need.get(device, 0) - self.freed[device])

    def add(self, device: int, freed: int) -> None:
        self.freed[device] += freed

    def healthy(self) -> bool:
        """Every filesystem that needed cleaning is below the low watermark (never, under force)."""
        return not self.force and all(self.freed[d] >= n for d, n in self.need.items())


@dataclass
class Budget:
    """The per-run limit on what the file rules may remove or compress."""

    max_files: int
    max_bytes: int
    files: int = 0
    bytes: int = 0

    def allows(self, size: int) -> bool:
        return self.files < self.max_files and self.bytes + size <= self.max_bytes

    def spend(self, size: int) -> None:
        self.files += 1
        self.bytes += size


class Matcher:
    """Name globs compiled into one regular expression (fnmatch per name would dominate a million-file walk)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        self.everything = "*" in patterns
        regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")
        self.match: Callable[[str], object] = (lambda name: True) if self.everything else regex.match

    def __call__(self, name: str) -> bool:
        return self.match(name) is not None


def open_files() -> set[tuple[int, int]]:
    """(device, inode) of every file a process on this host holds open, from ``/proc/*/fd`` (what ``lsof`` reads).

    Processes of other users are visible only to root; a cleanup of shared directories should run as root."""
    held: set[tuple[int, int]] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return held
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                held.add((st.st_dev, st.st_ino))
    return held


Action = Literal["deleted", "compressed", "removed-dir", "would-delete", "would-compress", "would-remove-dir"]
_WOULD: dict[str, Action] = {"deleted": "would-delete", "compressed": "would-compress",
                             "removed-dir": "would-remove-dir"}
_DID: dict[str, Action] = {"deleted": "deleted", "compressed": "compressed", "removed-dir": "removed-dir"}


class ManifestLine(BaseModel):
    rule: str
    action: Action
    path: str
    bytes: int = Field(description="what it freed (or would): blocks of a file whose last link went")
    mtime: float


class Manifest:
    """Every path a run deleted or compressed (or would), one JSON line each, streamed to a private file.

    The gzip stream is sync-flushed every ``MANIFEST_FLUSH_LINES`` lines: a run killed mid-deletion leaves a
    manifest that lists all but its last few deletions (``zcat`` reads it, then says the stream ends early),
    instead of the empty file its buffers would otherwise leave."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._out: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self._out = gzip.open(os.fdopen(fd, "wb"), "wt", compresslevel=1)

    def write(self, rule: str, action: Action, path: str, freed: int, mtime: float) -> None:
        """One line, as ``ManifestLine`` reads it back (written by hand: a model per file costs a tenth of a
        dry run)."""
        self.count += 1
        if self._out is not None:
            self._out.write(f'{{"rule":{json.dumps(rule)},"action":"{action}","path":{json.dumps(path)},'
                            f'"bytes":{freed},"mtime":{mtime}}}\n')
            if self.count % MANIFEST_FLUSH_LINES == 0:
                self._out.flush()  # text -> gzip (Z_SYNC_FLUSH) -> file: readable even if the run dies next

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


class TreeOutcome(BaseModel):
    """One rule on one root: what it selected and did (or would do), and what it refused to touch."""

    rule: str
    action: Literal["delete", "compress"]
    root: str
    state: Literal["done", "skipped", "stopped", "failed"] = "done"
    why: str = ""
    files: int = Field(default=0, description="files deleted or compressed (dry run: that would be)")
    bytes: int = Field(default=0, description="bytes freed (dry run: that would be; compression estimated)")
    dirs_removed: int = 0
    leftovers: int = Field(default=0, description="partial copies of compressions killed midway, removed (dry run: "
                           "that would be)")
    skipped: dict[str, int] = Field(default_factory=dict, description="entries not touched, by why")
    errors: list[str] = Field(default_factory=list, description="the first failures (the run goes on)")
    samples: list[str] = Field(default_factory=list, description="the first paths acted on")
    data_directories: list[str] = Field(default_factory=list, description="PostgreSQL data directories met below "
                                        "the root: nothing in them was touched")
    seconds: float = 0.0


@dataclass
class Walk:
    """Everything one rule's walk shares with the rest of the run."""

    ledger: Ledger
    budget: Budget
    manifest: Manifest
    protected_patterns: list[str]
    held: set[tuple[int, int]]
    dry_run: bool
    now: float = field(default_factory=time.time)
    # A dry run's files an earlier rule would have compressed, (device, inode) -> estimated .gz bytes: a later
    # rule sees them as the .gz the real run would find.
    compressed: dict[tuple[int, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.protected = Matcher(self.protected_patterns)


def shown(name: bytes | str) -> str:
    """A path as text for reports and the manifest: bytes that are not UTF-8 (anyone may create such a name in
    /tmp) become ``\xff`` escapes instead of breaking the JSON of the result."""
    raw = os.fsencode(name) if isinstance(name, str) else name
    return raw.decode("utf-8", "backslashreplace")


def check_root(root: Path, settings: CleanupSettings) -> None:
    """Refuse (ConfigurationError) a root that is missing, not a directory, reached through a symbolic link, inside
    a protected directory, outside the allowlist, or that is, lies inside or holds a system tree or a PostgreSQL
    data directory (the settings refused those at load; a data directory may have appeared since): checked for
    every root before anything is touched."""
    if why := system_refusal(root):
        raise ConfigurationError(f"cleanup root {str(root)!r} {why}: cleanup never deletes there.",
                                 hint="point the rule at a directory of disposable files (e.g. /var/log/<app>).")
    if not any(root == allowed or allowed in root.parents for allowed in settings.allowed_roots):
        raise ConfigurationError(f"cleanup root {str(root)!r} is outside allowed_roots.",
                                 hint="add its parent to [cleanup] allowed_roots or fix the rule's roots.")
    protect = Matcher(settings.protected)
    if any(protect(part) for part in root.parts[1:]):
        raise ConfigurationError(f"cleanup root {str(root)!r} is (inside) a protected name.",
                                 hint="point the rule elsewhere, or change [cleanup] protected.")
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise ConfigurationError(f"cleanup root {str(root)!r} does not exist.",
                                 hint="create it, or remove it from the rule's roots in [cleanup].") from None
    except OSError as exc:
        raise ConfigurationError(f"cleanup root {str(root)!r} cannot be read: {exc.strerror}.",
                                 hint="run the cleanup as a user that can read it.") from None
    if stat.S_ISLNK(st.st_mode) or os.path.realpath(root) != str(root):
        raise ConfigurationError(f"cleanup root {str(root)!r} is reached through a symbolic link "
                                 f"({os.path.realpath(root)!r}).", hint="name the directory itself in the rule.")
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"cleanup root {str(root)!r} is not a directory.",
                                 hint="name a directory in the rule's roots.")


def open_root(root: Path) -> int:
    """The root's directory fd, opened from ``/`` one component at a time with ``O_NOFOLLOW``: a component
    swapped for a symbolic link since the checks (``/tmp/user`` -> ``/etc``) fails here instead of being
    followed."""
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in root.parts[1:]:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def mount_points_under(root: Path) -> list[str]:
    """Mount points strictly below ``root`` (bind mounts of the same filesystem included, which ``-xdev`` cannot
    see), from /proc/self/mountinfo, relative to the root."""
    found: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    prefix = str(root).rstrip("/") + "/"
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
            if point.startswith(prefix):
                found.append(point[len(prefix):])
    return found


class _Dirs:
    """Directory fds along one path below the root, each opened relative to its parent with ``O_NOFOLLOW`` and
    checked to be on the root's filesystem: a component swapped for a symbolic link after find listed it is
    never followed. Consecutive files of one directory reuse its fd."""

    def __init__(self, root_fd: int, device: int) -> None:
        self.root_fd = root_fd
        self.device = device
        self.stack: list[tuple[bytes, int]] = []

    def open(self, relative_dir: bytes) -> int:
        parts = relative_dir.split(b"/") if relative_dir else []
        common = 0
        while common < len(self.stack) and common < len(parts) and self.stack[common][0] == parts[common]:
            common += 1
        for _, fd in self.stack[common:]:
            os.close(fd)
        del self.stack[common:]
        parent = self.stack[-1][1] if self.stack else self.root_fd
        for part in parts[common:]:
            fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
            if os.fstat(fd).st_dev != self.device:
                os.close(fd)
                raise OSError(errno.EXDEV, "on another filesystem")
            self.stack.append((part, fd))
            parent = fd
        return parent

    def close(self) -> None:
        for _, fd in self.stack:
            os.close(fd)
        self.stack.clear()


class _DataDirectories:
    """PostgreSQL data directories below the root, found as the walk meets what is in them: find cannot ask what a
    directory holds, so each directory along the current path is checked once (two ``fstatat``), and nothing in a
    data directory is touched, in a dry run too, running or not. The settings refuse a root that is, lies inside
    or holds one near its top; this finds the deeper ones (a stopped cluster left under ``/tmp/x/y/z``)."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.stack: list[tuple[bytes, bytes | None]] = []  # (component, the data directory it is or lies in)
        self.found: list[bytes] = []
        self._last: tuple[bytes | None, bytes | None] = (None, None)

    def holding(self, directory: bytes) -> bytes | None:
        """The data directory (relative to the root) that ``directory`` is or lies inside, else None."""
        if directory == self._last[0]:  # consecutive files of one directory: most records
            return self._last[1]
        parts = directory.split(b"/") if directory else []
        common = 0
        while common < len(self.stack) and common < len(parts) and self.stack[common][0] == parts[common]:
            common += 1
        del self.stack[common:]
        for part in parts[common:]:
            above = self.stack[-1][1] if self.stack else None
            if above is None:
                path = b"/".join(parts[:len(self.stack) + 1])
                if is_data_directory(path, dir_fd=self.root_fd):
                    above = path
                    if path not in self.found:
                        self.found.append(path)
            self.stack.append((part, above))
        found = self.stack[-1][1] if self.stack else None
        self._last = (directory, found)
        return found


def _names(patterns: Iterable[str]) -> list[str]:
    """``-name a -o -name b`` (find's -name and fnmatch read the same shell globs; Python re-checks anyway)."""
    out: list[str] = []
    for pattern in patterns:
        out += (["-o"] if out else []) + ["-name", pattern]
    return out


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def find_command(rule: FileRule, protected: list[str], cutoff: float, mounts: Iterable[str] = ()) -> list[str]:
    """The find(1) that lists a rule's candidates under the current directory, NUL-separated: never following a
    symbolic link (-P), never leaving the filesystem (-xdev) nor entering a mount point below the root (a bind
    mount of the same filesystem), not entering protected directories. With ``remove_empty_dirs`` it lists every
    file and directory, so which directories end up empty is known exactly, in a dry run too."""
    command = ["find", "-P", ".", "-xdev", "-mindepth", "1"]
    if rule.action == "compress":  # what a compression killed midway left, however young: listed apart
        command += ["(", "-type", "f", "-name", PARTIAL_GLOB, "-printf", r"z %i %P\0", ")", "-o"]
    matching = [] if "*" in rule.patterns else ["(", *_names(rule.patterns), ")"]
    if rule.remove_empty_dirs:  # every file: which directories keep something must be known
        files = [*matching, "-printf", r"f %i %n %s %b %T@ %P\0", "-o", "-printf", r"k %P\0"]
    else:
        files = [*matching, "!", "-newermt", f"@{cutoff:.6f}", "-printf", r"f %i %n %s %b %T@ %P\0", "-o", "-true"]
    # Regular files first: most entries are, and each one stops at its own branch.
    command += ["(", "-type", "f", "(", *files, ")", ")"]
    for mount in mounts:
        command += ["-o", "(", "-path", "./" + _glob_escape(mount), "-prune", "-printf", r"m %P\0", ")"]
    if protected:
        command += ["-o", "(", "-type", "d", "(", *_names(protected), ")", "-prune", "-printf", r"p %P\0", ")"]
    if rule.remove_empty_dirs:
        command += ["-o", "(", "-type", "d", "-printf", r"d %D %T@ %P\0", ")"]
    command += ["-o", "(", "-type", "l", "-printf", r"l %P\0", ")", "-o", "(", "!", "-type", "d", "-printf",
                r"o %P\0", ")"]
    return command


def _records(stream: IO[bytes]) -> Iterator[bytes]:
    """NUL-terminated records as they arrive (os.read returns what the pipe holds: decisions overlap the walk)."""
    tail = b""
    fd = stream.fileno()
    while chunk := os.read(fd, 1 << 16):
        parts = (tail + chunk).split(b"\0")
        tail = parts.pop()
        yield from parts
    if tail:
        yield tail


class _Unlinker:
    """Removes files in threads of their own, in the order decided, each directory always by the same thread: an
    unlink costs ~100 us of kernel time here (ext4) and releases the GIL, so find's walk, the decisions and the
    unlinks of two directories at a time run side by side (two threads on separate directories unlink a tree
    faster than ``find -delete``; two in one directory would only contend for its lock). Each file is re-checked
    right before it goes (still the regular file find listed, still old); what could not be removed comes back
    as a correction. The manifest lists only what was removed."""

    THREADS = 2

    def __init__(self, root_fd: int, device: int, cutoff: float, walk: Walk, rule: str, prefix: str) -> None:
        self.root_fd, self.device, self.cutoff = root_fd, device, cutoff
        self.walk, self.rule, self.prefix = walk, rule, prefix
        self.lock = threading.Lock()  # the manifest's gzip stream is not thread-safe
        self.corrections: collections.deque[tuple[bytes, int, int, str]] = collections.deque()
        self.queues: list[queue.Queue[tuple[bytes, bytes, int, int, int, float] | None]] = [
            queue.Queue(maxsize=1 << 15) for _ in range(self.THREADS)]
        self.threads = [threading.Thread(target=self._run, args=(q,), name=f"cleanup-unlinker-{i}", daemon=True)
                        for i, q in enumerate(self.queues)]
        for thread in self.threads:
            thread.start()

    def put(self, relative: bytes, inode: int, freed: int, size: int, mtime: float) -> None:
        directory, _, name = relative.rpartition(b"/")
        self.queues[hash(directory) % self.THREADS].put((directory, name, inode, freed, size, mtime))

    def _run(self, work: queue.Queue[tuple[bytes, bytes, int, int, int, float] | None]) -> None:
        dirs = _Dirs(self.root_fd, self.device)
        manifest, cutoff = self.walk.manifest, self.cutoff
        try:
            while (item := work.get()) is not None:
                directory, name, inode, freed, size, mtime = item
                relative = directory + b"/" + name if directory else name
                try:
                    fd = dirs.open(directory)
                    now = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISREG(now.st_mode) or now.st_ino != inode or now.st_mtime > cutoff:
                        self.corrections.append((relative, freed, size, "changed during the walk"))
                        continue
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    self.corrections.append((relative, freed, size, ""))
                    continue
                except OSError as exc:
                    why = "changed during the walk" if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV) \
                        else f"error: {exc.strerror}"
                    self.corrections.append((relative, freed, size, why))
                    continue
                with self.lock:
                    manifest.write(self.rule, "deleted", self.prefix + shown(relative), freed, mtime)
        finally:
            dirs.close()

    def close(self) -> None:
        for work in self.queues:
            work.put(None)
        for thread in self.threads:
            thread.join()


def clean_tree(rule: FileRule, root: Path, walk: Walk) -> TreeOutcome:
    """Delete (or compress) what ``rule`` selects under ``root`` until the filesystem is below the low
    watermark, the budget is spent, or nothing is left; a dry run decides identically and touches nothing.

    GNU find walks (it is the fastest walker here, and runs on its own core while this process decides); every
    decision is made here: protected names, files held open, age, budget, watermark. Each file is removed
    relative to its directory's fd after checking it is still the regular file find saw."""
    started = time.monotonic()
    out = TreeOutcome(rule=rule.name, action=rule.action, root=str(root))
    skipped: Counter[str] = Counter()
    cutoff = walk.now - rule.older_than.total_seconds()
    select = Matcher(rule.patterns).match
    protect = walk.protected.match
    compress = rule.action == "compress"
    action = _verb(walk.dry_run, "compressed" if compress else "deleted")
    prefix = f"{root}/"
    held, ledger, budget, dry_run, compressed = walk.held, walk.ledger, walk.budget, walk.dry_run, walk.compressed
    # The settings and the flow refused these already; the engine refuses them too, whoever calls it.
    if why := root_refusal(root) or data_directory_refusal(root, depth=0):
        out.state, out.why = "failed", f"refused: {root} {why}"
        return out
    try:
        root_fd = open_root(root)
    except OSError as exc:
        out.state, out.why = "failed", f"cannot open {root} without following a link: {exc.strerror}"
        return out
    if is_data_directory(b"", dir_fd=root_fd):  # became one since the check above
        os.close(root_fd)
        out.state, out.why = "failed", f"refused: {root} is a PostgreSQL data directory (PG_VERSION beside global/)"
        return out
    device = os.fstat(root_fd).st_dev
    if not ledger.wants(device):
        os.close(root_fd)
        out.state, out.why = "skipped", "its filesystem is not above the high watermark (or is below the low one)"
        return out
    dirs = _Dirs(root_fd, device)
    clusters = _DataDirectories(root_fd)
    unlinker = None if dry_run or compress else _Unlinker(root_fd, device, cutoff, walk, rule.name, prefix)
    old_dirs: list[tuple[bytes, float]] = []
    kept: set[bytes] = set()
    links: dict[int, int] = {}  # inode -> links not yet removed, for files with several
    stop: str | None = None
    files = freed_total = 0
    leftover_open: set[tuple[int, int]] | None = None

    def keep(relative: bytes) -> None:
        while True:
            relative = relative.rpartition(b"/")[0]
            if not relative or relative in kept:
                return
            kept.add(relative)

    def error(text: str) -> None:
        skipped["error"] += 1
        if len(out.errors) < SAMPLES:
            out.errors.append(text)

    def correct() -> None:
        """Take back what the unlinker could not remove."""
        nonlocal files, freed_total
        while unlinker is not None and unlinker.corrections:
            relative, freed, size, why = unlinker.corrections.popleft()
            files -= 1
            freed_total -= freed
            budget.files -= 1
            budget.bytes -= size
            ledger.add(device, -freed)
            keep(relative)
            path = prefix + shown(relative)
            if path in out.samples:
                out.samples.remove(path)
            if why.startswith("error: "):
                error(f"{path}: {why[7:]}")
            elif why:
                skipped[why] += 1

    # find runs with the root's open fd as its working directory (a root swapped for a link after the checks is
    # not where it starts); its errors go to a file, so a flood of them cannot fill a pipe and stall the walk.
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(find_command(rule, walk.protected_patterns, cutoff, mount_points_under(root)),
                                   cwd=f"/proc/self/fd/{root_fd}", pass_fds=(root_fd,), stdout=subprocess.PIPE,
                                   stderr=errors, env={**os.environ, "LC_ALL": "C", "TZ": "UTC"})
        assert process.stdout is not None
        try:
            for record in _records(process.stdout):
                kind = record[:1]
                if kind == b"f":
                    if unlinker is not None and unlinker.corrections:
                        correct()
                    _, ino_, nlink_, size_, blocks_, mtime_, relative = record.split(b" ", 6)
                    directory, _, name = relative.rpartition(b"/")
                    if clusters.holding(directory) is not None:
                        keep(relative)
                        continue
                    mtime = float(mtime_)
                    text = os.fsdecode(name)
                    inode = int(ino_)
                    estimate = compressed.get((device, inode)) if compressed else None
                    if estimate is not None:  # a dry run's earlier rule compressed it: it is the .gz now
                        if compress:
                            continue
                        text += ".gz"
                    if not select(text) or mtime > cutoff:
                        keep(relative)
                        continue
                    if protect(text):
                        keep(relative)
                        skipped["protected"] += 1
                        continue
                    if (device, inode) in held:
                        keep(relative)
                        skipped["open by a process"] += 1
                        continue
                    if compress and text.endswith(".gz"):
                        continue
                    blocks = int(blocks_) * 512
                    if nlink_ != b"1":  # the blocks come back when the last link in the tree goes
                        left = links.get(inode, int(nlink_)) - 1
                        links[inode] = left
                        freed = blocks if left <= 0 else 0
                    else:
                        freed = blocks
                    if estimate is not None:
                        freed = estimate
                    elif compress:
                        freed = int(freed * COMPRESS_ESTIMATE)
                    if not budget.allows(blocks):
                        stop = "the run's budget (max_files / max_bytes) is spent"
                        break
                    if not ledger.wants(device):
                        stop = "the filesystem is below the low watermark"
                        break
                    path = prefix + shown(relative) + (".gz" if estimate is not None else "")
                    if unlinker is not None:
                        unlinker.put(relative, inode, freed, blocks, mtime)
                    elif compress and not dry_run:
                        try:
                            freed = _compress(dirs.open(directory), name, inode, cutoff)
                        except FileNotFoundError:
                            continue
                        except Refused as exc:
                            keep(relative)
                            skipped[exc.message] += 1
                            continue
                        except OSError as exc:
                            keep(relative)
                            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                                skipped["changed during the walk"] += 1
                            else:
                                error(f"{path}: {exc.strerror}")
                            continue
                        walk.manifest.write(rule.name, action, path, freed, mtime)
                    else:
                        walk.manifest.write(rule.name, action, path, freed, mtime)
                    if compress:
                        keep(relative)
                        if dry_run:
                            compressed[(device, inode)] = blocks - freed
                    budget.spend(blocks)
                    ledger.add(device, freed)
                    files += 1
                    freed_total += freed
                    if len(out.samples) < SAMPLES:
                        out.samples.append(path)
                elif kind == b"k":
                    keep(record[2:])
                elif kind == b"d":
                    _, dev_, mtime_, relative = record.split(b" ", 3)
                    if clusters.holding(relative) is not None:  # never removed, nor is what holds it
                        keep(relative + b"/.")
                    elif int(dev_) != device:  # a mount point: never removed, and its parent keeps it
                        keep(relative + b"/.")
                    elif float(mtime_) <= cutoff:
                        old_dirs.append((relative, float(mtime_)))
                    else:  # young: it stays, so its parent is not empty
                        keep(relative)
                elif kind in (b"p", b"m"):
                    skipped["protected" if kind == b"p" else "mount point"] += 1
                    keep(record[2:] + b"/.")
                elif kind == b"l":
                    skipped["symbolic link"] += 1
                    keep(record[2:])
                elif kind == b"o":
                    skipped["not a regular file"] += 1
                    keep(record[2:])
                elif kind == b"z":
                    _, ino_, relative = record.split(b" ", 2)
                    if clusters.holding(relative.rpartition(b"/")[0]) is not None:
                        keep(relative)
                        continue
                    if leftover_open is None:  # now, not at the run's start: a concurrent run's copy is open
                        leftover_open = open_files()
                    if _remove_partial(dirs, relative, int(ino_), device, leftover_open, dry_run):
                        out.leftovers += 1
                        walk.manifest.write(rule.name, _verb(dry_run, "deleted"), prefix + shown(relative), 0,
                                            0.0)
        finally:
            if process.poll() is None:
                process.kill()
            process.stdout.close()
            process.wait()
            if unlinker is not None:
                unlinker.close()
                correct()
            errors.seek(0)
            for line in errors.read().decode(errors="backslashreplace").splitlines()[:SAMPLES]:
                error(line.removeprefix("find: "))
    try:
        if rule.remove_empty_dirs and not stop and not compress:
            out.dirs_removed = _remove_empty(root, old_dirs, kept, dirs, walk, rule)
    finally:
        dirs.close()
        os.close(root_fd)
    if stop:
        out.state, out.why = "stopped", stop
    if clusters.found:
        skipped["PostgreSQL data directory"] = len(clusters.found)
        out.data_directories = [prefix + shown(found) for found in clusters.found]
    out.files, out.bytes = files, freed_total
    out.skipped = dict(skipped)
    out.seconds = time.monotonic() - started
    return out


def _remove_empty(root: Path, old_dirs: list[tuple[bytes, float]], kept: set[bytes], dirs: _Dirs, walk: Walk,
                  rule: FileRule) -> int:
    """Directories older than the rule's age that hold nothing that stays, deepest first; never the root."""
    removed = 0
    for relative, mtime in sorted(old_dirs, key=lambda d: d[0].count(b"/"), reverse=True):
        if relative in kept:
            continue
        parent, _, name = relative.rpartition(b"/")
        if not walk.dry_run:
            try:
                os.rmdir(name, dir_fd=dirs.open(parent))
            except OSError:  # something appeared in it meanwhile, or it changed
                kept.add(parent)
                continue
        removed += 1
        walk.manifest.write(rule.name, _verb(walk.dry_run, "removed-dir"), f"{root}/{shown(relative)}", 0, mtime)
    return removed


def _verb(dry_run: bool, done: str) -> Action:
    return (_WOULD if dry_run else _DID)[done]


def _remove_partial(dirs: _Dirs, relative: bytes, inode: int, device: int, held: set[tuple[int, int]],
                    dry_run: bool) -> bool:
    """Remove the partial copy of a compression whose run was killed (no process holds it open); its original
    was never removed, since that happens only after the complete copy is linked to ``NAME.gz``."""
    parent, _, name = relative.rpartition(b"/")
    if not re.fullmatch(rb"\..+\.[0-9a-f]{16}" + re.escape(PARTIAL_SUFFIX), name) or (device, inode) in held:
        return False
    try:
        fd = dirs.open(parent)
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != inode:
            return False
        if not dry_run:
            os.unlink(name, dir_fd=fd)
    except OSError:
        return False  # gone meanwhile, or the directory changed: nothing of ours to remove
    return True


def _same_content(gz_fd: int, src: int) -> bool:
    """Whether the gzip file ``gz_fd`` holds exactly the bytes of ``src`` (read from its start), and is whole:
    its CRC and length trailer are checked as the end is read."""
    with os.fdopen(gz_fd, "rb", closefd=False) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unpacked, \
            os.fdopen(src, "rb", closefd=False) as original:
        original.seek(0)
        try:
            while True:
                expected = original.read(1 << 20)
                if unpacked.read(len(expected) or 1) != expected:
                    return False
                if not expected:
                    return True
        except (OSError, EOFError, zlib.error):  # not gzip, cut short, or a bad CRC
            return False


def _finish_compressed(dir_fd: int, name: bytes, target: bytes, src: int, st: os.stat_result) -> int:
    """``NAME.gz`` exists beside ``NAME`` (a run killed between linking its copy and removing the original, or a
    concurrent run): remove the original only if that file is a whole gzip of exactly its bytes; else refuse.
    Returns the blocks freed."""
    try:
        gz_fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        raise Refused("a compressed copy already exists") from None
    try:
        if not stat.S_ISREG(os.fstat(gz_fd).st_mode) or not _same_content(gz_fd, src):
            raise Refused("a compressed copy already exists (and differs)")
    finally:
        os.close(gz_fd)
    now = os.fstat(src)
    if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise Refused("written to while being compressed")
    os.unlink(name, dir_fd=dir_fd)
    return st.st_blocks * 512 if st.st_nlink == 1 else 0


def _compress(dir_fd: int, name: bytes, inode: int, cutoff: float) -> int:
    """gzip ``name`` beside itself (same mode, owner and mtime), then remove the original; returns the blocks
    freed. The copy is written to a new file of a random name (``O_EXCL``: never through a file or link someone
    planted) and linked to ``NAME.gz`` only if no such name exists; the original goes only if it did not change
    while it was read (a writer that appended meanwhile keeps its lines: the copy is dropped). A run killed midway
    leaves the original and at most a partial copy (the next run removes it) or a whole ``NAME.gz`` (the next run
    checks it holds exactly the original's bytes, then removes the original)."""
    target = name + b".gz"
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    partial: bytes | None = None
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != inode or st.st_mtime > cutoff:
            raise Refused("changed during the walk")
        try:
            os.stat(target, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:  # a copy is there already: the original goes if that copy is whole and the same, else it stays
            return _finish_compressed(dir_fd, name, target, src, st)
        for _ in range(10):
            candidate = b".%s.%s%s" % (name[:100], secrets.token_hex(8).encode(), PARTIAL_SUFFIX)
            try:
                dst = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              stat.S_IMODE(st.st_mode) & 0o666, dir_fd=dir_fd)
            except FileExistsError:
                continue
            partial = candidate
            break
        else:
            raise Refused("no free temporary name")
        try:
            with os.fdopen(src, "rb", closefd=False) as reader, os.fdopen(dst, "wb", closefd=False) as raw, \
                    gzip.GzipFile(filename=os.fsdecode(name), mode="wb", fileobj=raw, mtime=int(st.st_mtime)) as gz:
                shutil.copyfileobj(reader, gz, 1 << 20)
            if os.geteuid() == 0:
                os.fchown(dst, st.st_uid, st.st_gid)
            os.fsync(dst)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            after = os.fstat(dst)
        finally:
            os.close(dst)
        now = os.fstat(src)
        if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise Refused("written to while being compressed")
        try:
            os.link(partial, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:  # another run linked its copy first
            return _finish_compressed(dir_fd, name, target, src, st)
        os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(src)
        if partial is not None:
            try:
                os.unlink(partial, dir_fd=dir_fd)
            except OSError:
                pass
    freed = st.st_blocks * 512 if st.st_nlink == 1 else 0
    return max(0, freed - after.st_blocks * 512)


class Consumer(BaseModel):
    path: str
    bytes: int


def survey(path: Path, *, top: int) -> list[Consumer]:
    """``du -x -B1 --max-depth=1 PATH``: the largest children of ``path`` by blocks, one filesystem, links not
    followed, hard-linked files counted once; du keeps memory and file descriptors to the tree's depth."""
    if not path.is_dir():
        raise FileNotFoundError(errno.ENOENT, "not a directory", str(path))
    done = subprocess.run(["du", "-a", "-x", "-B1", "--max-depth=1", "-0", "--", str(path)], capture_output=True,
                          env={**os.environ, "LC_ALL": "C"})
    sizes: list[Consumer] = []
    for record in done.stdout.split(b"\0"):
        size, _, name = record.partition(b"\t")
        if name and name != os.fsencode(path) and size.isdigit():
            sizes.append(Consumer(path=shown(name), bytes=int(size)))
    return sorted(sizes, key=lambda c: c.bytes, reverse=True)[:top]


def manifest_lines(path: Path) -> Iterator[ManifestLine]:
    """Read a manifest back (tests, and an operator with ``zcat``)."""
    with gzip.open(path, "rt") as lines:
        for line in lines:
            yield ManifestLine.model_validate(json.loads(line))
