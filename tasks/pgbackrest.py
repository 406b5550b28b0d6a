"""Tasks around pgBackRest and the cluster it protects: the config written, WAL archiving configured, the stanza
made and checked, backups taken, the archiver read, and restores into a NEW cluster (never over the running one).

pgBackRest runs as the OS user that owns the data directory (``postgres`` when we are root), as the server's
archive_command does; its config file, which may hold the S3 secret, is 0600 and owned by that user."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel, Field, SecretStr

from runbooks.adapters.cluster import free_port, server_os_user
from runbooks.adapters.postgres import (
    CheckResult,
    connect,
    database_errors,
    describe,
    pg_bindir,
    run_checks,
    server_env,
)
from runbooks.core.errors import ConfigurationError, LockBusy, Refused, ToolFailed
from runbooks.core.redact import scrub
from runbooks.decisions.pitr import (
    ArchiverState,
    BackupType,
    PitrPaths,
    PreviousSetting,
    RecoveryPoint,
    StanzaInfo,
    parse_info,
    pg_ctl_command,
    recovery_point,
)
from runbooks.settings import DatabaseSettings, IntegrityCheck, PitrSettings
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task

PGBR_TIMEOUT = 6 * 3600  # a full backup of a large cluster takes hours; a hung tool must still end


def tool_user(pitr: PitrSettings) -> str | None:
    """The OS user pgBackRest runs as: None when that is us."""
    user = pitr.os_user or server_os_user()
    if user is None or user == pwd.getpwuid(os.geteuid()).pw_name:
        return None
    return user


def _owner(pitr: PitrSettings) -> tuple[int, int]:
    user = tool_user(pitr)
    if user is None:
        return os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigurationError(f"there is no OS user {user!r} to run pgBackRest as.",
                                 hint="set [pitr] os_user to the user that owns the data directory.") from None
    return entry.pw_uid, entry.pw_gid


def _as_user(pitr: PitrSettings) -> dict[str, object]:
    user = tool_user(pitr)
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def _last_error(output: str) -> str:
    """pgBackRest's own ``ERROR: [code]: message`` line (its first), else the last line it printed. When it could
    not reach the cluster, its error ("unable to find primary cluster") only says so; the reason is in the WARN
    line before it ("unable to check pg1: ... connection to server on socket ... failed"), so that is added."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    cause = next((line[line.index("unable to check pg"):] for line in lines
                  if "WARN:" in line and "unable to check pg" in line), None)
    for line in lines:
        if "ERROR:" in line:
            error = line[line.index("ERROR:"):]
            return f"{error} ({cause})" if cause else error
    return lines[-1] if lines else "no output"


_UNREACHABLE = ("[056]", "[027]")  # pgBackRest: no primary found / no database found: it reached no cluster


def pg_ctl_as_owner(pitr: PitrSettings, data_directory: Path, action: str) -> str:
    """The exact shell command for a person to run ``pg_ctl <action>`` on this cluster, as its OS user."""
    return pg_ctl_command(pg_bindir() / "pg_ctl", data_directory, action, os_user=tool_user(pitr),
                          as_root=os.geteuid() == 0)


def run_pgbackrest(pitr: PitrSettings, paths: PitrPaths, command: str, *args: str,
                   timeout: float = PGBR_TIMEOUT) -> str:
    """One pgBackRest command for our stanza; its stdout. A failure is one line with pgBackRest's error."""
    argv = [str(pitr.pgbackrest), f"--config={paths.config}", f"--stanza={pitr.stanza}", *args, command]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=server_env(), cwd="/", timeout=timeout,
                              check=False, **_as_user(pitr))  # type: ignore[call-overload]
    except FileNotFoundError:
        raise ConfigurationError(f"pgBackRest ({pitr.pgbackrest}) is not installed on this host.",
                                 hint="apt-get install pgbackrest (or set [pitr] pgbackrest to its path).") from None
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"pgbackrest {command} did not finish within {timeout:.0f} s.",
                         hint=f"read its log in {paths.log}.") from None
    if done.returncode != 0:
        error = scrub(_last_error(f"{done.stderr}\n{done.stdout}"))
        if "unable to acquire lock" in error:
            raise LockBusy(f"pgbackrest {command}: another pgBackRest {command} of stanza {pitr.stanza!r} is "
                           f"running ({error}).", hint="wait for it to finish; nothing was done.")
        if any(code in error for code in _UNREACHABLE):
            raise ToolFailed(f"pgbackrest {command} exited with {done.returncode}: {error}",
                             hint=f"pgBackRest reaches the cluster only through its Unix socket, in [pitr] "
                             f"socket_directory ({pitr.socket_directory}): the server must list that directory in "
                             "unix_socket_directories (a restart applies it), and its pg_hba.conf must let the "
                             "DSN's role in over 'local'.")
        raise ToolFailed(f"pgbackrest {command} exited with {done.returncode}: {error}",
                         hint=f"its log is in {paths.log}; 'pgbackrest --config={paths.config} "
                         f"--stanza={pitr.stanza} check' tests archiving by hand.")
    return done.stdout


