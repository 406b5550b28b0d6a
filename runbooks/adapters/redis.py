"""Redis, the memory/learning system: read and saved through the maintained client (redis-py); its RDB file streamed
into the repository and read by ``redis-check-rdb`` on the way; a restored copy run as a ``redis-server`` of its own.

Errors are mapped here, once: a server that does not answer is ``RedisUnavailable`` (a retry may help), a command
Redis refuses or a save that failed is ``RedisRefused``, a wrong password ``AuthenticationFailed``.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from runbooks.adapters.cluster import free_port
from runbooks.adapters.pipeline import CHUNK, CompressingSink, StreamStats, stream_into
from runbooks.adapters.repository import Repository
from runbooks.core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    RedisRefused,
    RedisUnavailable,
    ToolFailed,
    VerificationFailed,
)
from runbooks.core.redact import register_secret, scrub
from runbooks.settings.redis import RedisSettings

CHECK_RDB = os.environ.get("RUNBOOKS_REDIS_CHECK_RDB", "redis-check-rdb")
SERVER = os.environ.get("RUNBOOKS_REDIS_SERVER", "redis-server")


@contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """The one place redis-py's exceptions become ours, each with what to do next."""
    try:
        yield
    except redis.AuthenticationError as exc:
        raise AuthenticationFailed(f"{where}: Redis refused the credentials ({scrub(str(exc))}).",
                                   hint="check [redis] username / password (or password_block).") from None
    except redis.ResponseError as exc:
        text = scrub(str(exc))
        if "NOAUTH" in text or "WRONGPASS" in text:
            raise AuthenticationFailed(f"{where}: Redis wants other credentials ({text}).",
                                       hint="set [redis] password (or password_block) and username.") from None
        raise RedisRefused(f"{where}: Redis refused: {text}.",
                           hint="read the message; a renamed or ACL-denied command needs the runbooks' user "
                           "allowed it (see docs/runbooks/redis.md).") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(f"{where}: Redis did not answer ({type(exc).__name__}: {scrub(str(exc))}).",
                               hint="check that redis-server runs and [redis] host/port reach it.") from None


def client_for(settings: RedisSettings, *, port: int | None = None, host: str | None = None,
               password: str | None = None) -> redis.Redis:
    secret = password if password is not None else settings.secret()
    if secret:
        register_secret(secret)
    return redis.Redis(host=host or settings.host, port=port or settings.port, username=settings.username,
                       password=secret or None, socket_timeout=settings.socket_timeout_seconds,
                       socket_connect_timeout=settings.socket_timeout_seconds, decode_responses=True,
                       client_name="runbooks")


@contextmanager
def connect(settings: RedisSettings, *, where: str) -> Iterator[redis.Redis]:
    """A client that has answered ``PING``; closed on exit."""
    client = client_for(settings)
    try:
        with redis_errors(where):
            client.ping()
        yield client
    finally:
        client.close()


def info(client: redis.Redis, section: str | None = None) -> dict[str, Any]:
    return dict(client.info(section) if section else client.info())


def keyspace(client: redis.Redis) -> dict[str, int]:
    """Keys per logical database, as ``INFO keyspace`` counts them now."""
    return {db: int(v["keys"]) for db, v in info(client, "keyspace").items() if isinstance(v, dict)}


# -- the save ------------------------------------------------------------------------------------------------------
@dataclass
class Saved:
    saved_at: datetime
    seconds: float
    version: str
    keyspace: dict[str, int]
    while_saving: bool = False  # streamed from the save's temporary file as Redis wrote it


def _last_log_error(client: redis.Redis) -> str | None:
    """The last error line of Redis' own log, when this worker can read it: Redis gives a failed save's reason
    only there (INFO says ``err`` and nothing more)."""
    try:
        logfile = client.config_get("logfile").get("logfile") or ""
        directory = client.config_get("dir").get("dir") or ""
    except redis.RedisError:
        return None
    if not logfile:
        return None
    path = Path(logfile) if os.path.isabs(logfile) else Path(directory) / logfile
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 65536))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        if " # " in line and re.search(r"(?i)fail|error|can't|cannot", line):
            return scrub(line.split(" # ", 1)[1].strip())[:300]
    return None


