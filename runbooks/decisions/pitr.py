"""Point-in-time recovery with pgBackRest, as data: its config file, what its ``info`` says, how the archiver's
state is judged against the RPO, and what a restore achieved. Pure functions and models; tasks/pgbackrest.py runs
the tool, the flows decide with these."""

from __future__ import annotations

import hashlib
import json
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from runbooks.core.errors import ConfigurationError
from runbooks.settings import DatabaseSettings, PitrSettings, Settings

BackupType = Literal["full", "diff", "incr"]
ArchiveVerdict = Literal["ok", "at_risk", "failing", "off"]


class PitrPaths(BaseModel):
    """Where pgBackRest keeps its own files for this stanza; the postgres OS user must reach all of them."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "pgbackrest.conf"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def restores(self) -> Path:
        return self.root / "restores"

    def repo(self, settings: PitrSettings) -> Path:
        if settings.repo_path is not None:
            return settings.repo_path
        return Path("/pgbackrest") if settings.repo_type == "s3" else self.root / "repo"


def _value(name: str, value: object) -> str:
    text = str(value)
    if any(ch in text for ch in "\n\r\x00") or text != text.strip():
        raise ConfigurationError(f"the value of pgBackRest's {name} (from [pitr]) has a line break or surrounding "
                                 "spaces, which its config file cannot hold.", hint="fix it in [pitr] (a secret "
                                 "read from a file often ends in a line break).")  # never the value: it may be a secret
    return f"{name}={text}"


def render_config(settings: PitrSettings, paths: PitrPaths, *, data_directory: Path, port: int, user: str,
                  s3_key_secret: str | None) -> str:
    """pgBackRest's config file: the archive_command the server runs reads it, so everything (the S3 secret too)
    lives here, 0600 and owned by the server's OS user, never on a command line."""
    glob: list[tuple[str, object]] = [
        ("repo1-type", settings.repo_type), ("repo1-path", paths.repo(settings)),
        ("repo1-retention-full", settings.retention_full), ("repo1-retention-diff", settings.retention_diff),
    ]
    if settings.repo_type == "s3":
        glob += [("repo1-s3-bucket", settings.s3_bucket), ("repo1-s3-endpoint", settings.s3_endpoint),
                 ("repo1-s3-region", settings.s3_region), ("repo1-s3-uri-style", settings.s3_uri_style),
                 ("repo1-storage-verify-tls", "y" if settings.s3_verify_tls else "n")]
        if settings.s3_ca_file is not None:
            glob.append(("repo1-storage-ca-file", settings.s3_ca_file))
        if settings.s3_key:
            glob.append(("repo1-s3-key", settings.s3_key))
        if s3_key_secret:
            glob.append(("repo1-s3-key-secret", s3_key_secret))
        if ":" in (settings.s3_endpoint or ""):
            host, port_text = str(settings.s3_endpoint).rsplit(":", 1)
            glob = [(k, host if k == "repo1-s3-endpoint" else v) for k, v in glob]
            glob.append(("repo1-storage-port", port_text))
    glob += [("log-path", paths.log), ("lock-path", paths.lock), ("log-level-console", "warn"),
             ("log-level-stderr", "error"), ("log-level-file", "info"), ("compress-type", settings.compress_type),
             ("compress-level", settings.compress_level), ("process-max", settings.process_max),
             ("start-fast", "y"), ("delta", "y")]
    stanza = [("pg1-path", data_directory), ("pg1-port", port), ("pg1-socket-path", settings.socket_directory),
              ("pg1-user", user)]
    lines = ["# Written by runbooks (pitr-setup); rewritten on every run: edit [pitr] in the runbooks settings.",
             "[global]", *[_value(k, v) for k, v in glob], "", f"[{settings.stanza}]",
             *[_value(k, v) for k, v in stanza]]
    return "\n".join(lines) + "\n"


def archive_command(settings: PitrSettings, paths: PitrPaths) -> str:
    """The command PostgreSQL runs for each finished WAL segment."""
    for path in (settings.pgbackrest, paths.config):
        if any(ch in str(path) for ch in "'\"\\%\n") or any(ch.isspace() for ch in str(path)):
            raise ConfigurationError(f"path {str(path)!r} has a quote, a '%', a backslash or a space, which an "
                                     "archive_command cannot carry safely.", hint="use a plain path in [pitr].")
    return (f"{shlex.quote(str(settings.pgbackrest))} --config={shlex.quote(str(paths.config))} "
            f"--stanza={settings.stanza} archive-push %p")