# -- the protected cluster ----------------------------------------------------------------------------------------
class ClusterFacts(BaseModel):
    """What the protected cluster says about itself."""

    system_identifier: str
    version_num: int
    data_directory: Path
    port: int
    user: str
    superuser: bool
    in_recovery: bool
    settings: dict[str, str] = Field(description="archive settings as the server runs them (pg_settings)")
    contexts: dict[str, str] = Field(default_factory=dict, description="their pg_settings.context: 'postmaster' "
                                     "ones take effect only at a restart")
    socket_directories: str = Field(default="", description="the server's unix_socket_directories")


_WATCHED = ("archive_mode", "archive_command", "archive_timeout", "wal_level")


@step_task("inspect-protected-cluster", **TRANSIENT_RETRY)
def inspect_cluster(*, database: DatabaseSettings) -> ClusterFacts:
    params = {**database.conninfo(), "dbname": database.conninfo().get("dbname") or "postgres"}
    with connect(params, where=f"the protected cluster {describe(params)}", autocommit=True) as conn, \
            database_errors("inspecting the protected cluster"):
        row = conn.execute(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()), current_setting('server_version_num'),"
            " current_setting('data_directory'), current_setting('port'), current_user,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), pg_is_in_recovery(),"
            " current_setting('unix_socket_directories')").fetchone()
        rows = conn.execute("SELECT name, setting, context FROM pg_settings WHERE name = ANY(%s)",
                            [list(_WATCHED)]).fetchall()
    assert row is not None
    if not row[5]:
        raise Refused(f"the role {row[4]!r} on {describe(params)} is not a superuser; configuring archiving and "
                      "reading the data directory need one.", hint="set [pitr] dsn to a superuser DSN.")
    return ClusterFacts(system_identifier=row[0], version_num=int(row[1]), data_directory=Path(row[2]),
                        port=int(row[3]), user=row[4], superuser=bool(row[5]), in_recovery=bool(row[6]),
                        settings={r[0]: r[1] for r in rows}, contexts={r[0]: r[2] for r in rows},
                        socket_directories=row[7] or "")


