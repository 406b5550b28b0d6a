"""The connection pool, judged: how full it is (per server, database and role), which sessions the operations
runbook's P0 "Database Connection Pool Exhausted" lets us terminate (idle in a transaction past its 5 minutes,
only while the pool is at its threshold), which queries run long (the USD/COP playbook's, listed only), the plan's
hash, and query text with its literals scrubbed. Pure: the reading comes in, the decisions go out.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from runbooks.core.text import visible

IDLE_IN_TRANSACTION = ("idle in transaction", "idle in transaction (aborted)")
"""Both hold a connection and a transaction's locks and snapshot for nothing; the seed names the first, the second
(a statement failed, the client never rolled back) is the same waste."""


class Session(BaseModel):
    """One client backend as ``pg_stat_activity`` showed it (ages on the server's clock, query text scrubbed)."""

    pid: int
    database: str | None
    role: str | None
    superuser: bool = False
    replication: bool = False
    application_name: str = ""
    client: str | None = Field(default=None, description="client address, or None for a Unix socket")
    state: str | None = Field(default=None, description="None: the runbooks' role may not see it (no "
                              "pg_read_all_stats)")
    backend_start: datetime
    xact_start: datetime | None = None
    state_change: datetime | None = None
    query_start: datetime | None = None
    idle_seconds: float | None = Field(default=None, description="since the last state change")
    xact_seconds: float | None = None
    query_seconds: float | None = None
    wait: str | None = None
    query: str = Field(default="", description="scrubbed of literals, shortened")
    this_run: bool = Field(default=False, description="the runbook's own reading session")


class PoolReading(BaseModel):
    """One server's client backends and its limits, read in one statement each."""

    server: str = Field(description="where it listens (no password), for the report")
    server_version: str
    max_connections: int
    reserved_connections: int = Field(description="superuser_reserved_connections (+ reserved_connections from "
                                      "PostgreSQL 16): slots only privileged roles may take")
    database_limits: dict[str, int] = Field(default_factory=dict, description="CONNECTION LIMIT of databases "
                                            "that set one")
    role_limits: dict[str, int] = Field(default_factory=dict, description="CONNECTION LIMIT of roles that set one")
    sessions: list[Session] = Field(default_factory=list, description="every client backend of the server")
    superuser: bool
    can_read_all: bool = Field(description="superuser or pg_read_all_stats: other roles' states are visible")
    can_signal: bool = Field(description="superuser or pg_signal_backend: may terminate other roles' sessions")


class PoolUsage(BaseModel):
    scope: Literal["server", "database", "role"]
    name: str
    used: int
    limit: int
    percent: float
    exhausted: bool


class Candidate(BaseModel):
    """A session idle in a transaction past the limit, and what the runbook does with it."""

    session: Session
    terminate: bool
    why: str


Outcome = Literal["terminated", "would terminate", "moved on", "signal failed"]


class Termination(BaseModel):
    pid: int
    database: str | None
    role: str | None
    application_name: str
    outcome: Outcome


def usage_of(reading: PoolReading, *, threshold_percent: float) -> list[PoolUsage]:
    """Client backends against ``max_connections``, each database's and each role's CONNECTION LIMIT (only those
    that set one: the others share the server's). ``exhausted`` at ``threshold_percent`` or more."""

    def usage(scope: Literal["server", "database", "role"], name: str, used: int, limit: int) -> PoolUsage:
        percent = 100.0 * used / limit if limit > 0 else 100.0
        return PoolUsage(scope=scope, name=name, used=used, limit=limit, percent=round(percent, 1),
                         exhausted=percent >= threshold_percent)

    rows = [usage("server", reading.server, len(reading.sessions), reading.max_connections)]
    for name, limit in sorted(reading.database_limits.items()):
        rows.append(usage("database", name, sum(s.database == name for s in reading.sessions), limit))
    for name, limit in sorted(reading.role_limits.items()):
        rows.append(usage("role", name, sum(s.role == name for s in reading.sessions), limit))
    return rows


def sessions_per(reading: PoolReading, key: Literal["database", "role"]) -> list[tuple[str, int, int]]:
    """``(name, sessions, of which idle in a transaction)`` per database or role, busiest first."""
    counts: dict[str, list[int]] = {}
    for s in reading.sessions:
        name = (s.database if key == "database" else s.role) or "-"
        row = counts.setdefault(name, [0, 0])
        row[0] += 1
        row[1] += s.state in IDLE_IN_TRANSACTION
    return sorted(((n, c[0], c[1]) for n, c in counts.items()), key=lambda r: (-r[1], r[0]))


def is_own(application_name: str, own_prefix: str) -> bool:
    return application_name.startswith(own_prefix)


def judge_idle(reading: PoolReading, usage: list[PoolUsage], *, databases: set[str], limit_seconds: float,
               own_prefix: str) -> list[Candidate]:
    """Every session of ``databases`` idle in a transaction for more than ``limit_seconds``, with the verdict: it
    is terminated only while the pool it uses (the server's, its database's or its role's) is exhausted, and never
    a superuser's, a replication role's, the runbooks' own or this run's."""
    exhausted = {(u.scope, u.name) for u in usage if u.exhausted}
    server_full = any(scope == "server" for scope, _ in exhausted)
    found: list[Candidate] = []
    for s in reading.sessions:
        if s.database not in databases or s.state not in IDLE_IN_TRANSACTION:
            continue
        if s.idle_seconds is None or s.idle_seconds <= limit_seconds:
            continue
        if s.this_run:
            why = "this run's own session"
        elif s.superuser:
            why = "spared: a superuser's session"
        elif s.replication:
            why = "spared: a replication role's session"
        elif is_own(s.application_name, own_prefix):
            why = f"spared: the runbooks' own (application_name starts with {own_prefix!r})"
        elif not (server_full or ("database", s.database) in exhausted or ("role", s.role) in exhausted):
            why = "listed: the pool is below its threshold"
        else:
            why = f"terminate: idle in transaction {age(s.idle_seconds)}"
            found.append(Candidate(session=s, terminate=True, why=why))
            continue
        found.append(Candidate(session=s, terminate=False, why=why))
    return sorted(found, key=lambda c: (not c.terminate, -(c.session.idle_seconds or 0), c.session.pid))


def long_queries(reading: PoolReading, *, databases: set[str], limit_seconds: float) -> list[Session]:
    """Active queries of ``databases`` running longer than ``limit_seconds``, longest first: listed, never
    terminated (a long query may be the month-end report; its owner decides)."""
    found = [s for s in reading.sessions if s.database in databases and s.state == "active" and not s.this_run
             and s.query_seconds is not None and s.query_seconds > limit_seconds]
    return sorted(found, key=lambda s: (-(s.query_seconds or 0), s.pid))


def plan_hash(candidates: list[Candidate]) -> str:
    """Over exactly the sessions to terminate (server, pid, and the instants that tell a session and a transaction
    apart from a later one under the same pid)."""
    payload = sorted([c.session.database or "", c.session.pid, c.session.backend_start.isoformat(),
                      c.session.xact_start.isoformat() if c.session.xact_start else ""]
                     for c in candidates if c.terminate)
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:12]


