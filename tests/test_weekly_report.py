"""The weekly maintenance report against the sandbox: the simulator's P&L, risk and model endpoints over real HTTP,
a real backup in a real repository (one damaged and one interrupted beside it), the drill records kept there, and
the runbook runs read back from Prefect's test server. The report is read back as the artifact an operator reads."""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbooks.adapters.records import DrillRecords
from runbooks.adapters.repository import open_repository
from runbooks.decisions.drill import DrillRecord
from runbooks.decisions.manifest import backup_id_for
from runbooks.decisions.weekly import RunbookRunEntry, backups_in_window, parse_breakers, summarize_runs
from runbooks.flows.weekly_report import WeeklyReportResult, weekly_report_flow
from runbooks.frame import outcome
from runbooks.settings import load_settings
from runbooks.tasks.flow_runs import read_runbook_runs
from runbooks.tasks.models import read_evidence
from runbooks.tasks.storage import list_backups_in_window, read_drill_records
from runbooks.tasks.trading_api import (
    read_circuit_breakers,
    read_pnl,
    read_risk_events,
    read_risk_health,
    read_risk_metrics,
)
from runbooks_sandbox import SandboxState
from tests.runs import run_backup, without_retry_delays


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the retry policy (count, condition) but not its real-world delays."""
    without_retry_delays(monkeypatch, read_pnl, read_risk_metrics, read_circuit_breakers, read_risk_health,
                         read_risk_events, read_evidence, list_backups_in_window, read_drill_records, read_runbook_runs)


def closed_port_url() -> str:
    """An address where nothing listens: connection refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def report(**params: Any) -> tuple[Any, WeeklyReportResult, str]:
    from prefect.artifacts import Artifact

    state = weekly_report_flow(**params, return_state=True)
    result = outcome(state)
    assert isinstance(result, WeeklyReportResult), result
    artifact = Artifact.get("weekly-report")
    assert artifact is not None
    return state, result, str(artifact.data)


