"""Is the process that wrote a lock or a work directory still running? Host, PID and the PID's start time,
so a PID reused after a reboot or by another program does not look like the writer."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel


def _start_time(pid: int) -> str | None:
    """Boot id and start tick of ``pid`` (Linux ``/proc``); None where that is unknown."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and parentheses
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


class ProcessIdentity(BaseModel):
    host: str
    pid: int
    started: str | None = None

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls(host=socket.gethostname(), pid=os.getpid(), started=_start_time(os.getpid()))

    @property
    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

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
