"""End to end on the production topology (issue 12): a real ``prefect server start`` whose database is PostgreSQL,
the ``runbooks`` process work pool, ``prefect deploy --all`` from this checkout, a process worker, the backup and
restore runbooks run through their deployments, the schedules' next runs read back, and the UI in headless
Chromium (Debian's ``chromium``), with screenshots saved under ``docs/screenshots/``.

One server, one worker and one test: each step needs the previous one's state (the restore needs the backup, the
UI shows the restore's artifacts). The sandbox's PostgreSQL cluster holds the server's database (``prefect_e2e``)
as well as the databases the runbooks back up. Everything runs in subprocesses started with this checkout on
``PYTHONPATH`` and as ``RUNBOOKS_HOME``, as an operator's worker host would.

Without ``chromium`` the test skips its UI step locally; with ``RUNBOOKS_REQUIRE_CHROMIUM=1`` (CI) it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
import yaml
from psycopg import sql

from runbooks_sandbox import SandboxState
from tests.prefect_server import prefect_server, stop_process_group
from tests.receivers import Inbox
from tests.repositories import catalog

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[1]
SPEC: dict[str, Any] = yaml.safe_load((CHECKOUT / "prefect.yaml").read_text())
DEPLOYMENTS: dict[str, dict[str, Any]] = {d["name"]: d for d in SPEC["deployments"]}
SCHEDULED = sorted(name for name, d in DEPLOYMENTS.items() if any(s.get("active", True) for s in d.get("schedules")
                                                                  or []))
[POOL] = {d["work_pool"]["name"] for d in SPEC["deployments"]}
PREFECT = Path(sys.executable).with_name("prefect")
SERVER_DATABASE = "prefect_e2e"
SCREENSHOTS = CHECKOUT / "docs" / "screenshots"
WINDOW = (1400, 900)
RUN_DEADLINE = 240.0  # seconds for a run to reach a final state, worker pickup included
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
E2E_TABLE = "e2e-bars"


@dataclass
class Stack:
    """What the steps share: the server, the environment every subprocess gets, the worker's log."""

    api: str  # http://127.0.0.1:PORT/api
    database_dsn: str  # libpq URL of the server's own database
    env: dict[str, str]  # for prefect CLI, worker and scripts: API URL, private home, checkout, sandbox config
    repository: Path  # the file:// backup repository the runs write
    work: Path  # scratch directory of this test (logs, browser profile)
    worker_log: Path

    @property
    def ui(self) -> str:
        return self.api.removesuffix("/api")


# -- requirements ---------------------------------------------------------------------------------------------------

def chromium_required() -> bool:
    """Whether CI asked for a failure instead of a skip when ``chromium`` is missing. ``tests/conftest.py`` drops
    ``RUNBOOKS_*`` variables before the suite starts, so the environment this process began with is read too."""
    if os.environ.get("RUNBOOKS_REQUIRE_CHROMIUM") == "1":
        return True
    try:
        return b"RUNBOOKS_REQUIRE_CHROMIUM=1" in Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def chromium_or_none() -> str | None:
    found = shutil.which("chromium")
    if not found and chromium_required():
        pytest.fail("no `chromium` on PATH and RUNBOOKS_REQUIRE_CHROMIUM=1: install Debian's chromium package "
                    "(apt-get install -y chromium) as .ci/run does", pytrace=False)
    return found


# -- fixtures -------------------------------------------------------------------------------------------------------

@pytest.fixture
def server_on_postgres(sandbox: SandboxState) -> Iterator[tuple[str, str]]:
    """A Prefect server with the UI whose database is ``prefect_e2e`` on the sandbox cluster; yields (API URL,
    libpq URL of that database). The database is dropped after the server stops."""
    cluster = sandbox.cluster()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SERVER_DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SERVER_DATABASE)))
    dsn = cluster.dsn(SERVER_DATABASE)
    try:
        # Migrating an empty PostgreSQL database takes longer than SQLite's first start.
        with prefect_server(timeout=180, database_url=dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
                            ui=True) as api:
            yield api, dsn
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SERVER_DATABASE)))