def section(markdown: str, title: str) -> list[str]:
    """The non-empty lines of the section whose heading starts with ``title``, heading excluded."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {title}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start + 1:end] if line.strip()]


def backup_trading_db() -> str:
    state, result = run_backup(databases=["trading_db"], include_cluster=False)
    assert state.is_completed(), result
    return str(result.items[0].backup_id)


def plant_damaged_and_incomplete(repository: Path) -> tuple[str, str]:
    """A backup whose manifest is truncated (damaged) and one with a dump but no manifest (interrupted), both
    from an hour ago: what bit rot and a killed run leave."""
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    damaged, incomplete = backup_id_for(hour_ago), backup_id_for(hour_ago + timedelta(seconds=1))
    for backup_id, files in ((damaged, {"dump.pgc.zst": b"dump", "manifest.json": b'{"truncated'}),
                             (incomplete, {"dump.pgc.zst": b"half a dump"})):
        directory = repository / "databases" / "trading_db" / backup_id
        directory.mkdir(parents=True)
        for name, body in files.items():
            (directory / name).write_bytes(body)
    return damaged, incomplete


def test_the_report_shows_the_weeks_figures_backups_drills_and_runs(config: SandboxState, simulator: httpx.Client,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The session's Prefect server holds every backup run of the suite so far: list them all, whatever ran before.
    monkeypatch.setenv("RUNBOOKS_WEEKLY_REPORT__LIST_RUNS_UP_TO", "1000")
    backup_id = backup_trading_db()
    damaged, incomplete = plant_damaged_and_incomplete(tmp_path / "repository")
    drill = DrillRecord(drill_id=backup_id_for(datetime.now(UTC) - timedelta(days=2)),
                        started_at=datetime.now(UTC) - timedelta(days=2), host="drill-host", backup_id=backup_id,
                        operational=True, recovery_seconds=312.0, met=3, scored=4, issues=1)
    DrillRecords(open_repository(load_settings().repository), "sandbox").put(drill)
    simulator.post("/_control/risk", json={"breakers": {"daily_drawdown_limit": "triggered"}}).raise_for_status()
    served = simulator.get("/api/v1/trading/pnl", params={"window": "7d"}).json()

    state, result, markdown = report(days=7)

    assert state.is_completed(), result.error
    assert result.read == ["trading performance", "model accuracy", "risk metrics", "backups", "DR drills",
                           "runbook runs"] and result.unreadable == []
    # The P&L the trading API served, as served.
    assert result.pnl and (result.pnl.total, result.pnl.trades) == (served["total_pnl"], served["trades"])
    trading = "\n".join(section(markdown, "Trading performance"))
    assert f"{served['total_pnl']:,.2f} USD" in trading and f"{served['realized_pnl']:,.2f} USD" in trading
    assert f"| trades | {served['trades']} |" in trading and served["daily"][-1]["date"] in trading
    # Model accuracy from the inference API's metrics endpoint, graded.
    [model] = result.models
    assert (model.model_id, model.evidence.version, model.evidence.sharpe, model.judgement.verdict) == (
        "ppo_primary", "v4", 1.12, "healthy")
    # Risk: the tripped breaker stands out, and is a next step.
    risk = "\n".join(section(markdown, "Risk metrics"))
    assert "1 of 3 tripped" in risk and "| daily_drawdown_limit | **triggered** |" in risk
    assert "Risk events in the window: **3**" in risk and "4,600.00 USD" in risk
    assert any("daily_drawdown_limit" in step for step in result.next_steps)
    # Backups: the real one verified; the damaged and the interrupted ones shown as such, never hidden.
    backups = section(markdown, "Backups")
    assert any(backup_id in line and "| verified |" in line for line in backups)
    assert any(damaged in line and "**DAMAGED**" in line and "manifest unreadable" in line for line in backups)
    assert any(incomplete in line and "**INCOMPLETE**" in line for line in backups)
    assert "| database | trading_db | 3 | 1 | 0 | 1 | 1 |" in "\n".join(backups)
    assert any(damaged in step and "DAMAGED" in step for step in result.next_steps)
    # The drill record kept in the repository.
    drills = "\n".join(section(markdown, "DR drills"))
    assert drill.drill_id in drills and "| 3/4 |" in drills and "5.2 min" in drills
    # The backup run, read back from the Prefect API with its outcome.
    backup_runs = [r for r in result.runs if r.runbook == "backup"]
    assert backup_runs and backup_runs[-1].state == "Completed" and backup_runs[-1].seconds is not None
    runs = "\n".join(section(markdown, "Runbook runs"))
    assert re.search(r"\| backup \| \d+ \| Completed \d+", runs) and backup_runs[-1].name in runs
    assert not any(r.flow_run_id == str(state.state_details.flow_run_id) for r in result.runs)  # not itself


def test_an_unreachable_trading_api_is_one_line_and_the_report_still_publishes(
        config: SandboxState, simulator: httpx.Client, fast_retries: None, monkeypatch: pytest.MonkeyPatch) -> None:
    backup_id = backup_trading_db()
    down = closed_port_url()
    monkeypatch.setenv("RUNBOOKS_TRADING_API__BASE_URL", down)

    state, result, markdown = report()

    assert state.is_completed() and result.succeeded, result.error
    assert "trading performance" not in result.read and "risk metrics" not in result.read
    assert {"model accuracy", "backups", "DR drills", "runbook runs"} <= set(result.read)
    for title in ("Trading performance", "Risk metrics"):
        [line] = section(markdown, title)
        assert line.startswith("_Could not be read: trading API") and "unreachable" in line, line
        assert down in line and "HINT:" in line
    assert any(backup_id in line and "| verified |" in line for line in section(markdown, "Backups"))
    assert "4 of 6 sections read" in markdown
    assert state.message and "not: trading performance, risk metrics" in state.message


def test_an_unreachable_prefect_api_and_a_missing_repository_are_lines_too(
        config: SandboxState, simulator: httpx.Client, fast_retries: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repository of this test was never written (no backup yet); the run history is on a Prefect API that
    does not answer. Both sections say why; the platform's figures still publish."""
    monkeypatch.setenv("RUNBOOKS_PREFECT__API_URL", f"{closed_port_url()}/api")

    state, result, markdown = report()

    assert state.is_completed(), result.error
    [runs] = section(markdown, "Runbook runs")
    assert runs.startswith("_Could not be read: Prefect API http://127.0.0.1:") and "unreachable" in runs
    [backups] = section(markdown, "Backups")
    assert "does not exist" in backups and "HINT:" in backups
    assert result.pnl is not None and "trading performance" in result.read


