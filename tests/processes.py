"""Finding and signalling the processes a run started (for fault-injection tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def children_named(parent: int, name: str) -> list[int]:
    """Descendant pids of ``parent`` whose executable is ``name``."""
    tree: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        pid = int(entry.name)
        tree.setdefault(ppid, []).append(pid)
        names[pid] = comm
    found, stack = [], list(tree.get(parent, []))
    while stack:
        pid = stack.pop()
        if names.get(pid) == name:
            found.append(pid)
        stack.extend(tree.get(pid, []))
    return found


def wait_for(predicate: Callable[[], object], *, timeout: float = 60, interval: float = 0.002) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def freeze_when(pid: int, ready: Callable[[], bool], *, timeout: float = 60) -> None:
    """Let ``pid`` run in short slices until ``ready()``, then leave it stopped: a deterministic 'midway'."""
    deadline = time.monotonic() + timeout
    os.kill(pid, signal.SIGSTOP)
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError("process never reached the wanted point")
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
        os.kill(pid, signal.SIGSTOP)


def kill_run_at(argv: list[str], env: dict[str, str], child: str, *, timeout: float = 120) -> None:
    """Start ``argv`` (a ``runbooks`` command) in its own session, wait until it runs ``child`` (e.g. pg_restore),
    then SIGKILL the whole group, as an OOM kill would: no cleanup runs."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        pids = wait_for(lambda: children_named(proc.pid, child), timeout=timeout)
        # pg_restore -j N forks its workers: under load they may already be there; the parent is the oldest.
        freeze_when(min(pids), lambda: True)  # type: ignore[call-overload]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
