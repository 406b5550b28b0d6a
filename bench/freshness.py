"""Benchmark: the data-freshness runbook against the raw tools, and its quality suite as the table grows.

    .venv/bin/python -m bench.freshness [--tables 10,100,1000] [--repeat 3] [--dbt /tmp/dbt-venv/bin/dbt]
        [--gx-sizes 1000000,10000000] [--dir DIR] [--write docs/benchmarks.md]

Freshness, over N small monitored tables (``fq_0`` .. ``fq_{N-1}``, ~50 rows each) in a scratch database of the
sandbox cluster, for each N:

- whole process (what an operator waits for), each a fresh process with its peak RSS (GNU time): ``runbooks run
  data-freshness --param quality=false`` with a config listing the N tables, against ``psql`` running one
  ``UNION ALL`` query over the same tables, and ``dbt source freshness`` on a throwaway project declaring them;
- flow-internal, in this process: ``measure_freshness.fn`` (connects, one pipeline of N statements) against the
  same ``UNION ALL`` query through psycopg on an already open connection (and, for reference, with its connect).

Quality: a bars table of 1 M, then 10 M rows (the same 6 h window, only the history grows), and the GX suite of
the recent window (``validate_recent_window.fn``) in a fresh process per run, so its peak RSS is its own.

dbt is not a dependency of this project: install it beside, outside the repository, and pass ``--dbt``::

    python3 -m venv /tmp/dbt-venv && /tmp/dbt-venv/bin/pip install "dbt-core==1.11.*" "dbt-postgres==1.11.*"

``--dir DIR`` reuses (and keeps) a sandbox already running there instead of starting a new one; the scratch
database is dropped either way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any

import psycopg
from psycopg import sql

from bench.measure import flow_env
from runbooks.adapters.postgres import libpq_env, pg_tool
from runbooks.settings import DatabaseSettings, FreshnessSettings, MonitoredTable
from runbooks_sandbox import Sandbox, parse_size

SCRATCH = "bench_freshness"
BARS = "bench_bars"
LOOKBACK = timedelta(hours=6)
# Thresholds far above the bench's duration: every table stays fresh, so the runbook succeeds (exit 0) and dbt
# passes; what is timed is the measurement, not a verdict.
WARN, ERROR, KILL = "1d", "2d", "3d"
MAX_ARG = 120_000  # Linux refuses one argv string over 128 KiB: a longer query goes to psql as a file
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None  # apt-get install time


@dataclass
class Proc:
    seconds: float
    rss_mb: float
    stdout: str


@dataclass
class Sized:
    """Every run of every contender for one number of tables."""

    tables: int
    psql: list[Proc] = field(default_factory=list)
    flow: list[Proc] = field(default_factory=list)
    flow_step: list[float] = field(default_factory=list)  # the run's own "measure freshness" step
    dbt: list[Proc] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)  # UNION ALL on an open connection
    raw_connect: list[float] = field(default_factory=list)  # the same, connect included
    task: list[float] = field(default_factory=list)  # measure_freshness.fn


@dataclass
class GxRun:
    bars: int
    wall: float
    rss_mb: float
    import_s: float  # interpreter + our modules + GX imported
    validation_s: float  # validate_recent_window.fn, GX already imported
    window_rows: int
    seq_scanned_rows: int  # rows of the bars table read by sequential scans during the run


def run_process(argv: list[str], env: dict[str, str]) -> Proc:
    """A fresh process: wall seconds, its peak RSS, its stdout; fails loudly.

    The RSS comes from GNU time, a small parent: ``wait4`` from this process would report at least this process's
    own RSS (~90 MB with Prefect imported), because a child's ``ru_maxrss`` keeps the high-water mark of the memory
    it was forked with; ``psql`` would read 90 MB instead of 8.
    """
    with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:
        measured = Path(scratch) / "rss"
        wrapped = [GNU_TIME, "-f", "%M", "-o", str(measured), *argv] if GNU_TIME else argv
        started = time.perf_counter()
        proc = subprocess.Popen(wrapped, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        rss_kb = int(measured.read_text().split()[-1]) if GNU_TIME else usage.ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"{Path(argv[0]).name} exited with {proc.returncode}:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return Proc(wall, rss_kb / 1024, stdout)


def mid(values: list[float]) -> float:
    return float(median(values)) if values else float("nan")


def mid_proc(runs: list[Proc]) -> Proc:
    return sorted(runs, key=lambda p: p.seconds)[len(runs) // 2]


# -- the scratch database ----------------------------------------------------------------------------------------
def create_tables(dsn: str, count: int, rows: int) -> None:
    """``fq_0`` .. ``fq_{count-1}``: a timestamptz column, ``rows`` rows a minute apart ending now."""
    with psycopg.connect(dsn) as conn, conn.pipeline():
        for i in range(count):
            name = sql.Identifier(f"fq_{i}")
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, value float8 NOT NULL, "
                                 "loaded_at timestamptz NOT NULL)").format(name))
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, random(), now() - g * interval '1 minute' "
                                 "FROM generate_series(0, {}) g").format(name, sql.Literal(rows - 1)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def union_query(count: int) -> sql.Composed:
    """The raw contender: one statement, every table's newest row and age (what the freshness step reports)."""
    branches = [sql.SQL("SELECT {l},max(loaded_at),extract(epoch FROM now()-max(loaded_at))::float8 FROM {t}").format(
        l=sql.Literal(f"fq_{i}"), t=sql.Identifier("public", f"fq_{i}")) for i in range(count)]
    return sql.SQL(" UNION ALL ").join(branches)