@step_task("write-pgbackrest-config", mutates=True)
def write_config(*, pitr: PitrSettings, paths: PitrPaths, text: str) -> bool:
    """Write the config (0600, the tool user's) and make pgBackRest's directories; True if the file changed.
    Directories above the root stay ours; the tool user only passes through them (0711)."""
    uid, gid = _owner(pitr)
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o711)
    for directory in (paths.log, paths.lock):
        directory.mkdir(exist_ok=True, mode=0o700)
        os.chown(directory, uid, gid)
        directory.chmod(0o700)
    # Restores stay ours (0711: the tool user passes through to what we hand it, and can plant nothing a sweep
    # would read, such as a work directory's owner record).
    paths.restores.mkdir(exist_ok=True, mode=0o711)
    os.chown(paths.restores, os.geteuid(), os.getegid())
    paths.restores.chmod(0o711)
    repo = paths.repo(pitr)
    if pitr.repo_type == "posix":
        repo.mkdir(parents=True, exist_ok=True, mode=0o750)
        if repo.stat().st_uid != uid:
            os.chown(repo, uid, gid)
        repo.chmod(0o750)
    old = paths.config.read_text() if paths.config.is_file() else None
    if old == text:
        return False
    tmp = paths.config.with_name(f".{paths.config.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchown(fd, uid, gid)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, paths.config)
    return True


def read_config_text(paths: PitrPaths) -> str | None:
    """The config file as it is now (None: none yet): whether the plan rewrites it."""
    try:
        return paths.config.read_text()
    except FileNotFoundError:
        return None


@step_task("record-archive-settings", **TRANSIENT_RETRY)
def record_settings(*, database: DatabaseSettings, names: list[str]) -> list[PreviousSetting]:
    """The run's own record of what it is about to change, read from the server just before ALTER SYSTEM: what it
    runs (pg_settings) and what postgresql.auto.conf holds (pg_file_settings re-reads the file; the last entry
    wins, as when the server reads it)."""
    params = database.conninfo()
    with connect(params, where=f"the protected cluster {describe(params)}", autocommit=True) as conn, \
            database_errors("recording the archive settings"):
        rows = conn.execute(
            "SELECT s.name, s.setting, f.setting FROM pg_settings s LEFT JOIN LATERAL ("
            " SELECT setting FROM pg_file_settings WHERE name = s.name"
            " AND sourcefile = current_setting('data_directory') || '/postgresql.auto.conf'"
            " ORDER BY seqno DESC LIMIT 1) f ON true WHERE s.name = ANY(%s)", [names]).fetchall()
    found = {r[0]: PreviousSetting(name=r[0], running=r[1], auto_conf=r[2]) for r in rows}
    return [found[name] for name in names if name in found]


@step_task("put-back-archive-settings", mutates=True, **TRANSIENT_RETRY)
def put_back_settings(*, database: DatabaseSettings, previous: list[PreviousSetting]) -> list[str]:
    """ALTER SYSTEM every recorded setting back to what postgresql.auto.conf held (RESET where it held none) and
    reload; returns the settings still waiting for a restart (a postmaster setting that a restart made live)."""
    params = database.conninfo()
    with connect(params, where=f"the protected cluster {describe(params)}", autocommit=True) as conn, \
            database_errors("putting the archive settings back"):
        for setting in previous:
            if setting.auto_conf is None:
                conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(setting.name)))
            else:
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(setting.name),
                                                                      sql.Literal(setting.auto_conf)))
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.2)  # the postmaster reloads asynchronously
        return [r[0] for r in conn.execute("SELECT name FROM pg_settings WHERE pending_restart ORDER BY 1")]


@step_task("configure-archiving", mutates=True, **TRANSIENT_RETRY)
def configure_archiving(*, database: DatabaseSettings, wanted: dict[str, str]) -> list[str]:
    """ALTER SYSTEM what differs and reload; returns what changed. archive_mode takes effect only at a restart
    (the caller reads pending_restart)."""
    changed = []
    params = database.conninfo()
    with connect(params, where=f"the protected cluster {describe(params)}", autocommit=True) as conn, \
            database_errors("configuring WAL archiving"):
        for name, value in wanted.items():
            row = conn.execute("SELECT setting, unit FROM pg_settings WHERE name = %s", [name]).fetchone()
            current = conn.execute("SELECT current_setting(%s)", [name]).fetchone()
            if row is not None and (row[0] == value or (current and current[0] == value)):
                continue
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            changed.append(name)
        if changed:
            conn.execute("SELECT pg_reload_conf()")
            time.sleep(0.2)  # the postmaster reloads asynchronously
    return changed


