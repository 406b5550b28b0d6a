"""Locks: one run at a time per resource, never interleaved; a second run is refused with who holds it.

- ``resource_lock``: a PostgreSQL advisory lock, for a resource on a database server (a restore of a database, the
  DR drill of a target server): any host, dropped with its session when the run dies;
- ``host_lock``: an ``flock`` on a file in the state directory, for a resource of this host (its disks, its CPU
  during a DR drill): dropped by the kernel when the process dies, SIGKILL included; ``require_this_host`` first
  refuses a run that names another host (``on_host``: a per-host deployment's run picked up by the wrong worker);
- ``repository_lock``: an object in the backup repository with a heartbeat, for a resource with no server of its
  own (the serving model, the DR drill of a cluster): any host sharing the repository; a holder that died is
  recognised (a dead process on this host, or no heartbeat for ``stale_after`` from any host) and the lock taken
  over.

A run holds the lock for as long as it may change the resource (its approval wait included), and each destructive
step (``run.step(..., destructive=True)``) first proves it is still held. Once it holds a resource lock, a run
cancels the orphaned approvals of runs that were killed while holding it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field, ValidationError

from runbooks.adapters.postgres import AdvisoryLock
from runbooks.adapters.processes import ProcessIdentity
from runbooks.adapters.repository import Repository
from runbooks.adapters.repository.local import make_private_dirs
from runbooks.core.errors import BackupNotFound, ConfigurationError, LockBusy, LockLost
from runbooks.frame.approval import cancel_orphaned_approvals
from runbooks.frame.run import RunbookRun
from runbooks.settings import Settings

_log = logging.getLogger(__name__)


def lock_tag(key: str) -> str:
    return "runbooks-lock-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@contextmanager
def resource_lock(run: RunbookRun, *, server: Mapping[str, Any], key: str,
                  wait_seconds: float) -> Iterator[AdvisoryLock]:
    """Hold ``key`` as a PostgreSQL advisory lock on ``server`` (works across hosts) for the block.

    Every destructive step of the run (``run.step(..., destructive=True)``) first proves the lock is still held.
    """
    lock = AdvisoryLock(server, key, holder=f"runbooks {run.runbook} {run.flow_run_id}")
    with run.step("take lock", key=key):
        lock.acquire(wait_seconds=wait_seconds)
    run.steps.before_destructive.append(lock.ensure)
    try:
        if run.flow_run_id:
            cancel_orphaned_approvals(run, tag=lock_tag(key))
        yield lock
    finally:
        run.steps.before_destructive.remove(lock.ensure)
        lock.release()


class LockHolder(BaseModel):
    """Who holds a host or repository lock: written by the holder, read by the run it refuses."""

    token: str
    runbook: str
    flow_run_id: str | None = None
    actor: str
    writer: ProcessIdentity
    host_name: str | None = Field(default=None, description="the holder's host_name among the settings' hosts (its "
                                  "worker's RUNBOOKS_HOST_NAME), which may differ from the OS hostname")
    since: AwareDatetime
    heartbeat_at: AwareDatetime

    @classmethod
    def of(cls, run: RunbookRun) -> LockHolder:
        now = datetime.now(UTC)
        return cls(token=uuid.uuid4().hex, runbook=run.runbook, flow_run_id=run.flow_run_id, actor=run.actor,
                   writer=ProcessIdentity.current(), host_name=run.settings.host_name, since=now, heartbeat_at=now)

    def describe(self) -> str:
        return (f"flow run {self.flow_run_id or '-'} ({self.actor}, process {self.writer.pid} on "
                f"{self.host_name or self.writer.host}, since {self.since:%Y-%m-%d %H:%M:%S}Z)")


@contextmanager
def host_lock(run: RunbookRun, *, directory: Path, name: str) -> Iterator[None]:
    """Hold this host's lock ``name`` (an exclusive ``flock`` on ``directory/name.lock``) for the block. The kernel
    drops it when the process ends, however it ends, so a killed run never leaves it held; its file says who holds
    it, for the message that refuses a second run."""
    try:
        make_private_dirs(directory)
        fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigurationError(f"cannot open the lock file {str(directory / name)!r}.lock: {exc.strerror}.",
                                 hint="set state_dir to a writable local directory; nothing was done.") from None
    try:
        with run.step("take lock", key=f"{name} on this host"):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder_of(fd)
                raise LockBusy(f"another {run.runbook} run holds this host's {name!r} lock: {holder}; runs "
                               "never interleave.", hint="wait for it to finish and read its report (Prefect UI: "
                               "runs in progress); nothing was done.", holder=holder) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, LockHolder.of(run).model_dump_json().encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


ON_HOST_HELP = ("The host this run is for, as the settings' hosts name it; a per-host deployment sets it (work queue "
                "host-NAME), and a worker on any other host refuses the run. Empty: the host whose worker runs it.")


def require_this_host(settings: Settings, on_host: str | None, *, runbook: str, acts: str) -> None:
    """Refuse (ConfigurationError) a run meant for another host: a runbook about its worker's own machine (its
    disks, its load) run by another host's worker would ``acts`` the wrong machine. Called before any step acts,
    as ``host_lock`` is: the two together make a per-host run this host's, and one at a time."""
    if on_host is None and settings.several_hosts and _from_a_deployment():
        raise ConfigurationError(
            f"this {runbook} run comes from a deployment that names no host (on_host), and {len(settings.hosts)} "
            f"hosts are declared: it would {acts} whichever host's worker took it.",
            hint="run the per-host deployments 'python deployments/per_host.py write' makes (docs/scale-out.md) and "
            f"delete the generic {runbook} deployments; nothing was done.")
    if on_host is None or on_host == settings.host_name:
        return
    raise ConfigurationError(
        f"this {runbook} run is for host {on_host!r}, but it runs on {settings.host_name!r}: it would {acts} the "
        "wrong machine.", hint=f"start it from {runbook}'s deployment for {on_host!r} (work queue 'host-{on_host}'), "
        f"whose worker runs on that host with RUNBOOKS_HOST_NAME={on_host}; nothing was done.")


