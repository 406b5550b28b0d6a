"""Disk cleanup: seed 000's "Disk 90% Full" (check usage, find what takes space, clean old logs and Docker
leftovers, check the database's size) with seed 001's baseline (normal < 85 %, alert > 90 %), as a flow that acts
only above the high watermark and stops once the disk is below the low one, lowest-risk rule first.

Trigger: ``runbooks run disk-cleanup`` (a dry run unless ``dry_run=false``), the daily ``disk-cleanup-daily``
deployment, or ``disk-cleanup-on-demand`` when the disk alert fires; on several hosts, their per-host copies
(``disk-cleanup-daily-<host>``, work queue ``host-<host>``, ``on_host`` set: ``deployments/per_host.py``), which
another host's worker refuses to run. Blast radius: this host's files and Docker objects, and the configured
database servers (shared by every host: each host's copy reads their sizes, and runs VACUUM when its rule says so);
files under ``[cleanup]
allowed_roots`` that the rules select (never a protected name, an open file, a symbolic link, another
filesystem, anything in a PostgreSQL data directory; the settings refuse any root that is, lies inside or holds a
system tree, a data directory, the runbooks' state or repositories, or the user's home, and ``force`` changes
none of that), Docker objects the engine reports unused (never a protected label), local backups outside retention
(never the newest verified one); ``_pre_restore_`` databases and ``VACUUM FULL`` only with approval. Rollback:
deleted files are gone (the manifest lists them: restore from host backups); compressed logs are ``gunzip``-ed;
a dropped kept database is restored from its backup with the restore runbook.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from prefect import flow
from prefect.states import State
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.cleanup import (
    Budget,
    Consumer,
    Ledger,
    Manifest,
    TreeOutcome,
    Usage,
    Walk,
    check_root,
    open_files,
)
from runbooks.adapters.dockerclean import DockerObject, DockerOutcome
from runbooks.adapters.records import RestoreRecords
from runbooks.adapters.repository import open_repository
from runbooks.core.errors import ConfigurationError, Refused, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.report import human_bytes, report_tail, table
from runbooks.frame import Approval, RunbookResult, RunbookRun, host_lock, request_approval
from runbooks.frame.approval import POLL_HELP, TIMEOUT_HELP
from runbooks.frame.locks import ON_HOST_HELP, require_this_host
from runbooks.frame.names import listed, run_name, run_parameters
from runbooks.frame.parameters import InventoryChoices, takes
from runbooks.frame.window import ChangeWindow, require_change_window
from runbooks.settings import (
    RULE_NAME_PATTERN,
    BackupsRule,
    DatabaseRule,
    DockerRule,
    FileRule,
    HostName,
    Identifier,
    Settings,
)
from runbooks.tasks.cleanup import clean_files, measure_disks, survey_disk
from runbooks.tasks.docker import remove_docker_objects, select_docker_objects
from runbooks.tasks.pgmaintenance import (
    DatabaseSize,
    KeptDatabase,
    drop_kept_database,
    find_kept_databases,
    read_database_size,
    vacuum_tables,
)
from runbooks.tasks.postgres import identify_server
from runbooks.tasks.reports import publish_report
from runbooks.tasks.storage import apply_retention

RUNBOOK = "disk-cleanup"
DEFAULT_SOCKET = "/var/run/docker.sock"
TABLE_PATTERN = r"^[^.\s]{1,63}\.[^.\s]{1,63}\.[^.\s]{1,63}$"
_TABLE = re.compile(TABLE_PATTERN)


def _qualified_table(name: str) -> str:
    """``database.schema.table``, each part a name PostgreSQL keeps as written: over 63 bytes it would cut the name
    and VACUUM FULL the table the first 63 bytes name; a control character or a NUL never names a table."""
    def usable(part: str) -> bool:
        try:
            size = len(part.encode())
        except UnicodeEncodeError:  # a lone surrogate
            return False
        return size <= 63 and not any(unicodedata.category(ch) == "Cc" for ch in part)

    if not _TABLE.match(name) or not all(map(usable, name.split("."))):
        raise ValueError(f"vacuum_full entry {name[:80]!r} is not database.schema.table (each part 1 to 63 bytes, "
                         "no blank or control character), e.g. trading_db.public.trades")
    return name


class CleanupParameters(BaseModel):
    """One cleanup. What may be cleaned, and how far, is in the settings (``[cleanup]``)."""

    model_config = ConfigDict(extra="forbid")

    dry_run: bool = Field(default=True, description="Show the exact plan (what would go and what it frees) and "
                          "change nothing; the daily deployment sets false.")
    force: bool = Field(default=False, description="Run every rule to the end, whatever the watermarks say.")
    rules: list[Annotated[str, Field(pattern=RULE_NAME_PATTERN), InventoryChoices("rules")]] | None = Field(
        default=None, description="Only these rules, by name; empty: all, in order.")
    drop_pre_restore: list[Identifier] = Field(default_factory=list, description="Databases a replace restore "
                                               "kept to drop (needs approval; only ones the record shows).")
    vacuum_full: list[Annotated[str, AfterValidator(_qualified_table)]] = Field(
        default_factory=list, description="Tables as database.schema.table to rewrite with VACUUM FULL (needs "
        "approval: it locks the table).")
    confirm: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$", description="The plan hash a dry run "
                                "printed: approves drops and VACUUM FULL without pausing.")
    approval_timeout_seconds: int = Field(default=3600, ge=10, le=86400,
                                          description=TIMEOUT_HELP)
    approval_poll_seconds: int = Field(default=5, ge=1, le=300, description=POLL_HELP)
    in_session_reason: str | None = Field(default=None, max_length=500, description="Why Docker pruning or "
                                          "VACUUM may run while a gating market is in session (an incident); "
                                          "without it they wait for the close. File rules never wait.")
    on_host: Annotated[HostName, InventoryChoices("hosts")] | None = Field(default=None, description=ON_HOST_HELP)

    def heavy_work(self, settings: Settings) -> list[str]:
        """What this run would do that weighs on a live platform: Docker pruning (the engine's I/O) and VACUUM."""
        if self.dry_run:
            return []
        heavy = [f"Docker pruning ({r.name})" for r in self.selected(settings) if isinstance(r, DockerRule)]
        heavy += ["VACUUM (ANALYZE)" for r in self.selected(settings) if isinstance(r, DatabaseRule) and r.vacuum]
        heavy += ["VACUUM FULL"] if self.vacuum_full else []
        return heavy

    def change_window(self, settings: Settings) -> ChangeWindow | None:
        """The market calendar's say on this run's heavy work; OutsideChangeWindow while a gating market is in
        session and no in_session_reason is given."""
        heavy = self.heavy_work(settings)
        if not heavy:
            return None
        return require_change_window(settings.calendars(gating_only=True), work=f"disk-cleanup {', '.join(heavy)}",
                                     in_session_reason=self.in_session_reason)

    def check_against(self, settings: Settings) -> None:
        """Refuse (ConfigurationError) unknown rules, missing or unsafe roots and unknown databases, before any
        run; the flow repeats it as its first step. A run meant for another host is refused first: it would
        clean this one."""
        require_this_host(settings, self.on_host, runbook=RUNBOOK, acts="clean")
        cfg = settings.cleanup
        for name in self.rules or []:
            if cfg.rule(name) is None:
                raise ConfigurationError(f"disk-cleanup has no rule {name!r} (configured: "
                                         f"{', '.join(r.name for r in cfg.rules)}).",
                                         hint="pick rules by the names in [cleanup] rules.")
        for rule in self.selected(settings):
            if isinstance(rule, FileRule):
                for root in rule.roots:
                    check_root(root, cfg)
        wanted = [t.split(".", 1)[0] for t in self.vacuum_full]
        for name in wanted:
            settings.database_or_raise(name)
        if (self.drop_pre_restore or self.vacuum_full) and not any(isinstance(r, DatabaseRule)
                                                                   for r in self.selected(settings)):
            raise ConfigurationError("drop_pre_restore and vacuum_full need the databases rule, which is not "
                                     "selected.", hint="add a rule of kind 'databases' or select it in rules.")
        self.change_window(settings)

    def selected(self, settings: Settings) -> list[FileRule | DockerRule | BackupsRule | DatabaseRule]:
        return [r for r in settings.cleanup.rules if not self.rules or r.name in self.rules]



class DockerReport(BaseModel):
    rule: str
    state: str = "done"
    why: str = ""
    selected: list[DockerObject] = Field(default_factory=list, description="what the rule selects, in order")
    planned: list[DockerObject] = Field(default_factory=list, description="what goes before the disk is healthy")
    outcome: DockerOutcome | None = None


class BackupsReport(BaseModel):
    rule: str
    state: str = "done"
    why: str = ""
    removed: dict[str, list[str]] = Field(default_factory=dict, description="'kind name' -> backup ids")
    bytes: int = 0
    damaged: list[str] = Field(default_factory=list)


class DatabaseReport(BaseModel):
    rule: str
    sizes: list[DatabaseSize] = Field(default_factory=list)
    kept: list[KeptDatabase] = Field(default_factory=list, description="databases replace restores kept")
    dropped: list[str] = Field(default_factory=list)
    vacuumed_full: list[str] = Field(default_factory=list)


class CleanupPlan(BaseModel):
    drop: list[str] = Field(default_factory=list)
    drop_oids: list[int] = Field(default_factory=list)
    vacuum_full: list[str] = Field(default_factory=list)
    plan_hash: str = ""


class CleanupResult(RunbookResult):
    host: str | None = Field(default=None, description="the host whose disks this run measured and cleaned (its "
                             "host_name)")
    dry_run: bool
    force: bool
    high_watermark: float
    low_watermark: float
    triggered: bool = Field(default=False, description="a watched filesystem was at or above the high watermark")
    usage_before: list[Usage] = Field(default_factory=list)
    usage_after: list[Usage] = Field(default_factory=list)
    consumers: dict[str, list[Consumer]] = Field(default_factory=dict, description="largest children (du)")
    files: list[TreeOutcome] = Field(default_factory=list)
    docker: list[DockerReport] = Field(default_factory=list)
    backups: list[BackupsReport] = Field(default_factory=list)
    databases: list[DatabaseReport] = Field(default_factory=list)
    plan: CleanupPlan | None = None
    change_window: ChangeWindow | None = Field(default=None, description="the market calendar when heavy work "
                                               "(Docker, VACUUM) was about to start")
    approval: Approval | None = None
    freed_bytes: int = Field(default=0, description="freed (dry run: would be) by files, Docker and backups")
    manifest: str | None = Field(default=None, description="every path deleted or compressed (gzip JSON lines)")
    manifest_entries: int = 0
    healthy: bool | None = Field(default=None, description="every watched filesystem below the high watermark at "
                                 "the end (None in a dry run)")
    stopped: str | None = Field(default=None, description="why the rules stopped before the last")


def _pct(usage: Usage) -> str:
    return f"{usage.percent:.1f} %"


REPORT_PATH_CHARS = 160  # a longer path is cut in the middle in the report; the manifest keeps it whole
KEEP_EDGE = 60  # characters kept at each end: where it starts, and which file it is


def shortened(text: str, limit: int = REPORT_PATH_CHARS) -> str:
    """``text`` cut in the middle when longer than ``limit``, saying how much it left out (as the CLI's one-line
    errors do): a path of 5,000 characters printed whole buries the report."""
    if len(text) <= limit:
        return text
    return f"{text[:KEEP_EDGE]}…[{len(text) - 2 * KEEP_EDGE:,} characters]…{text[-KEEP_EDGE:]}"


def _headline(result: CleanupResult) -> tuple[str, str]:
    """The title's figure and the sentence under it, which must agree: a forced run that freed space did not have
    "nothing to do", and a run that did nothing does not announce "freed 0 B"."""
    freed = f"{'would free' if result.dry_run else 'freed'} {human_bytes(result.freed_bytes)}"
    if result.triggered:
        return freed, ""
    if result.force:
        ran = "was planned" if result.dry_run else "ran"
        return freed, (f" No watched filesystem was at the high watermark; forced, every selected rule {ran} anyway "
                       "(within the same safety limits).")
    return "nothing to do", " **No watched filesystem was at the high watermark: nothing to do.**"


def render_report(result: CleanupResult) -> str:
    mode = "dry run" if result.dry_run else ("forced" if result.force else "")
    figure, why = _headline(result)
    lines = [f"# Disk cleanup{f' ({mode})' if mode else ''} — {figure}", "",
             f"Started {result.started_at:%Y-%m-%d %H:%M:%S} UTC on {result.host or 'this host'}, "
             f"{result.seconds:.1f} s. Watermarks: clean at "
             f"{result.high_watermark:g} %, stop below {result.low_watermark:g} %." + why, ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.change_window is not None:
        lines += [f"Change window: {result.change_window.summary()}.", ""]
    if result.stopped:
        lines += [f"Stopped: {result.stopped}.", ""]
    after = {u.device: u for u in result.usage_after}
    lines += ["## Filesystems", table(["path", "size", "used before", "used after"],
                                      [[u.path, human_bytes(u.total_bytes), _pct(u),
                                        _pct(after[u.device]) if u.device in after else "-"]
                                       for u in result.usage_before])]
    for path, consumers in result.consumers.items():
        if consumers:
            lines += [f"## Largest in {shortened(path)}", table(["path", "size"], [[shortened(c.path),
                                                                                     human_bytes(c.bytes)]
                                                                                    for c in consumers])]
    if result.files:
        lines += ["## Files", table(
            ["rule", "root", "action", "files", "bytes", "dirs", "state", "not touched"],
            [[o.rule, shortened(o.root), o.action, o.files, human_bytes(o.bytes), o.dirs_removed,
              shortened(f"{o.state}{': ' + o.why if o.why else ''}", 2 * REPORT_PATH_CHARS),
              ", ".join(f"{k}: {v}" for k, v in sorted(o.skipped.items())) or "-"] for o in result.files])]
        for outcome in result.files:
            root = shortened(outcome.root)
            if outcome.leftovers:
                lines += [f"{'Would remove' if result.dry_run else 'Removed'} {outcome.leftovers} partial copies left "
                          f"in {root} by compressions killed midway (their originals are whole).", ""]
            if outcome.data_directories:
                lines += [f"Not entered in {root}: PostgreSQL data directories (PG_VERSION beside global/, running "
                          "or not):", *[f"- `{shortened(d)}`" for d in outcome.data_directories[:10]], ""]
            if outcome.samples:
                lines += [f"First paths of {outcome.rule} in {root}:",
                          *[f"- `{shortened(p)}`" for p in outcome.samples[:10]], ""]
            if outcome.errors:  # a list ends with a blank line, or the next paragraph is read as its last item's
                lines += [f"Errors of {outcome.rule} in {root}:",
                          *[f"- {shortened(problem, 2 * REPORT_PATH_CHARS)}" for problem in outcome.errors[:5]], ""]
    if result.manifest:
        lines += [f"Manifest of all {result.manifest_entries} paths: `{result.manifest}` (gzip, JSON lines).", ""]
    for docker in result.docker:
        lines += [f"## Docker ({docker.rule}): {docker.state}{': ' + docker.why if docker.why else ''}"]
        shown = docker.outcome.removed if docker.outcome else docker.planned
        if shown:
            lines.append(table(["kind", "name", "created", "bytes", "detail"],
                               [[o.kind, o.name, f"{o.created_at:%Y-%m-%d %H:%M}" if o.created_at else "-",
                                 human_bytes(o.bytes), o.detail or "-"] for o in shown]))
        if docker.outcome and (docker.outcome.failed or docker.outcome.skipped):
            lines += [f"- {failure.object.kind} {failure.object.name}: {failure.error}"
                      for failure in docker.outcome.failed + docker.outcome.skipped] + [""]
    for backups in result.backups:
        lines += [f"## Backups beyond retention ({backups.rule}): {backups.state}"
                  f"{': ' + backups.why if backups.why else ''}"]
        for subject, ids in backups.removed.items():
            lines.append(f"- {subject}: {', '.join(ids)}")
        for damaged in backups.damaged:
            lines.append(f"- DAMAGED (kept, needs a human): {damaged}")
        lines.append("")
    for report in result.databases:
        lines += [f"## Databases ({report.rule})"]
        for size in report.sizes:
            lines += [f"### {size.name}: {human_bytes(size.bytes)}",
                      table(["table", "size", "live rows", "dead rows", "last vacuum", "bloated"],
                            [[t.qualified, human_bytes(t.bytes), t.live_rows, t.dead_rows,
                              f"{t.last_vacuum:%Y-%m-%d %H:%M}" if t.last_vacuum else "-", "yes" if t.bloated else ""]
                             for t in size.largest + [b for b in size.bloated if b not in size.largest]])]
            if size.vacuumed:
                lines += [f"VACUUM (ANALYZE): {', '.join(size.vacuumed)}", ""]
        if report.kept:
            lines += ["Databases replace restores kept:", table(
                ["name", "size", "kept", "recorded", "droppable", "why not"],
                [[k.name, human_bytes(k.bytes), f"{k.kept_at:%Y-%m-%d}" if k.kept_at else "-",
                  "yes" if k.recorded else "no", "yes" if k.droppable else "no", k.why or "-"] for k in report.kept])]
        if report.dropped:
            lines += [f"Dropped: {', '.join(report.dropped)}", ""]
        if report.vacuumed_full:
            lines += [f"VACUUM (FULL, ANALYZE): {', '.join(report.vacuumed_full)}", ""]
    if result.plan and (result.plan.drop or result.plan.vacuum_full):
        drops, fulls = ", ".join(result.plan.drop) or "nothing", ", ".join(result.plan.vacuum_full) or "nothing"
        lines += ["## Plan needing approval", f"Plan hash `{result.plan.plan_hash}`: drop {drops}; VACUUM FULL {fulls}."
                  + (f" Approval: {'approved' if result.approval.approved else 'refused'} by "
                     f"{result.approval.approver} ({result.approval.via}): {result.approval.reason}"
                     if result.approval else ""), ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def plan_hash(plan: CleanupPlan) -> str:
    """Over the exact databases (name and OID) and tables: a database recreated under the same name since the
    dry run is another plan."""
    payload = json.dumps([sorted(plan.drop), sorted(plan.drop_oids), sorted(plan.vacuum_full)])
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _run_name() -> str:
    p = run_parameters()
    return run_name(RUNBOOK, p.get("on_host"), listed(p.get("rules")) if p.get("rules") else None,
                    "forced" if p.get("force") else None, dry_run=bool(p.get("dry_run", True)), stamp=True)


def _device(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(CleanupParameters)
def disk_cleanup_flow(params: CleanupParameters) -> State:
    """Measure the watched filesystems; when one is at the high watermark (or ``force``), run the rules in order,
    lowest risk first, until every one is below the low watermark; report what went and where space is."""
    run: RunbookRun[CleanupResult] = RunbookRun(RUNBOOK, resource=lambda settings: settings.host_name)
    settings = run.settings
    cfg = settings.cleanup
    result = CleanupResult(started_at=run.started_at, host=settings.host_name, dry_run=params.dry_run,
                           force=params.force, high_watermark=cfg.high_watermark, low_watermark=cfg.low_watermark)
    run.report(result, render=render_report, key="disk-cleanup-report",
               description="Disk cleanup: usage, what went and where the space is")
    manifest: Manifest | None = None
    held = ExitStack()
    try:
        with run.step("check rules and roots") as figures:
            params.check_against(settings)
            rules = params.selected(settings)
            result.change_window = params.change_window(settings)
            if result.change_window is not None:
                figures.update(change_window=result.change_window.summary(),
                               in_session_reason=result.change_window.in_session_reason)
        if not params.dry_run:  # two real runs would each free what the disk needs: one at a time on a host
            held.enter_context(host_lock(run, directory=settings.state_dir.expanduser() / "locks", name=RUNBOOK))
        with run.step("measure disks") as figures:
            result.usage_before = measure_disks(paths=cfg.watch)
            if cfg.watch and not result.usage_before:
                raise ConfigurationError(f"none of the watched filesystems ({', '.join(map(str, cfg.watch))}) "
                                         "can be measured on this host.", hint="fix [cleanup] watch.")
            ledger = Ledger(result.usage_before, high=cfg.high_watermark, low=cfg.low_watermark, force=params.force)
            result.triggered = bool(ledger.need)
            figures.update(usage=", ".join(f"{u.path} {u.percent:.1f}%" for u in result.usage_before),
                           triggered=result.triggered)
        if ledger.triggered or params.dry_run:
            with run.step("survey largest consumers"):
                result.consumers = survey_disk(paths=cfg.survey, top=cfg.top)
        walk: Walk | None = None
        if ledger.triggered:
            manifest_path = settings.state_dir.expanduser() / "cleanup" / \
                f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{(run.flow_run_id or 'local')[:8]}.jsonl.gz"
            manifest = Manifest(manifest_path)
            result.manifest = str(manifest_path)
            walk = Walk(ledger=ledger, budget=Budget(cfg.max_files, int(cfg.max_bytes)), manifest=manifest,
                        protected_patterns=cfg.protected, held=open_files(), dry_run=params.dry_run)
        for rule in rules:
            if isinstance(rule, DatabaseRule):  # read-only unless enabled or approved: reported on every run
                _databases(run, rule, params, result)
                continue
            if walk is None:
                continue
            if ledger.healthy():
                result.stopped = result.stopped or "every watched filesystem is below the low watermark"
                continue
            if isinstance(rule, FileRule):
                for root in rule.roots:
                    with run.step(f"{rule.name} {root}", destructive=not params.dry_run) as figures:
                        outcome = clean_files(rule=rule, root=root, walk=walk)
                        result.files.append(outcome)
                        figures.update(files=outcome.files, bytes=outcome.bytes, state=outcome.state)
            elif isinstance(rule, DockerRule):
                # An engine that is down fails this rule, not the rules after it (the disk still needs them).
                try:
                    with run.step(rule.name, destructive=not params.dry_run) as figures:
                        result.docker.append(_docker(rule, ledger, params.dry_run))
                        figures.update(removed=len(result.docker[-1].planned))
                except RunbookError as exc:
                    result.docker.append(DockerReport(rule=rule.name, state="failed", why=scrub(str(exc))))
            elif isinstance(rule, BackupsRule):
                try:
                    with run.step(rule.name, destructive=not params.dry_run) as figures:
                        result.backups.append(_backups(rule, settings, ledger, params.dry_run))
                        figures.update(bytes=result.backups[-1].bytes)
                except RunbookError as exc:
                    result.backups.append(BackupsReport(rule=rule.name, state="failed", why=scrub(str(exc))))
        result.freed_bytes = (sum(o.bytes for o in result.files) + sum(b.bytes for b in result.backups)
                              + sum(d.outcome.reclaimed_bytes if d.outcome else sum(o.bytes for o in d.planned)
                                    for d in result.docker))
        if not params.dry_run:
            with run.step("measure disks again"):
                result.usage_after = measure_disks(paths=cfg.watch)
            result.healthy = all(u.percent < cfg.high_watermark for u in result.usage_after)
    except RunbookError as exc:
        result.error = scrub(str(exc))
    finally:
        if manifest is not None:
            manifest.close()
            result.manifest_entries = manifest.count
        held.close()
    _next_steps(result, params)
    result.succeeded = result.error is None and result.healthy is not False and not _failures(result)
    return run.conclude(result)


def _failures(result: CleanupResult) -> bool:
    return any(o.state == "failed" for o in result.files) or any(d.state == "failed" for d in result.docker) \
        or any(b.state == "failed" for b in result.backups)


def _next_steps(result: CleanupResult, params: CleanupParameters) -> None:
    failed = [(d.rule, d.why) for d in result.docker if d.state == "failed"]
    failed += [(b.rule, b.why) for b in result.backups if b.state == "failed"]
    for name, why in failed:
        result.next_steps.append(f"Rule {name} failed ({why}); the rules after it still ran.")
    if result.dry_run and result.triggered:
        result.next_steps.append("Nothing was changed. Run again with dry_run=false to do what this plan shows.")
    if result.healthy is False:
        result.next_steps.append("Still at or above the high watermark after every rule: look at the largest "
                                 "consumers above, raise the budget or add rules, or grow the disk (the pager "
                                 "playbook's 'Disk 90% Full').")
    for outcome in result.files:
        if outcome.state == "stopped" and "budget" in outcome.why:
            result.next_steps.append("The run's budget stopped it: run again, or raise [cleanup] max_files / "
                                     "max_bytes.")
            break
    for report in result.databases:
        droppable = [k.name for k in report.kept if k.droppable and k.name not in report.dropped]
        if droppable and not params.drop_pre_restore:
            result.next_steps.append(f"Databases a replace restore kept may be dropped: {', '.join(droppable)} "
                                     "(run with drop_pre_restore and approve).")
    if result.plan and result.plan.plan_hash and result.approval is None:
        result.next_steps.append(f"To drop / VACUUM FULL as planned, run with dry_run=false and "
                                 f"confirm={result.plan.plan_hash}, or approve in the UI.")


def _docker(rule: DockerRule, ledger: Ledger, dry_run: bool) -> DockerReport:
    """Select through the engine; a dry run plans the prefix of the selection that reaches the low watermark,
    a real run removes the same list and stops at the same point."""
    from runbooks.adapters.dockerclean import connect, data_root

    report = DockerReport(rule=rule.name)
    if rule.base_url is None and not os.environ.get("DOCKER_HOST") and not os.path.exists(DEFAULT_SOCKET):
        report.state, report.why = "skipped", f"no Docker engine on this host ({DEFAULT_SOCKET} is absent)"
        return report
    client = connect(rule)
    try:
        root = data_root(client)
    finally:
        client.close()
    device = _device(root)
    if not ledger.force and (device is None or not ledger.wants(device)):
        report.state = "skipped"
        report.why = (f"the engine's data root {root} is not on a filesystem above the high watermark"
                      if device is not None else f"the engine's data root {root} is not on this host")
        return report
    report.selected = select_docker_objects(rule=rule, now=datetime.now(UTC))
    need = None if device is None else ledger.remaining(device)
    freed = 0
    for obj in report.selected:
        if need is not None and freed >= need:
            break
        report.planned.append(obj)
        freed += obj.bytes
    if dry_run:
        if device is not None:
            ledger.add(device, freed)
        return report
    report.outcome = remove_docker_objects(rule=rule, objects=report.selected, need_bytes=need)
    if device is not None:
        ledger.add(device, report.outcome.reclaimed_bytes)
    return report


def _backups(rule: BackupsRule, settings: Settings, ledger: Ledger, dry_run: bool) -> BackupsReport:
    """Retention of a local repository, on the same filesystem accounting as the files."""
    report = BackupsReport(rule=rule.name)
    url = urlparse(settings.repository.url)
    if url.scheme != "file":
        report.state, report.why = "skipped", "the repository is not on this host's disk"
        return report
    device = _device(url.path)
    if device is None or not ledger.wants(device):
        report.state, report.why = "skipped", "the repository's filesystem is not above the high watermark"
        return report
    catalog = BackupCatalog(open_repository(settings.repository))
    scan = catalog.scan()
    sizes = {(m.kind, m.name, m.backup_id): m.stored_bytes for m in scan.manifests}
    report.damaged = [f"{d.kind} {d.name} {d.backup_id}" for d in scan.damaged]
    for kind, name in sorted({(m.kind, m.name) for m in scan.manifests}):
        retention = apply_retention(catalog=catalog, kind=kind, name=name, policy=settings.backup.retention,
                                    dry_run=dry_run)
        if retention.removed:
            report.removed[f"{kind} {name}"] = retention.removed
            freed = sum(sizes.get((kind, name, backup_id), 0) for backup_id in retention.removed)
            report.bytes += freed
            ledger.add(device, freed)
    return report


def _databases(run: RunbookRun[CleanupResult], rule: DatabaseRule, params: CleanupParameters,
               result: CleanupResult) -> DatabaseReport:
    settings = run.settings
    report = DatabaseReport(rule=rule.name)
    result.databases.append(report)  # what was read stays in the report if a later step refuses
    names = rule.databases or list(settings.databases)
    with run.step("database sizes") as figures:
        for name in names:
            report.sizes.append(read_database_size(name=name, database=settings.database_or_raise(name), rule=rule))
        figures.update(bytes=", ".join(f"{s.name} {s.bytes}" for s in report.sizes))
    if rule.vacuum and not params.dry_run and (result.triggered or params.force):
        with run.step("vacuum analyze", destructive=True):
            for size in report.sizes:
                if size.bloated:
                    size.vacuumed = vacuum_tables(name=size.name, database=settings.database_or_raise(size.name),
                                                  tables=[(t.schema_, t.table) for t in size.bloated], full=False)
    servers: dict[str, tuple[str, RestoreRecords]] = {}
    repository = open_repository(settings.repository)
    protected = {str(db.conninfo().get("dbname") or n) for n, db in settings.databases.items()}  # never dropped
    with run.step("databases restores kept") as figures:
        for name in names:
            database = settings.database_or_raise(name)
            server = identify_server(database=database)
            servers.setdefault(server, (name, RestoreRecords(repository, server)))
        for name, records in servers.values():
            report.kept += find_kept_databases(database=settings.database_or_raise(name), records=records,
                                               older_than=rule.pre_restore_older_than, protected=protected)
        figures.update(kept=", ".join(k.name for k in report.kept),
                       droppable=", ".join(k.name for k in report.kept if k.droppable))
    if not (params.drop_pre_restore or params.vacuum_full):
        return report
    kept = {k.name: k for k in report.kept}
    plan = CleanupPlan(drop=sorted(params.drop_pre_restore), vacuum_full=sorted(params.vacuum_full),
                       drop_oids=sorted(kept[n].oid for n in params.drop_pre_restore if n in kept))
    plan.plan_hash = plan_hash(plan)
    result.plan = plan
    for name in plan.drop:
        if name not in kept or not kept[name].droppable:
            why = kept[name].why if name in kept else "no such database named like a kept one"
            raise Refused(f"{name!r} cannot be dropped by the cleanup: {why}.",
                          hint="pick a database the report lists as droppable; nothing was dropped.")
    if params.dry_run:
        return report
    with run.step("approval") as figures:
        result.timeline = list(run.steps.timeline)
        publish_report(key="disk-cleanup-plan", markdown=render_report(result),
                       description="Disk cleanup plan awaiting approval")
        result.approval = request_approval(
            run, plan_hash=plan.plan_hash, confirm=params.confirm,
            summary=f"Approve disk cleanup plan `{plan.plan_hash}`: drop {', '.join(plan.drop) or 'nothing'}; "
                    f"VACUUM FULL {', '.join(plan.vacuum_full) or 'nothing'}."
                    + (f" {result.change_window.summary()}." if result.change_window and
                       result.change_window.in_session else ""),
            timeout_seconds=params.approval_timeout_seconds, poll_seconds=params.approval_poll_seconds,
            plan_artifact="disk-cleanup-plan")
        figures.update(approved=result.approval.approved, approver=result.approval.approver)
    if not result.approval.approved:
        result.next_steps.append(f"Not approved ({result.approval.reason}): nothing was dropped or rewritten.")
        return report
    for name in plan.drop:
        source, records = servers[kept[name].server]
        with run.step(f"drop {name}", destructive=True):
            if drop_kept_database(database=settings.database_or_raise(source), records=records, name=name,
                                  protected=protected) == "dropped":
                report.dropped.append(name)
    for qualified in plan.vacuum_full:
        db_name, schema, table_name = qualified.split(".")
        with run.step(f"vacuum full {qualified}", destructive=True):
            report.vacuumed_full += vacuum_tables(name=db_name, database=settings.database_or_raise(db_name),
                                                  tables=[(schema, table_name)], full=True)
    return report

