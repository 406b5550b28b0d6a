"""Canary secrets through every runbook (issue 13): a PostgreSQL password, an S3 secret key, the trading and inference
API token and a webhook URL, each unmistakable and each really used by its component, flow through every runbook
run once to success and once to failure. Then every place a secret could land is read back and grepped:

- the Prefect API: logs, artifacts, flow runs (parameters, names, state messages), task runs (inputs, state
  messages), events; and the server's own database (dumped), which holds all of it;
- what the runs returned (results, state messages), what the process printed, what went to the webhook and to the
  trading platform, every object in the repository and every file under the run's state directory;
- the process table: every process's ``/proc/*/cmdline``, sampled continuously by a background thread while the
  runbooks run (pg_dump, pg_dumpall, pg_restore, initdb, pg_ctl and the drill's postgres included).

A positive control proves each reader sees a value that is not registered as a secret, so a leak would be found.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import psycopg
import pytest
from psycopg import sql

from runbooks.adapters.cluster import free_port
from runbooks.core import redact
from runbooks.flows.backup import BackupParameters, backup_databases
from runbooks.flows.backup_verification import VerificationParameters, verify_backups_flow
from runbooks.flows.data_freshness import FreshnessParameters, data_freshness_flow
from runbooks.flows.database_connections import ConnectionsParameters, database_connections_flow
from runbooks.flows.disk_cleanup import CleanupParameters, disk_cleanup_flow
from runbooks.flows.dr_game_day import DrillParameters, dr_game_day_flow
from runbooks.flows.drawdown_limit import DrawdownParameters, drawdown_limit_flow
from runbooks.flows.emergency_stop import EmergencyStopParameters, emergency_stop_flow
from runbooks.flows.exchange_reconnect import ExchangeParameters, exchange_reconnect_flow
from runbooks.flows.health_check import HealthCheckParameters, health_check_flow
from runbooks.flows.model_rollback import RollbackParameters, model_rollback_flow
from runbooks.flows.redis_restore import RedisRestoreParameters, redis_restore_flow
from runbooks.flows.restore import RestoreParameters, restore_database_flow
from runbooks.flows.resume_trading import ResumeParameters, resume_trading_flow
from runbooks.flows.weekly_report import WeeklyReportParameters, weekly_report_flow
from runbooks.frame import arguments, outcome
from runbooks_sandbox import SandboxState
from runbooks_sandbox.environment import BUCKET, CHECKOUT, S3_KEY_ID
from runbooks_sandbox.seed import catch_up_bars
from tests.pgfixtures import admin_dsn, drop_db
from tests.receivers import Inbox
from tests.redisfixtures import fill, kill_all, leftover_servers, start_redis


# -- the canaries ------------------------------------------------------------------------------------------------
@dataclass
class Canary:
    """One secret value, found whole or by either end of its random part (a truncated or re-encoded copy)."""

    name: str
    value: str

    @property
    def marks(self) -> tuple[str, ...]:
        random_part = self.value.rsplit("-", 1)[1]
        return self.value, random_part[:12], random_part[-12:]

    def found_in(self, text: str) -> bool:
        return any(mark in text for mark in self.marks)


def _canary(kind: str) -> Canary:
    return Canary(kind, f"CANARY-{kind}-{uuid.uuid4().hex}")


@dataclass
class Canaries:
    pg: Canary = field(default_factory=lambda: _canary("pg"))  # the login role of every DSN
    pg_wrong: Canary = field(default_factory=lambda: _canary("pgwrong"))  # a wrong password: the error path
    s3: Canary = field(default_factory=lambda: _canary("s3"))  # the repository's secret access key
    token: Canary = field(default_factory=lambda: _canary("token"))  # trading + inference API bearer token
    token_wrong: Canary = field(default_factory=lambda: _canary("tokenwrong"))  # a token the platform refuses
    hook: Canary = field(default_factory=lambda: _canary("hook"))  # the webhook URL's credential (block secrets)
    redis: Canary = field(default_factory=lambda: _canary("redis"))  # the Redis AUTH password
    # Not a secret (never registered): the positive control every reader must find.
    control: Canary = field(default_factory=lambda: _canary("control"))

    @property
    def secrets(self) -> list[Canary]:
        return [self.pg, self.pg_wrong, self.s3, self.token, self.token_wrong, self.hook, self.redis]

    @property
    def all(self) -> list[Canary]:
        return [*self.secrets, self.control]


def found(canaries: list[Canary], text: str) -> list[str]:
    return [c.name for c in canaries if c.found_in(text)]


def excerpts(canaries: list[Canary], text: str, *, width: int = 150, most: int = 3) -> list[str]:
    """Where each canary occurs, with some context, for the failure message."""
    shown: list[str] = []
    for canary in canaries:
        for mark in canary.marks:
            at = text.find(mark)
            while at != -1 and len(shown) < most:
                shown.append(f"{canary.name}: ...{text[max(0, at - width):at + len(mark) + width]}...")
                at = text.find(mark, at + 1)
    return shown


# -- the process table -------------------------------------------------------------------------------------------
class ProcessTable(threading.Thread):
    """Reads every process's command line over and over until stopped; remembers which canary showed up where."""

    def __init__(self, canaries: list[Canary]) -> None:
        super().__init__(name="process-table-sampler", daemon=True)
        self.canaries = canaries
        self.marks = [(c.name, mark.encode()) for c in canaries for mark in c.marks]
        self.hits: dict[str, set[str]] = {}
        self.programs: set[str] = set()
        self.scans = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                        cmdline = handle.read()
                except OSError:  # gone meanwhile
                    continue
                if not cmdline:
                    continue
                program = os.path.basename(cmdline.split(b"\0", 1)[0]).decode(errors="replace")
                self.programs.add(program.split(":")[0].split(" ")[0])  # "postgres: user db ... idle" is postgres
                for name, mark in self.marks:
                    if mark in cmdline:
                        shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:300]
                        self.hits.setdefault(name, set()).add(f"pid {entry.name}: {shown}")
            self.scans += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


