"""Tasks of the DR game-day's clean cluster: made (a throwaway initdb cluster, or an existing empty server
checked), and removed again, also after a drill that was killed. Nothing here ever touches an inventory server."""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prefect import get_run_logger
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from runbooks.adapters.cluster import PostgresCluster, free_port, refuse_closed_directory, server_os_user
from runbooks.adapters.postgres import (
    admin_params,
    connect,
    database_errors,
    describe,
    drop_database,
    pg_bindir,
    server_identity,
)
from runbooks.adapters.records import RestoreRecords
from runbooks.adapters.repository.local import open_private
from runbooks.adapters.roles import RoleCreated
from runbooks.adapters.workdirs import WorkDirs
from runbooks.core.errors import ConfigurationError, Refused, RunbookError
from runbooks.core.redact import register_secret
from runbooks.decisions.pitr import pg_ctl_command
from runbooks.settings import DatabaseSettings, IntegrityCheck
from runbooks.tasks.policies import step_task
from runbooks.tasks.workspace import WorkDirReport

SYSTEM_DATABASES = ("postgres", "template0", "template1")


@dataclass
class CleanCluster:
    """Where a drill restores: the superuser's connection to its maintenance database, and how it was made."""

    kind: Literal["throwaway", "server"]
    admin: DatabaseSettings
    server: str = ""  # system identifier: the restore records of its databases are kept under it
    root: Path | None = None  # a throwaway cluster's directory
    port: int | None = None
    notes: list[str] = field(default_factory=list)  # what could not be checked, for the report

    def database(self, name: str, checks: list[IntegrityCheck] | None = None) -> DatabaseSettings:
        """The same superuser, on a restored database (with the inventory database's integrity checks)."""
        params = {**self.admin.conninfo(), "dbname": name}
        return DatabaseSettings(dsn=SecretStr(make_conninfo(**params)), checks=checks or [])

    def describe(self) -> str:
        return describe(self.admin.conninfo())


def drill_workdirs(root: Path) -> WorkDirs:
    """The postgres OS user (when we are root) only passes through to ``cluster/``, which is all it owns."""
    return WorkDirs(root, traversable=server_os_user() is not None)


def _cluster_in(workdir: Path, *, password: str = "") -> PostgresCluster:
    return PostgresCluster(root=workdir / "cluster", port=0, superuser_password=password)


def running_postmaster(datadir: Path) -> int | None:
    """The PID of the postmaster serving ``datadir``, or None. ``postmaster.pid`` alone is a mark anyone who
    outlived a reboot could match (a reused PID): the process must also be running in that very directory (a
    postmaster's working directory is its data directory)."""
    try:
        if datadir.is_symlink() or datadir.parent.is_symlink():
            return None  # a link planted where our cluster was: whatever it points at is not ours to stop
        pid_file = datadir / "postmaster.pid"
        if not stat.S_ISREG(pid_file.lstat().st_mode):
            return None  # a FIFO would block the sweep
        pid = int(pid_file.read_text().split()[0])
        return pid if Path(f"/proc/{pid}/cwd").resolve() == datadir.resolve() else None
    except (OSError, ValueError, IndexError):
        return None


def stop_cluster(workdir: Path) -> bool:
    """Stop the drill cluster in ``workdir`` if one is running there. Returns whether none runs any more."""
    cluster = _cluster_in(workdir)
    if running_postmaster(cluster.datadir) is None:
        return True
    cluster.stop()
    return running_postmaster(cluster.datadir) is None


@step_task("sweep-killed-drills", mutates=True)
def sweep_killed_drills(*, root: Path) -> list[WorkDirReport]:
    """Stop the throwaway clusters of drills that are gone (killed, or kept for inspection) and remove their
    directories: only directories with our owner record, only of processes gone from this host."""
    logger = get_run_logger()

    def stop(workdir: Path) -> bool:
        if stop_cluster(workdir):
            return True
        logger.warning("The cluster left in %s does not stop; its directory is kept for the next drill", workdir)
        return False

    swept = drill_workdirs(root).sweep(dry_run=False, purpose="dr-game-day", before_remove=stop)
    for s in swept:
        logger.info("Removed %s: %s", s.path, s.reason)
    return [WorkDirReport(path=s.path, bytes=s.bytes, reason=s.reason, removed=s.removed) for s in swept]


@step_task("provision-throwaway-cluster")
def provision_throwaway_cluster(*, workdir: Path) -> CleanCluster:
    """initdb and start a cluster on a free loopback port, with a superuser password made for this drill only
    (written 0600 beside it, for whoever inspects a kept cluster).

    It runs with fsync off: it only ever holds copies, and it is removed when the drill ends."""
    password = secrets.token_urlsafe(24)
    register_secret(password)
    last: Exception | None = None
    for _attempt in range(3):  # another process may take the free port between the probe and the start
        cluster = PostgresCluster(root=workdir / "cluster", port=free_port(), superuser_password=password)
        try:
            if not cluster.datadir.exists():
                cluster.init()
            else:  # a retry: same data directory, a new port
                with open(cluster.datadir / "postgresql.conf", "a") as conf:
                    conf.write(f"port = {cluster.port}\n")
            cluster.start()
        except RuntimeError as exc:
            last = exc
            continue
        with os.fdopen(open_private(workdir / "connection.dsn"), "w") as handle:
            handle.write(cluster.dsn() + "\n")
        get_run_logger().info("Throwaway cluster started on 127.0.0.1:%d in %s", cluster.port, cluster.root)
        admin = DatabaseSettings(dsn=SecretStr(cluster.dsn()))
        with connect(admin.conninfo(), where="the throwaway cluster", autocommit=True) as conn:
            server = server_identity(conn, admin.conninfo())
        return CleanCluster(kind="throwaway", admin=admin, server=server, root=cluster.root, port=cluster.port)
    raise Refused(f"could not start a throwaway PostgreSQL cluster in {workdir}: {last}.",
                  hint="check the PostgreSQL server binaries (apt-get install postgresql) and drill.work_dir.")