class SaveInProgress:
    """One ``BGSAVE`` this call asked for, followed until it ends.

    ``rdb_saves`` counts save attempts, so "ours has ended" is that counter moving past its value before the call
    with no save in progress; ``LASTSAVE`` alone has a one-second resolution and does not move on a failed save.
    A save already running (another BGSAVE, a replica's sync) started before this call and may miss recent
    writes: wait for it, then ask again. ``BGSAVE SCHEDULE`` waits out an AOF rewrite instead of failing.
    """

    def __init__(self, client: redis.Redis, *, timeout_seconds: float, where: str, poll_seconds: float = 0.05):
        self.client, self.where, self.timeout = client, where, timeout_seconds
        self.started = time.monotonic()
        self.deadline = self.started + timeout_seconds
        with redis_errors(where):
            self.version = str(info(client, "server").get("redis_version", "?"))
            self.server_pid = int(info(client, "server").get("process_id", 0))
            self.before = info(client, "persistence")
            # LASTSAVE counts seconds: a save ending in the second the last one ended could not be told from none.
            wait = int(self.before.get("rdb_last_save_time", 0)) + 1 - time.time()
            if 0 < wait <= 1:
                time.sleep(wait)
            while True:
                try:
                    client.bgsave(schedule=True)
                    break
                except redis.ResponseError as exc:
                    if "in progress" not in str(exc) or time.monotonic() > self.deadline:
                        raise
                    time.sleep(poll_seconds)
                    self.before = info(client, "persistence")
        self.now: dict[str, Any] = {}

    def ended(self) -> bool:
        """Whether the save has ended well (False: still running); raises when it failed or ran out of time."""
        with redis_errors(self.where):
            now = info(self.client, "persistence")
        before = self.before
        moved = (now["rdb_saves"] > before["rdb_saves"] if "rdb_saves" in before
                 else now["rdb_last_save_time"] > before["rdb_last_save_time"]
                 or now.get("rdb_last_bgsave_status") != "ok")
        if not now.get("rdb_bgsave_in_progress") and moved:
            self.now = now
            if now.get("rdb_last_bgsave_status") != "ok":
                self._failed()
            if now["rdb_last_save_time"] <= before["rdb_last_save_time"]:
                # Counted, yet no save time: the child was killed (a FLUSHALL kills a running save) and Redis still
                # says "ok" of the last one that finished.
                raise RedisRefused(f"{self.where}: the BGSAVE was aborted before it finished (a FLUSHALL, or its "
                                   "child killed); no new RDB was written.", hint="rerun the backup.")
            return True
        if time.monotonic() > self.deadline:
            raise RedisRefused(f"{self.where}: BGSAVE did not finish within {self.timeout:.0f} s.",
                               hint="a large dataset or a slow disk: raise [redis] save_timeout; INFO "
                               "persistence shows the save's progress.")
        return False

    def _failed(self) -> None:
        why = _last_log_error(self.client)
        try:
            stops = self.client.config_get("stop-writes-on-bgsave-error").get("stop-writes-on-bgsave-error") == "yes"
        except redis.RedisError:
            stops = False
        raise RedisRefused(
            f"{self.where}: BGSAVE failed (rdb_last_bgsave_status: err)" + (f": {why}" if why else "") + ".",
            hint="usually the data directory is unwritable or full (Redis' log says which)"
            + ("; while saves fail, Redis refuses writes (stop-writes-on-bgsave-error yes, MISCONF)"
               if stops else "") + ". Fix it, then rerun the backup.")

    def wait(self, poll_seconds: float = 0.05) -> None:
        while not self.ended():
            time.sleep(poll_seconds)

    def result(self) -> Saved:
        assert self.now, "the save has not ended"
        with redis_errors(self.where):
            space = keyspace(self.client)
        return Saved(saved_at=datetime.fromtimestamp(int(self.now["rdb_last_save_time"]), UTC),
                     seconds=time.monotonic() - self.started, version=self.version, keyspace=space)


def save_snapshot(client: redis.Redis, *, timeout_seconds: float, poll_seconds: float = 0.05,
                  where: str) -> Saved:
    """``BGSAVE``, then wait (bounded) until the save this call asked for has ended, and say if it failed."""
    save = SaveInProgress(client, timeout_seconds=timeout_seconds, where=where)
    save.wait(poll_seconds)
    return save.result()


