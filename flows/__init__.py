"""Runbook flows by kebab-case name. Scheduled maintenance and on-demand recovery use the same task library.

Scheduled maintenance: ``backup``, ``data-freshness``, ``disk-cleanup`` (daily, and on the disk alert),
``health-check`` (daily), ``backup-verification`` (weekly), ``weekly-report`` (Mondays), ``dr-game-day``
(quarterly), ``pitr-backup`` (full weekly, differential daily), ``archive-check`` (every minute),
``pre-open-check`` (30 minutes before each gating market's open). On-demand recovery: ``restore``,
``model-rollback`` (also on a degradation event), ``pitr-setup``, ``pitr-restore``. Trading safety:
``emergency-stop`` (also on a P0 event, where enabled), ``resume-trading``, ``drawdown-limit``,
``exchange-reconnect``. The rest of the platform: ``redis-restore`` (Redis is backed up by ``backup``),
``database-connections``, ``restart-service``, ``config-rollback``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class Runbook:
    name: str
    module: str  # within this package
    flow: str
    parameters: str
    render: str
    kind: str  # "scheduled maintenance" or "on-demand recovery"

    @property
    def entrypoint(self) -> str:
        """The ``flows/<module>.py:<flow>`` entrypoint ``prefect.yaml`` uses, relative to the repository root."""
        return f"flows/{self.module}.py:{self.flow}"

    def load(self) -> tuple[Any, type[BaseModel], Callable[[Any], str]]:
        mod = importlib.import_module(f"{__name__}.{self.module}")
        return getattr(mod, self.flow), getattr(mod, self.parameters), getattr(mod, self.render)


RUNBOOKS: dict[str, Runbook] = {
    "backup": Runbook("backup", "backup", "backup_databases", "BackupParameters", "render_report",
                      "scheduled maintenance"),
    "data-freshness": Runbook("data-freshness", "data_freshness", "data_freshness_flow",
                              "FreshnessParameters", "render_report", "scheduled maintenance"),
    "health-check": Runbook("health-check", "health_check", "health_check_flow", "HealthCheckParameters",
                            "render_report", "scheduled maintenance"),
    "weekly-report": Runbook("weekly-report", "weekly_report", "weekly_report_flow",
                             "WeeklyReportParameters", "render_report", "scheduled maintenance"),
    "dr-game-day": Runbook("dr-game-day", "dr_game_day", "dr_game_day_flow", "DrillParameters",
                           "render_report", "scheduled maintenance"),
    "backup-verification": Runbook("backup-verification", "backup_verification", "verify_backups_flow",
                                   "VerificationParameters", "render_report", "scheduled maintenance"),
    "restore": Runbook("restore", "restore", "restore_database_flow", "RestoreParameters", "render_report",
                       "on-demand recovery"),
    "disk-cleanup": Runbook("disk-cleanup", "disk_cleanup", "disk_cleanup_flow", "CleanupParameters",
                            "render_report", "scheduled maintenance"),
    "model-rollback": Runbook("model-rollback", "model_rollback", "model_rollback_flow", "RollbackParameters",
                              "render_report", "on-demand recovery"),
    "pitr-setup": Runbook("pitr-setup", "pitr_setup", "pitr_setup_flow", "PitrSetupParameters",
                          "render_report", "on-demand recovery"),
    "pitr-backup": Runbook("pitr-backup", "pitr_backup", "pitr_backup_flow", "PitrBackupParameters",
                           "render_report", "scheduled maintenance"),
    "pitr-restore": Runbook("pitr-restore", "pitr_restore", "pitr_restore_flow", "PitrRestoreParameters",
                            "render_report", "on-demand recovery"),
    "archive-check": Runbook("archive-check", "archive_check", "archive_check_flow",
                             "ArchiveCheckParameters", "render_report", "scheduled maintenance"),
    "pre-open-check": Runbook("pre-open-check", "pre_open_check", "pre_open_check_flow",
                              "PreOpenParameters", "render_report", "scheduled maintenance"),
    "emergency-stop": Runbook("emergency-stop", "emergency_stop", "emergency_stop_flow",
                              "EmergencyStopParameters", "render_report", "on-demand recovery"),
    "resume-trading": Runbook("resume-trading", "resume_trading", "resume_trading_flow", "ResumeParameters",
                              "render_report", "on-demand recovery"),
    "drawdown-limit": Runbook("drawdown-limit", "drawdown_limit", "drawdown_limit_flow", "DrawdownParameters",
                              "render_report", "on-demand recovery"),
    "exchange-reconnect": Runbook("exchange-reconnect", "exchange_reconnect", "exchange_reconnect_flow",
                                  "ExchangeParameters", "render_report", "on-demand recovery"),
    "database-connections": Runbook("database-connections", "database_connections", "database_connections_flow",
                                    "ConnectionsParameters", "render_report", "on-demand recovery"),
    "restart-service": Runbook("restart-service", "restart_service", "restart_service_flow",
                               "RestartServiceParameters", "render_report", "on-demand recovery"),
    "config-rollback": Runbook("config-rollback", "config_rollback", "config_rollback_flow",
                               "ConfigRollbackParameters", "render_report", "on-demand recovery"),
    "redis-restore": Runbook("redis-restore", "redis_restore", "redis_restore_flow", "RedisRestoreParameters",
                             "render_report", "on-demand recovery"),
}


def describe_runbooks() -> str:
    """The registry in one line for help texts: ``backup (scheduled maintenance), restore (on-demand recovery)``."""
    return ", ".join(f"{name} ({runbook.kind})" for name, runbook in RUNBOOKS.items())
