"""Directories a cleanup root may never be, lie inside, or hold: the system's trees (taken from the Filesystem
Hierarchy Standard), PostgreSQL data directories, and the places the runbooks keep what they cannot lose.

Issue 24: a rule rooted at ``/etc`` deleted 285 files and 88 directories there; dry runs of the same shape planned
117,181 files under ``/usr`` and a stopped cluster's data files under ``/var/lib/postgresql`` (``postmaster.pid``
only protects a running one). The decision is ``refusal``, a pure function over plain paths; the thin I/O part
below it resolves symbolic links and looks for data directories on disk.
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path


@dataclass(frozen=True)
class Protected:
    """A directory cleanup never touches.

    ``inside``: nothing below it may be a root either (``/etc``, ``/usr``). Without it only the directory itself
    is refused (and, like every protected directory, anything that holds it): ``/opt`` and ``/var/lib`` hold one
    directory per application, and ``/opt/ats/tmp`` or ``/var/lib/app/cache`` may be an application's disposable
    files. ``pattern``: the last component is a glob (``/lib*``), never true for a path from the settings."""

    path: str
    what: str
    inside: bool = True
    pattern: bool = False


# The FHS 3.0 directories (https://refspecs.linuxfoundation.org/FHS_3.0/fhs-3.0.html), by section. Cleanup's own
# homes are left out on purpose: /tmp (§3.18) and /var/tmp (§5.15) hold temporary files, /var/log (§5.10) logs,
# /var/crash (§5.6) crash dumps; the seed rules clean /tmp, /var/tmp and /var/log. Every other directory of the
# root filesystem (ch. 3), /usr (ch. 4), /var (ch. 5) and the Linux annex (ch. 6: /proc, /sys) is here.
SYSTEM_TREES: tuple[Protected, ...] = (
    Protected("/", "the root directory, which holds every system tree", inside=False),
    Protected("/bin", "essential command binaries, FHS 3.0 §3.4"),
    Protected("/boot", "the boot loader's static files, FHS 3.0 §3.5"),
    Protected("/dev", "device files, FHS 3.0 §3.6"),
    Protected("/etc", "host-specific system configuration, FHS 3.0 §3.7"),
    Protected("/home", "user home directories, FHS 3.0 §3.8"),
    Protected("/lib", "essential shared libraries and kernel modules, FHS 3.0 §3.9"),
    Protected("/lib*", "alternate-format essential shared libraries, /lib<qual>, FHS 3.0 §3.10", pattern=True),
    Protected("/media", "the mount points of removable media, FHS 3.0 §3.11", inside=False),
    Protected("/mnt", "the mount point of temporarily mounted filesystems, FHS 3.0 §3.12", inside=False),
    Protected("/opt", "add-on application packages, FHS 3.0 §3.13", inside=False),
    Protected("/root", "the root user's home directory, FHS 3.0 §3.14"),
    Protected("/run", "data of running processes, FHS 3.0 §3.15"),
    Protected("/sbin", "system binaries, FHS 3.0 §3.16"),
    Protected("/srv", "data served by this system, FHS 3.0 §3.17", inside=False),
    Protected("/usr", "the secondary hierarchy: programs, libraries, shared data; FHS 3.0 ch. 4"),
    Protected("/var", "variable data, FHS 3.0 ch. 5", inside=False),
    Protected("/var/account", "process accounting logs, FHS 3.0 §5.4", inside=False),
    Protected("/var/cache", "application caches, FHS 3.0 §5.5", inside=False),
    Protected("/var/games", "variable game data, FHS 3.0 §5.7", inside=False),
    Protected("/var/lib", "variable state of applications and the system, FHS 3.0 §5.8", inside=False),
    Protected("/var/lock", "lock files, FHS 3.0 §5.9"),
    Protected("/var/mail", "user mailboxes, FHS 3.0 §5.11"),
    Protected("/var/opt", "variable data of /opt packages, FHS 3.0 §5.12", inside=False),
    Protected("/var/run", "data of running processes, FHS 3.0 §5.13"),
    Protected("/var/spool", "data awaiting processing: cron jobs, mail queues; FHS 3.0 §5.14"),
    Protected("/var/yp", "NIS databases, FHS 3.0 §5.16"),
    Protected("/proc", "the kernel's process information, FHS 3.0 ch. 6 (Linux)"),
    Protected("/sys", "the kernel's device and system information, FHS 3.0 ch. 6 (Linux)"),
    # Not in the FHS, the same kind: Debian's system backups, the EFI system partition (systemd's
    # file-hierarchy(7)), snap packages' mounts.
    Protected("/var/backups", "the system's own backups, Debian", inside=False),
    # The package managers' and container engines' state under /var/lib and /var/cache: deleting from them
    # breaks the host (the package database) or the engine (use the Docker rule, through the engine's API).
    Protected("/var/lib/dpkg", "the Debian package database"),
    Protected("/var/lib/apt", "apt's package lists and state"),
    Protected("/var/lib/rpm", "the RPM package database"),
    Protected("/var/lib/dnf", "dnf's package state"),
    Protected("/var/lib/systemd", "systemd's state (timers, journals' catalogue, credentials)"),
    Protected("/var/lib/docker", "the Docker engine's images, containers and volumes"),
    Protected("/var/lib/containerd", "containerd's images and snapshots"),
    Protected("/var/lib/postgresql", "PostgreSQL's clusters (Debian)"),
    Protected("/var/lib/pgsql", "PostgreSQL's clusters (RHEL)"),
    Protected("/var/lib/pgbackrest", "pgBackRest's repository (its default)"),
    Protected("/var/cache/apt", "apt's downloaded packages (apt-get clean empties it)"),
    Protected("/var/cache/debconf", "debconf's configuration database"),
    Protected("/efi", "the EFI system partition, file-hierarchy(7)"),
    Protected("/snap", "mounted snap packages"),
)

DATA_DIRECTORY_MARKER = "PG_VERSION"
SCAN_DEPTH = 2  # <root>/<version>/<cluster>: Debian's /var/lib/postgresql/15/main, RHEL's /var/lib/pgsql/15/data
SCAN_DIRECTORIES = 2000  # directories a settings load lists at most; a deeper data directory is found by the walk


def _parts(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split("/") if part)


def _same(parts: Sequence[str], pattern: Sequence[str], glob_last: bool) -> bool:
    """``parts`` names the same directory as ``pattern`` (whose last component may be a glob)."""
    if len(parts) != len(pattern):
        return False
    for i, (part, wanted) in enumerate(zip(parts, pattern, strict=True)):
        if glob_last and i == len(pattern) - 1:
            if not fnmatchcase(part, wanted):
                return False
        elif part != wanted:
            return False
    return True


def refusal(root: str, protected: Iterable[Protected]) -> str | None:
    """Why ``root`` (an absolute, normalised path) may not be a cleanup root, or None.

    It is refused when it *is* a protected directory, *lies inside* one protected as a whole, or *holds* one
    (walking it would reach the protected directory). The closest relation wins: "is", then "lies inside", then
    "holds", each in the order of ``protected``."""
    parts = _parts(root)
    found: dict[int, str] = {}
    for item in protected:
        pattern = _parts(item.path)
        depth = len(pattern)
        if _same(parts, pattern, item.pattern):
            found.setdefault(0, f"is {_shown(parts)} ({item.what})")
        elif len(parts) > depth and item.inside and _same(parts[:depth], pattern, item.pattern):
            found.setdefault(1, f"lies inside {_shown(parts[:depth])} ({item.what})")
        elif len(parts) < depth and _same(parts, pattern[:len(parts)], False):
            found.setdefault(2, f"holds {item.path} ({item.what})")
    return found[min(found)] if found else None


def _shown(parts: Sequence[str]) -> str:
    return "/" + "/".join(parts)


# -- I/O: symbolic links, data directories, homes ---------------------------------------------------------------
def resolved_trees(protected: Iterable[Protected]) -> list[Protected]:
    """``protected`` plus what each entry resolves to through symbolic links (``/var/run`` is ``/run``, ``/lib``
    is ``/usr/lib`` on a merged-/usr system, ``/home`` may be a link to another disk): a root is compared with
    both."""
    out: list[Protected] = []
    for item in protected:
        out.append(item)
        names = glob.glob(item.path) if item.pattern else [item.path]
        for name in names:
            real = os.path.realpath(name)
            if real != name:
                out.append(replace(item, path=real, what=f"{item.what}; {name} resolves to it", pattern=False))
    return out


@functools.cache
def resolved_system_trees() -> tuple[Protected, ...]:
    """``SYSTEM_TREES`` resolved on this host, once per process: a system's ``/lib`` or ``/var/run`` links do not
    move while it runs, and every settings load checks every root against them."""
    return tuple(resolved_trees(SYSTEM_TREES))


def root_refusal(root: Path | str, protected: Iterable[Protected] | None = None) -> str | None:
    """``refusal`` for the root as written and as it resolves (symbolic links followed), against the protected
    directories (None: the system trees) as written and as they resolve."""
    trees = resolved_system_trees() if protected is None else resolved_trees(protected)
    written = os.path.normpath(str(root))
    why = refusal(written, trees)
    if why is None:
        real = os.path.realpath(written)
        if real != written and (why := refusal(real, trees)) is not None:
            why = f"resolves to {real!r}, which {why}"
    return why


def is_data_directory(path: str | bytes | Path, *, dir_fd: int | None = None) -> bool:
    """A PostgreSQL data directory: a ``PG_VERSION`` file beside a ``global`` directory (the cluster-wide catalog
    holding ``pg_control``), whether a server runs on it or not. ``path`` is relative to ``dir_fd`` if given."""
    base = os.fsencode(path)
    prefix = base + b"/" if base else b""
    try:
        marker = os.stat(prefix + DATA_DIRECTORY_MARKER.encode(), dir_fd=dir_fd)
        catalog = os.stat(prefix + b"global", dir_fd=dir_fd)
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(marker.st_mode) and stat.S_ISDIR(catalog.st_mode)


def data_directory_refusal(root: Path | str, *, depth: int = SCAN_DEPTH, limit: int = SCAN_DIRECTORIES) -> str | None:
    """Why ``root`` may not be a cleanup root because of a PostgreSQL data directory, or None: the root is one,
    lies inside one, or holds one within ``depth`` levels (at most ``limit`` directories listed: the walk itself
    never enters one it meets deeper)."""
    real = os.path.realpath(root)
    for candidate in (real, *map(str, Path(real).parents)):
        if is_data_directory(candidate):
            relation = "is" if candidate == real else "lies inside"
            return f"{relation} the PostgreSQL data directory {candidate!r} (PG_VERSION beside global/; running or not)"
    found = find_data_directory(real, depth=depth, limit=limit)
    if found is not None:
        return f"holds the PostgreSQL data directory {found!r} (PG_VERSION beside global/; running or not)"
    return None


def find_data_directory(root: str, *, depth: int, limit: int) -> str | None:
    """The first data directory below ``root``, breadth first, ``depth`` levels deep, listing at most ``limit``
    directories; symbolic links are not followed (the walk never follows them either)."""
    level, listed = [root], 0
    for _ in range(depth):
        below: list[str] = []
        for directory in level:
            if listed >= limit:
                return None
            listed += 1
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            if is_data_directory(entry.path):
                                return entry.path
                            below.append(entry.path)
            except OSError:
                continue
        level = below
    return None


def home_directories() -> list[str]:
    """The home of the user running the runbooks: ``$HOME`` and the password database's (they may differ); ``/``
    (the home of users that have none) is not a home."""
    homes = {os.path.expanduser("~")}
    try:
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    return sorted({os.path.normpath(h) for h in homes if h and os.path.isabs(h)} - {"/"})


def system_refusal(root: Path | str) -> str | None:
    """Why ``root`` may not be a cleanup root on any host: a system tree, or a PostgreSQL data directory (what the
    settings name besides, state and repositories, is checked with them)."""
    return root_refusal(root) or data_directory_refusal(root)