def rdb_location(client: redis.Redis, settings: RedisSettings, *, where: str) -> Path:
    """The file BGSAVE writes, as this worker sees it."""
    if settings.rdb_path is not None:
        return settings.rdb_path
    with redis_errors(where):
        try:
            directory = client.config_get("dir").get("dir")
            name = client.config_get("dbfilename").get("dbfilename")
        except redis.ResponseError as exc:
            raise ConfigurationError(f"{where}: CONFIG GET is refused ({scrub(str(exc))}), so the RDB file "
                                     "cannot be found.", hint="set [redis] rdb_path to the file BGSAVE "
                                     "writes.") from None
    if not directory or not name:
        raise ConfigurationError(f"{where}: Redis did not say where it saves.", hint="set [redis] rdb_path.")
    return Path(directory) / name


# -- the RDB, on its way into the repository -----------------------------------------------------------------------
@dataclass
class RdbCheck:
    keys: int = 0
    expires: int = 0
    already_expired: int = 0
    ok: bool = False
    detail: str = ""


_COUNT = re.compile(r"^\[info\] (\d+) (keys read|expires|already expired)$")


def parse_check(output: str, returncode: int) -> RdbCheck:
    """``redis-check-rdb``'s verdict: ``\\o/ RDB looks OK! \\o/`` and exit 0, and its key counts."""
    check = RdbCheck()
    for line in output.splitlines():
        if m := _COUNT.match(line.strip()):
            setattr(check, {"keys read": "keys", "expires": "expires",
                            "already expired": "already_expired"}[m.group(2)], int(m.group(1)))
    check.ok = returncode == 0 and "RDB looks OK" in output
    if not check.ok:
        errors = [line.strip() for line in output.splitlines()
                  if line.startswith("[offset") and "Checking RDB" not in line and "AUX FIELD" not in line
                  and "Selecting DB" not in line] or [f"exit status {returncode}"]
        check.detail = scrub("; ".join(errors[-2:]))[:300]
    return check