def monitored(count: int) -> list[MonitoredTable]:
    return [MonitoredTable(database=SCRATCH, table=f"fq_{i}", loaded_at_field="loaded_at", gates_trading=False,
                           warn_after=WARN, error_after=ERROR, kill_after=KILL)  # type: ignore[arg-type]
            for i in range(count)]


def write_config(base: Path, path: Path, dsn: str, count: int) -> None:
    """The sandbox's config, its own ``[freshness]`` sections left out, plus the scratch database and its N
    monitored tables (only these are measured)."""
    kept, skipping = [], False
    for line in base.read_text().splitlines():
        header = line.strip()
        if header.startswith("["):
            skipping = header.lstrip("[").startswith("freshness")
        if not skipping:
            kept.append(line)
    lines = ["\n".join(kept), "", f"[databases.{SCRATCH}]", f"dsn = {json.dumps(dsn)}", "", "[freshness]",
             'lookback = "6h"', ""]
    for i in range(count):
        lines += ["[[freshness.tables]]", f'database = "{SCRATCH}"', f'table = "fq_{i}"',
                  'loaded_at_field = "loaded_at"', "gates_trading = false", f'warn_after = "{WARN}"',
                  f'error_after = "{ERROR}"', f'kill_after = "{KILL}"', ""]
    path.write_text("\n".join(lines))
    path.chmod(0o600)


def write_dbt_project(root: Path, params: dict[str, Any], count: int, threads: int) -> None:
    """A throwaway dbt project: one source with N tables, ``loaded_at_field`` and freshness as in our config.
    The password stays in the environment (``env_var``), not in the profile."""
    root.mkdir(parents=True)
    (root / "dbt_project.yml").write_text(
        "name: bench_freshness\nversion: '1.0'\nconfig-version: 2\nprofile: bench_freshness\n")
    (root / "profiles.yml").write_text(
        "bench_freshness:\n  target: bench\n  outputs:\n    bench:\n      type: postgres\n"
        f"      host: {params.get('host', '127.0.0.1')}\n      port: {int(params.get('port', 5432))}\n"
        f"      user: {params['user']}\n      password: \"{{{{ env_var('BENCH_DBT_PASSWORD') }}}}\"\n"
        f"      dbname: {SCRATCH}\n      schema: public\n      threads: {threads}\n")
    tables = "".join(f"      - name: fq_{i}\n" for i in range(count))
    (root / "models").mkdir()
    (root / "models" / "sources.yml").write_text(
        "version: 2\nsources:\n  - name: bench\n    schema: public\n    config:\n"
        "      loaded_at_field: loaded_at\n      freshness:\n"
        "        warn_after: {count: 1, period: day}\n        error_after: {count: 2, period: day}\n"
        f"    tables:\n{tables}")


