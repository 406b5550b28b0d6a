"""The DR game-day against the real sandbox: a drill end to end on a throwaway initdb cluster and on an existing
empty server, a corrupted backup, a backup too old for its RPO, a drill SIGKILLed mid-restore, and the scorecard
against the step timings; then the pure parts (backup-set choice, scoring) on their own."""

from __future__ import annotations

import json
import os
import secrets
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from runbooks.adapters.catalog import DamagedBackup
from runbooks.adapters.cluster import PostgresCluster
from runbooks.adapters.records import DrillRecords
from runbooks.adapters.repository import open_repository
from runbooks.core.errors import Refused
from runbooks.decisions.drill import Proof, pick_backup_set, score_component
from runbooks.decisions.manifest import BackupManifest, StoredObject, Verification
from runbooks.flows.dr_game_day import DrillResult, dr_game_day_flow
from runbooks.frame import outcome
from runbooks.settings import DrillComponent, load_settings
from runbooks_sandbox import SandboxState
from runbooks_sandbox.seed import catch_up_bars
from tests.events import runbook_events
from tests.pgfixtures import admin_dsn, running_cluster
from tests.runs import run_backup


def back_up() -> str:
    """The nightly backup, of data as fresh as a live feed keeps it (the session's sandbox was seeded earlier)."""
    catch_up_bars(load_settings().databases["trading_db"].dsn.get_secret_value())
    state, result = run_backup(apply_retention=False)
    assert state.is_completed(), state.message
    return str(result.items[0].backup_id)


def drill(**params):  # type: ignore[no-untyped-def]
    state = dr_game_day_flow(**params, return_state=True)
    result = outcome(state)
    assert isinstance(result, DrillResult), result
    return state, result


def drill_root(sandbox: SandboxState) -> Path:
    return load_settings().drill_root


def leftovers(sandbox: SandboxState) -> list[Path]:
    root = drill_root(sandbox)
    return sorted(root.iterdir()) if root.is_dir() else []


def repo_dir(tmp_path: Path) -> Path:
    return tmp_path / "repository"