class _Checker:
    """``redis-check-rdb /dev/stdin`` fed the bytes as they go by; its output read on a thread."""

    def __init__(self) -> None:
        try:
            self.proc = subprocess.Popen([CHECK_RDB, "/dev/stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT)
        except OSError as exc:
            raise ToolFailed(f"could not start {CHECK_RDB}: {exc.strerror}.",
                             hint="install Redis' tools (Debian: redis-tools or redis-server) or set "
                             "RUNBOOKS_REDIS_CHECK_RDB.") from None
        self.out: list[bytes] = []
        self.reader = threading.Thread(target=lambda: self.out.append(self.proc.stdout.read()),  # type: ignore[union-attr]
                                       daemon=True)
        self.reader.start()
        self.open = True

    def feed(self, data: memoryview | bytes) -> None:
        if not self.open:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
        except BrokenPipeError:
            self.open = False  # it stopped reading: its verdict says why

    def finish(self) -> RdbCheck:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait()
        self.reader.join()
        self.proc.stdout.close()  # type: ignore[union-attr]
        return parse_check(b"".join(self.out).decode(errors="replace"), self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


def _stream_checked(f: io.BufferedReader, *, writer_done: Callable[[], bool] | None, repository: Repository, key: str,
                    level: int, threads: int) -> tuple[StreamStats, RdbCheck]:
    """``f`` compressed into ``key`` with ``redis-check-rdb`` reading the same bytes. ``writer_done``: the file is
    still being written; at its end, ask whether the writer has finished (then read what is left and stop), else
    wait for more. None: the file is whole."""
    checker = _Checker()

    def produce(sink: CompressingSink) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        ended = writer_done is None
        while True:
            n = f.readinto(buf)
            if n:
                sink.write(view[:n])
                checker.feed(view[:n])
            elif ended:
                return  # the writer had finished before this read: the file was whole
            elif writer_done is not None and writer_done():
                ended = True
            else:
                time.sleep(0.02)

    try:
        stats = stream_into(produce, repository=repository, key=key, level=level, threads=threads)
    except BaseException:
        checker.kill()
        raise
    return stats, checker.finish()


def stream_rdb(path: Path, *, repository: Repository, key: str, level: int, threads: int,
               not_before: datetime) -> tuple[StreamStats, RdbCheck]:
    """Stream the RDB at ``path`` compressed into ``key``, ``redis-check-rdb`` reading the same bytes on the way.

    The file is opened once: a later BGSAVE renames a new file over the path, but an open file keeps its inode, so
    what is read is one whole snapshot. It must not be older than the save just made (``not_before``): an older
    file means ``rdb_path`` names something else than what Redis writes.
    """
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ConfigurationError(f"cannot read Redis' RDB file {str(path)!r}: {exc.strerror}.",
                                 hint="run the worker where it can read Redis' data directory (the Redis host, or "
                                 "its volume mounted) and set [redis] rdb_path to the file as seen there.") from None
    with f:
        modified = datetime.fromtimestamp(os.fstat(f.fileno()).st_mtime, UTC)
        if modified.timestamp() < not_before.timestamp() - 1:
            raise ConfigurationError(f"the RDB file {str(path)!r} was last written {modified:%Y-%m-%d %H:%M:%S}Z, "
                                     f"before the save just made ({not_before:%H:%M:%S}Z): it is not the file "
                                     "this Redis saves to.", hint="set [redis] rdb_path to Redis' dir/dbfilename "
                                     "as this worker sees it.")
        stats, check = _stream_checked(f, writer_done=None, repository=repository, key=key, level=level,
                                       threads=threads)
    if not check.ok:
        raise VerificationFailed(f"redis-check-rdb rejects the RDB file {str(path)!r}: {check.detail}.",
                                 hint="Redis' own file is damaged: check its disk and log before anything else; "
                                 "nothing was listed.")
    return stats, check


def _child_temp_file(directory: Path, server_pid: int) -> Path | None:
    """The temporary RDB a save's child writes (``temp-<child pid>.rdb``), when that child is visible here: this
    worker on the Redis host, in its PID namespace, the file's pid a child of the server's."""
    if server_pid <= 0:
        return None
    try:
        entries = list(directory.glob("temp-*.rdb"))
    except OSError:
        return None
    for entry in entries:
        m = re.fullmatch(r"temp-(\d+)\.rdb", entry.name)
        if not m:
            continue
        try:
            fields = Path(f"/proc/{m.group(1)}/stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and int(fields[1]) == server_pid:
            return entry
    return None


def save_and_stream(client: redis.Redis, settings: RedisSettings, *, repository: Repository, key: str, level: int,
                    threads: int, where: str) -> tuple[Saved, StreamStats, RdbCheck]:
    """``BGSAVE``, and the RDB it writes streamed into ``key``, ``redis-check-rdb`` reading the same bytes.

    Where this worker sees the save's child (on the Redis host), its temporary file is read while the child writes
    it, so compression overlaps Redis' own serialization, as ``redis-cli --rdb`` overlaps them over the replication
    stream; the save must then end well, and the RDB's own checksum, which redis-check-rdb checks at its end,
    proves the whole file was read. Elsewhere (Redis in another PID namespace, a save that ended before its file
    was seen): the save first, then the finished file.
    """
    location_error: ConfigurationError | None = None
    path: Path | None = None
    try:
        path = rdb_location(client, settings, where=where)
    except ConfigurationError as exc:  # a failed save is the more useful report: the save goes first
        location_error = exc
    save = SaveInProgress(client, timeout_seconds=settings.save_timeout.total_seconds(), where=where)
    growing = None
    if path is not None:
        look_until = time.monotonic() + 2.0
        while time.monotonic() < look_until:
            temp = _child_temp_file(path.parent, save.server_pid)
            if temp is not None:
                try:
                    growing = temp.open("rb")
                except OSError:
                    pass  # renamed between the listing and the open: the save has ended
                break
            if save.ended():
                break
            time.sleep(0.005)
    if growing is None:
        save.wait()
        if location_error is not None:
            raise location_error
        assert path is not None
        saved = save.result()
        stats, check = stream_rdb(path, repository=repository, key=key, level=level, threads=threads,
                                  not_before=saved.saved_at)
        return saved, stats, check
    with growing:
        stats, check = _stream_checked(growing, writer_done=save.ended, repository=repository, key=key,
                                       level=level, threads=threads)
    if not check.ok:
        raise VerificationFailed(f"redis-check-rdb rejects the RDB Redis wrote: {check.detail}.",
                                 hint="Redis' own file is damaged, or it was read while rewritten: rerun the "
                                 "backup, then check Redis' disk and log; nothing was listed.")
    saved = save.result()
    saved.while_saving = True
    return saved, stats, check


def check_rdb_file(path: Path) -> RdbCheck:
    """``redis-check-rdb`` on a file (a fetched backup, before any server loads it)."""
    try:
        proc = subprocess.run([CHECK_RDB, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              check=False)
    except OSError as exc:
        raise ToolFailed(f"could not start {CHECK_RDB}: {exc.strerror}.",
                         hint="install Redis' tools or set RUNBOOKS_REDIS_CHECK_RDB.") from None
    return parse_check(proc.stdout.decode(errors="replace"), proc.returncode)


def tool_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"v=(\S+)", out)
    return m.group(1) if m else out.strip()[:60] or "?"


# -- a restored copy: a redis-server of its own ------------------------------------------------------------------
@dataclass
class RestoredInstance:
    """A ``redis-server`` on a port of its own, on a copy of the backup's RDB in a private work directory; it
    requires a password of its own (in its 0600 config file), since it holds production data."""

    workdir: Path
    port: int
    password: str = field(repr=False)
    pid: int
    loaded: dict[str, int] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.workdir / "redis.conf"

    def client(self, settings: RedisSettings) -> redis.Redis:
        return client_for(settings, host="127.0.0.1", port=self.port, password=self.password)

    def stop(self) -> None:
        """Stop it without saving (the RDB it loaded is the backup's; nothing here is new)."""
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(200):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            _reap(self.pid)
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        _reap(self.pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def start_instance(rdb: Path, *, workdir: Path, settings: RedisSettings, bind: str = "127.0.0.1",
                   timeout_seconds: float = 600, on_wait: Callable[[], None] | None = None) -> RestoredInstance:
    """Start ``redis-server`` on ``rdb`` (moved into ``workdir``) and wait until it has loaded it.

    No persistence of its own (``save ""``, no AOF): it serves what the backup holds and nothing else. Runs in a
    session of its own so that it outlives the flow run when it is the restore's product (``target=new``).
    """
    if shutil.which(SERVER) is None and not os.path.exists(SERVER):
        raise ToolFailed(f"{SERVER} is not installed on this worker.",
                         hint="install Redis (Debian: redis-server) or set RUNBOOKS_REDIS_SERVER.")
    if rdb.parent != workdir:
        rdb = rdb.rename(workdir / "dump.rdb")
    password = secrets.token_urlsafe(24)
    register_secret(password)
    port = free_port()
    conf = workdir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join([
            f"port {port}", f"bind {bind}", f'dir "{workdir}"', f'dbfilename "{rdb.name}"', 'save ""',
            "appendonly no", "daemonize no", f'logfile "{workdir / "redis.log"}"',
            f'pidfile "{workdir / "redis.pid"}"', 'proc-title-template "{title} {listen-addr} {config-file}"',
            f"requirepass {password}", "protected-mode yes", ""]))
    proc = subprocess.Popen([SERVER, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    instance = RestoredInstance(workdir=workdir, port=port, password=password, pid=proc.pid)
    client = instance.client(settings)
    deadline = time.monotonic() + timeout_seconds
    try:
        while True:
            if proc.poll() is not None:
                raise RedisRefused(f"the restored redis-server exited ({proc.returncode}) while loading "
                                   f"{rdb.name}: {_log_tail(workdir / 'redis.log')}.",
                                   hint="the RDB may come from a newer Redis than this worker's redis-server; "
                                   "its log is in the work directory.")
            try:
                persistence = info(client, "persistence")
                if not persistence.get("loading"):
                    break
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                raise RedisUnavailable(f"the restored redis-server did not finish loading within "
                                       f"{timeout_seconds:.0f} s.", hint="its log is in the work directory.")
            if on_wait:
                on_wait()
            time.sleep(0.05)
        instance.loaded = {"keys_loaded": int(persistence.get("rdb_last_load_keys_loaded", -1)),
                           "keys_expired": int(persistence.get("rdb_last_load_keys_expired", 0))}
    except BaseException:
        client.close()
        instance.stop()
        raise
    client.close()
    return instance


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    return scrub(" / ".join(line.split(" # ", 1)[-1] for line in lines if " # " in line)[-300:]) or "no error logged"


# -- replacing a live instance's data ------------------------------------------------------------------------------
def replication_role(client: redis.Redis) -> str:
    return str(info(client, "replication").get("role", "?"))


@dataclass
class Loaded:
    """What a replace's sync ended with: both keyspaces read at the same moment, the live one still a replica (no
    client can write to it), so that a key expiring in between does not read as a difference."""

    live: dict[str, int]
    copy: dict[str, int]


LINK_GRACE_SECONDS = 15.0  # a link that never came up by then will not: give the live instance its writes back


def load_from(client: redis.Redis, *, source: redis.Redis, source_host: str, source_port: int,
              source_password: str, timeout_seconds: float, where: str) -> Loaded:
    """Make the live instance a replica of the restored copy until it has the copy's whole dataset, then a master
    again: Redis replaces a running server's data this way (a full sync), with its own files and config untouched,
    instead of the seed's stop / copy over ``dump.rdb`` / start.

    Until the live instance starts loading the copy's data, a failure leaves its data as it was, and the wait is
    bounded (``timeout_seconds``; a link that never comes up, ``LINK_GRACE_SECONDS``). Once it loads, its old data
    is gone: the wait is for the load to end (bounded by ten times the timeout), never given up half-way. Either
    way it is made a master again (retried while it loads) and its ``masterauth`` / ``masteruser`` put back.
    Raises RedisRefused saying which of the two happened.
    """
    started = time.monotonic()
    deadline = started + timeout_seconds
    committed = False  # the live instance began loading the copy's data: its old data is gone
    with redis_errors(where):
        previous = {k: (client.config_get(k).get(k) or "") for k in ("masterauth", "masteruser")}
        register_secret(previous["masterauth"])
        client.config_set("masteruser", "")  # the copy's default user, by its requirepass
        client.config_set("masterauth", source_password)
        client.replicaof(source_host, source_port)
    loaded: Loaded | None = None
    try:
        with redis_errors(where):
            while True:
                try:
                    rep = info(client, "replication")
                    loading = bool(info(client, "persistence").get("loading"))
                except redis.BusyLoadingError:
                    rep, loading = {}, True
                committed = committed or loading
                if rep.get("master_link_status") == "up" and not rep.get("master_sync_in_progress") and not loading:
                    loaded = Loaded(live=keyspace(client), copy=keyspace(source))
                    break
                now = time.monotonic()
                if committed and now > started + 10 * timeout_seconds:
                    raise RedisRefused(f"{where}: still loading the restored copy's data after "
                                       f"{10 * timeout_seconds:.0f} s.", hint="its previous data is gone; let it "
                                       "finish, then REPLICAOF NO ONE on it (the copy is left running).")
                if not committed and (now > deadline or (
                        not rep.get("master_sync_in_progress") and rep.get("master_link_status") != "up"
                        and now > started + LINK_GRACE_SECONDS)):
                    raise RedisRefused(
                        f"{where}: the sync from the restored copy did not start (link "
                        f"{rep.get('master_link_status')!r}); its data is as it was.",
                        hint="it must reach the copy at [redis] restore_host (the worker's address as Redis sees "
                        "it); Redis' log says why (WRONGPASS, connection refused).")
                time.sleep(0.1)
    finally:
        _be_master_again(client, previous, patience=max(timeout_seconds, 60.0) if committed else 30.0,
                         where=where)
    assert loaded is not None
    return loaded


def _be_master_again(client: redis.Redis, previous: dict[str, str], *, patience: float, where: str) -> None:
    """``REPLICAOF NO ONE`` (retried while the instance is loading), then ``masterauth`` and ``masteruser`` as they
    were, each on its own: one failing does not keep the others from being put back."""
    give_up = time.monotonic() + patience
    while True:
        try:
            client.replicaof("NO", "ONE")
            break
        except redis.BusyLoadingError:
            if time.monotonic() > give_up:
                raise RedisRefused(f"{where}: still loading; it is left a replica of the restored copy.",
                                   hint="once it has loaded, run REPLICAOF NO ONE on it, and put its masterauth "
                                   "back; the copy is left running.") from None
            time.sleep(0.2)
    for key in ("masterauth", "masteruser"):
        try:
            client.config_set(key, previous[key])
        except redis.RedisError:
            pass  # reported by the role check that follows a replace