@pytest.fixture
def stack(server_on_postgres: tuple[str, str], sandbox: SandboxState, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    api, dsn = server_on_postgres
    repository = tmp_path / "repository"
    home, state = tmp_path / "prefect-home", tmp_path / "state"
    home.mkdir()
    state.mkdir()
    # This process reads the same repository (catalog(), through load_settings) as the runs do.
    monkeypatch.setenv("RUNBOOKS_CONFIG", sandbox.config_path)
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", repository.as_uri())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNBOOKS_"))}
    env.update(
        PREFECT_API_URL=api, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
        # The worker and its flow runs import this checkout's code, not whatever the virtualenv installed.
        RUNBOOKS_HOME=str(CHECKOUT), PYTHONPATH=os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")])),
        RUNBOOKS_CONFIG=sandbox.config_path, RUNBOOKS_REPOSITORY__URL=repository.as_uri(),
        XDG_STATE_HOME=str(state),
        # One monitored table the data-freshness run finds stale: older than 1 s, not gating trading.
        RUNBOOKS_FRESHNESS__TABLES=json.dumps([{
            "database": "trading_db", "table": "ohlcv_usdcop_5m", "label": E2E_TABLE, "loaded_at_field": "timestamp",
            "warn_after": None, "error_after": "1s", "kill_after": None, "gates_trading": False}]),
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):  # this process's client and run_deployment
        yield Stack(api=api, database_dsn=dsn, env=env, repository=repository, work=tmp_path,
                    worker_log=tmp_path / "worker.log")


# -- helpers --------------------------------------------------------------------------------------------------------

def prefect_cli(stack: Stack, *args: str) -> str:
    """Run the ``prefect`` CLI in the checkout against the stack's server; returns its output, fails with it."""
    done = subprocess.run([str(PREFECT), "--no-prompt", *args], cwd=CHECKOUT, env=stack.env, capture_output=True,
                          text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"prefect {' '.join(args)} exited {done.returncode}:\n{output[-4000:]}"
    return output


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no worker log)"


