"""Benchmark: how long an emergency stop takes to land, against the kill switches pressed by hand.

    .venv/bin/python -m bench.emergency_stop [--repeat 5] [--dir DIR] [--write docs/benchmarks.md]

Against the sandbox's simulator and its ``trading_db``, round by round (the platform reset before each):

- the API switch: ``curl -X POST .../operations/kill-switch`` followed by ``curl .../operations/status`` (the seed's
  press, and the read-back the runbook adds), against ``runbooks run emergency-stop`` as a whole process (what an
  operator waits for, with its peak RSS) and its own "kill switch: api" step (flow-internal);
- the database switch, with the API's kill switch failing (503): ``psql -c "UPDATE system_config ..."`` against the
  runbook's failed API attempt plus its "kill switch: database" step, and the whole process.

``--dir DIR`` reuses (and keeps) a sandbox already running there.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.measure import flow_env, run_runbook, timed_shell
from runbooks.adapters.postgres import libpq_env, pg_tool
from runbooks_sandbox import Sandbox
from runbooks_sandbox.environment import DATABASE

KILL = "/api/v1/operations/kill-switch"


def mid(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--dir", type=Path, help="reuse the sandbox running in this directory (kept)")
    args = parser.parse_args()
    root = args.dir.resolve() if args.dir else Path(tempfile.mkdtemp(prefix="runbooks-bench-"))
    root.chmod(0o755)
    box = Sandbox(root)
    raw_api: list[float] = []
    raw_db: list[float] = []
    api_runs: list[tuple[float, float, dict[str, Any]]] = []
    db_runs: list[tuple[float, float, dict[str, Any]]] = []
    try:
        print("== starting the sandbox", flush=True)
        state = box.up(
            redis=False, pm2=False, size_mb=1, s3=False, feeder=False, progress=lambda m: print("  " + m, flush=True))
        env = flow_env(state.config_path, state.prefect_api_url, RUNBOOKS_TRADING_SAFETY__API_BUDGET_SECONDS="3")
        sim = httpx.Client(base_url=state.simulator_url or "",
                           headers={"Authorization": f"Bearer {state.simulator_token}"}, timeout=30)
        token_header = f"Authorization: Bearer {state.simulator_token}"
        curl = (f"curl -fsS -o /dev/null -X POST -H {shlex.quote(token_header)} -H 'Content-Type: application/json' "
                f"-d '{{\"reason\":\"bench\",\"activated_by\":\"oncall\"}}' {state.simulator_url}{KILL} && "
                f"curl -fsS -o /dev/null -H {shlex.quote(token_header)} "
                f"{state.simulator_url}/api/v1/operations/status")
        dsn = state.cluster().dsn(DATABASE)
        psql = (f"{shlex.quote(pg_tool('psql'))} -qAt -c \"UPDATE system_config SET value = 'halt' WHERE key = "
                "'trading_mode'\"")
        db_env = {**env, **libpq_env(psycopg.conninfo.conninfo_to_dict(dsn))}

        def reset(fail_api: bool = False) -> None:
            sim.post("/_control/reset").raise_for_status()  # also puts the row back to live
            if fail_api:
                sim.post("/_control/failures", json={"path_prefix": KILL, "status": 503, "count": 1000}
                         ).raise_for_status()
            time.sleep(0.5)

        for round_ in range(args.repeat):  # interleaved: drift on this noisy machine hits every contender alike
            print(f"  round {round_ + 1}/{args.repeat}", flush=True)
            reset()
            raw_api.append(timed_shell(curl, env))
            reset()
            api_runs.append(run_runbook("emergency-stop", ["reason=bench"], env))
            reset()
            raw_db.append(timed_shell(psql, db_env))
            reset(fail_api=True)
            db_runs.append(run_runbook("emergency-stop", ["reason=bench, API failing"], env))
            print(f"    api: curl {raw_api[-1]:.2f} s, runbook {api_runs[-1][0]:.2f} s; database: psql "
                  f"{raw_db[-1]:.2f} s, runbook {db_runs[-1][0]:.2f} s", flush=True)
        reset()
    finally:
        if not args.dir:
            box.down()

    def step(run: tuple[float, float, dict[str, Any]], name: str) -> float:
        return float(next(s["seconds"] for s in run[2]["timeline"] if s["step"] == name))

    api_wall = mid([r[0] for r in api_runs])
    api_step = mid([step(r, "kill switch: api") for r in api_runs])
    db_wall = mid([r[0] for r in db_runs])
    db_step = mid([step(r, "kill switch: database") for r in db_runs])
    db_fallthrough = mid([step(r, "kill switch: api") + step(r, "kill switch: database") for r in db_runs])
    rss = max(r[1] for r in api_runs + db_runs)
    ra, rd = mid(raw_api), mid(raw_db)
    report = "\n".join([
        f"### Emergency-stop benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
        f"{platform.node()}: the sandbox's simulator and trading_db, medians of {args.repeat} interleaved rounds; "
        "the API's budget 3 s (the default is 10 s).", "",
        "| contender | seconds | vs raw | peak RSS |", "|---|---|---|---|",
        f"| raw: `curl` POST kill-switch + GET status (whole process) | {ra:.2f} | 1.00x | - |",
        f"| **`runbooks run emergency-stop`, whole process** (what an operator waits for) | {api_wall:.2f} | "
        f"{api_wall / ra:.1f}x | {rss:.0f} MB |",
        f"| flow-internal: its `kill switch: api` step (press + read back) | {api_step:.2f} | {api_step / ra:.1f}x "
        "| |",
        f"| raw: `psql -c \"UPDATE system_config ...\"` (whole process) | {rd:.2f} | 1.00x | - |",
        f"| **the API failing (503): whole process to a halt by the database** | {db_wall:.2f} | {db_wall / rd:.1f}x "
        "| |",
        f"| flow-internal: the failed API attempt + the database step | {db_fallthrough:.2f} | "
        f"{db_fallthrough / rd:.1f}x | |",
        f"| flow-internal: the `kill switch: database` step alone (UPDATE + read back + the API reading halted) | "
        f"{db_step:.2f} | {db_step / rd:.1f}x | |",
        "", f"Raw rounds: curl {', '.join(f'{r:.2f}' for r in raw_api)} s, psql "
        f"{', '.join(f'{r:.2f}' for r in raw_db)} s; runbook processes {', '.join(f'{r[0]:.1f}' for r in api_runs)} "
        f"s (API), {', '.join(f'{r[0]:.1f}' for r in db_runs)} s (database).", ""])
    print(report)
    if args.write:
        with open(args.write, "a") as out:
            out.write(report + "\n")


if __name__ == "__main__":
    main()