# -- the GX half ------------------------------------------------------------------------------------------------
def fill_bars(dsn: str, symbols: int, per_symbol_from: int, per_symbol_to: int, anchor: datetime) -> None:
    """Bars ``per_symbol_from`` .. ``per_symbol_to - 1`` five-minute steps before ``anchor``, for every symbol,
    valid OHLC (low <= open, close <= high, volume > 0); two sessions in parallel (2 cores)."""
    insert = sql.SQL(
        'INSERT INTO {t} (symbol, "timestamp", open, high, low, close, volume) '
        "SELECT 'SYM' || lpad(s::text, 3, '0'), ts, o, greatest(o, c) + r * 3, least(o, c) - r * 3, c, "
        "(1000 + r * 50000)::bigint FROM (SELECT s, {anchor}::timestamptz - k * interval '5 min' AS ts, "
        "3900 + 100 * sin(k / 500.0) AS o, 3900 + 100 * sin(k / 500.0) + (r - 0.5) * 4 AS c, r "
        "FROM generate_series({s0}, {s1}) s, LATERAL (SELECT k, random() AS r FROM generate_series({k0}, {k1}) k) g"
        ") bars")

    def part(first: int, last: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = off")
            conn.execute(insert.format(t=sql.Identifier(BARS), anchor=sql.Literal(anchor), s0=first, s1=last,
                                       k0=per_symbol_from, k1=per_symbol_to - 1))

    half = symbols // 2
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(part, 0, half - 1), pool.submit(part, half, symbols - 1)]:
            future.result()


def build_bars(dsn: str, bars: int, symbols: int, have: int, anchor: datetime) -> int:
    """Grow the bars table to ``bars`` rows by adding older history (the recent window stays the same); the
    indexes are dropped and rebuilt around the bulk insert. Returns the rows per symbol now."""
    per_symbol = bars // symbols
    with psycopg.connect(dsn, autocommit=True) as conn:
        if have == 0:
            conn.execute(sql.SQL('CREATE TABLE {} (symbol text NOT NULL, "timestamp" timestamptz NOT NULL, '
                                 "open numeric(12,4) NOT NULL, high numeric(12,4) NOT NULL, low numeric(12,4) NOT NULL,"
                                 " close numeric(12,4) NOT NULL, volume bigint NOT NULL)").format(sql.Identifier(BARS)))
        else:
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS bench_bars_pkey").format(
                sql.Identifier(BARS)))
            conn.execute("DROP INDEX IF EXISTS bench_bars_timestamp")
    fill_bars(dsn, symbols, have, per_symbol, anchor)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute(sql.SQL('ALTER TABLE {} ADD CONSTRAINT bench_bars_pkey PRIMARY KEY (symbol, "timestamp")').format(
            sql.Identifier(BARS)))
        conn.execute(sql.SQL('CREATE INDEX bench_bars_timestamp ON {} ("timestamp")').format(sql.Identifier(BARS)))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(BARS)))
    return per_symbol


def bars_table() -> MonitoredTable:
    return MonitoredTable(database=SCRATCH, table=BARS, loaded_at_field="timestamp", group_by="symbol",
                          interval=timedelta(minutes=5), quality="ohlcv", gates_trading=False)


def gx_child() -> None:
    """``--gx-child``: one validation of the recent window, in a process of its own; one JSON line out."""
    started = time.perf_counter()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations  # noqa: F401 - imported here so the validation below is timed without it

    from runbooks.tasks.quality import validate_recent_window

    imported = time.perf_counter()
    result = validate_recent_window.fn(table=bars_table(), database=DatabaseSettings(dsn=os.environ["BENCH_GX_DSN"]),  # type: ignore[arg-type]
                                       lookback=LOOKBACK, timeout_seconds=600)
    done = time.perf_counter()
    print(json.dumps({"import_s": imported - started, "validation_s": done - imported, "status": result.status,
                      "detail": result.detail, "failures": [f.model_dump() for f in result.failures],
                      "window_rows": result.window_rows, "expectations": result.expectations}))


