"""Configuration rollback: the operations runbook's "PM2 Configuration Rollback" (``cp ecosystem.config.cjs
ecosystem.config.backup.cjs``, put the previous version back, ``pm2 reload ecosystem.config.cjs``) for any group of
configuration files of ``[config_rollback]``, as a run that shows the diff, asks for approval, keeps what it
replaces, reloads the service that reads the files and checks it is healthy, and puts the previous files back by
itself when it is not.

The targets come from a version the runbook kept (``source=kept``: before every rollback, or on request with
``action=keep`` before a deploy changes the files) or from a cluster backup's archive of ``[cluster] config_files``
(``source=backup``). The plan is each file's unified diff (values of secret-looking keys masked) and a hash over
(file, current SHA-256, target SHA-256): a file that changed after the plan is refused, nothing written.

Trigger: ``runbooks run config-rollback -p group=<name> -p reason=...`` (dry run first: it prints the diff and the
hash; ``-p confirm=<hash>`` approves unattended), or the ``config-rollback`` deployment. Never automatic.
Blast radius: the group's files (only those listed in the settings are ever written) and one reload of their owner
(PM2 app, Compose service, or PostgreSQL's ``pg_reload_conf()``); a few seconds of restart for a PM2 app in fork
mode or a Compose service. Rollback: automatic when health fails after the reload; otherwise run it again with
``source=kept``: the files it replaced are the newest kept version (``<file>.runbooks-<UTC time>`` beside each).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.configfiles import ConfigFile, KeptRecords, can_write_or_raise
from runbooks.adapters.postgres import describe
from runbooks.adapters.repository import open_repository
from runbooks.adapters.workdirs import WorkDirs
from runbooks.core.errors import ConfigurationError, Refused, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.config_rollback import (
    VERSION_PATTERN,
    ConfigPlan,
    FilePlan,
    changed_since_plan,
    config_diff,
    plan_hash,
)
from runbooks.decisions.health import HealthCheck
from runbooks.decisions.report import inline, report_tail, started, table
from runbooks.frame import Approval, RunbookResult, RunbookRun, host_lock, request_approval
from runbooks.frame.approval import POLL_HELP, TIMEOUT_HELP
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import InventoryChoices, takes
from runbooks.frame.words import Reason
from runbooks.settings import InventoryName, Settings
from runbooks.settings.backup import BackupSelector
from runbooks.settings.config_rollback import ConfigGroup
from runbooks.settings.fields import AbsolutePath
from runbooks.settings.services import ComposeService, Pm2Service
from runbooks.tasks.configfiles import (
    find_config_backup,
    keep_config_files,
    prune_kept_versions,
    read_backup_config,
    read_config_files,
    read_kept_version,
    reload_config_owner,
    verify_postgres_config,
    write_config_files,
)
from runbooks.tasks.health import check_api_health
from runbooks.tasks.reports import publish_report
from runbooks.tasks.services import Recovery, wait_until_service_healthy
from runbooks.tasks.storage import restore_config_files

RUNBOOK = "config-rollback"


class ConfigRollbackParameters(BaseModel):
    """Which group, where its targets come from, and why."""

    model_config = ConfigDict(extra="forbid")

    group: Annotated[InventoryName, InventoryChoices("config_groups")] = Field(
        description="The [config_rollback.groups] group whose files are put back.")
    reason: Reason = Field(min_length=1, max_length=500, description="Why (in the report, the log and the kept "
                           "version's record).")
    action: Literal["rollback", "keep"] = Field(default="rollback", description="rollback: put a previous version "
                                                "back; keep: only keep the files as they are now (before a deploy "
                                                "changes them), as a version a later rollback can put back.")
    source: Literal["kept", "backup"] = Field(default="kept", description="kept: a version this runbook kept; "
                                              "backup: the files a cluster backup archived ([cluster] config_files).")
    version: str | None = Field(default=None, pattern=VERSION_PATTERN, description="source kept: the kept version "
                                "(20261121T020000Z, as the report lists them); empty: the newest.")
    backup_id: BackupSelector = Field(default="latest", description="source backup: the cluster backup, 'latest' "
                                      "or a backup id such as 20261121T020000Z.")
    files: list[AbsolutePath] = Field(default_factory=list, max_length=100, description="Only these files of the "
                                      "group; empty: all of them.")
    dry_run: bool = Field(default=False, description="Read everything and print the plan (the diff and its hash); "
                          "write and reload nothing.")
    confirm: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$", description="The plan hash a dry run "
                                "printed: approves exactly that plan, unattended.")
    approval_timeout_seconds: int = Field(default=1800, ge=10, le=86400, description=TIMEOUT_HELP)
    approval_poll_seconds: int = Field(default=5, ge=1, le=300, description=POLL_HELP)

    @model_validator(mode="after")
    def _consistent(self) -> ConfigRollbackParameters:
        if self.version is not None and self.source != "kept":
            raise ValueError("version names a kept version: it goes with source=kept")
        if self.backup_id != "latest" and self.source != "backup":
            raise ValueError("backup_id goes with source=backup")
        if self.action == "keep" and (self.version or self.backup_id != "latest" or self.source != "kept"
                                      or self.confirm):
            raise ValueError("action=keep only keeps the files as they are: leave source, version, backup_id and "
                             "confirm out")
        return self

    @field_validator("files")
    @classmethod
    def _once(cls, files: list[Path]) -> list[Path]:
        if len(set(files)) != len(files):
            raise ValueError("a file is named twice: name each file once")
        return files

    def check_against(self, settings: Settings) -> ConfigGroup:
        """Refuse (ConfigurationError) a group the settings do not name, another host's group, a file outside the
        group and an owner the settings cannot reload; the CLI calls it before any run."""
        groups = settings.config_rollback.groups
        if self.group not in groups:
            raise ConfigurationError(
                f"config-rollback: no group {self.group[:80]!r} in [config_rollback.groups] "
                f"({', '.join(sorted(groups)) or 'none configured'}).",
                hint="name one of them, or add it under [config_rollback.groups.<name>]; nothing was done.")
        group = groups[self.group]
        if not group.here(settings.host_name):
            raise ConfigurationError(f"config-rollback: group {self.group!r} is on host {group.on_host!r}, and this "
                                     f"is {settings.host_name!r}.", hint=f"run it on that host (work queue "
                                     f"host-{group.on_host}); nothing was done.")
        if outside := [str(p) for p in self.files if p not in group.files]:
            raise ConfigurationError(f"config-rollback: {', '.join(repr(p[:200]) for p in outside)} is not a file of "
                                     f"group {self.group!r}; only the files the settings list are ever written.",
                                     hint=f"name files among {', '.join(str(f) for f in group.files)}; nothing was "
                                     "done.")
        if group.owner == "pm2" and group.service not in settings.services.pm2:
            raise ConfigurationError(f"group {self.group!r} is reloaded by PM2 app {group.service!r}, which "
                                     "[services.pm2] does not name.", hint="add it there; nothing was done.")
        if group.owner == "compose" and group.service not in settings.services.compose:
            raise ConfigurationError(f"group {self.group!r} is reloaded by Compose service {group.service!r}, "
                                     "which [services.compose] does not name.", hint="add it there; nothing was done.")
        if group.owner == "postgres" and settings.cluster.database() is None and self.action == "rollback":
            raise ConfigurationError(f"group {self.group!r} is reloaded by PostgreSQL, and [cluster] has no dsn to "
                                     "call pg_reload_conf() with.", hint="set [cluster] dsn (a superuser); nothing "
                                     "was done.")
        return group


class ConfigRollbackResult(RunbookResult):
    group: str
    action: str
    source: str
    reason: str
    dry_run: bool = False
    plan: ConfigPlan | None = None
    approval: Approval | None = None
    kept_version: str | None = Field(default=None, description="the version this run kept (the files it replaced)")
    written: list[str] = Field(default_factory=list)
    reloaded: str | None = None
    health: Recovery | None = None
    api: HealthCheck | None = None
    rolled_back_itself: bool = Field(default=False, description="health failed after the reload, and the run put "
                                     "the previous files back")
    put_back: list[str] = Field(default_factory=list)
    not_put_back: list[str] = Field(default_factory=list, description="files changed by someone else after the "
                                    "write: left as they were")
    health_after_put_back: Recovery | None = None
    pruned: list[str] = Field(default_factory=list, description="kept versions deleted (beyond keep_versions)")
    outcome: str = "none"


def render_report(result: ConfigRollbackResult) -> str:
    lines = [f"# Config rollback {result.group} — {result.outcome}", "",
             f"{started(result)}. Action: {result.action}, source: {result.source}. Reason: {inline(result.reason)}.",
             ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    plan = result.plan
    if plan:
        origin = f"kept version {plan.version}" if plan.source == "kept" else f"cluster backup {plan.backup_id}"
        lines += ["## Plan" + (" (dry run: nothing was written)" if result.dry_run else ""), "",
                  f"Put back {origin} into {len(plan.changing)} of {len(plan.files)} files, then reload "
                  f"{plan.owner}. Plan hash `{plan.plan_hash}`. Values of secret-looking keys are masked.", "",
                  table(["file", "now (sha256)", "target (sha256)", "change"],
                        [[f.path, f.current_sha256[:12], f.target_sha256[:12], "write" if f.changes else "same"]
                         for f in plan.files])]
        for f in plan.changing:
            lines += ["", f"### {f.path}", "", "```diff", f.diff, "```"]
        lines.append("")
    if result.approval:
        a = result.approval
        lines += [f"**{'Approved' if a.approved else 'Not approved'}** by {a.approver} ({a.via}): {a.reason}", ""]
    if result.kept_version:
        lines += [f"Kept the files as they were as version `{result.kept_version}`.", ""]
    if result.health:
        h = result.health
        lines += [f"After the reload of {result.reloaded}: {'healthy' if h.healthy else 'NOT healthy'} "
                  f"({h.detail}, {h.seconds:.1f} s).", ""]
    if result.api:
        lines += [f"Platform health ({result.api.name}): {result.api.status}"
                  + (f", {result.api.detail}" if result.api.detail else "") + ".", ""]
    if result.rolled_back_itself:
        lines += ["## Rolled back itself", "", f"Previous files put back: {', '.join(result.put_back) or 'none'}."
                  + (f" Left as someone changed them: {', '.join(result.not_put_back)}." if result.not_put_back
                     else "")]
        if result.health_after_put_back:
            h = result.health_after_put_back
            lines.append(f"After the reload: {'healthy' if h.healthy else 'NOT healthy'} ({h.detail}).")
        lines.append("")
    if result.pruned:
        lines += [f"Deleted old kept versions: {', '.join(result.pruned)}.", ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _run_name() -> str:
    p = run_parameters()
    return run_name(RUNBOOK, p.get("group"), p.get("action") if p.get("action") == "keep" else p.get("source"),
                    dry_run=bool(p.get("dry_run")), stamp=True)


def _owner(settings: Settings, group: ConfigGroup) -> tuple[Pm2Service | ComposeService | None,
                                                            dict[str, Any] | None, str]:
    """The service or the server that reads the group's files, and how the report names it."""
    if group.owner == "pm2":
        assert group.service is not None
        pm2 = settings.services.pm2[group.service]
        return pm2, None, f"PM2 app {pm2.app!r} (pm2 reload {pm2.ecosystem_file} --only {pm2.app} --update-env)"
    if group.owner == "compose":
        assert group.service is not None
        svc = settings.services.compose[group.service]
        return svc, None, f"Compose service {svc.project}/{svc.service} (its containers restarted)"
    database = settings.cluster.database()
    assert database is not None
    params = database.conninfo()
    return None, params, f"PostgreSQL {describe(params)} (pg_reload_conf())"


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(ConfigRollbackParameters)
def config_rollback_flow(params: ConfigRollbackParameters) -> State:
    """Plan (diff), approve, keep, write, reload, verify; put the previous files back if health fails."""
    run: RunbookRun[ConfigRollbackResult] = RunbookRun(RUNBOOK, resource=params.group)
    settings = run.settings
    result = ConfigRollbackResult(started_at=run.started_at, group=params.group, action=params.action,
                                  source=params.source, reason=params.reason, dry_run=params.dry_run)
    run.report(result, render=render_report, key=f"config-rollback-report-{params.group}",
               description="Configuration rollback (the operations runbook's PM2 Configuration Rollback)")
    with run.step("check settings"):
        group = params.check_against(settings)
    records = KeptRecords(settings.config_rollback.records(settings.state_dir.expanduser()))
    paths = list(params.files or group.files)
    locks, lock_name = settings.state_dir.expanduser() / "locks", f"{RUNBOOK}-{params.group}"

    if params.action == "keep":
        with run.step("read files") as figures:
            currents = read_config_files(group=group, paths=paths)
            figures.update(files=len(currents))
        if params.dry_run:
            result.outcome, result.succeeded = "dry run: would keep the files", True
            return run.conclude(result)
        with host_lock(run, directory=locks, name=lock_name):
            with run.step("keep current files", destructive=True) as figures:
                kept = keep_config_files(records=records, group_name=params.group, group=group, files=currents,
                                         why=f"kept on request: {params.reason}", flow_run_id=run.flow_run_id)
                result.kept_version = kept.version
                figures.update(version=kept.version)
            with run.step("prune kept versions", destructive=True):
                result.pruned = prune_kept_versions(records=records, group_name=params.group, group=group,
                                                    keep=group.keep_versions, protect={kept.version})
        result.outcome, result.succeeded = f"kept as {kept.version}", True
        return run.conclude(result, message=result.outcome)

    service, server, owner = _owner(settings, group)
    plan, targets = _plan(run, params, settings, group, records, paths, owner)
    result.plan = plan
    publish_report(key=f"config-rollback-plan-{params.group}", markdown=render_report(result),
                   description="Configuration rollback plan (diff) awaiting approval")
    if not plan.changing:
        result.outcome, result.succeeded = "nothing to do: the files already hold the target", True
        return run.conclude(result)
    if params.dry_run:
        run.logger.info("Dry run: would write %s and reload %s; plan hash %s",
                        ", ".join(f.path for f in plan.changing), owner, plan.plan_hash)
        result.outcome, result.succeeded = "dry run", True
        result.next_steps.append(f"Run it again with confirm={plan.plan_hash} to apply exactly this plan.")
        return run.conclude(result, message=f"dry run: plan {plan.plan_hash}")
    result.approval = request_approval(
        run, plan_hash=plan.plan_hash, confirm=params.confirm,
        summary=f"Put back {len(plan.changing)} configuration file(s) of {params.group!r} "
                f"({', '.join(f.path for f in plan.changing)}) and reload {owner}: {params.reason}",
        timeout_seconds=params.approval_timeout_seconds, poll_seconds=params.approval_poll_seconds,
        plan_artifact=f"config-rollback-plan-{params.group}")
    if not result.approval.approved:
        result.declined = f"{result.approval.via}: {result.approval.reason}"
        result.outcome = "not approved: nothing changed"
        return run.conclude(result)

    with ExitStack() as held:
        held.enter_context(host_lock(run, directory=locks, name=lock_name))
        with run.step("check files unchanged since the plan") as figures:
            now = {f.path: f for f in read_config_files(group=group, paths=paths)}
            drift = changed_since_plan(plan, {p: f.sha256 for p, f in now.items()})
            figures.update(changed=len(drift))
            if drift:
                raise Refused(f"{', '.join(drift)} changed since the plan was made (plan {plan.plan_hash}); "
                              "nothing was written.", hint="run a dry run again, read the new diff and confirm "
                              "its hash.")
        with run.step("keep current files", destructive=True) as figures:
            kept = keep_config_files(records=records, group_name=params.group, group=group,
                                     files=[now[p] for p in sorted(now)],
                                     why=f"replaced by config-rollback ({params.reason})", flow_run_id=run.flow_run_id)
            result.kept_version = kept.version
            figures.update(version=kept.version)
        changing = [f.path for f in plan.changing]
        try:
            with run.step("write target files", destructive=True) as figures:
                result.written = write_config_files(group=group, writes=[(now[p], targets[p].data)
                                                                         for p in changing])
                figures.update(files=len(result.written))
        except RunbookError:
            _undo_partial_write(run, group, targets, now, changing, result)
            raise
        result.reloaded = owner
        with run.step("reload owner", destructive=True):
            reloaded_at = reload_config_owner(service=service, server=server, where=owner)
        with run.step("verify health") as figures:
            result.health, result.api = _verify(settings, group, service, server, owner, reloaded_at)
            figures.update(healthy=_healthy(result.health, result.api))
        if not _healthy(result.health, result.api):
            _put_back(run, group, service, server, owner, targets, now, changing, result)
        with run.step("prune kept versions", destructive=True):
            protect = {kept.version, *([plan.version] if plan.version else [])}
            result.pruned = prune_kept_versions(records=records, group_name=params.group, group=group,
                                                keep=group.keep_versions, protect=protect)
    if result.rolled_back_itself:
        return run.conclude(result)
    result.outcome, result.succeeded = "rolled back and healthy", True
    run.steps.event("config.rolled-back", about=f"config.{params.group}", source=params.source,
                    version=plan.version, backup_id=plan.backup_id, kept_version=kept.version, reason=params.reason)
    result.next_steps.append(f"The replaced files are kept as version {kept.version}: run config-rollback with "
                             f"source=kept version={kept.version} to put them back.")
    return run.conclude(result, message=f"{params.group}: rolled back, {owner} healthy")