# -- the platform, configured with the canaries --------------------------------------------------------------------
@dataclass
class Platform:
    sandbox: SandboxState
    canaries: Canaries
    root: Path
    config: Path
    prefix: str
    role: str
    simulator: httpx.Client
    simulator_url: str
    inbox: Inbox
    block: str


class Refuser:
    """A webhook receiver that answers every POST with 503: httpx's error then quotes the URL it posted to."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(503)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def _simulator(token: str, dsn: str, root: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The platform simulator with the canary as its token (given as the sandbox does: in the environment)."""
    port = free_port()
    log = open(root / "simulator.log", "ab")  # noqa: SIM115 - owned by the child
    env = {**os.environ, "SIMULATOR_TOKEN": token, "SIMULATOR_DSN": dsn, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "runbooks_sandbox.simulator", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / "simulator.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the canary simulator did not start"
            time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


def _write_config(path: Path, *, sandbox: SandboxState, c: Canaries, role: str, root: Path, prefix: str,
                  simulator_url: str, blocks: list[str], token_block: str, redis_port: int) -> None:
    port = sandbox.postgres_port
    datadir = sandbox.cluster().datadir
    lines = [
        f"state_dir = {_toml(str(root / 'state'))}",
        "",
        "[databases.trading_db]",  # URL form, password inside
        f"dsn = {_toml(f'postgresql://{role}:{c.pg.value}@127.0.0.1:{port}/trading_db')}",
        "",
        "[cluster]",  # key=value form, password inside
        'name = "canary"',
        f"dsn = {_toml(f'host=127.0.0.1 port={port} dbname=postgres user={role} password={c.pg.value}')}",
        f"config_files = [{_toml(str(datadir / 'postgresql.conf'))}, {_toml(str(datadir / 'pg_hba.conf'))}]",
        "",
        "[repository]",
        f"url = {_toml(f's3://{BUCKET}/{prefix}')}",
        f"endpoint_url = {_toml(sandbox.s3_endpoint or '')}",
        'region = "us-east-1"',
        f"access_key_id = {_toml(S3_KEY_ID)}",
        f"secret_access_key = {_toml(c.s3.value)}",
        "",
        "[trading_api]",
        f"base_url = {_toml(simulator_url)}",
        f"token = {_toml(c.token.value)}",
        "",
        "[inference_api]",  # the same token, from a Prefect Secret block
        f"base_url = {_toml(simulator_url)}",
        f"token_block = {_toml(token_block)}",
        "",
        "[redis.memory]",
        f"port = {redis_port}",
        f"password = {_toml(c.redis.value)}",
        "",
        "[notifications]",
        f"block = {_toml(blocks[0])}",
        "[notifications.severities.P2]",  # a refusing receiver beside the live one: the error quotes the URL
        f"blocks = [{', '.join(map(_toml, blocks))}]",
        "",
        "[freshness]",
        'lookback = "6h"',
        'platform_table = "ohlcv_usdcop_5m"',
        "[[freshness.tables]]",
        'database = "trading_db"',
        'table = "ohlcv_usdcop_5m"',
        'loaded_at_field = "timestamp"',
        'group_by = "symbol"',
        'interval = "5m"',
        'quality = "ohlcv"',
        "",
        "[health]",  # the shared host's own load is not what this test is about
        *[f"{name}_{level}_percent = {value}" for name in ("disk", "memory", "cpu")
          for level, value in (("warn", 99.9), ("alert", 100))],
        "",
        "[models]",
        'verify_timeout = "3s"',
        "kill_switch_on_escalation = true",
        "",
        "[drill]",
        f"work_dir = {_toml(str(root / 'drills'))}",
        'backup_interval = "24h"',
        "[drill.trading_api]",
        f"base_url = {_toml(simulator_url)}",
        f"token = {_toml(c.token.value)}",
        "",
        "[cleanup]",
        f"watch = [{_toml(str(root))}]",
        f"allowed_roots = [{_toml(str(root / 'logs'))}]",
        f"survey = [{_toml(str(root))}]",
        "[[cleanup.rules]]",
        'kind = "files"',
        'name = "old-logs"',
        f"roots = [{_toml(str(root / 'logs'))}]",
        'patterns = ["*.log"]',
        'older_than = "7d"',
        "[[cleanup.rules]]",
        'kind = "databases"',
        "",
    ]
    path.write_text("\n".join(lines))
    path.chmod(0o600)


@pytest.fixture
def platform(sandbox: SandboxState, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.blocks.system import Secret
    from prefect.types import SecretDict

    c = Canaries()
    with ExitStack() as made:  # everything made is released, also when the set-up fails halfway
        # Not under pytest's 0700 tmp dirs (the drill's cluster runs as the postgres OS user when we are root), and
        # short: the drill's socket path must stay under the 107 bytes a Unix socket name may have.
        root = Path(tempfile.mkdtemp(prefix="cnry-"))
        made.callback(shutil.rmtree, root, ignore_errors=True)
        root.chmod(0o755)
        (root / "logs").mkdir()
        role = f"canary_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:  # superuser: globals, restores
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(c.pg.value)))
        made.callback(_drop_role_and_databases, sandbox, role)
        catch_up_bars(admin_dsn(sandbox, "trading_db"))  # the market-data feed ticked up to now
        dsn = f"postgresql://{role}:{c.pg.value}@127.0.0.1:{sandbox.postgres_port}/trading_db"
        proc, url = made.enter_context(_simulator(c.token.value, dsn, root))
        inbox, refuser = Inbox(), Refuser()
        made.callback(inbox.close)
        made.callback(refuser.close)
        block, refusing = f"canary-{uuid.uuid4().hex[:8]}", f"canary-refusing-{uuid.uuid4().hex[:8]}"
        # The webhook's credential in the block's secrets, templated into its URL, as the README says: a plain `url`
        # is published by Prefect itself (test_a_custom_webhook_url_is_only_secret_in_the_blocks_secrets).
        for name, base in ((block, inbox.url), (refusing, refuser.url)):
            CustomWebhookNotificationBlock(  # type: ignore[call-arg]
                name="oncall", url=base + "/{{hook}}", secrets=SecretDict({"hook": c.hook.value}),
                json_data={"text": "{{subject}}\n{{body}}"}, allow_private_urls=True).save(name)
        token_block = f"canary-token-{uuid.uuid4().hex[:8]}"
        Secret(value=c.token.value).save(token_block)  # type: ignore[arg-type]
        config = root / "runbooks.toml"
        prefix = f"canary-{uuid.uuid4().hex[:12]}"
        # The memory/learning system, its AUTH password the canary; its config (which holds it) outside the tree read.
        redis_dir = Path(tempfile.mkdtemp(prefix="cnry-redis-"))
        made.callback(shutil.rmtree, redis_dir, ignore_errors=True)
        memory = start_redis(redis_dir, password=c.redis.value)
        made.callback(memory.stop)
        made.callback(lambda: kill_all(leftover_servers(root)))  # copies redis-restore handed over
        fill(memory, keys=50, databases=(0,))
        _write_config(config, sandbox=sandbox, c=c, role=role, root=root, prefix=prefix, simulator_url=url,
                      blocks=[f"custom-webhook/{block}", f"custom-webhook/{refusing}"], token_block=token_block,
                      redis_port=memory.port)
        monkeypatch.setenv("RUNBOOKS_CONFIG", str(config))
        client = made.enter_context(httpx.Client(base_url=url, headers={"Authorization": f"Bearer {c.token.value}"}))
        yield Platform(sandbox=sandbox, canaries=c, root=root, config=config, prefix=prefix, role=role,
                       simulator=client, simulator_url=url, inbox=inbox, block=block)


