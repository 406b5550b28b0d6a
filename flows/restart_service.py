"""Restart a service: the operations runbook's P0 "PM2 High Restart Rate" response (``pm2 restart
ecosystem.config.cjs --update-env``, one app at a time, never ``pm2 restart all``: it can double-spawn when the
config changed) and the methtrader runbook's ``docker-compose restart <service>``, as a run that waits for the
service to be healthy again and checks the platform's health endpoint, and escalates a service that does not come
back.

Trigger: ``runbooks run restart-service -p service=<name> -p reason=...`` or the ``restart-service`` deployment
(a health check's PM2 or Compose alert). Blast radius: the one service named, restarted in place (PM2: that app's
processes; Compose: that service's containers, same configuration), a few seconds of downtime for what it serves;
nothing else is touched. One run per service at a time (a lock of this host's). Rollback: none is needed for a
restart; a service that does not come back is escalated, with what it read, for a human to take over (the
operations runbook's troubleshooting, ``pm2 logs`` / ``docker logs``).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from runbooks.core.errors import ConfigurationError
from runbooks.decisions.health import HealthCheck
from runbooks.decisions.incidents import Notice
from runbooks.decisions.report import report_tail, started, table
from runbooks.frame import RunbookResult, RunbookRun, host_lock, notify
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import InventoryChoices, takes
from runbooks.frame.words import Reason
from runbooks.settings import InventoryName, Settings
from runbooks.settings.services import ComposeService, Pm2Service
from runbooks.tasks.health import check_api_health
from runbooks.tasks.services import (
    Recovery,
    read_compose_service,
    read_pm2_app,
    restart_compose_service,
    restart_pm2_app,
    wait_until_service_healthy,
)

RUNBOOK = "restart-service"


class RestartServiceParameters(BaseModel):
    """Which service, and why; how long to wait and what to verify are ``[services]``'s."""

    model_config = ConfigDict(extra="forbid")

    service: Annotated[InventoryName, InventoryChoices("services")] = Field(
        description="The service to restart, as [services.pm2] or [services.compose] names it.")
    reason: Reason = Field(min_length=1, max_length=500, description="Why it is restarted (in the report, the "
                           "log and any page).")
    dry_run: bool = Field(default=False, description="Read the service and print the plan; restart nothing.")

    def check_against(self, settings: Settings) -> None:
        """Refuse (ConfigurationError) a service the settings do not name; the CLI calls it before any run."""
        names = settings.services.names()
        if self.service not in names:
            raise ConfigurationError(
                f"restart-service: no service {self.service[:80]!r} in [services] "
                f"({', '.join(names) if names else 'none configured'}).",
                hint="name one of them, or add it under [services.pm2.<name>] or [services.compose.<name>]; "
                "nothing was done.")
        service = settings.services.pm2.get(self.service) or settings.services.compose[self.service]
        if not service.here(settings.host_name):
            raise ConfigurationError(
                f"restart-service: {self.service!r} runs on host {service.on_host!r}, and this is "
                f"{settings.host_name!r}.", hint=f"run it on that host (work queue host-{service.on_host}); nothing "
                "was done.")


class RestartPlan(BaseModel):
    service: str
    kind: Literal["pm2", "compose"]
    command: str = Field(description="what the restart does, in the words of the runbook it automates")
    before: list[str] = Field(default_factory=list, description="each process or container as read before")
    healthy_timeout_seconds: float
    verify: str = Field(description="the platform API whose health is checked afterwards, or none")


class RestartServiceResult(RunbookResult):
    service: str
    reason: str
    dry_run: bool = False
    plan: RestartPlan | None = None
    restarted: list[str] = Field(default_factory=list)
    recovery: Recovery | None = None
    api: HealthCheck | None = Field(default=None, description="the platform's health endpoint after the restart")
    action: str = "none"
    escalation: str | None = None
    notification: str | None = None


