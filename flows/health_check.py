"""The daily health check: seed 001's ``health-check.sh`` (API health, database, Redis, PM2, Docker services, disk,
memory, CPU averaged over ``[health] cpu_window_seconds`` since the baseline means sustained load) and its
performance baseline, plus seed 001's error grep, as a flow run every morning (seed 003's daily
maintenance), sharing its tasks with the DR drill, which runs them on the restored platform.

Trigger: ``runbooks run health-check`` or the ``health-check-daily`` deployment (07:00 UTC); on several hosts,
``health-check-daily`` checks the platform once (any worker) and each host's own disk, memory and CPU are checked
by its per-host copy (``health-check-daily-<host>``, work queue ``host-<host>``, ``on_host`` set, ``platform``
false: ``deployments/per_host.py``), which another host's worker refuses to run. Blast radius: none; it only
reads. A run fails when any check is past its alert threshold or did not answer, and notifies on-call
(P2) through ``[notifications] block``; warnings are reported only. Rollback: nothing to roll back.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field, model_validator

from runbooks.core.errors import RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.health import HealthCheck, Status, worst
from runbooks.decisions.incidents import Notice
from runbooks.decisions.report import report_tail, table
from runbooks.frame import RunbookResult, RunbookRun, notify
from runbooks.frame.locks import ON_HOST_HELP, require_this_host
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import InventoryChoices, takes
from runbooks.settings import HostName, Settings
from runbooks.tasks.health import check_api_health, check_database_health, check_host_health, count_recent_errors
from runbooks.tasks.redis import check_redis_health
from runbooks.tasks.services import check_compose_health, check_pm2_health, state_file_of

RUNBOOK = "health-check"


class HealthCheckParameters(BaseModel):
    """What to look at; the thresholds are seed 001's baseline in the settings (``[health]``)."""

    model_config = ConfigDict(extra="forbid")

    host: bool = Field(default=True, description="Check this host's disk, memory and CPU (the worker's host).")
    platform: bool = Field(default=True, description="Check the platform: the trading and inference APIs, every "
                           "database and the configured error logs. A per-host deployment sets false, so the "
                           "platform is checked (and pages) once for the fleet, not once per host.")
    notify_on: Status = Field(default="alert", description="Notify on-call at this status or worse "
                              "(warn, alert or failed).")
    on_host: Annotated[HostName, InventoryChoices("hosts")] | None = Field(default=None, description=ON_HOST_HELP)

    @model_validator(mode="after")
    def _checks_something(self) -> HealthCheckParameters:
        if not (self.host or self.platform):
            raise ValueError("host and platform are both false: there is nothing to check")
        return self

    def check_against(self, settings: Settings) -> None:
        """Refuse (ConfigurationError) a run meant for another host: it would judge this host's disk, memory and
        CPU as that host's."""
        if self.host:
            require_this_host(settings, self.on_host, runbook=RUNBOOK, acts="judge")


class HealthCheckResult(RunbookResult):
    host: str | None = Field(default=None, description="the host whose disk, memory and CPU were checked (its "
                             "host_name); none when the host checks were off")
    checks: list[HealthCheck] = Field(default_factory=list)
    status: Status = "ok"
    notification: str | None = None


_ORDER: list[Status] = ["not_configured", "ok", "warn", "alert", "failed"]


