"""Database properties against the real sandbox: a copy made with create_database_like and given the source's
properties is, in the catalogs and in a new session, the same database as far as pg_restore cannot tell."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from runbooks.adapters.dbproperties import (
    DatabaseProperties,
    apply_database_properties,
    create_database_like,
    read_database_properties,
    split_guc_list,
)
from runbooks.core.errors import DatabaseNotFound
from runbooks_sandbox import SandboxState
from tests.pgfixtures import admin_dsn, drop_db


@pytest.mark.parametrize(("value", "expected"), [
    ('"$user", public', ["$user", "public"]),
    ("a,b", ["a", "b"]),
    ('"with ""quote"", and comma", x', ['with "quote", and comma', "x"]),
    ("", []),
    ("   ", []),
    ('""', [""]),
    (' MixedCase ,  "Odd ""Schema""" ', ["MixedCase", 'Odd "Schema"']),
])
def test_split_guc_list(value: str, expected: list[str]) -> None:
    assert split_guc_list(value) == expected


@pytest.mark.parametrize("value", ['"unbalanced', "a,,b", "a,", "a b", '"a"b'])
def test_split_guc_list_rejects_malformed(value: str) -> None:
    with pytest.raises(ValueError):
        split_guc_list(value)


def facts(sandbox: SandboxState, name: str) -> dict[str, Any]:
    """Everything the catalogs say about a database beyond its contents, with role names instead of OIDs."""
    with psycopg.connect(admin_dsn(sandbox)) as conn:
        row = conn.execute(
            "SELECT oid, pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype,"
            " datlocprovider, daticulocale, datconnlimit, shobj_description(oid, 'pg_database')"
            " FROM pg_database WHERE datname = %s", [name]).fetchone()
        assert row is not None
        acl = conn.execute(
            "SELECT pg_get_userbyid(a.grantor),"
            " CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type,"
            " a.is_grantable FROM pg_database d,"
            " aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a WHERE d.oid = %s ORDER BY 1, 2, 3, 4",
            [row[0]]).fetchall()
        settings = conn.execute(
            "SELECT coalesce(r.rolname, ''), s.setconfig FROM pg_db_role_setting s"
            " LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = %s ORDER BY 1", [row[0]]).fetchall()
    return {"pg_database": row[1:], "acl": acl, "settings": settings}


def session_setting(dsn: str, setting: str) -> str:
    with psycopg.connect(dsn) as conn:
        return str(conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting))).fetchone()[0])  # type: ignore[index]


def run(sandbox: SandboxState, *statements: sql.Composed) -> None:
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture
def names(sandbox: SandboxState) -> Iterator[dict[str, str]]:
    uid = uuid.uuid4().hex[:8]
    made = {"src": f"props_src_{uid}", "copy": f"props_copy_{uid}", "owner": f"rb_owner_{uid}",
            "grantee": f'rb Grantee "{uid}"', "stray": f"rb_stray_{uid}", "password": f"pw-{uid}"}
    yield made
    for key in ("src", "copy"):
        drop_db(sandbox, made[key])
    run(sandbox, *(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(made[k]))
                   for k in ("owner", "grantee", "stray")))