def start_worker(stack: Stack) -> Worker:
    log = stack.worker_log.open("wb")
    # Polls every 2 s instead of 10 s: a faster pickup, the same code path.
    env = {**stack.env, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    process = subprocess.Popen([str(PREFECT), "worker", "start", "--pool", POOL], cwd=CHECKOUT, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return Worker(process, stack.worker_log)


def flow_run_logs(flow_run_id: UUID) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                sort=LogSort.TIMESTAMP_ASC, limit=200)
    return "\n".join(f"{log.timestamp:%H:%M:%S} {log.level} {log.message}" for log in logs)


def run_and_wait(deployment: str, parameters: dict[str, Any], worker: Worker, *, expect: str = "COMPLETED") -> Any:
    """Start a run of ``flow/deployment`` through the API and wait until the worker has run it to a final state.
    Returns the flow run; on a wrong final state or no progress, fails with the worker's and the run's logs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    flow_run = run_deployment(name=deployment, parameters=parameters, timeout=0)
    assert isinstance(flow_run, FlowRun)  # called from sync code: not a coroutine
    deadline = time.monotonic() + RUN_DEADLINE
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run.id)
            state = flow_run.state
            if state is not None and state.type.value in FINAL:
                break
            if time.monotonic() > deadline or worker.process.poll() is not None:
                break
            time.sleep(1)
    if state is None or state.type.value != expect:
        pytest.fail(f"{deployment} run {flow_run.name!r} ({flow_run.id}) is "
                    f"{state.type.value if state else 'stateless'}: {state.message if state else ''}\n"
                    f"--- flow run logs ---\n{flow_run_logs(flow_run.id)}\n--- worker log ---\n{worker.tail()}",
                    pytrace=False)
    return flow_run


def scheduled_runs(deployment_ids: list[UUID]) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        return list(client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED]))),
            limit=200))


def cron_dates(entry: dict[str, Any], start: datetime, n: int) -> list[datetime]:
    """The next ``n`` times of the deployment's (single) cron schedule in prefect.yaml after ``start``."""
    import asyncio

    from prefect.server.schemas.schedules import CronSchedule

    [item] = entry["schedules"]
    schedule = CronSchedule(cron=item["cron"], timezone=item["timezone"], day_or=item.get("day_or", True))
    return [d.astimezone(UTC) for d in asyncio.run(schedule.get_dates(n=n, start=start))]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


class Browser:
    """Headless Chromium with a private profile under the test's scratch directory and a private temp directory
    (short: Chromium's singleton socket path must fit in 108 bytes), removed by ``close``."""

    def __init__(self, binary: str, work: Path) -> None:
        self.binary = binary
        self.profile = work / "chromium-profile"
        self.tmp = Path(tempfile.mkdtemp(prefix="runbooks-e2e-chromium-"))
        self.env = {**os.environ, "TMPDIR": str(self.tmp), "XDG_CONFIG_HOME": str(self.tmp),
                    "XDG_CACHE_HOME": str(self.tmp)}

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _run(self, url: str, *args: str) -> str:
        # The UI is a single-page app: the virtual time budget lets its API calls finish before the dump or shot.
        argv = [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                f"--user-data-dir={self.profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                "--virtual-time-budget=15000", *args, url]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120,
                              start_new_session=True)
        assert done.returncode == 0, f"chromium exited {done.returncode} on {url}:\n{done.stderr[-3000:]}"
        return done.stdout

    def text(self, url: str) -> str:
        """The rendered page's visible text (tags stripped from the DOM Chromium dumps)."""
        dom = self._run(url, "--dump-dom")
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))

    def screenshot(self, url: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._run(url, f"--screenshot={path}")
        assert png_size(path) == WINDOW, f"{path}: {png_size(path)}, expected {WINDOW}"
        assert path.stat().st_size > 20_000, f"{path} is {path.stat().st_size} bytes: a blank page?"


# -- steps ----------------------------------------------------------------------------------------------------------

def fire_a_stale_data_finding_and_see_the_notification(stack: Stack, worker: Worker) -> None:
    """The automations applied by their one command; a data-freshness run through its deployment finds the e2e
    table stale (its error_after is 1 s, see the ``stack`` fixture) and the server's automation notifies a real
    receiver; a failed restore run (tagged notify-on-failure) notifies too, the failed freshness run does not."""
    import uuid

    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    inbox = Inbox()
    try:
        name = f"oncall-{uuid.uuid4().hex[:8]}"
        CustomWebhookNotificationBlock(name="oncall", url=inbox.url, json_data={"text": "{{subject}}\n{{body}}"},
                                       allow_private_urls=True).save(name)
        done = subprocess.run([sys.executable, "deployments/automations.py", "apply"], cwd=CHECKOUT,
                              env={**stack.env, "RUNBOOKS_NOTIFICATIONS__BLOCK": f"custom-webhook/{name}"},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "created   runbooks: stale data" in done.stdout.splitlines(), done.stdout

        run_and_wait("data-freshness/data-freshness", {"act": False, "quality": False}, worker,
                     expect="FAILED")  # a stale finding is the run's verdict
        text = inbox.wait_for(lambda t: t.startswith("[P2] INCIDENT: stale data: ") and E2E_TABLE in t)
        assert "runbook action: none" in text and "error: " in text, text

        failed = run_and_wait("restore/restore-on-demand", {
            "database": "trading_db", "mode": "verify", "backup_id": "20000101T000000Z"}, worker, expect="FAILED")
        text = inbox.wait_for(lambda t: failed.name in t)
        assert text.splitlines()[0] == f"[P2] INCIDENT: restore: run {failed.name} Failed", text
        # A runbook that concluded failed logs its error once, in one line: no engine traceback of a failed state
        # (Prefect 3 logged "Unexpected result for failed state" with 4.9 kB of frames for every failed run).
        deadline = time.monotonic() + 30
        while "restore failed: " not in (logs := flow_run_logs(failed.id)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "restore failed: " in logs, logs
        assert "Traceback" not in logs and "Unexpected result" not in logs, logs
        assert "20000101T000000Z" in text  # the run's state message, rendered by the server
        assert not [t for t in inbox.texts if t.startswith("[P2] INCIDENT: data-freshness: run")]
    finally:
        inbox.close()


def test_the_runbooks_run_end_to_end_on_a_prefect_server_on_postgresql(stack: Stack) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    browser_binary = chromium_or_none()  # fails now, not after the runs, when CI lacks it

    # 1. The server is healthy on PostgreSQL: its tables are in prefect_e2e.
    with psycopg.connect(stack.database_dsn) as conn:
        assert conn.execute("SELECT to_regclass('public.flow_run') IS NOT NULL").fetchone() == (True,)

    # 2. The work pool and every deployment of prefect.yaml, applied from this checkout.
    prefect_cli(stack, "work-pool", "create", POOL, "--type", "process")
    deployed_at = datetime.now(UTC)
    prefect_cli(stack, "deploy", "--all")
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments(limit=200)}
    assert set(deployments) == set(DEPLOYMENTS)
    for name, deployment in deployments.items():
        assert deployment.work_pool_name == POOL, name
        # {{ $RUNBOOKS_HOME }} resolved at deploy time: the worker starts each run in this checkout.
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(CHECKOUT)}}], name
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules] == [  # type: ignore[union-attr]
            (s["cron"], s["timezone"], s.get("active", True)) for s in DEPLOYMENTS[name].get("schedules") or []], name

    # 3. The schedules' next runs, as the server's scheduler made them (before any worker runs: a due run of
    # data-freshness would otherwise be picked up and act on the sandbox). Then every scheduled deployment is
    # paused, which deletes its scheduled runs, so the worker started below runs only what this test asks for.
    ids = {deployments[name].id: name for name in SCHEDULED}
    deadline = time.monotonic() + 60
    while True:
        found = scheduled_runs(list(ids))
        if not (unscheduled := set(SCHEDULED) - {ids[r.deployment_id] for r in found}):
            break
        assert time.monotonic() < deadline, f"no scheduled runs within 60 s for {sorted(unscheduled)}"
        time.sleep(1)
    starts: dict[str, list[datetime]] = {name: [] for name in SCHEDULED}
    for run in found:
        assert run.auto_scheduled, run.name
        starts[ids[run.deployment_id]].append(run.expected_start_time.astimezone(UTC))
    for name, times in starts.items():
        times.sort()
        # In the future of the deploy, and exactly the cron's times from prefect.yaml, none skipped.
        assert times[0] > deployed_at, (name, times[0], deployed_at)
        assert times[0] in cron_dates(DEPLOYMENTS[name], deployed_at, 2), (name, times[0])
        assert times == cron_dates(DEPLOYMENTS[name], times[0] - timedelta(seconds=1), len(times)), name
    nightly = starts["backup-nightly"]
    assert all((t.hour, t.minute, t.second) == (2, 0, 0) for t in nightly), nightly
    assert all(b - a == timedelta(days=1) for a, b in zip(nightly, nightly[1:], strict=False)), nightly
    freshness = starts["data-freshness"]
    assert len(freshness) >= 3 and all(t.minute % 5 == 0 and t.second == 0 for t in freshness), freshness
    assert all(b - a == timedelta(minutes=5) for a, b in zip(freshness, freshness[1:], strict=False)), freshness

    with get_client(sync_client=True) as client:
        for deployment_id in ids:
            client.pause_deployment(deployment_id)
    # A scheduler pass that read the deployments before the pause may still insert runs: wait out two passes of
    # the recent-deployments scheduler (5 s) and require that none is left.
    time.sleep(11)
    assert scheduled_runs(list(ids)) == [], "scheduled runs left after pausing the scheduled deployments"

    worker = start_worker(stack)
    try:
        # 4. Backup, then restore (verify) of trading_db through their deployments, run by the worker.
        backup_run = run_and_wait("backup/backup-on-demand", {"databases": ["trading_db"]}, worker)
        [manifest] = catalog().list_backups(kind="database", name="trading_db")
        assert backup_run.start_time and manifest.started_at >= backup_run.start_time - timedelta(seconds=5)

        restore_run = run_and_wait("restore/restore-on-demand",
                                   {"database": "trading_db", "mode": "verify"}, worker)
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[restore_run.id])))
        reports = [a for a in artifacts if a.key == "restore-report-trading-db"]
        assert reports, f"no restore report among {[a.key for a in artifacts]}"
        assert manifest.backup_id in str(reports[0].data), "the report does not name the backup it verified"
        with psycopg.connect(stack.database_dsn) as conn:  # the runs live in PostgreSQL, not some SQLite file
            row = conn.execute("SELECT count(*) FROM flow_run WHERE id = ANY(%s) AND state_type = 'COMPLETED'",
                               [[backup_run.id, restore_run.id]]).fetchone()
        assert row == (2,)

        # 5. Automations: apply them, fire a stale-data finding, see the notification arrive.
        fire_a_stale_data_finding_and_see_the_notification(stack, worker)
    finally:
        stop_process_group(worker.process)

    # 6. The UI, served by the same server, in headless Chromium.
    if browser_binary is None:
        pytest.skip("steps 1-5 passed; the UI step needs Debian's `chromium` (set RUNBOOKS_REQUIRE_CHROMIUM=1 to "
                    "fail instead of skipping)")
    browser = Browser(browser_binary, stack.work)
    try:
        # The UI an operator gets at http://host:4200/ (Prefect 3.8 defaults to its V2 UI), all deployments on one page.
        deployments_page = f"{stack.ui}/v2/deployments?limit=50"
        page = browser.text(deployments_page)
        missing = sorted(name for name in DEPLOYMENTS if name not in page)
        assert not missing, f"the deployments page does not show {missing}: {page[:3000]}"
        browser.screenshot(deployments_page, SCREENSHOTS / "deployments.png")

        run_page = f"{stack.ui}/v2/runs/flow-run/{restore_run.id}?tab=Artifacts"
        page = browser.text(run_page)
        assert restore_run.name in page and "restore-report-trading-db" in page, page[:3000]
        browser.screenshot(run_page, SCREENSHOTS / "flow-run-artifacts.png")
    finally:
        browser.close()
