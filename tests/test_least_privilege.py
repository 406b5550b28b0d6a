"""Least privilege against the real sandbox (docs/least-privilege.md).

The roles are made by psql running ``deployments/roles.sql`` as written, and must be exactly what the document's
table says. Each runbook then runs with its own role's DSN and succeeds, and the role is refused what it must not
do. The backup writer's S3 policy is checked against every S3 call a real backup run makes (recorded through
botocore's event hooks), and on an object-lock bucket a writer whose credentials leaked cannot destroy a backup.
moto accepts any credentials, so IAM is evaluated here from the policy documents; object lock it enforces itself.
"""

from __future__ import annotations

import fnmatch
import io
import json
import re
import secrets
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import boto3
import httpx
import psycopg
import pytest
from botocore.exceptions import ClientError
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from runbooks.adapters.catalog import BackupLock
from runbooks.adapters.pipeline import iter_decompressed
from runbooks.adapters.postgres import libpq_env, pg_tool
from runbooks.adapters.processes import ProcessIdentity
from runbooks.core.errors import Refused
from runbooks.flows.data_freshness import data_freshness_flow
from runbooks.flows.health_check import health_check_flow
from runbooks.frame import outcome
from runbooks.settings import DatabaseSettings, load_settings
from runbooks.tasks.drill import check_target_server
from runbooks_sandbox import SandboxState
from tests.pgfixtures import (
    admin_dsn,
    content_checksums,
    create_fidelity_db,
    drop_db,
    restore_with_pg_restore,
    set_database_env,
)
from tests.repositories import catalog, restore_records
from tests.runs import restore, run_backup, run_cleanup

ROOT = Path(__file__).resolve().parents[1]
ROLES_SQL = ROOT / "deployments" / "roles.sql"
DOCS = ROOT / "docs" / "least-privilege.md"
WRITER_POLICY = ROOT / "deployments" / "s3-backup-writer-policy.json"
BUCKET_POLICY = ROOT / "deployments" / "s3-backup-bucket-policy.json"
LIFECYCLE = ROOT / "deployments" / "s3-backup-lifecycle.json"
WRITER_ARN = "arn:aws:iam::111122223333:role/runbooks-backup-writer"
ADMIN_ARN = "arn:aws:iam::111122223333:role/runbooks-backup-admin"


# -- the roles, as documented -------------------------------------------------------------------------------------
def documented_roles() -> dict[str, dict[str, set[str]]]:
    """The table of docs/least-privilege.md: role -> attributes, memberships, tables it may SELECT."""
    rows: dict[str, dict[str, set[str]]] = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`rb_\w+`", cells[0]):
            rows[cells[0].strip("`")] = {"attributes": set(re.findall(r"\b[A-Z]{5,}\b", cells[1])),
                                         "member_of": set(re.findall(r"`(\w+)`", cells[2])),
                                         "select_on": set(re.findall(r"`(\w+)`", cells[3]))}
    assert rows, f"no role table in {DOCS}"
    return rows


def psql(sandbox: SandboxState, *args: str, dbname: str = "postgres", stdin: str | None = None) -> str:
    """psql as the superuser, as an operator runs the documented SQL; fails the test on any error."""
    proc = subprocess.run([pg_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *args],
                          env=libpq_env(conninfo_to_dict(admin_dsn(sandbox, dbname))), input=stdin,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def superuser(sandbox: SandboxState, statement: str, dbname: str = "postgres") -> Any:
    with psycopg.connect(admin_dsn(sandbox, dbname), autocommit=True) as conn:
        cur = conn.execute(statement)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else None


class Roles:
    """The documented roles with throwaway passwords; ``use`` points an inventory database's DSN at one of them, as
    a deployment's environment would."""

    def __init__(self, sandbox: SandboxState, passwords: dict[str, str]) -> None:
        self.sandbox, self.passwords = sandbox, passwords

    def dsn(self, role: str, dbname: str = "trading_db") -> str:
        return self.sandbox.cluster().dsn(dbname, role, self.passwords[role])

    def use(self, monkeypatch: pytest.MonkeyPatch, role: str, *, database: str = "trading_db",
            cluster: bool = False) -> None:
        monkeypatch.setenv(f"RUNBOOKS_DATABASES__{database.upper()}__DSN", self.dsn(role, database))
        if cluster:
            monkeypatch.setenv("RUNBOOKS_CLUSTER__DSN", self.dsn(role, "postgres"))


@pytest.fixture(scope="module")
def roles(sandbox: SandboxState) -> Iterator[Roles]:
    psql(sandbox, "-v", "owner=trading_user", "-v", "database=trading_db", "-f", str(ROLES_SQL))
    passwords = {role: secrets.token_urlsafe(16) for role in documented_roles()}
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        for role, password in passwords.items():
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    yield Roles(sandbox, passwords)
    names = sql.SQL(", ").join(map(sql.Identifier, passwords))
    for dbname in ("trading_db", "postgres"):
        with psycopg.connect(admin_dsn(sandbox, dbname), autocommit=True) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(names))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(names))
    with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(names))