def test_copy_gets_every_property_of_the_source(sandbox: SandboxState, names: dict[str, str]) -> None:
    src, copy = sql.Identifier(names["src"]), sql.Identifier(names["copy"])
    owner, grantee, stray = (sql.Identifier(names[k]) for k in ("owner", "grantee", "stray"))
    run(sandbox,
        sql.SQL("CREATE ROLE {} NOLOGIN").format(owner),
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(grantee, sql.Literal(names["password"])),
        sql.SQL("CREATE ROLE {} NOLOGIN").format(stray),
        sql.SQL("CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
                " OWNER {}").format(src, owner),
        sql.SQL('ALTER DATABASE {} SET search_path = "$user", public, "Odd ""Schema"""').format(src),
        sql.SQL("ALTER DATABASE {} SET work_mem = '7MB'").format(src),
        sql.SQL("ALTER DATABASE {} SET rb.tenant = 'a, b'").format(src),  # not a list: stays one value
        sql.SQL('ALTER ROLE {} IN DATABASE {} SET search_path = desk, "Risk Desk"').format(grantee, src),
        sql.SQL("ALTER ROLE {} IN DATABASE {} SET work_mem = '3MB'").format(grantee, src),
        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(src),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {} WITH GRANT OPTION").format(src, grantee),
        sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 7").format(src),
        sql.SQL("COMMENT ON DATABASE {} IS 'trading ledger'").format(src))

    with psycopg.connect(admin_dsn(sandbox)) as conn:
        props = read_database_properties(conn, names["src"])
    assert props.acl is not None and (names["grantee"], "CONNECT", True) in props.acl
    props = DatabaseProperties.model_validate_json(props.model_dump_json())  # as stored in the manifest

    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        create_database_like(conn, names["copy"], props)
        # What the copy carries before the swap: a scratch database's closed ACL and leftovers to be cleared.
        for statement in (sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(copy),
                          sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(copy, stray),
                          sql.SQL("ALTER DATABASE {} SET statement_timeout = '1s'").format(copy),
                          sql.SQL("ALTER ROLE {} IN DATABASE {} SET work_mem = '9MB'").format(stray, copy)):
            conn.execute(statement)
        for _ in range(2):  # applying again changes nothing
            with conn.transaction():
                apply_database_properties(conn, names["copy"], props)
            assert facts(sandbox, names["copy"]) == facts(sandbox, names["src"])

    assert facts(sandbox, names["copy"])["pg_database"][1:4] == ("LATIN1", "C", "C")
    for db in ("src", "copy"):
        assert session_setting(admin_dsn(sandbox, names[db]), "search_path") == '"$user", public, "Odd ""Schema"""'
        assert session_setting(admin_dsn(sandbox, names[db]), "rb.tenant") == "a, b"
        as_grantee = sandbox.cluster().dsn(names[db], user=names["grantee"], password=names["password"])
        assert session_setting(as_grantee, "search_path") == 'desk, "Risk Desk"'
        assert session_setting(as_grantee, "work_mem") == "3MB"


def test_default_privileges_and_no_settings_are_restored(sandbox: SandboxState, names: dict[str, str]) -> None:
    src, copy = sql.Identifier(names["src"]), sql.Identifier(names["copy"])
    run(sandbox, sql.SQL("CREATE DATABASE {}").format(src))
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        props = read_database_properties(conn, names["src"])
        assert props.acl is None and props.settings == [] and props.locale_provider == "c"
        create_database_like(conn, names["copy"], None)
        conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(copy))
        conn.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '9MB'").format(copy))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'scratch'").format(copy))
        with conn.transaction():
            apply_database_properties(conn, names["copy"], props)
    assert facts(sandbox, names["copy"]) == facts(sandbox, names["src"])


def test_icu_locale_is_carried(sandbox: SandboxState, names: dict[str, str]) -> None:
    run(sandbox, sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
                         " LOCALE_PROVIDER icu ICU_LOCALE 'en-US'").format(sql.Identifier(names["src"])))
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        props = read_database_properties(conn, names["src"])
        assert (props.locale_provider, props.icu_locale) == ("i", "en-US")
        create_database_like(conn, names["copy"], props)
    assert facts(sandbox, names["copy"]) == facts(sandbox, names["src"])


def test_a_failed_apply_changes_nothing(sandbox: SandboxState, names: dict[str, str]) -> None:
    run(sandbox, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names["copy"])))
    before = facts(sandbox, names["copy"])
    props = DatabaseProperties(owner=sandbox.cluster().superuser, encoding="UTF8", collate="C", ctype="C",
                               connection_limit=3, settings=[("work_mem", "5MB")],
                               role_settings=[(f"rb_missing_{uuid.uuid4().hex[:8]}", "work_mem", "1MB")])
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedObject), conn.transaction():
            apply_database_properties(conn, names["copy"], props)
    assert facts(sandbox, names["copy"]) == before


def test_reading_a_missing_database_says_so(sandbox: SandboxState) -> None:
    with psycopg.connect(admin_dsn(sandbox)) as conn, pytest.raises(DatabaseNotFound):
        read_database_properties(conn, f"absent_{uuid.uuid4().hex[:8]}")
