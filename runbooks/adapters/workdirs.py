"""Private work directories for runbook runs (a restore's fetched dump and role script), swept by the next run.

Each run works in its own 0700 directory under one root, with an owner record (host, PID and the PID's start
time) written the moment the directory exists. A run killed with SIGKILL cannot clean up; the next run removes
every directory whose owner on this host is gone. Only directories carrying an owner record we wrote are ever
touched, never anything else in the root; directories of other hosts (a shared volume) are left to them.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from runbooks.adapters.processes import ProcessIdentity
from runbooks.adapters.repository.local import DIR_MODE, make_private_dirs, open_private
from runbooks.core.errors import ConfigurationError

OWNER = ".runbooks-work.json"


class WorkOwner(BaseModel):
    writer: ProcessIdentity
    purpose: str
    created_at: datetime
    flow_run_id: str | None = None
    released: bool = False  # its run finished and left it on purpose (a kept drill cluster): the next sweep's


@dataclass
class SweptWorkDir:
    path: str
    bytes: int
    reason: str
    removed: bool


def _size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


class WorkDirs:
    """``traversable``: another OS user (the PostgreSQL server's, when we are root) must pass through to a
    directory of its own inside a work directory (a DR drill's throwaway cluster): the root we create and each
    work directory are 0711 (enter, not list) instead of 0700, and stay ours, so that user can neither read nor
    plant anything beside what we give it. An existing root's mode is never changed."""

    def __init__(self, root: Path, *, traversable: bool = False) -> None:
        self.root = root.expanduser()
        self.traversable = traversable
        self.mode = 0o711 if traversable else DIR_MODE

    def _ensure_root(self) -> None:
        try:
            make_private_dirs(self.root, self.mode)  # what it creates, parents included; never an existing one
        except OSError as exc:
            raise ConfigurationError(f"cannot create the work directory root {str(self.root)!r}: {exc.strerror}.",
                                     hint="set state_dir (or restore.work_dir) to a writable directory.") from None

    def create(self, purpose: str, *, flow_run_id: str | None) -> Path:
        """A new 0700 directory owned by this process, recorded before anything is written into it."""
        self._ensure_root()
        path = self.root / f"{purpose}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        path.mkdir(mode=DIR_MODE)
        path.chmod(self.mode)
        owner = WorkOwner(writer=ProcessIdentity.current(), purpose=purpose, created_at=datetime.now(UTC),
                          flow_run_id=flow_run_id)
        with os.fdopen(open_private(path / OWNER), "wb") as handle:
            handle.write(owner.model_dump_json().encode())
        return path

    def free_bytes(self) -> int:
        """Free space where the work directories go (the nearest existing ancestor if the root is not made yet)."""
        probe = self.root
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        return shutil.disk_usage(probe).free

    def release(self, path: Path) -> None:
        """The run is done with ``path`` but leaves it (for inspection): the next sweep removes it even while the
        process that made it still runs (a worker, a test)."""
        owner = WorkOwner.model_validate_json((path / OWNER).read_bytes())
        (path / OWNER).write_bytes(owner.model_copy(update={"released": True}).model_dump_json().encode())

    @staticmethod
    def remove(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)  # fd-based: never follows a symlink out of the directory

    def sweep(self, *, dry_run: bool, purpose: str,
              before_remove: Callable[[Path], bool] | None = None) -> list[SweptWorkDir]:
        """Remove (dry-run: report) the work directories of ``purpose`` runs that are gone from this host (or
        released by their run on this host). ``before_remove`` stops what such a run may have left running in
        its directory and says whether it may go; a directory it keeps is left for the next sweep."""
        if not self.root.is_dir():
            return []
        swept = []
        for entry in sorted(self.root.iterdir()):
            try:
                info = entry.lstat()
                if not stat.S_ISDIR(info.st_mode):
                    continue  # a symlink or a file: not ours to judge
                record = (entry / OWNER).lstat()
                if info.st_uid != os.geteuid() or record.st_uid != os.geteuid() or not stat.S_ISREG(record.st_mode):
                    continue  # a record another user could have written (or a link) never decides a deletion
                owner = WorkOwner.model_validate_json((entry / OWNER).read_bytes())
            except (OSError, ValidationError):
                continue  # no owner record we can read: never ours to delete
            if owner.purpose != purpose or not owner.writer.on_this_host:
                continue  # another runbook's, or another host's (a shared volume): not ours to judge
            if not owner.released and owner.writer.alive():
                continue
            reason = (f"left by {owner.purpose} run {owner.flow_run_id or '-'} (process {owner.writer.pid}, "
                      f"started {owner.created_at:%Y-%m-%d %H:%M}Z), "
                      + ("which kept it for inspection" if owner.released else "which is gone"))
            size = _size(entry)
            if not dry_run:
                if before_remove is not None and not before_remove(entry):
                    continue
                self.remove(entry)
            swept.append(SweptWorkDir(path=str(entry), bytes=size, reason=reason, removed=not dry_run))
        return swept