# -- the setup plan ------------------------------------------------------------------------------------------------
class SettingChange(BaseModel):
    """One archive setting pitr-setup sets with ALTER SYSTEM."""

    name: str
    running: str = Field(description="what the server runs now (pg_settings)")
    wanted: str
    needs_restart: bool = Field(description="a postmaster setting: it takes effect only when PostgreSQL restarts")


class PreviousSetting(BaseModel):
    """What one setting was before this run's ALTER SYSTEM, read from the server just before it: the undo.
    ``auto_conf`` is the value ALTER SYSTEM had written to postgresql.auto.conf (None: none, so the undo is a
    RESET and postgresql.conf's value, or the default, applies again)."""

    name: str
    running: str
    auto_conf: str | None = None


class SetupPlan(BaseModel):
    """What a confirmed pitr-setup does to one cluster; its hash is what ``confirm`` names."""

    stanza: str
    system_identifier: str
    data_directory: str
    config_path: str
    config_digest: str = Field(description="sha256 of the config to write, its S3 secret left out")
    config_changes: bool
    changes: list[SettingChange] = Field(default_factory=list)
    restart_needed: bool = False
    restart: bool = Field(default=False, description="the run may restart PostgreSQL (restart=true)")
    plan_hash: str = ""

    @property
    def stops_for_restart(self) -> bool:
        return self.restart_needed and not self.restart


def plan_setup(*, stanza: str, system_identifier: str, data_directory: Path, config_path: Path, config_public: str,
               config_changes: bool, running: dict[str, str], contexts: dict[str, str], wanted: dict[str, str],
               restart: bool) -> SetupPlan:
    """The plan, from what the server runs now: a setting already at its wanted value is left alone. The hash covers
    the cluster (system identifier, data directory), every change with the value it replaces, the config and
    whether the run may restart: a plan confirmed for one of these is refused for any other."""
    changes = [SettingChange(name=name, running=running.get(name, ""), wanted=value,
                             needs_restart=contexts.get(name) == "postmaster")
               for name, value in wanted.items() if running.get(name) != value]
    plan = SetupPlan(stanza=stanza, system_identifier=system_identifier, data_directory=str(data_directory),
                     config_path=str(config_path), config_digest=hashlib.sha256(config_public.encode()).hexdigest(),
                     config_changes=config_changes, changes=changes,
                     restart_needed=any(c.needs_restart for c in changes), restart=restart)
    payload = json.dumps(plan.model_dump(mode="json", exclude={"plan_hash"}), sort_keys=True)
    plan.plan_hash = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return plan


def sql_literal(value: str) -> str:
    """A standard SQL string literal (standard_conforming_strings, on since PostgreSQL 9.1)."""
    return "'" + value.replace("'", "''") + "'"


def undo_statements(previous: list[PreviousSetting]) -> list[str]:
    """The SQL that puts recorded settings back, as a person types it into psql."""
    statements = [f"ALTER SYSTEM RESET {p.name};" if p.auto_conf is None
                  else f"ALTER SYSTEM SET {p.name} = {sql_literal(p.auto_conf)};" for p in previous]
    return [*statements, "SELECT pg_reload_conf();"] if statements else []


def pg_ctl_command(pg_ctl: Path, data_directory: Path | str, action: str, *, os_user: str | None,
                   as_root: bool) -> str:
    """``pg_ctl`` as the cluster's OS user, the only one it runs as (PostgreSQL refuses root): ``runuser`` when
    the reader is root, ``sudo`` otherwise; plain when the reader is that user."""
    command = f"{shlex.quote(str(pg_ctl))} -D {shlex.quote(str(data_directory))} {action}"
    if os_user is None:
        return command
    return f"{'runuser' if as_root else 'sudo'} -u {shlex.quote(os_user)} -- {command}"