def seq_scanned(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables WHERE relname = %s",
                           [BARS]).fetchone()
    return int(row[0]) if row else 0


def run_gx(dsn: str, bars: int) -> GxRun:
    before = seq_scanned(dsn)
    env = {**os.environ, "BENCH_GX_DSN": dsn, "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    proc = run_process([sys.executable, "-m", "bench.freshness", "--gx-child"], env)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["status"] != "passed":
        raise SystemExit(f"the suite did not pass on {bars:,} bars: {out}")
    time.sleep(0.5)  # the child's backends flush their table statistics as they exit
    return GxRun(bars, proc.seconds, proc.rss_mb, out["import_s"], out["validation_s"], int(out["window_rows"] or 0),
                 seq_scanned(dsn) - before)


def window_reference(dsn: str) -> tuple[float, int]:
    """The raw read of the window: its rows through psycopg (seconds), and the buffers its plan touches."""
    from runbooks.tasks.quality import window_query

    query = window_query(bars_table(), lookback=LOOKBACK, as_of=None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            conn.execute(query).fetchall()
            times.append(time.perf_counter() - started)
        row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}").format(query)).fetchone()
    plan = row[0][0]["Plan"] if row else {}
    return mid(times), int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))


# -- main --------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", default="10,100,1000", help="numbers of monitored tables, comma-separated")
    parser.add_argument("--rows-per-table", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender; the median is reported")
    parser.add_argument("--dbt", type=Path, help="the dbt executable (dbt-core 1.11 + dbt-postgres); else skipped")
    parser.add_argument("--dbt-threads", type=int, default=4)
    parser.add_argument("--gx-sizes", default="1000000,10000000", help="bars in the table, comma-separated; "
                        "'' skips the quality half")
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--size", default="5MB", help="the sandbox's seeded trading_db (not measured here)")
    parser.add_argument("--dir", type=Path, help="reuse the sandbox running in this directory (kept)")
    parser.add_argument("--write", type=Path, help="append the results to this markdown file")
    parser.add_argument("--gx-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gx_child:
        gx_child()
        return
    counts = sorted(int(n) for n in args.tables.split(",") if n.strip())
    gx_sizes = sorted(int(n) for n in args.gx_sizes.split(",") if n.strip())
    dbt = str(args.dbt.resolve()) if args.dbt else None
    if dbt and not os.access(dbt, os.X_OK):
        raise SystemExit(f"--dbt {args.dbt} is not an executable")
    if not dbt:
        print("dbt: skipped (no --dbt). To include it, install it outside the repository:\n"
              '  python3 -m venv /tmp/dbt-venv && /tmp/dbt-venv/bin/pip install "dbt-core==1.11.*" '
              '"dbt-postgres==1.11.*"\nthen pass --dbt /tmp/dbt-venv/bin/dbt', flush=True)

    started = time.perf_counter()
    load_before = os.getloadavg()
    root = args.dir.resolve() if args.dir else Path(tempfile.mkdtemp(prefix="runbooks-bench-"))
    root.chmod(0o755)
    work = Path(tempfile.mkdtemp(prefix="runbooks-bench-freshness-"))
    box = Sandbox(root)
    admin = ""
    try:
        print(f"== sandbox ({args.size}) in {root}", flush=True)
        state = box.up(redis=False, pm2=False, size_mb=parse_size(args.size), s3=False, simulator=False, prefect=True,
                       progress=lambda m: print("  " + m, flush=True))
        admin = state.cluster().dsn("postgres")
        dsn = state.cluster().dsn(SCRATCH)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SCRATCH)))
        print(f"== {max(counts)} tables of {args.rows_per_table} rows in {SCRATCH!r}", flush=True)
        create_tables(dsn, max(counts), args.rows_per_table)
        sized = measure_freshness_sizes(args, counts, dsn, Path(state.config_path), state.prefect_api_url, dbt, work)
        gx_runs: list[GxRun] = []
        references: dict[int, tuple[float, int]] = {}
        have, anchor = 0, datetime.now(UTC).replace(second=0, microsecond=0)
        anchor -= timedelta(minutes=anchor.minute % 5)
        for bars in gx_sizes:
            print(f"== bars table: {bars:,} rows ({args.symbols} symbols)", flush=True)
            t0 = time.perf_counter()
            have = build_bars(dsn, bars, args.symbols, have, anchor)
            print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
            references[bars] = window_reference(dsn)
            run_gx(dsn, bars)  # untimed: page cache and .pyc warm for every size alike
            for round_ in range(args.repeat):
                gx_runs.append(run_gx(dsn, bars))
                g = gx_runs[-1]
                print(f"  run {round_ + 1}/{args.repeat}: process {g.wall:.2f} s ({g.rss_mb:.0f} MB), import "
                      f"{g.import_s:.2f} s, validation {g.validation_s:.2f} s on {g.window_rows} rows, "
                      f"{g.seq_scanned_rows} rows seq-scanned", flush=True)
        versions = tool_versions(dbt)
    finally:
        if admin:
            try:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH)))
            except psycopg.Error as exc:
                print(f"could not drop {SCRATCH!r}: {exc}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        if not args.dir:
            box.down()
    report = render(args, sized, gx_runs, references, versions, load_before, os.getloadavg(),
                    time.perf_counter() - started, dbt is not None)
    print(report)
    if args.write:
        with open(args.write, "a") as handle:
            handle.write("\n" + report)


def measure_freshness_sizes(args: argparse.Namespace, counts: list[int], dsn: str, base_config: Path,
                            prefect_api_url: str | None, dbt: str | None, work: Path) -> list[Sized]:
    from runbooks.tasks.freshness import measure_freshness

    params = psycopg.conninfo.conninfo_to_dict(dsn)
    database = DatabaseSettings(dsn=dsn)  # type: ignore[arg-type]
    psql_env = libpq_env(params)
    dbt_env = {**os.environ, "BENCH_DBT_PASSWORD": str(params.get("password") or ""),
               "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1"}
    plans: list[tuple[Sized, dict[str, Callable[[], None]]]] = []
    for count in counts:
        s = Sized(count)
        config = work / f"runbooks-{count}.toml"
        write_config(base_config, config, dsn, count)
        env = flow_env(str(config), prefect_api_url)
        query = union_query(count).as_string(None)
        query_file = work / f"union-{count}.sql"
        query_file.write_text(query + ";\n")
        psql = [pg_tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        psql += ["-c", query] if len(query.encode()) < MAX_ARG else ["-f", str(query_file)]
        project = work / f"dbt-{count}"
        if dbt:
            write_dbt_project(project, params, count, args.dbt_threads)
        tables = monitored(count)
        settings = FreshnessSettings(tables=tables)
        composed = union_query(count)

        def run_psql(s: Sized = s, argv: list[str] = psql) -> None:
            proc = run_process(argv, psql_env)
            assert len(proc.stdout.splitlines()) == s.tables, proc.stdout[-500:]
            s.psql.append(proc)

        def run_flow(s: Sized = s, env: dict[str, str] = env) -> None:
            # bench.measure.run_runbook's argv, under GNU time for a true peak RSS (see run_process)
            proc = run_process([sys.executable, "-m", "runbooks.cli", "run", "data-freshness", "--json",
                                "--param", "quality=false"], env)
            result = json.loads(proc.stdout)
            assert [t["outcome"] for t in result["tables"]] == ["measured"] * s.tables, result.get("error")
            s.flow.append(proc)
            s.flow_step.append(next(t["seconds"] for t in result["timeline"] if t["step"] == "measure freshness"))

        def run_dbt(s: Sized = s, project: Path = project) -> None:
            assert dbt is not None
            proc = run_process([dbt, "--no-use-colors", "source", "freshness", "--profiles-dir", str(project),
                                "--project-dir", str(project)], {**dbt_env, "DBT_LOG_PATH": str(project / "logs")})
            results = json.loads((project / "target" / "sources.json").read_text())["results"]
            assert len(results) == s.tables and {r["status"] for r in results} == {"pass"}, proc.stdout[-500:]
            s.dbt.append(proc)

        def run_internal(s: Sized = s, composed: sql.Composed = composed, tables: list[MonitoredTable] = tables,
                         settings: FreshnessSettings = settings) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT 1")
                for _ in range(3):  # cheap: three of each per round, interleaved
                    t0 = time.perf_counter()
                    rows = conn.execute(composed).fetchall()
                    s.raw.append(time.perf_counter() - t0)
                    assert len(rows) == s.tables
                    t0 = time.perf_counter()
                    with psycopg.connect(dsn, autocommit=True) as fresh:
                        fresh.execute(composed).fetchall()
                    s.raw_connect.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    measured, _ = measure_freshness.fn(database_name=SCRATCH, database=database, tables=tables,
                                                       settings=settings)
                    s.task.append(time.perf_counter() - t0)
                    assert [m.outcome for m in measured] == ["measured"] * s.tables, measured[:3]

        steps: dict[str, Callable[[], None]] = {"psql": run_psql, "flow": run_flow, "internal": run_internal}
        if dbt:
            steps["dbt"] = run_dbt
        plans.append((s, steps))

    for round_ in range(args.repeat + 1):  # round 0 is a warm-up: page cache, .pyc, dbt's partial parse
        label = "warm-up" if round_ == 0 else f"round {round_}/{args.repeat}"
        for s, steps in plans:
            for step in steps.values():
                step()
            if round_ == 0:
                for runs in (s.psql, s.flow, s.dbt, s.flow_step, s.raw, s.raw_connect, s.task):
                    runs.clear()
                print(f"  {label}: {s.tables} tables", flush=True)
                continue
            print(f"  {label}: {s.tables} tables: psql {s.psql[-1].seconds:.2f} s, flow process "
                  f"{s.flow[-1].seconds:.2f} s (step {s.flow_step[-1]:.3f} s)"
                  + (f", dbt {s.dbt[-1].seconds:.2f} s" if s.dbt else "")
                  + f"; internal raw {mid(s.raw[-3:]) * 1000:.1f} ms, task {mid(s.task[-3:]) * 1000:.1f} ms",
                  flush=True)
    return [s for s, _ in plans]


def tool_versions(dbt: str | None) -> dict[str, str]:
    import great_expectations
    import prefect

    psql = subprocess.run([pg_tool("psql"), "--version"], capture_output=True, text=True).stdout.strip()
    versions = {"python": platform.python_version(), "prefect": prefect.__version__,
                "gx": great_expectations.__version__, "psycopg": psycopg.__version__, "psql": psql}
    if dbt:
        out = subprocess.run([dbt, "--version"], capture_output=True, text=True,
                             env={**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}).stdout
        core = next((line.split(":")[-1].strip() for line in out.splitlines() if "installed" in line), "?")
        adapter = next((line.split(":")[-1].strip().split()[0] for line in out.splitlines() if "postgres" in line),
                       "?")
        versions["dbt"] = f"dbt-core {core}, dbt-postgres {adapter}"
    return versions


def render(args: argparse.Namespace, sized: list[Sized], gx_runs: list[GxRun],
           references: dict[int, tuple[float, int]], versions: dict[str, str], load_before: tuple[float, ...],
           load_after: tuple[float, ...], total_s: float, with_dbt: bool) -> str:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"

    lines = [f"### Freshness benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
             f"{platform.node()}: {os.cpu_count()} cores, Python {versions['python']}, Prefect {versions['prefect']}, "
             f"GX {versions['gx']}, psycopg {versions['psycopg']}, {versions['psql']}"
             + (f", {versions['dbt']} ({args.dbt_threads} threads)" if with_dbt else ", dbt skipped (no --dbt)")
             + f". Load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; the whole benchmark took "
             f"{total_s / 60:.1f} min.", "",
             f"Medians of {args.repeat} interleaved rounds after one warm-up round (flow-internal: of "
             f"{3 * args.repeat} runs). Each table has {args.rows_per_table} rows. `process` is a fresh process, "
             "what an operator waits for: `runbooks run data-freshness --param quality=false` (with the sandbox's "
             "Prefect server, config listing the N tables), `psql` running one `UNION ALL` query, `dbt source "
             "freshness`; peak RSS is the process's own (GNU time's `%M`).", "",
             "| tables | `psql` UNION ALL | `runbooks run data-freshness` | vs psql | `dbt source freshness` | vs psql "
             "| flow vs dbt | peak RSS psql / flow / dbt |",
             "|---|---|---|---|---|---|---|---|"]
    for s in sized:
        psql, flow = mid_proc(s.psql), mid_proc(s.flow)
        dbt = mid_proc(s.dbt) if s.dbt else None
        lines.append(
            f"| {s.tables:,} | {psql.seconds:.2f} s | {flow.seconds:.2f} s | {flow.seconds / psql.seconds:.1f}x | "
            + (f"{dbt.seconds:.2f} s | {dbt.seconds / psql.seconds:.1f}x | {flow.seconds / dbt.seconds:.2f}x "
               if dbt else "- | - | - ")
            + f"| {max(p.rss_mb for p in s.psql):.0f} / {max(p.rss_mb for p in s.flow):.0f} / "
            + (f"{max(p.rss_mb for p in s.dbt):.0f} MB |" if dbt else "- MB |"))
    lines += ["", "Flow-internal, in one process: the raw query is the same `UNION ALL` through psycopg on an open "
              "connection (`+ connect`: opening one first, as the task does); `measure_freshness.fn` connects "
              "(read-only session, statement timeout) and sends one statement per table in one pipeline. "
              "`flow's step` is the `measure freshness` step in the timeline of the whole-process runs (task run "
              "overhead included).", "",
              "| tables | raw UNION ALL | raw + connect | `measure_freshness.fn` | vs raw | vs raw + connect "
              "| flow's step | dbt process / task |",
              "|---|---|---|---|---|---|---|---|"]
    for s in sized:
        raw, raw_c, task = mid(s.raw), mid(s.raw_connect), mid(s.task)
        dbt_ratio = f"{mid_proc(s.dbt).seconds / task:.0f}x" if s.dbt else "-"
        lines.append(f"| {s.tables:,} | {ms(raw)} | {ms(raw_c)} | {ms(task)} | {task / raw:.2f}x | "
                     f"{task / raw_c:.2f}x | {ms(mid(s.flow_step))} | {dbt_ratio} |")
    if gx_runs:
        lines += ["", f"Quality: the ohlcv suite (`validate_recent_window.fn`, lookback {LOOKBACK}) over a bars table "
                  f"of {args.symbols} symbols x 5-minute bars ending now; the larger table adds older history only. "
                  "One fresh process per run (`python -m bench.freshness --gx-child`). `import` is interpreter + "
                  "our modules + `import great_expectations`; `validation` the task after that; `seq-scanned rows` "
                  "the bars table's `seq_tup_read` during the run (0: only index scans); `window query` the raw "
                  "read of the window (`SELECT *` of its rows through psycopg), with the buffers its plan touched.", "",
                  "| bars | window rows | process | import | validation | peak RSS | seq-scanned rows "
                  "| window query (buffers) |",
                  "|---|---|---|---|---|---|---|---|"]
        by_size: dict[int, list[GxRun]] = {}
        for g in gx_runs:
            by_size.setdefault(g.bars, []).append(g)
        for bars, runs in by_size.items():
            ref_s, buffers = references[bars]
            lines.append(f"| {bars:,} | {runs[0].window_rows:,} | {mid([r.wall for r in runs]):.2f} s | "
                         f"{mid([r.import_s for r in runs]):.2f} s | {mid([r.validation_s for r in runs]):.2f} s | "
                         f"{max(r.rss_mb for r in runs):.0f} MB | {max(r.seq_scanned_rows for r in runs):,} | "
                         f"{ms(ref_s)} ({buffers:,}) |")
        if len(by_size) > 1:
            small, large = min(by_size), max(by_size)
            a, b = by_size[small], by_size[large]
            lines.append(f"| **{large // small}x rows** | | {mid([r.wall for r in b]) / mid([r.wall for r in a]):.2f}x "
                         f"| | **{mid([r.validation_s for r in b]) / mid([r.validation_s for r in a]):.2f}x** | "
                         f"**{max(r.rss_mb for r in b) / max(r.rss_mb for r in a):.2f}x** | | "
                         f"{references[large][0] / references[small][0]:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
