"""Benchmark: the restore flow against raw ``pg_restore -j 2`` from a local file, in the same run.

    .venv/bin/python -m bench.restore [--size 1GB] [--jobs 2] [--repeat 3] [--write docs/benchmarks.md]

The flow (mode=new) fetches the backup from the local repository, verifies its SHA-256, restores with
``pg_restore -j`` into a scratch database, validates row counts and the seeds' integrity checks, and publishes it.
Reported: its restore (fetch + pg_restore) and its time to a validated database, each against raw pg_restore
of an already local, decompressed dump (what the seeds do after ``aws s3 cp``).
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
from runbooks.catalog import BackupCatalog
from runbooks.pipeline import iter_decompressed
from runbooks.postgres import libpq_env, pg_tool
from runbooks.repository import open_repository
from runbooks.sandbox import Sandbox, parse_size
from runbooks.sandbox.environment import DATABASE
from runbooks.settings import RepositorySettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GB")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="runbooks-bench-"))
    root.chmod(0o755)
    box = Sandbox(root)
    try:
        print(f"== {args.size}: starting sandbox and seeding", flush=True)
        state = box.up(size_mb=parse_size(args.size), s3=False, simulator=False, prefect=True,
                       progress=lambda m: print("  " + m, flush=True))
        env = flow_env(state.config_path, state.prefect_api_url)
        print("  taking a backup with the flow", flush=True)
        run_runbook("backup", ["include_cluster=false"], env)
        catalog = BackupCatalog(open_repository(RepositorySettings(url=(root / "repository").as_uri())))
        [manifest] = catalog.list_backups(kind="database", name=DATABASE)
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
        for round_ in range(args.repeat):  # interleaved, so drift on this noisy machine hits both alike
            print(f"  round {round_ + 1}/{args.repeat}: raw pg_restore, then the restore flow", flush=True)
            settle()
            raws.append(timed_shell(raw_cmd, raw_env))
            settle()
            _wall, _rss, result = run_runbook(
                "restore", [f"database={DATABASE}", "mode=new", f"target_database=bench_flow_{round_}",
                            f"jobs={args.jobs}", "restore_globals=never"], env)
            steps = {s["step"]: s["seconds"] for s in result["timeline"]}
            flows.append((steps["fetch and verify backup"] + steps[f"pg_restore -j {args.jobs}"],
                          result["time_to_restore_seconds"], result))
        raw = sorted(raws)[len(raws) // 2]
        restore_s, validated_s, result = sorted(flows, key=lambda f: f[0])[len(flows) // 2]
    finally:
        box.down()
    steps = {s["step"]: s["seconds"] for s in result["timeline"]}
    report = "\n".join([
        f"### Restore benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
        f"{platform.node()}: {args.size} generated database ({manifest.bytes / 1e9:.2f} GB dump), "
        f"`-j {args.jobs}`, medians of {args.repeat} interleaved rounds "
        f"(raw runs: {', '.join(f'{r:.1f}' for r in raws)} s; flow restores: "
        f"{', '.join(f'{f[0]:.1f}' for f in flows)} s).", "",
        "| contender | seconds | vs raw |", "|---|---|---|",
        f"| raw `pg_restore -j {args.jobs}` from a local file | {raw:.1f} | 1.00x |",
        f"| restore flow: fetch + verify + pg_restore | {restore_s:.1f} | {restore_s / raw:.2f}x |",
        f"| restore flow: time to a validated database | {validated_s:.1f} | {validated_s / raw:.2f}x |",
        "", "Flow steps of the median run: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()), ""])
    print(report)
    if args.write:
        with open(args.write, "a") as report_file:
            report_file.write(report + "\n")


if __name__ == "__main__":
    main()