def _plan(run: RunbookRun[ConfigRollbackResult], params: ConfigRollbackParameters, settings: Settings,
          group: ConfigGroup, records: KeptRecords, paths: list[Path],
          owner: str) -> tuple[ConfigPlan, dict[str, ConfigFile]]:
    """Read the targets and the files as they are; the plan is their diff and its hash."""
    version = backup_id = None
    with run.step("read targets", source=params.source) as figures:
        if params.source == "kept":
            found, targets = read_kept_version(records=records, group_name=params.group, group=group,
                                               version=params.version, paths=paths)
            version = found.version
        else:
            catalog = BackupCatalog(open_repository(settings.repository))
            manifest = find_config_backup(catalog=catalog, cluster=settings.cluster.name, backup_id=params.backup_id)
            backup_id = manifest.backup_id
            workdirs = WorkDirs(settings.work_root)
            workdir = workdirs.create(RUNBOOK, flow_run_id=run.flow_run_id)
            try:
                restored = restore_config_files(catalog=catalog, manifest=manifest, dest=workdir / "config",
                                                originals=paths)
                targets = read_backup_config(restored=restored, backup_id=backup_id, group=group, paths=paths)
            finally:
                workdirs.remove(workdir)
        figures.update(version=version or backup_id, files=len(targets))
    with run.step("read current files") as figures:
        currents = {f.path: f for f in read_config_files(group=group, paths=paths)}
        figures.update(files=len(currents))
    files = []
    for path in map(str, paths):
        now, target = currents[path], targets[path]
        files.append(FilePlan(path=path, current_sha256=now.sha256, target_sha256=target.sha256,
                              current_bytes=len(now.data), target_bytes=len(target.data),
                              changes=now.sha256 != target.sha256, diff=config_diff(path, now.data, target.data)))
        if now.sha256 != target.sha256:
            can_write_or_raise(Path(path), like=now)
    origin = version if params.source == "kept" else backup_id
    assert origin is not None
    plan = ConfigPlan(group=params.group, source=params.source, version=version, backup_id=backup_id, owner=owner,
                      files=files, plan_hash=plan_hash(group=params.group, source=params.source, origin=origin,
                                                       files=files))
    return plan, targets


