"""The backup runbook against a real PostgreSQL cluster and both repository backends (local, S3 over HTTP)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from runbooks.flows.backup import render_report
from runbooks_sandbox import SandboxState
from tests.pgfixtures import (
    content_checksums,
    create_fidelity_db,
    drop_db,
    restore_with_pg_restore,
    schema_dump,
    set_database_env,
)
from tests.repositories import catalog
from tests.runs import run_backup


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_round_trip_restores_identical_schema_and_content(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sandbox: SandboxState = request.getfixturevalue("config" if backend == "local" else "s3_config")
    source = create_fidelity_db(sandbox)
    target = f"{source}_restored"
    set_database_env(monkeypatch, sandbox, source)
    try:
        state, result = run_backup(databases=[source])
        assert state.is_completed(), result
        item = result.items[0]
        assert (item.name, item.status, item.verification.status) == (source, "succeeded", "passed")
        assert item.verification.toc_entries and item.verification.toc_entries > 10

        cat = catalog()
        [manifest] = cat.list_backups(kind="database", name=source)
        assert manifest.backup_id == item.backup_id
        assert manifest.row_counts['market.orders'] == 500
        assert manifest.row_counts['market.ticks_2026_01'] + manifest.row_counts['market.ticks_2026_02'] == 1001
        assert manifest.row_counts['Risk Desk.Limits; DROP TABLE x; --'] == 3
        assert manifest.snapshot and manifest.snapshot.wal_lsn and "/" in manifest.snapshot.wal_lsn
        assert manifest.server_version and manifest.tools["pg_dump"].startswith("pg_dump")
        assert len(manifest.objects[0].sha256) == 64

        restore_with_pg_restore(sandbox, cat, manifest, target, tmp_path)
        assert schema_dump(sandbox, target) == schema_dump(sandbox, source)
        assert content_checksums(sandbox, target) == content_checksums(sandbox, source)
    finally:
        drop_db(sandbox, target)
        drop_db(sandbox, source)


def test_backup_includes_globals_and_config_files(config: SandboxState) -> None:
    state, result = run_backup()
    assert state.is_completed(), result
    [cluster] = [m for m in catalog().list_backups(kind="cluster")]
    roles = {o.role for o in cluster.objects}
    assert roles == {"globals", "config"}
    cat = catalog()
    from runbooks.adapters.pipeline import iter_decompressed

    globals_sql = b"".join(iter_decompressed(cat.repository.iter_chunks(
        next(o.key for o in cluster.objects if o.role == "globals")))).decode()
    assert "CREATE ROLE trading_user" in globals_sql

    import io
    import tarfile

    tar_bytes = b"".join(iter_decompressed(cat.repository.iter_chunks(
        next(o.key for o in cluster.objects if o.role == "config"))))
    names = tarfile.open(fileobj=io.BytesIO(tar_bytes)).getnames()
    assert any(n.endswith("postgresql.conf") for n in names) and any(n.endswith("pg_hba.conf") for n in names)


def test_manifest_row_counts_match_the_database(config: SandboxState) -> None:
    state, result = run_backup(databases=["trading_db"], include_cluster=False)
    assert state.is_completed(), result
    [manifest] = catalog().list_backups(name="trading_db")
    import psycopg

    with psycopg.connect(config.cluster().dsn("trading_db")) as conn:
        for table in ("ohlcv_usdcop_5m", "trades", "trades_history", "positions", "system_config", "risk_state"):
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert row is not None
            assert manifest.row_counts[f"public.{table}"] == row[0] > 0


def test_corrupted_object_fails_verification_and_is_marked(config: SandboxState, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A backup whose stored bytes differ from what was written is published marked failed and the run fails."""
    from runbooks.adapters.repository.local import LocalWriter

    original_close = LocalWriter.close

    def corrupting_close(self: LocalWriter) -> None:
        # Flip one byte on disk after the stream was hashed: what bit rot or a bad disk would do.
        original_close(self)
        if self._path.name == "dump.pgc.zst":
            data = bytearray(self._path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            self._path.write_bytes(bytes(data))

    monkeypatch.setattr(LocalWriter, "close", corrupting_close)
    state, result = run_backup(databases=["trading_db"], include_cluster=False)
    assert state.is_failed()
    item = result.items[0]
    assert item.status == "verification_failed" and "sha256" in item.error
    [manifest] = catalog().list_backups(name="trading_db")
    assert manifest.verification.status == "failed"
    assert not manifest.verified


def test_dry_run_changes_nothing(config: SandboxState) -> None:
    state, result = run_backup(dry_run=True)
    assert state.is_completed(), result
    assert result.dry_run and {i.status for i in result.items} == {"dry_run"}
    assert result.items[0].database_size and result.items[0].database_size > 1_000_000
    assert catalog().list_backups() == []
    assert not any(True for _ in catalog().repository.list_objects(""))


def test_retention_runs_after_backup_and_keeps_newest(config: SandboxState) -> None:
    """Two backups on the same day: the daily bucket keeps only the newest, so the older one goes."""
    _, result = run_backup(databases=["trading_db"], include_cluster=False)
    first = catalog().list_backups(name="trading_db")[0].backup_id
    # The report's retention table reads as a sentence per row, whether something went or not.
    assert "| kind | name | kept | action |" in render_report(result)
    assert "| database | trading_db | 1 | nothing to delete |" in render_report(result)
    state, result = run_backup(databases=["trading_db"], include_cluster=False)
    assert state.is_completed()
    second = result.items[0].backup_id
    assert result.items[0].retention.removed == [first]
    assert f"| database | trading_db | 1 | deleted {first} |" in render_report(result)
    assert [m.backup_id for m in catalog().list_backups(name="trading_db")] == [second]
    assert not any(first in o.key for o in catalog().repository.list_objects("databases/"))


def test_report_artifact_is_published(config: SandboxState) -> None:
    from prefect.artifacts import Artifact

    state, result = run_backup(databases=["trading_db"], include_cluster=False)
    artifact = Artifact.get("backup-report-run")
    assert artifact is not None
    text = str(artifact.data)
    assert result.items[0].backup_id in text and "trading_db" in text and "## Timeline" in text


def test_password_from_a_prefect_secret_block(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DSN carries no password; the backup reads it from a Secret block, as a production deployment would."""
    from prefect.blocks.system import Secret

    Secret(value=config.superuser_password).save("trading-db-password", overwrite=True)
    monkeypatch.setenv("RUNBOOKS_DATABASES__TRADING_DB__DSN",
                       f"postgresql://postgres@127.0.0.1:{config.postgres_port}/trading_db")
    monkeypatch.setenv("RUNBOOKS_DATABASES__TRADING_DB__PASSWORD_BLOCK", "trading-db-password")
    state, result = run_backup(databases=["trading_db"], include_cluster=False)
    assert state.is_completed(), result
    assert result.items[0].verification.status == "passed"


def test_versioned_bucket_is_tolerated(s3_config: SandboxState, s3_client, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """On a versioned bucket, retention's deletes leave delete markers; listings and the next runs are unaffected."""
    bucket = "runbooks-versioned"
    if bucket not in [b["Name"] for b in s3_client.list_buckets()["Buckets"]]:
        s3_client.create_bucket(Bucket=bucket)
        s3_client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", f"s3://{bucket}/v-{uuid.uuid4().hex[:8]}")
    first = run_backup(databases=["trading_db"], include_cluster=False)[1].items[0].backup_id
    state, result = run_backup(databases=["trading_db"], include_cluster=False)
    assert state.is_completed(), result
    assert result.items[0].retention.removed == [first]
    assert [m.backup_id for m in catalog().list_backups()] == [result.items[0].backup_id]
    assert catalog().unfinished() == []
