"""The embedded default platform: PostgreSQL cluster + S3 server + simulator + Prefect server on loopback, and where
installed a Redis server (the memory/learning system) and a PM2-managed app.

``runbooks sandbox up`` starts it and writes a config pointing at it; ``down`` removes every process and file it
made. The tests use the same class through session fixtures.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from runbooks.adapters.cluster import PostgresCluster, free_port, refuse_closed_directory, socket_path_fits
from runbooks.core.errors import ConfigurationError
from runbooks.core.redact import redact_dsn
from runbooks.settings.markets import MarketSettings, seed_markets
from runbooks_sandbox import services
from runbooks_sandbox.seed import (
    SEED_BARS_TABLE,
    SEED_CHECKS,
    bar_feeds,
    catch_up_bars,
    create_database,
    feed_bars,
    seed,
)

DATABASE = "trading_db"
BUCKET = "runbooks-backups"
# The checkout this module belongs to: the sandbox's Python children (simulator, S3 server) run its code, not
# whatever copy the virtualenv has installed (a git worktree shares its virtualenv with the main checkout).
CHECKOUT = Path(__file__).resolve().parents[2]
S3_KEY_ID = "sandbox"
# What ``up`` (and the runbooks its config points at) make directly in the sandbox directory: ``down`` removes these
# and nothing else, so a file someone else put there survives it. ``state.json``, the record, goes last.
MADE_DIRS = ("postgres", "repository", "feed", "prefect", "logs", "state", "pitr", "drills", "redis", "pm2")
MADE_FILES = ("runbooks.toml", "runbooks-s3.toml", "notifications.log")
# How each child's command line reads (``_spawn``'s argv): a recorded pid whose process does not read so is no longer
# ours (the pid was reused), and is left alone.
CHILD_ARGV = {"s3": "-m runbooks_sandbox.s3server", "simulator": "-m runbooks_sandbox.simulator",
              "feeder": "-m runbooks_sandbox.feeder", "prefect": "-m prefect server start",
              "receiver": "-m runbooks_sandbox.receiver", "redis": "redis-server"}
# The sandbox's on-call: a custom-webhook block pointing at its receiver, named in its config's [notifications].
NOTIFICATION_BLOCK = "custom-webhook/sandbox-oncall"
NOTIFICATIONS_LOG = "notifications.log"


def parse_size(text: str) -> float:
    """'5MB', '1.5GB', '200' (MB) -> megabytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)[bB]?\s*", text)
    if not match:
        raise ValueError(f"size {text!r} is not like 5MB or 1GB")
    factor = {"": 1, "k": 0.001, "m": 1, "g": 1000, "t": 1_000_000}[match[2].lower()]
    return float(match[1]) * factor


class SandboxState(BaseModel):
    root: str
    created_at: datetime
    size_mb: float
    postgres_port: int
    superuser_password: str
    app_password: str
    s3_port: int | None = None
    s3_secret: str | None = None
    simulator_port: int | None = None
    simulator_token: str | None = None
    prefect_port: int | None = None
    receiver_port: int | None = None  # the notification receiver: only with a Prefect server (where its block lives)
    receiver_token: str | None = None
    pids: dict[str, int] = {}
    config_path: str
    s3_config_path: str | None = None
    seeded_rows: dict[str, int] = {}
    markets: dict[str, MarketSettings] = {}  # the sandbox's markets: its seeded history, feeder and config follow them
    feed_interval_seconds: float | None = None  # None: no feeder
    redis_port: int | None = None  # None: no redis-server on this machine
    redis_password: str | None = None
    redis_keys: int = 0
    agent_port: int | None = None  # the PM2-managed app; None: no Node.js or PM2 on this machine

    @property
    def feed_dir(self) -> Path:
        """The feeder's control directory: its plan, its last tick, and the flag that stops it."""
        return Path(self.root) / "feed"

    @property
    def s3_endpoint(self) -> str | None:
        return f"http://127.0.0.1:{self.s3_port}" if self.s3_port else None

    @property
    def simulator_url(self) -> str | None:
        return f"http://127.0.0.1:{self.simulator_port}" if self.simulator_port else None

    @property
    def prefect_api_url(self) -> str | None:
        return f"http://127.0.0.1:{self.prefect_port}/api" if self.prefect_port else None

    @property
    def receiver_endpoint(self) -> str | None:
        """The receiver's address, without the token: what status shows."""
        return f"http://127.0.0.1:{self.receiver_port}" if self.receiver_port else None

    @property
    def notifications_log(self) -> Path:
        return Path(self.root) / NOTIFICATIONS_LOG

    def cluster(self) -> PostgresCluster:
        """The sandbox's cluster: TCP for the runbooks, and a private Unix socket for pgBackRest (PITR) when the
        sandbox's path leaves room for one (a socket path holds at most 107 bytes)."""
        root = Path(self.root) / "postgres"
        sockets = root / "run"
        return PostgresCluster(root=root, port=self.postgres_port, superuser_password=self.superuser_password,
                               socket_directory=sockets if socket_path_fits(sockets, self.postgres_port) else None)


