"""Database connections: the operations runbook's P0 "Database Connection Pool Exhausted" (count the connections,
kill the sessions idle in a transaction for more than 5 minutes, consider raising max_connections) and the USD/COP
playbook's long-running queries, as a run that measures, plans, and terminates only what the seed would.

Trigger: ``runbooks run database-connections`` (a dry run unless ``dry_run=false``), the
``database-connections-on-demand`` deployment when the pool alert fires, or the health check's connection alert.
Blast radius: sessions of the configured databases (``[connections] databases``, default every database of
``[databases]``) that are idle in a transaction past ``[connections] idle_in_transaction``, and only while the
pool they use (the server's, their database's or their role's) is at ``[connections] exhausted_percent``; their
open transactions roll back and their clients see the connection closed. Never a superuser's, a replication
role's or the runbooks' own session (``application_name`` starting with ``[connections] own_application_name``);
never an active query (long ones are listed); never ``max_connections`` (a restart: proposed in the report).
Rollback: none needed; a terminated session's transaction was rolled back by the server, and its client
reconnects (a pool does so by itself).
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from runbooks.core.errors import ConfigurationError, RunbookError
from runbooks.core.redact import scrub
from runbooks.core.text import visible
from runbooks.decisions.connections import (
    Candidate,
    PoolUsage,
    Session,
    Termination,
    age,
    judge_idle,
    long_queries,
    max_connections_proposal,
    plan_hash,
    sessions_per,
    usage_of,
)
from runbooks.decisions.incidents import Notice
from runbooks.decisions.report import inline, report_head, report_tail, started, table
from runbooks.frame import RunbookResult, RunbookRun, notify
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import InventoryChoices, takes
from runbooks.settings import DatabaseSettings, InventoryName, Settings
from runbooks.tasks.connections import read_connection_pool, server_of, terminate_idle_sessions

RUNBOOK = "database-connections"


class ConnectionsParameters(BaseModel):
    """Which databases and whether to act; the thresholds are ``[connections]``."""

    model_config = ConfigDict(extra="forbid")

    database: Annotated[InventoryName, InventoryChoices("databases")] | None = Field(
        default=None, description="Only this database of the inventory; empty: [connections] databases (all by "
        "default).")
    dry_run: bool = Field(default=True, description="Measure and show the plan (which sessions would be "
                          "terminated) and change nothing; false: terminate them if the pool is at its threshold.")
    confirm: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$", description="The plan hash a dry run "
                                "printed: terminate only if the plan is still exactly that one (else nothing).")

    def targets(self, settings: Settings) -> dict[str, DatabaseSettings]:
        """The inventory's databases this run looks at; ConfigurationError for a name it lacks."""
        names = [self.database] if self.database else (settings.connections.databases or sorted(settings.databases))
        if not names:
            raise ConfigurationError("database-connections has no database to look at: [databases] is empty.",
                                     hint="add [databases.<name>] dsn = ... to the settings.")
        return {name: settings.database_or_raise(name) for name in names}

    def check_against(self, settings: Settings) -> None:
        """Refuse (ConfigurationError) a database the inventory lacks, before any run."""
        self.targets(settings)


class ServerReport(BaseModel):
    server: str
    databases: list[str] = Field(description="the databases whose sessions were judged (as the server names them)")
    server_version: str | None = None
    max_connections: int | None = None
    reserved_connections: int | None = None
    usage: list[PoolUsage] = Field(default_factory=list)
    per_database: list[tuple[str, int, int]] = Field(default_factory=list, description="(database, sessions, "
                                                     "idle in transaction), every database of the server")
    per_role: list[tuple[str, int, int]] = Field(default_factory=list)
    idle: list[Candidate] = Field(default_factory=list, description="idle in transaction past the limit")
    long_queries: list[Session] = Field(default_factory=list)
    terminations: list[Termination] = Field(default_factory=list)
    proposal: str | None = Field(default=None, description="raising max_connections: proposed, never done")
    error: str | None = None

    @property
    def exhausted(self) -> bool:
        return any(u.exhausted for u in self.usage)


class ConnectionsResult(RunbookResult):
    dry_run: bool
    threshold_percent: float
    idle_limit_seconds: float
    long_query_seconds: float
    servers: list[ServerReport] = Field(default_factory=list)
    exhausted: bool = False
    plan_hash: str | None = None
    terminated: list[int] = Field(default_factory=list, description="pids terminated")
    notification: str | None = None


def _shown(text: str | None) -> str:
    return inline(visible(text or "")) or "-"


def _usage_rows(server: ServerReport) -> list[list[object]]:
    return [[u.scope, _shown(u.name), u.used, u.limit, f"{u.percent:g} %", "**EXHAUSTED**" if u.exhausted else "ok"]
            for u in server.usage]


def _session_cells(s: Session) -> list[object]:
    return [s.pid, _shown(s.database), _shown(s.role), _shown(s.application_name), s.client or "local", s.state or "?"]


