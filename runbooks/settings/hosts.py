"""This host and the fleet: the root settings ``state_dir``, ``hosts`` and ``host_name``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/runbooks``, else ``~/.local/state/runbooks`` (the XDG base directory default)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "runbooks"


_HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOST_NAME_PATTERN = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")


def this_host() -> str:
    """This machine's name as ``hostname`` prints it, lower-cased: the default ``host_name``."""
    import socket

    return socket.gethostname().lower()


def _host_name(name: str) -> str:
    """``name`` lower-cased if it is a host name (RFC 1123: dot-separated labels of letters, digits and inner
    dashes, at most 253 characters): host names are case-insensitive, and what is built per host (deployments,
    work queues) must not take ``Worker-1`` and ``worker-1`` for two hosts."""
    lowered = name.lower()
    if len(lowered) > 253 or not HOST_NAME_PATTERN.fullmatch(lowered):
        raise ValueError(f"{name[:80]!r} is not a host name (letters, digits, inner dashes and dots, as "
                         "'hostname' prints it, e.g. 'worker-1' or 'worker-1.internal')")
    return lowered


HostName = Annotated[str, AfterValidator(_host_name)]