def max_connections_proposal(reading: PoolReading, usage: list[PoolUsage]) -> str | None:
    """When the server itself is at its threshold: what raising ``max_connections`` takes. Proposed, never done:
    it needs a restart (the seed's ``pg_reload_conf()`` does not apply it), and every slot costs memory."""
    server = next(u for u in usage if u.scope == "server")
    if not server.exhausted:
        return None
    proposed = max(200, int(math.ceil(reading.max_connections * 1.5 / 50) * 50))
    return (f"The server uses {server.used} of max_connections = {reading.max_connections} "
            f"({reading.reserved_connections} reserved for privileged roles). If the load is real (not leaked or "
            f"idle sessions), raise it, e.g. ALTER SYSTEM SET max_connections = {proposed}, then restart "
            "PostgreSQL in a change window: the setting only applies at a restart, a reload does not do it. Each "
            "connection costs memory (work_mem per sort or hash, per connection); a pooler (PgBouncer) in front of "
            "the application usually does more than a higher limit. This runbook never changes it.")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][\w$\x80-\U0010ffff]*")
_DOLLAR = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][\w\x80-\U0010ffff]*)?\$")
_PARAM = re.compile(r"\$\d+")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)"
                     r"(?:[eE][+-]?\d+)?")


def _scan(query: str, *, backslash_escapes: bool) -> str:
    """One reading of ``query``, left to right: comments (``--``, and ``/* */`` nested as PostgreSQL nests them)
    dropped, strings, dollar-quoted bodies and numbers replaced by ``?``; identifiers, keywords and ``$1`` kept.
    ``backslash_escapes``: whether a plain ``'…'`` takes ``\'`` (standard_conforming_strings off); ``E'…'`` always
    does."""
    out: list[str] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if query.startswith("--", i):
            end = query.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif query.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if query.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif query.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            out.append(" ")
        elif c == "$" and (m := _PARAM.match(query, i)):
            out.append(m.group(0))
            i = m.end()
        elif c == "$" and (m := _DOLLAR.match(query, i)):
            end = query.find(m.group(0), m.end())
            i = n if end < 0 else end + len(m.group(0))
            out.append("?")
        elif c == "'" or (c in "eEbBxXnNuU" and not (out and _WORD.fullmatch(out[-1][-1:] or " "))
                          and _string_start(query, i)):
            quote = query.index("'", i)
            escapes = backslash_escapes or query[i] in "eE"
            j = quote + 1
            while j < n:
                if query[j] == "'":
                    if j + 1 < n and query[j + 1] == "'":
                        j += 2
                        continue
                    j += 1
                    break
                j += 2 if escapes and query[j] == "\\" else 1
            else:
                j = n
            out.append("?")
            i = j
        elif c == '"':
            end = i + 1
            while end < n:
                if query[end] == '"':
                    if end + 1 < n and query[end + 1] == '"':
                        end += 2
                        continue
                    break
                end += 1
            out.append(query[i:end + 1])
            i = end + 1
        elif (m := _WORD.match(query, i)):
            out.append(m.group(0))
            i = m.end()
        elif (c.isdigit() or (c == "." and i + 1 < n and query[i + 1].isdigit())) and (m := _NUMBER.match(query, i)):
            out.append("?")
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _string_start(query: str, i: int) -> bool:
    """``E'``, ``B'``, ``X'``, ``N'`` or ``U&'`` at ``i``: a prefixed string, not a word."""
    if query[i] in "uU":
        return query.startswith("&'", i + 1)
    return query.startswith("'", i + 1)


def scrub_literals(query: str, *, limit: int = 200) -> str:
    """``query`` with every string (``'…'``, ``E'…'``, ``$tag$…$tag$``, bit and hex strings), number and comment
    replaced, whitespace folded and cut to ``limit`` characters: a password in an ``ALTER ROLE``, a client's
    account number in a ``WHERE``, never reach a report. Identifiers, keywords and ``$1`` parameters stay, so the
    statement is still recognisable. An unterminated literal (the server cuts query text at
    ``track_activity_query_size``) is scrubbed to the end."""

    # Both readings of a plain string (standard_conforming_strings on, the default, and off): a reading that is
    # wrong for this server ends a string early and shows what follows, so the one that shows less is kept.
    readings = [_scan(query, backslash_escapes=flag) for flag in (False, True)]
    scrubbed = min(readings, key=lambda r: len("".join(r.replace("?", "").split())))
    text = " ".join(visible(scrubbed).split())  # bidi and zero-width characters go too
    return text if len(text) <= limit else text[:max(0, limit - 1)] + "…"