def render_report(result: ConnectionsResult, *, limit: int = 50) -> str:
    verdict = ("EXHAUSTED" if result.exhausted else "ok") if result.succeeded else "FAILED"
    lines = [report_head("Database connections" + (" (dry run)" if result.dry_run else ""), verdict), "",
             f"{started(result)}. Pool exhausted at {result.threshold_percent:g} %; idle in transaction limit "
             f"{age(result.idle_limit_seconds)}; long queries over {age(result.long_query_seconds)}."
             + (f" Plan hash `{result.plan_hash}`." if result.plan_hash else "")
             + (f" Notification: {result.notification}." if result.notification else ""), ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    for server in result.servers:
        lines += [f"## {_shown(server.server)}" + (f" (PostgreSQL {server.server_version})"
                                                   if server.server_version else ""), ""]
        if server.error:
            lines += [f"**Error:** {server.error}", ""]
        if server.max_connections is not None:
            lines += [f"max_connections {server.max_connections}, of which {server.reserved_connections} reserved "
                      f"for privileged roles. Judged: {', '.join(map(_shown, server.databases))}.", ""]
        lines += ["### Usage", table(["scope", "name", "used", "limit", "percent", "pool"], _usage_rows(server))]
        lines += ["### Sessions per database", table(["database", "sessions", "idle in transaction"],
                                                     [[_shown(n), c, i] for n, c, i in server.per_database[:limit]])]
        lines += ["### Sessions per role", table(["role", "sessions", "idle in transaction"],
                                                 [[_shown(n), c, i] for n, c, i in server.per_role[:limit]])]
        lines += [f"### Idle in transaction over {age(result.idle_limit_seconds)}", table(
            ["pid", "database", "role", "application", "client", "state", "idle", "transaction", "query", "verdict"],
            [[*_session_cells(c.session), age(c.session.idle_seconds), age(c.session.xact_seconds),
              _shown(c.session.query), c.why] for c in server.idle[:limit]])]
        if len(server.idle) > limit:
            lines += [f"…and {len(server.idle) - limit} more.", ""]
        lines += [f"### Queries running over {age(result.long_query_seconds)} (listed, never terminated)", table(
            ["pid", "database", "role", "application", "client", "state", "running", "waiting on", "query"],
            [[*_session_cells(s), age(s.query_seconds), s.wait or "-", _shown(s.query)]
             for s in server.long_queries[:limit]])]
        if server.terminations:
            lines += ["### " + ("Would terminate" if result.dry_run else "Terminations"), table(
                ["pid", "database", "role", "application", "outcome"],
                [[t.pid, _shown(t.database), _shown(t.role), _shown(t.application_name), t.outcome]
                 for t in server.terminations])]
        if server.proposal:
            lines += ["### Proposal: max_connections", server.proposal, ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


def _run_name() -> str:
    p = run_parameters()
    return run_name(RUNBOOK, p.get("database") or "all", dry_run=bool(p.get("dry_run", True)), stamp=True)


def _by_server(targets: dict[str, DatabaseSettings]) -> dict[str, tuple[DatabaseSettings, list[str]]]:
    """One entry per server: the first database's connection reads it, and every configured database on it (by the
    name the server knows, the DSN's dbname) is judged."""
    servers: dict[str, tuple[DatabaseSettings, list[str]]] = {}
    for name, database in targets.items():
        params = database.conninfo()
        entry = servers.setdefault(server_of(params), (database, []))
        entry[1].append(str(params.get("dbname") or name))
    return servers


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(ConnectionsParameters)
def database_connections_flow(params: ConnectionsParameters) -> State:
    """Measure every server's pool; list the sessions idle in a transaction past the limit and the long queries;
    terminate the former when their pool is at its threshold; propose raising max_connections when the server is."""
    run: RunbookRun[ConnectionsResult] = RunbookRun(RUNBOOK, resource=params.database or "all")
    cfg = run.settings.connections
    result = ConnectionsResult(started_at=run.started_at, dry_run=params.dry_run,
                               threshold_percent=cfg.exhausted_percent,
                               idle_limit_seconds=cfg.idle_in_transaction.total_seconds(),
                               long_query_seconds=cfg.long_query.total_seconds())
    run.report(result, render=lambda r: render_report(r, limit=cfg.report_sessions),
               key="database-connections-report", description="Database connections: the pool, idle "
               "transactions, long queries, terminations")
    name = f"{cfg.own_application_name} {RUNBOOK} {(run.flow_run_id or 'local')[:8]}"
    try:
        with run.step("check databases") as figures:
            servers = _by_server(params.targets(run.settings))
            figures.update(servers=len(servers))
    except RunbookError as exc:
        result.error = scrub(str(exc))
        return run.conclude(result)
    plan: list[tuple[DatabaseSettings, ServerReport, list[Session]]] = []
    for server_name, (database, dbnames) in servers.items():
        report = ServerReport(server=server_name, databases=dbnames)
        result.servers.append(report)
        with run.step(f"read {server_name}") as figures:
            try:
                reading = read_connection_pool(database=database, application_name=name, query_chars=cfg.query_chars)
            except RunbookError as exc:
                report.error = scrub(str(exc))
                figures.update(error=True)
                continue
            report.server_version, report.max_connections = reading.server_version, reading.max_connections
            report.reserved_connections = reading.reserved_connections
            report.usage = usage_of(reading, threshold_percent=cfg.exhausted_percent)
            report.per_database = sessions_per(reading, "database")
            report.per_role = sessions_per(reading, "role")
            report.idle = judge_idle(reading, report.usage, databases=set(dbnames),
                                     limit_seconds=cfg.idle_in_transaction.total_seconds(),
                                     own_prefix=cfg.own_application_name)
            report.long_queries = long_queries(reading, databases=set(dbnames),
                                               limit_seconds=cfg.long_query.total_seconds())
            report.proposal = max_connections_proposal(reading, report.usage)
            server_usage = report.usage[0]
            figures.update(used=server_usage.used, max_connections=server_usage.limit, exhausted=report.exhausted,
                           idle=len(report.idle), planned=sum(c.terminate for c in report.idle),
                           long=len(report.long_queries))
        if not reading.can_read_all:
            report.error = (f"the role of {server_name} cannot see other roles' sessions (states and queries are "
                            "hidden), so none of theirs could be judged. HINT: GRANT pg_read_all_stats TO it.")
        planned = [c.session for c in report.idle if c.terminate]
        if planned and not params.dry_run and not reading.can_signal:
            report.error = (f"the role of {server_name} may not terminate other roles' sessions; nothing was "
                            "terminated. HINT: GRANT pg_signal_backend TO it.")
            planned = []
        if planned:
            plan.append((database, report, planned))
    result.exhausted = any(s.exhausted for s in result.servers)
    result.plan_hash = plan_hash([c for s in result.servers for c in s.idle]) if plan else None
    if plan and params.confirm and params.confirm != result.plan_hash:
        result.error = (f"the plan is now {result.plan_hash}, not the confirmed {params.confirm}: sessions moved on "
                        "since the dry run; nothing was terminated. HINT: read this plan and confirm it, or run "
                        "without confirm.")
        plan = []
    for database, report, sessions in plan:
        with run.step(f"terminate idle in transaction on {report.server}", destructive=not params.dry_run) as figures:
            report.terminations = terminate_idle_sessions(
                database=database, sessions=sessions, databases=report.databases, idle_limit=cfg.idle_in_transaction,
                own_prefix=cfg.own_application_name, application_name=name, dry_run=params.dry_run)
            result.terminated += [t.pid for t in report.terminations if t.outcome == "terminated"]
            figures.update(terminated=sum(t.outcome == "terminated" for t in report.terminations),
                           moved_on=sum(t.outcome == "moved on" for t in report.terminations))
    _conclude(run, result, params)
    return run.conclude(result)


def _conclude(run: RunbookRun[ConnectionsResult], result: ConnectionsResult, params: ConnectionsParameters) -> None:
    """Next steps, the escalation and the verdict event."""
    errors = [f"{s.server}: {s.error}" for s in result.servers if s.error]
    if errors and not result.error:
        result.error = "; ".join(errors)
    full = [f"{s.server} {u.scope} {u.name}: {u.used} of {u.limit}" for s in result.servers for u in s.usage
            if u.exhausted]
    planned = sum(c.terminate for s in result.servers for c in s.idle)
    if params.dry_run and planned:
        result.next_steps.append(f"Nothing was terminated. Run with dry_run=false (and confirm={result.plan_hash} to "
                                 "act on exactly this plan) to terminate the sessions marked 'idle in transaction'.")
    if any(t.outcome == "signal failed" for s in result.servers for t in s.terminations):
        result.next_steps.append("Some sessions did not exit within 5 s of the signal: look again in a minute.")
    if any(s.long_queries for s in result.servers):
        result.next_steps.append("Long queries are listed, never terminated: ask their owners, or cancel one with "
                                 "SELECT pg_cancel_backend(<pid>) (the USD/COP playbook: identify and terminate).")
    result.next_steps += [s.proposal for s in result.servers if s.proposal]
    if result.exhausted:
        result.next_steps.append("If the pool fills again, the application leaks connections or transactions: "
                                 "restart it (the operations runbook: pm2 restart ecosystem.config.cjs --update-env) "
                                 "and find the code that leaves transactions open.")
        # The operations runbook's alert is P0: on-call hears of it whatever this run could free.
        why = "; ".join(full)
        run.steps.event("escalation", labels={"runbooks.severity": "P0"}, severity="P0",
                        reason=f"connection pool exhausted: {why}")
    if result.exhausted and not result.dry_run:  # it acted (or could not): on-call must know what it did
        result.notification = notify(run, Notice(
            kind="start", severity="P0", title="Database connection pool exhausted",
            impact="the application cannot open new database connections; requests fail",
            details=[*full, f"{len(result.terminated)} idle-in-transaction sessions terminated"],
            actions=result.next_steps[:4]))
    run.steps.event("database-connections.verdict", exhausted=result.exhausted, planned=planned,
                    terminated=len(result.terminated), dry_run=result.dry_run, plan_hash=result.plan_hash)
    result.succeeded = result.error is None
