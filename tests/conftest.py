"""Session fixtures: one real sandbox (PostgreSQL cluster, moto S3 over HTTP, simulator over HTTP) and Prefect's
test harness, started once and removed at the end."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before Prefect is imported anywhere: no telemetry, no ~/.prefect.
_PREFECT_HOME = tempfile.mkdtemp(prefix="runbooks-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
# Restore work dirs, not ~/.local; not under /tmp either: the seed cleanup rule walks /tmp, and a cleanup root that
# holds the runbooks' state directory is refused at settings load.
_STATE_PARENT = Path(__file__).resolve().parents[1] / ".pytest_cache" / "state"
_STATE_PARENT.mkdir(parents=True, exist_ok=True)
_STATE_PARENT.parent.chmod(0o755)  # as root, the postgres OS user enters the drills' clusters under it
_STATE_PARENT.chmod(0o755)
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="runbooks-state-", dir=_STATE_PARENT)
Path(os.environ["XDG_STATE_HOME"]).chmod(0o755)
# Removed when the session's process ends (after Prefect's last write), so no session leaves them in /tmp.
for _made in (_PREFECT_HOME, os.environ["XDG_STATE_HOME"]):
    atexit.register(shutil.rmtree, _made, ignore_errors=True)
os.environ.pop("PREFECT_API_URL", None)
for _name in [k for k in os.environ if k.startswith("RUNBOOKS_") and k != "RUNBOOKS_REQUIRE_DOCKER"]:
    os.environ.pop(_name)
# The health check averages CPU over a window (30 s by default), and the drill and the pre-open check run it too:
# a 1 s window in this process and its children (the sandbox's config says the same for those that drop RUNBOOKS_*).
os.environ["RUNBOOKS_HEALTH__CPU_WINDOW_SECONDS"] = "1"

import boto3  # noqa: E402
import httpx  # noqa: E402
import psycopg  # noqa: E402
import pytest  # noqa: E402

from runbooks.settings.markets import MarketSettings  # noqa: E402
from runbooks_sandbox import Sandbox, SandboxState  # noqa: E402
from runbooks_sandbox.environment import BUCKET, S3_KEY_ID  # noqa: E402
from tests.disks import tmpfs  # noqa: E402
from tests.dockerd import docker_engine, docker_label  # noqa: E402, F401
from tests.redisfixtures import redis_server  # noqa: E402, F401


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[str]:
    """Prefect's test harness (one temporary server for the session) on a PostgreSQL cluster of its own, not
    SQLite (tests/prefect_harness.py says why); yields its API URL for subprocesses."""
    from tests.pgfixtures import running_cluster
    from tests.prefect_harness import prefect_harness_on

    # Not under /tmp: the seed cleanup rule walks /tmp, and a root holding a PostgreSQL data directory is refused.
    root = Path(tempfile.mkdtemp(prefix="runbooks-prefect-db-", dir=_STATE_PARENT))
    root.chmod(0o755)  # as root, the server runs as the postgres OS user
    try:
        with running_cluster(root) as cluster:
            dsn = cluster.dsn()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE DATABASE prefect")
            url = cluster.dsn("prefect").replace("postgresql://", "postgresql+asyncpg://", 1)
            with prefect_harness_on(url) as api:
                yield api
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxState]:
    # Not under pytest's 0700 tmp dirs: the server runs as the postgres OS user when we are root.
    root = Path(tempfile.mkdtemp(prefix="runbooks-sandbox-"))
    root.chmod(0o755)
    box = Sandbox(root)
    # USD/COP as an always-open market and no feeder: the suite's data is fresh USD/COP bars up to now at any hour,
    # nothing waits for a close (tests that are about market time configure markets built around the moment they
    # run: tests/markets.py), and no process writes bars behind a test's back (tests/test_sandbox_feed.py starts a
    # sandbox with the seeds' markets and a feeder).
    always_open = {"usd_cop": MarketSettings(always_open=True, symbols=["USDCOP"])}
    state = box.up(size_mb=3, prefect=False, markets=always_open, feeder=False, redis=False, pm2=False,
                   progress=lambda _m: None)
    try:
        yield state
    finally:
        box.down()
        shutil.rmtree(root, ignore_errors=True)  # our own mkdtemp: files tests wrote there, which down() keeps


@pytest.fixture
def config(sandbox: SandboxState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SandboxState:
    """The sandbox config with a fresh, empty local repository for this test."""
    monkeypatch.setenv("RUNBOOKS_CONFIG", sandbox.config_path)
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", (tmp_path / "repository").as_uri())
    return sandbox


@pytest.fixture
def s3_config(sandbox: SandboxState, monkeypatch: pytest.MonkeyPatch) -> SandboxState:
    """The sandbox config with a fresh prefix in the moto S3 bucket for this test."""
    assert sandbox.s3_config_path
    monkeypatch.setenv("RUNBOOKS_CONFIG", sandbox.s3_config_path)
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", f"s3://{BUCKET}/test-{uuid.uuid4().hex[:12]}")
    return sandbox


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs of this test's: real watermarks on a real filesystem (and a real "No space left on device")."""
    with tmpfs(tmp_path / "disk", size_mb=16) as mount:
        yield mount


@pytest.fixture(scope="session")
def s3_client(sandbox: SandboxState):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=sandbox.s3_endpoint, region_name="us-east-1",
                        aws_access_key_id=S3_KEY_ID, aws_secret_access_key=sandbox.s3_secret)


@pytest.fixture
def simulator(sandbox: SandboxState):  # type: ignore[no-untyped-def]
    """An HTTP client of the sandbox's trading platform simulator, reset to its defaults for this test and after it:
    failures a test injected and did not use up must not fail the next test that reads the platform."""
    client = httpx.Client(base_url=sandbox.simulator_url or "",
                          headers={"Authorization": f"Bearer {sandbox.simulator_token}"})
    client.post("/_control/reset").raise_for_status()
    yield client
    client.post("/_control/reset").raise_for_status()
    client.close()


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[dict[str, Any]], str]]:
    """A real HTTP receiver behind Prefect's CustomWebhookNotificationBlock, named in the settings."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Thread(target=server.serve_forever, daemon=True).start()
    name, canary = f"oncall-{uuid.uuid4().hex[:8]}", f"hook-canary-{uuid.uuid4().hex}"
    url = f"http://127.0.0.1:{server.server_address[1]}/hook/{canary}"
    CustomWebhookNotificationBlock(name="oncall", url=url, json_data={"text": "{{subject}}\n{{body}}"},
                                   allow_private_urls=True).save(name)
    monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS__BLOCK", f"custom-webhook/{name}")
    try:
        yield received, canary
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def real_prefect_server() -> Iterator[str]:
    """A real `prefect server start` with its services (automations, deployment triggers); started on first use."""
    from tests.prefect_server import prefect_server

    with prefect_server() as url:
        yield url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test that turned a URL into a relative path (``s3://b/p`` with ``removeprefix("file://")``) leaves a
    directory named ``s3:`` in the checkout: fail the session that made it."""
    leaked = [p for p in Path(session.config.rootpath).iterdir() if p.name.endswith(":")]
    if leaked:
        print(f"\nA test turned a URL into a relative path: {leaked}; use tests.repositories.local_repository_path")
        session.exitstatus = 1
