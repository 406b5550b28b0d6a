"""Benchmark: the restore flow against raw ``pg_restore -j 2`` from a local file, in the same run.

    .venv/bin/python -m bench.restore [--size 1GB] [--jobs 2] [--repeat 3] [--write docs/benchmarks.md]

The flow (mode=new) fetches the backup from the local repository, verifies its SHA-256, restores with
``pg_restore -j`` into a scratch database, validates row counts and the seeds' integrity checks, and publishes it.
Reported against raw pg_restore of an already local, decompressed dump (what the seeds do after ``aws s3 cp``):
what an operator waits for, the wall time of the whole ``runbooks run restore`` process (interpreter, imports,
Prefect run set-up and teardown, every step) with its peak RSS, and the flow-internal figures: its restore
(fetch + pg_restore), its own pg_restore step, and its time to a validated database.

``--dir DIR`` reuses (and keeps) a sandbox already running there instead of starting and seeding a new one.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from bench.measure import flow_env, run_runbook, timed_shell
from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.pipeline import iter_decompressed
from runbooks.adapters.postgres import libpq_env, pg_tool
from runbooks.adapters.repository import open_repository
from runbooks.settings import RepositorySettings
from runbooks_sandbox import Sandbox, parse_size
from runbooks_sandbox.environment import DATABASE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GB")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--dir", type=Path, help="reuse the sandbox running in this directory (kept)")
    args = parser.parse_args()
    root = args.dir.resolve() if args.dir else Path(tempfile.mkdtemp(prefix="runbooks-bench-"))
    root.chmod(0o755)
    box = Sandbox(root)
    try:
        print(f"== {args.size}: starting sandbox and seeding", flush=True)
        state = box.up(redis=False, pm2=False, size_mb=parse_size(args.size), s3=False, simulator=False, prefect=True,
                       progress=lambda m: print("  " + m, flush=True))
        env = flow_env(state.config_path, state.prefect_api_url)
        print("  taking a backup with the flow", flush=True)
        run_runbook("backup", ["include_cluster=false"], env)
        catalog = BackupCatalog(open_repository(RepositorySettings(url=(root / "repository").as_uri())))
        manifest = catalog.list_backups(kind="database", name=DATABASE)[-1]  # the one just taken
        dump = root / "local.dump"
        with open(dump, "wb") as handle:
            for chunk in iter_decompressed(catalog.repository.iter_chunks(manifest.objects[0].key)):
                handle.write(chunk)

        admin = state.cluster().dsn("postgres")

        def settle() -> None:
            """Same start for every contender: no restored copies left, no checkpoint or writeback pending."""
            with psycopg.connect(admin, autocommit=True) as conn:
                for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench_%'"):
                    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute("CREATE DATABASE bench_raw")
                conn.execute("CHECKPOINT")
            subprocess.run(["sync"], check=True)
            time.sleep(2)

        raw_env = libpq_env(psycopg.conninfo.conninfo_to_dict(state.cluster().dsn("bench_raw")))
        raw_cmd = f"{shlex.quote(pg_tool('pg_restore'))} -j {args.jobs} -d bench_raw {dump}"
        raws: list[float] = []
        flows: list[tuple[float, float, dict]] = []  # type: ignore[type-arg]
        walls: list[tuple[float, float]] = []  # whole `runbooks run restore` process: seconds, peak RSS MB
        for round_ in range(args.repeat):  # interleaved, so drift on this noisy machine hits both alike
            print(f"  round {round_ + 1}/{args.repeat}: raw pg_restore, then the restore flow", flush=True)
            settle()
            raws.append(timed_shell(raw_cmd, raw_env))
            settle()
            wall, rss, result = run_runbook(
                "restore", [f"database={DATABASE}", "mode=new", f"target_database=bench_flow_{round_}",
                            f"jobs={args.jobs}", "restore_globals=never"], env)
            steps = {s["step"]: s["seconds"] for s in result["timeline"]}
            flows.append((steps["fetch and verify backup"] + steps[f"pg_restore -j {args.jobs}"],
                          result["time_to_restore_seconds"], result))
            walls.append((wall, rss))
            print(f"    raw {raws[-1]:.1f} s; flow process {wall:.1f} s ({rss:.0f} MB), fetch + pg_restore "
                  f"{flows[-1][0]:.1f} s (pg_restore {steps[f'pg_restore -j {args.jobs}']:.1f} s)", flush=True)
        raw = sorted(raws)[len(raws) // 2]
        restore_s, validated_s, result = sorted(flows, key=lambda f: f[0])[len(flows) // 2]
        wall_s = sorted(w for w, _ in walls)[len(walls) // 2]
        rss_mb = max(r for _, r in walls)
        own_restore = sorted(f[2]["timeline"][[s["step"] for s in f[2]["timeline"]].index(
            f"pg_restore -j {args.jobs}")]["seconds"] for f in flows)[len(flows) // 2]
    finally:
        if not args.dir:
            box.down()
    steps = {s["step"]: s["seconds"] for s in result["timeline"]}
    report = "\n".join([
        f"### Restore benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
        f"{platform.node()}: {args.size} generated database ({manifest.bytes / 1e9:.2f} GB dump), "
        f"`-j {args.jobs}`, medians of {args.repeat} interleaved rounds "
        f"(raw runs: {', '.join(f'{r:.1f}' for r in raws)} s; flow processes: "
        f"{', '.join(f'{w:.1f}' for w, _ in walls)} s; flow restores: {', '.join(f'{f[0]:.1f}' for f in flows)} s).",
        "",
        "| contender | seconds | vs raw | peak RSS |", "|---|---|---|---|",
        f"| raw `pg_restore -j {args.jobs}` from a local file (whole process) | {raw:.1f} | 1.00x | - |",
        f"| **`runbooks run restore` mode=new, whole process** (what an operator waits for) | {wall_s:.1f} | "
        f"{wall_s / raw:.2f}x | {rss_mb:.0f} MB |",
        f"| flow-internal: its pg_restore step | {own_restore:.1f} | {own_restore / raw:.2f}x | |",
        f"| flow-internal: fetch + verify + pg_restore | {restore_s:.1f} | {restore_s / raw:.2f}x | |",
        f"| flow-internal: time to a validated database | {validated_s:.1f} | {validated_s / raw:.2f}x | |",
        "", "Flow steps of the median run: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()), ""])
    print(report)
    if args.write:
        with open(args.write, "a") as report_file:
            report_file.write(report + "\n")


if __name__ == "__main__":
    main()
