"""Leases in the backup repository: small objects created only if absent and kept alive by a heartbeat, for what
two runs on any hosts must never do at once (a backup directory being written, a resource with no server of its
own). One heartbeat thread refreshes each held object with a compare-and-swap on the body this process last wrote,
so a lease that was swept, taken over or released is never written back; a holder is stale when its process is
gone from this host or its heartbeat stopped for ``stale_after``.

``Heartbeat`` is the part every lease shares; ``RepositoryLease`` is one lease on one key with take-over of a
stale holder (the frame's ``repository_lock``); the backup catalog's ``BackupClaim`` holds one per backup
directory it writes.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from pydantic import AwareDatetime, BaseModel, Field, ValidationError

from runbooks.adapters.processes import ProcessIdentity
from runbooks.adapters.repository.base import Repository
from runbooks.core.errors import BackupNotFound, LockBusy, LockLost

_log = logging.getLogger(__name__)


class Heartbeat:
    """Refreshes the ``heartbeat_at`` of every held lease object every ``every`` seconds from one thread. A key
    whose compare-and-swap fails is lost (someone swept or took it) and no longer refreshed; an error of the
    repository (S3 5xx, NFS ESTALE, EIO) is logged and tried again at the next beat."""

    def __init__(self, repository: Repository, *, every: float, name: str, what: str = "lease") -> None:
        self.repository = repository
        self.what = what
        self.mutex = threading.Lock()  # a beat's write and what it last wrote change together, as checks see them
        self._held: dict[str, tuple[BaseModel, bytes]] = {}
        self._lost: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True, name=name)
        self._thread.start()

    def hold(self, key: str, record: BaseModel, body: bytes) -> None:
        """Keep ``key`` alive; ``body`` is what this process wrote there (``record`` serialised)."""
        with self.mutex:
            self._held[key] = (record, body)

    def drop(self, key: str) -> None:
        """Stop refreshing ``key`` (it is being published, released or discarded)."""
        with self.mutex:
            self._held.pop(key, None)

    def last(self, key: str) -> bytes | None:
        """What this process last wrote at ``key`` (call under ``mutex`` to compare it with a read)."""
        held = self._held.get(key)
        return held[1] if held else None

    def held(self) -> list[str]:
        with self.mutex:
            return sorted(self._held)

    def lost(self, key: str) -> bool:
        return key in self._lost

    def mark_lost(self, key: str) -> None:
        with self.mutex:
            self._held.pop(key, None)
            self._lost.add(key)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            with self.mutex:
                for key in sorted(self._held):
                    record, last = self._held[key]
                    try:
                        beat = record.model_copy(update={"heartbeat_at": datetime.now(UTC)})
                        body = beat.model_dump_json().encode()
                        if not self.repository.replace_bytes_if(key, body, expect=last):
                            del self._held[key]
                            self._lost.add(key)
                            _log.error("Lost the %s %s: another run removed or took it over", self.what, key)
                            continue
                        self._held[key] = (beat, body)
                    except Exception as exc:  # transient: the next beat tries again
                        _log.warning("Heartbeat of the %s %s failed: %s", self.what, key, exc)


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

    def describe(self) -> str:
        return (f"flow run {self.flow_run_id or '-'} ({self.actor}, process {self.writer.pid} on "
                f"{self.host_name or self.writer.host}, since {self.since:%Y-%m-%d %H:%M:%S}Z)")


class RepositoryLease:
    """A lock kept as a small object in the backup repository: created only if absent; refreshed by a heartbeat;
    taken over only from a holder that is gone."""

    def __init__(self, repository: Repository, key: str, holder: LockHolder, *, heartbeat_seconds: float = 10,
                 stale_after: timedelta = timedelta(seconds=60)) -> None:
        self.repository, self.key, self.holder = repository, key, holder
        self.heartbeat_seconds, self.stale_after = heartbeat_seconds, stale_after
        self.took_over: LockHolder | None = None
        self._heartbeat: Heartbeat | None = None
        self._lost = False

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
        self._heartbeat = Heartbeat(self.repository, every=self.heartbeat_seconds, name=f"lease-{self.key}",
                                    what="lock")
        self._heartbeat.hold(self.key, self.holder, body)

    def ensure(self) -> None:
        """Raise LockLost unless this run still holds the lock."""
        beat = self._heartbeat
        if beat is not None and not self._lost:
            with beat.mutex:
                last = beat.last(self.key)
                try:
                    # A local repository pads a replaced body with spaces to the old length.
                    self._lost = last is None or self.repository.get_bytes(self.key).rstrip(b" ") != last
                except BackupNotFound:
                    self._lost = True
                except Exception as exc:  # the repository did not answer: the heartbeat's compare-and-swap decides
                    _log.warning("Could not read the lock %s back: %s", self.key, exc)
        if self._lost or beat is None or beat.lost(self.key):
            self._lost = True
            raise LockLost(f"the lock {self.key!r} was lost (taken over after missed heartbeats, or removed); another "
                           "run may now act on the same resource, so this run stops before its next change.",
                           hint="read this run's report for what was already done, then rerun.")

    def release(self) -> None:
        beat = self._heartbeat
        if beat is None:
            return
        beat.stop()
        last = beat.last(self.key)  # after the last beat: what is there now if the lock is still ours
        try:
            if not self._lost and last is not None and self.repository.get_bytes(self.key).rstrip(b" ") == last:
                self.repository.delete([self.key])
        except Exception as exc:  # the next run finds it stale (dead process here, or no heartbeat)
            _log.warning("Could not release the lock %s: %s", self.key, exc)
