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
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runbooks.adapters.postgres import AdvisoryLock
from runbooks.adapters.processes import ProcessIdentity
from runbooks.adapters.repository import Repository
from runbooks.adapters.repository.leases import LockHolder, RepositoryLease
from runbooks.adapters.repository.local import make_private_dirs
from runbooks.core.errors import ConfigurationError, LockBusy
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


def lock_holder(run: RunbookRun) -> LockHolder:
    """This run, as a host or repository lock records its holder."""
    now = datetime.now(UTC)
    return LockHolder(token=uuid.uuid4().hex, runbook=run.runbook, flow_run_id=run.flow_run_id, actor=run.actor,
                      writer=ProcessIdentity.current(), host_name=run.settings.host_name, since=now, heartbeat_at=now)


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
            os.pwrite(fd, lock_holder(run).model_dump_json().encode(), 0)
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


@contextmanager
def repository_lock(run: RunbookRun, *, repository: Repository, key: str,
                    wait_seconds: float = 0) -> Iterator[RepositoryLease]:
    """Hold ``locks/<key>.json`` in the backup repository for the block (works across hosts)."""
    lease = RepositoryLease(repository, f"locks/{key}.json", lock_holder(run))
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

