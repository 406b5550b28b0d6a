"""A throwaway PostgreSQL cluster made with initdb/pg_ctl: the sandbox's database, the tests' database, and
(later) the DR game-day's clean target cluster."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from runbooks.adapters.postgres import pg_bindir, server_env
from runbooks.core.errors import ConfigurationError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_os_user() -> str | None:
    """The OS user the server runs as: ``postgres`` when we are root (PostgreSQL refuses root), else ourselves."""
    return "postgres" if os.geteuid() == 0 else None


SOCKET_PATH_MAX = 107  # bytes of a Unix socket's path (sun_path holds 108 with its NUL)


def socket_path_fits(directory: Path, port: int = 65535) -> bool:
    """Whether the server's socket in ``directory`` (``.s.PGSQL.<port>``) fits in a Unix socket path: PostgreSQL
    refuses to start with a longer one."""
    return len(os.fsencode(directory / f".s.PGSQL.{port}")) <= SOCKET_PATH_MAX


def closed_directory(path: Path, user: str) -> Path | None:
    """The first directory on the way to ``path`` (itself included, if it exists) that ``user`` cannot enter,
    asked of the system as that user (permission bits, ACLs, everything), or None."""
    def can_enter(directory: Path) -> bool:
        return subprocess.run(["test", "-x", str(directory)], user=user, check=False,
                              capture_output=True).returncode == 0

    path = path.absolute()
    existing = path if path.exists() else next(p for p in path.parents if p.exists())
    if can_enter(existing):
        return None
    for directory in [*reversed(existing.parents), existing]:
        if not can_enter(directory):
            return directory
    return existing


def refuse_closed_directory(path: Path, *, hint: str) -> None:
    """ConfigurationError unless the server's OS user can reach ``path`` (only matters when we are root)."""
    user = server_os_user()
    closed = closed_directory(path, user) if user else None
    if closed is not None:
        mode = closed.stat().st_mode & 0o777
        raise ConfigurationError(f"the {user} OS user cannot enter {closed} (mode {mode:04o}), and PostgreSQL "
                                 f"runs as {user} when you are root.", hint=hint)


def _failure(argv: list[str], exc: subprocess.CalledProcessError, log: Path | None = None) -> RuntimeError:
    """One line naming the tool and its last words (not the whole argv); the server log's tail when it has one."""
    output = "\n".join(str(part or "") for part in (exc.stderr, exc.stdout)).strip()
    if log is not None and log.is_file():
        output = log.read_text(errors="replace").strip() or output
    last = output.splitlines()[-1].strip() if output else "no output"
    return RuntimeError(f"{Path(argv[0]).name} exited with {exc.returncode}: {last}")


@dataclass
class PostgresCluster:
    """A cluster under ``root`` listening on 127.0.0.1:``port`` with password (scram) auth over TCP.

    Run as root, the server runs as the ``postgres`` OS user (PostgreSQL refuses to run as root).
    """

    root: Path
    port: int
    superuser_password: str
    superuser: str = "postgres"
    fast: bool = True  # fsync off: a sandbox is thrown away, never a production setting
    # pgBackRest reaches a local cluster only by its Unix socket; None: TCP only. ``socket_dir`` (root/run) is the
    # cluster's private one (0700, the server's OS user's: local connections are trusted, so nobody else may reach it).
    socket_directory: Path | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        user = user or self.superuser
        password = self.superuser_password if password is None else password
        return f"postgresql://{quote(user)}:{quote(password, safe='')}@127.0.0.1:{self.port}/{quote(dbname)}"

    def _os_user(self) -> str | None:
        return server_os_user()

    def _run(self, argv: list[str], *, log: Path | None = None) -> subprocess.CompletedProcess[str]:
        user = self._os_user()
        try:
            return subprocess.run(argv, check=True, capture_output=True, text=True, user=user,
                                  group="postgres" if user else None, cwd=self.root, env=server_env())
        except subprocess.CalledProcessError as exc:
            raise _failure(argv, exc, log) from None

    def init(self) -> None:
        bindir = pg_bindir()
        refuse_closed_directory(self.root, hint="make every directory above it enterable by that user "
                                "(chmod o+x) or put the cluster under one that is.")
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.unlink(missing_ok=True)
        with os.fdopen(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(self.superuser_password + "\n")  # 0600 from its first byte
        if (user := self._os_user()) is not None:
            entry = pwd.getpwnam(user)
            for path in (self.root, self.socket_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self.root.chmod(0o755)
        self.socket_dir.chmod(0o700)
        try:
            self._run([str(bindir / "initdb"), "-D", str(self.datadir), "-U", self.superuser, "-E", "UTF8",
                       "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"])
        finally:
            pwfile.unlink(missing_ok=True)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            # TCP only unless a socket directory is given (the caller checks it fits: socket_path_fits): a deep
            # work directory would overflow the 107 bytes of a socket path, and the server would not start.
            "unix_socket_directories": "'" + str(self.socket_directory).replace("'", "''") + "'"
            if self.socket_directory else "''",
            "max_connections": "50",
            "shared_buffers": "128MB",
            "max_wal_size": "2GB",
            "logging_collector": "off",
        }
        if self.fast:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n# runbooks sandbox\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def start(self) -> None:
        self._run([str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                   "-t", "60", "start"], log=self.logfile)

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run([str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"],
                           capture_output=True, user=self._os_user(), check=False, cwd=self.root)

    def is_running(self) -> bool:
        if not (self.datadir / "postmaster.pid").exists():
            return False
        return subprocess.run([str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), "status"],
                              capture_output=True, user=self._os_user(), check=False,
                              cwd=self.root).returncode == 0

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
