"""The sandbox's market-data feed: a child process of the sandbox that writes, every interval, the bars missing up to
now for each symbol whose market is open (24/7 symbols always), so the platform's data stays fresh while the
sandbox runs and goes quiet, as the real feed does, while a market is closed.

A file ``stopped`` in its control directory is a dead feed on demand (the simulator's ``/_control/feed`` and
``Sandbox.feed`` write it): the feeder keeps ticking but writes nothing. After each tick it records what it did in
``status.json`` there (ticks, whether it wrote, each market's state), which tests wait on instead of the clock.

Run by the sandbox as ``python -m runbooks_sandbox.feeder --control-dir DIR --interval SECONDS``; the plan (the
markets) is ``DIR/plan.json`` and the database DSN comes from ``FEEDER_DSN`` in the environment, never from the
command line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from runbooks.settings.markets import MarketSettings
from runbooks_sandbox.seed import feed_bars

STOPPED = "stopped"
STATUS = "status.json"
PLAN = "plan.json"

_MARKETS = TypeAdapter(dict[str, MarketSettings])


class FeedStatus(BaseModel):
    """What the feeder did at its last tick."""

    pid: int
    ticks: int
    running: bool
    at: datetime
    interval_seconds: float
    written: dict[str, int] = {}
    written_total: int = 0
    markets: dict[str, dict[str, Any]] = {}
    error: str | None = None


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a file only its owner reads (a reader never sees half a status)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)
        out.write(text)
    os.replace(temp, path)


def write_plan(control_dir: Path, markets: dict[str, MarketSettings]) -> None:
    control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(control_dir / PLAN, _MARKETS.dump_json(markets, indent=2).decode())


def read_plan(control_dir: Path) -> dict[str, MarketSettings]:
    return _MARKETS.validate_json((control_dir / PLAN).read_text())


def set_running(control_dir: Path, running: bool) -> None:
    """Stop (a dead feed) or resume the feeder of ``control_dir``."""
    flag = control_dir / STOPPED
    if running:
        flag.unlink(missing_ok=True)
    else:
        control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(flag, f"stopped at {datetime.now(UTC).isoformat()}\n")


def is_running(control_dir: Path) -> bool:
    return not (control_dir / STOPPED).exists()


def read_status(control_dir: Path) -> FeedStatus | None:
    try:
        return FeedStatus.model_validate_json((control_dir / STATUS).read_text())
    except (OSError, ValueError):
        return None


def tick(dsn: str, markets: dict[str, MarketSettings], control_dir: Path, *, ticks: int, interval: float,
         total: int) -> FeedStatus:
    """One interval: write the missing bars unless the feed is stopped, and record what happened."""
    at = datetime.now(UTC)
    running = is_running(control_dir)
    written: dict[str, int] = {}
    error = None
    if running:
        try:
            written = feed_bars(dsn, markets, at=at)
        except Exception as exc:  # noqa: BLE001 - a database restart must not end the feed; the next tick retries
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            print(f"{at.isoformat()} feed tick failed: {error}", file=sys.stderr, flush=True)
    states = {name: market.calendar(name).status(at).as_dict() for name, market in sorted(markets.items())}
    status = FeedStatus(pid=os.getpid(), ticks=ticks, running=running, at=at, interval_seconds=interval,
                        written=written, written_total=total + sum(written.values()), markets=states, error=error)
    write_private(control_dir / STATUS, status.model_dump_json(indent=2))
    if sum(written.values()):
        print(f"{at.isoformat()} wrote {json.dumps(written)}", flush=True)
    return status


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--control-dir", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=300.0, help="seconds between ticks")
    args = parser.parse_args(argv)
    dsn = os.environ.get("FEEDER_DSN")  # from the environment: never on a command line
    if not dsn:
        raise SystemExit("FEEDER_DSN must be set")
    markets = read_plan(args.control_dir)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"feeder: markets {', '.join(markets) or 'none'}, every {args.interval:g} s", flush=True)
    ticks = total = 0
    while not done.is_set():
        ticks += 1
        total = tick(dsn, markets, args.control_dir, ticks=ticks, interval=args.interval, total=total).written_total
        done.wait(args.interval)
    print("feeder: stopped", flush=True)


if __name__ == "__main__":
    main()