@step_task("read-pending-restart", **TRANSIENT_RETRY)
def pending_restart(*, database: DatabaseSettings) -> list[str]:
    params = database.conninfo()
    with connect(params, where=f"the protected cluster {describe(params)}", autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM pg_settings WHERE pending_restart ORDER BY 1")]


@step_task("restart-protected-cluster", mutates=True)
def restart_cluster(*, pitr: PitrSettings, paths: PitrPaths, data_directory: Path) -> None:
    """``pg_ctl restart -m fast``: sessions are disconnected; the caller asked for it (``restart=true``). The
    server's own output goes to a log beside pgBackRest's (with logging_collector on, only its first lines): a
    postmaster holding our pipe would never let this call return."""
    log = paths.log / "postgresql-restart.log"
    argv = [str(pg_bindir() / "pg_ctl"), "-D", str(data_directory), "-l", str(log), "-m", "fast", "-w", "-t", "120",
            "restart"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd="/", check=False, stdin=subprocess.DEVNULL,
                          env=server_env(), **_as_user(pitr))  # type: ignore[call-overload]
    if done.returncode != 0:
        raise ToolFailed(f"pg_ctl restart exited with {done.returncode}: {_last_error(done.stderr + done.stdout)}",
                         hint=f"read {log}; start PostgreSQL by hand as the cluster's owner: "
                         f"{pg_ctl_as_owner(pitr, data_directory, f'-l {log} -w start')} (or through its service "
                         "manager, e.g. systemctl start postgresql).")


# -- pgBackRest commands ------------------------------------------------------------------------------------------
@step_task("pgbackrest-stanza-create", mutates=True)
def stanza_create(*, pitr: PitrSettings, paths: PitrPaths) -> None:
    """Idempotent: an existing stanza of the same cluster is accepted; another cluster's is refused by the tool."""
    run_pgbackrest(pitr, paths, "stanza-create")


def check_timeout(pitr: PitrSettings) -> int:
    """How long ``check`` waits for the segment it switched: the RPO (a segment slower than that to arrive misses
    it anyway), at least 10 s and at most 5 minutes."""
    return int(min(max(pitr.rpo.total_seconds(), 10), 300))


@step_task("pgbackrest-check")
def check_stanza(*, pitr: PitrSettings, paths: PitrPaths) -> None:
    """Switches WAL and waits for the segment to reach the repository: archiving proven end to end."""
    run_pgbackrest(pitr, paths, "check", f"--archive-timeout={check_timeout(pitr)}")


@step_task("pgbackrest-backup")
def take_backup(*, pitr: PitrSettings, paths: PitrPaths, kind: BackupType) -> None:
    """No retry here: pgBackRest resumes an interrupted backup itself on the next run."""
    run_pgbackrest(pitr, paths, "backup", f"--type={kind}")


@step_task("pgbackrest-info")
def read_info(*, pitr: PitrSettings, paths: PitrPaths) -> StanzaInfo:
    return parse_info(run_pgbackrest(pitr, paths, "info", "--output=json", timeout=300), pitr.stanza)


# -- the archiver and the marker ----------------------------------------------------------------------------------
@step_task("read-archiver", **TRANSIENT_RETRY)
def read_archiver(*, database: DatabaseSettings) -> ArchiverState:
    params = database.conninfo()
    with connect(params, where=f"the protected cluster {describe(params)}", autocommit=True) as conn, \
            database_errors("reading the archiver's state"):
        row = conn.execute(
            "SELECT clock_timestamp(), current_setting('archive_mode'), current_setting('archive_command'),"
            " (SELECT setting::float FROM pg_settings WHERE name = 'archive_timeout'),"
            " archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time"
            " FROM pg_stat_archiver").fetchone()
        ready = conn.execute("SELECT count(*), min(modification) FROM pg_ls_archive_statusdir() "
                             "WHERE name LIKE '%.ready'").fetchone()
        pending = [r[0] for r in conn.execute("SELECT name FROM pg_settings WHERE pending_restart ORDER BY 1")]
        wal = conn.execute("SELECT sum(size), current_setting('data_directory') FROM pg_ls_waldir()").fetchone()
    assert row is not None and ready is not None
    return ArchiverState(read_at=row[0], archive_mode=row[1], archive_command=row[2], archive_timeout_seconds=row[3],
                         archived_count=row[4], last_archived_wal=row[5], last_archived_at=row[6],
                         failed_count=row[7], last_failed_wal=row[8], last_failed_at=row[9],
                         ready_count=int(ready[0]), oldest_ready_at=ready[1], pending_restart=pending,
                         wal_bytes=int(wal[0]) if wal and wal[0] is not None else None,
                         data_directory=wal[1] if wal else None)


def _marker_params(database: DatabaseSettings, marker_database: str) -> dict[str, object]:
    return {**database.conninfo(), "dbname": marker_database}


@step_task("write-marker", **TRANSIENT_RETRY)
def write_marker(*, database: DatabaseSettings, pitr: PitrSettings, note: str) -> datetime:
    """One row in the marker table: a restore to a time counts them, so its result is checked, not assumed."""
    params = _marker_params(database, pitr.marker_database)
    table = sql.Identifier(pitr.marker_table)
    with connect(params, where=f"the marker database {describe(params)}", autocommit=True) as conn, \
            database_errors("writing the PITR marker"):
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, written_at timestamptz NOT "
                             "NULL DEFAULT clock_timestamp(), note text NOT NULL)").format(table))
        row = conn.execute(sql.SQL("INSERT INTO {} (note) VALUES (%s) RETURNING written_at").format(table),
                           [note[:200]]).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


