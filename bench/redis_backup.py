"""Benchmark: the Redis backup against ``redis-cli --rdb`` piped through the same compressor, in the same run.

    .venv/bin/python -m bench.redis_backup [--size 1GB] [--repeat 3] [--write docs/benchmarks.md]

A ``redis-server`` of the benchmark's own is filled with ``--size`` of values (half random bytes, half text, as
a memory store's are), then, alternately: (a) the raw tool, ``redis-cli --rdb - | zstd -3 -T2 > file`` (Redis
forks and streams a fresh snapshot over its replication protocol; the server's diskless-sync delay set to 0);
(b) ``runbooks run backup`` for Redis alone (``include_databases=false``) into a local repository: BGSAVE, the
RDB streamed compressed (zstd level 3, two threads, as the settings' defaults) with redis-check-rdb reading it
on the way, verified, published. For (b), what an operator waits for (the whole process) and the flow-internal
time of the Redis item (dump + verify + publish), with the process's peak RSS. The issue's target: (b) whole
process <= 1.2x (a).
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

from bench.measure import flow_env, run_runbook, timed_shell
from runbooks.adapters.cluster import free_port
from runbooks_sandbox import Sandbox, parse_size


def fill(client: redis.Redis, size_bytes: int, value_bytes: int = 1000) -> int:
    """Keys of ``value_bytes`` until ``size_bytes`` are written: half random (incompressible), half text."""
    count = size_bytes // value_bytes
    text = ("episode reward action features " * 64).encode()[: value_bytes // 2]
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"memory:{i}", os.urandom(value_bytes // 4).hex()[: value_bytes // 2].encode() + text)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GB", help="dataset size, e.g. 1GB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender; the median is reported")
    parser.add_argument("--write", type=Path, help="append the results to this markdown file")
    args = parser.parse_args()
    for tool in ("redis-server", "redis-cli", "zstd"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed: apt-get install redis-server zstd")
    size = int(parse_size(args.size) * 1_000_000)
    root = Path(tempfile.mkdtemp(prefix="bench-redis-", dir="/var/tmp"))
    root.chmod(0o755)
    box = Sandbox(root / "sandbox")
    server: subprocess.Popen[bytes] | None = None
    try:
        print("== starting a Prefect server (sandbox) and a redis-server", flush=True)
        state = box.up(size_mb=1, s3=False, simulator=False, prefect=True, feeder=False, redis=False, pm2=False,
                       progress=lambda m: print("  " + m, flush=True))
        data = root / "redis"
        data.mkdir(mode=0o700)
        port, password = free_port(), secrets.token_urlsafe(16)
        conf = data / "redis.conf"
        # No diskless-sync delay: Redis 7 waits 5 s for more replicas before it streams to one (what redis-cli
        # --rdb is), which would flatter the comparison.
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {data}\nsave \"\"\nappendonly no\n"
                        f"requirepass {password}\nlogfile {data / 'redis.log'}\nrepl-diskless-sync-delay 0\n")
        conf.chmod(0o600)
        server = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=port, password=password)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        print(f"== filling Redis with {args.size}", flush=True)
        started = time.perf_counter()
        keys = fill(client, size)
        used = int(client.info("memory")["used_memory"])
        print(f"  {keys} keys, used_memory {used / 1e6:.0f} MB in {time.perf_counter() - started:.0f} s", flush=True)

        env = {**os.environ, "REDISCLI_AUTH": password}  # never on a command line
        out = root / "raw.rdb.zst"
        raw = f"redis-cli -p {port} --rdb - 2>/dev/null | zstd -3 -T2 -q -f -o {out}"
        repository = root / "repository"
        runbook_env = flow_env(state.config_path, state.prefect_api_url, RUNBOOKS_REPOSITORY__URL=repository.as_uri(),
                               RUNBOOKS_REDIS__BENCH__PORT=str(port), RUNBOOKS_REDIS__BENCH__PASSWORD=password,
                               RUNBOOKS_REDIS__BENCH__RDB_PATH=str(data / "dump.rdb"))
        params = ["include_databases=false", "include_cluster=false", "apply_retention=false"]
        raw_times, walls, flows, rss = [], [], [], []
        for i in range(args.repeat):
            raw_times.append(timed_shell(raw, env))
            stored = out.stat().st_size
            wall, peak, result = run_runbook("backup", params, runbook_env)
            [item] = result["items"]
            assert item["status"] == "succeeded", item
            walls.append(wall)
            flows.append(item["seconds"])
            rss.append(peak)
            print(f"  run {i + 1}: raw {raw_times[-1]:.2f} s ({stored / 1e6:.0f} MB); runbooks whole process "
                  f"{wall:.2f} s, flow-internal {item['seconds']:.2f} s ({item['stored_bytes'] / 1e6:.0f} MB), "
                  f"peak RSS {peak:.0f} MB", flush=True)
        med = sorted(raw_times)[len(raw_times) // 2]
        wall = sorted(walls)[len(walls) // 2]
        flow = sorted(flows)[len(flows) // 2]
        lines = [
            f"### Redis backup, {args.size} ({keys} keys, used_memory {used / 1e6:.0f} MB) — "
            f"{datetime.now(UTC):%Y-%m-%d}, {platform.node()}, {os.cpu_count()} CPUs, median of {args.repeat}",
            "",
            "| contender | seconds | ratio to (a) | peak RSS |",
            "|---|---|---|---|",
            f"| (a) `redis-cli --rdb - \\| zstd -3 -T2` | {med:.2f} | 1.00x | - |",
            f"| (b) `runbooks run backup` (Redis alone), whole process | {wall:.2f} | {wall / med:.2f}x | "
            f"{sorted(rss)[len(rss) // 2]:.0f} MB |",
            f"| (b) flow-internal: BGSAVE + stream + check + verify + publish | {flow:.2f} | {flow / med:.2f}x | - |",
            "",
        ]
        print("\n".join(lines))
        if args.write:
            with args.write.open("a") as f:
                f.write("\n" + "\n".join(lines))
    finally:
        if server is not None:
            server.kill()
            server.wait()
        box.down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
