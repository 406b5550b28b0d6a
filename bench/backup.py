"""Benchmark: the backup flow against the raw tools, measured in the same run on the same database.

    .venv/bin/python -m bench.backup [--size 1GB] [--size 200MB] [--write docs/benchmarks.md]

For each size: (a) the seeds' ``pg_dump -Fc`` to a local file, (b) the fastest raw logical pipeline
``pg_dump -Fc -Z0 | zstd -3`` to a file, (c) the backup flow to the local repository and (d) to S3 (moto's
server, in memory: its throughput bounds (d), not ours). Prints, for the flow, both what an operator waits for
(wall time of the whole ``runbooks run backup`` process: interpreter, imports, Prefect run set-up and teardown)
and the flow-internal time of the database backup, each against (b), with the process's peak RSS.

``--dir DIR`` reuses (and keeps) a sandbox already running there instead of starting and seeding a new one.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench.measure import flow_env, run_runbook, timed_shell
from runbooks.adapters.postgres import libpq_env, pg_tool
from runbooks_sandbox import Sandbox, parse_size
from runbooks_sandbox.environment import BUCKET, DATABASE


@dataclass
class Row:
    size: str
    db_bytes: int
    label: str
    seconds: float
    out_bytes: int = 0
    peak_rss_mb: float | None = None
    flow_seconds: float | None = None
    wall_seconds: float | None = None  # the whole `runbooks run` process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", action="append", help="database size(s), e.g. 1GB (repeatable)")
    parser.add_argument("--write", type=Path, help="append the results to this markdown file")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender; the median is reported")
    parser.add_argument("--dir", type=Path, help="reuse the sandbox running in this directory (kept)")
    args = parser.parse_args()
    sizes = args.size or ["1GB"]
    if not shutil.which("zstd"):
        raise SystemExit("zstd(1) is needed for baseline (b): apt-get install zstd")
    rows: list[Row] = []
    for size in sizes:
        root = args.dir.resolve() if args.dir else Path(tempfile.mkdtemp(prefix="runbooks-bench-"))
        root.chmod(0o755)
        box = Sandbox(root)
        try:
            print(f"== {size}: starting sandbox and seeding", flush=True)
            state = box.up(size_mb=parse_size(size), s3=not args.skip_s3, simulator=False, prefect=True,
                           redis=False, pm2=False, progress=lambda m: print("  " + m, flush=True))
            dsn = state.cluster().dsn(DATABASE)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
                row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
                db_bytes = int(row[0]) if row else 0
            params = psycopg.conninfo.conninfo_to_dict(dsn)
            env = libpq_env(params)
            pg_dump = shlex.quote(pg_tool("pg_dump"))
            out = root / "out"
            out.mkdir()
            # Warm the page cache so no contender pays the first read.
            timed_shell(f"{pg_dump} -Fc -Z0 > /dev/null", env)
            base_env = flow_env(state.config_path, state.prefect_api_url)
            contenders: dict[str, object] = {
                "(a) pg_dump -Fc (seeds)": f"{pg_dump} -Fc -f {out / 'a.dump'}",
                "(b) pg_dump -Fc -Z0 \\| zstd -3": f"{pg_dump} -Fc -Z0 | zstd -3 -q > {out / 'b.dump.zst'}",
                "(c) backup flow -> local": {},
            }
            if not args.skip_s3:
                contenders["(c) backup flow -> S3 (moto)"] = {
                    "RUNBOOKS_REPOSITORY__URL": f"s3://{BUCKET}/bench",
                    "RUNBOOKS_REPOSITORY__ENDPOINT_URL": state.s3_endpoint or "",
                    "RUNBOOKS_REPOSITORY__ACCESS_KEY_ID": "sandbox",
                    "RUNBOOKS_REPOSITORY__SECRET_ACCESS_KEY": state.s3_secret or ""}
            runs: dict[str, list[Row]] = {label: [] for label in contenders}
            for round_ in range(args.repeat):  # interleaved: drift on a noisy machine hits every contender alike
                print(f"  round {round_ + 1}/{args.repeat}", flush=True)
                for label, how in contenders.items():
                    subprocess.run(["sync"], check=True)
                    if isinstance(how, str):
                        seconds = timed_shell(how, env)
                        output = out / ("a.dump" if label.startswith("(a)") else "b.dump.zst")
                        runs[label].append(Row(size, db_bytes, label, seconds, output.stat().st_size))
                        output.unlink()
                        continue
                    wall, rss, result = run_runbook(
                        "backup", ["include_cluster=false", "apply_retention=false"], {**base_env, **how})  # type: ignore[dict-item]
                    item = result["items"][0]
                    runs[label].append(Row(size, db_bytes, label, item["seconds"], item["stored_bytes"], rss,
                                           result["seconds"], wall))
            for label, measured in runs.items():
                rows.append(median_row(measured))
                print(f"  {label}: " + ", ".join(
                    f"{r.seconds:.1f}" + (f" (process {r.wall_seconds:.1f})" if r.wall_seconds else "")
                    for r in measured) + " s", flush=True)
            shutil.rmtree(out)
        finally:
            if not args.dir:
                box.down()
    report = render(rows)
    print(report)
    if args.write:
        with open(args.write, "a") as handle:
            handle.write(report + "\n")


def median_row(measured: list[Row]) -> Row:
    """The median run by flow-internal seconds, with the median process wall time of all runs beside it."""
    row = sorted(measured, key=lambda r: r.seconds)[len(measured) // 2]
    walls = sorted(r.wall_seconds for r in measured if r.wall_seconds is not None)
    if walls:
        row.wall_seconds = walls[len(walls) // 2]
    return row


def render(rows: list[Row]) -> str:
    lines = [f"### Backup benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
             "",
             f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"{subprocess.run([pg_tool('pg_dump'), '--version'], capture_output=True, text=True).stdout.strip()}, "
             f"peak RSS of this benchmark {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
             "",
             "Medians of interleaved rounds. `process` is what an operator waits for: the wall time of the whole "
             "`runbooks run backup` process (interpreter, imports, Prefect run set-up and teardown included); "
             "for the raw tools it is their shell pipeline. `flow-internal` is the flow's backup of the database "
             "(dump + verify + publish); `whole flow run` adds the repository check, sweep and report.",
             "",
             "| database | contender | process | vs (b) | flow-internal | vs (b) | vs (a) | output | peak RSS "
             "| whole flow run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for size in dict.fromkeys(r.size for r in rows):
        group = [r for r in rows if r.size == size]
        a = next(r.seconds for r in group if r.label.startswith("(a)"))
        b = next(r.seconds for r in group if r.label.startswith("(b)"))
        for r in group:
            wall = r.wall_seconds or r.seconds  # the raw tools: their pipeline is the whole process
            internal = f"{r.seconds:.1f} | {r.seconds / b:.2f}x" if r.wall_seconds else "- | -"
            lines.append(
                f"| {size} ({r.db_bytes / 1e9:.2f} GB) | {r.label} | {wall:.1f} | {wall / b:.2f}x | {internal} | "
                f"{r.seconds / a:.2f}x | {r.out_bytes / 1e6:.0f} MB | "
                f"{f'{r.peak_rss_mb:.0f} MB' if r.peak_rss_mb else '-'} | "
                f"{f'{r.flow_seconds:.1f} s' if r.flow_seconds else '-'} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
