"""Is the process that wrote a lock or a work directory still running? Host, machine (boot id and PID
namespace), PID and the PID's start time, so neither a PID reused after a reboot or by another program, nor a
process of another machine or container with the same hostname, looks like the writer."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _start_time(pid: int) -> str | None:
    """Boot id and start tick of ``pid`` (Linux ``/proc``); None where that is unknown."""
    try:
        boot = _boot_id()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and parentheses
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


def _machine() -> str | None:
    """This kernel's boot and this PID namespace: two machines (or containers) may share a hostname, never both."""
    try:
        boot = _boot_id()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{namespace}"


class ProcessIdentity(BaseModel):
    host: str
    pid: int
    started: str | None = None
    machine: str | None = None

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls(host=socket.gethostname(), pid=os.getpid(), started=_start_time(os.getpid()), machine=_machine())

    @property
    def on_this_host(self) -> bool:
        """Only then can its PID be looked up here; a same-named host elsewhere is judged by its heartbeat."""
        if self.host != socket.gethostname():
            return False
        return self.machine is None or self.machine == _machine()

    def alive(self) -> bool:
        """Only meaningful on this host (check ``on_this_host`` first); elsewhere it says True."""
        if not self.on_this_host:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        if self.started is None:
            return True
        return _start_time(self.pid) in (self.started, None)