class MarkerCount(BaseModel):
    up_to_target: int
    after_target: int
    newest: datetime | None


def count_markers(params: dict[str, object], table: str, target: datetime | None) -> MarkerCount | None:
    """Marker rows at or before the target and after it; None when the table does not exist there."""
    with connect(params, where=f"marker table on {describe(params)}", autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"public.{table}"]).fetchone()
        if not (exists and exists[0]):
            return None
        limit = target or datetime(9999, 1, 1, tzinfo=UTC)
        row = conn.execute(sql.SQL("SELECT count(*) FILTER (WHERE written_at <= %s), count(*) FILTER (WHERE "
                                   "written_at > %s), max(written_at) FROM public.{}").format(sql.Identifier(table)),
                           [limit, limit]).fetchone()
    assert row is not None
    return MarkerCount(up_to_target=row[0], after_target=row[1], newest=row[2])


# -- restore into a new cluster -----------------------------------------------------------------------------------
@dataclass
class RestoredCluster:
    """A cluster restored by pitr-restore: its own directory, its own port, never the source's."""

    root: Path
    port: int

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    @property
    def tablespaces(self) -> Path:
        return self.root / "tablespaces"

    def params(self, source: DatabaseSettings, dbname: str = "postgres") -> dict[str, object]:
        """The source's role and password (the restored cluster has the same roles), on the new port."""
        return {**source.conninfo(), "host": "127.0.0.1", "hostaddr": "127.0.0.1", "port": self.port,
                "dbname": dbname}

    def database(self, source: DatabaseSettings, dbname: str, checks: list[IntegrityCheck]) -> DatabaseSettings:
        return DatabaseSettings(dsn=SecretStr(make_conninfo(**{k: str(v) for k, v in
                                                              self.params(source, dbname).items()})),
                                checks=checks)


_MINIMAL_CONF = "# written by runbooks pitr-restore: the backup held no postgresql.conf (a Debian /etc layout)\n"
_MINIMAL_HBA = ("# written by runbooks pitr-restore: the backup held no pg_hba.conf\n"
                "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n")