def test_the_run_fails_only_when_nothing_could_be_read(config: SandboxState, simulator: httpx.Client,
                                                      fast_retries: None, monkeypatch: pytest.MonkeyPatch) -> None:
    down = closed_port_url()
    for section_name in ("TRADING_API", "INFERENCE_API"):
        monkeypatch.setenv(f"RUNBOOKS_{section_name}__BASE_URL", down)
    monkeypatch.setenv("RUNBOOKS_PREFECT__API_URL", f"{down}/api")

    state, result, markdown = report(days=1)

    assert state.is_failed() and not result.succeeded and result.read == []
    assert result.error and result.error.startswith("nothing could be read")
    assert markdown.startswith("# Weekly maintenance report — NOTHING COULD BE READ")
    for title in ("Trading performance", "Model accuracy", "Risk metrics", "Backups", "DR drills", "Runbook runs"):
        [line] = section(markdown, title)
        assert line.startswith("_Could not be read:"), (title, line)


def test_a_temporary_prefect_server_is_not_taken_for_an_empty_week() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from runbooks.core.errors import ConfigurationError

    now = datetime.now(UTC)
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(ConfigurationError,
                                                                               match="temporary Prefect server"):
        read_runbook_runs.fn(flows=["backup"], since=now - timedelta(days=7), until=now)


# -- the pure parts ------------------------------------------------------------------------------------------------
def entry(runbook: str, state: str, minute: int) -> RunbookRunEntry:
    return RunbookRunEntry(runbook=runbook, name=f"{runbook}-{minute}", flow_run_id=f"{runbook}-{minute}",
                           state=state, state_type=state.upper(),
                           started_at=datetime(2026, 11, 23, 6, 0, tzinfo=UTC) + timedelta(minutes=minute))


def test_frequent_runbooks_list_only_their_runs_that_did_not_complete() -> None:
    runs = [entry("data-freshness", "Completed", m) for m in range(0, 30, 5)]
    runs.insert(2, entry("data-freshness", "Failed", 7))
    runs += [entry("restore", "Completed", 3), entry("restore", "Failed", 40)]
    summaries, listed = summarize_runs(runs, list_up_to=3)
    by_name = {s.runbook: s for s in summaries}
    assert by_name["data-freshness"].runs == 7 and by_name["data-freshness"].by_state == {"Completed": 6, "Failed": 1}
    assert by_name["restore"].last_problem == "restore-40: Failed"
    assert [r.name for r in listed] == ["restore-3", "data-freshness-7", "restore-40"]


def test_breakers_in_either_shape_and_odd_entries() -> None:
    listed = parse_breakers({"breakers": [{"name": "ddl", "state": "TRIGGERED", "threshold_pct": 5},
                                          {"name": "var", "triggered": True}, {"state": "armed"}, "junk"]})
    assert [(b.name, b.state, b.tripped) for b in listed] == [("ddl", "TRIGGERED", True), ("var", "triggered", True)]
    keyed = parse_breakers({"ddl": {"status": "armed"}, "note": "x"})
    assert [(b.name, b.state, b.tripped) for b in keyed] == [("ddl", "armed", False)]


def test_backups_outside_the_window_are_left_out_but_old_damaged_ones_are_kept_apart() -> None:
    from runbooks.adapters.catalog import DamagedBackup
    from runbooks.decisions.manifest import BackupManifest

    now = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)

    def manifest(days_ago: float) -> BackupManifest:
        at = now - timedelta(days=days_ago)
        return BackupManifest(backup_id=backup_id_for(at), kind="database", name="trading_db", host="h",
                              started_at=at, finished_at=at + timedelta(seconds=30), objects=[])

    old_damage = DamagedBackup(kind="database", name="trading_db", backup_id=backup_id_for(now - timedelta(days=20)),
                               reason="unreadable", objects=[])
    unplaceable = DamagedBackup(kind="database", name="trading_db", backup_id="not-a-time", reason="x", objects=[])
    week = backups_in_window([manifest(8), manifest(6), manifest(1)], [old_damage, unplaceable], [],
                             since=now - timedelta(days=7), until=now)
    assert [e.backup_id for e in week.entries] == [manifest(6).backup_id, manifest(1).backup_id, "not-a-time"]
    assert [e.status for e in week.entries] == ["verification failed", "verification failed", "damaged"]
    assert [e.backup_id for e in week.damaged_before] == [old_damage.backup_id]