def check_cluster_root(root: Path) -> None:
    """Before any work: refuse a work directory the server's OS user could not enter (root runs it as postgres).
    Directories the drill will create are made enterable (0711), so only existing ones can close the way."""
    try:
        refuse_closed_directory(root, hint="set drill.work_dir to a directory the postgres OS user can enter "
                                "(every directory above it o+x); nothing was done.")
    except KeyError:
        raise ConfigurationError(f"there is no {server_os_user()!r} OS user to run the drill's PostgreSQL as.",
                                 hint="install the PostgreSQL server (apt-get install postgresql).") from None


@step_task("check-target-server")
def check_target_server(*, target: DatabaseSettings, inventory: dict[str, DatabaseSettings]) -> CleanCluster:
    """An existing server is a drill target only if it is none of the inventory's servers and we are superuser
    there (its emptiness is checked after the sweep of earlier drills' databases)."""
    params = target.conninfo()
    with connect(admin_params(params), where=f"drill target {describe(params)}", autocommit=True) as conn, \
            database_errors("checking the drill target"):
        server = server_identity(conn, params)
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    unchecked: list[str] = []
    for name, database in inventory.items():
        try:
            with connect(admin_params(database.conninfo()), where=f"server of {name!r}", autocommit=True) as conn:
                if server_identity(conn, database.conninfo()) == server:
                    raise Refused(f"the drill target {describe(params)} is the server of inventory database "
                                  f"{name!r}: a drill never restores onto production.",
                                  hint="point drill.target_dsn at an empty standby server, or unset it for a "
                                  "throwaway cluster.")
        except Refused:
            raise
        except RunbookError:
            unchecked.append(name)  # unreachable (the disaster being rehearsed): the emptiness check still holds
            continue
    if not (superuser and superuser[0]):
        raise Refused(f"the drill target {describe(params)} role is not a superuser; restoring roles needs one.",
                      hint="use a superuser DSN in drill.target_dsn.")
    notes = [f"could not tell whether the drill target is the server of {', '.join(unchecked)} (unreachable with "
             "the inventory's credentials); it was used because it is empty"] if unchecked else []
    return CleanCluster(kind="server", admin=DatabaseSettings(dsn=SecretStr(make_conninfo(**admin_params(params)))),
                        server=server, notes=notes)


@step_task("refuse-non-empty-target")
def refuse_non_empty_target(*, cluster: CleanCluster) -> None:
    """After the sweep: any database but the system ones was not made by a drill, so the server is not ours."""
    with connect(cluster.admin.conninfo(), where="the drill target", autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()]
    foreign = [n for n in names if n not in SYSTEM_DATABASES]
    if foreign:
        raise Refused(f"the drill target {cluster.describe()} is not empty: it has database(s) "
                      f"{', '.join(foreign)} that no drill recorded making.",
                      hint="give the drill an empty server, or unset drill.target_dsn for a throwaway cluster; "
                      "nothing was changed.")


@step_task("drop-drill-databases", mutates=True)
def drop_drill_databases(*, cluster: CleanCluster, records: RestoreRecords) -> list[str]:
    """Drop every database the records say a drill made on this target (same name and OID), and their records."""
    dropped = []
    with connect(cluster.admin.conninfo(), where="the drill target", autocommit=True) as conn, \
            database_errors("dropping the drill's databases"):
        for record in records.all():
            row = conn.execute("SELECT oid::bigint FROM pg_database WHERE datname = %s", [record.name]).fetchone()
            if row is None:
                records.delete(record.name)
            elif record.oid is not None and int(row[0]) == record.oid:
                conn.execute(sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {} "
                                     "AND pid <> pg_backend_pid()").format(sql.Literal(record.name)))
                drop_database(conn, record.name)
                records.delete(record.name)
                dropped.append(record.name)
            else:
                get_run_logger().warning("Database %r on the drill target is not the one a drill recorded; left",
                                         record.name)
    return dropped


@step_task("drop-drill-roles", mutates=True)
def drop_drill_roles(*, cluster: CleanCluster, roles: list[RoleCreated]) -> list[str]:
    """Drop the roles this drill created on an existing server (after its databases are gone)."""
    dropped = []
    with connect(cluster.admin.conninfo(), where="the drill target", autocommit=True) as conn:
        for role in roles:
            try:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role.name)))
                dropped.append(role.name)
            except Exception as exc:  # noqa: BLE001 - one role still owning something must not keep the rest
                get_run_logger().warning("Could not drop role %r on the drill target: %s", role.name, exc)
    return dropped


@step_task("tear-down-throwaway-cluster")
def tear_down_throwaway_cluster(*, workdirs: WorkDirs, workdir: Path) -> None:
    """Stop the cluster and remove the drill's directory; a cluster that does not stop keeps its directory
    (released to the next drill's sweep, which tries again) and the drill reports it."""
    if not stop_cluster(workdir):
        workdirs.release(workdir)
        stop = pg_ctl_command(pg_bindir() / "pg_ctl", workdir / "cluster" / "data", "stop -m immediate",
                              os_user=server_os_user(), as_root=os.geteuid() == 0)
        raise Refused(f"the throwaway cluster in {workdir} did not stop.",
                      hint=f"stop it by hand, as the cluster's owner ({stop}); the next drill tries again.")
    workdirs.remove(workdir)
    get_run_logger().info("Throwaway cluster stopped and %s removed", workdir)