def refused(dsn: str, *statements: str) -> None:
    """Each statement fails with SQLSTATE 42501 (insufficient privilege) for the role of ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)  # type: ignore[arg-type]


def app_session_pid(sandbox: SandboxState) -> tuple[psycopg.Connection, int]:
    """A session of the application's role: what a runbook role must not be able to end."""
    conn = psycopg.connect(sandbox.cluster().dsn("trading_db", "trading_user", sandbox.app_password))
    return conn, conn.info.backend_pid


def cleanup_databases(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rule: dict[str, Any],
                      **params: Any) -> tuple[Any, Any]:
    """The disk cleanup with one databases rule (``rule``) and no file rule."""
    # An allowed root of its own: tmp_path holds the config fixture's repository, which no cleanup root may hold.
    monkeypatch.setenv("RUNBOOKS_CLEANUP", json.dumps({"watch": [str(tmp_path)],
                                                       "allowed_roots": [str(tmp_path / "area")], "survey": [],
                                                       "rules": [{"kind": "databases", **rule}]}))
    return run_cleanup(**params)


def test_roles_sql_gives_each_role_exactly_what_the_docs_say(sandbox: SandboxState, roles: Roles) -> None:
    psql(sandbox, "-v", "owner=trading_user", "-v", "database=trading_db", "-f", str(ROLES_SQL))  # rerun: no error
    documented = documented_roles()
    with psycopg.connect(admin_dsn(sandbox, "trading_db")) as conn:
        for role, want in documented.items():
            row = conn.execute(
                "SELECT rolcanlogin, rolcreatedb, rolcreaterole, rolsuper, rolreplication, rolbypassrls,"
                " array(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
                "       WHERE m.member = r.oid),"
                " array(SELECT table_name::text FROM information_schema.role_table_grants"
                "       WHERE grantee = r.rolname AND privilege_type = 'SELECT'),"
                " array(SELECT DISTINCT privilege_type::text FROM information_schema.role_table_grants"
                "       WHERE grantee = r.rolname)"
                " FROM pg_roles r WHERE rolname = %s", [role]).fetchone()
            assert row is not None, f"{role} was not created"
            flags = dict(zip(["LOGIN", "CREATEDB", "CREATEROLE", "SUPERUSER", "REPLICATION", "BYPASSRLS"], row[:6],
                             strict=True))
            assert {name for name, on in flags.items() if on} == want["attributes"], role
            assert set(row[6]) == want["member_of"], role
            assert set(row[7]) == want["select_on"] and set(row[8]) <= {"SELECT"}, role
            assert not (flags["SUPERUSER"] or flags["CREATEROLE"] or flags["REPLICATION"] or flags["BYPASSRLS"])


