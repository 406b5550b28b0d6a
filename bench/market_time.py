"""Benchmark: the market-time calls the runbooks make, against the wall-clock arithmetic they replace.

    .venv/bin/python -m bench.market_time [--repeat 5]

Flow-internal only (a data-freshness run calls ``open_time_between`` once per monitored group, ``status`` once
per market): USD/COP's calendar (08:00-13:00 America/Bogota, Colombian holidays) over a fresh bar (5 minutes), a
weekend (Friday's last bar on Monday) and a year, beside ``now - newest`` on the same instants; then
``runbooks markets --json`` as a whole process, beside ``python -c 'import holidays'`` (what an operator waits for,
and the floor a Python process with the calendar library pays).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from runbooks.settings.markets import seed_markets

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)  # Monday 10:00 COT, in session


def per_call(fn: Callable[[], object], calls: int, repeat: int) -> float:
    """Median microseconds per call over ``repeat`` rounds of ``calls`` calls."""
    fn()  # caches warmed: the holidays of the years involved
    rounds = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return sorted(rounds)[repeat // 2]


def whole_process(argv: list[str], repeat: int) -> float:
    rounds = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        rounds.append(time.perf_counter() - started)
    return sorted(rounds)[repeat // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    calendar = seed_markets()["usd_cop"].calendar("usd_cop")
    print("| span | wall clock (µs) | open-market time (µs) | ratio |")
    print("|---|---|---|---|")
    for label, span, calls in (("5 minutes", timedelta(minutes=5), 2000), ("a weekend", timedelta(days=3), 2000),
                               ("a year", timedelta(days=365), 50)):
        start = NOW - span
        wall = per_call(lambda start=start: NOW - start, calls, args.repeat)  # type: ignore[misc]
        market = per_call(lambda start=start: calendar.open_time_between(start, NOW), calls,  # type: ignore[misc]
                          args.repeat)
        print(f"| {label} | {wall:.2f} | {market:.1f} | {market / wall:.0f}x |")
    status = per_call(lambda: calendar.status(NOW), 2000, args.repeat)
    print(f"\n`status` (open or closed, why, previous close, next open): {status:.1f} µs per call")
    floor = whole_process([sys.executable, "-c", "import holidays"], args.repeat)
    cli = whole_process([sys.executable, "-m", "runbooks.cli", "markets", "--json"], args.repeat)
    print(f"\nwhole process: `runbooks markets --json` {cli:.2f} s, `python -c 'import holidays'` {floor:.2f} s "
          f"({cli / floor:.1f}x)")


if __name__ == "__main__":
    main()
