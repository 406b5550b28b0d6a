"""Real ``redis-server`` processes for the tests: each in a directory of its own, on a free port, with a password,
stopped (without saving) at the end. Nothing here touches a Redis the test did not start."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from runbooks.adapters.cluster import free_port


@dataclass
class RedisServer:
    directory: Path
    port: int
    password: str
    proc: subprocess.Popen[bytes]
    extra: list[str] = field(default_factory=list)

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, db=db, decode_responses=True)

    def env(self, monkeypatch: pytest.MonkeyPatch, name: str = "memory") -> None:
        """Put this server in the inventory as ``[redis.<name>]``, as an operator's environment would."""
        key = f"RUNBOOKS_REDIS__{name.upper()}__"
        monkeypatch.setenv(key + "PORT", str(self.port))
        monkeypatch.setenv(key + "PASSWORD", self.password)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def start_redis(directory: Path, *extra: str, password: str | None = None) -> RedisServer:
    """The password goes in a 0600 config file, never on the command line (the secrets canary reads ``ps``)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run installs Debian's redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_hex(12)
    port = free_port()
    conf = directory / "redis.conf"
    conf.touch(mode=0o600)
    conf.write_text(f"requirepass {password}\n")
    proc = subprocess.Popen(["redis-server", str(conf), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(directory), "--save", "", "--appendonly", "no",
                             "--logfile", str(directory / "redis.log"), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(directory=directory, port=port, password=password, proc=proc, extra=list(extra))
    client = server.client()
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(directory / 'redis.log').read_text()[-500:]}") from None
            time.sleep(0.05)
    return server


def fill(server: RedisServer, *, keys: int = 200, databases: tuple[int, ...] = (0, 3)) -> dict[str, int]:
    """Strings, a hash, a list, a set and a sorted set in each database; returns INFO keyspace's counts."""
    for db in databases:
        c = server.client(db)
        pipe = c.pipeline()
        for i in range(keys):
            pipe.set(f"memory:{db}:{i}", f"value {i} " * 5)
        pipe.hset(f"agent:{db}", mapping={"mood": "calm", "trades": "42"})
        pipe.rpush(f"episodes:{db}", *range(50))
        pipe.sadd(f"symbols:{db}", "USDCOP", "BTCUSD")
        pipe.zadd(f"scores:{db}", {"a": 1.0, "b": 2.5})
        pipe.execute()
    return {f"db{db}": keys + 4 for db in databases}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis-live")
    try:
        yield server
    finally:
        server.stop()


def leftover_servers(root: Path) -> list[int]:
    """PIDs of redis-servers whose command line names a directory under ``root`` (restored copies)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"redis-server" in cmd.split(b"\0")[0] and str(root).encode() in cmd:
            found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