def _healthy(health: Recovery | None, api: HealthCheck | None) -> bool:
    return health is not None and health.healthy and (api is None or api.status in ("ok", "warn"))


def _verify(settings: Settings, group: ConfigGroup, service: Pm2Service | ComposeService | None,
            server: dict[str, Any] | None, owner: str, reloaded_at: Any) -> tuple[Recovery, HealthCheck | None]:
    """The owner healthy again (PM2/Compose: up and stable since the reload; PostgreSQL: answers, no error in its
    files), then the platform's health endpoint when the service names one."""
    if service is None:
        assert server is not None
        return verify_postgres_config(server=server, where=owner, timeout_seconds=group.healthy_timeout_seconds), None
    kind: Literal["pm2", "compose"] = "pm2" if isinstance(service, Pm2Service) else "compose"
    health = wait_until_service_healthy(kind=kind, service=service, restarted_at=reloaded_at)
    api_settings = {"trading_api": settings.trading_api, "inference_api": settings.inference_api,
                    "none": None}[service.verify_api]
    if not health.healthy or api_settings is None:
        return health, None
    deadline = time.monotonic() + service.healthy_timeout_seconds
    while True:  # a reloaded API takes a moment to accept requests
        check = check_api_health(name=service.verify_api.replace("_", " "), api=api_settings,
                                 baseline=settings.health)
        if check.status in ("ok", "warn") or time.monotonic() >= deadline:
            return health, check
        time.sleep(service.poll_seconds)


