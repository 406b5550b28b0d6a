"""The sandbox's memory/learning system and its PM2-managed app: a ``redis-server`` (Debian's, where installed)
holding a seeded memory, and, where Node.js and PM2 are installed, a small app PM2 runs from an ecosystem file the
sandbox writes. Each is optional: ``pip install .`` alone gives a sandbox without them, and says so."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

REDIS_INSTANCE = "memory"
PM2_SERVICE = "agent"
PM2_APP = "sandbox-agent"

# The app: an HTTP server on loopback that answers /health; a stand-in for the platform's Node.js processes.
AGENT_JS = """\
const http = require('http');
const port = Number(process.env.AGENT_PORT || 0);
http.createServer((req, res) => {
  res.writeHead(200, {'content-type': 'application/json'});
  res.end(JSON.stringify({status: 'healthy', pid: process.pid}));
}).listen(port, '127.0.0.1');
"""


def _private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def write_redis_conf(directory: Path, *, port: int, password: str) -> Path:
    """Its config, 0600 (it holds the password: never on a command line, where ``ps`` shows it). Saves as the
    Debian package does; its title names the config, so the sandbox knows its own process."""
    directory.mkdir(mode=0o700, exist_ok=True)
    conf = directory / "redis.conf"
    _private(conf, "\n".join([
        f"port {port}", "bind 127.0.0.1", f'dir "{directory}"', 'dbfilename "dump.rdb"', "save 900 1 300 10 60 10000",
        "appendonly no", f'logfile "{directory / "redis.log"}"', f"requirepass {password}", "maxmemory 256mb",
        "maxmemory-policy noeviction", 'proc-title-template "{title} {listen-addr} {config-file}"', ""]))
    return conf


def seed_redis(port: int, password: str, *, episodes: int = 2000) -> int:
    """The memory/learning system's data: episodes (hashes), each agent's recent decisions (lists), learned
    features (sorted sets); returns the key count."""
    import redis

    client = redis.Redis(port=port, password=password)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    pipe = client.pipeline(transaction=False)
    for i in range(episodes):
        pipe.hset(f"memory:episode:{i}", mapping={"symbol": "USDCOP" if i % 2 else "BTCUSD", "reward": i % 17 - 8,
                                                   "action": ("buy", "sell", "hold")[i % 3]})
    for agent in ("ppo_primary", "ppo_challenger"):
        pipe.rpush(f"memory:decisions:{agent}", *[f"{i}:{('buy', 'sell', 'hold')[i % 3]}" for i in range(500)])
        pipe.zadd(f"memory:features:{agent}", {f"f{i}": i / 100 for i in range(200)})
    pipe.set("memory:version", "1")
    pipe.execute()
    client.bgsave()
    count = int(client.dbsize())
    client.close()
    return count


def redis_answers(port: int, password: str) -> bool:
    import redis

    client = redis.Redis(port=port, password=password, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def pm2_available() -> bool:
    return shutil.which("node") is not None and shutil.which("pm2") is not None


def pm2_env(home: Path) -> dict[str, str]:
    """PM2 run with the sandbox's own daemon (PM2_HOME), never the user's ~/.pm2."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PM2_HOME": str(home)}


def start_agent(directory: Path, *, port: int) -> Path:
    """Write the app and its ecosystem file, and start it under a PM2 daemon of the sandbox's own."""
    directory.mkdir(mode=0o700, exist_ok=True)
    home = directory / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    _private(directory / "agent.js", AGENT_JS)
    ecosystem = directory / "ecosystem.config.js"
    _private(ecosystem, "module.exports = {apps: [{name: '" + PM2_APP + "', script: '" + str(directory / "agent.js")
             + "', autorestart: true, max_restarts: 1000, min_uptime: 1000, env: {AGENT_PORT: '" + str(port)
             + "'}}]};\n")
    # umask 077: the daemon it starts, and the logs it writes, are the owner's only.
    subprocess.run(["pm2", "start", str(ecosystem)], env=pm2_env(home), check=True, capture_output=True,
                   timeout=120, umask=0o077)
    for sock in home.glob("*.sock"):  # node makes its sockets 0775 whatever the umask
        sock.chmod(0o600)
    return ecosystem


def stop_pm2(directory: Path) -> bool:
    """``pm2 kill`` of the sandbox's own daemon (its PM2_HOME), when it has one."""
    home = directory / "home"
    if not (home / "rpc.sock").exists() or shutil.which("pm2") is None:
        return False
    subprocess.run(["pm2", "kill"], env=pm2_env(home), check=False, capture_output=True, timeout=60)
    return True
