"""Benchmark: point-in-time recovery through the runbooks against pgBackRest run by hand, and the physical pair
against the logical one, in the same run.

    .venv/bin/python -m bench.pitr [--size 1GB] [--repeat 3] [--write docs/benchmarks.md]

A cluster with a Unix socket (pgBackRest needs one) is seeded with the sandbox's trading database and set up with
``runbooks run pitr-setup --param restart=true``. Each round, interleaved, with a checkpoint and sync before each:

- pgBackRest full backup by hand (``pgbackrest backup --type=full``) and ``runbooks run pitr-backup --param
  kind=full`` (the whole process: interpreter, imports, Prefect run, marker, info before and after, report);
- restore + start by hand (``pgbackrest restore --archive-mode=off`` into a new directory, port override,
  ``pg_ctl start``, wait until promoted) and ``runbooks run pitr-restore --param keep_running=false`` (the whole
  process; it also validates and removes the cluster, which the flow-internal figure leaves out);
- the logical pair by hand: ``pg_dump -Fc -Z0 | zstd -3`` and ``pg_restore -j 2`` from the local file.

Whole-process figures are what an operator waits for; flow-internal figures are the runbook's own steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import shlex
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.measure import flow_env, run_runbook
from runbooks.adapters.cluster import PostgresCluster, free_port, server_os_user
from runbooks.adapters.postgres import pg_bindir, pg_tool
from runbooks_sandbox import Sandbox, parse_size
from runbooks_sandbox.seed import create_database, seed


def _as_tool_user(command: str) -> list[str]:
    user = server_os_user()
    return ["su", user, "-s", "/bin/bash", "-c", command] if user else ["bash", "-c", command]


def _timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a whole process tree's largest child."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{argv[:3]} failed: {proc.stderr.read().decode()[-1500:]}")  # type: ignore[union-attr]
    return wall, usage.ru_maxrss / 1024


def _settle(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    subprocess.run(["sync"], check=True)
    time.sleep(2)


def _chown(path: Path) -> None:
    if (user := server_os_user()) is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rb-bench-pitr-"))
    root.chmod(0o755)
    sockets = Path(tempfile.mkdtemp(prefix="rbsk-"))
    sockets.chmod(0o755)
    _chown(sockets)
    cluster = PostgresCluster(root=root / "pg", port=free_port(), superuser_password="bench-" + os.urandom(6).hex(),
                              socket_directory=sockets, fast=False)
    pitr_root = root / "pitr"
    pitr_root.mkdir(mode=0o711)
    config = root / "runbooks.toml"
    config.write_text(f'state_dir = "{root / "state"}"\n[repository]\nurl = "{(root / "repository").as_uri()}"\n'
                      f'[pitr]\nstanza = "bench"\nwork_dir = "{pitr_root}"\nsocket_directory = "{sockets}"\n'
                      'archive_timeout = "30s"\n')
    config.chmod(0o600)
    box = Sandbox(root / "sandbox")  # only for its Prefect server: runs report to one, as in production
    rows: list[dict[str, Any]] = []
    try:
        print(f"== {args.size}: Prefect server, cluster, seeding", flush=True)
        (root / "sandbox").mkdir(mode=0o755)
        state = box.up(
            redis=False, pm2=False, size_mb=1, s3=False, simulator=False, prefect=True, progress=lambda _m: None)
        env = flow_env(str(config), state.prefect_api_url, RUNBOOKS_PITR__DSN=cluster.dsn())
        cluster.init()
        cluster.start()
        create_database(cluster.dsn(), dbname="trading_db", app_password="bench-app")
        seed(cluster.dsn("trading_db"), size_mb=parse_size(args.size))
        _, _, plan = run_runbook("pitr-setup", ["restart=true"], env)  # plan first; the hash applies it
        wall, _, setup = run_runbook("pitr-setup", ["restart=true", f"confirm={plan['plan']['plan_hash']}"], env)
        assert setup["succeeded"], setup["error"]
        run_runbook("pitr-backup", ["kind=full"], env)  # the first full one, and the WAL since
        with psycopg.connect(cluster.dsn("trading_db"), autocommit=True) as conn:
            size = conn.execute("SELECT pg_database_size('trading_db')").fetchone()[0]  # type: ignore[index]
        conf = pitr_root / "pgbackrest.conf"
        pgbr = f"pgbackrest --config={conf} --stanza=bench"
        bindir = pg_bindir()
        dump = root / "logical.pgc.zst"
        logs = root / "logs"  # the by-hand clusters' server logs, written by the server's OS user
        logs.mkdir(mode=0o755)
        _chown(logs)
        for round_ in range(args.repeat):
            print(f"  round {round_ + 1}/{args.repeat}", flush=True)
            row: dict[str, Any] = {}
            _settle(cluster.dsn())
            row["raw_backup"], _ = _timed(_as_tool_user(f"{pgbr} backup --type=full"))
            _settle(cluster.dsn())
            row["flow_backup"], row["flow_backup_rss"], result = run_runbook("pitr-backup", ["kind=full"], env)
            row["flow_backup_internal"] = {s["step"]: s["seconds"] for s in result["timeline"]}["back up"]
            # restore + start by hand
            new = root / f"by-hand-{round_}"
            new.mkdir(mode=0o700)
            _chown(new)
            port = free_port()
            _settle(cluster.dsn())
            started = time.perf_counter()
            by_hand = (f"{pgbr} restore --pg1-path={new} --archive-mode=off && "
                       f"printf \"port = {port}\\nlisten_addresses = '127.0.0.1'\\nunix_socket_directories = ''\\n\" "
                       f">> {new}/postgresql.auto.conf && {bindir}/pg_ctl -D {new} -l {logs}/{new.name}.log -w start "
                       ">/dev/null")
            _timed(_as_tool_user(by_hand))
            hand_dsn = cluster.dsn().replace(f":{cluster.port}/", f":{port}/")
            while True:
                with psycopg.connect(hand_dsn, autocommit=True) as conn:
                    if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
                        break
                time.sleep(0.05)
            row["raw_restore"] = time.perf_counter() - started
            subprocess.run(_as_tool_user(f"{bindir}/pg_ctl -D {new} -m immediate stop"), capture_output=True)
            shutil.rmtree(new, ignore_errors=True)
            _settle(cluster.dsn())
            row["flow_restore"], row["flow_restore_rss"], result = run_runbook(
                "pitr-restore", ["keep_running=false"], env)
            steps = {s["step"]: s["seconds"] for s in result["timeline"]}
            row["flow_restore_internal"] = steps["restore"] + steps["replay and promote"]
            # the logical pair by hand
            libpq = {**os.environ, "PGPASSWORD": cluster.superuser_password}
            dsn_args = f"-h 127.0.0.1 -p {cluster.port} -U postgres"
            _settle(cluster.dsn())
            row["logical_backup"], _ = _timed(["bash", "-o", "pipefail", "-c",
                                               f"{shlex.quote(pg_tool('pg_dump'))} {dsn_args} -Fc -Z0 trading_db | "
                                               f"zstd -q -3 -T2 -f -o {dump}"], libpq)
            plain = root / "logical.pgc"
            subprocess.run(["zstd", "-q", "-d", "-f", str(dump), "-o", str(plain)], check=True)
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS bench_logical")
                conn.execute("CREATE DATABASE bench_logical")
            _settle(cluster.dsn())
            row["logical_restore"], _ = _timed(["bash", "-c", f"{shlex.quote(pg_tool('pg_restore'))} {dsn_args} "
                                                f"-j 2 -d bench_logical {plain}"], libpq)
            plain.unlink()
            print("    " + json.dumps({k: round(v, 1) for k, v in row.items()}), flush=True)
            rows.append(row)
    finally:
        cluster.destroy()
        box.down()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)

    def med(key: str) -> float:
        values = sorted(r[key] for r in rows)
        return float(values[len(values) // 2])

    raw_b, raw_r = med("raw_backup"), med("raw_restore")
    logical_b, logical_r = med("logical_backup"), med("logical_restore")
    lines = [
        f"### PITR benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
        f"{platform.node()}: {args.size} generated trading database ({size / 1e9:.2f} GB on disk), pgBackRest "
        f"{subprocess.run(['pgbackrest', 'version'], capture_output=True, text=True).stdout.strip()}, zstd level 3, "
        f"process-max 2; medians of {args.repeat} interleaved rounds (peak RSS of the runbook processes: backup "
        f"{max(r['flow_backup_rss'] for r in rows):.0f} MB, restore {max(r['flow_restore_rss'] for r in rows):.0f} "
        "MB).", "",
        "| contender | seconds | vs by hand | vs logical |", "|---|---|---|---|",
        f"| pgBackRest full backup by hand (whole process) | {raw_b:.1f} | 1.00x | {raw_b / logical_b:.2f}x |",
        f"| **`runbooks run pitr-backup kind=full`, whole process** | {med('flow_backup'):.1f} | "
        f"{med('flow_backup') / raw_b:.2f}x | |",
        f"| flow-internal: its backup step | {med('flow_backup_internal'):.1f} | "
        f"{med('flow_backup_internal') / raw_b:.2f}x | |",
        f"| logical backup by hand: `pg_dump -Fc -Z0 \\| zstd -3` | {logical_b:.1f} | | 1.00x |",
        f"| pgBackRest restore + start + promoted, by hand | {raw_r:.1f} | 1.00x | {raw_r / logical_r:.2f}x |",
        f"| **`runbooks run pitr-restore` (latest), whole process** (also validates, removes) | "
        f"{med('flow_restore'):.1f} | {med('flow_restore') / raw_r:.2f}x | |",
        f"| flow-internal: restore + replay and promote | {med('flow_restore_internal'):.1f} | "
        f"{med('flow_restore_internal') / raw_r:.2f}x | |",
        f"| logical restore by hand: `pg_restore -j 2` from a local file | {logical_r:.1f} | | 1.00x |", "",
        "Rounds: " + "; ".join(", ".join(f"{k} {v:.1f}" for k, v in r.items() if not k.endswith("rss"))
                               for r in rows), ""]
    report = "\n".join(lines)
    print(report)
    if args.write:
        with open(args.write, "a") as handle:
            handle.write(report + "\n")


if __name__ == "__main__":
    main()