def render_report(result: RestartServiceResult) -> str:
    lines = [f"# Restart service {result.service} — {result.action}", "",
             f"{started(result)}. Reason: {result.reason}."
             + (f" Notification: {result.notification}." if result.notification else ""), ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.escalation:
        lines += [f"**Escalation:** {result.escalation}", ""]
    plan = result.plan
    if plan:
        lines += ["## Plan" + (" (dry run: nothing was restarted)" if result.dry_run else ""), "",
                  f"`{plan.command}`; then wait up to {plan.healthy_timeout_seconds:g} s for it to be healthy, and "
                  f"check {plan.verify}.", "", table(["before"], [[b] for b in plan.before or ["nothing running"]])]
    if result.recovery:
        r = result.recovery
        lines += ["", "## After", "", f"{'Healthy' if r.healthy else 'NOT healthy'} after {r.seconds:.1f} s "
                  f"({r.readings} readings): {r.detail}."]
    if result.api:
        lines += ["", f"Platform health ({result.api.name}): {result.api.status}"
                  + (f", {result.api.detail}" if result.api.detail else "") + "."]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _run_name() -> str:
    p = run_parameters()
    return run_name(RUNBOOK, p.get("service"), dry_run=bool(p.get("dry_run")), stamp=True)


def _describe(service: Pm2Service | ComposeService, readings: list[Any]) -> tuple[str, list[str]]:
    if isinstance(service, Pm2Service):
        return (f"pm2 restart {service.ecosystem_file} --only {service.app} --update-env",
                [f"{r.name} (id {r.pm_id}): {r.status}, {r.restarts} restarts since created" for r in readings])
    names = " ".join(r.name for r in readings) or f"<no container of {service.project}/{service.service}>"
    return (f"docker restart -t {service.stop_timeout_seconds} {names}",
            [f"{r.name}: {r.state}" + (f", {r.health}" if r.health else "") + f", {r.restart_count} restarts"
             for r in readings])


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(RestartServiceParameters)
def restart_service_flow(params: RestartServiceParameters) -> State:
    """Read the service, restart it, wait until it is healthy, check the platform; escalate if it does not come
    back."""
    run: RunbookRun[RestartServiceResult] = RunbookRun(RUNBOOK, resource=params.service)
    settings = run.settings
    result = RestartServiceResult(started_at=run.started_at, service=params.service, reason=params.reason,
                                  dry_run=params.dry_run)
    run.report(result, render=render_report, key=f"restart-service-report-{params.service}",
               description="Restart a service (the operations runbook's PM2 restart, the methtrader runbook's "
               "compose restart)")
    with run.step("check settings"):
        params.check_against(settings)
    service: Pm2Service | ComposeService
    if params.service in settings.services.pm2:
        kind: Literal["pm2", "compose"] = "pm2"
        service = settings.services.pm2[params.service]
    else:
        kind, service = "compose", settings.services.compose[params.service]
    api = {"trading_api": settings.trading_api, "inference_api": settings.inference_api,
           "none": None}[service.verify_api]

    with run.step("read service", kind=kind) as figures:
        readings: list[Any] = (read_pm2_app(service=service) if isinstance(service, Pm2Service)
                               else read_compose_service(service=service))
        command, before = _describe(service, readings)
        result.plan = RestartPlan(service=params.service, kind=kind, command=command, before=before,
                                  healthy_timeout_seconds=service.healthy_timeout_seconds,
                                  verify=f"[{service.verify_api}] /api/v1/health" if api else "nothing (no API)")
        figures.update(found=len(readings))
    if isinstance(service, ComposeService) and not readings:
        raise ConfigurationError(f"no container of Compose service {params.service!r} "
                                 f"({service.project}/{service.service}, by its labels) exists to restart.",
                                 hint="bring it up with docker compose up -d (a restart needs its container), or "
                                 "fix [services.compose] project/service; nothing was done.")
    if params.dry_run:
        run.logger.info("Dry run: would run %s, then wait up to %g s for %r to be healthy", command,
                        service.healthy_timeout_seconds, params.service)
        result.action, result.succeeded = "dry run", True
        result.next_steps.append("Run it again without dry_run to restart.")
        return run.conclude(result, message=f"dry run: would {command}")

    # An ExitStack, not a nested with: the lock spans the restart, the wait and the verification.
    held = ExitStack()
    try:
        held.enter_context(host_lock(run, directory=settings.state_dir.expanduser() / "locks",
                                     name=f"{RUNBOOK}-{params.service}"))
        with run.step("restart", destructive=True, kind=kind) as figures:
            restarted_at = datetime.now(UTC)
            run.logger.info("Restarting %r (%s): %s", params.service, params.reason, command)
            if isinstance(service, Pm2Service):
                restart_pm2_app(name=params.service, service=service)
                result.restarted = [service.app]
            else:
                result.restarted = restart_compose_service(name=params.service, service=service,
                                                           containers=readings)
            figures.update(restarted=len(result.restarted))
        with run.step("wait until healthy") as figures:
            result.recovery = wait_until_service_healthy(kind=kind, service=service, restarted_at=restarted_at)
            figures.update(healthy=result.recovery.healthy, seconds=round(result.recovery.seconds, 1))
        if result.recovery.healthy and api is not None:
            with run.step("verify platform health") as figures:
                result.api = _platform_health(settings, api, service, name=service.verify_api.replace("_", " "))
                figures.update(status=result.api.status)
    finally:
        held.close()
    assert result.recovery is not None

    if result.recovery.healthy and (result.api is None or result.api.status in ("ok", "warn")):
        result.action, result.succeeded = "restarted (healthy)", True
        run.steps.event("service.restarted", about=f"service.{params.service}", kind=kind, reason=params.reason)
        return run.conclude(result, message=f"{params.service} restarted and healthy")

    if not result.recovery.healthy:
        why = (f"{params.service} is not healthy {service.healthy_timeout_seconds:g} s after a restart: "
               f"{result.recovery.detail}")
    else:
        assert result.api is not None
        why = (f"{params.service} restarted, but the platform's health endpoint is {result.api.status} "
               f"({result.api.detail})")
    severity = service.escalation_severity
    result.action = "restarted: NOT healthy (escalated)"
    result.escalation = f"{severity}: {why}"
    result.next_steps += [
        (f"Read the app's logs (pm2 logs {service.app} --lines 50, pm2 describe {service.app}) and fix the cause"
         if isinstance(service, Pm2Service) else
         f"Read the containers' logs (docker logs <container> --tail 200) of {service.project}/{service.service}"),
        "Do not loop restarts: the operations runbook escalates when restarts persist after manual intervention"]
    run.logger.error("ESCALATE (%s): %s", severity, why)
    run.steps.event("escalation", labels={"runbooks.severity": severity}, severity=severity, reason=why,
                    service=params.service)
    result.notification = notify(run, Notice(
        kind="start", severity=severity, title=f"restart-service: {params.service} did not come back",
        status="Investigating", impact=f"{params.service} is down or unstable after a restart", details=[why],
        actions=[f"Restarted {params.service} ({params.reason})", *result.next_steps]))
    result.error = f"escalated: {why}"
    return run.conclude(result)


def _platform_health(settings: Settings, api: Any, service: Pm2Service | ComposeService, *, name: str) -> HealthCheck:
    """The platform's ``/api/v1/health`` (``check_api_health``), read until it answers healthy or the service's
    timeout has passed again: a restarted API takes a moment to accept requests."""
    deadline = time.monotonic() + service.healthy_timeout_seconds
    while True:
        check = check_api_health(name=name, api=api, baseline=settings.health)
        if check.status in ("ok", "warn") or time.monotonic() >= deadline:
            return check
        time.sleep(service.poll_seconds)
