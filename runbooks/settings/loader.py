"""The root settings object and how it is loaded: sources, environment variables, refusals in one line.

``Settings`` is the only place that lists the sections (one field each). What the loader does with them walks the
model tree (unknown environment variables, keys that differ by case, where a bad value came from, the secrets), so
a new section needs no other line here. The rules that span sections stay on the root object: cleanup spares what
the other sections keep, the hosts of a fleet share one repository, a freshness table names a configured market.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import BaseModel, Field, model_validator
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
from runbooks.core.redact import register_secret
from runbooks.settings.api import ApiSettings
from runbooks.settings.approvals import ApprovalSettings
from runbooks.settings.backup import BackupSettings
from runbooks.settings.cleanup import ALLOWED_ROOT_FIX, RULE_ROOT_FIX, CleanupSettings, FileRule
from runbooks.settings.cluster import ClusterSettings
from runbooks.settings.config_rollback import ConfigRollbackSettings
from runbooks.settings.connections import ConnectionsSettings
from runbooks.settings.databases import DatabaseSettings
from runbooks.settings.drill import DrillSettings
from runbooks.settings.fields import AbsoluteOsPath, InventoryName, refused_at, resolve_secret, secrets_held
from runbooks.settings.freshness import FreshnessSettings
from runbooks.settings.health import HealthSettings
from runbooks.settings.hosts import HostName, default_state_dir, this_host
from runbooks.settings.markets import MarketName, MarketSettings, seed_markets
from runbooks.settings.models import ModelSettings
from runbooks.settings.notifications import NotificationSettings
from runbooks.settings.pitr import PitrSettings
from runbooks.settings.prefect_api import PrefectSettings
from runbooks.settings.redis import RedisSettings
from runbooks.settings.repository import RepositorySettings
from runbooks.settings.restore import RestoreSettings
from runbooks.settings.services import ServicesSettings
from runbooks.settings.trading_safety import TradingSafetySettings
from runbooks.settings.weekly_report import WeeklyReportSettings

DEFAULT_CONFIG = "runbooks.toml"
SANDBOX_DIR = ".sandbox"
ENV_PREFIX = "RUNBOOKS_"
ENV_DELIMITER = "__"


def env_variable(*path: str) -> str:
    """The environment variable that sets the setting at ``path``, e.g. ``env_variable("cluster", "password")``
    is ``RUNBOOKS_CLUSTER__PASSWORD`` and ``env_variable("databases", "trading_db", "password")`` is
    ``RUNBOOKS_DATABASES__TRADING_DB__PASSWORD`` (names are matched case-insensitively)."""
    return ENV_PREFIX + ENV_DELIMITER.join(path).upper()


def config_path() -> Path:
    """The TOML file every command reads: ``$RUNBOOKS_CONFIG``, else ``./runbooks.toml``, else the config of a
    sandbox started in this directory (``./.sandbox/runbooks.toml``, the embedded default)."""
    if "RUNBOOKS_CONFIG" in os.environ:
        return Path(os.environ["RUNBOOKS_CONFIG"]).expanduser()
    local = Path(DEFAULT_CONFIG)
    sandbox = Path(SANDBOX_DIR) / DEFAULT_CONFIG
    return sandbox if not local.is_file() and sandbox.is_file() else local


class Settings(BaseSettings):
    """Everything a runbook needs to know about the platform it operates."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
    )

    databases: dict[InventoryName, DatabaseSettings] = Field(default_factory=dict)
    markets: dict[MarketName, MarketSettings] = Field(default_factory=seed_markets, description="the trading "
                                                      "calendar of each market (by default USD/COP and crypto)")
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
    trading_safety: TradingSafetySettings = Field(default_factory=TradingSafetySettings)
    redis: dict[InventoryName, RedisSettings] = Field(default_factory=dict, description="the platform's Redis "
                                                      "instances (the memory/learning system)")
    services: ServicesSettings = Field(default_factory=ServicesSettings)
    connections: ConnectionsSettings = Field(default_factory=ConnectionsSettings)
    config_rollback: ConfigRollbackSettings = Field(default_factory=ConfigRollbackSettings)
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
                raise refused_at(("cleanup", "allowed_roots", i), f"allowed root {str(root)!r} {why}: cleanup never "
                                 f"deletes there; {ALLOWED_ROOT_FIX}, {fix}")
        for index, rule in enumerate(self.cleanup.rules):
            for i, root in enumerate(rule.roots if isinstance(rule, FileRule) else []):
                if why := protected_paths.root_refusal(root, kept):
                    raise refused_at(("cleanup", "rules", index, "roots", i), f"rule {rule.name!r}: root "
                                     f"{str(root)!r} {why}: cleanup never deletes there; {RULE_ROOT_FIX}, {fix}")
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

    def redis_or_raise(self, name: str) -> RedisSettings:
        try:
            return self.redis[name]
        except KeyError:
            known = ", ".join(sorted(self.redis)) or "none"
            raise ConfigurationError(
                f"Redis instance {name!r} is not in the inventory (configured: {known}).",
                hint=f"add [redis.{_toml_key(name)}] to {config_path()} or pick a configured one.",
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
                raise refused_at(("hosts",), f"host {host!r} is listed twice")
            seen.add(host)
        if self.hosts and self.host_name not in seen:
            raise refused_at(("host_name",), f"this host's name {self.host_name!r} is not one of hosts "
                             f"({', '.join(self.hosts)}): set {env_variable('host_name')} on this host to its "
                             "name as hosts lists it, or add this host to hosts")
        if self.several_hosts and urlparse(self.repository.url).scheme == "file":
            raise refused_at(("repository", "url"), f"repository {self.repository.url!r} is a directory of one "
                             f"host, but hosts declares {len(self.hosts)} ({', '.join(self.hosts)}): the "
                             "repository must be shared (S3 or another shared store: s3://bucket/prefix, with "
                             "endpoint_url for MinIO or Ceph) once there is more than one host")
        return self

    @model_validator(mode="after")
    def _kill_switch_database_is_known(self) -> Settings:
        """A database switch configured on purpose names an inventory database (found out at load, not mid-stop).
        The default (the seeds' trading_db) is tried only where the inventory has it, and reported skipped
        otherwise."""
        switch = self.trading_safety.database
        if ("database" in self.trading_safety.model_fields_set and switch is not None
                and switch.database not in self.databases):
            raise ValueError(f"[trading_safety.database] database {switch.database!r} is not in [databases] "
                             f"(configured: {', '.join(sorted(self.databases))})")
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
        """The secret values held in the settings themselves (not in Secret blocks): every section's ``Dsn``
        passwords and other ``SecretStr`` values, found by their type."""
        return secrets_held(self)[0]

    @cached_property
    def secrets(self) -> list[str]:
        """Every secret value this configuration knows, Secret blocks included, all registered for scrubbing.

        A runbook run reads this once at its start, so a value from a block is scrubbed even from what a tool
        prints before the step that uses it."""
        found = self.plain_secrets()
        for block in secrets_held(self)[1]:
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
