"""Benchmark: the DR game-day drill against the raw tools doing the same work, in the same run.

    .venv/bin/python -m bench.dr [--size 1GB] [--jobs 2] [--repeat 3] [--write docs/benchmarks.md] [--dir DIR]

Raw, timed part by part: ``initdb`` + ``pg_ctl start`` of a clean cluster (the same settings the drill's
throwaway cluster uses), ``zstd -d`` of the backup's dump to a local file, ``createdb`` + ``pg_restore -j``, and
the validation queries (``count(*)`` of every table and the database's integrity checks, through ``psql``); then
the cluster is removed. The issue's raw sum is initdb + pg_restore + validation; decompression is shown beside it.

The drill: the whole ``runbooks run dr-game-day --json`` process (what an operator waits for: interpreter, imports,
Prefect, every step: sweep, backup-set choice, provisioning, roles, config files, fetch + SHA-256, restore, the
proof including freshness and the GX suite, health checks, scoring, the drill record, teardown) with its peak
RSS, beside the flow-internal figures (each step from the result's timeline). Rounds are interleaved.

``--dir DIR`` reuses (and keeps) a sandbox already running there instead of starting and seeding a new one.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shlex
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.measure import flow_env, run_runbook, timed_shell
from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.cluster import PostgresCluster, free_port
from runbooks.adapters.postgres import libpq_env, pg_tool
from runbooks.adapters.repository import open_repository
from runbooks.settings import RepositorySettings, load_settings
from runbooks_sandbox import Sandbox, parse_size
from runbooks_sandbox.environment import DATABASE


def raw_round(root: Path, dump_zst: Path, jobs: int, checks: list[str]) -> dict[str, float]:
    """The raw tools, part by part, on a cluster of their own (removed afterwards)."""
    work = root / f"raw-{secrets.token_hex(3)}"
    work.mkdir()
    work.chmod(0o755)
    cluster = PostgresCluster(root=work / "cluster", port=free_port(), superuser_password=secrets.token_urlsafe(16))
    times: dict[str, float] = {}
    try:
        started = time.perf_counter()
        cluster.init()
        cluster.start()
        times["initdb + start"] = time.perf_counter() - started
        dump = work / "dump.pgc"
        if shutil.which("zstd"):
            times["zstd -d"] = timed_shell(f"zstd -q -d -o {shlex.quote(str(dump))} {shlex.quote(str(dump_zst))}",
                                           {})
        else:  # the drill's own decompressor, where the CLI is missing
            from runbooks.adapters.pipeline import iter_decompressed

            started = time.perf_counter()
            with open(dump, "wb") as handle, open(dump_zst, "rb") as source:
                for chunk in iter_decompressed(iter(lambda: source.read(1 << 20), b"")):
                    handle.write(chunk)
            times["zstd -d"] = time.perf_counter() - started
        env = libpq_env(psycopg.conninfo.conninfo_to_dict(cluster.dsn()))
        restore = (f"{shlex.quote(pg_tool('createdb'))} {DATABASE} && {shlex.quote(pg_tool('pg_restore'))} "
                   f"--no-owner --no-acl -j {jobs} -d {DATABASE} {shlex.quote(str(dump))}")
        times["pg_restore"] = timed_shell(restore, env)
        with psycopg.connect(cluster.dsn(DATABASE)) as conn:
            tables = [f"{s}.{t}" for s, t in conn.execute(
                "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
                "'information_schema') ORDER BY 1, 2").fetchall()]
        counts = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in tables)
        script = work / "validate.sql"
        script.write_text(counts + ";\n" + "".join(c.rstrip().rstrip(";") + ";\n" for c in checks))
        psql = pg_tool("psql")
        times["validation (psql)"] = timed_shell(
            f"{shlex.quote(psql)} -X -q -v ON_ERROR_STOP=1 -d {DATABASE} -f {shlex.quote(str(script))} >/dev/null",
            env)
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GB")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--dir", type=Path, help="reuse the sandbox running in this directory (kept)")
    parser.add_argument("--no-quality", action="store_true", help="drill with quality=false (no GX suite)")
    args = parser.parse_args()
    root = args.dir.resolve() if args.dir else Path(tempfile.mkdtemp(prefix="runbooks-bench-"))
    root.chmod(0o755)
    box = Sandbox(root)
    try:
        print(f"== {args.size}: starting sandbox and seeding", flush=True)
        state = box.up(redis=False, pm2=False, size_mb=parse_size(args.size), s3=False, simulator=True, prefect=True,
                       progress=lambda m: print("  " + m, flush=True))
        env = flow_env(state.config_path, state.prefect_api_url)
        print("  taking a backup with the flow", flush=True)
        run_runbook("backup", ["apply_retention=false"], env)
        catalog = BackupCatalog(open_repository(RepositorySettings(url=(root / "repository").as_uri())))
        manifest = catalog.list_backups(kind="database", name=DATABASE)[-1]
        dump_zst = root / "repository" / next(o.key for o in manifest.objects if o.role == "dump")
        os.environ["RUNBOOKS_CONFIG"] = state.config_path
        checks = [c.sql for c in load_settings().databases[DATABASE].checks]
        raws: list[dict[str, float]] = []
        drills: list[tuple[float, float, dict[str, Any]]] = []
        for round_ in range(args.repeat):  # interleaved: drift on a noisy machine hits both alike
            print(f"  round {round_ + 1}/{args.repeat}: raw tools, then the drill", flush=True)
            raws.append(raw_round(root, dump_zst, args.jobs, checks))
            wall, rss, result = run_runbook("dr-game-day", [f"jobs={args.jobs}", *(["quality=false"] if args.no_quality
                                                                                   else [])], env)
            if not result.get("operational"):
                raise SystemExit(f"the drill did not prove the platform: {result.get('error')}")
            drills.append((wall, rss, result))
            issue_sum = sum(v for k, v in raws[-1].items() if k != "zstd -d")
            print(f"    raw {issue_sum:.1f} s (+ zstd {raws[-1]['zstd -d']:.1f} s); drill process {wall:.1f} s "
                  f"({rss:.0f} MB), flow-internal {result['seconds']:.1f} s", flush=True)
    finally:
        if not args.dir:
            box.down()

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    parts = {k: median([r[k] for r in raws]) for k in raws[0]}
    sums = [sum(v for k, v in r.items() if k != "zstd -d") for r in raws]
    raw_sum = median(sums)
    raw_all = median([sum(r.values()) for r in raws])
    wall = median([d[0] for d in drills])
    rss = max(d[1] for d in drills)
    _w, _r, result = sorted(drills, key=lambda d: d[0])[len(drills) // 2]
    internal = result["seconds"]
    recovery = result["recovery_seconds"]
    steps = {s["step"]: s["seconds"] for s in result["timeline"]}
    report = "\n".join([
        f"### DR game-day benchmark{' (quality=false)' if args.no_quality else ''}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
        f"{platform.node()} ({os.cpu_count()} CPUs): {args.size} sandbox ({manifest.bytes / 1e9:.2f} GB dump, "
        f"{manifest.stored_bytes / 1e9:.2f} GB stored), `-j {args.jobs}`, medians of {args.repeat} interleaved "
        f"rounds (raw sums: {', '.join(f'{v:.1f}' for v in sums)} s; "
        f"drill processes: {', '.join(f'{d[0]:.1f}' for d in drills)} s).", "",
        "| contender | seconds | vs raw sum | peak RSS |", "|---|---|---|---|",
        *[f"| raw: {k} | {v:.1f} | | |" for k, v in parts.items()],
        f"| **raw sum: initdb + start, pg_restore, validation** | {raw_sum:.1f} | 1.00x | - |",
        f"| raw sum with zstd -d | {raw_all:.1f} | {raw_all / raw_sum:.2f}x | - |",
        f"| **`runbooks run dr-game-day`, whole process** (what an operator waits for) | {wall:.1f} | "
        f"{wall / raw_sum:.2f}x | {rss:.0f} MB |",
        f"| flow-internal: the whole drill (start to teardown) | {internal:.1f} | {internal / raw_sum:.2f}x | |",
        f"| flow-internal: time to recovery (start to platform proven) | {recovery:.1f} | {recovery / raw_sum:.2f}x |"
        " |", "",
        "Drill steps of the median run: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()), ""])
    print(report)
    if args.write:
        with open(args.write, "a") as report_file:
            report_file.write(report + "\n")


if __name__ == "__main__":
    main()