def render_report(result: HealthCheckResult) -> str:
    lines = [f"# Daily health check — {result.status.upper()}", "",
             f"Started {result.started_at:%Y-%m-%d %H:%M:%S} UTC"
             + (f" on {result.host}" if result.host else "") + f", {result.seconds:.1f} s."
             + (f" Notification: {result.notification}." if result.notification else ""), ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    lines += [table(["check", "status", "reading", "detail"],
                    [[c.name, c.status, "-" if c.value is None else f"{c.value:g} {c.unit}", c.detail or "-"]
                     for c in result.checks])]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _run_name() -> str:
    p = run_parameters()
    return run_name(RUNBOOK, p.get("on_host"), None if p.get("host", True) else "no-host",
                    None if p.get("platform", True) else "host-only", stamp=True)


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(HealthCheckParameters)
def health_check_flow(params: HealthCheckParameters) -> State:
    """Every check of the operations runbook's health-check script, graded against its performance baseline; one
    report, one verdict."""
    run: RunbookRun[HealthCheckResult] = RunbookRun(RUNBOOK, resource="platform")
    settings = run.settings
    baseline = settings.health
    # The host the run is about: a run refused for another host must not read as this host's failure.
    result = HealthCheckResult(started_at=run.started_at,
                               host=(params.on_host or settings.host_name) if params.host else None)
    run.report(result, render=render_report, key="health-check-report",
               description="Daily health check (the operations runbook's health-check script)")
    try:
        if params.host and params.on_host is not None:  # a run meant for another host judges nothing here
            with run.step("check host"):
                params.check_against(settings)
        if params.platform:
            with run.step("trading API") as figures:
                result.checks.append(check_api_health(name="trading API", api=settings.trading_api,
                                                      baseline=baseline))
                figures.update(status=result.checks[-1].status)
            with run.step("inference API") as figures:
                result.checks.append(check_api_health(name="inference API", api=settings.inference_api,
                                                      baseline=baseline))
                figures.update(status=result.checks[-1].status)
            with run.step("databases") as figures:
                for name, database in settings.databases.items():
                    result.checks.append(check_database_health(name=name, database=database, baseline=baseline))
                figures.update(status=worst(result.checks[2:]))
            for name, instance in settings.redis.items():
                with run.step(f"redis {name}") as figures:
                    found = check_redis_health(name=name, settings=instance)
                    result.checks += found
                    figures.update(status=worst(found))
        if params.host:
            with run.step("host") as figures:
                result.checks += check_host_health(baseline=baseline)
                figures.update(status=worst(result.checks), host=settings.host_name)
            services = settings.services
            if services.pm2 or services.compose:  # this host's PM2 daemon; services of other hosts are skipped
                with run.step("services") as figures:
                    state_file = state_file_of(services, settings.state_dir)
                    found = check_pm2_health(services=services, state_file=state_file, host_name=settings.host_name)
                    found += check_compose_health(services=services, state_file=state_file,
                                                  host_name=settings.host_name)
                    result.checks += found
                    figures.update(status=worst(found))
        if params.platform and baseline.error_logs:
            with run.step("recent errors") as figures:
                found = count_recent_errors(baseline=baseline)
                result.checks += found
                figures.update(status=worst(found))
    except RunbookError as exc:
        result.error = scrub(str(exc))
    result.status = "failed" if result.error else worst(result.checks)
    bad = [c for c in result.checks if _ORDER.index(c.status) >= _ORDER.index("alert")]
    for check in bad:
        result.next_steps.append(f"{check.name}: {check.status} ({check.detail or check.value}): see the "
                                 "operations runbook's troubleshooting for it.")
    if _ORDER.index(result.status) >= _ORDER.index(params.notify_on):
        result.notification = notify(run, Notice(
            kind="start", severity="P2", title=f"Health check: {result.status}"
            + (f" on {result.host}" if result.host else ""),
            impact="the daily health check found the platform outside the operations runbook's performance "
                   "baseline",
            details=[f"{c.name}: {c.status} {c.detail}".strip() for c in result.checks
                     if _ORDER.index(c.status) >= _ORDER.index("warn")] + ([result.error] if result.error else []),
            actions=result.next_steps or ["Rerun the health check once fixed"]))
    unavailable = [c for c in result.checks if c.name.startswith("database ") and c.status == "failed"]
    if unavailable:
        # The USD/COP playbook: a database unavailable is P0. The stop-on-P0 automation may act on it.
        why = "; ".join(f"{c.name} unavailable ({c.detail})" for c in unavailable)
        run.steps.event("escalation", labels={"runbooks.severity": "P0"}, severity="P0", reason=why)
    run.steps.event("health-check.status", status=result.status, alerts=len(bad), host=result.host,
                    platform=params.platform)
    result.succeeded = result.error is None and not bad
    return run.conclude(result)
