"""PM2 through its command line, without a shell: ``pm2 jlist`` read as JSON, and the seed's restart, ``pm2 restart
<ecosystem file> --only <app> --update-env``, one app at a time (never ``restart all``: the operations runbook warns
it can double-spawn when the config changed).

- PM2's own daemon is found through ``PM2_HOME``. Any pm2 command starts a daemon when none runs there, so a read
  first checks that the daemon's socket exists: a health check must not start an empty daemon and report every
  app missing from it, and a restart must not start the platform under the runbooks' user.
- ``pm2 jlist`` includes each app's whole environment (the platform's secrets among it): it is parsed into
  ``Pm2Reading`` right here, keeping only what is graded, and its text is never logged or put in a message.
- ``--update-env`` gives the app the *calling* process's environment. The runbooks' worker holds its own settings
  and secrets, so pm2 runs with a minimal environment (PATH, HOME, LANG, PM2_HOME): the app gets the ecosystem
  file's ``env``, as from an operator's clean shell, and nothing of ours.
- Failures are ``ToolFailed`` (pm2 exited non-zero, answered what is not JSON) or ``ConfigurationError`` (no pm2
  program, no daemon at PM2_HOME), one line with a ``HINT:``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runbooks.core.errors import ConfigurationError, ToolFailed
from runbooks.core.redact import scrub
from runbooks.decisions.services import Pm2Reading
from runbooks.settings.services import Pm2Service

_KEPT_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "USER", "LOGNAME")


class _Pm2Env(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: str = "unknown"
    restart_time: int = 0
    pm_uptime: int | None = None
    created_at: int | None = None


class _Monit(BaseModel):
    model_config = ConfigDict(extra="ignore")

    memory: int | None = None


class _App(BaseModel):
    """One entry of ``pm2 jlist``; everything else in it (the environment) is ignored, never kept."""

    model_config = ConfigDict(extra="ignore")

    name: str
    pm_id: int
    pm2_env: _Pm2Env = Field(default_factory=_Pm2Env)
    monit: _Monit = Field(default_factory=_Monit)


def _instant(milliseconds: int | None) -> datetime | None:
    return None if not milliseconds else datetime.fromtimestamp(milliseconds / 1000, UTC)


def pm2_home(service: Pm2Service) -> Path:
    """The daemon's directory: the setting, else the environment's PM2_HOME, else ~/.pm2 (PM2's own default)."""
    if service.pm2_home is not None:
        return service.pm2_home
    return Path(os.environ.get("PM2_HOME") or Path.home() / ".pm2").expanduser()


def _environment(service: Pm2Service) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEPT_ENVIRONMENT}
    env.setdefault("PATH", os.defpath)
    env["PM2_HOME"] = str(pm2_home(service))
    return env


def _program(service: Pm2Service) -> str:
    found = shutil.which(service.pm2, path=_environment(service)["PATH"])
    if found is None:
        raise ConfigurationError(f"the pm2 program {service.pm2!r} is not found (PATH, or the path given).",
                                 hint="install PM2 or set [services.pm2.<name>] pm2 to its path; nothing was done.")
    return found


def _daemon_or_raise(service: Pm2Service) -> None:
    """A PM2 daemon answers at PM2_HOME, and it is the one of the user who owns that home: any pm2 command against
    a home without one starts a daemon (and ``restart`` the app) as the runbooks' user, root perhaps. A socket file
    left by a killed daemon is not a daemon: it must accept a connection."""
    home = pm2_home(service)
    sock = home / "rpc.sock"
    hint = ("set [services.pm2.<name>] pm2_home to the platform's PM2_HOME, or start the platform's PM2 as its own "
            "user (pm2 resurrect); nothing was done.")
    try:
        info = sock.stat()
    except OSError:
        raise ConfigurationError(f"no PM2 daemon runs at PM2_HOME {str(home)!r} (no rpc.sock there).",
                                 hint=hint) from None
    if info.st_uid != os.geteuid():
        raise ConfigurationError(f"the PM2 daemon at {str(home)!r} is another user's (uid {info.st_uid}): pm2 run "
                                 "as this worker's user would start a daemon and the app of its own.",
                                 hint="run this worker as the platform's PM2 user; nothing was done.")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(sock))
        except OSError:
            raise ConfigurationError(f"no PM2 daemon answers at PM2_HOME {str(home)!r} (its rpc.sock is left by "
                                     "a daemon that died).", hint=hint) from None


