"""What every benchmark here shares: timing shell commands, medians, and running a runbook as an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def timed_shell(command: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, check=True)
    return time.perf_counter() - started


def shell_median(command: str, env: dict[str, str], repeat: int, before: Callable[[], None] | None = None) -> float:
    """Median seconds of ``command`` over ``repeat`` runs (``before`` runs untimed before each)."""
    times = []
    for _ in range(repeat):
        if before:
            before()
        times.append(timed_shell(command, env))
    return sorted(times)[repeat // 2]


def median_of(repeat: int, measure: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    """Median over ``repeat`` runs of ``measure() -> (seconds, *extra)``; this machine's timings are noisy."""
    runs = sorted((measure() for _ in range(repeat)), key=lambda r: r[0])
    return runs[len(runs) // 2]


def run_runbook(runbook: str, params: list[str], env: dict[str, str]) -> tuple[float, float, dict[str, Any]]:
    """``runbooks run RUNBOOK --json`` in a subprocess: wall seconds, peak RSS (MB), the result model."""
    argv = [sys.executable, "-m", "runbooks.cli", "run", runbook, "--json"]
    for param in params:
        argv += ["--param", param]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{runbook} failed: {stdout.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, json.loads(stdout)


def flow_env(config_path: str, prefect_api_url: str | None, **extra: str) -> dict[str, str]:
    return {**os.environ, "RUNBOOKS_CONFIG": config_path, "PREFECT_API_URL": prefect_api_url or "",
            "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}