def damage(path: Path) -> None:
    """One flipped byte in the middle of a stored object: what bit rot or a bad copy leaves."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow  # end to end on real servers: run with the drills, to keep the suite short
def test_drill_on_the_sandbox_end_to_end(config: SandboxState, tmp_path: Path) -> None:
    """Backup, then the drill: a clean cluster, roles, the database and the config files restored, the platform
    proven, seed 002 scored honestly, the cluster torn down, and the game-day record kept in the repository."""
    backup_id = back_up()
    state, result = drill()
    assert state.is_completed(), (state.message, result.error, result.issues)
    assert result.operational and result.torn_down and result.backup_id == backup_id
    assert state.message == f"platform operational on restored data; {result.summary}"
    [db] = result.databases
    assert db.proven and db.validation and db.validation.passed and not db.validation.mismatches
    assert {q.status for q in db.quality} == {"passed"} and db.findings and all(f.severity == "ok" for f in db.findings)
    assert [f.status for f in result.config_files] == ["intact", "intact"]
    assert {r.name for r in result.roles_created} >= {"trading_user"}
    assert [h.status for h in result.health if h.name.startswith("trading API")] == ["ok"]
    scores = {s.name: s for s in result.scorecard}
    assert list(scores) == ["Trading Engine", "Position Database", "Configuration", "Historical Data",
                            "Memory/Learning System", "Monitoring/Logs"]
    assert scores["Memory/Learning System"].status == scores["Monitoring/Logs"].status == "not_covered"
    position = scores["Position Database"]
    assert position.status == "missed" and position.rto_met and position.rpo_met is False
    assert any("continuous WAL archiving" in r for r in position.reasons)  # fails honestly, with the reason
    assert scores["Trading Engine"].rpo_met is False  # RPO 0 is never met by a backup
    assert result.summary == "0 of 6 targets met (2 not covered)"
    # The scorecard agrees with the step timings: RTO ends where the item's proof step ended.
    ends = {t.step: (t.started_at - result.started_at).total_seconds() + t.seconds for t in result.timeline}
    assert position.rto_seconds == pytest.approx(ends["prove trading_db"], abs=1e-3)
    config_rto = scores["Configuration"].rto_seconds
    assert config_rto == pytest.approx(max(ends["prove trading_db"], ends["restore configuration files"]), abs=1e-3)
    assert result.recovery_seconds == pytest.approx(ends["health check"], abs=1e-3)
    assert max(result.recovery_seconds, result.seconds) == result.seconds  # recovered before the run ended
    assert position.rpo_seconds == pytest.approx(result.backup_age_seconds, abs=1e-3)
    # Nothing left: no directory, no server.
    assert leftovers(config) == []
    # The record and the trend, kept in the repository; the scorecard went out as an event.
    [record] = DrillRecords(open_repository(load_settings().repository), "sandbox").recent(10)
    assert record.operational and record.backup_id == backup_id and record.met == 0
    events = runbook_events("runbooks.dr-game-day.platform", names=["runbooks.dr-game-day.scorecard"],
                            until=lambda ev: any(e.payload.get("backup_id") == backup_id for e in ev))
    assert any(e.payload.get("summary") == result.summary for e in events)
    state, second = drill(quality=False, keep_cluster=True)
    assert state.is_completed() and len(second.trend) == 2 and not second.torn_down and second.kept
    [kept] = leftovers(config)  # kept for inspection, still running; the next drill removes it
    assert (kept / "cluster" / "data" / "postmaster.pid").exists()
    state, third = drill(quality=False)
    assert state.is_completed() and [Path(w.path) for w in third.swept] == [kept]
    assert leftovers(config) == []


def test_corrupted_backup_fails_at_verification_and_still_tears_down(config: SandboxState, tmp_path: Path) -> None:
    backup_id = back_up()
    damage(repo_dir(tmp_path) / "databases" / "trading_db" / backup_id / "dump.pgc.zst")
    state, result = drill(quality=False)
    assert state.is_failed()
    assert not result.operational and result.torn_down
    [db] = result.databases
    assert db.stopped_at == "fetch and verify" and "is damaged" in (db.detail or "")
    assert "NOT proven" in (state.message or "")
    assert any("trading_db: fetch and verify failed" in i for i in result.issues)
    assert {s.name: s.status for s in result.scorecard}["Historical Data"] == "failed"
    assert leftovers(config) == []


def age_backup(repository: Path, backup_id: str, by: timedelta) -> str:
    """What a repository whose newest backup is old looks like: the same run, moved back in time."""
    old = datetime.strptime(backup_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) - by
    new_id = f"{old:%Y%m%dT%H%M%SZ}"
    for kind_dir in (repository / "databases", repository / "clusters"):
        for name_dir in kind_dir.iterdir():
            src = name_dir / backup_id
            if not src.is_dir():
                continue
            manifest = json.loads((src / "manifest.json").read_text().replace(backup_id, new_id))
            for key in ("started_at", "finished_at"):
                manifest[key] = (datetime.fromisoformat(manifest[key]) - by).isoformat()
            if manifest.get("snapshot"):
                taken = datetime.fromisoformat(manifest["snapshot"]["taken_at"]) - by
                manifest["snapshot"]["taken_at"] = taken.isoformat()
            (src / "manifest.json").write_text(json.dumps(manifest))
            src.rename(name_dir / new_id)
    return new_id


def test_a_drill_without_a_recent_backup_fails_its_rpo(config: SandboxState, tmp_path: Path) -> None:
    old_id = age_backup(repo_dir(tmp_path), back_up(), timedelta(days=3))
    state, result = drill(quality=False)
    assert state.is_completed(), result.error  # the platform still works on old data: the RPO is what fails
    assert result.backup_id == old_id and result.backup_age_seconds is not None
    assert timedelta(seconds=result.backup_age_seconds) >= timedelta(days=3)  # the age of the backup, not a timing
    historical = {s.name: s for s in result.scorecard}["Historical Data"]
    assert historical.status == "missed" and historical.rto_met and historical.rpo_met is False
    assert any("72." in r and "old at drill time" in r for r in historical.reasons), historical.reasons


@pytest.mark.slow  # end to end on real servers: run with the drills, to keep the suite short
def test_a_drill_killed_mid_restore_is_cleaned_up_by_the_next(config: SandboxState, prefect_api: str) -> None:
    from tests.processes import kill_run_at

    back_up()
    kill_run_at([sys.executable, "-m", "runbooks.cli", "run", "dr-game-day", "--param", "quality=false"],
                {**os.environ, "PREFECT_API_URL": prefect_api}, "pg_restore")
    [left] = leftovers(config)
    pid_file = left / "cluster" / "data" / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    os.kill(postmaster, 0)  # the killed drill's cluster is still running
    state, result = drill(quality=False)
    assert state.is_completed(), result.error
    assert [Path(w.path) for w in result.swept] == [left]
    assert leftovers(config) == []
    with pytest.raises(ProcessLookupError):
        os.kill(postmaster, 0)


@pytest.fixture
def empty_server(sandbox: SandboxState):  # type: ignore[no-untyped-def]
    with running_cluster(Path(sandbox.root) / f"target-{secrets.token_hex(4)}") as cluster:
        yield cluster


def server_contents(cluster: PostgresCluster) -> tuple[set[str], set[str]]:
    with psycopg.connect(cluster.dsn()) as conn:
        dbs = {r for (r,) in conn.execute("SELECT datname FROM pg_database")}
        roles = {r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'")}
    return dbs, roles


def test_a_drill_on_an_existing_empty_server_leaves_it_empty(config: SandboxState, empty_server: PostgresCluster,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    back_up()
    before = server_contents(empty_server)
    monkeypatch.setenv("RUNBOOKS_DRILL__TARGET_DSN", empty_server.dsn())
    state, result = drill(quality=False)
    assert state.is_completed(), result.error
    assert result.cluster_kind == "server" and result.operational and result.torn_down
    assert empty_server.superuser_password not in result.model_dump_json()
    assert server_contents(empty_server) == before
    # Not empty: refused before anything is restored, and nothing of it is touched.
    with psycopg.connect(empty_server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE someone_elses")
    state, result = drill(quality=False)
    assert state.is_failed() and "is not empty" in (result.error or "") and not result.databases
    assert "someone_elses" in server_contents(empty_server)[0]


def test_a_drill_never_restores_onto_an_inventory_server(config: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
    back_up()
    monkeypatch.setenv("RUNBOOKS_DRILL__TARGET_DSN", admin_dsn(config))
    with psycopg.connect(admin_dsn(config)) as conn:
        before = {r for (r,) in conn.execute("SELECT datname FROM pg_database")}
    state, result = drill(quality=False)
    assert state.is_failed() and "never restores onto production" in (result.error or "")
    with psycopg.connect(admin_dsn(config)) as conn:
        assert {r for (r,) in conn.execute("SELECT datname FROM pg_database")} == before


# -- pure parts ------------------------------------------------------------------------------------------------
def manifest(name: str, backup_id: str, *, verified: bool = True) -> BackupManifest:
    at = datetime.strptime(backup_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return BackupManifest(backup_id=backup_id, kind="database", name=name, host="h", started_at=at, finished_at=at,
                          objects=[StoredObject(role="dump", key=f"databases/{name}/{backup_id}/dump.pgc.zst",
                                                format="pg_dump custom", bytes=1, stored_bytes=1, sha256="0")],
                          verification=Verification(status="passed" if verified else "failed", checked_at=at,
                                                    seconds=0))


def test_the_newest_complete_verified_set_is_picked_and_what_was_passed_over_is_shown() -> None:
    found = [manifest("a", "20261101T020000Z"), manifest("b", "20261101T020000Z"),
             manifest("a", "20261102T020000Z"), manifest("b", "20261102T020000Z", verified=False),
             manifest("a", "20261103T020000Z"),
             manifest("a", "20261104T020000Z")]
    damaged = [DamagedBackup(kind="database", name="b", backup_id="20261104T020000Z", reason="unreadable",
                             objects=[])]
    chosen = pick_backup_set(found, damaged, inventory=["a", "b"], backup_id="latest")
    assert chosen.backup_id == "20261101T020000Z"
    assert [s.split(":")[0] for s in chosen.skipped] == ["20261104T020000Z", "20261103T020000Z", "20261102T020000Z"]
    assert "b: manifest unreadable" in chosen.skipped[0]
    assert "b: no backup in this run" in chosen.skipped[1]
    assert "b: failed verification" in chosen.skipped[2]
    with pytest.raises(Refused, match="no backup run holds a verified dump"):
        pick_backup_set(found, damaged, inventory=["a", "b"], backup_id="20261102T020000Z")


def test_scoring_follows_seed_002() -> None:
    start = datetime(2026, 11, 23, 6, tzinfo=UTC)
    proofs = {"database db": Proof(item="database db", ok=True, validated_after_seconds=120,
                                   taken_at=start - timedelta(hours=4), tables=["public.positions"])}
    minutes = timedelta(minutes=1)
    hourly = score_component(DrillComponent(name="x", rto=10 * minutes, rpo=300 * minutes, tables=["db.positions"]),
                             proofs, started_at=start, backup_interval=timedelta(hours=1))
    assert hourly.status == "met" and hourly.rto_seconds == 120 and hourly.rpo_seconds == 4 * 3600
    nightly = score_component(DrillComponent(name="x", rto=1 * minutes, rpo=300 * minutes, databases=["db"]),
                              proofs, started_at=start, backup_interval=timedelta(hours=24))
    assert nightly.status == "missed" and not nightly.rto_met and not nightly.rpo_met
    assert nightly.worst_rpo_seconds == 24 * 3600
    missing = score_component(DrillComponent(name="x", rto=minutes, rpo=minutes, tables=["db.trades"]),
                              proofs, started_at=start, backup_interval=timedelta(hours=1))
    assert missing.status == "failed" and "public.trades is not in the backup" in missing.reasons[0]
    assert score_component(DrillComponent(name="x", rto=minutes, rpo=minutes), proofs, started_at=start,
                           backup_interval=timedelta(hours=1)).status == "not_covered"