def _run(service: Pm2Service, args: list[str], *, doing: str, cwd: Path | None = None) -> str:
    argv = [_program(service), *args]
    try:
        done = subprocess.run(argv, env=_environment(service), capture_output=True, text=True, errors="replace",
                              timeout=service.timeout_seconds, check=False, stdin=subprocess.DEVNULL, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"pm2 did not finish {doing} within {service.timeout_seconds:g} s.",
                         hint="check the PM2 daemon (pm2 ping as the platform's user); the command was killed.") \
            from None
    except OSError as exc:
        raise ToolFailed(f"pm2 could not be started for {doing}: {exc.strerror}.",
                         hint="check [services.pm2.<name>] pm2; nothing was done.") from None
    if done.returncode != 0:
        tail = scrub(" ".join((done.stderr or "").split()))[-300:]
        raise ToolFailed(f"pm2 exited with status {done.returncode} while {doing}: {tail or 'no message'}.",
                         hint="read pm2 logs --lines 50 as the platform's user.")
    return done.stdout


def read_pm2(service: Pm2Service) -> list[Pm2Reading]:
    """Every instance of ``service.app`` in ``pm2 jlist`` (empty when PM2 runs no such app)."""
    _daemon_or_raise(service)
    out = _run(service, ["jlist"], doing="listing its apps")
    start = out.find("[")  # pm2 may print a notice (an out-of-date daemon) before the JSON
    try:
        raw = json.loads(out[start:]) if start >= 0 else None
        if not isinstance(raw, list):
            raise ValueError("not a list")
        apps = [_App.model_validate(item) for item in raw]
    except (ValueError, ValidationError):  # the text holds environments: it is never quoted
        raise ToolFailed("pm2 jlist answered something that is not its JSON list of apps.",
                         hint="run pm2 jlist as the platform's user and check its PM2 version.") from None
    return [_reading(app) for app in apps if app.name == service.app]


def _reading(app: _App) -> Pm2Reading:
    env = app.pm2_env
    return Pm2Reading(name=app.name, pm_id=app.pm_id, status=env.status, restarts=env.restart_time,
                      memory_bytes=app.monit.memory, up_since=_instant(env.pm_uptime),
                      created_at=_instant(env.created_at))


def reload_pm2(service: Pm2Service) -> None:
    """``pm2 reload <ecosystem file> --only <app> --update-env``: the app re-reads its ecosystem entry (its env with
    ``--update-env``) and its own files; PM2 reloads it without dropping connections where it can (cluster mode)."""
    _daemon_or_raise(service)
    if not service.ecosystem_file.is_file():
        raise ConfigurationError(f"the ecosystem file {str(service.ecosystem_file)!r} does not exist.",
                                 hint="set [services.pm2.<name>] ecosystem_file; nothing was done.")
    _run(service, ["reload", str(service.ecosystem_file), "--only", service.app, "--update-env"],
         doing=f"reloading {service.app!r}", cwd=service.ecosystem_file.parent)


def restart_pm2(service: Pm2Service) -> None:
    """``pm2 restart <ecosystem file> --only <app> --update-env`` (pm2 exits 0 even when the file declares no such
    app: the caller waits for the app to come back, which proves the restart)."""
    _daemon_or_raise(service)
    if not service.ecosystem_file.is_file():
        raise ConfigurationError(f"the ecosystem file {str(service.ecosystem_file)!r} does not exist.",
                                 hint="set [services.pm2.<name>] ecosystem_file to the platform's "
                                 "ecosystem.config.cjs; nothing was done.")
    _run(service, ["restart", str(service.ecosystem_file), "--only", service.app, "--update-env"],
         doing=f"restarting {service.app!r}", cwd=service.ecosystem_file.parent)
