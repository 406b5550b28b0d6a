"""Creating the roles a restore needs from a real ``pg_dumpall --globals-only`` of the sandbox: bare NOLOGIN by
default, as in the backup only when asked, all or nothing, quoted names intact, no password hash in the plan."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from runbooks.adapters.postgres import libpq_env, pg_tool
from runbooks.adapters.roles import apply_role_plan, is_clean_cluster, plan_missing_roles, script_roles
from runbooks_sandbox import SandboxState
from tests.pgfixtures import admin_dsn


def run(sandbox: SandboxState, *statements: sql.Composed) -> None:
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def present(sandbox: SandboxState) -> set[str]:
    with psycopg.connect(admin_dsn(sandbox)) as conn:
        return {r for (r,) in conn.execute("SELECT rolname FROM pg_roles")}


def authid(sandbox: SandboxState, name: str) -> dict[str, Any] | None:
    with psycopg.connect(admin_dsn(sandbox)) as conn:
        cur = conn.execute("SELECT rolcanlogin, rolpassword, rolconnlimit, rolsuper, (SELECT setconfig FROM"
                           " pg_db_role_setting WHERE setrole = a.oid AND setdatabase = 0) AS config"
                           " FROM pg_authid a WHERE rolname = %s", [name])
        row = cur.fetchone()
        return None if row is None else dict(zip([c.name for c in cur.description or []], row, strict=True))


def apply(sandbox: SandboxState, script: str, *, full: bool) -> list[str]:
    plan = plan_missing_roles(script, present=present(sandbox), full=full)
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        return [r.name for r in apply_role_plan(conn, plan)]


@pytest.fixture
def uid(sandbox: SandboxState) -> Iterator[str]:
    """A unique suffix; every role whose name contains it is dropped afterwards."""
    uid = uuid.uuid4().hex[:8]
    yield uid
    run(sandbox, *(sql.SQL("DROP ROLE {}").format(sql.Identifier(r)) for r in present(sandbox) if uid in r))


def test_missing_roles_come_back_nologin_unless_full(sandbox: SandboxState, uid: str) -> None:
    login, desk, password = f"rb_login_{uid}", f'rb Desk "A" {uid}', f"pw '{uid}'"
    run(sandbox,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} CONNECTION LIMIT 4").format(sql.Identifier(login),
                                                                            sql.Literal(password)),
        sql.SQL("ALTER ROLE {} SET statement_timeout = '5s'").format(sql.Identifier(login)),
        sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(desk)),
        sql.SQL('ALTER ROLE {} SET search_path = "$user", "Risk Desk"').format(sql.Identifier(desk)),
        sql.SQL("GRANT {} TO {}").format(sql.Identifier(desk), sql.Identifier(login)))
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn(sandbox))
    script = subprocess.run([pg_tool("pg_dumpall"), "--globals-only", "--no-password"], env=libpq_env(params),
                            capture_output=True, text=True, check=True).stdout
    assert "SCRAM-SHA-256$" in script and f'"rb Desk ""A"" {uid}"' in script
    run(sandbox, *(sql.SQL("DROP ROLE {}").format(sql.Identifier(r)) for r in (login, desk)))

    plan = plan_missing_roles(script, present=present(sandbox), full=False)
    assert {r.name for r in plan.created} == {login, desk}
    assert all(not r.login and not r.with_password and r.attributes == "NOLOGIN" for r in plan.created)
    assert sorted(apply(sandbox, script, full=False)) == sorted([login, desk])
    assert authid(sandbox, login) == {"rolcanlogin": False, "rolpassword": None, "rolconnlimit": -1,
                                      "rolsuper": False, "config": None}
    assert authid(sandbox, desk) == {"rolcanlogin": False, "rolpassword": None, "rolconnlimit": -1,
                                     "rolsuper": False, "config": None}
    assert apply(sandbox, script, full=False) == []  # existing roles are never touched, even as in the backup
    run(sandbox, *(sql.SQL("DROP ROLE {}").format(sql.Identifier(r)) for r in (login, desk)))

    plan = plan_missing_roles(script, present=present(sandbox), full=True)
    shown = {r.name: r for r in plan.created}
    assert shown[login].login and shown[login].with_password and "CONNECTION LIMIT 4" in shown[login].attributes
    assert not shown[desk].login and not shown[desk].with_password
    for text in (repr(plan), str(plan), plan.model_dump_json(), str(plan.model_dump())):
        assert "SCRAM" not in text and "PASSWORD" not in text
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        assert sorted(r.name for r in apply_role_plan(conn, plan)) == sorted([login, desk])
    restored = authid(sandbox, login)
    assert restored is not None and restored["rolcanlogin"] and restored["rolconnlimit"] == 4
    assert str(restored["rolpassword"]).startswith("SCRAM-SHA-256$") and restored["config"] == ["statement_timeout=5s"]
    assert authid(sandbox, desk)["config"] == ['search_path="$user", "Risk Desk"']  # type: ignore[index]
    with psycopg.connect(sandbox.cluster().dsn("postgres", user=login, password=password)) as conn:
        assert conn.execute("SELECT current_user, current_setting('statement_timeout')").fetchone() == (login, "5s")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(sandbox.cluster().dsn("postgres", user=login, password="wrong")).close()


def test_a_failing_statement_leaves_no_role_behind(sandbox: SandboxState, uid: str) -> None:
    first, second = f"rb_first_{uid}", f"rb_second_{uid}"
    script = (f"CREATE ROLE {first};\nALTER ROLE {first} WITH NOLOGIN;\n"
              f"CREATE ROLE {second};\nALTER ROLE {second} WITH LOGIN VALID UNTIL 'not a timestamp';\n")
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        plan = plan_missing_roles(script, present=present(sandbox), full=True)
        with pytest.raises(psycopg.errors.InvalidDatetimeFormat):
            apply_role_plan(conn, plan)
    assert authid(sandbox, first) is None and authid(sandbox, second) is None


def test_a_role_created_meanwhile_rolls_the_plan_back(sandbox: SandboxState, uid: str) -> None:
    first, second = f"rb_first_{uid}", f"rb_second_{uid}"
    script = f"CREATE ROLE {first};\nCREATE ROLE {second};\n"
    plan = plan_missing_roles(script, present=present(sandbox), full=False)
    run(sandbox, sql.SQL("CREATE ROLE {}").format(sql.Identifier(second)))
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DuplicateObject):
            apply_role_plan(conn, plan)
        assert authid(sandbox, first) is None
        replanned = plan_missing_roles(script, present=present(sandbox), full=False)
        assert [r.name for r in apply_role_plan(conn, replanned)] == [first]


def test_quoted_names_comments_and_meta_commands(sandbox: SandboxState, uid: str) -> None:
    names = [f"a;b {uid}", f'Desk ""A"" %s {uid}', f"new\nline {uid}", f"CREATE ROLE x {uid}", f"mixedcase_{uid}"]
    script = "\n".join([
        "--\n-- PostgreSQL database cluster dump\n--", f"\\restrict key{uid}", "SET standard_conforming_strings = on;",
        *(f'CREATE ROLE "{n}";\nALTER ROLE "{n}" WITH NOLOGIN; -- trailing comment' for n in names[:4]),
        f"CREATE ROLE MixedCase_{uid};",
        f"COMMENT ON ROLE \"{names[0]}\" IS 'it''s; tricky -- not a comment';",
        f"\\unrestrict key{uid}", "-- done"])
    expected = [n.replace('""', '"') for n in names]
    assert script_roles(script) == expected
    assert apply(sandbox, script, full=True) == expected
    assert all(authid(sandbox, n) is not None for n in expected)
    with psycopg.connect(admin_dsn(sandbox)) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
                           [expected[0]]).fetchone()
        assert row == ("it's; tricky -- not a comment",)
    with pytest.raises(ValueError, match="unterminated"):
        script_roles('CREATE ROLE "unterminated;\n')


def test_existing_roles_are_never_altered_even_in_full_mode(sandbox: SandboxState, uid: str) -> None:
    kept, new = f"rb_kept_{uid}", f"rb_new_{uid}"
    run(sandbox, sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(kept)))
    script = (f"CREATE ROLE {kept};\nALTER ROLE {kept} WITH SUPERUSER LOGIN PASSWORD 'md5x';\n"
              f"ALTER ROLE {kept} SET work_mem TO '1MB';\nCREATE ROLE {new};\nALTER ROLE {new} WITH NOLOGIN;\n")
    assert apply(sandbox, script, full=True) == [new]
    assert authid(sandbox, kept) == {"rolcanlogin": False, "rolpassword": None, "rolconnlimit": -1,
                                     "rolsuper": False, "config": None}


def test_clean_cluster_means_no_script_role_but_ourselves(sandbox: SandboxState, uid: str) -> None:
    superuser = sandbox.cluster().superuser
    script = f"CREATE ROLE {superuser};\nCREATE ROLE rb_absent_{uid};\n"
    with psycopg.connect(admin_dsn(sandbox)) as conn:
        assert is_clean_cluster(conn, script)
        run(sandbox, sql.SQL("CREATE ROLE {}").format(sql.Identifier(f"rb_absent_{uid}")))
        assert not is_clean_cluster(conn, script)
