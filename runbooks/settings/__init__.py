"""The platform inventory: one typed settings object, loaded once per process.

A new runbook's section: add a module here with its model, add one field to Settings in loader.py. The root object
is the only place that lists sections: the loader's checks (unknown environment variables, keys that differ by
case, where a bad value came from) walk the model tree, and the secrets are found by their type (``Dsn``,
``SecretStr``, ``SecretBlock``). Build the section from the shared types of ``fields`` and import its names from
its own module (``runbooks.settings.pitr``); the names re-exported below are those older code imports from here.

- ``fields``: the shared types and checks (names, connection strings, URLs, paths, durations, secrets);
- one module per section, named after it (``databases``, ``pitr``, ``cleanup``...; ``api`` for the HTTP APIs,
  ``prefect_api`` for ``[prefect]``), and ``hosts`` for this host and the fleet;
- ``loader``: the ``Settings`` root object, ``load_settings`` and the refusals it words.

Sources, highest priority first: keyword arguments, environment variables (``RUNBOOKS_`` prefix, ``__`` between
levels, e.g. ``RUNBOOKS_DATABASES__TRADING_DB__PASSWORD``), then the TOML file named by ``RUNBOOKS_CONFIG``
(default ``./runbooks.toml``). Secrets are ``SecretStr`` and may instead name a Prefect Secret block
(``*_block`` fields); they are resolved only when a connection is made.
"""

from runbooks.settings.api import ApiSettings
from runbooks.settings.approvals import APPROVING_RUNBOOKS
from runbooks.settings.backup import BackupSelector, RetentionPolicy
from runbooks.settings.cleanup import (
    RULE_NAME_PATTERN,
    BackupsRule,
    CleanupSettings,
    DatabaseRule,
    DockerRule,
    FileRule,
)
from runbooks.settings.databases import DatabaseSettings, IntegrityCheck
from runbooks.settings.drill import DrillComponent
from runbooks.settings.fields import Duration, Identifier, InventoryName, resolve_secret, validate_name
from runbooks.settings.freshness import FreshnessSettings, MonitoredTable
from runbooks.settings.health import HealthSettings
from runbooks.settings.hosts import HostName, this_host
from runbooks.settings.loader import (
    SANDBOX_DIR,
    Settings,
    config_path,
    env_variable,
    load_settings,
    validation_message,
)
from runbooks.settings.markets import MarketName
from runbooks.settings.models import MODEL_ID_PATTERN, ModelPolicy
from runbooks.settings.notifications import NotificationSettings, Severity, SeverityLevel
from runbooks.settings.pitr import PitrSettings
from runbooks.settings.repository import RepositorySettings

__all__ = [
    "APPROVING_RUNBOOKS",
    "MODEL_ID_PATTERN",
    "RULE_NAME_PATTERN",
    "SANDBOX_DIR",
    "ApiSettings",
    "BackupSelector",
    "BackupsRule",
    "CleanupSettings",
    "DatabaseRule",
    "DatabaseSettings",
    "DockerRule",
    "DrillComponent",
    "Duration",
    "FileRule",
    "FreshnessSettings",
    "HealthSettings",
    "HostName",
    "Identifier",
    "IntegrityCheck",
    "InventoryName",
    "MarketName",
    "ModelPolicy",
    "MonitoredTable",
    "NotificationSettings",
    "PitrSettings",
    "RepositorySettings",
    "RetentionPolicy",
    "Settings",
    "Severity",
    "SeverityLevel",
    "config_path",
    "env_variable",
    "load_settings",
    "resolve_secret",
    "this_host",
    "validate_name",
    "validation_message",
]