@step_task("pgbackrest-restore")
def restore_into_new_cluster(*, pitr: PitrSettings, paths: PitrPaths, workdir: Path, source_data: Path | None,
                             target: datetime | None, label: str | None = None) -> RestoredCluster:
    """pgBackRest restores into ``workdir/data`` (empty, new): never the source's directory. Archiving is off in
    the restored cluster, so it can never push its own WAL into the source's stanza; it listens on a free
    loopback port only."""
    cluster = RestoredCluster(root=workdir, port=0)  # its port is chosen once the (long) restore is done
    if source_data is not None and cluster.datadir.resolve() == source_data.resolve():  # before anything is removed
        raise Refused("a restore never goes over the running cluster's data directory.", hint="nothing was done.")
    try:
        uid, gid = _owner(pitr)
        for directory in (cluster.datadir, cluster.tablespaces):  # the work directory itself stays ours
            directory.mkdir(mode=0o700)
            os.chown(directory, uid, gid)
        _write_owned(cluster.logfile, "", uid, gid)
        # Every tablespace goes under the work directory: by default pgBackRest puts each back at its original path,
        # which is the source's.
        args = [f"--pg1-path={cluster.datadir}", f"--tablespace-map-all={cluster.tablespaces}", "--archive-mode=off",
                "--delta=n"]
        if label:
            args.append(f"--set={label}")
        if target is not None:
            args += ["--type=time", f"--target={target.isoformat(sep=' ')}", "--target-action=promote"]
        try:
            run_pgbackrest(pitr, paths, "restore", *args)
        except ToolFailed as exc:
            if target is not None and "[075]" in str(exc):  # pgBackRest compares whole seconds, strictly
                raise Refused(f"no backup in the repository finished before {target:%Y-%m-%d %H:%M:%S}Z (a backup "
                              "counts only if it ended in an earlier second).", hint="pick a later target_time, or "
                              "'latest'; 'runbooks run pitr-backup' output and 'pgbackrest info' list the backups' "
                              "stop times. The source cluster was not touched.") from None
            raise
        _refuse_links_outside(cluster)
        cluster.port = free_port()
        if not (cluster.datadir / "postgresql.conf").exists():
            _write_owned(cluster.datadir / "postgresql.conf", _MINIMAL_CONF, uid, gid)
        if not (cluster.datadir / "pg_hba.conf").exists():
            _write_owned(cluster.datadir / "pg_hba.conf", _MINIMAL_HBA, uid, gid)
        overrides = {"port": str(cluster.port), "listen_addresses": "'127.0.0.1'", "unix_socket_directories": "''",
                     "archive_mode": "'off'", "data_directory": f"'{cluster.datadir}'",
                     # a promoted copy must not start the source's logical replication subscriptions: their slots on
                     # the publisher are the source's, and a copy consuming them would take changes from the source
                     "max_logical_replication_workers": "0", "max_sync_workers_per_subscription": "0",
                     "hba_file": f"'{cluster.datadir / 'pg_hba.conf'}'",
                     "ident_file": f"'{cluster.datadir / 'pg_ident.conf'}'", "external_pid_file": "''",
                     "cluster_name": f"'pitr-{pitr.stanza}'"}
        if not (cluster.datadir / "pg_ident.conf").exists():
            _write_owned(cluster.datadir / "pg_ident.conf", "", uid, gid)
        text = ("\n# runbooks pitr-restore: a new cluster beside the source, never in its place\n"
                + "".join(f"{key} = {value}\n" for key, value in overrides.items()))
        fd = os.open(cluster.datadir / "postgresql.auto.conf", os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        try:  # the last setting wins
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)  # nothing was started in it: a half-restored copy goes at once
        raise
    return cluster


def _refuse_links_outside(cluster: RestoredCluster) -> None:
    """Every tablespace link of the restored cluster points under its work directory, or it never starts."""
    links = cluster.datadir / "pg_tblspc"
    for link in (links.iterdir() if links.is_dir() else []):
        target = Path(os.readlink(link)) if link.is_symlink() else link
        if not target.resolve().is_relative_to(cluster.root.resolve()):
            raise Refused(f"the restored cluster's tablespace {link.name} points at {target}, outside its work "
                          "directory; it was not started.", hint="nothing of the source was touched; report this.")