# -- backup -------------------------------------------------------------------------------------------------------
def test_the_backup_role_backs_up_databases_and_roles_and_can_change_nothing(config: SandboxState, roles: Roles,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    roles.use(monkeypatch, "rb_backup", cluster=True)
    state, result = run_backup()
    assert state.is_completed(), result
    assert {(i.kind, i.status) for i in result.items} == {("database", "succeeded"), ("cluster", "succeeded")}
    cat = catalog()
    [cluster] = cat.list_backups(kind="cluster")
    globals_sql = b"".join(iter_decompressed(cat.repository.iter_chunks(
        next(o.key for o in cluster.objects if o.role == "globals")))).decode()
    # pg_read_all_data reads pg_authid: the globals come back with their password hashes, no superuser needed.
    assert "CREATE ROLE trading_user" in globals_sql and "SCRAM-SHA-256$" in globals_sql
    config_tar = b"".join(iter_decompressed(cat.repository.iter_chunks(
        next(o.key for o in cluster.objects if o.role == "config"))))
    assert any(n.endswith("pg_hba.conf") for n in tarfile.open(fileobj=io.BytesIO(config_tar)).getnames())

    app, pid = app_session_pid(config)
    try:
        refused(roles.dsn("rb_backup"),
                "INSERT INTO system_config (key, value) VALUES ('least-privilege', 'x')",
                "UPDATE positions SET quantity = 0", "DELETE FROM trades", "TRUNCATE trades_history",
                "DROP TABLE risk_state", "ALTER TABLE positions ADD COLUMN probe int", "CREATE TABLE probe (i int)",
                "SELECT setval('trades_trade_id_seq', 1)", "CREATE DATABASE probe", "CREATE ROLE probe",
                f"SELECT pg_terminate_backend({pid})")
    finally:
        app.close()


def test_large_objects_need_their_own_grant_and_are_never_skipped(config: SandboxState, roles: Roles,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """pg_read_all_data covers tables, views, sequences and schemas, not large objects: the backup fails (pg_dump
    is refused the object) rather than leave it out, and the documented per-object grant makes it whole."""
    source = create_fidelity_db(config)
    target = f"{source}_restored"
    set_database_env(monkeypatch, config, source)
    roles.use(monkeypatch, "rb_backup", database=source)
    try:
        state, result = run_backup(databases=[source], include_cluster=False)
        assert state.is_failed() and "large object" in (result.items[0].error or ""), result
        assert catalog().list_backups(name=source) == []
        assert not list(catalog().repository.list_objects(f"databases/{source}/"))  # nothing half-written left

        grant = next(line for line in DOCS.read_text().splitlines() if "ON LARGE OBJECT" in line)
        psql(config, dbname=source, stdin=grant + "\n")
        state, result = run_backup(databases=[source], include_cluster=False)
        assert state.is_completed(), result
        [manifest] = catalog().list_backups(name=source)
        restore_with_pg_restore(config, catalog(), manifest, target, tmp_path)
        restored = content_checksums(config, target)
        assert restored == content_checksums(config, source) and any(k.startswith("lo:") for k in restored)
    finally:
        drop_db(config, target)
        drop_db(config, source)


def test_row_level_security_fails_the_backup_instead_of_dumping_a_subset(config: SandboxState, roles: Roles,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"lp_rls_{uuid.uuid4().hex[:8]}"
    superuser(config, f'CREATE DATABASE "{name}"')
    superuser(config, "CREATE TABLE desk_limits (desk text, max_notional numeric);"
              " INSERT INTO desk_limits VALUES ('fx', 1e6), ('rates', 2e6), ('credit', 5e5);"
              " ALTER TABLE desk_limits ENABLE ROW LEVEL SECURITY;"
              " CREATE POLICY own_desk ON desk_limits USING (desk = current_user)", dbname=name)
    set_database_env(monkeypatch, config, name)
    roles.use(monkeypatch, "rb_backup", database=name)
    try:
        state, result = run_backup(databases=[name], include_cluster=False)
        assert state.is_failed() and "row-level security" in (result.items[0].error or ""), result
        assert catalog().list_backups(name=name) == []
        superuser(config, "ALTER ROLE rb_backup BYPASSRLS")
        state, result = run_backup(databases=[name], include_cluster=False)
        assert state.is_completed(), result
        assert catalog().list_backups(name=name)[0].row_counts == {"public.desk_limits": 3}
    finally:
        superuser(config, "ALTER ROLE rb_backup NOBYPASSRLS")
        drop_db(config, name)


# -- restore and cleanup ------------------------------------------------------------------------------------------
def test_restore_and_cleanup_roles_do_their_runbooks_and_nothing_of_another_owner(
        config: SandboxState, roles: Roles, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Backed up by rb_backup, restored (new, then replace) by rb_restore, the copy the replace kept dropped by
    rb_cleanup; none of them can read or drop a database of another owner."""
    uid = uuid.uuid4().hex[:8]
    live, other = f"lp_live_{uid}", f"lp_other_{uid}"
    try:
        superuser(config, f'CREATE DATABASE "{live}" OWNER trading_user')
        with psycopg.connect(config.cluster().dsn(live, "trading_user", config.app_password),
                             autocommit=True) as conn:
            conn.execute("CREATE TABLE fills (id int PRIMARY KEY, px numeric); "
                         "INSERT INTO fills SELECT g, 3900 + g FROM generate_series(1, 200) g; "
                         "GRANT SELECT ON fills TO rb_freshness")
        superuser(config, f'CREATE ROLE "{other}"')
        superuser(config, f'CREATE DATABASE "{other}" OWNER "{other}"')
        superuser(config, f'SET ROLE "{other}"; CREATE TABLE payroll (who text, salary numeric)', dbname=other)
        set_database_env(monkeypatch, config, live)
        roles.use(monkeypatch, "rb_backup", database=live, cluster=True)
        state, result = run_backup(databases=[live])
        assert state.is_completed(), result

        roles.use(monkeypatch, "rb_restore", database=live)
        state, result = restore(database=live, mode="new")
        assert state.is_completed(), result
        recovered = f"{live}_recovery"
        with psycopg.connect(admin_dsn(config, recovered)) as conn:
            row = conn.execute("SELECT pg_get_userbyid(d.datdba), pg_get_userbyid(c.relowner), c.relacl::text,"
                               " (SELECT count(*) FROM fills) FROM pg_database d, pg_class c"
                               " WHERE d.datname = current_database() AND c.relname = 'fills'").fetchone()
        assert row is not None
        assert row[:2] == ("rb_restore", "trading_user") and "rb_freshness=r" in row[2] and row[3] == 200

        # What a restore killed during pg_restore leaves when it had lent the scratch copy to the owner: the next
        # restore takes it back and drops it (found by review: it was refused for ever, "not owned by the
        # restore's role").
        from runbooks.adapters.records import DatabaseRecord
        lent = f"{live}_restore_20260101000000"
        superuser(config, f'CREATE DATABASE "{lent}" OWNER trading_user')
        [(oid,)] = superuser(config, f"SELECT oid FROM pg_database WHERE datname = '{lent}'")
        records = restore_records(config)
        records.put(DatabaseRecord(server=records.server, name=lent, oid=oid, kind="scratch", source=live,
                                   backup_id="20260101T000000Z", flow_run_id="killed"))

        state, dry = restore(database=live, mode="replace", halt_trading=False, dry_run=True)
        assert state.is_completed(), dry
        state, result = restore(database=live, mode="replace", halt_trading=False, confirm=dry.plan.plan_hash)
        assert state.is_completed(), result
        assert not superuser(config, f"SELECT 1 FROM pg_database WHERE datname = '{lent}'"), result.scratch_swept
        kept = result.kept_live_as
        assert kept and superuser(config, f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = "
                                          f"'{live}'") == [("trading_user",)]

        # Sessions: pg_signal_backend lets the restore role end any but a superuser's (a replace must); membership
        # in the owner lets the cleanup role end the owner's own (docs: a NOLOGIN owner avoids that), no others.
        with psycopg.connect(roles.dsn("rb_health")) as bystander, psycopg.connect(admin_dsn(config)) as admin:
            for role in ("rb_restore", "rb_cleanup"):
                refused(roles.dsn(role, other), "SELECT count(*) FROM payroll")
                refused(roles.dsn(role, "postgres"), f'DROP DATABASE "{other}"', "CREATE ROLE probe",
                        f'ALTER ROLE "{other}" LOGIN', "ALTER ROLE trading_user CREATEDB",
                        f"SELECT pg_terminate_backend({admin.info.backend_pid})")
            refused(roles.dsn("rb_cleanup", "postgres"), "CREATE DATABASE probe",
                    f"SELECT pg_terminate_backend({bystander.info.backend_pid})")

        roles.use(monkeypatch, "rb_cleanup", database=live)
        rule = {"databases": [live], "pre_restore_older_than": "0s"}
        _, planned = cleanup_databases(monkeypatch, tmp_path, rule, dry_run=True, drop_pre_restore=[kept])
        [entry] = [k for k in planned.databases[0].kept if k.name == kept]
        assert entry.recorded and entry.droppable, entry  # the restore role's record, seen by the cleanup role
        _, done = cleanup_databases(monkeypatch, tmp_path, rule, dry_run=False, drop_pre_restore=[kept],
                              confirm=planned.plan.plan_hash)
        assert done.error is None and done.databases[0].dropped == [kept], done
        assert not superuser(config, f"SELECT 1 FROM pg_database WHERE datname = '{kept}'")
    finally:
        for (name,) in superuser(config, f"SELECT datname FROM pg_database WHERE datname LIKE 'lp\\_%{uid}%'"):
            drop_db(config, name)
        superuser(config, f'DROP ROLE IF EXISTS "{other}"')


def test_vacuum_by_a_role_that_may_not_is_refused_not_reported_as_done(config: SandboxState, roles: Roles,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    """PostgreSQL skips a table the role may not vacuum with only a WARNING; the runbook must not call that done."""
    table = f"lp_bloat_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn(config, "trading_db"), autocommit=True) as conn:
        conn.execute("SET ROLE trading_user")  # the application's table, as the application made it
        conn.execute(f"CREATE TABLE {table} (id int) WITH (autovacuum_enabled = false)")  # type: ignore[arg-type]
        conn.execute(f"INSERT INTO {table} SELECT generate_series(1, 3000)")  # type: ignore[arg-type]
        conn.execute(f"DELETE FROM {table} WHERE id > 1000")  # type: ignore[arg-type]
        conn.execute("RESET ROLE")
        conn.execute("SELECT pg_stat_force_next_flush()")
    rule = {"databases": ["trading_db"], "vacuum": True, "dead_tuples_min": 1000, "dead_ratio_min": 0.5}
    last_vacuum = f"SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relname = '{table}'"
    try:
        roles.use(monkeypatch, "rb_health")  # may log in, owns nothing
        state, result = cleanup_databases(monkeypatch, tmp_path, rule, dry_run=False, force=True)
        assert state.is_failed() and f"may not VACUUM public.{table}" in (result.error or ""), result
        assert not result.databases[0].sizes[0].vacuumed
        assert superuser(config, last_vacuum, dbname="trading_db") == [(False,)]

        roles.use(monkeypatch, "rb_cleanup")
        state, result = cleanup_databases(monkeypatch, tmp_path, rule, dry_run=False, force=True)
        assert result.error is None and f"public.{table}" in result.databases[0].sizes[0].vacuumed, result
        assert superuser(config, last_vacuum, dbname="trading_db") == [(True,)]
    finally:
        superuser(config, f"DROP TABLE IF EXISTS {table}", dbname="trading_db")


# -- freshness, health, drill -------------------------------------------------------------------------------------
def test_freshness_and_health_need_only_their_narrow_roles(config: SandboxState, roles: Roles,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          simulator: httpx.Client) -> None:
    roles.use(monkeypatch, "rb_freshness")
    state = data_freshness_flow(act=True, return_state=True)
    fresh: Any = outcome(state)
    assert [t.outcome for t in fresh.tables] == ["measured"], fresh  # fresh or stale, but read
    assert fresh.quality and all(q.status != "could_not_run" for q in fresh.quality), fresh.quality
    assert not [c for q in fresh.quality for c in q.checks_failed], fresh.quality  # every integrity check ran
    assert "take lock" in [s.step for s in fresh.timeline if s.outcome == "ok"], fresh.timeline

    roles.use(monkeypatch, "rb_health")
    state = health_check_flow(host=False, return_state=True)
    health: Any = outcome(state)
    [database] = [c for c in health.checks if c.name == "database trading_db"]
    assert database.status in ("ok", "warn") and "SELECT 1 answered" in (database.detail or ""), database

    refused(roles.dsn("rb_freshness"), "SELECT count(*) FROM system_config", "SELECT count(*) FROM trades_history",
            "INSERT INTO ohlcv_usdcop_5m SELECT * FROM ohlcv_usdcop_5m LIMIT 1", "DELETE FROM positions")
    refused(roles.dsn("rb_health"), "SELECT count(*) FROM positions", "SELECT count(*) FROM ohlcv_usdcop_5m")


def test_a_drill_target_is_recognised_as_production_through_a_low_privilege_inventory_dsn(
        config: SandboxState, roles: Roles) -> None:
    """The drill tells production from its target by the system identifier; any login role may read it, so the
    inventory's least-privilege DSNs still stop a drill from restoring onto production."""
    with pytest.raises(Refused, match="is the server of inventory database 'trading_db'"):
        check_target_server.fn(target=DatabaseSettings(dsn=SecretStr(admin_dsn(config))),
                               inventory={"trading_db": DatabaseSettings(dsn=SecretStr(roles.dsn("rb_health")))})


# -- S3: what the backup writer may do ----------------------------------------------------------------------------
Decision = Literal["allow", "deny", "implicit"]
KNOWN_S3_ACTIONS = {  # IAM names (Service Authorization Reference, Amazon S3): a typo here would grant nothing
    "s3:AbortMultipartUpload", "s3:BypassGovernanceRetention", "s3:DeleteBucket", "s3:DeleteBucketPolicy",
    "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:GetObject", "s3:ListBucket", "s3:ListBucketMultipartUploads",
    "s3:PutBucketAcl", "s3:PutBucketObjectLockConfiguration", "s3:PutBucketOwnershipControls", "s3:PutBucketPolicy",
    "s3:PutBucketPublicAccessBlock", "s3:PutBucketVersioning", "s3:PutEncryptionConfiguration",
    "s3:PutLifecycleConfiguration", "s3:PutObject", "s3:PutObjectAcl", "s3:PutObjectLegalHold",
    "s3:PutObjectRetention", "s3:PutObjectVersionAcl", "s3:PutReplicationConfiguration", "s3:*"}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy(path: Path, bucket: str = "runbooks-backups", prefix: str = "prod") -> dict[str, Any]:
    """A published policy, with its example bucket and prefix replaced by the test's."""
    text = path.read_text().replace("arn:aws:s3:::runbooks-backups/prod/", f"arn:aws:s3:::{bucket}/{prefix}/")
    text = text.replace('"prod/', f'"{prefix}/').replace("arn:aws:s3:::runbooks-backups", f"arn:aws:s3:::{bucket}")
    return dict(json.loads(text))


def _condition_holds(condition: dict[str, dict[str, Any]], context: dict[str, str]) -> bool:
    for operator, tests in condition.items():
        for key, wanted in tests.items():
            values, actual = [str(v) for v in _listed(wanted)], context.get(key)
            if operator == "StringLikeIfExists":
                ok = actual is None or any(fnmatch.fnmatchcase(actual, v) for v in values)
            elif operator == "ArnNotEquals":  # a negated operator holds when the key is absent
                ok = actual is None or actual not in values
            elif operator == "Bool":
                ok = actual is not None and actual.lower() == values[0].lower()
            else:
                raise AssertionError(f"condition operator {operator} is not evaluated by this test")
            if not ok:
                return False
    return True


def decide(document: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> Decision:
    """IAM's evaluation of one policy: an explicit Deny wins, else any Allow, else implicit deny."""
    decision: Decision = "implicit"
    for statement in document["Statement"]:
        if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _listed(statement["Action"])):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in _listed(statement["Resource"])):
            continue
        if not _condition_holds(statement.get("Condition", {}), context):
            continue
        if statement["Effect"] == "Deny":
            return "deny"
        decision = "allow"
    return decision


def may(principal: str, action: str, resource: str, *, bucket: str, prefix: str, identity: dict[str, Any] | None,
        **context: str) -> bool:
    """Identity policy and bucket policy together (same account): allowed by one, denied by neither."""
    ctx = {"aws:PrincipalArn": principal, "aws:SecureTransport": "true", **context}
    bucket_policy = policy(BUCKET_POLICY, bucket, prefix)
    verdicts = [decide(bucket_policy, action, resource, ctx)]
    if identity is not None:
        verdicts.append(decide(identity, action, resource, ctx))
    return "deny" not in verdicts and "allow" in verdicts


def iam_requests(operation: str, params: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """What IAM authorizes for one S3 API call: (action, resource ARN, condition context)."""
    bucket = f"arn:aws:s3:::{params['Bucket']}"
    obj = f"{bucket}/{params.get('Key')}"
    if operation in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        return [("s3:PutObject", obj, {})]
    if operation in ("GetObject", "HeadObject"):
        return [("s3:GetObjectVersion" if params.get("VersionId") else "s3:GetObject", obj, {})]
    if operation in ("ListObjectsV2", "ListObjects", "HeadBucket"):
        return [("s3:ListBucket", bucket, {"s3:prefix": params["Prefix"]} if "Prefix" in params else {})]
    if operation == "ListMultipartUploads":
        return [("s3:ListBucketMultipartUploads", bucket, {})]
    if operation == "AbortMultipartUpload":
        return [("s3:AbortMultipartUpload", obj, {})]
    if operation == "DeleteObject":
        return [("s3:DeleteObjectVersion" if params.get("VersionId") else "s3:DeleteObject", obj, {})]
    if operation == "DeleteObjects":
        return [("s3:DeleteObjectVersion" if o.get("VersionId") else "s3:DeleteObject", f"{bucket}/{o['Key']}", {})
                for o in params["Delete"]["Objects"]]
    raise AssertionError(f"S3 operation {operation} is new: map it to its IAM action here and in the policy")


def record_s3_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every S3 call of the clients the code creates from now on, as (operation, parameters)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    original = boto3.session.Session.client

    def client(self: boto3.session.Session, *args: Any, **kwargs: Any) -> Any:
        made = original(self, *args, **kwargs)
        made.meta.events.register("provide-client-params.s3", lambda params, model, **_: calls.append(
            (model.name, {k: v for k, v in params.items() if k in ("Bucket", "Key", "Prefix", "VersionId",
                                                                     "Delete")})))
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    return calls


def dead_writer() -> ProcessIdentity:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return ProcessIdentity(host=socket.gethostname(), pid=proc.pid, machine=ProcessIdentity.current().machine)


def test_s3_policies_are_well_formed_and_accepted_by_the_server(s3_client) -> None:  # type: ignore[no-untyped-def]
    writer, bucket_policy = json.loads(WRITER_POLICY.read_text()), json.loads(BUCKET_POLICY.read_text())
    for document in (writer, bucket_policy):
        assert document["Version"] == "2012-10-17"
        sids = [s["Sid"] for s in document["Statement"]]
        assert len(sids) == len(set(sids))
        for statement in document["Statement"]:
            assert statement["Effect"] in ("Allow", "Deny")
            assert set(_listed(statement["Action"])) <= KNOWN_S3_ACTIONS, statement["Sid"]
            assert all(r.startswith("arn:aws:s3:::runbooks-backups") for r in _listed(statement["Resource"]))
    assert all("Principal" in s for s in bucket_policy["Statement"])
    # What the writer is denied is exactly what the bucket keeps for its admin alone.
    [writer_deny] = [s for s in writer["Statement"] if s["Effect"] == "Deny"]
    admin_only = next(s for s in bucket_policy["Statement"] if "ArnNotEquals" in s.get("Condition", {}))
    assert set(writer_deny["Action"]) == set(admin_only["Action"])
    assert admin_only["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == ADMIN_ARN

    name = f"runbooks-policy-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    s3_client.put_bucket_policy(Bucket=name, Policy=json.dumps(policy(BUCKET_POLICY, name)))
    assert json.loads(s3_client.get_bucket_policy(Bucket=name)["Policy"]) == policy(BUCKET_POLICY, name)
    rules = json.loads(LIFECYCLE.read_text())
    s3_client.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration=rules)
    [rule] = s3_client.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == rules["Rules"][0]["NoncurrentVersionExpiration"][
        "NoncurrentDays"]


@pytest.mark.slow  # a minute of real S3 calls: run with the drills, to keep the suite short
def test_the_writer_policy_allows_exactly_what_a_backup_run_calls(s3_config: SandboxState, s3_client,  # type: ignore[no-untyped-def]
                                                                  roles: Roles,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real backup runs (a leftover of a killed run swept, retention removing the first backup), every S3 call
    recorded: each is allowed by the writer's policy and the bucket policy, every permission the policy grants is
    used, no call deletes an object version, and what is deleted is only locks, the write probe, the leftover and
    the backup retention removed."""
    url = load_settings().repository.url
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    leftover = "databases/trading_db/20200101T000000Z"
    now = datetime.now(UTC)
    lock = BackupLock(token="killed", writer=dead_writer(), started_at=now, heartbeat_at=now)
    s3_client.put_object(Bucket=bucket, Key=f"{prefix}/{leftover}/lock.json", Body=lock.model_dump_json().encode())
    s3_client.put_object(Bucket=bucket, Key=f"{prefix}/{leftover}/dump.pgc.zst", Body=b"half a dump")
    s3_client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/{leftover}/dump.pgc.zst")
    roles.use(monkeypatch, "rb_backup", cluster=True)
    calls = record_s3_calls(monkeypatch)

    state, first = run_backup()
    assert state.is_completed(), first
    assert [lo.prefix for lo in first.leftovers] == [leftover] and first.leftovers[0].removed
    state, second = run_backup()
    assert state.is_completed(), second
    removed = {i.retention.removed[0] for i in second.items if i.retention and i.retention.removed}
    assert removed == {first.items[0].backup_id}

    writer = policy(WRITER_POLICY, bucket, prefix)
    requests = [(op, *request) for op, params in calls for request in iam_requests(op, params)]
    refused_requests = [r for r in requests if not may(WRITER_ARN, r[1], r[2], bucket=bucket, prefix=prefix,
                                                       identity=writer, **r[3])]
    assert not refused_requests, refused_requests
    granted = [(a, r) for s in writer["Statement"] if s["Effect"] == "Allow"
               for a in _listed(s["Action"]) for r in _listed(s["Resource"])]
    used = {a for _, a, _, _ in requests}
    assert used == {a for a, _ in granted}, f"granted but never used: {sorted({a for a, _ in granted} - used)}"
    unused_resources = {r for _, r in granted if not any(fnmatch.fnmatchcase(res, r) for _, _, res, _ in requests)}
    assert not unused_resources, unused_resources

    assert not [c for c in calls if c[1].get("VersionId") or any(
        "VersionId" in o for o in c[1].get("Delete", {}).get("Objects", []))], "a call named an object version"
    deleted = [res.removeprefix(f"arn:aws:s3:::{bucket}/{prefix}/") for _, a, res, _ in requests
               if a == "s3:DeleteObject"]
    gone_backup = first.items[0].backup_id
    unexplained = [k for k in deleted if not (k.endswith("/lock.json") or k.startswith(".write-probe-")
                                              or k.startswith(f"{leftover}/") or f"/{gone_backup}/" in k)]
    assert not unexplained, unexplained
    assert any(f"/{gone_backup}/" in k and k.endswith("/dump.pgc.zst") for k in deleted)  # retention deletes dumps

    # What a stolen writer credential would try next is refused by the policies.
    dump = f"arn:aws:s3:::{bucket}/{prefix}/databases/trading_db/{second.items[0].backup_id}/dump.pgc.zst"
    whole = f"arn:aws:s3:::{bucket}"
    for action, resource in [("s3:DeleteObjectVersion", dump), ("s3:PutObjectRetention", dump),
                             ("s3:BypassGovernanceRetention", dump), ("s3:PutBucketVersioning", whole),
                             ("s3:PutLifecycleConfiguration", whole), ("s3:PutBucketPolicy", whole),
                             ("s3:DeleteBucket", whole), ("s3:GetObject", f"{whole}/another-team/secrets.json"),
                             ("s3:PutObject", f"{whole}/{prefix}/records/drills/forged.json")]:
        assert not may(WRITER_ARN, action, resource, bucket=bucket, prefix=prefix, identity=writer), action
    # The bucket leaves history to its admin (the retention role), and to no one over plain HTTP.
    assert may(ADMIN_ARN, "s3:DeleteObjectVersion", dump, bucket=bucket, prefix=prefix,
               identity={"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    assert not may(WRITER_ARN, "s3:GetObject", dump, bucket=bucket, prefix=prefix, identity=writer,
                   **{"aws:SecureTransport": "false"})


# -- S3: object lock ----------------------------------------------------------------------------------------------
@pytest.mark.slow  # end to end on real servers: run with the drills, to keep the suite short
def test_object_lock_keeps_every_backup_from_a_compromised_writer(s3_config: SandboxState, s3_client,  # type: ignore[no-untyped-def]
                                                                  roles: Roles,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = f"runbooks-locked-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3_client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", f"s3://{bucket}/prod")
    roles.use(monkeypatch, "rb_backup", cluster=True)
    try:
        state, first = run_backup()  # boto3 sends a CRC32 checksum with each PUT: object lock requires one
        assert state.is_completed(), first
        state, second = run_backup()
        assert state.is_completed(), second
        old, new = first.items[0].backup_id, second.items[0].backup_id
        assert [m.backup_id for m in catalog().list_backups(name="trading_db")] == [new]  # retention removed old

        def versions(backup_id: str) -> dict[str, list[dict[str, Any]]]:
            listing = s3_client.list_object_versions(Bucket=bucket, Prefix=f"prod/databases/trading_db/{backup_id}/")
            return {"versions": listing.get("Versions", []), "markers": listing.get("DeleteMarkers", [])}

        # Retention on this bucket only hides: the old backup's versions are still there, under lock.
        kept = {v["Key"].rsplit("/", 1)[1] for v in versions(old)["versions"]}
        assert {"manifest.json", "dump.pgc.zst"} <= kept
        dump = next(v for v in versions(new)["versions"] if v["Key"].endswith("/dump.pgc.zst"))
        head = s3_client.head_object(Bucket=bucket, Key=dump["Key"], VersionId=dump["VersionId"])
        assert head["ObjectLockMode"] == "COMPLIANCE"

        # A compromised writer, same credentials: versions cannot be destroyed, only hidden.
        with pytest.raises(ClientError) as denied:
            s3_client.delete_object(Bucket=bucket, Key=dump["Key"], VersionId=dump["VersionId"])
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        batch = s3_client.delete_objects(Bucket=bucket, Delete={"Objects": [
            {"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions(new)["versions"]]})
        assert batch.get("Errors") and {e["Code"] for e in batch["Errors"]} == {"AccessDenied"}
        assert not batch.get("Deleted")
        s3_client.delete_objects(Bucket=bucket, Delete={"Objects": [
            {"Key": v["Key"]} for v in versions(new)["versions"] if v["IsLatest"]]})
        assert catalog().list_backups(name="trading_db") == []

        # Recovery (the bucket admin's s3:DeleteObjectVersion): remove the delete markers, never lock.json's.
        for backup_id in (new, old):
            for marker in versions(backup_id)["markers"]:
                if marker["IsLatest"] and not marker["Key"].endswith("/lock.json"):
                    s3_client.delete_object(Bucket=bucket, Key=marker["Key"], VersionId=marker["VersionId"])
        assert [m.backup_id for m in catalog().list_backups(name="trading_db")] == [old, new]

        roles.use(monkeypatch, "rb_restore")
        state, restored = restore(database="trading_db", mode="new", backup_id=new)
        assert state.is_completed(), restored
        assert restored.validation.passed and restored.backup_id == new
    finally:
        drop_db(s3_config, "trading_db_recovery")


# -- database connections ---------------------------------------------------------------------------------------
def test_the_connections_role_sees_every_session_and_ends_only_a_non_superusers(
        config: SandboxState, roles: Roles, monkeypatch: pytest.MonkeyPatch) -> None:
    from runbooks.flows.database_connections import database_connections_flow
    from runbooks.frame import outcome

    roles.use(monkeypatch, "rb_connections")
    monkeypatch.setenv("RUNBOOKS_CONNECTIONS__EXHAUSTED_PERCENT", "0.1")  # the pool counts as exhausted
    monkeypatch.setenv("RUNBOOKS_CONNECTIONS__IDLE_IN_TRANSACTION", "1s")
    app, pid = app_session_pid(config)
    admin = psycopg.connect(admin_dsn(config, "trading_db"))
    try:
        app.execute("SELECT 1")  # both now idle in a transaction
        admin.execute("SELECT 1")
        time.sleep(1.5)
        state = database_connections_flow(dry_run=False, return_state=True)
        result = outcome(state)
        assert pid in result.terminated, result
        assert admin.info.backend_pid not in result.terminated
        admin.execute("SELECT 1")  # the superuser's session is alive
        with pytest.raises(psycopg.OperationalError):
            app.execute("SELECT 1")
    finally:
        app.close()
        admin.close()