class NotASandbox(ConfigurationError):
    """``down`` was pointed at a directory this tool did not make (or at a link to one): nothing was stopped or
    removed."""


class ChildFailed(RuntimeError):
    """A process the sandbox started died (``returncode``) or never answered (None) while starting; ``log_tail``
    holds the end of its log, which ``down()`` removes with the rest."""

    def __init__(self, message: str, *, what: str, returncode: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.what = what
        self.returncode = returncode
        self.log_tail = log_tail


def _tail(log: Path, lines: int = 20) -> str:
    if not log.is_file():
        return ""
    return "\n".join(log.read_text(errors="replace")[-8000:].splitlines()[-lines:])


def _wait_http(url: str, *, timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until ``url`` answers; a child that exits meanwhile is reported at once (checked before every try)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ChildFailed(f"{what} exited with {proc.returncode} while starting", what=what,
                              returncode=proc.returncode, log_tail=_tail(log))
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ChildFailed(f"{what} did not answer at {url} within {timeout:.0f} s", what=what, returncode=None,
                      log_tail=_tail(log))


def _checks_toml(database: str) -> list[str]:
    lines = []
    for check in SEED_CHECKS:
        lines.append(f"[[databases.{database}.checks]]")
        lines += [f"{k} = {_toml_str(v) if isinstance(v, str) else v}" for k, v in check.items()]
        lines.append("")
    return lines


def _pitr_toml(cluster: PostgresCluster, root: Path) -> list[str]:
    """[pitr] for the sandbox's cluster: pgBackRest reaches it through its private Unix socket."""
    if cluster.socket_directory is None:
        return ["# No [pitr]: the sandbox's path is too long for a Unix socket (at most 107 bytes with",
                f"# '/postgres/run/.s.PGSQL.{cluster.port}'), and pgBackRest reaches a local cluster only through one.",
                "# For PITR, recreate the sandbox in a shorter directory ('runbooks sandbox up --dir ...').", ""]
    return ["# Point-in-time recovery (docs/runbooks/pitr.md) of the sandbox's cluster, through its private socket.",
            "[pitr]", 'stanza = "sandbox"', f"socket_directory = {_toml_str(str(cluster.socket_directory))}",
            f"work_dir = {_toml_str(str(root / 'pitr'))}", ""]


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_str(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # strings, numbers, booleans and lists of them are valid TOML as JSON writes them


def _markets_toml(markets: Mapping[str, MarketSettings]) -> list[str]:
    """[markets.*]: the calendars the sandbox's history, feeder and freshness tables follow (none: the defaults)."""
    if not markets:
        return []
    lines = ["# The sandbox's markets: its seeded history ends at each one's last close (now while open), and its",
             "# feeder writes bars only while a market is open (24/7 ones always).", ""]
    for name, market in sorted(markets.items()):
        lines.append(f"[markets.{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in market.model_dump(mode="json", exclude_defaults=True).items()]
        lines.append("")
    return lines


def _freshness_tables_toml(markets: Mapping[str, MarketSettings]) -> list[str]:
    """One [[freshness.tables]] per bars table, following its market; the seeds' table even without a feed."""
    feeds = {f.table: f.market for f in bar_feeds(markets)}
    feeds.setdefault(SEED_BARS_TABLE, "")
    lines: list[str] = []
    for table, market in sorted(feeds.items(), key=lambda item: item[0] != SEED_BARS_TABLE):
        lines += ["[[freshness.tables]]", f"database = {_toml_str(DATABASE)}", f"table = {_toml_str(table)}",
                  'loaded_at_field = "timestamp"', 'group_by = "symbol"', 'interval = "5m"', 'warn_after = "5m"',
                  'error_after = "10m"', 'kill_after = "60m"', "gates_trading = true", 'quality = "ohlcv"']
        lines += [f"market = {_toml_str(market)}"] if market else []
        lines.append("")
    return lines


def _write_private(path: Path, text: str) -> None:
    """Write a file that holds passwords, readable by its owner only from its first byte (``write_text`` then
    ``chmod`` leaves it world-readable in between under the usual umask 022)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)  # O_CREAT's mode applies only to a new file
        out.write(text)


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.given = root.absolute()  # as named, links unresolved: ``down`` refuses a link (it deletes)
        self.root = root.resolve()
        self.state_file = self.root / "state.json"

    # -- state ---------------------------------------------------------------------------------------------
    def load(self) -> SandboxState | None:
        if not self.state_file.is_file():
            return None
        return SandboxState.model_validate_json(self.state_file.read_text())

    def _save(self, state: SandboxState) -> None:
        _write_private(self.state_file, state.model_dump_json(indent=2))

    # -- lifecycle -----------------------------------------------------------------------------------------
    def up(self, *, size_mb: float = 5, s3: bool = True, simulator: bool = True, prefect: bool = True,
           markets: Mapping[str, MarketSettings] | None = None, feeder: bool = True, feed_interval: float = 300,
           notifications: bool = True, redis: bool = True, pm2: bool = True,
           progress: Any = print) -> SandboxState:
        """Start everything (idempotent: a running sandbox is returned as it is).

        With a Prefect server and ``notifications``, a webhook receiver stands in for on-call: the config's
        ``[notifications]`` names a block (NOTIFICATION_BLOCK) made on that server pointing at it, and every message
        lands in ``notifications.log``. Without a Prefect server there is no block to name, so no section either.

        ``markets`` (default: the seeds', USD/COP in COT and crypto 24/7) decide where each symbol's seeded history
        ends (its last close, or now while open) and when the feeder, a child process writing the missing bars
        every ``feed_interval`` seconds, ticks; ``feeder=False`` starts none (data then ages as the clock runs)."""
        existing = self.load()
        if existing is not None:
            if existing.cluster().is_running():
                dsn = existing.cluster().dsn(DATABASE)
                added = (sum(feed_bars(dsn, existing.markets, open_only=False).values()) if existing.markets
                         else catch_up_bars(dsn))
                if added:
                    progress(f"PostgreSQL: already running; {added} market-data bars added up to now")
                return existing
            self._teardown(self._own_record())  # a stopped sandbox of ours: start afresh
        closed_hint = "run from a directory it can enter, or pass --dir with one (e.g. under /srv or /var/tmp)."
        refuse_closed_directory(self.root, hint=closed_hint)  # before anything is made
        self.root.mkdir(parents=True, exist_ok=True)
        state = SandboxState(
            root=str(self.root), created_at=datetime.now(UTC), size_mb=size_mb, postgres_port=free_port(),
            superuser_password=secrets.token_urlsafe(18), app_password=secrets.token_urlsafe(18),
            config_path=str(self.root / "runbooks.toml"),
            markets=dict(seed_markets() if markets is None else markets),
        )
        self._save(state)
        try:
            refuse_closed_directory(self.root, hint=closed_hint)  # as made (a umask of 077 closes it)
            cluster = state.cluster()
            progress(f"PostgreSQL: initdb + start on 127.0.0.1:{state.postgres_port}")
            cluster.init()
            cluster.start()
            create_database(cluster.dsn(), dbname=DATABASE, app_password=state.app_password)
            progress(f"PostgreSQL: seeding {DATABASE!r} with ~{size_mb:g} MB")
            state.seeded_rows = seed(cluster.dsn(DATABASE), size_mb=size_mb, markets=state.markets)
            (self.root / "repository").mkdir(mode=0o700, exist_ok=True)  # backups are private
            if s3:
                state.s3_port, state.s3_secret = free_port(), secrets.token_urlsafe(18)
                progress(f"S3 (moto server): 127.0.0.1:{state.s3_port}")
                proc = self._spawn(state, "s3", [sys.executable, "-m", "runbooks_sandbox.s3server",
                                                 "--port", str(state.s3_port)])
                _wait_http(f"{state.s3_endpoint}/", timeout=60, what="moto S3 server", proc=proc,
                           log=self._log("s3"))
                self._create_bucket(state)
            if redis:
                self._start_redis(state, progress=progress)
            if pm2:
                self._start_agent(state, progress=progress)
            if feeder and bar_feeds(state.markets):
                self._start_feeder(state, cluster, interval=feed_interval, progress=progress)
            if simulator:
                state.simulator_port, state.simulator_token = free_port(), secrets.token_urlsafe(24)
                progress(f"Trading platform simulator: {state.simulator_url}")
                feed_env = {"SIMULATOR_FEED_DIR": str(state.feed_dir)} if state.feed_interval_seconds else {}
                proc = self._spawn(
                    state, "simulator",
                    [sys.executable, "-m", "runbooks_sandbox.simulator", "--port", str(state.simulator_port)],
                    env={"SIMULATOR_TOKEN": state.simulator_token, "SIMULATOR_DSN": cluster.dsn(DATABASE),
                         **feed_env})
                _wait_http(f"{state.simulator_url}/api/v1/health", timeout=60, what="simulator", proc=proc,
                           log=self._log("simulator"))
            if prefect:
                state.prefect_port = free_port()
                progress(f"Prefect server: http://127.0.0.1:{state.prefect_port} (UI and API)")
                home = self.root / "prefect"
                home.mkdir(mode=0o700, exist_ok=True)
                home.chmod(0o700)  # its database holds every run's parameters and logs: the owner's only
                proc = self._spawn(state, "prefect", [
                    sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                    "--port", str(state.prefect_port)],
                    env={"PREFECT_HOME": str(home),
                         "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
                         "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                         "PREFECT_UI_API_URL": f"{state.prefect_api_url}",
                         # The automations' messages link to the run through it (the server's `ui_url` filter).
                         "PREFECT_UI_URL": f"http://127.0.0.1:{state.prefect_port}"})
                _wait_http(f"{state.prefect_api_url}/health", timeout=120, what="Prefect server", proc=proc,
                           log=self._log("prefect"))
                if notifications:
                    self._start_receiver(state, progress=progress)
            self._write_configs(state)
            self._save(state)
            if state.receiver_port:
                self._create_notification_block(state, progress=progress)
        except BaseException:
            self._save(state)
            self._teardown(state)  # what this call made, by its own record in hand
            raise
        return state

    def _start_redis(self, state: SandboxState, *, progress: Any) -> None:
        """The memory/learning system: Debian's redis-server, seeded; skipped, and said, where it is not installed."""
        if not services.redis_available():
            progress("Redis: redis-server is not installed; the sandbox has no memory/learning system "
                     "(apt-get install redis-server, then sandbox down and up)")
            return
        state.redis_port, state.redis_password = free_port(), secrets.token_urlsafe(18)
        conf = services.write_redis_conf(self.root / "redis", port=state.redis_port, password=state.redis_password)
        progress(f"Redis (memory/learning system): 127.0.0.1:{state.redis_port}")
        self._spawn(state, "redis", ["redis-server", str(conf)])
        state.redis_keys = services.seed_redis(state.redis_port, state.redis_password)

    def _start_agent(self, state: SandboxState, *, progress: Any) -> None:
        """A small app under a PM2 daemon of the sandbox's own, where Node.js and PM2 are installed."""
        if not services.pm2_available():
            progress("PM2: node or pm2 is not installed; the sandbox has no PM2-managed app (npm install -g pm2)")
            return
        state.agent_port = free_port()
        self._save(state)  # before the daemon exists: a failed start is still torn down
        progress(f"PM2 app {services.PM2_APP!r}: http://127.0.0.1:{state.agent_port}/health")
        services.start_agent(self.root / "pm2", port=state.agent_port)

    def _log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def _start_receiver(self, state: SandboxState, *, progress: Any) -> None:
        """The notification receiver, on loopback; its token (the block's secret) goes by the environment."""
        state.receiver_port, state.receiver_token = free_port(), secrets.token_urlsafe(24)
        progress(f"Notification receiver: {state.receiver_endpoint} (every message lands in {state.notifications_log})")
        proc = self._spawn(state, "receiver", [
            sys.executable, "-m", "runbooks_sandbox.receiver", "--port", str(state.receiver_port),
            "--log", str(state.notifications_log)], env={"RECEIVER_TOKEN": state.receiver_token})
        _wait_http(f"{state.receiver_endpoint}/health", timeout=60, what="notification receiver", proc=proc,
                   log=self._log("receiver"))

    def _create_notification_block(self, state: SandboxState, *, progress: Any) -> None:
        """The block the config names, on the sandbox's server, made as 'runbooks notifications setup' makes one."""
        from runbooks.adapters.notification_blocks import KINDS, parse_secret_values, setup_block

        url = f"{state.receiver_endpoint}/hook/{state.receiver_token}"
        values = parse_secret_values(KINDS["custom-webhook"], url, source="the sandbox's receiver")
        done = setup_block(NOTIFICATION_BLOCK, values, api_url=state.prefect_api_url)
        progress(f"Notifications: {done.outcome} block {NOTIFICATION_BLOCK!r} -> the receiver; send a test with "
                 f"'runbooks notifications test', read {state.notifications_log}")

    def _start_feeder(self, state: SandboxState, cluster: PostgresCluster, *, interval: float,
                      progress: Any) -> None:
        """The market-data feeder, as the application role (the platform's writer); it is up once it has ticked."""
        from runbooks_sandbox.feeder import read_status, write_plan

        write_plan(state.feed_dir, state.markets)
        state.feed_interval_seconds = interval
        feeds = ", ".join(f"{f.market} -> {f.table}" for f in bar_feeds(state.markets))
        progress(f"Market-data feeder: every {interval:g} s ({feeds})")
        proc = self._spawn(state, "feeder", [
            sys.executable, "-m", "runbooks_sandbox.feeder", "--control-dir", str(state.feed_dir),
            "--interval", str(interval)],
            env={"FEEDER_DSN": cluster.dsn(DATABASE, "trading_user", state.app_password)})
        deadline = time.monotonic() + 60
        while read_status(state.feed_dir) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {proc.returncode}" if proc.returncode is not None else "did not tick within 60 s"
                raise ChildFailed(f"market-data feeder {why} while starting", what="feeder",
                                  returncode=proc.returncode, log_tail=_tail(self._log("feeder")))
            time.sleep(0.2)

    def feed(self, *, running: bool) -> bool:
        """Stop (a dead feed on demand) or resume the sandbox's market-data feeder; False when it has none."""
        from runbooks_sandbox.feeder import set_running

        state = self.load()
        if state is None or not state.feed_interval_seconds:
            return False
        set_running(state.feed_dir, running)
        return True

    def _spawn(self, state: SandboxState, name: str, argv: list[str], env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        # The log is the owner's only (a child's traceback may quote what it was given), and the child runs under
        # umask 077: what it creates (the Prefect server's SQLite database and its -wal/-shm files) is private too.
        log = os.fdopen(os.open(self._log(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        os.fchmod(log.fileno(), 0o600)
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), child_env.get("PYTHONPATH")]))
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env, start_new_session=True, cwd=self.root, umask=0o077)
        log.close()
        state.pids[name] = proc.pid
        self._save(state)
        return proc

    def _create_bucket(self, state: SandboxState) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=state.s3_endpoint, region_name="us-east-1",
                              aws_access_key_id=S3_KEY_ID, aws_secret_access_key=state.s3_secret)
        client.create_bucket(Bucket=BUCKET)

    def _write_configs(self, state: SandboxState) -> None:
        cluster = state.cluster()
        conf = cluster.datadir
        common = [
            "# Written by 'runbooks sandbox up': the embedded default platform. Secrets are throwaway.",
            "",
            f"state_dir = {_toml_str(str(self.root / 'state'))}",
            "",
            f"[databases.{DATABASE}]",
            f"dsn = {_toml_str(cluster.dsn(DATABASE))}",
            "",
            *_checks_toml(DATABASE),
            "[cluster]",
            'name = "sandbox"',
            f"dsn = {_toml_str(cluster.dsn('postgres'))}",
            f"config_files = [{_toml_str(str(conf / 'postgresql.conf'))}, {_toml_str(str(conf / 'pg_hba.conf'))}]",
            "",
            "[backup]",
            "stale_after_minutes = 15",
            "",
            "[backup.retention]",
            "daily = 7",
            "weekly = 4",
            "monthly = 6",
            "",
            *_markets_toml(state.markets),
            "# The USD/COP playbook's 'Data Source Down' (section 3.3): 5-minute bars (USD/COP, and each other",
            "# market's); pause after 10 minutes, kill switch after 60.",
            "[freshness]",
            'lookback = "6h"',
            f"platform_table = {_toml_str(SEED_BARS_TABLE)}",
            "",
            *_freshness_tables_toml(state.markets),
            "# A demo box: the health check averages CPU over 5 s (a real host keeps the 30 s default).",
            "[health]",
            "cpu_window_seconds = 5",
            "",
            "# The DR game-day: a throwaway cluster under the sandbox; the components of the incident response",
            "# playbook's RTO/RPO table are the defaults.",
            "[drill]",
            f"work_dir = {_toml_str(str(self.root / 'drills'))}",
            'backup_interval = "24h"',
            "",
            "# The pager playbook's \"Disk 90% Full\", confined to the sandbox: its own logs and work files, its"
            " backups, its database.",
            "[cleanup]",
            f"watch = [{_toml_str(str(self.root))}]",
            f"allowed_roots = [{_toml_str(str(self.root / 'logs'))}]",  # never the state dir: runs keep work there
            f"survey = [{_toml_str(str(self.root))}]",
            "",
            "[[cleanup.rules]]",
            'kind = "files"',
            'name = "rotated-logs"',
            'action = "compress"',
            f"roots = [{_toml_str(str(self.root / 'logs'))}]",
            'patterns = ["*.log.[0-9]", "*.log.[0-9][0-9]"]',
            'older_than = "1d"',
            "",
            "[[cleanup.rules]]",
            'kind = "files"',
            'name = "old-logs"',
            f"roots = [{_toml_str(str(self.root / 'logs'))}]",
            'patterns = ["*.log", "*.log.*"]',
            'older_than = "7d"',
            "",
            "[[cleanup.rules]]",
            'kind = "backups"',
            "",
            "[[cleanup.rules]]",
            'kind = "databases"',
            "",
        ]
        common += _pitr_toml(cluster, self.root)
        (self.root / "logs").mkdir(mode=0o700, exist_ok=True)
        if state.simulator_url:
            common += ["[drill.trading_api]", f"base_url = {_toml_str(state.simulator_url)}",
                       f"token = {_toml_str(state.simulator_token or '')}", ""]
            for section in ("trading_api", "inference_api"):
                common += [f"[{section}]", f"base_url = {_toml_str(state.simulator_url)}",
                           f"token = {_toml_str(state.simulator_token or '')}", ""]
        if state.redis_port:
            common += ["# The memory/learning system (seed 002: RTO 30 min, RPO 15 min): backed up with the databases,",
                       "# restored by redis-restore and by the DR drill.",
                       f"[redis.{services.REDIS_INSTANCE}]", f"port = {state.redis_port}",
                       f"password = {_toml_str(state.redis_password or '')}", ""]
        if state.agent_port:
            pm2_dir = self.root / "pm2"
            common += ["# A PM2-managed app: the health check reads it (pm2 jlist), restart-service restarts it.",
                       f"[services.pm2.{services.PM2_SERVICE}]", f"app = {_toml_str(services.PM2_APP)}",
                       f"ecosystem_file = {_toml_str(str(pm2_dir / 'ecosystem.config.js'))}",
                       f"pm2_home = {_toml_str(str(pm2_dir / 'home'))}",
                       f'verify_api = "{"trading_api" if state.simulator_url else "none"}"',
                       'escalation_severity = "P1"', ""]
        if state.prefect_api_url:
            common += ["[prefect]", f"api_url = {_toml_str(state.prefect_api_url)}", ""]
        if state.receiver_port:
            common += ["# On-call: every severity goes to the sandbox's webhook receiver, through a block 'sandbox up'",
                       f"# made on its Prefect server; each message is appended to {state.notifications_log}.",
                       "# Try: runbooks notifications test", "[notifications]",
                       f"block = {_toml_str(NOTIFICATION_BLOCK)}", ""]
        local = common + ["[repository]", f"url = {_toml_str((self.root / 'repository').as_uri())}", ""]
        self._write(Path(state.config_path), local)
        if state.s3_endpoint:
            state.s3_config_path = str(self.root / "runbooks-s3.toml")
            s3 = common + ["[repository]", f"url = {_toml_str(f's3://{BUCKET}/sandbox')}",
                           f"endpoint_url = {_toml_str(state.s3_endpoint)}", 'region = "us-east-1"',
                           f"access_key_id = {_toml_str(S3_KEY_ID)}",
                           f"secret_access_key = {_toml_str(state.s3_secret or '')}", 'sse = "AES256"', ""]
            self._write(Path(state.s3_config_path), s3)

    @staticmethod
    def _write(path: Path, lines: list[str]) -> None:
        _write_private(path, "\n".join(lines))

    def down(self) -> list[str]:
        """Stop every process the sandbox started and remove what it made. Safe to run twice (once the directory
        is gone; one that kept someone else's files is no longer a sandbox, and is refused).

        It decides from its own record only (``_own_record``), never from the directory's name: a directory that
        is not a sandbox this tool made, or a link to one, raises NotASandbox before anything is stopped or removed.
        Then it removes the entries ``up`` makes (MADE_DIRS, MADE_FILES, the children's logs, the record last) and
        the directory only if nothing else is left: what someone else put there is kept and reported."""
        if self.given.is_symlink():
            raise NotASandbox(f"{self.given} is not a sandbox this tool made (it is a symbolic link to "
                              f"{os.readlink(self.given)}); nothing was removed.",
                              hint="pass --dir with the sandbox directory itself, not a link to it.")
        if not self.root.exists():
            return []
        return self._teardown(self._own_record())

    def _teardown(self, state: SandboxState) -> list[str]:
        """Stop the processes ``state`` records and remove what the sandbox made (see ``down``)."""
        done: list[str] = []
        for name, pid in state.pids.items():
            if not _is_our_child(pid, name):
                done.append(f"left pid {pid} alone: it is no longer the sandbox's {name}")
            elif _terminate_group(pid):
                done.append(f"stopped {name} (pid {pid})")
        cluster = state.cluster()
        if cluster.is_running():
            cluster.stop()
            done.append("stopped PostgreSQL")
        drills = self.root / "drills"
        for kept in sorted(drills.glob("*/cluster")) if drills.is_dir() and not drills.is_symlink() else []:
            if kept.is_symlink() or kept.parent.is_symlink():
                continue  # a link leads out of the sandbox: not a cluster it made
            drill = PostgresCluster(root=kept, port=0, superuser_password="")  # kept for inspection by a drill
            if drill.is_running():
                drill.stop()
                done.append(f"stopped the drill cluster in {kept.parent}")
        if state.agent_port is not None and services.stop_pm2(self.root / "pm2"):
            done.append("stopped the sandbox's PM2 daemon")
        logs = {f"{name}.log" for name in (*CHILD_ARGV, *state.pids)}
        for name in (*MADE_DIRS, *MADE_FILES, *sorted(logs), self.state_file.name):
            _remove_entry(self.root / name)
        left = sorted(entry.name for entry in self.root.iterdir()) if self.root.is_dir() else []
        if left:
            done.append(f"kept {self.root}: it holds {len(left)} entries the sandbox did not make "
                        f"({', '.join(left[:10])}{', …' if len(left) > 10 else ''}); remove them yourself")
        elif self.root.is_dir():
            self.root.rmdir()
            done.append(f"removed {self.root}")
        return done

    def _own_record(self) -> SandboxState:
        """The sandbox's record, ``state.json`` as ``up`` wrote it (a regular file, ours, 0600, naming this very
        directory), or NotASandbox: a directory's name or contents someone else can write never decide a delete."""
        hint = ("pass --dir with the directory 'runbooks sandbox up' made (default ./.sandbox); remove anything else "
                "yourself.")

        def refused(why: str) -> NotASandbox:
            return NotASandbox(f"{self.given} is not a sandbox this tool made ({why}); nothing was removed.",
                               hint=hint)

        try:
            fd = os.open(self.state_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise refused("no state record") from None
        except OSError:
            raise refused("its state.json is not a file this tool wrote") from None
        with os.fdopen(fd, "rb") as record:
            info = os.fstat(record.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) != 0o600:
                raise refused("its state.json is not a private file of yours as 'up' writes it")
            text = record.read(1_000_000)
        try:
            state = SandboxState.model_validate_json(text)
        except ValueError:
            raise refused("its state.json is not a sandbox state record") from None
        if state.root != str(self.root):
            raise refused(f"its state record names another directory, {state.root}")
        return state

    def status(self) -> dict[str, Any]:
        """Endpoints with secrets redacted, and whether each component answers."""
        state = self.load()
        if state is None:
            return {"running": False, "root": str(self.root)}
        cluster = state.cluster()

        def alive(url: str | None) -> bool | None:
            if url is None:
                return None
            try:
                return httpx.get(url, timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        return {
            "running": cluster.is_running(),
            "root": state.root,
            "config": state.config_path,
            "config_s3": state.s3_config_path,
            "size_mb": state.size_mb,
            "postgres": {"up": cluster.is_running(), "port": state.postgres_port,
                         "dsns": {DATABASE: redact_dsn(cluster.dsn(DATABASE)),
                                  "postgres": redact_dsn(cluster.dsn("postgres")),
                                  "app_role": redact_dsn(cluster.dsn(DATABASE, "trading_user", state.app_password))},
                         "data": str(cluster.datadir)},
            "repository": {"local": (self.root / "repository").as_uri(),
                           "s3": {"endpoint_url": state.s3_endpoint, "bucket": BUCKET, "prefix": "sandbox",
                                  "access_key_id": S3_KEY_ID, "up": alive(f"{state.s3_endpoint}/")}
                           if state.s3_endpoint else None},
            "simulator": {"url": state.simulator_url,
                          "up": alive(f"{state.simulator_url}/api/v1/health" if state.simulator_url else None)},
            "prefect": {"api_url": state.prefect_api_url,
                        "ui": state.prefect_api_url.removesuffix("/api") if state.prefect_api_url else None,
                        "up": alive(f"{state.prefect_api_url}/health" if state.prefect_api_url else None)},
            "notifications": self._notifications_status(state, alive),
            "feed": self._feed_status(state),
            "redis": {"endpoint": f"redis://127.0.0.1:{state.redis_port}", "instance": services.REDIS_INSTANCE,
                      "up": services.redis_answers(state.redis_port, state.redis_password or "")}
            if state.redis_port else None,
            "pm2": {"app": services.PM2_APP, "url": f"http://127.0.0.1:{state.agent_port}/health",
                    "up": alive(f"http://127.0.0.1:{state.agent_port}/health")} if state.agent_port else None,
        }

    @staticmethod
    def _notifications_status(state: SandboxState, alive: Any) -> dict[str, Any] | None:
        """The receiver (its address without the token), the block pointing at it, and the log pages land in."""
        from runbooks_sandbox.receiver import count_messages

        if not state.receiver_endpoint:
            return None
        return {"receiver": state.receiver_endpoint, "up": alive(f"{state.receiver_endpoint}/health"),
                "block": NOTIFICATION_BLOCK, "log": str(state.notifications_log),
                "messages": count_messages(state.notifications_log)}

    @staticmethod
    def _feed_status(state: SandboxState) -> dict[str, Any]:
        """The feeder's last tick and each market's state now: "market closed" at night, ticking at 10:00 COT."""
        from runbooks_sandbox.feeder import is_running, read_status

        now = datetime.now(UTC)
        markets = {name: market.calendar(name).status(now).as_dict() for name, market in sorted(state.markets.items())}
        if not state.feed_interval_seconds:
            return {"feeder": False, "markets": markets}
        last = read_status(state.feed_dir)
        return {"feeder": True, "running": is_running(state.feed_dir), "interval_seconds": state.feed_interval_seconds,
                "last_tick_at": last.at.isoformat() if last else None,
                "bars_written": last.written_total if last else 0, "markets": markets}


def _remove_entry(path: Path) -> None:
    """Remove one entry the sandbox made: a directory's tree (``rmtree`` never follows a link inside it), or a
    file or link itself (never what a link points at)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_our_child(pid: int, name: str) -> bool:
    """Whether the recorded ``pid`` still leads the process group ``_spawn`` started for ``name``, its command line
    reading as ours. A leader that is gone (or a zombie) is ours too: Linux never hands out a pid while a group still
    bears it as its id, so ``_terminate_group`` stops only what is left of our group. A reused pid is not ours."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if fields[0] in ("Z", "X"):
        return True
    line = " ".join(part.decode(errors="replace") for part in argv)
    return int(fields[2]) == pid and CHILD_ARGV.get(name, "\0") in line


def _terminate_group(pid: int, timeout: float = 10) -> bool:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True