def _write_owned(path: Path, text: str, uid: int, gid: int) -> None:
    """A new file (never through a link the tool user may have planted), 0600, the tool user's."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchown(fd, uid, gid)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


_NOT_REACHED = "recovery ended before configured recovery target was reached"


@step_task("start-restored-cluster")
def start_restored(*, pitr: PitrSettings, cluster: RestoredCluster, source: DatabaseSettings,
                   target: datetime | None, timeout: timedelta) -> None:
    """Start it and wait until it has replayed to the target and promoted (no longer in recovery)."""
    argv = [str(pg_bindir() / "pg_ctl"), "-D", str(cluster.datadir), "-l", str(cluster.logfile), "-W", "start"]
    subprocess.run(argv, capture_output=True, text=True, cwd="/", check=False, stdin=subprocess.DEVNULL,
                   env=server_env(), **_as_user(pitr))  # type: ignore[call-overload]
    deadline = time.monotonic() + timeout.total_seconds()
    last = "it did not answer"
    while time.monotonic() < deadline:
        log = cluster.logfile.read_text(errors="replace") if cluster.logfile.exists() else ""
        if _NOT_REACHED in log:
            raise Refused(f"the archive holds no WAL reaching {target:%Y-%m-%d %H:%M:%S}Z: recovery ended before "
                          "the target" if target else "recovery ended before the end of the archive",
                          hint="pick an earlier target_time (or 'latest'); 'runbooks run pitr-backup' output and "
                          "'pgbackrest info' show the archived range. The source cluster was not touched.")
        if "database system is shut down" in log and "ready to accept" not in log.split("shut down")[-1]:
            tail = [line for line in log.splitlines() if "FATAL" in line or "PANIC" in line]
            raise ToolFailed(f"the restored cluster stopped: {scrub(tail[-1] if tail else log.splitlines()[-1])}",
                             hint=f"read {cluster.logfile}; the source cluster was not touched.")
        try:
            with psycopg.connect(**{**cluster.params(source), "connect_timeout": 3},  # type: ignore[arg-type]
                                 autocommit=True) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row and not row[0]:
                    return
                last = "it is still replaying WAL"
        except psycopg.OperationalError as exc:
            last = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        time.sleep(0.2)
    raise ToolFailed(f"the restored cluster did not promote within {timeout.total_seconds():.0f} s ({last}).",
                     hint=f"read {cluster.logfile}; raise [pitr] restore_timeout for a long replay.")


@step_task("read-recovery-point", **TRANSIENT_RETRY)
def read_recovery_point(*, cluster: RestoredCluster, source: DatabaseSettings, target: datetime | None,
                        started_at: datetime) -> RecoveryPoint:
    with connect(cluster.params(source), where="the restored cluster", autocommit=True) as conn:
        row = conn.execute("SELECT pg_last_xact_replay_timestamp(), "
                           "(SELECT timeline_id FROM pg_control_checkpoint())").fetchone()
    assert row is not None
    return recovery_point(last_replayed_at=row[0], target=target, started_at=started_at, timeline=row[1])


@step_task("check-restored-database", **TRANSIENT_RETRY)
def check_restored_database(*, cluster: RestoredCluster, source: DatabaseSettings, dbname: str,
                            checks: list[IntegrityCheck]) -> list[CheckResult]:
    with connect(cluster.params(source, dbname), where=f"restored database {dbname!r}", autocommit=False) as conn:
        return run_checks(conn, checks)


def stop_restored(pitr: PitrSettings, cluster: RestoredCluster) -> bool:
    """Stop a restored cluster (drills, failed restores, sweeps); True once no postmaster runs in it, so its
    directory may go. Fast first, then immediate (nothing in a throwaway copy needs a clean shutdown). An
    operator's restored cluster is theirs to stop."""
    for mode, wait in (("fast", 60), ("immediate", 30)):
        if not (cluster.datadir / "postmaster.pid").exists():
            return True
        subprocess.run([str(pg_bindir() / "pg_ctl"), "-D", str(cluster.datadir), "-m", mode, "-w", "-t", str(wait),
                        "stop"], capture_output=True, cwd="/", check=False, stdin=subprocess.DEVNULL,
                       env=server_env(), **_as_user(pitr))  # type: ignore[call-overload]
    status = subprocess.run([str(pg_bindir() / "pg_ctl"), "-D", str(cluster.datadir), "status"],
                            capture_output=True, cwd="/", check=False, stdin=subprocess.DEVNULL, env=server_env(),
                            **_as_user(pitr))  # type: ignore[call-overload]
    return status.returncode != 0  # 3: no server running (a stale pid file is not a server)


def describe_restored(cluster: RestoredCluster, user: str) -> str:
    return f"postgresql://{user}@127.0.0.1:{cluster.port}/ (data directory {cluster.datadir})"


@step_task("list-restored-tables", **TRANSIENT_RETRY)
def list_restored_tables(*, cluster: RestoredCluster, source: DatabaseSettings, dbname: str) -> list[str]:
    """'schema.table' of every user table that answers a count: what a component's tables are proven by."""
    with connect(cluster.params(source, dbname), where=f"restored database {dbname!r}", autocommit=True) as conn:
        names = [f"{s}.{t}" for s, t in conn.execute(
            "SELECT schemaname, relname FROM pg_stat_user_tables ORDER BY 1, 2").fetchall()]
        readable = []
        for name in names:
            schema, table = name.split(".", 1)
            try:
                conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema),
                                                                         sql.Identifier(table))).fetchone()
            except psycopg.Error:
                continue
            readable.append(name)
    return readable


def database_names(params: dict[str, object], *, where: str) -> set[str]:
    with connect(params, where=where, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")}


def restored_databases(cluster: RestoredCluster, source: DatabaseSettings) -> set[str]:
    return database_names(cluster.params(source), where="the restored cluster")