def socket_problem(server_directories: str, socket_directory: Path) -> str | None:
    """Why pgBackRest cannot reach the server through ``[pitr] socket_directory``, or None. It reaches a local
    cluster only through a Unix socket (pg1-socket-path), so the server must listen in that directory."""
    listed = [d.strip() for d in server_directories.split(",") if d.strip()]
    if not listed:
        return ("the server has no Unix socket (unix_socket_directories = ''), and pgBackRest reaches a local "
                "cluster only through one (its stanza-create fails with 'unable to find primary cluster')")
    if not any(Path(d) == socket_directory or (d.startswith("/") and Path(d).resolve() == socket_directory.resolve())
               for d in listed):
        return (f"[pitr] socket_directory is {socket_directory}, but the server listens on its Unix socket in "
                f"{', '.join(listed)} (unix_socket_directories)")
    return None


# -- what pgBackRest's info says ----------------------------------------------------------------------------------
class PhysicalBackup(BaseModel):
    label: str
    type: str
    started_at: datetime
    stopped_at: datetime
    size: int = Field(description="database size (bytes)")
    stored: int = Field(description="bytes in the repository for this backup")
    wal_start: str | None = None
    wal_stop: str | None = None
    error: bool = False
    prior: str | None = None


class StanzaInfo(BaseModel):
    stanza: str
    status: str = Field(description="pgBackRest's status message ('ok', 'no valid backups', ...)")
    status_code: int
    backups: list[PhysicalBackup] = Field(default_factory=list)
    wal_min: str | None = None
    wal_max: str | None = None

    @property
    def newest(self) -> PhysicalBackup | None:
        return self.backups[-1] if self.backups else None


def parse_info(text: str, stanza: str) -> StanzaInfo:
    """``pgbackrest info --output=json`` for one stanza."""
    data: list[dict[str, Any]] = json.loads(text)
    entry = next((e for e in data if e.get("name") == stanza), None)
    if entry is None:
        return StanzaInfo(stanza=stanza, status="missing stanza path", status_code=1)
    backups = []
    for b in entry.get("backup", []):
        info, archive = b.get("info", {}), b.get("archive") or {}
        backups.append(PhysicalBackup(
            label=b["label"], type=b["type"], error=bool(b.get("error", False)), prior=b.get("prior"),
            started_at=datetime.fromtimestamp(b["timestamp"]["start"], UTC),
            stopped_at=datetime.fromtimestamp(b["timestamp"]["stop"], UTC),
            size=int(info.get("size", 0)), stored=int(info.get("repository", {}).get("delta", 0)),
            wal_start=archive.get("start"), wal_stop=archive.get("stop")))
    archives = entry.get("archive") or []
    status = entry.get("status", {})
    return StanzaInfo(stanza=stanza, status=str(status.get("message", "")), status_code=int(status.get("code", 0)),
                      backups=backups, wal_min=min((a["min"] for a in archives if a.get("min")), default=None),
                      wal_max=max((a["max"] for a in archives if a.get("max")), default=None))


# -- the archiver against the RPO ---------------------------------------------------------------------------------
class ArchiverState(BaseModel):
    """pg_stat_archiver, the WAL waiting in pg_wal/archive_status, and the settings that bound the RPO."""

    read_at: datetime
    archive_mode: str
    archive_command: str
    archive_timeout_seconds: float
    archived_count: int = 0
    last_archived_wal: str | None = None
    last_archived_at: datetime | None = None
    failed_count: int = 0
    last_failed_wal: str | None = None
    last_failed_at: datetime | None = None
    ready_count: int = Field(default=0, description="finished segments not archived yet")
    oldest_ready_at: datetime | None = None
    pending_restart: list[str] = Field(default_factory=list)
    wal_bytes: int | None = Field(default=None, description="size of pg_wal: it grows while archiving fails")
    data_directory: str | None = None


class ArchiveJudgement(BaseModel):
    verdict: ArchiveVerdict
    reasons: list[str] = Field(default_factory=list)
    waiting_seconds: float | None = Field(default=None, description="age of the oldest finished segment not "
                                          "archived yet: what a disaster now would lose, at least")


