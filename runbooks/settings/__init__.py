"""The platform inventory: one typed settings object, loaded once per process.

Sources, highest priority first: keyword arguments, environment variables (``RUNBOOKS_`` prefix, ``__`` between
levels, e.g. ``RUNBOOKS_DATABASES__TRADING_DB__PASSWORD``), then the TOML file named by ``RUNBOOKS_CONFIG``
(default ``./runbooks.toml``). Secrets are ``SecretStr`` and may instead name a Prefect Secret block
(``*_block`` fields); they are resolved only when a connection is made.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
import typing
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlparse

from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from runbooks.core import protected_paths
from runbooks.core.errors import ConfigurationError
from runbooks.core.market_time import MarketCalendar
from runbooks.core.redact import redact_dsn, register_secret
from runbooks.settings.markets import MarketSettings, seed_markets

DEFAULT_CONFIG = "runbooks.toml"
SANDBOX_DIR = ".sandbox"
ENV_PREFIX = "RUNBOOKS_"
ENV_DELIMITER = "__"


def env_variable(*path: str) -> str:
    """The environment variable that sets the setting at ``path``, e.g. ``env_variable("cluster", "password")``
    is ``RUNBOOKS_CLUSTER__PASSWORD`` and ``env_variable("databases", "trading_db", "password")`` is
    ``RUNBOOKS_DATABASES__TRADING_DB__PASSWORD`` (names are matched case-insensitively)."""
    return ENV_PREFIX + ENV_DELIMITER.join(path).upper()


def validate_name(name: str, *, what: str = "database") -> str:
    """``name`` if it can be one segment of a repository path (a database or cluster name from the inventory or
    the command line), else ConfigurationError: empty, ``/`` or ``\\``, a leading ``.`` (``..``, hidden
    entries), or a control character would let a name reach outside its own directory or garble a terminal."""
    problem = None
    if not name:
        problem = "is empty"
    elif not _utf8(name):
        problem = "is not valid UTF-8 text"
    elif len(name.encode()) > 63:
        problem = "is longer than 63 bytes (PostgreSQL's limit for a name)"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name.startswith("."):
        problem = "starts with '.'"
    elif any(unicodedata.category(ch) == "Cc" for ch in name):
        problem = "contains a control character"
    if problem:
        raise ConfigurationError(f"{what} name {name[:80]!r} {problem}: it cannot be used as a repository path.",
                                 hint=f"use the {what}'s name as the inventory lists it, e.g. 'trading_db'.")
    return name


def _utf8(text: str) -> bool:
    """False for a lone surrogate (undecodable bytes from the environment): no file system, S3 key or PostgreSQL
    name can hold it."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _name_in_inventory(name: str, info: ValidationInfo) -> str:
    try:
        return validate_name(name, what="cluster" if info.field_name == "name" else "database")
    except ConfigurationError as exc:
        raise ValueError(exc.message) from None


InventoryName = Annotated[str, AfterValidator(_name_in_inventory)]


def _check_dsn(value: SecretStr | None) -> SecretStr | None:
    """A DSN libpq can parse whose ports are numbers (libpq itself accepts ``port=abc`` until it connects)."""
    if value is None:
        return None
    dsn = value.get_secret_value()
    if "\x00" in dsn:  # libpq reads a DSN up to its first NUL: what is checked here would not be what connects
        raise ValueError("the connection string contains a NUL byte")
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        raise ValueError(f"not a valid PostgreSQL connection string: {redact_dsn(dsn)}") from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"port {port!r} in {redact_dsn(dsn)} is not a number from 1 to 65535")
    return value


def _check_http_url(url: str | None) -> str | None:
    if url is None:
        return None
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        raise ValueError(f"URL {url!r} contains a space or a control character")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"URL {url!r} must look like http://host:port")
    try:
        parsed.port  # noqa: B018 - raises on a malformed or out-of-range port
    except ValueError:
        raise ValueError(f"URL {url!r} has a port that is not a number from 0 to 65535") from None
    return url


def _no_nul(path: Path) -> Path:
    """Every OS call refuses a path with a NUL byte (``ValueError: embedded null byte``, a traceback mid-run)."""
    if "\x00" in str(path):
        raise ValueError(f"path {str(path)!r} contains a NUL byte")
    if not _utf8(str(path)):
        raise ValueError(f"path {str(path).encode('utf-8', 'backslashreplace').decode()!r} is not valid UTF-8")
    return path


OsPath = Annotated[Path, AfterValidator(_no_nul)]


def _absolute_os_path(path: Path) -> Path:
    """``~`` expanded; a relative path is refused: it would mean a different directory for every worker, service
    and shell that loads the same settings."""
    path = _no_nul(path).expanduser()
    if not path.is_absolute():
        raise ValueError(f"path {str(path)!r} must be absolute (a worker's working directory is not the config's)")
    return path


AbsoluteOsPath = Annotated[Path, AfterValidator(_absolute_os_path)]


def config_path() -> Path:
    """The TOML file every command reads: ``$RUNBOOKS_CONFIG``, else ``./runbooks.toml``, else the config of a
    sandbox started in this directory (``./.sandbox/runbooks.toml``, the embedded default)."""
    if "RUNBOOKS_CONFIG" in os.environ:
        return Path(os.environ["RUNBOOKS_CONFIG"]).expanduser()
    local = Path(DEFAULT_CONFIG)
    sandbox = Path(SANDBOX_DIR) / DEFAULT_CONFIG
    return sandbox if not local.is_file() and sandbox.is_file() else local


def resolve_secret(value: SecretStr | None, block: str | None) -> str | None:
    """The secret's plain value, from the setting itself or from a Prefect Secret block; registered for scrubbing
    the moment it is read."""
    if value is not None:
        register_secret(value.get_secret_value())
        return value.get_secret_value()
    if block:
        from prefect.blocks.system import Secret

        try:
            secret = cast(Secret, Secret.load(block))  # sync in a sync context
            plain = str(secret.get())
        except ValueError as exc:
            raise ConfigurationError(
                f"Prefect Secret block {block!r} could not be loaded.",
                hint=f"create it with 'prefect block create secret' or set the value in the environment ({exc}).",
            ) from None
        register_secret(plain)
        return plain
    return None


class IntegrityCheck(BaseModel):
    """A named SQL check run on a restored database. The schema is the user's: checks are configuration (the
    sandbox writes the seeds' data-corruption checks, seed 002, as its defaults)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="what the check looks for, as the report shows it")
    sql: str = Field(min_length=1, description="a read-only query; its first column of its first row is compared")
    expect: int | str | None = Field(default=None, description="the value that means healthy (e.g. 0 rows); "
                                     "unset: the check only reports its first rows")


class DatabaseSettings(BaseModel):
    """One database of the platform. The DSN may carry the password; ``password`` wins if both are set."""

    model_config = ConfigDict(extra="forbid")

    dsn: SecretStr = Field(description="libpq URL or key=value connection string")
    password: SecretStr | None = Field(default=None, description="overrides any password in the DSN")
    password_block: str | None = Field(default=None, description="name of a Prefect Secret block")
    checks: list[IntegrityCheck] = Field(default_factory=list, description="integrity checks after a restore "
                                         "(reported; row counts against the manifest are the gate)")

    _dsn = field_validator("dsn")(_check_dsn)

    def conninfo(self) -> dict[str, Any]:
        """Connection parameters with the password resolved (plain values: never log this)."""
        params = conninfo_to_dict(self.dsn.get_secret_value())
        password = resolve_secret(self.password, self.password_block)
        if password is not None:
            params["password"] = password
        register_secret(str(params.get("password") or ""))
        return params

    def safe_dsn(self) -> str:
        return redact_dsn(self.dsn.get_secret_value())


class RepositorySettings(BaseModel):
    """Where backups live: ``file:///abs/path`` or ``s3://bucket/prefix``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(default="file:///var/backups/runbooks", description="file:///path or s3://bucket/prefix")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint for MinIO/Ceph; None for AWS")
    region: str | None = Field(default=None)
    sse: Literal["AES256", "aws:kms"] | None = Field(default=None, description="server-side encryption")
    sse_kms_key_id: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    secret_access_key_block: str | None = None
    part_size_mb: int = Field(default=16, ge=5, le=512, description="S3 multipart part size (grows for huge dumps)")
    max_concurrency: int = Field(default=2, ge=1, le=16, description="parallel part uploads")

    _endpoint = field_validator("endpoint_url")(_check_http_url)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if any(unicodedata.category(ch) == "Cc" for ch in url):
            raise ValueError(f"repository URL {url!r} contains a control character")
        parsed = urlparse(url)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
                raise ValueError(f"repository URL {url!r} must be file:///absolute/path")
        elif parsed.scheme == "s3":
            if not parsed.netloc:
                raise ValueError(f"repository URL {url!r} has no bucket: use s3://bucket/prefix")
        else:
            raise ValueError(f"repository URL {url!r} must start with file:/// or s3://")
        return url


class RetentionPolicy(BaseModel):
    """Grandfather-father-son: the newest backup of each of the last N days, M ISO weeks, K months."""

    model_config = ConfigDict(extra="forbid")

    daily: int = Field(default=7, ge=0, le=3660)
    weekly: int = Field(default=4, ge=0, le=520)
    monthly: int = Field(default=6, ge=0, le=240)


class ClusterSettings(BaseModel):
    """Cluster-wide objects backed up beside the databases: roles (globals) and configuration files."""

    model_config = ConfigDict(extra="forbid")

    name: InventoryName = Field(default="main", pattern=r"^[A-Za-z0-9_.-]+$")
    dsn: SecretStr | None = Field(default=None, description="superuser DSN for pg_dumpall --globals-only")
    password: SecretStr | None = None
    password_block: str | None = None
    config_files: list[OsPath] = Field(default_factory=list, description="files archived (tar + zstd), by "
                                     "absolute path: a restore compares each with the file at that path")

    _dsn = field_validator("dsn")(_check_dsn)

    @field_validator("config_files")
    @classmethod
    def _absolute(cls, files: list[Path]) -> list[Path]:
        for path in files:
            if not path.expanduser().is_absolute():
                raise ValueError(f"config file {str(path)!r} must be an absolute path (a worker's working "
                                 "directory is not the config's)")
        return [p.expanduser() for p in files]

    def database(self) -> DatabaseSettings | None:
        if self.dsn is None:
            return None
        return DatabaseSettings(dsn=self.dsn, password=self.password, password_block=self.password_block)


