"""What a database is beyond its contents: owner, encoding and locale, connection limit, privileges, comment,
database-wide and per-role-in-database settings.

``pg_restore`` without ``--create`` carries none of this, so a restored copy that is later renamed into the live
database's place would silently lose it. Read it from the source (stored in the backup manifest), create the copy
with the same encoding and locale, and re-apply the rest in the transaction that swaps the copy in.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from runbooks.core.errors import DatabaseNotFound, VerificationFailed
from runbooks.decisions.manifest import AclEntry, DatabaseProperties, Privilege  # noqa: F401  (re-exported)

# pg_dump's variable_is_guc_list_quote(): the server stores these lists with each element quote_identifier()'d,
# so re-issuing the stored text as one literal would make the whole list a single element.
GUC_LIST_QUOTE = frozenset({"local_preload_libraries", "search_path", "session_preload_libraries",
                            "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"})


def split_guc_list(value: str) -> list[str]:
    """Split a stored list-valued setting like the server's SplitGUCList: comma-separated, surrounding whitespace
    dropped, an element may be double-quoted with "" standing for one quote. Unquoted elements keep their case.

    Raises:
        ValueError: on a malformed list (unbalanced quote, empty element).
    """
    items: list[str] = []
    pos, end = 0, len(value)
    while pos < end and value[pos].isspace():
        pos += 1
    while pos < end:
        if value[pos] == '"':
            chunks, pos = [], pos + 1
            while True:
                close = value.find('"', pos)
                if close < 0:
                    raise ValueError(f"unbalanced double quote in {value!r}")
                chunks.append(value[pos:close])
                pos = close + 1
                if value[pos:pos + 1] != '"':
                    break
                chunks.append('"')
                pos += 1
            items.append("".join(chunks))
        else:
            start = pos
            while pos < end and value[pos] != "," and not value[pos].isspace():
                pos += 1
            if pos == start:
                raise ValueError(f"empty element in {value!r}")
            items.append(value[start:pos])
        while pos < end and value[pos].isspace():
            pos += 1
        if pos < end:
            if value[pos] != ",":
                raise ValueError(f"expected a comma at offset {pos} of {value!r}")
            pos += 1
            while pos < end and value[pos].isspace():
                pos += 1
            if pos == end:
                raise ValueError(f"trailing comma in {value!r}")
    return items


def _setting_value(name: str, value: str) -> sql.Composable:
    """``TO`` clause as pg_dump's makeAlterConfigCommand writes it: one literal per element for quoted lists."""
    if name.lower() not in GUC_LIST_QUOTE:
        return sql.Literal(value)
    # SET stores an empty list element as "" (never an empty string), so [] cannot come from the catalog.
    return sql.SQL(", ").join(sql.Literal(item) for item in split_guc_list(value) or [""])


def _split_setting(entry: str) -> tuple[str, str]:
    name, _, value = entry.partition("=")
    return name, value


def _acl(conn: psycopg.Connection, name: str, *, default: bool = False) -> set[AclEntry]:
    """Effective privileges on ``name`` (a NULL datacl means acldefault); ``default``: what acldefault would be."""
    column = "acldefault('d', d.datdba)" if default else "coalesce(d.datacl, acldefault('d', d.datdba))"
    rows = conn.execute(sql.SQL(
        "SELECT CASE WHEN a.grantee = 0 THEN '' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type,"
        " a.is_grantable FROM pg_database d, aclexplode({}) a WHERE d.datname = %s").format(sql.SQL(column)),
        [name]).fetchall()
    return {(str(g), p, bool(o)) for g, p, o in rows}


