"""``[services]``: the platform's PM2 processes and Docker Compose services the health check reads and
``restart-service`` restarts. Unconfigured ones are omitted, never shown as placeholders.

The thresholds are the operations runbook's P0 "PM2 High Restart Rate" (``pm2_process_restarts > 3 in 5
minutes``); memory has no figure in the seeds, so its defaults are ours. One name space covers both kinds: the
``restart-service`` runbook takes one ``service`` name, so a name may not be both a PM2 app and a Compose service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runbooks.settings.fields import AbsoluteOsPath, InventoryName, check_http_url
from runbooks.settings.hosts import HostName
from runbooks.settings.notifications import Severity

VerifyApi = Literal["trading_api", "inference_api", "none"]


class RestartPolicy(BaseModel):
    """What both kinds share: the restart-rate threshold, how long a restart may take to be healthy, who is paged."""

    model_config = ConfigDict(extra="forbid")

    restarts_alert: int = Field(default=3, ge=0, le=10_000, description="more restarts than this within "
                                "restart_window_seconds is an alert (the operations runbook's '> 3 in 5 minutes')")
    restart_window_seconds: float = Field(default=300, gt=0, le=86_400, description="the window the restarts are "
                                          "counted in (5 minutes)")
    healthy_timeout_seconds: float = Field(default=120, gt=0, le=3600, description="restart-service waits this long "
                                           "for the service to be healthy again, then escalates")
    stable_seconds: float = Field(default=10, ge=0, le=600, description="healthy means up (and healthy, if it has "
                                  "a health check) for at least this long: a crash-looping process is briefly up")
    poll_seconds: float = Field(default=1, gt=0, le=60, description="how often the wait reads the service")
    verify_api: VerifyApi = Field(default="trading_api", description="the platform API whose /api/v1/health must "
                                  "answer healthy after the restart ([trading_api] or [inference_api]); none: skip")
    escalation_severity: Severity = Field(default="P0", description="the severity of a service that does not come "
                                          "back (the operations runbook lists the PM2 restart rate under P0)")
    on_host: HostName | None = Field(default=None, description="the host whose worker reads and restarts it (its "
                                     "host_name); empty: any host's. Other hosts leave it out of their health "
                                     "check and refuse to restart it")

    def here(self, host_name: str) -> bool:
        """Whether this host reads and restarts it."""
        return self.on_host is None or self.on_host == host_name


class Pm2Service(RestartPolicy):
    """One app as PM2 knows it, restarted through its ecosystem file (the seed's ``pm2 restart
    ecosystem.config.cjs --update-env``; never ``restart all``, which can double-spawn if the config changed)."""

    app: str = Field(min_length=1, max_length=200, description="the app's name in PM2 (pm2 jlist's name)")
    ecosystem_file: AbsoluteOsPath = Field(description="the ecosystem file that declares the app "
                                           "(ecosystem.config.cjs), restarted with --only <app> --update-env")
    pm2: str = Field(default="pm2", min_length=1, max_length=1000, description="the pm2 program (a path, or a name "
                     "looked up on PATH)")
    pm2_home: AbsoluteOsPath | None = Field(default=None, description="PM2_HOME of the daemon that runs the app; "
                                            "empty: the environment's PM2_HOME, else ~/.pm2")
    memory_warn_mb: float = Field(default=1024, gt=0, description="resident memory at which the app warns")
    memory_alert_mb: float = Field(default=2048, gt=0, description="resident memory above which it alerts")
    timeout_seconds: float = Field(default=60, gt=0, le=600, description="a pm2 command is killed after this long")

    @field_validator("app", "pm2")
    @classmethod
    def _plain(cls, value: str) -> str:
        if "\x00" in value or any(ch in value for ch in "\r\n"):
            raise ValueError("must be one line of text without NUL bytes")
        return value

    @model_validator(mode="after")
    def _memory_order(self) -> Pm2Service:
        if self.memory_warn_mb > self.memory_alert_mb:
            raise ValueError("memory_warn_mb must not be above memory_alert_mb")
        return self


class ComposeService(RestartPolicy):
    """One Docker Compose service, found by the labels Compose puts on its containers
    (``com.docker.compose.project`` and ``com.docker.compose.service``) and restarted through the engine's API."""

    project: str = Field(min_length=1, max_length=200, description="the Compose project (com.docker.compose.project)")
    service: str = Field(min_length=1, max_length=200, description="the service (com.docker.compose.service)")
    base_url: str | None = Field(default=None, description="the Docker engine; empty: DOCKER_HOST or the local socket")
    stop_timeout_seconds: int = Field(default=10, ge=0, le=600, description="docker restart's -t: SIGKILL after it")

    @field_validator("project", "service")
    @classmethod
    def _label_value(cls, value: str) -> str:
        if any(ch in value for ch in "=,\x00\r\n"):
            raise ValueError("a label value here may not hold '=', ',', NUL or a line break")
        return value

    @field_validator("base_url")
    @classmethod
    def _engine(cls, value: str | None) -> str | None:
        if not value:
            return None
        if value.startswith(("unix://", "ssh://")):
            return value
        return check_http_url(value.replace("tcp://", "http://", 1)) and value


class ServicesSettings(BaseModel):
    """PM2 processes and Compose services by inventory name."""

    model_config = ConfigDict(extra="forbid")

    pm2: dict[InventoryName, Pm2Service] = Field(default_factory=dict, description="PM2 apps by inventory name")
    compose: dict[InventoryName, ComposeService] = Field(default_factory=dict, description="Compose services by "
                                                         "inventory name")
    state_file: AbsoluteOsPath | None = Field(default=None, description="where the restart counters read are kept "
                                              "(the rate needs earlier readings); empty: <state_dir>/services/"
                                              "restarts.json")

    @model_validator(mode="after")
    def _one_name_space(self) -> ServicesSettings:
        if both := sorted(set(self.pm2) & set(self.compose)):
            raise ValueError(f"{', '.join(both)} is both a PM2 app and a Compose service: restart-service takes one "
                             "name, so give them different names")
        return self

    def names(self) -> list[str]:
        return sorted([*self.pm2, *self.compose])

    def counters_file(self, state_dir: Path) -> Path:
        return self.state_file or state_dir / "services" / "restarts.json"