def _drop_role_and_databases(sandbox: SandboxState, role: str) -> None:
    for database in ("canary_recovery", "canary_recovery_2"):
        drop_db(sandbox, database)
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# -- the runs ----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    label: str
    state: Any
    result: Any

    @property
    def text(self) -> str:
        """The final state's message and the result: a result model, or the exception with its traceback and every
        exception chained to it, even one suppressed with ``from None`` (the object still holds it)."""
        shown = [f"{self.label}: {self.state.message}"]
        if isinstance(self.result, BaseException):
            exc: BaseException | None = self.result
            while exc is not None:
                shown.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False)))
                exc = exc.__cause__ or exc.__context__
        else:
            shown.append(self.result.model_dump_json())
        return "\n".join(shown)


class Runs:
    """Each runbook run as a worker process would start it: with an empty secret registry, so nothing is scrubbed
    only because an earlier run in this process happened to register it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.done: list[Run] = []

    def __call__(self, label: str, flow: Callable[..., Any], parameters: Any, *, expect: str,
                 env: dict[str, str] | None = None, before: Callable[[], object] | None = None) -> Run:
        with self.monkeypatch.context() as mp:
            for key, value in (env or {}).items():
                mp.setenv(key, value)
            if before is not None:
                before()
            redact._REGISTERED.clear()
            state = flow(**(arguments(parameters) if parameters is not None else {}), return_state=True)
        result = outcome(state)
        run = Run(label, state, result)
        self.done.append(run)
        assert state.type.value == expect, (label, state.message, getattr(result, "error", result))
        return run


# -- reading back everything ---------------------------------------------------------------------------------------
def _paged(read: Callable[[int], list[Any]]) -> list[Any]:
    found: list[Any] = []
    while True:
        page = read(len(found))
        found += page
        if len(page) < 200:
            return found


def _events(client: Any) -> list[Any]:
    from prefect.events.filters import EventFilter, EventOccurredFilter

    since = datetime.now(UTC) - timedelta(hours=2)
    occurred = EventOccurredFilter(since=since)  # type: ignore[arg-type]
    page = client.read_events(filter=EventFilter(occurred=occurred), limit=50)
    events = list(page.events)
    while page.next_page:
        page = client.read_events_page(str(page.next_page))
        events += page.events
    return events


def read_prefect_api(control: Canary, *, timeout: float = 60) -> dict[str, str]:
    """Every log, artifact, flow run, task run and event the Prefect API holds, as text per place. Waits until the
    control's event is readable: events and logs reach the server asynchronously, and the control came last."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            events = _events(client)
            logs = _paged(lambda offset: client.read_logs(limit=200, offset=offset))
            ready = control.found_in(json.dumps([e.model_dump(mode="json") for e in events])) and \
                control.found_in("\n".join(log.message for log in logs))
            if ready or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        artifacts = _paged(lambda offset: client.read_artifacts(limit=200, offset=offset))
        flow_runs = _paged(lambda offset: client.read_flow_runs(limit=200, offset=offset))
        task_runs = _paged(lambda offset: client.read_task_runs(limit=200, offset=offset))
    return {
        "logs (Prefect API)": "\n".join(log.message for log in logs),
        "artifacts": "\n".join(a.model_dump_json() for a in artifacts),
        "flow runs (parameters, names, state messages)": "\n".join(r.model_dump_json() for r in flow_runs),
        "task runs (inputs, names, state messages)": "\n".join(r.model_dump_json() for r in task_runs),
        "events": "\n".join(e.model_dump_json() for e in events),
    }


