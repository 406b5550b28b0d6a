"""A real ``prefect server start`` (with its services: scheduler, triggers, actions) on loopback, for what the test
harness's ephemeral server does not run: automations, deployment triggers, schedules, workers and the UI."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group of ``process`` (started with ``start_new_session``), SIGKILL after 20 s; then
    SIGKILL to whatever is left in the group (children that outlived their parent)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@contextmanager
def prefect_server(timeout: float = 90, *, database_url: str | None = None, ui: bool = False,
                   settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """Start a server with a private home; yields its API URL (``http://127.0.0.1:PORT/api``); stops and removes it.

    Args:
        database_url: the server's database, e.g. ``postgresql+asyncpg://user:pw@127.0.0.1:5432/prefect`` (the
            production topology; Prefect migrates it on start). Default: SQLite in the private home.
        ui: serve the UI at ``http://127.0.0.1:PORT/``, calling this server's API.
        settings: more ``PREFECT_*`` settings for the server process.
    """
    home = Path(tempfile.mkdtemp(prefix="runbooks-prefect-server-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_API_DATABASE_CONNECTION_URL=database_url or f"sqlite+aiosqlite:///{home}/prefect.db",
               PREFECT_UI_ENABLED="true" if ui else "false")
    if ui:
        # What the browser is told to call; without it the UI derives the URL from host and port settings.
        env.update(PREFECT_UI_API_URL=url, PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false")
    env.update(settings or {})
    prefect = Path(sys.executable).with_name("prefect")
    log_path = home / "server.log"
    log = log_path.open("wb")
    process = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    except BaseException:
        # Shown by pytest with the failure: what the server said while the test ran.
        print(f"--- prefect server log (tail) ---\n{log_path.read_text(errors='replace')[-6000:]}")
        raise
    finally:
        stop_process_group(process)
        log.close()
        shutil.rmtree(home, ignore_errors=True)