def _from_a_deployment() -> bool:
    """Whether this flow run was started from a deployment (a worker could be any host's), not by a local call."""
    from prefect.runtime import deployment

    return deployment.get_id() is not None


def _holder_of(fd: int) -> str:
    try:
        return LockHolder.model_validate_json(os.pread(fd, 65536, 0)).describe()
    except (OSError, ValidationError):
        return "a run that has not written its name yet"


class RepositoryLease:
    """A lock kept as a small object in the backup repository: created only if absent; refreshed by a heartbeat
    thread with a compare-and-swap on what it last wrote (so a lock taken over is never written back); taken
    over only from a holder that is gone."""

    def __init__(self, repository: Repository, key: str, holder: LockHolder, *, heartbeat_seconds: float = 10,
                 stale_after: timedelta = timedelta(seconds=60)) -> None:
        self.repository, self.key, self.holder = repository, key, holder
        self.heartbeat_seconds, self.stale_after = heartbeat_seconds, stale_after
        self.took_over: LockHolder | None = None
        self._last = b""
        self._lost = False
        self._mutex = threading.Lock()  # a beat's write and ``_last`` change together, as ``ensure`` sees them
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stale(self, other: LockHolder) -> bool:
        if other.writer.on_this_host and not other.writer.alive():
            return True
        return datetime.now(UTC) - other.heartbeat_at > self.stale_after

    def acquire(self, *, wait_seconds: float) -> None:
        deadline = time.monotonic() + wait_seconds
        body = self.holder.model_dump_json().encode()
        while not self.repository.put_bytes_if_absent(self.key, body):
            try:
                raw = self.repository.get_bytes(self.key)
            except BackupNotFound:
                continue  # released meanwhile: try again
            if raw.rstrip(b" ") == body:
                break  # ours: a create retried after its answer was lost
            try:
                other: LockHolder | None = LockHolder.model_validate_json(raw)
            except ValidationError:
                other = None
            if other is not None and self._stale(other):
                if self.repository.replace_bytes_if(self.key, body, expect=raw):
                    self.took_over = other
                    break
                continue
            if time.monotonic() >= deadline:
                who = other.describe() if other else f"its lock object {self.key!r} cannot be read"
                raise LockBusy(f"another {self.holder.runbook} run holds {self.key!r}: {who}; runs never interleave.",
                               hint="wait for it to finish and read its report (Prefect UI: runs in progress); a run "
                               f"that died frees it at once on its own host, elsewhere after "
                               f"{self.stale_after.total_seconds():g} s without a heartbeat; nothing was done.",
                               holder=who)
            time.sleep(0.5)
        self._last = body
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease-{self.key}")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            beat = self.holder.model_copy(update={"heartbeat_at": datetime.now(UTC)}).model_dump_json().encode()
            try:
                with self._mutex:
                    if not self.repository.replace_bytes_if(self.key, beat, expect=self._last):
                        self._lost = True
                        _log.error("Lost the lock %s: another run removed or took it over", self.key)
                        return
                    self._last = beat
            except Exception as exc:  # transient (S3 5xx, NFS): the next beat tries again
                _log.warning("Heartbeat of the lock %s failed: %s", self.key, exc)

    def ensure(self) -> None:
        """Raise LockLost unless this run still holds the lock."""
        if not self._lost:
            with self._mutex:
                try:
                    # A local repository pads a replaced body with spaces to the old length.
                    self._lost = self.repository.get_bytes(self.key).rstrip(b" ") != self._last
                except BackupNotFound:
                    self._lost = True
                except Exception as exc:  # the repository did not answer: the heartbeat's compare-and-swap decides
                    _log.warning("Could not read the lock %s back: %s", self.key, exc)
        if self._lost:
            raise LockLost(f"the lock {self.key!r} was lost (taken over after missed heartbeats, or removed); another "
                           "run may now act on the same resource, so this run stops before its next change.",
                           hint="read this run's report for what was already done, then rerun.")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if not self._lost and self.repository.get_bytes(self.key).rstrip(b" ") == self._last:
                self.repository.delete([self.key])
        except Exception as exc:  # the next run finds it stale (dead process here, or no heartbeat)
            _log.warning("Could not release the lock %s: %s", self.key, exc)


@contextmanager
def repository_lock(run: RunbookRun, *, repository: Repository, key: str,
                    wait_seconds: float = 0) -> Iterator[RepositoryLease]:
    """Hold ``locks/<key>.json`` in the backup repository for the block (works across hosts)."""
    lease = RepositoryLease(repository, f"locks/{key}.json", LockHolder.of(run))
    with run.step("take lock", key=key) as figures:
        lease.acquire(wait_seconds=wait_seconds)
        if lease.took_over is not None:
            figures["took_over"] = lease.took_over.describe()
            run.logger.warning("Took over the lock %r from %s, which is gone", key, lease.took_over.describe())
    run.steps.before_destructive.append(lease.ensure)
    try:
        yield lease
    finally:
        run.steps.before_destructive.remove(lease.ensure)
        lease.release()