def _undo_partial_write(run: RunbookRun[ConfigRollbackResult], group: ConfigGroup, targets: dict[str, ConfigFile],
                        previous: dict[str, ConfigFile], changing: list[str], result: ConfigRollbackResult) -> None:
    """Writing stopped half-way (a full disk, a file swapped for a link): the files it already wrote get their
    previous content back before anything reloads, so the owner never reads half a rollback."""
    try:
        with run.step("put back what was written", destructive=True) as figures:
            now = {f.path: f for f in read_config_files(group=group, paths=[Path(p) for p in changing])}
            back = [p for p in changing
                    if now[p].sha256 == targets[p].sha256 and targets[p].sha256 != previous[p].sha256]
            result.put_back = write_config_files(group=group, writes=[(now[p], previous[p].data) for p in back])
            figures.update(files=len(result.put_back))
    except RunbookError as exc:
        run.logger.error("Putting back the files a failed write changed failed too: %s", scrub(str(exc)))


def _put_back(run: RunbookRun[ConfigRollbackResult], group: ConfigGroup,
              service: Pm2Service | ComposeService | None, server: dict[str, Any] | None, owner: str,
              targets: dict[str, ConfigFile], previous: dict[str, ConfigFile], changing: list[str],
              result: ConfigRollbackResult) -> None:
    """Health failed after the reload: write the files as they were before this run (those still holding what it
    wrote; one someone changed since is theirs), reload again, verify again. The run fails either way."""
    assert result.health is not None
    why = result.health.detail if not result.health.healthy else \
        f"the platform's health endpoint is {result.api.status if result.api else '?'}"
    run.logger.error("%s is not healthy after the rollback (%s): putting the previous files back", owner, why)
    result.rolled_back_itself = True
    try:
        with run.step("put previous files back", destructive=True) as figures:
            now = {f.path: f for f in read_config_files(group=group, paths=[Path(p) for p in changing])}
            back = [p for p in changing if now[p].sha256 == targets[p].sha256]
            result.not_put_back = [p for p in changing if p not in back]
            result.put_back = write_config_files(group=group, writes=[(now[p], previous[p].data) for p in back])
            figures.update(files=len(result.put_back), left=len(result.not_put_back))
        with run.step("reload owner again", destructive=True):
            again = reload_config_owner(service=service, server=server, where=owner)
        with run.step("verify health again") as figures:
            result.health_after_put_back, api = _verify(run.settings, group, service, server, owner, again)
            figures.update(healthy=_healthy(result.health_after_put_back, api))
    except RunbookError as exc:
        result.error = (f"the rollback made {owner} unhealthy ({why}), and putting the previous files back failed: "
                        f"{scrub(str(exc))}")
        result.outcome = "ROLLED BACK ITSELF: FAILED"
        result.next_steps.append(f"Put the files back by hand from kept version {result.kept_version} "
                                 "(<file>.runbooks-<version> beside each) and reload the service.")
        return
    healthy_again = _healthy(result.health_after_put_back, api)
    result.outcome = "rolled back itself" + ("" if healthy_again else ": still NOT healthy")
    result.error = (f"rolled back itself: {owner} was not healthy after the rollback ({why}); the previous files "
                    f"are back and it is {'healthy again' if healthy_again else 'STILL NOT healthy'}")
    if result.not_put_back:
        result.error += f"; left as someone changed them since: {', '.join(result.not_put_back)}"
    result.next_steps.append("Read the service's logs for why the target configuration was refused; fix it before "
                             "trying again (the target stays where it came from).")
    if not healthy_again:
        result.next_steps.append("The service is not healthy even with its previous files: treat it as an outage "
                                 "(restart-service, the service's logs).")