def judge_archiver(state: ArchiverState, *, rpo: timedelta, expected_command: str | None = None) -> ArchiveJudgement:
    """``failing``: the last attempt failed (nothing has been archived since); ``at_risk``: WAL has waited longer
    than the RPO, or the settings cannot meet it; ``off``: archiving is not on at all."""
    if state.archive_mode not in ("on", "always") or not state.archive_command.strip():
        return ArchiveJudgement(verdict="off", reasons=[
            f"archiving is off (archive_mode={state.archive_mode}, archive_command "
            f"{'set' if state.archive_command.strip() else 'empty'}): nothing protects the cluster between backups"])
    reasons: list[str] = []
    verdict: ArchiveVerdict = "ok"
    waiting = (state.read_at - state.oldest_ready_at).total_seconds() if state.oldest_ready_at else None
    failing = state.last_failed_at is not None and (state.last_archived_at is None
                                                    or state.last_failed_at > state.last_archived_at)
    if failing:
        verdict = "failing"
        reasons.append(f"archiving {state.last_failed_wal} failed at {state.last_failed_at:%Y-%m-%d %H:%M:%S}Z "
                       f"({state.failed_count} failures since the statistics were reset) and nothing was archived "
                       "since" + (f"; pg_wal holds {state.wal_bytes / 2**20:.0f} MiB and keeps every segment until "
                                  "it is archived" if state.wal_bytes is not None else ""))
    if waiting is not None and waiting > rpo.total_seconds():
        verdict = "failing" if failing else "at_risk"
        reasons.append(f"{state.ready_count} WAL segment(s) wait to be archived, the oldest for {waiting:.0f} s "
                       f"(RPO {rpo.total_seconds():.0f} s)")
    if state.archive_timeout_seconds <= 0 or state.archive_timeout_seconds > rpo.total_seconds():
        verdict = "failing" if failing else "at_risk"
        reasons.append(f"archive_timeout is {state.archive_timeout_seconds:.0f} s (0: never): a quiet cluster "
                       f"keeps its last writes unarchived longer than the RPO ({rpo.total_seconds():.0f} s)")
    if expected_command is not None and state.archive_command != expected_command:
        verdict = "failing" if failing else "at_risk"
        reasons.append("archive_command is not the one pitr-setup configured (rerun pitr-setup)")
    if state.pending_restart:
        verdict = "failing" if failing else "at_risk"
        reasons.append(f"{', '.join(state.pending_restart)} changed but wait for a restart of PostgreSQL")
    return ArchiveJudgement(verdict=verdict, reasons=reasons, waiting_seconds=waiting)


# -- restore targets ----------------------------------------------------------------------------------------------
def parse_target(value: str) -> datetime | None:
    """``latest`` (None) or an ISO 8601 time with a zone: a time without one means different things on the
    operator's laptop, the worker and the server, so it is refused."""
    if value == "latest":
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(f"target {value!r} is neither 'latest' nor an ISO 8601 time such as "
                         "2026-11-24T13:05:00Z") from None
    if when.tzinfo is None:
        raise ValueError(f"target {value!r} has no time zone: add Z or +00:00")
    return when.astimezone(UTC)


class RecoveryPoint(BaseModel):
    """What a restored cluster holds: the last transaction it replayed, and the RPO achieved."""

    last_replayed_at: datetime | None = Field(default=None, description="commit time of the last transaction "
                                              "replayed (pg_last_xact_replay_timestamp)")
    target: datetime | None = Field(default=None, description="the target time (None: latest)")
    reference: datetime = Field(description="what the RPO is measured against: the target, or (latest) when the "
                                "restore started")
    rpo_seconds: float | None = Field(default=None, description="reference minus the last replayed transaction")
    timeline: int | None = None


def recovery_point(*, last_replayed_at: datetime | None, target: datetime | None, started_at: datetime,
                   timeline: int | None = None) -> RecoveryPoint:
    reference = target or started_at
    rpo = None if last_replayed_at is None else max(0.0, (reference - last_replayed_at).total_seconds())
    return RecoveryPoint(last_replayed_at=last_replayed_at, target=target, reference=reference, rpo_seconds=rpo,
                         timeline=timeline)


def protected_cluster(settings: Settings) -> DatabaseSettings:
    """The superuser connection to the cluster pgBackRest protects: ``[pitr] dsn``, else ``[cluster] dsn``."""
    database = settings.pitr.database(settings.cluster)
    if database is None:
        raise ConfigurationError("no superuser DSN for the cluster to protect.",
                                 hint="set [pitr] dsn (or [cluster] dsn) to a superuser DSN of that cluster.")
    return database


def pitr_paths(settings: Settings) -> PitrPaths:
    return PitrPaths(root=settings.pitr_root)