def read_database_properties(conn: psycopg.Connection, name: str) -> DatabaseProperties:
    """Read ``name``'s properties over a connection to any database of its server (read-only queries only).

    Raises:
        DatabaseNotFound: the server has no database ``name``.
    """
    # to_jsonb(d) reads columns that only some majors have (datlocprovider 15+, daticulocale 15-16).
    row = conn.execute(
        "SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,"
        " coalesce(to_jsonb(d) ->> 'datlocprovider', 'c'),"
        " coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale'), d.datconnlimit,"
        " d.datacl IS NULL, shobj_description(d.oid, 'pg_database') FROM pg_database d WHERE d.datname = %s",
        [name]).fetchone()
    if row is None:
        raise DatabaseNotFound(f"database {name!r} does not exist, so its properties cannot be read.",
                               hint="check the database name ('psql -l' lists them).")
    oid, owner, encoding, collate, ctype, provider, icu_locale, limit, default_acl, comment = row
    settings, role_settings = [], []
    for role, entry in conn.execute(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, c.entry"
            " FROM pg_db_role_setting s, unnest(s.setconfig) WITH ORDINALITY c(entry, n)"
            " WHERE s.setdatabase = %s ORDER BY s.setrole <> 0, 1, c.n", [oid]):
        if role is None:
            settings.append(_split_setting(entry))
        else:
            role_settings.append((role, *_split_setting(entry)))
    acl = None if default_acl else sorted(_acl(conn, name))
    return DatabaseProperties(owner=owner, encoding=encoding, collate=collate, ctype=ctype, locale_provider=provider,
                              icu_locale=icu_locale if provider == "i" else None, connection_limit=limit, acl=acl,
                              settings=settings, role_settings=role_settings, comment=comment)


def create_database_like(conn: psycopg.Connection, name: str, props: DatabaseProperties | None) -> None:
    """``CREATE DATABASE name TEMPLATE template0`` with the source's encoding and locale (None: server defaults).
    Encoding and locale are fixed at creation; everything else is applied later. Needs an autocommit ``conn``."""
    query = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if props is not None:
        query += sql.SQL(" ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Literal(props.encoding), sql.Literal(props.collate), sql.Literal(props.ctype))
        if props.locale_provider == "i":
            query += sql.SQL(" LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(props.icu_locale))
        elif conn.info.server_version >= 150000:  # else template0's provider, which may be ICU
            query += sql.SQL(" LOCALE_PROVIDER libc")
    conn.execute(query)


def apply_database_properties(conn: psycopg.Connection, target: str, props: DatabaseProperties) -> None:
    """Make ``target``'s owner, connection limit, comment, privileges and settings those of ``props``.

    Every statement is transactional: run it inside the caller's transaction (with the swap's renames), so a
    failure leaves ``target`` as it was. Per-role settings need CREATEROLE; they are only touched when the
    source or the target has some.

    Raises:
        VerificationFailed: the privileges read back differ from ``props.acl`` (a grant by a third role).
    """
    db = sql.Identifier(target)
    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(props.owner)))
    conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(db, sql.Literal(props.connection_limit)))
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(props.comment)))

    wanted = _acl(conn, target, default=True) if props.acl is None else set(props.acl)
    if _acl(conn, target) != wanted:
        grantees = [sql.SQL("PUBLIC")] + [sql.Identifier(g) for g in sorted({g for g, _, _ in _acl(conn, target)})
                                          if g]
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {} CASCADE").format(db, sql.SQL(", ").join(grantees)))
        for grantee, privilege, grantable in sorted(wanted):
            conn.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(privilege), db, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                sql.SQL(" WITH GRANT OPTION" if grantable else "")))
        if (found := _acl(conn, target)) != wanted:
            raise VerificationFailed(f"privileges on {target!r} are {sorted(found)} after the grants, not "
                                     f"{sorted(wanted)}.", hint="compare datacl of both databases by hand.")

    conn.execute(sql.SQL("ALTER DATABASE {} RESET ALL").format(db))
    for setting, value in props.settings:
        conn.execute(sql.SQL("ALTER DATABASE {} SET {} TO {}").format(db, sql.Identifier(setting),
                                                                      _setting_value(setting, value)))
    stale = conn.execute("SELECT pg_get_userbyid(s.setrole) FROM pg_db_role_setting s JOIN pg_database d"
                         " ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole <> 0", [target]).fetchall()
    for (role,) in stale:
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(sql.Identifier(role), db))
    for role, setting, value in props.role_settings:
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} TO {}").format(
            sql.Identifier(role), db, sql.Identifier(setting), _setting_value(setting, value)))
