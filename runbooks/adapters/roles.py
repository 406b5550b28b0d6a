"""Roles a restore needs, created from the cluster backup (``pg_dumpall --globals-only``) safely.

A restore must not bring back logins that were dropped on purpose, so by default a missing role comes back as a
bare ``NOLOGIN`` owner for the restored objects; only a clean cluster (a DR drill) or an explicit request gets the
backup's attributes, login and password hash. Existing roles are never touched, and all roles of a plan are made
in one transaction, so a failure leaves none half-made for a retry to skip.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
from psycopg import sql
from pydantic import BaseModel, PrivateAttr

# One token of a pg_dumpall script: a literal, a quoted identifier, a comment, a psql meta-command line
# (\restrict ...), a semicolon, a run of other text, or a lone quote (unterminated: an error).
_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|\\[^\n]*|;|[^'";\\-]+|-|['"]""")
_NAME = r'("(?:[^"]|"")+"|[^\s";]+)'
_CREATE = re.compile(rf"CREATE\s+ROLE\s+{_NAME}$", re.S | re.I)
_ALTER_WITH = re.compile(rf"ALTER\s+ROLE\s+{_NAME}\s+WITH\s+(.*)$", re.S | re.I)
_ALTER_SET = re.compile(rf"ALTER\s+ROLE\s+{_NAME}\s+(?:SET|RESET)\s", re.S | re.I)
_COMMENT = re.compile(rf"COMMENT\s+ON\s+ROLE\s+{_NAME}\s+IS\s", re.S | re.I)
_PASSWORD = re.compile(r"\s*\b(?:ENCRYPTED\s+)?PASSWORD\s+('(?:[^']|'')*'|NULL)", re.I)
_LITERAL = re.compile(r"'(?:[^']|'')*'")
BOOTSTRAP_SUPERUSER_OID = 10  # exists in every cluster, created by initdb


class RoleCreated(BaseModel):
    """One role a restore created: what the report shows. Never holds the password hash."""

    name: str
    login: bool
    with_password: bool
    attributes: str  # "NOLOGIN", or the backup's ALTER ROLE attributes without the PASSWORD clause


class RolePlan(BaseModel):
    """The roles to create and, kept out of repr and serialisation, the statements that create them: they may
    carry password hashes. Never return a plan from a task (persisted results pickle private attributes)."""

    created: list[RoleCreated]
    _statements: list[sql.SQL | sql.Composed] = PrivateAttr(default_factory=list)


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a psql script, without comments and meta-commands. Quoting is respected, so a
    role named ``"a;b"`` or one containing a newline stays whole."""
    pos, parts = 0, list[str]()
    while pos < len(script):
        match = _TOKEN.match(script, pos)
        if match is None or match[0] in ("'", '"'):
            raise ValueError(f"unterminated quote at offset {pos} of the globals script")
        token, pos = match[0], match.end()
        if token == ";":
            if statement := "".join(parts).strip():
                yield statement
            parts = []
        elif not token.startswith(("--", "\\")):
            parts.append(token)
    if "".join(parts).strip():
        raise ValueError("the globals script ends inside a statement (truncated?)")


def _name(token: str) -> str:
    """A role name as the server stores it: quoted identifiers unescaped, bare ones folded to lower case."""
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return token.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"))


def script_roles(globals_sql: str) -> list[str]:
    """The roles a globals script creates, in its order."""
    return [_name(m[1]) for s in _statements(globals_sql) if (m := _CREATE.match(s))]


def plan_missing_roles(globals_sql: str, *, present: set[str], full: bool) -> RolePlan:
    """Plan the roles of ``globals_sql`` that are not in ``present``; other statements are ignored.

    Args:
        present: role names the target cluster has (``SELECT rolname FROM pg_roles``).
        full: False → ``CREATE ROLE name NOLOGIN`` only (no password, attributes, settings or memberships).
            True → the script's CREATE ROLE, ALTER ROLE ... WITH (login and password hash included), the role's
            ALTER ROLE ... SET and COMMENT ON ROLE statements. Memberships (GRANT) are never planned.
    """
    statements = list(_statements(globals_sql))
    missing = [name for name in script_roles(globals_sql) if name not in present]
    plan_statements: list[sql.SQL | sql.Composed] = []
    created: dict[str, RoleCreated] = {}
    for name in dict.fromkeys(missing):
        created[name] = RoleCreated(name=name, login=False, with_password=False, attributes="NOLOGIN")
        if not full:
            plan_statements.append(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    if full:
        for statement in statements:
            match = next((m for p in (_CREATE, _ALTER_WITH, _ALTER_SET, _COMMENT) if (m := p.match(statement))),
                         None)
            if match is None or (name := _name(match[1])) not in created:
                continue
            plan_statements.append(sql.SQL(statement))  # the backup's own text
            if match.re is _ALTER_WITH:
                password = _PASSWORD.search(match[2])
                attributes = " ".join(_PASSWORD.sub("", match[2]).split())
                words = _LITERAL.sub("''", attributes).upper().split()
                created[name] = RoleCreated(
                    name=name, login="LOGIN" in words, attributes=attributes,
                    with_password=password is not None and password[1].upper() != "NULL")
    plan = RolePlan(created=list(created.values()))
    plan._statements = plan_statements
    return plan


def apply_role_plan(conn: psycopg.Connection, plan: RolePlan) -> list[RoleCreated]:
    """Run the plan in one transaction (a savepoint if ``conn`` is already in one): all roles or none.

    Returns:
        ``plan.created``.

    Raises:
        psycopg.errors.DuplicateObject: a role appeared since the plan was made (42710); nothing was created,
            so the caller may plan again.
    """
    if not plan._statements:
        return []
    with conn.transaction():
        for statement in plan._statements:
            conn.execute(statement)
    return list(plan.created)


def is_clean_cluster(conn: psycopg.Connection, globals_sql: str) -> bool:
    """True when none of the script's roles exist on the target other than the current user and the bootstrap
    superuser: a freshly initdb'd cluster (a DR drill), where the backup's roles may come back as they were."""
    row = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s) AND rolname <> current_user"
                       " AND oid <> %s", [script_roles(globals_sql), BOOTSTRAP_SUPERUSER_OID]).fetchone()
    return row is not None and row[0] == 0
