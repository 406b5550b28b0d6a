"""Starting ``runbooks`` in processes of their own (the operator's command line, a sandbox), finding and signalling
the processes a run started (for fault-injection tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.disks import traversable_dir

ROOT = Path(__file__).resolve().parent.parent


def cli(env: dict[str, str], *args: str, cwd: Path | str | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runbooks.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def bare_env(**extra: str) -> dict[str, str]:
    """The test process's environment without RUNBOOKS_* and with the checkout importable from any directory."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RUNBOOKS_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr, which must be one line (no traceback, no wrapping) starting with 'error:'."""
    text = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "\n" not in text, proc.stderr
    assert text.startswith("error: "), proc.stderr
    return text


@contextmanager
def sandbox_up(env: dict[str, str], prefix: str) -> Iterator[tuple[Path, Path, subprocess.CompletedProcess[str]]]:
    """``runbooks sandbox up --size 1MB`` (which must succeed) into ``sb`` of a traversable directory of its own,
    run from that directory: the directory, the sandbox's and the command's result. After the block, ``sandbox
    down`` (harmless if the test already took it down) and the directory removed."""
    with traversable_dir(prefix) as parent:
        box = parent / "sb"
        try:
            up = cli(env, "sandbox", "up", "--size", "1MB", "--dir", str(box), cwd=parent, timeout=300)
            assert up.returncode == 0, up.stderr[-3000:]
            yield parent, box, up
        finally:
            cli(env, "sandbox", "down", "--dir", str(box), cwd=parent, timeout=120)


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
    finally:
        kill_group(proc)


def runbooks_command(*args: str, before: str = "") -> list[str]:
    """The argv of ``runbooks ARGS`` in a new Python process that first runs ``before``: Python source changing one
    thing in that process (a task's retry delays, a point where it stops itself) before the CLI starts."""
    main = "import sys\nfrom runbooks.cli import main\nsys.argv = ['runbooks', *sys.argv[1:]]\nmain()\n"
    return [sys.executable, "-c", f"{before}\n{main}", *args]


def stopping_before(target: str) -> str:
    """Source for ``runbooks_command(before=...)``: the process stops itself (SIGSTOP) the first time it calls
    ``target`` (``module:function``, looked up in that module at call time), before the call, and goes on into it
    when it gets SIGCONT. A freeze at an exact point: sending SIGSTOP when the test sees a sign of that point from
    outside races with the run, which may be past it, or finished, when the signal lands."""
    module, _, name = target.partition(":")
    return f"""
import functools, importlib, os, signal
_module = importlib.import_module({module!r})
_real = getattr(_module, {name!r})
_reached = []


@functools.wraps(_real)
def _stop_before_first_call(*args, **kwargs):
    if not _reached:
        _reached.append(True)
        os.kill(os.getpid(), signal.SIGSTOP)
    return _real(*args, **kwargs)


setattr(_module, {name!r}, _stop_before_first_call)
"""


def start_run(runbook: str, *params: str, prefect_api: str, as_json: bool = False,
              before: str = "") -> subprocess.Popen[bytes]:
    """``runbooks run RUNBOOK --param PARAM…`` against the tests' Prefect API, in its own session and process group
    (so one SIGKILL takes its children too). ``as_json``: ``--json``, its result on a pipe (``proc.communicate``);
    ``before``: see ``runbooks_command``."""
    args = ["run", runbook, *(["--json"] if as_json else [])]
    for param in params:
        args += ["--param", param]
    return subprocess.Popen(runbooks_command(*args, before=before), env={**os.environ, "PREFECT_API_URL": prefect_api},
                            stdout=subprocess.PIPE if as_json else subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the run and everything it started: no finally block, no atexit, no cleanup of any kind."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def is_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped by a signal (state ``T`` in ``/proc/PID/stat``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] in ("T", "t")