def read_prefect_database() -> str:
    """Everything the server stored, however the API exposes it: its SQLite file (and write-ahead log), or the
    data of its PostgreSQL database (the suite's harness: tests/prefect_harness.py) dumped as plain SQL."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    from runbooks.adapters.postgres import libpq_env, pg_tool

    url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        return "".join(p.read_bytes().decode("utf-8", errors="replace") for p in path.parent.glob(path.name + "*"))
    params = psycopg.conninfo.conninfo_to_dict(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    dumped = subprocess.run([pg_tool("pg_dump"), "--data-only", "--no-owner"], env=libpq_env(params),
                            capture_output=True, check=True, timeout=300)
    return dumped.stdout.decode("utf-8", errors="replace")


def read_repository(sandbox: SandboxState, prefix: str) -> str:
    """Every object the runs stored (manifests, records, holds, dumps decompressed)."""
    import zstandard

    s3 = boto3.client("s3", endpoint_url=sandbox.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=S3_KEY_ID, aws_secret_access_key=sandbox.s3_secret)
    texts = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            if obj["Key"].endswith(".zst"):
                body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read()
            texts.append(f"{obj['Key']}\n{body.decode('utf-8', errors='replace')}")
    assert texts, "the runs stored nothing in the repository"
    return "\n".join(texts)


def read_files(root: Path, *, skip: Path) -> str:
    texts = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path != skip and path.name != "simulator.log":
            texts.append(f"{path}\n{path.read_bytes().decode('utf-8', errors='replace')}")
    return "\n".join(texts)


# -- the control: a run that puts the unregistered control value everywhere a secret could go ----------------------
def control_run(value: str) -> None:
    from prefect import flow, get_run_logger, task
    from prefect.artifacts import create_markdown_artifact
    from prefect.events import emit_event

    @task(name="canary-control-task", retries=0)
    def fail(note: str) -> None:
        raise ValueError(f"control {note}")

    @flow(name="canary-control")
    def control(note: str) -> str:
        get_run_logger().info("control %s", note)
        create_markdown_artifact(markdown=f"control {note}", key="canary-control")
        emit_event(event="canary.control", resource={"prefect.resource.id": "canary.control"}, payload={"note": note})
        fail(note, return_state=True)
        return note

    control(value)
    print(f"control {value}")  # for the captured output
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)", value])  # for the process table
    proc.wait(timeout=30)


# -- the test ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_no_canary_secret_leaks_from_any_runbook_run(platform: Platform, monkeypatch: pytest.MonkeyPatch,
                                                     capfd: pytest.CaptureFixture[str], prefect_api: str) -> None:
    c, sim = platform.canaries, platform.simulator
    # Each canary is what its component really uses: PostgreSQL takes the password and refuses another, the
    # platform takes the token and refuses another, the config file holds what the runbooks read.
    with psycopg.connect(f"postgresql://{platform.role}:{c.pg.value}@127.0.0.1:{platform.sandbox.postgres_port}/postgres"):
        pass
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://{platform.role}:{c.pg_wrong.value}@127.0.0.1:"
                        f"{platform.sandbox.postgres_port}/postgres").close()
    assert sim.get("/api/v1/operations/status").status_code == 200
    assert httpx.get(f"{platform.simulator_url}/api/v1/operations/status",
                     headers={"Authorization": f"Bearer {c.token_wrong.value}"}).status_code == 401
    config_text = platform.config.read_text()
    # the grep sees them where they live
    assert found([c.pg, c.s3, c.token, c.redis], config_text) == ["pg", "s3", "token", "redis"]

    wrong_pg = {"RUNBOOKS_DATABASES__TRADING_DB__PASSWORD": c.pg_wrong.value,
                "RUNBOOKS_CLUSTER__PASSWORD": c.pg_wrong.value}
    wrong_tokens = {"RUNBOOKS_TRADING_API__TOKEN": c.token_wrong.value,
                    "RUNBOOKS_INFERENCE_API__TOKEN": c.token_wrong.value}
    no_bucket = {"RUNBOOKS_REPOSITORY__URL": f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x"}

    def reset() -> None:
        sim.post("/_control/reset").raise_for_status()

    table = ProcessTable(c.all)
    table.start()
    run = Runs(monkeypatch)
    try:
        # backup: pg_dump and pg_dumpall with the canary role, to S3 with the canary secret; then a wrong password.
        run("backup", backup_databases, BackupParameters(), expect="COMPLETED")
        run("backup, wrong password", backup_databases, BackupParameters(), expect="FAILED", env=wrong_pg)
        # restore: verify, into a new database (pg_restore), and with the wrong password.
        run("restore verify", restore_database_flow, RestoreParameters(database="trading_db", mode="verify"),
            expect="COMPLETED")
        run("restore new", restore_database_flow,
            RestoreParameters(database="trading_db", mode="new", target_database="canary_recovery"),
            expect="COMPLETED")
        run("restore, wrong password", restore_database_flow,
            RestoreParameters(database="trading_db", mode="new", target_database="canary_recovery_2"),
            expect="FAILED", env=wrong_pg)
        # backup verification: the newest backup re-read; then a repository that does not exist.
        run("backup-verification", verify_backups_flow, VerificationParameters(), expect="COMPLETED")
        run("backup-verification, no bucket", verify_backups_flow, VerificationParameters(), expect="FAILED",
            env=no_bucket)
        # data freshness: fresh (with the GX suite); then only rows 20 minutes old count: stale, pause, notify.
        run("data-freshness", data_freshness_flow, FreshnessParameters(), expect="COMPLETED", before=reset)
        stale_tables = json.dumps([{"database": "trading_db", "table": "ohlcv_usdcop_5m", "group_by": "symbol",
                                    "loaded_at_field": "timestamp",
                                    "filter": "\"timestamp\" < now() - interval '20 minutes'"}])
        paused = run("data-freshness, stale", data_freshness_flow, FreshnessParameters(quality=False),
                     expect="FAILED", env={"RUNBOOKS_FRESHNESS__TABLES": stale_tables})
        assert paused.result.action != "none" and "notified" in (paused.result.notification or ""), paused.result
        reset()
        # disk cleanup: a dry run of every rule; then the databases rule with the wrong password.
        run("disk-cleanup dry run", disk_cleanup_flow, CleanupParameters(dry_run=True, force=True),
            expect="COMPLETED")
        run("disk-cleanup, wrong password", disk_cleanup_flow, CleanupParameters(dry_run=True, force=True),
            expect="FAILED", env=wrong_pg)
        # health check: healthy; then the platform refusing (a wrong token; 401 on health too): notifies on-call.
        run("health-check", health_check_flow, HealthCheckParameters(), expect="COMPLETED")
        refuse = {"path_prefix": "/api/v1/health", "status": 401, "count": 100}
        alert = run("health-check, platform refusing", health_check_flow, HealthCheckParameters(), expect="FAILED",
                    env=wrong_tokens, before=lambda: sim.post("/_control/failures", json=refuse).raise_for_status())
        assert "notified via" in alert.result.notification and "503" in alert.result.notification, alert.result
        reset()
        # model rollback: degraded, rolled back and proven; then a stuck router: escalation, kill switch, P1.
        degrade = {"metrics": {"sharpe_ratio": 0.22, "win_rate": 0.31, "error_rate": 0.02}}
        run("model-rollback", model_rollback_flow, RollbackParameters(monitor_minutes=0, poll_seconds=0.2),
            expect="COMPLETED", before=lambda: sim.post("/_control/metrics", json=degrade).raise_for_status())

        def stuck() -> None:
            reset()
            sim.post("/_control/metrics", json=degrade).raise_for_status()
            sim.post("/_control/router", params={"stuck": True}).raise_for_status()

        run("model-rollback, router stuck", model_rollback_flow,
            RollbackParameters(monitor_minutes=0, poll_seconds=0.2, reason="canary drill"), expect="FAILED",
            before=stuck)
        reset()
        # trading safety: a stop through the API (the token canary), then with the token and the password wrong
        # (the API refuses, the database refuses: a failed stop, paged); the drawdown report, the exchange check;
        # resume-trading with the token wrong.
        run("emergency-stop", emergency_stop_flow, EmergencyStopParameters(reason="canary drill"), expect="COMPLETED",
            before=reset)
        run("emergency-stop, token and password wrong", emergency_stop_flow,
            EmergencyStopParameters(reason="canary drill"), expect="FAILED", env={**wrong_tokens, **wrong_pg},
            before=reset)
        run("drawdown-limit", drawdown_limit_flow, DrawdownParameters(), expect="COMPLETED", before=reset)
        run("drawdown-limit, token wrong", drawdown_limit_flow, DrawdownParameters(), expect="FAILED",
            env=wrong_tokens)
        run("exchange-reconnect", exchange_reconnect_flow, ExchangeParameters(), expect="COMPLETED")
        # Redis: the backup above took it with the canary password; a restore into a copy; the wrong password.
        run("redis-restore", redis_restore_flow, RedisRestoreParameters(instance="memory"), expect="COMPLETED")
        run("backup of Redis, wrong password", backup_databases,
            BackupParameters(include_databases=False, include_cluster=False), expect="FAILED",
            env={"RUNBOOKS_REDIS__MEMORY__PASSWORD": c.pg_wrong.value})
        run("database-connections", database_connections_flow, ConnectionsParameters(), expect="COMPLETED")
        run("resume-trading, token wrong", resume_trading_flow, ResumeParameters(reason="canary drill"),
            expect="FAILED", env=wrong_tokens)
        reset()
        # weekly report: everything read; then nothing readable (tokens refused, no bucket, no Prefect API there).
        run("weekly-report", weekly_report_flow, WeeklyReportParameters(), expect="COMPLETED")
        run("weekly-report, nothing readable", weekly_report_flow, WeeklyReportParameters(), expect="FAILED",
            env={**wrong_tokens, **no_bucket, "RUNBOOKS_PREFECT__API_URL": f"{platform.simulator_url}/nowhere/api"})
        # DR game-day: the drill (initdb, roles, pg_restore, the platform proven); then no backup to drill on.
        run("dr-game-day", dr_game_day_flow, DrillParameters(), expect="COMPLETED")
        run("dr-game-day, no bucket", dr_game_day_flow, DrillParameters(), expect="FAILED", env=no_bucket)
        # Settings that do not load: the error is raised before the run has registered any secret.
        port = platform.sandbox.postgres_port
        bad_port = {"RUNBOOKS_DATABASES__TRADING_DB__DSN":
                    f"postgresql://{platform.role}:{c.pg.value}@127.0.0.1:{port}0000/trading_db"}
        unterminated = {"RUNBOOKS_CLUSTER__DSN": f"host=127.0.0.1 port={port} user={platform.role} "
                                                 f"password='{c.pg.value}"}
        run("health-check, DSN with a bad port", health_check_flow, HealthCheckParameters(), expect="FAILED",
            env=bad_port)
        run("backup, DSN with an unterminated quote", backup_databases, BackupParameters(), expect="FAILED",
            env=unterminated)
        # The command line, a process of its own: a failing backup, and a DSN that does not parse (exit 2).
        env = {**os.environ, "PREFECT_API_URL": prefect_api}
        cli = [subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "backup", "--json"],
                              env={**env, **extra}, capture_output=True, text=True, timeout=300)
               for extra in (wrong_pg, unterminated)]
        assert [p.returncode for p in cli] == [1, 2], [p.stderr for p in cli]
        control_run(c.control.value)
    finally:
        table.stop()

    captured = capfd.readouterr()
    places = read_prefect_api(c.control)
    places["the Prefect server's database"] = read_prefect_database()
    places["results and final states"] = "\n".join(
        r.text for r in run.done)
    places["printed (stdout, stderr)"] = captured.out + captured.err
    places["the command line's output"] = "".join(p.stdout + p.stderr for p in cli)
    places["webhook messages"] = "\n".join(platform.inbox.texts)
    places["calls the trading platform received"] = json.dumps(sim.get("/_control/state").json())
    places["repository objects"] = read_repository(platform.sandbox, platform.prefix)
    places["state directory files"] = read_files(platform.root, skip=platform.config)

    # The controls: each reader sees a value that is not a secret, so it would see a leaked one too.
    for place in ("logs (Prefect API)", "artifacts", "flow runs (parameters, names, state messages)",
                  "task runs (inputs, names, state messages)", "events", "the Prefect server's database",
                  "printed (stdout, stderr)"):
        assert c.control.found_in(places[place]), f"the control is not seen in {place}: that reader is blind"
    assert "control" in table.hits, f"the process table sampler did not see the control ({table.scans} scans)"
    assert {"pg_dump", "pg_restore"} <= table.programs, sorted(table.programs)
    assert platform.inbox.texts, "no notification reached the webhook: its URL was not used"

    leaks = {place: found(c.secrets, text) for place, text in places.items()}
    leaks["process table (/proc/*/cmdline)"] = sorted(set(table.hits) - {"control"})
    leaks = {place: names for place, names in leaks.items() if names}
    details = {place: excerpts(c.secrets, places[place]) for place in leaks if place in places}
    details["process table"] = [hit for name in sorted(table.hits) if name != "control" for hit in table.hits[name]]
    assert not leaks, f"canary secrets found: {leaks}; where: {json.dumps(details, indent=1)}"


@pytest.mark.slow
def test_a_custom_webhook_url_is_only_secret_in_the_blocks_secrets() -> None:
    """Prefect itself publishes every non-secret string field of a block in its ``prefect.block-document.created``
    event (the UI's event feed, readable by anyone who can read events): a ``CustomWebhookNotificationBlock``'s
    plain ``url`` included. Its credential belongs in the block's ``secrets``, templated into the URL, which the
    event masks; a ``SlackWebhook``'s URL is a secret field."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
    from prefect.types import SecretDict

    from tests.events import runbook_events

    plain, templated, slack = _canary("hook"), _canary("hook"), _canary("hook")
    ids = {
        "plain": CustomWebhookNotificationBlock(  # type: ignore[call-arg]
            name="oncall", url=f"http://127.0.0.1:9/hook/{plain.value}").save(f"plain-{uuid.uuid4().hex[:8]}"),
        "templated": CustomWebhookNotificationBlock(  # type: ignore[call-arg]
            name="oncall", url="http://127.0.0.1:9/hook/{{hook}}", secrets=SecretDict({"hook": templated.value}),
        ).save(f"templated-{uuid.uuid4().hex[:8]}"),
        "slack": SlackWebhook(url=f"https://hooks.slack.com/services/{slack.value}").save(  # type: ignore[arg-type]
            f"slack-{uuid.uuid4().hex[:8]}"),
    }
    published = {}
    for kind, block_id in ids.items():
        events = runbook_events(f"prefect.block-document.{block_id}", until=bool)
        assert [e.event for e in events] == ["prefect.block-document.created"], (kind, events)
        published[kind] = json.dumps(events[0].payload)
    assert plain.found_in(published["plain"])  # what an operator must not do
    assert "{{hook}}" in published["templated"] and not templated.found_in(published["templated"])
    assert not slack.found_in(published["slack"])


@pytest.mark.parametrize("variable, value", [
    ("RUNBOOKS_CLUSTER__DSN", "host=127.0.0.1 user=admin password='{secret}"),  # does not parse
    ("RUNBOOKS_DATABASES__TRADING_DB__DSN", "postgresql://admin:{secret}@127.0.0.1:99999/trading_db"),  # bad port
    ("RUNBOOKS_DATABASES", '{{"trading_db": {{"dsn": "postgresql://admin:{secret}@db/trading_db"'),  # not JSON
])
def test_a_settings_error_keeps_no_chain_to_the_secret_it_refused(variable: str, value: str,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """The error names the bad value without its password, and holds no chained exception that still has it
    (pydantic's and json's errors keep their input; ``from None`` only hides them from tracebacks)."""
    from runbooks.core.errors import ConfigurationError
    from runbooks.settings import load_settings

    secret = _canary("pg")
    monkeypatch.delenv("RUNBOOKS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no runbooks.toml here: the environment is the only source
    monkeypatch.setenv(variable, value.format(secret=secret.value))
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert not secret.found_in("".join(traceback.format_exception(info.value)) + repr(info.value.__dict__))
