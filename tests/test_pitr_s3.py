"""Point-in-time recovery with pgBackRest's repository on S3: moto's server over HTTPS (pgBackRest speaks S3 over
TLS only) with a certificate made here and verified through ``[pitr] s3_ca_file``. Archiving, a full backup and a
restore to a time between two writes, all through the bucket; nothing on the posix path."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from runbooks.adapters.cluster import PostgresCluster, free_port
from runbooks.frame import outcome
from runbooks_sandbox import SandboxState
from tests.test_pitr import _private_tmp, _sql, _wait_archived, protected, subprocess_stop

pytestmark = pytest.mark.slow  # ~1,000 TLS connections to moto for an empty cluster's backup and restore (~50 s)

BUCKET = "pitr-positions"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` (pgBackRest 2.45 matches DNS names, not IP addresses), world-readable so
    the postgres OS user's pgBackRest can verify with it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "s3.crt", directory / "s3.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    cert_path.chmod(0o644)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_s3() -> Iterator[tuple[str, Path, Any]]:
    """moto's S3 server over HTTPS on loopback: (endpoint host:port, CA file, a boto3 client that verifies it)."""
    directory = _private_tmp("rbs3-")
    cert, key = _self_signed(directory)
    port = free_port()
    log = (directory / "s3.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "runbooks_sandbox.s3server", "--port", str(port),
                             "--tls-cert", str(cert), "--tls-key", str(key)], stdout=log, stderr=subprocess.STDOUT)
    client = boto3.client("s3", endpoint_url=f"https://localhost:{port}", aws_access_key_id="pitr",
                          aws_secret_access_key="unused", region_name="us-east-1", verify=str(cert),
                          config=Config(retries={"max_attempts": 1}))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() < deadline, (directory / "s3.log").read_text()
                time.sleep(0.2)
        yield f"localhost:{port}", cert, client
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_source() -> Iterator[PostgresCluster]:
    with protected("runbooks-pitr-s3-src-") as cluster:
        yield cluster


def test_archiving_a_backup_and_a_restore_to_a_time_go_through_s3(
        s3_source: PostgresCluster, tls_s3: tuple[str, Path, Any], sandbox: SandboxState,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from runbooks.flows.pitr_backup import pitr_backup_flow
    from runbooks.flows.pitr_restore import pitr_restore_flow
    from runbooks.flows.pitr_setup import pitr_setup_flow

    endpoint, ca_file, client = tls_s3
    work = _private_tmp("rbpitr-")
    work.chmod(0o711)
    secret = f"s3-secret-{secrets.token_hex(8)}"
    for key, value in {"CONFIG": sandbox.config_path, "PITR__DSN": s3_source.dsn(), "PITR__WORK_DIR": str(work),
                       "PITR__SOCKET_DIRECTORY": str(s3_source.socket_directory), "PITR__STANZA": "positions",
                       "PITR__ARCHIVE_TIMEOUT": "30s", "PITR__REPO_TYPE": "s3", "PITR__S3_BUCKET": BUCKET,
                       "PITR__S3_ENDPOINT": endpoint, "PITR__S3_CA_FILE": str(ca_file), "PITR__S3_KEY": "pitr",
                       "PITR__S3_KEY_SECRET": secret}.items():
        monkeypatch.setenv(f"RUNBOOKS_{key}", value)
    try:
        state = pitr_setup_flow(restart=True, return_state=True)  # the plan
        plan = outcome(state)
        assert state.is_completed() and plan.plan is not None, plan.error
        state = pitr_setup_flow(restart=True, confirm=plan.plan.plan_hash,
                                return_state=True)
        setup = outcome(state)
        assert state.is_completed(), setup.error
        assert setup.checked  # a WAL switch reached the bucket
        config = (work / "pgbackrest.conf").read_text()
        assert "repo1-type=s3" in config and f"repo1-storage-ca-file={ca_file}" in config
        assert "repo1-storage-verify-tls=y" in config  # verified against the CA, not switched off

        state = pitr_backup_flow(kind="full", return_state=True)
        backup = outcome(state)
        assert state.is_completed(), backup.error
        assert backup.backup.type == "full"

        time.sleep(1.1)  # pgBackRest picks a backup that ended in an earlier second than the target
        _sql(s3_source, "CREATE TABLE fills (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        for i in (1, 2):
            _sql(s3_source, "INSERT INTO fills (id) VALUES (%s)", i)
        time.sleep(0.3)
        [(target,)] = _sql(s3_source, "SELECT clock_timestamp()")
        time.sleep(0.3)
        _sql(s3_source, "INSERT INTO fills (id) VALUES (3)")
        _wait_archived(s3_source)

        state = pitr_restore_flow(target_time=target.isoformat(),
                                  return_state=True)
        result = outcome(state)
        assert state.is_completed(), result.error
        port = int(result.restored_at.rsplit(":", 1)[1].strip("/"))
        restored = PostgresCluster(root=Path(result.data_directory).parent, port=port,
                                   superuser_password=s3_source.superuser_password)
        try:
            assert [r[0] for r in _sql(restored, "SELECT id FROM fills ORDER BY id")] == [1, 2]
            [(second_at,)] = _sql(s3_source, "SELECT at FROM fills WHERE id = 2")
            point = result.point
            assert point.last_replayed_at is not None and second_at <= point.last_replayed_at <= target
            assert point.rpo_seconds == (target - point.last_replayed_at).total_seconds()
        finally:
            subprocess_stop(restored)
        assert [r[0] for r in _sql(s3_source, "SELECT id FROM fills ORDER BY id")] == [1, 2, 3]

        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                for o in page.get("Contents", [])]
        assert any(k.startswith("pgbackrest/backup/positions/") for k in keys), keys[:10]
        assert any(k.startswith("pgbackrest/archive/positions/") and ".zst" in k for k in keys), keys[:10]
        assert not (work / "repo").exists()  # nothing went to the posix path
        assert (work / "pgbackrest.conf").stat().st_mode & 0o777 == 0o600  # the secret's only home
        for shown in (setup, backup, result):
            assert secret not in json.dumps(shown.model_dump(mode="json"))
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        assert secret not in ps
    finally:
        _sql(s3_source, "ALTER SYSTEM RESET archive_command")
        _sql(s3_source, "SELECT pg_reload_conf()")
        shutil.rmtree(work, ignore_errors=True)
        os.sync()