class BackupSettings(BaseModel):
    """How backups are made and kept."""

    model_config = ConfigDict(extra="forbid")

    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    compression_level: int = Field(default=3, ge=1, le=19)
    compression_threads: int = Field(default=2, ge=0, le=64, description="zstd worker threads (0: inline)")
    stale_after_minutes: int = Field(
        default=15, ge=1, le=10080, description="an unfinished backup whose writer sent no heartbeat for this long "
        "(any host) is a leftover; the writer beats five times per period, at most every minute"
    )


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/runbooks``, else ``~/.local/state/runbooks`` (the XDG base directory default)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "runbooks"


class RestoreSettings(BaseModel):
    """Where a restore works on this host."""

    model_config = ConfigDict(extra="forbid")

    work_dir: AbsoluteOsPath | None = Field(default=None, description="where a dump is fetched before pg_restore "
                                            "-j, each run in a 0700 directory of its own that the next run sweeps "
                                            "if the run was killed; None: <state_dir>/work")
    server_disk_reserve_percent: float = Field(
        default=5.0, ge=0, le=100, description="free space (percent of the server's data disk) that must remain "
        "after a restored copy is added; checked before any work when the server is local")


class ApiSettings(BaseModel):
    """An HTTP API of the platform (trading, inference)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="e.g. http://trading-api:8000")
    token: SecretStr | None = Field(default=None, description="bearer token")
    token_block: str | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    retry_budget_seconds: float = Field(default=30.0, gt=0, le=3600, description="a call, retries included, gives "
                                        "up after this long: each attempt waits timeout_seconds at most, and never "
                                        "past it (a frozen API is reported within it; trading API tasks)")

    _base_url = field_validator("base_url")(_check_http_url)

    def bearer(self) -> str | None:
        return resolve_secret(self.token, self.token_block)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)\s*$")
_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
            "d": 86400, "day": 86400}


def _span(count: Any, unit: int) -> timedelta:
    """``count`` units as a timedelta; a count that is no number, NaN or beyond timedelta's range (999,999,999 days)
    is a ValueError (pydantic reports only those as bad input, an OverflowError would escape as a traceback)."""
    try:
        return timedelta(seconds=float(count) * unit)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{count!r} is not a duration: give a number of seconds, minutes, hours or days up to "
                         "999,999,999 days, e.g. '10m'") from None


def _duration(value: Any) -> Any:
    """``"10m"``, ``"90s"``, ``"2h"``, ``"1d"``, or dbt's ``{count = 10, period = "minute"}``; anything else is left
    to pydantic (seconds as a number, ISO 8601 ``PT10M``)."""
    if isinstance(value, bool):  # pydantic reads true as 1 s: 'error_after = true' would pause trading at once
        raise ValueError("must be a duration such as '10m', not true or false")
    if isinstance(value, str) and value.strip().startswith("-"):
        raise ValueError("must not be negative, e.g. '0m' or '10m'")
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return _span(match[1], _PERIODS[match[2]])
    if isinstance(value, Mapping) and set(value) == {"count", "period"}:
        period = str(value["period"]).rstrip("s")
        if period not in _PERIODS:
            raise ValueError(f"period {value['period']!r} must be second, minute, hour or day")
        return _span(value["count"], _PERIODS[period])
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be a positive duration, e.g. '10m'")
    return value


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative, e.g. '0m' or '10m'")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]
Objective = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_not_negative)]  # an RPO may be 0


def _identifier(name: str | None) -> str | None:
    """A name PostgreSQL would keep as written: longer than 63 bytes it would silently be cut to another name."""
    if name is None:
        return None
    if not name or len(name.encode()) > 63:
        raise ValueError(f"{name[:80]!r} is not a PostgreSQL name: 1 to 63 bytes")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise ValueError(f"{name[:80]!r} contains a control character")
    return name


Identifier = Annotated[str, AfterValidator(_identifier)]


class OhlcvColumns(BaseModel):
    """Column names of an OHLCV bar table (the seeds' names by default)."""

    model_config = ConfigDict(extra="forbid")

    symbol: Identifier = "symbol"
    open: Identifier = "open"
    high: Identifier = "high"
    low: Identifier = "low"
    close: Identifier = "close"
    volume: Identifier = "volume"


class MonitoredTable(BaseModel):
    """One table whose freshness gates (or only informs) trading, declared like a dbt source's freshness.

    ``filter`` and ``loaded_at_expression`` are SQL written by the operator (as in dbt); every name is quoted as
    an identifier."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    database: InventoryName = Field(default="trading_db", description="the inventory database holding the table")
    schema_: Identifier = Field(default="public", alias="schema")
    table: Identifier
    label: str | None = Field(default=None, max_length=200, description="how the report names it (default: table)")
    loaded_at_field: Identifier | None = Field(default=None, description="timestamp column whose newest "
                                        "value is the data's age (default 'timestamp' unless an expression is set)")
    loaded_at_expression: str | None = Field(default=None, max_length=2000,
                                             description="SQL expression instead of loaded_at_field")
    filter: str | None = Field(default=None, max_length=2000, description="SQL condition: only these rows count")
    group_by: Identifier | None = Field(default=None,
                                 description="column: freshness per value (per symbol), the stalest one counts")
    group_window: Duration = Field(default=timedelta(days=1),
                                   description="groups seen within this window are expected to keep ticking")
    expected_groups: list[str] = Field(default_factory=list, description="groups that must be present "
                                       "(a missing one is reported as stale)")
    warn_after: Duration | None = Field(default=timedelta(minutes=5), description="older: reported as a warning")
    error_after: Duration = Field(default=timedelta(minutes=10), description="older: trading is paused (gating)")
    kill_after: Duration | None = Field(default=timedelta(minutes=60),
                                        description="older: kill switch and escalation (gating); None: pause only")
    interval: Duration | None = Field(default=None, description="expected spacing of rows (bars): enables the "
                                      "gap check and the volume comparison")
    gates_trading: bool = Field(default=True, description="stale or failing data pauses trading")
    market: str | None = Field(default=None, description="the [markets] entry whose sessions this data follows: "
                               "its age counts open-market time only, and nothing acts while that market is "
                               "closed; None: wall-clock age, always watched")
    open_grace: Duration | None = Field(default=None, description="after the market opens, how long the first row "
                                        "may take before the feed counts as not started; None: one interval plus "
                                        "5 minutes (5 minutes without an interval)")
    quality: Literal["ohlcv"] | None = Field(default=None, description="data-quality suite run on the recent window")
    columns: OhlcvColumns = Field(default_factory=OhlcvColumns)

    @property
    def key(self) -> str:
        return self.label or (self.table if self.schema_ == "public" else f"{self.schema_}.{self.table}")

    @property
    def grace(self) -> timedelta:
        """How long after an open the first row may take."""
        if self.open_grace is not None:
            return self.open_grace
        return (self.interval or timedelta(0)) + timedelta(minutes=5)

    @model_validator(mode="after")
    def _consistent(self) -> MonitoredTable:
        if self.loaded_at_field is not None and self.loaded_at_expression is not None:
            raise ValueError("set loaded_at_field or loaded_at_expression, not both")
        if self.loaded_at_expression is None and self.loaded_at_field is None:
            self.loaded_at_field = "timestamp"
        if self.kill_after is not None and self.kill_after <= self.error_after:
            raise ValueError("kill_after must be longer than error_after")
        if self.warn_after is not None and self.warn_after > self.error_after:
            raise ValueError("warn_after must not be longer than error_after")
        if self.quality == "ohlcv" and self.loaded_at_field is None:
            raise ValueError("the ohlcv suite needs loaded_at_field (the bar timestamp column)")
        return self


def _seed_tables() -> list[MonitoredTable]:
    """Seed 004 section 3.3: 5-minute USD/COP bars, stale after 10 minutes, kill switch after an hour."""
    return [MonitoredTable(table="ohlcv_usdcop_5m", loaded_at_field="timestamp", group_by="symbol",
                           interval=timedelta(minutes=5), quality="ohlcv", market="usd_cop")]


class FreshnessSettings(BaseModel):
    """The data-freshness runbook: what it watches and how it compares."""

    model_config = ConfigDict(extra="forbid")

    tables: list[MonitoredTable] = Field(default_factory=_seed_tables)
    lookback: Duration = Field(default=timedelta(hours=6), description="the recent window the quality suites read")
    platform_table: str | None = Field(default="ohlcv_usdcop_5m", description="the monitored table (label) "
                                       "GET /api/v1/data/status describes; None: do not compare")
    disagreement_tolerance: Duration = Field(default=timedelta(minutes=2), description="how far the platform's "
                                             "staleness may differ from the database's before it is reported")
    volume_history_days: int = Field(default=7, ge=1, le=90, description="previous sessions (days, for a table "
                                     "without a market) whose same interval is compared")
    volume_min_history: int = Field(default=3, ge=1, le=90, description="fewer non-empty days: no verdict")
    volume_max_drop: float = Field(default=0.5, gt=0, lt=1, description="flag a count below (1 - this) x median")
    volume_sigmas: float = Field(default=3.0, ge=0, le=100, description="... and below median - this x spread")
    statement_timeout_seconds: float = Field(default=30, gt=0, le=3600)

    @field_validator("tables")
    @classmethod
    def _unique_keys(cls, tables: list[MonitoredTable]) -> list[MonitoredTable]:
        keys = [t.key for t in tables]
        if dupes := sorted({k for k in keys if keys.count(k) > 1}):
            raise ValueError(f"monitored tables {dupes} are listed twice: give each a distinct label")
        return tables


def _absolute_path(path: Path) -> Path:
    """An absolute, normalised path with no ``..``: a root is compared with the allowlist as written."""
    text = str(path)
    if "\x00" in text:
        raise ValueError("path contains a NUL byte")
    if not _utf8(text):
        raise ValueError(f"path {text.encode('utf-8', 'backslashreplace').decode()!r} is not valid UTF-8")
    if not path.is_absolute():
        raise ValueError(f"{text!r} is not an absolute path (a worker's working directory is not the config's)")
    if ".." in path.parts:
        raise ValueError(f"{text!r} contains '..': name the directory itself")
    return Path(os.path.normpath(text))


AbsolutePath = Annotated[Path, AfterValidator(_absolute_path)]
class HealthSettings(BaseModel):
    """Seed 001's performance baseline (normal range / alert threshold) and what its health-check script looks at."""

    model_config = ConfigDict(extra="forbid")

    disk_paths: list[AbsoluteOsPath] = Field(default_factory=lambda: [Path("/"), Path("/var"), Path("/tmp")],
                                   description="filesystems whose usage is checked (the script's df filter)")
    disk_warn_percent: float = Field(default=85, gt=0, le=100)
    disk_alert_percent: float = Field(default=90, gt=0, le=100)
    memory_warn_percent: float = Field(default=85, gt=0, le=100)
    memory_alert_percent: float = Field(default=90, gt=0, le=100)
    cpu_warn_percent: float = Field(default=70, gt=0, le=100)
    cpu_alert_percent: float = Field(default=85, gt=0, le=100)
    cpu_window_seconds: float = Field(default=30, ge=0.5, le=600, description="CPU is graded on its average over "
                                      "this window (6 samples), not on one instant: the baseline means sustained")
    api_warn_seconds: float = Field(default=0.5, gt=0, description="response time (seed: p95 < 500 ms)")
    api_alert_seconds: float = Field(default=2.0, gt=0)
    connections_warn_percent: float = Field(default=80, gt=0, le=100, description="of max_connections")
    connections_alert_percent: float = Field(default=90, gt=0, le=100)
    error_logs: list[AbsolutePath] = Field(default_factory=list, description="application logs whose recent "
                                           "lines are searched for errors (seed 001: logs/combined.log)")
    error_pattern: str = Field(default=r"(error|unauthorized|failed)", min_length=1, max_length=500,
                               description="seed 001's grep -E, matched case-insensitively")
    error_tail_lines: int = Field(default=10_000, ge=1, le=10_000_000, description="recent = the last N lines")
    errors_warn: int = Field(default=10, ge=0, description="matching recent lines at which a log warns")
    errors_alert: int = Field(default=100, ge=0, description="... and alerts")

    @field_validator("error_pattern")
    @classmethod
    def _regex(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"error_pattern {pattern!r} is not a regular expression: {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _ordered(self) -> HealthSettings:
        for name in ("disk", "memory", "cpu", "connections"):
            if getattr(self, f"{name}_warn_percent") > getattr(self, f"{name}_alert_percent"):
                raise ValueError(f"{name}_warn_percent must not exceed {name}_alert_percent")
        if self.api_warn_seconds > self.api_alert_seconds:
            raise ValueError("api_warn_seconds must not exceed api_alert_seconds")
        if self.errors_warn > self.errors_alert:
            raise ValueError("errors_warn must not exceed errors_alert")
        return self


class DrillComponent(BaseModel):
    """One row of seed 002's RTO/RPO table and what backs it up. The schema is the user's: the seed's table names
    are only the defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    rto: Objective = Field(description="recovery time objective: drill start to this component validated")
    rpo: Objective = Field(description="recovery point objective: data a disaster may lose")
    databases: list[InventoryName] = Field(default_factory=list, description="whole databases backing it")
    tables: list[str] = Field(default_factory=list, description="'database.table' or 'database.schema.table'")
    config_files: bool = Field(default=False, description="the cluster's configuration files back it")

    @field_validator("tables")
    @classmethod
    def _qualified(cls, tables: list[str]) -> list[str]:
        for name in tables:
            if not 2 <= len(name.split(".")) <= 3 or not all(name.split(".")):
                raise ValueError(f"table {name!r} must be 'database.table' or 'database.schema.table'")
        return tables

    @property
    def covered(self) -> bool:
        return bool(self.databases or self.tables or self.config_files)


def _seed_components() -> list[DrillComponent]:
    """Seed 002, "System Components RTO/RPO", backed by the sandbox schema (the seeds' tables in trading_db).
    The memory/learning system (Redis) and monitoring/logs have no backup here: reported "not covered"."""
    m = timedelta(minutes=1)
    return [
        DrillComponent(name="Trading Engine", rto=5 * m, rpo=0 * m,
                       tables=["trading_db.public.trades", "trading_db.public.risk_state"]),
        DrillComponent(name="Position Database", rto=10 * m, rpo=1 * m, tables=["trading_db.public.positions"]),
        DrillComponent(name="Configuration", rto=15 * m, rpo=5 * m, config_files=True,
                       tables=["trading_db.public.system_config"]),
        DrillComponent(name="Historical Data", rto=60 * m, rpo=60 * m,
                       tables=["trading_db.public.ohlcv_usdcop_5m", "trading_db.public.trades_history"]),
        DrillComponent(name="Memory/Learning System", rto=30 * m, rpo=15 * m),
        DrillComponent(name="Monitoring/Logs", rto=120 * m, rpo=60 * m),
    ]


class DrillSettings(BaseModel):
    """The DR game-day (seed 001 quarterly exercise): where the clean cluster comes from and what it is scored
    against (seed 002's table)."""

    model_config = ConfigDict(extra="forbid")

    target_dsn: SecretStr | None = Field(default=None, description="superuser DSN of an existing EMPTY server to "
                                         "restore into; None: a throwaway initdb cluster on a free loopback port")
    target_password: SecretStr | None = None
    target_password_block: str | None = None
    work_dir: AbsoluteOsPath | None = Field(default=None, description="where the throwaway cluster and fetched "
                                            "dumps go, each drill in a directory of its own that the next drill "
                                            "removes if the drill was killed; None: <state_dir>/drills. Run as root, "
                                            "the postgres OS user must be able to enter it")
    backup_interval: Duration = Field(default=timedelta(hours=24), description="how often the backup deployment "
                                      "runs: the data a disaster just before the next backup loses (nightly: 24h)")
    trading_api: ApiSettings | None = Field(default=None, description="the platform started on the restored "
                                            "cluster, whose GET /api/v1/health the drill checks; None: not "
                                            "configured")
    components: list[DrillComponent] = Field(default_factory=_seed_components)
    history: int = Field(default=8, ge=1, le=100, description="previous drills shown in the trend")

    _dsn = field_validator("target_dsn")(_check_dsn)

    def target(self) -> DatabaseSettings | None:
        if self.target_dsn is None:
            return None
        return DatabaseSettings(dsn=self.target_dsn, password=self.target_password,
                                password_block=self.target_password_block)


def _absolute_or_none(path: Path | None) -> Path | None:
    if path is not None and not path.expanduser().is_absolute():
        raise ValueError(f"path {str(path)!r} must be absolute (a worker's working directory is not the config's)")
    return None if path is None else path.expanduser()


# pgBackRest option values are written into its config file one per line: no newline, no '=' games in a path.
_PGBR_SAFE = r"^[^\x00-\x1f\x7f]*$"


class PitrSettings(BaseModel):
    """Continuous protection of one cluster with pgBackRest: WAL archived to its repository, full and
    differential backups, restores to a point in time into a new cluster. Seed 002: the position database's RPO is
    one minute, which only archived WAL can meet (the nightly logical dump loses up to a day)."""

    model_config = ConfigDict(extra="forbid")

    stanza: str = Field(default="main", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                        description="pgBackRest's name for the protected cluster")
    dsn: SecretStr | None = Field(default=None, description="superuser DSN of the protected cluster; None: "
                                  "[cluster] dsn")
    password: SecretStr | None = None
    password_block: str | None = None
    data_directory: OsPath | None = Field(default=None, description="the cluster's data directory on this host "
                                          "(pgBackRest's pg1-path); None: asked of the server")
    socket_directory: OsPath = Field(default=Path("/var/run/postgresql"), description="the server's Unix socket "
                                     "directory: pgBackRest reaches a local cluster through it")
    os_user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$", description="the OS user that "
                                "owns the data directory and runs pgBackRest; None: postgres when root, else the "
                                "current user")
    work_dir: OsPath | None = Field(default=None, description="pgBackRest's config, logs and locks, and the "
                                    "clusters restores make; None: <state_dir>/pitr")
    repo_type: Literal["posix", "s3"] = "posix"
    repo_path: OsPath | None = Field(default=None, description="posix: the repository directory (another disk "
                                     "than the data's); s3: the path inside the bucket. None: <work_dir>/repo, "
                                     "or /pgbackrest in a bucket")
    s3_bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,62}$")
    s3_endpoint: str | None = Field(default=None, description="host[:port] of the S3 API (MinIO, Ceph RGW, AWS)")
    s3_region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]{1,40}$")
    s3_uri_style: Literal["host", "path"] = "path"
    s3_verify_tls: bool = True
    s3_ca_file: OsPath | None = Field(default=None, description="CA bundle (PEM) that signed the S3 endpoint's "
                                      "certificate, readable by os_user: a private CA of MinIO or Ceph RGW; None: "
                                      "the system's CAs")
    s3_key: str | None = Field(default=None, pattern=_PGBR_SAFE)
    s3_key_secret: SecretStr | None = None
    s3_key_secret_block: str | None = None
    retention_full: int = Field(default=2, ge=1, le=100, description="full backups kept (with their WAL)")
    retention_diff: int = Field(default=7, ge=1, le=100, description="differential backups kept")
    process_max: int = Field(default=2, ge=1, le=32, description="pgBackRest's parallel processes")
    compress_type: Literal["zst", "lz4", "gz", "none"] = "zst"
    compress_level: int = Field(default=3, ge=0, le=19)
    archive_timeout: Duration = Field(default=timedelta(seconds=30), description="PostgreSQL's archive_timeout: a "
                                      "WAL segment is archived at least this often when anything was written (half "
                                      "the RPO: the segment still has to reach the repository)")
    rpo: Objective = Field(default=timedelta(minutes=1), description="seed 002's position database RPO: the "
                           "archive check notifies when WAL waits longer than this")
    marker_database: str = Field(default="postgres", min_length=1, max_length=63, pattern=_PGBR_SAFE,
                                 description="database of the marker table the archive check writes every run")
    marker_table: str = Field(default="runbooks_pitr_marker", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                              description="a restore counts its rows up to the target time")
    restore_timeout: Duration = Field(default=timedelta(minutes=30), description="longest a restored cluster may "
                                      "take to replay WAL and promote")
    pgbackrest: OsPath = Field(default=Path("pgbackrest"), description="the pgBackRest executable")

    _dsn = field_validator("dsn")(_check_dsn)
    _paths = field_validator("data_directory", "work_dir", "repo_path", "s3_ca_file")(_absolute_or_none)

    @field_validator("socket_directory")
    @classmethod
    def _socket_absolute(cls, path: Path) -> Path:
        if not path.is_absolute():
            raise ValueError(f"socket_directory {str(path)!r} must be absolute")
        return path

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", value):
            raise ValueError(f"s3_endpoint {value!r} must be host or host:port (no scheme; pgBackRest speaks HTTPS)")
        return value

    @model_validator(mode="after")
    def _s3_complete(self) -> PitrSettings:
        if self.repo_type == "s3" and not (self.s3_bucket and self.s3_endpoint):
            raise ValueError("repo_type 's3' needs s3_bucket and s3_endpoint")
        if self.archive_timeout > timedelta(hours=1):
            raise ValueError("archive_timeout above 1 hour would let an idle cluster lose that much")
        return self

    def database(self, cluster: ClusterSettings) -> DatabaseSettings | None:
        if self.dsn is None:
            return cluster.database()
        return DatabaseSettings(dsn=self.dsn, password=self.password, password_block=self.password_block)


class ModelPolicy(BaseModel):
    """Seed 004 section 3.2's decision table and symptoms, as the model-rollback runbook's default policy."""

    model_config = ConfigDict(extra="forbid")

    sharpe_monitor_below: float = Field(default=0.8, description="Sharpe 0.5-0.8: minor, monitor closely")
    sharpe_shadow_below: float = Field(default=0.5, description="Sharpe 0.3-0.5: significant, shadow comparison")
    sharpe_rollback_below: float = Field(default=0.3, description="Sharpe < 0.3: severe, roll back")
    max_error_rate: float = Field(default=0.05, ge=0, le=1, description="prediction error rate above: roll back")
    psi_warn: float = Field(default=0.2, ge=0, description="feature drift (PSI) above: monitor")
    psi_act: float = Field(default=0.3, ge=0, description="feature drift (PSI) above: roll back")
    max_latency_seconds: float = Field(default=5.0, gt=0, description="prediction latency above: roll back")
    max_consecutive_losses: int = Field(default=5, ge=0, description="a longer loss streak: monitor")
    min_win_rate: float = Field(default=0.40, ge=0, le=1, description="a lower win rate: monitor")

    @model_validator(mode="after")
    def _ordered(self) -> ModelPolicy:
        if not self.sharpe_rollback_below <= self.sharpe_shadow_below <= self.sharpe_monitor_below:
            raise ValueError("Sharpe lines must be ordered: rollback <= shadow <= monitor")
        if self.psi_warn > self.psi_act:
            raise ValueError("psi_warn must not exceed psi_act")
        return self


MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$"
BACKUP_ID_PATTERN = r"^(latest|[0-9]{8}T[0-9]{6}Z)$"  # [0-9], not \d: that also matches other scripts' digits


def _backup_time(value: str) -> str:
    """A backup id is the UTC time its run started: one that is no time (month 13) names no backup."""
    if value != "latest":
        try:
            datetime.strptime(value, "%Y%m%dT%H%M%SZ")
        except ValueError:
            raise ValueError(f"backup id {value!r} is not a UTC time YYYYMMDDTHHMMSSZ such as 20261121T020000Z "
                             "(see 'runbooks backups list')") from None
    return value


BackupSelector = Annotated[str, StringConstraints(pattern=BACKUP_ID_PATTERN), AfterValidator(_backup_time)]


class ModelSettings(BaseModel):
    """The model-rollback runbook: which model it watches by default, and the policy it judges by."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(default="ppo_primary", pattern=MODEL_ID_PATTERN, description="the model it watches")
    policy: ModelPolicy = Field(default_factory=ModelPolicy)
    registry: Literal["inference-api"] = Field(
        default="inference-api", description="where versions live and are swapped: the inference API ([inference_api])")
    metrics_window: str = Field(default="1d", pattern=r"^[0-9]{1,4}[mhdw]$",
                                description="the window of the metrics the verdict is taken on (seed 004: 1d, 7d)")
    watch_window: str = Field(default="30m", pattern=r"^[0-9]{1,4}[mhdw]$",
                              description="the window of the metrics read while watching a rolled-back model")
    verify_timeout: Duration = Field(default=timedelta(minutes=2),
                                     description="how long the router has to serve the target after the rollback")
    incident_window: Duration = Field(
        default=timedelta(hours=24), description="a rollback this runbook made this recently to the version now "
        "serving is the same incident: a later run only verifies it, and escalates instead of rolling back again")
    kill_switch_on_escalation: bool = Field(
        default=False, description="press the kill switch ([trading_api]) when a rollback fails or the rolled-back "
        "model degrades too; default: notify on-call only")


API_PATH_PATTERN = r"^/[A-Za-z0-9/_.~-]{0,199}$"
ModelId = Annotated[str, Field(pattern=MODEL_ID_PATTERN)]
ApiPath = Annotated[str, Field(pattern=API_PATH_PATTERN)]


class WeeklyReportSettings(BaseModel):
    """Seed 003's weekly maintenance ("Analyze P&L performance, Check model accuracy, Review risk metrics"): where
    the weekly report reads each figure. The paths are on the trading API (``[trading_api]``), the v1 forms of
    seed 003's endpoints; model accuracy comes from the inference API's metrics (``[inference_api]``)."""

    model_config = ConfigDict(extra="forbid")

    pnl_path: ApiPath = Field(default="/api/v1/trading/pnl", description="P&L over ?window=7d "
                              "(seed 003: /api/trading/pnl)")
    risk_metrics_path: ApiPath = Field(default="/api/v1/risk/metrics", description="drawdown, VaR and exposure "
                                       "(seed 003: review risk metrics)")
    circuit_breakers_path: ApiPath = Field(default="/api/v1/risk/circuit-breakers",
                                           description="each breaker's state (seed 003: /api/risk/circuit-breakers)")
    risk_health_path: ApiPath = Field(default="/api/v1/risk/health", description="the risk engine's health "
                                      "(seed 003: /api/risk/health)")
    risk_events_path: ApiPath = Field(default="/api/v1/risk/events", description="risk events over ?window=7d "
                                      "(seed 003: /api/risk/events)")
    model_ids: list[ModelId] = Field(default_factory=list, description="models whose accuracy is reported; "
                                     "empty: the one [models] model_id names")
    list_runs_up_to: int = Field(default=20, ge=0, le=1000, description="a runbook that ran more often than this in "
                                 "the window (data-freshness: every 5 minutes) has only its runs that did not "
                                 "complete listed one by one; all are counted")
    max_runs: int = Field(default=5000, ge=1, le=100_000, description="flow runs read from the Prefect API at most; "
                          "the report says when the window held more")


RULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def _file_patterns(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        if not pattern or "/" in pattern or "\x00" in pattern:
            raise ValueError(f"pattern {pattern!r} must be a non-empty file-name glob without '/' (e.g. '*.log')")
    return patterns


# Names of every kind: patterns that match all of them select any name ('*', '?*', '*?*'...).
_ANY_NAMES = ("a", "Z9", ".hidden", "core", "data.db", "PG_VERSION", "x y.tar.gz", "é", "-", "report.pdf", "app.log",
              "notes.txt", "id_rsa", "config.yaml", "photo.JPG", "Makefile", "libpq.so.5", "1", "__init__.py",
              "positions-2026-12-07.sql")
_NEARLY_ALL = 0.75  # patterns that select this share of those names select "everything" ('??*', '[!-]*', '*[!é]')


def _selects_everything(patterns: Sequence[str]) -> bool:
    import fnmatch

    selected = sum(any(fnmatch.fnmatchcase(name, p) for p in patterns) for name in _ANY_NAMES)
    return selected >= _NEARLY_ALL * len(_ANY_NAMES)


def _age(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class FileRule(BaseModel):
    """Files under ``roots`` whose name matches ``patterns`` and that were not modified for ``older_than``: deleted,
    or gzip-compressed in place (rotated logs). Like tmpfiles.d's age lines, with tmpreaper's safety.

    "Every file older than N" must be said: a rule without patterns, or whose patterns select any name, is refused
    unless it sets ``match_all = true`` (then ``patterns`` reads ``["*"]``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["files"] = "files"
    name: str = Field(pattern=RULE_NAME_PATTERN, description="how the report and the rules parameter name it")
    action: Literal["delete", "compress"] = "delete"
    roots: list[AbsolutePath] = Field(min_length=1, description="directories walked, each inside allowed_roots; "
                                      "never followed through a symbolic link nor onto another filesystem")
    patterns: Annotated[list[str], AfterValidator(_file_patterns)] = Field(
        default_factory=list, description="file-name globs (fnmatch), e.g. ['*.log']; empty only with match_all")
    match_all: bool = Field(default=False, description="select every file name: required for a rule without "
                            "patterns (or with patterns such as '*'), so 'everything older than N' is never a "
                            "default nor a typo")
    older_than: Objective = Field(default=timedelta(days=7), description="age by modification time, e.g. '7d'")
    remove_empty_dirs: bool = Field(default=False, description="also remove directories this rule emptied that "
                                    "are themselves older than older_than (tmp and cache trees); never a root")

    @model_validator(mode="after")
    def _everything_is_explicit(self) -> FileRule:
        if self.match_all:
            if self.patterns and not _selects_everything(self.patterns):
                raise ValueError(f"rule {self.name!r} sets match_all = true and patterns {self.patterns} that "
                                 "select only some names: drop match_all, or drop the patterns to select every file")
            self.patterns = self.patterns or ["*"]
        elif not self.patterns or _selects_everything(self.patterns):
            given = f"patterns {self.patterns} select any name" if self.patterns else "names no patterns"
            verb = "delete" if self.action == "delete" else "compress"
            raise ValueError(f"rule {self.name!r} {given}: it would {verb} every file older than "
                             f"{_age(self.older_than)} under {', '.join(map(str, self.roots))}; name the files "
                             "(e.g. patterns = [\"*.log\"]), or set match_all = true if every file is meant")
        return self


class DockerRule(BaseModel):
    """Docker leftovers through the engine's API (``docker system prune``, but selective): stopped containers,
    dangling images, build cache, and unused volumes only when enabled; never an object carrying
    ``protect_label``, never one younger than ``older_than``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["docker"] = "docker"
    name: str = Field(default="docker", pattern=RULE_NAME_PATTERN)
    base_url: str | None = Field(default=None, description="engine address, e.g. unix:///var/run/docker.sock; "
                                 "None: DOCKER_HOST or the default socket")
    older_than: Objective = Field(default=timedelta(hours=24), description="created at least this long ago")
    containers: bool = Field(default=True, description="stopped containers (exited, created, dead)")
    images: bool = Field(default=True, description="dangling images (no tag, no container uses them)")
    build_cache: bool = Field(default=True, description="build cache not in use")
    volumes: bool = Field(default=False, description="volumes no container uses: data may live there, so off by "
                          "default")
    protect_label: str = Field(default="runbooks.protect", min_length=1, max_length=200,
                               description="an object carrying this label (any value) is never removed")
    only_label: str | None = Field(default=None, min_length=1, max_length=400, description="only objects carrying "
                                   "this label ('key' or 'key=value'): a shared engine's cleanup scoped to yours")


class BackupsRule(BaseModel):
    """Local backups outside ``[backup.retention]`` (a ``file://`` repository only); the newest verified backup
    of each database and every backup a run holds are always kept."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["backups"] = "backups"
    name: str = Field(default="backups", pattern=RULE_NAME_PATTERN)


class DatabaseRule(BaseModel):
    """Seed 000 "check database size": sizes, largest tables and dead tuples of the inventory's databases;
    ``VACUUM (ANALYZE)`` of bloated tables when enabled; the ``_pre_restore_`` databases restores kept, reported
    (dropped only with approval, and only those the runbooks' own record shows a restore kept)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["databases"] = "databases"
    name: str = Field(default="databases", pattern=RULE_NAME_PATTERN)
    databases: list[InventoryName] = Field(default_factory=list, description="inventory names; empty: all")
    largest: int = Field(default=10, ge=1, le=1000, description="largest tables reported per database")
    vacuum: bool = Field(default=False, description="run VACUUM (ANALYZE) on tables over the dead-tuple lines")
    dead_tuples_min: int = Field(default=10_000, ge=0, description="a table is bloated above this many dead rows")
    dead_ratio_min: float = Field(default=0.2, ge=0, description="... and this ratio of dead to live rows")
    pre_restore_older_than: Objective = Field(default=timedelta(days=7), description="databases a replace restore "
                                              "kept for longer than this are reported as reclaimable")


CleanupRule = Annotated[FileRule | DockerRule | BackupsRule | DatabaseRule, Field(discriminator="kind")]
_PROTECTED = ["*.pid", "*.lock", "*.sock", "postmaster.*", "PG_VERSION", "pg_wal", "pg_xlog", "archive_status",
              "[0-9A-F]" * 24, "[0-9A-F]" * 24 + ".partial", "[0-9A-F]" * 8 + ".history"]


def _refused_at(loc: tuple[int | str, ...], message: str) -> Exception:
    """A validation error located at ``loc`` below the model raising it, so the loader names the exact setting and
    where it came from (the variable or the file); a model validator's own ValueError has no location."""
    from pydantic import ValidationError
    from pydantic_core import InitErrorDetails, PydanticCustomError

    return ValidationError.from_exception_data("settings", [InitErrorDetails(
        type=PydanticCustomError("value_error", "{error}", {"error": message}), loc=loc, input=None)])


_ALLOWED_ROOT_FIX = "allow only directories of disposable files (e.g. /var/log, /var/tmp, /opt/<app>/tmp)"
_RULE_ROOT_FIX = "point the rule at a directory of disposable files (e.g. /var/log/<app>)"


def _seed_cleanup_rules() -> list[CleanupRule]:
    """Seed 000 "Disk 90% Full", lowest risk first: compress rotated logs (nothing is lost), old temporary files,
    logs older than 7 days (``find /var/log -name "*.log" -mtime +7 -delete``), Docker leftovers
    (``docker system prune -f``), backups beyond retention, then the databases' own size."""
    return [
        FileRule(name="rotated-logs", action="compress", roots=[Path("/var/log")],
                 patterns=["*.log.[0-9]", "*.log.[0-9][0-9]", "*.log.????-??-??"], older_than=timedelta(days=1)),
        FileRule(name="tmp", roots=[Path("/tmp"), Path("/var/tmp")], match_all=True, older_than=timedelta(days=10),
                 remove_empty_dirs=True),
        FileRule(name="old-logs", roots=[Path("/var/log")], patterns=["*.log", "*.log.*"],
                 older_than=timedelta(days=7)),
        DockerRule(), BackupsRule(), DatabaseRule(),
    ]


class CleanupSettings(BaseModel):
    """The disk-cleanup runbook (seed 000 "Disk 90% Full", seed 001's disk baseline < 85 %, alert > 90 %):
    watermarks like the kubelet's image GC, ordered rules, and tmpreaper's safety limits."""

    model_config = ConfigDict(extra="forbid")

    watch: list[AbsolutePath] = Field(default_factory=lambda: [Path("/"), Path("/var"), Path("/tmp")],
                                      description="filesystems whose usage starts a cleanup (seed 001's df filter)")
    high_watermark: float = Field(default=85, gt=0, le=100, description="percent used at or above which it cleans")
    low_watermark: float = Field(default=80, ge=0, lt=100, description="percent used below which it stops")
    allowed_roots: list[AbsolutePath] = Field(
        default_factory=lambda: [Path("/var/log"), Path("/var/tmp"), Path("/tmp"), Path("/opt/ats")],
        description="every file rule's roots must lie inside one of these; a system tree (FHS), a PostgreSQL data "
        "directory, the runbooks' state and repositories and the user's home are refused, as is what holds them")
    protected: list[str] = Field(default_factory=lambda: list(_PROTECTED), description="file or directory name "
                                 "globs never touched (a matching directory is not entered): pid files, "
                                 "postmaster.*, WAL segments and directories")
    max_files: int = Field(default=1_000_000, ge=1, description="files a run removes or compresses at most")
    max_bytes: ByteSize = Field(default=ByteSize(500 * 1024**3), gt=0,
                                description="bytes a run removes at most, e.g. '50GB'")
    survey: list[AbsolutePath] = Field(default_factory=lambda: [Path("/opt/ats"), Path("/var/log")],
                                       description="directories whose largest children are reported (du "
                                       "--max-depth=1); a missing one is skipped")
    top: int = Field(default=10, ge=1, le=1000, description="largest children reported per surveyed directory")
    rules: list[CleanupRule] = Field(default_factory=_seed_cleanup_rules, description="run in this order: "
                                     "lowest risk first")

    @field_validator("allowed_roots")
    @classmethod
    def _not_protected(cls, roots: list[Path]) -> list[Path]:
        """Issue 24: ``/etc`` was accepted, and a forced run deleted system files. ``force`` never reaches here."""
        for i, root in enumerate(roots):
            if why := protected_paths.system_refusal(root):
                raise _refused_at((i,), f"allowed root {str(root)!r} {why}: cleanup never deletes there; "
                                  f"{_ALLOWED_ROOT_FIX}")
        return roots

    @model_validator(mode="after")
    def _consistent(self) -> CleanupSettings:
        if self.low_watermark >= self.high_watermark:
            raise ValueError(f"low_watermark ({self.low_watermark:g}) must be below high_watermark "
                             f"({self.high_watermark:g})")
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            twice = sorted(n for n in set(names) if names.count(n) > 1)
            raise ValueError(f"rule names must be unique: {', '.join(twice)}")
        checked: dict[Path, str | None] = {}  # rules often share a root (the seeds: /var/log three times)
        for index, rule in enumerate(self.rules):
            if not isinstance(rule, FileRule):
                continue
            for i, root in enumerate(rule.roots):
                if root not in checked:
                    checked[root] = protected_paths.system_refusal(root)
                if why := checked[root]:
                    raise _refused_at(("rules", index, "roots", i), f"rule {rule.name!r}: root {str(root)!r} {why}: "
                                      f"cleanup never deletes there; {_RULE_ROOT_FIX}")
                if not any(root == allowed or allowed in root.parents for allowed in self.allowed_roots):
                    raise ValueError(f"rule {rule.name!r}: root {str(root)!r} is outside allowed_roots "
                                     f"({', '.join(map(str, self.allowed_roots))})")
        return self

    def rule(self, name: str) -> CleanupRule | None:
        return next((rule for rule in self.rules if rule.name == name), None)


Severity = Literal["P0", "P1", "P2", "P3"]
BlockName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+/[A-Za-z0-9_.-]+$")]


class EscalationStep(BaseModel):
    """Who joins an incident, and when (seed 004 section 2.3)."""

    model_config = ConfigDict(extra="forbid")

    after_minutes: int = Field(ge=0, le=10080, description="minutes after the incident starts")
    who: str = Field(min_length=1, max_length=100, description="a role of [notifications.contacts]")


class SeverityLevel(BaseModel):
    """One row of seed 004's severity table, its escalation row, and where its notifications go."""

    model_config = ConfigDict(extra="forbid")

    name: str
    criteria: str
    response: str = Field(description="response time, as the seed words it")
    resolution_minutes: int = Field(gt=0, description="resolution target")
    escalation: list[EscalationStep] = Field(default_factory=list)
    blocks: list[BlockName] = Field(default_factory=list, description="notification blocks for this severity "
                                    "('type-slug/name'); empty: [notifications] block")


def _seed_severities() -> dict[Severity, SeverityLevel]:
    def steps(*pairs: tuple[int, str]) -> list[EscalationStep]:
        return [EscalationStep(after_minutes=m, who=w) for m, w in pairs]

    return {
        "P0": SeverityLevel(name="Critical", criteria="System down, active financial losses",
                            response="Immediate (24/7)", resolution_minutes=30,
                            escalation=steps((0, "On-Call Primary"), (15, "Engineering Lead"), (30, "CTO"))),
        "P1": SeverityLevel(name="High", criteria="Major feature broken, degraded performance",
                            response="15 minutes", resolution_minutes=120,
                            escalation=steps((0, "On-Call Primary"), (15, "On-Call Secondary"),
                                             (30, "Engineering Lead"), (60, "Trading Lead"))),
        "P2": SeverityLevel(name="Medium", criteria="Partial feature broken, workaround exists",
                            response="1 hour", resolution_minutes=480,
                            escalation=steps((0, "On-Call Primary"), (60, "On-Call Secondary"),
                                             (120, "Engineering Lead"))),
        "P3": SeverityLevel(name="Low", criteria="Minor bug, no trading impact", response="Next business day",
                            resolution_minutes=5 * 24 * 60, escalation=steps((0, "Team Lead"))),
    }


def _seed_contacts() -> dict[str, str]:
    return {"On-Call Primary": "@oncall-primary", "On-Call Secondary": "@oncall-secondary",
            "Engineering Lead": "@eng-lead", "Trading Lead": "@trading-lead", "ML Lead": "@ml-lead",
            "CTO": "@cto", "Team Lead": "@eng-lead"}


class NotificationSettings(BaseModel):
    """Where on-call hears from the runbooks: seed 004's severities, escalation matrix and contacts."""

    model_config = ConfigDict(extra="forbid")

    block: BlockName | None = Field(default=None, description="Prefect notification block as 'type-slug/name', "
                                    "e.g. 'slack-webhook/oncall' or 'custom-webhook/oncall', for every severity "
                                    "without blocks of its own; None: events only")
    severities: dict[Severity, SeverityLevel] = Field(default_factory=_seed_severities)
    contacts: dict[str, str] = Field(default_factory=_seed_contacts, description="role -> handle (Slack, "
                                     "PagerDuty schedule), as the escalation lines name them")
    timezone: str = Field(default="America/Bogota", description="time zone of the times in messages (the seeds "
                          "use COT)")
    backup_stale_after: timedelta = Field(default=timedelta(hours=26), ge=timedelta(seconds=10),
                                          description="automation: raise a P1 when a database of the inventory "
                                          "has had no successful backup for this long (seed: 26 h)")
    repeat_after: timedelta = Field(default=timedelta(minutes=30), ge=timedelta(0),
                                    description="automation: at most one stale-data notification per table in "
                                    "this window (seed 002: updates every 30 min)")

    @model_validator(mode="before")
    @classmethod
    def _over_the_seed(cls, data: Any) -> Any:
        """A configured severity changes only the fields it names (`[notifications.severities.P1] blocks = [...]`
        keeps the seed's escalation row), and a configured contact only its own handle. Environment variables
        arrive lower-cased (`RUNBOOKS_NOTIFICATIONS__SEVERITIES__P1__BLOCKS`): severities and roles are matched
        without regard to case."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if isinstance(data.get("severities"), Mapping):
            merged: dict[str, Any] = {k: v.model_dump() for k, v in _seed_severities().items()}
            for key, value in data["severities"].items():
                if isinstance(value, BaseModel):
                    value = value.model_dump(exclude_unset=True)
                if not isinstance(value, Mapping):
                    raise ValueError(f"severity {key!r} must be a table of fields, not {value!r}")
                name = str(key).upper()
                merged[name] = {**merged.get(name, {}), **value}
            data["severities"] = merged
        if isinstance(data.get("contacts"), Mapping):
            contacts = _seed_contacts()
            spelled = {role.casefold(): role for role in contacts}
            for role, handle in data["contacts"].items():
                contacts[spelled.get(str(role).casefold(), str(role))] = handle
            data["contacts"] = contacts
        return data

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a name too long for a file name
            raise ValueError(f"unknown time zone {value[:80]!r} (an IANA name such as 'UTC' or 'America/Bogota')") \
                from exc
        return value

    @model_validator(mode="after")
    def _complete(self) -> NotificationSettings:
        missing = sorted({"P0", "P1", "P2", "P3"} - set(self.severities))
        if missing:
            raise ValueError(f"[notifications.severities] lacks {', '.join(missing)} (all of P0-P3 are needed)")
        unknown = sorted({step.who for level in self.severities.values() for step in level.escalation}
                         - set(self.contacts))
        if unknown:
            raise ValueError(f"escalation names {', '.join(map(repr, unknown))}, not in [notifications.contacts]")
        return self

    def blocks_for(self, severity: Severity) -> list[str]:
        return list(self.severities[severity].blocks) or ([self.block] if self.block else [])


class PrefectSettings(BaseModel):
    """Which Prefect API the runbooks report to."""

    model_config = ConfigDict(extra="forbid")

    api_url: str | None = Field(
        default=None, description="Prefect API; None uses PREFECT_API_URL or a temporary server"
    )

    _api_url = field_validator("api_url")(_check_http_url)


# The runbooks that pause for an approval before their destructive step: the only keys [approvals.runbooks] takes.
# A runbook that starts asking (Redis replace, config rollback, drawdown override) adds its name here with its flow.
APPROVING_RUNBOOKS = ("restore", "disk-cleanup", "pitr-setup")
MAX_APPROVERS = 3


class ApprovalSettings(BaseModel):
    """Four eyes: how many distinct people must approve a plan before a runbook acts on it. The plan's ``confirm``
    parameter (its hash, given when the run is started: the operator's unattended path) still counts as the whole
    approval, whatever is required here."""

    model_config = ConfigDict(extra="forbid")

    required: int = Field(default=1, ge=1, le=MAX_APPROVERS, description="distinct approvers a plan needs, for "
                          "every runbook that asks for approval and is not named in [approvals.runbooks]")
    runbooks: dict[str, Annotated[int, Field(ge=1, le=MAX_APPROVERS)]] = Field(
        default_factory=dict, description="distinct approvers per runbook, over `required`, e.g. restore = 2; keys: "
        + ", ".join(APPROVING_RUNBOOKS))

    @field_validator("runbooks", mode="before")
    @classmethod
    def _approving_runbooks(cls, value: Any) -> Any:
        """Keys are runbook names as the CLI spells them; ``disk_cleanup`` is accepted for ``disk-cleanup`` (an
        environment variable cannot hold a dash: ``RUNBOOKS_APPROVALS__RUNBOOKS__DISK_CLEANUP=2``). A name of a
        runbook that never asks for approval is refused: it would read as four eyes where there are none."""
        if not isinstance(value, Mapping):
            return value
        named: dict[str, Any] = {}
        for key, required in value.items():
            name = str(key).lower().replace("_", "-")
            if name not in APPROVING_RUNBOOKS:
                raise ValueError(f"{str(key)[:80]!r} is not a runbook that asks for approval (those that do: "
                                 f"{', '.join(APPROVING_RUNBOOKS)})")
            if name in named:
                raise ValueError(f"{name!r} is set twice (as {name!r} and {str(key)!r})")
            named[name] = required
        return named

    def required_for(self, runbook: str) -> int:
        """Distinct approvers ``runbook``'s plan needs."""
        return self.runbooks.get(runbook, self.required)


_HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOST_NAME_PATTERN = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")


def this_host() -> str:
    """This machine's name as ``hostname`` prints it, lower-cased: the default ``host_name``."""
    import socket

    return socket.gethostname().lower()


def _host_name(name: str) -> str:
    """``name`` lower-cased if it is a host name (RFC 1123: dot-separated labels of letters, digits and inner
    dashes, at most 253 characters): host names are case-insensitive, and what is built per host (deployments,
    work queues) must not take ``Worker-1`` and ``worker-1`` for two hosts."""
    lowered = name.lower()
    if len(lowered) > 253 or not HOST_NAME_PATTERN.fullmatch(lowered):
        raise ValueError(f"{name[:80]!r} is not a host name (letters, digits, inner dashes and dots, as "
                         "'hostname' prints it, e.g. 'worker-1' or 'worker-1.internal')")
    return lowered


HostName = Annotated[str, AfterValidator(_host_name)]


MarketName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


class Settings(BaseSettings):
    """Everything a runbook needs to know about the platform it operates."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
    )

    databases: dict[InventoryName, DatabaseSettings] = Field(default_factory=dict)
    markets: dict[MarketName, MarketSettings] = Field(default_factory=seed_markets, description="the trading "
                                                      "calendar of each market (the seeds': USD/COP and crypto)")
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    repository: RepositorySettings = Field(default_factory=RepositorySettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    restore: RestoreSettings = Field(default_factory=RestoreSettings)
    trading_api: ApiSettings | None = None
    inference_api: ApiSettings | None = None
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    approvals: ApprovalSettings = Field(default_factory=ApprovalSettings)
    freshness: FreshnessSettings = Field(default_factory=FreshnessSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    drill: DrillSettings = Field(default_factory=DrillSettings)
    pitr: PitrSettings = Field(default_factory=PitrSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    cleanup: CleanupSettings = Field(default_factory=CleanupSettings)
    weekly_report: WeeklyReportSettings = Field(default_factory=WeeklyReportSettings)
    state_dir: AbsoluteOsPath = Field(default_factory=default_state_dir, description="this host's private working "
                                      "state (restore work directories): created 0700")
    hosts: list[HostName] = Field(default_factory=list, max_length=256, description="the hosts whose workers run "
                                  "the runbooks, as each one's host_name; empty or one: a single host. More than "
                                  "one: the repository must be shared (s3://), never file://")
    host_name: HostName = Field(default_factory=this_host, validate_default=False, description="this host's name "
                                "among hosts (default: 'hostname', lower-cased); set RUNBOOKS_HOST_NAME per host")

    @property
    def work_root(self) -> Path:
        """Where a restore's work directories go."""
        return (self.restore.work_dir or self.state_dir / "work").expanduser()

    @property
    def pitr_root(self) -> Path:
        """pgBackRest's config, logs and locks, and the clusters point-in-time restores make."""
        return (self.pitr.work_dir or self.state_dir / "pitr").expanduser()

    @property
    def drill_root(self) -> Path:
        """Where a DR drill's clean cluster and fetched dumps go."""
        return (self.drill.work_dir or self.state_dir / "drills").expanduser()

    @model_validator(mode="after")
    def _cleanup_spares_our_own(self) -> Settings:
        """Issue 24: no cleanup root nor allowed root is, lies inside or holds what the runbooks keep (their state:
        manifests, locks, restore and drill work; the backup and pgBackRest repositories; the protected cluster's
        data directory) or the home of the user running them. Checked at load, before anything runs: ``force``
        never gets past it. The system trees and data directories found on disk are [cleanup]'s own check."""
        from urllib.parse import unquote

        def spot(path: Path | str, what: str) -> protected_paths.Protected:
            return protected_paths.Protected(os.path.abspath(os.path.expanduser(str(path))), what)

        kept = [spot(self.state_dir, "the runbooks' state directory, state_dir"),
                spot(self.work_root, "the restores' work directory, restore.work_dir"),
                spot(self.drill_root, "the DR drills' work directory, drill.work_dir"),
                spot(self.pitr_root, "pgBackRest's work directory, pitr.work_dir")]
        repository = urlparse(self.repository.url)
        if repository.scheme == "file":
            kept.append(spot(unquote(repository.path), "the backup repository, repository.url"))
        if self.pitr.repo_type == "posix":
            kept.append(spot(self.pitr.repo_path or self.pitr_root / "repo", "the pgBackRest repository, "
                             "pitr.repo_path"))
        if self.pitr.data_directory is not None:
            kept.append(spot(self.pitr.data_directory, "the protected cluster's data directory, pitr.data_directory"))
        kept += [spot(home, "the home of the user running the runbooks")
                 for home in protected_paths.home_directories()]
        fix = "or move that directory out of it"
        for i, root in enumerate(self.cleanup.allowed_roots):
            if why := protected_paths.root_refusal(root, kept):
                raise _refused_at(("cleanup", "allowed_roots", i), f"allowed root {str(root)!r} {why}: cleanup never "
                                  f"deletes there; {_ALLOWED_ROOT_FIX}, {fix}")
        for index, rule in enumerate(self.cleanup.rules):
            for i, root in enumerate(rule.roots if isinstance(rule, FileRule) else []):
                if why := protected_paths.root_refusal(root, kept):
                    raise _refused_at(("cleanup", "rules", index, "roots", i), f"rule {rule.name!r}: root "
                                      f"{str(root)!r} {why}: cleanup never deletes there; {_RULE_ROOT_FIX}, {fix}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = config_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def database_or_raise(self, name: str) -> DatabaseSettings:
        try:
            return self.databases[name]
        except KeyError:
            known = ", ".join(sorted(self.databases)) or "none"
            raise ConfigurationError(
                f"database {name!r} is not in the inventory (configured: {known}).",
                hint=f"add [databases.{_toml_key(name)}] to {config_path()} or pick a configured one.",
            ) from None

    @property
    def several_hosts(self) -> bool:
        """Whether the runbooks run on more than one host: what they share must then be shared by all."""
        return len(self.hosts) > 1

    @model_validator(mode="after")
    def _one_fleet(self) -> Settings:
        """Declared hosts: this host is one of them, none twice, and once there are several the backup repository is
        shared. A ``file://`` repository is a directory of one host: each host would keep its own backups, claim
        its own backup ids and hold its own repository leases, so a restore or a drill on another host would not
        see them. Refused at load, before any runbook runs."""
        seen: set[str] = set()
        for host in self.hosts:
            if host in seen:
                raise _refused_at(("hosts",), f"host {host!r} is listed twice")
            seen.add(host)
        if self.hosts and self.host_name not in seen:
            raise _refused_at(("host_name",), f"this host's name {self.host_name!r} is not one of hosts "
                              f"({', '.join(self.hosts)}): set {env_variable('host_name')} on this host to its "
                              "name as hosts lists it, or add this host to hosts")
        if self.several_hosts and urlparse(self.repository.url).scheme == "file":
            raise _refused_at(("repository", "url"), f"repository {self.repository.url!r} is a directory of one "
                              f"host, but hosts declares {len(self.hosts)} ({', '.join(self.hosts)}): the "
                              "repository must be shared (S3 or another shared store: s3://bucket/prefix, with "
                              "endpoint_url for MinIO or Ceph) once there is more than one host")
        return self

    @model_validator(mode="after")
    def _tables_name_known_markets(self) -> Settings:
        for table in self.freshness.tables:
            if table.market is not None and table.market not in self.markets:
                known = ", ".join(sorted(self.markets)) or "none"
                raise ValueError(f"freshness table {table.key!r} names market {table.market!r}, which is not in "
                                 f"[markets] (configured: {known})")
        return self

    def calendars(self, *, gating_only: bool = False) -> dict[str, MarketCalendar]:
        """Each configured market's calendar (only the gating ones when asked)."""
        return {name: market.calendar(name) for name, market in sorted(self.markets.items())
                if market.gates or not gating_only}

    def plain_secrets(self) -> list[str]:
        """The secret values held in the settings themselves (not in Secret blocks)."""
        found: list[str] = []
        for db in [*self.databases.values(), self.cluster.database(), self.drill.target()]:
            if db is None:
                continue
            found.append(str(conninfo_to_dict(db.dsn.get_secret_value()).get("password") or ""))
            if db.password:
                found.append(db.password.get_secret_value())
        if self.repository.secret_access_key:
            found.append(self.repository.secret_access_key.get_secret_value())
        if self.pitr.dsn is not None:
            found.append(str(conninfo_to_dict(self.pitr.dsn.get_secret_value()).get("password") or ""))
        for secret in (self.pitr.password, self.pitr.s3_key_secret):
            if secret is not None:
                found.append(secret.get_secret_value())
        for api in (self.trading_api, self.inference_api, self.drill.trading_api):
            if api and api.token:
                found.append(api.token.get_secret_value())
        return [s for s in found if s]

    @cached_property
    def secrets(self) -> list[str]:
        """Every secret value this configuration knows, Secret blocks included, all registered for scrubbing.

        A runbook run reads this once at its start, so a value from a block is scrubbed even from what a tool
        prints before the step that uses it."""
        found = self.plain_secrets()
        blocks = [db.password_block for db in [*self.databases.values(), self.cluster.database(),
                                               self.drill.target()] if db]
        blocks += [self.repository.secret_access_key_block, self.pitr.password_block, self.pitr.s3_key_secret_block]
        blocks += [api.token_block for api in (self.trading_api, self.inference_api, self.drill.trading_api) if api]
        for block in filter(None, blocks):
            try:
                found.append(resolve_secret(None, block) or "")
            except Exception:  # noqa: BLE001 - unreadable now: nothing to scrub from it
                continue
        register_secret(*found)
        return [s for s in found if s]


def load_settings(**overrides: Any) -> Settings:
    """Load settings once; turns a malformed file and validation errors into one readable ConfigurationError that
    names where each bad value came from: an environment variable, the config file, or the caller."""
    from pydantic import ValidationError

    path = config_path()
    if path.is_dir():
        named = "named by RUNBOOKS_CONFIG " if "RUNBOOKS_CONFIG" in os.environ else ""
        raise ConfigurationError(f"config file {str(path)!r} {named}is a directory, not a TOML file.",
                                 hint="point RUNBOOKS_CONFIG at the inventory file itself, e.g. "
                                 f"{str(path / DEFAULT_CONFIG)!r}.")
    if path.exists() and not path.is_file():
        raise ConfigurationError(f"config file {str(path)!r} is not a regular file (a device, a pipe or a socket).",
                                 hint="point RUNBOOKS_CONFIG at the inventory's TOML file.")
    if "RUNBOOKS_CONFIG" in os.environ and not path.is_file():
        raise ConfigurationError(
            f"config file {str(path)!r} named by RUNBOOKS_CONFIG does not exist.",
            hint="run 'runbooks sandbox up' to write one, or point RUNBOOKS_CONFIG at your inventory.",
        )
    if path.is_file() and (clash := _case_clashes(path)):
        raise ConfigurationError(f"config file {str(path)!r}: {clash}.",
                                 hint="write every key in lower case, as config/runbooks.example.toml does; a key "
                                 "that differs from another only by case would silently replace it.")
    if unknown := unknown_environment_variables(os.environ):
        raise ConfigurationError(f"unknown setting{'s' if len(unknown) > 1 else ''} in the environment: "
                                 f"{'; '.join(unknown)}.",
                                 hint="fix or unset the variable (settings are RUNBOOKS_<SECTION>__<FIELD>, as "
                                 "config/runbooks.example.toml lists them).")
    refusal: ConfigurationError
    try:
        settings = Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        refusal = ConfigurationError(f"config file {str(path)!r} is not valid TOML: {exc}.",
                                   hint="fix the syntax at that line (https://toml.io).")
    except UnicodeEncodeError:  # bytes from the environment that are not UTF-8, met by a check that reads them
        refusal = ConfigurationError("a setting holds bytes that are not valid UTF-8 (from the environment).",
                                     hint="fix the RUNBOOKS_ variable that holds them; every setting is UTF-8 text.")
    except (OSError, UnicodeDecodeError) as exc:
        refusal = ConfigurationError(f"config file {str(path)!r} cannot be read: {exc}.",
                                   hint="make it readable UTF-8 TOML or point RUNBOOKS_CONFIG elsewhere.")
    except SettingsError as exc:  # e.g. a nested environment variable that is not valid JSON
        refusal = ConfigurationError(f"settings cannot be read: {str(exc).splitlines()[0][:300]}.",
                                   hint="a list or table in an environment variable is JSON, e.g. RUNBOOKS_"
                                   "NOTIFICATIONS__SEVERITIES__P1__BLOCKS='[\"slack-webhook/oncall\"]'.")
    except ValidationError as exc:
        problems, fixes = [], set()
        for error in exc.errors():
            kind, where = _source_of(error, overrides, path)
            fixes.add(kind)
            problems.append(f"{_dotted(error['loc']) or 'settings'} ({where}): {validation_message(error)}")
        fix = {"environment": "fix the environment variable named above", "file": f"fix the value in {path}",
               "caller": "fix the value passed to load_settings()", "missing": "set the missing value",
               "default": f"set the value the default conflicts with, or this one, in {path}"}
        refusal = ConfigurationError(f"invalid runbooks settings: {'; '.join(problems)}.",
                                   hint=" and ".join(fix[k] for k in sorted(fixes)) + ".")
    else:
        register_secret(*settings.plain_secrets())
        return settings
    # Raised here, outside the except blocks: raised inside one, it would keep the error it replaces as its
    # __context__ (``from None`` only hides that from tracebacks), and pydantic's and json's errors hold their input
    # (a DSN, a JSON document with passwords) for anything that walks the chain or pickles the exception.
    raise refusal


# RUNBOOKS_ variables that are not settings: read by the process itself, the deployments or the test suite.
PROCESS_VARIABLES = {
    "RUNBOOKS_CONFIG": "the TOML file to read",
    "RUNBOOKS_PG_BINDIR": "where the PostgreSQL client and server programs are",
    "RUNBOOKS_HOME": "the checkout a worker runs deployments from (prefect.yaml)",
    "RUNBOOKS_REQUIRE_DOCKER": "the test suite fails instead of skipping without a Docker engine",
    "RUNBOOKS_REQUIRE_CHROMIUM": "the test suite fails instead of skipping without chromium",
}


def _unwrap(annotation: Any) -> list[Any]:
    """The types an annotation may hold: Annotated and Optional/Union peeled off."""
    if isinstance(annotation, str):  # a forward reference (this module uses postponed annotations)
        return []
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) if arg is not type(None) for t in _unwrap(arg)]
    return [annotation]


def _known_names(model: type[BaseModel], parts: Sequence[str], *,
                 indexes: bool = True) -> tuple[int, list[str]] | None:
    """Walks ``parts`` (lower-case, as pydantic-settings reads environment names) down the settings models.
    None when every part names something; else (index of the first unknown part, the names known there). A
    dictionary (databases, severities) takes any key, a list only an item's index (a file's ``[[tables]]``; an
    environment variable holds a whole list as JSON); a scalar ends the walk."""
    node: Any = model
    for index, part in enumerate(parts):
        if isinstance(node, type) and issubclass(node, BaseModel):
            fields = {name.lower(): info for name, info in node.model_fields.items()}
            if not part or part not in fields:
                return index, sorted(fields)
            candidates = _unwrap(fields[part].annotation)
            node = next((t for t in candidates if isinstance(t, type) and issubclass(t, BaseModel)),
                        next((t for t in candidates if typing.get_origin(t) in (dict, list)), None))
        elif typing.get_origin(node) in (dict, list):
            if not part or (typing.get_origin(node) is list and not (indexes and part.isdigit())):
                return index, []
            values = _unwrap(typing.get_args(node)[-1])
            node = next((t for t in values if isinstance(t, type) and issubclass(t, BaseModel)), None)
        else:
            return index, []
    return None


def _case_clashes(path: Path) -> str | None:
    """A key spelt with capitals where the settings name a field in lower case, or two keys equal but for case:
    both are read case-insensitively, so one table would silently replace the other (``[Markets.crypto]`` beside
    ``[markets.usd_cop]`` dropped usd_cop)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None  # the loader reports it, with its own words

    def walk(node: Any, annotation: Any, where: list[str]) -> str | None:
        models = [t for t in _unwrap(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        containers = [t for t in _unwrap(annotation) if typing.get_origin(t) in (dict, list)]
        if isinstance(node, dict):
            seen: dict[str, str] = {}
            for key in node:
                if (twin := seen.setdefault(str(key).lower(), str(key))) != key:
                    return f"[{'.'.join([*where, twin])}] and [{'.'.join([*where, str(key)])}] differ only by case"
            if models:
                fields = {name.lower(): (name, info) for name, info in models[0].model_fields.items()}
                for key, value in node.items():
                    found = fields.get(str(key).lower())
                    if found is None:
                        continue  # an unknown key: the loader names it
                    if found[0] != key:
                        return f"key {'.'.join([*where, str(key)])!r} must be written {found[0]!r}"
                    if problem := walk(value, found[1].annotation, [*where, str(key)]):
                        return problem
            elif containers and typing.get_origin(containers[0]) is dict:
                for key, value in node.items():
                    if problem := walk(value, typing.get_args(containers[0])[-1], [*where, str(key)]):
                        return problem
        elif isinstance(node, list) and containers and typing.get_origin(containers[0]) is list:
            for index, item in enumerate(node):
                if problem := walk(item, typing.get_args(containers[0])[0], [*where, str(index)]):
                    return problem
        return None

    return walk(data, Settings, [])


def unknown_environment_variables(environ: Mapping[str, str]) -> list[str]:
    """``RUNBOOKS_`` variables that set nothing, each with what was expected there: pydantic-settings ignores a
    misspelt nested name (``RUNBOOKS_REPOSITORY__URLL``), so a typo would silently keep the default."""
    found = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in PROCESS_VARIABLES:
            continue
        parts = upper.removeprefix(ENV_PREFIX).lower().split(ENV_DELIMITER)
        miss = _known_names(Settings, parts, indexes=False)  # a variable sets a whole list, as JSON
        if miss is None:
            continue
        index, known = miss
        if parts[index].isdigit():
            found.append(f"{name[:120]} ([{'.'.join(parts[:index])}] is a list: set {env_variable(*parts[:index])} "
                         "to the whole list, as JSON)")
            continue
        close = difflib.get_close_matches(parts[index], known, n=1)
        where = "settings" if index == 0 else "[" + ".".join(parts[:index]) + "]"
        found.append(f"{name[:120]} ({parts[index][:60]!r} is not a field of {where}"
                     + (f"; did you mean {env_variable(*parts[:index], close[0])}?)" if close else ")"))
    return found


def _toml_key(name: str) -> str:
    """``name`` as a TOML key: bare when it can be, else a quoted string (control characters escaped)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _dotted(loc: Sequence[int | str]) -> str:
    """``databases.trading_db.dsn``; a name that is not a plain word is quoted (``databases.'.x'``)."""
    return ".".join(str(p) if str(p).isidentifier() else repr(str(p)) for p in loc if p != "[key]")


def validation_message(error: Mapping[str, Any], model: type[BaseModel] | None = None) -> str:
    """pydantic's message without its "Value error, " prefix (our validators' messages stand alone); an unknown
    name gets the closest name ``model`` (default: the settings) knows at that place."""
    if error["type"] in ("value_error", "assertion_error") and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"]).rstrip(".")
    if error["type"] == "extra_forbidden":
        parts = [str(p).lower() for p in error["loc"] if p != "[key]"]
        miss = _known_names(model or Settings, [*parts[:-1], ""]) if parts else None
        close = difflib.get_close_matches(parts[-1], miss[1], n=1) if miss and parts else []
        return f"unknown name (did you mean {close[0]!r}?)" if close else "unknown name (a typo?)"
    return str(error["msg"])


def _source_of(error: Mapping[str, Any], overrides: Mapping[str, Any], path: Path) -> tuple[str, str]:
    """Where the value at the error's location came from, by the sources' priority: keyword arguments, the
    environment (the variable itself, or a parent variable holding JSON that sets it), the config file."""
    parts = [str(p) for p in error["loc"] if p != "[key]"]
    exact = env_variable(*parts) if parts else ENV_PREFIX + "*"
    if error["type"] == "missing":
        return "missing", f"set it in {path} or as environment variable {exact}"
    node: Any = overrides
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            break
        node = node[part]
    else:
        if parts:
            return "caller", "given to load_settings()"
    environ = {k.upper(): v for k, v in os.environ.items()}
    if parts and (exact in environ or any(k.startswith(exact + ENV_DELIMITER) for k in environ)):
        return "environment", f"environment variable {exact}"
    for depth in range(len(parts) - 1, 0, -1):
        parent = env_variable(*parts[:depth])
        if parent in environ and _json_has(environ[parent], parts[depth:]):
            return "environment", f"environment variable {parent}"
    if path.is_file() and not _toml_has(path, parts[:-1] if error["type"] == "extra_forbidden" else parts):
        return "default", f"a default, not set in {path}"
    return "file", f"in {path}"


def _toml_has(path: Path, parts: Sequence[str]) -> bool:
    """Whether the config file sets the value at ``parts`` (else it is a default); unreadable: assume it does."""
    try:
        return _has(tomllib.loads(path.read_text(encoding="utf-8")), parts)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True


def _json_has(text: str, parts: Sequence[str]) -> bool:
    try:
        return _has(json.loads(text), parts)
    except ValueError:
        return False


def _has(node: Any, parts: Sequence[str]) -> bool:
    """Whether a parsed document holds ``parts``; a union's tag in the location (``rules.0.files.bogus``: the
    rule's ``kind``) is not a key of the document and is skipped."""
    for part in parts:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):  # an item of a list
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and node.get("kind") == part:
            continue
        else:
            return False
    return True
