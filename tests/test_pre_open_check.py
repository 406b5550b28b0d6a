"""The pre-open check: its pure decisions with plain values (which markets are due, each reading's grade, the
verdict), then the runbook against the sandbox: a backup taken and verified first, the simulator's trading API and
inference API over HTTP, a 24/7 feed table in the sandbox's database, a real webhook receiving the P2 page, and the
command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from psycopg import sql

from runbooks.core.errors import ConfigurationError
from runbooks.core.market_time import MarketCalendar
from runbooks.decisions.freshness import Finding
from runbooks.decisions.health import HealthCheck
from runbooks.decisions.pitr import ArchiveJudgement
from runbooks.decisions.preopen import (
    PreOpenCheck,
    backups_window_start,
    closed_today_name,
    decide,
    decide_without_checks,
    judge_archive,
    judge_backups,
    judge_feeds,
    judge_health,
    judge_serving,
    judge_trading,
    plan_markets,
)
from runbooks.decisions.weekly import BackupEntry
from runbooks.flows.pre_open_check import PreOpenParameters, PreOpenResult, pre_open_check_flow, render_report
from runbooks.frame import outcome
from runbooks.settings import load_settings
from runbooks_sandbox import SandboxState
from tests.markets import EVERY_DAY, closed_now, set_markets
from tests.pgfixtures import admin_dsn
from tests.runs import run_backup

COT = ZoneInfo("America/Bogota")
USD_COP = MarketCalendar(name="usd_cop", timezone="America/Bogota", open=time(8), close=time(13), holidays="CO")
CRYPTO = MarketCalendar(name="crypto", always_open=True)
ROOT = Path(__file__).resolve().parent.parent
# The seeds' markets (the suite's sandbox makes USD/COP 24/7 so its bars are fresh at any hour).
# The environment is merged over the file's [markets.usd_cop]: say every field that differs.
SEED_MARKETS: dict[str, Any] = {"usd_cop": {"timezone": "America/Bogota", "open": "08:00", "close": "13:00",
                                            "holidays": "CO", "always_open": False}, "crypto": {"always_open": True}}


def cot(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=COT)


# -- pure decisions ---------------------------------------------------------------------------------------------------
def test_a_holiday_or_a_weekend_is_closed_today_by_name() -> None:
    epiphany = date(2027, 1, 11)  # Colombia moves Epiphany to the Monday
    assert closed_today_name(USD_COP, epiphany) == "Epiphany (observed)"
    assert closed_today_name(USD_COP, date(2027, 1, 9)) == "Saturday, not a trading day"
    assert closed_today_name(USD_COP, date(2027, 1, 12)) is None
    [plan] = plan_markets({"usd_cop": USD_COP}, at=cot(epiphany, 7, 30), horizon=timedelta(hours=2))
    assert plan.decision == "closed-today" and plan.reason == "market closed today: Epiphany (observed)"
    assert decide_without_checks([plan]).verdict == "market closed"


def test_a_market_is_due_when_its_open_is_within_the_horizon() -> None:
    tuesday = date(2027, 1, 12)
    [plan] = plan_markets({"usd_cop": USD_COP}, at=cot(tuesday, 7, 30), horizon=timedelta(hours=2))
    assert plan.decision == "due" and plan.opens_at == cot(tuesday, 8)
    assert plan.previous_close == cot(date(2027, 1, 8), 13)  # Friday's close: Monday was a holiday
    [early] = plan_markets({"usd_cop": USD_COP}, at=cot(tuesday, 5, 0), horizon=timedelta(hours=2))
    assert early.decision == "not-due" and "more than 2.0 h ahead" in early.reason
    assert decide_without_checks([early]).verdict == "nothing due"
    # Named, it is checked whatever the horizon; in session, the session in progress.
    [named] = plan_markets({"usd_cop": USD_COP}, at=cot(tuesday, 10), horizon=timedelta(hours=2), market="usd_cop")
    assert named.decision == "due" and named.opens_at == cot(tuesday, 8)
    assert named.previous_close == cot(date(2027, 1, 8), 13)
    [unnamed] = plan_markets({"usd_cop": USD_COP}, at=cot(tuesday, 10), horizon=timedelta(hours=2))
    assert unnamed.decision == "not-due" and "already open" in unnamed.reason


def test_the_verdict_is_no_go_when_any_check_fails_and_lists_the_fixes() -> None:
    ok = PreOpenCheck(name="a", outcome="pass", reason="fine")
    warn = PreOpenCheck(name="b", outcome="warn", reason="slow", fix="look")
    fail = PreOpenCheck(name="c", outcome="fail", reason="halted", fix="resume")
    assert decide([ok, warn]).verdict == "go" and decide([ok, warn]).reasons == ["b: slow"]
    no_go = decide([ok, warn, fail])
    assert no_go.verdict == "no-go" and no_go.reasons == ["c: halted"] and no_go.to_fix == ["c: resume"]


def entry(name: str, at: datetime, status: str = "verified") -> BackupEntry:
    return BackupEntry(kind="database", name=name, backup_id=f"{at:%Y%m%dT%H%M%SZ}", started_at=at,
                       status=status)  # type: ignore[arg-type]


def test_last_nights_backup_is_verified_and_since_the_previous_close() -> None:
    at = datetime(2027, 1, 12, 12, 30, tzinfo=UTC)
    close = datetime(2027, 1, 8, 18, tzinfo=UTC)  # Friday 13:00 COT; a long weekend before Tuesday
    since = backups_window_start(at=at, previous_close=close, stale_after=timedelta(hours=26))
    assert since == close
    night = datetime(2027, 1, 12, 2, tzinfo=UTC)
    assert judge_backups([entry("trading_db", night)], inventory=["trading_db"], since=since, at=at).outcome == "pass"
    missing = judge_backups([entry("trading_db", night)], inventory=["trading_db", "ml_db"], since=since, at=at)
    assert missing.outcome == "fail" and "ml_db: no backup since" in missing.reason
    bad = judge_backups([entry("trading_db", night, "verification failed")], inventory=["trading_db"], since=since,
                        at=at)
    assert bad.outcome == "fail" and "verification failed" in bad.reason
    later = judge_backups([entry("trading_db", night), entry("trading_db", night + timedelta(hours=1), "damaged")],
                          inventory=["trading_db"], since=since, at=at)
    assert later.outcome == "warn" and "damaged" in later.reason


def test_each_reading_grades_pass_warn_or_fail() -> None:
    assert judge_archive(None, configured=False).outcome == "pass"
    assert "not configured" in judge_archive(None, configured=False).reason
    assert judge_archive(ArchiveJudgement(verdict="at_risk", reasons=["3 segments wait"]), configured=True).outcome \
        == "warn"
    assert judge_archive(ArchiveJudgement(verdict="failing", reasons=["x"]), configured=True).outcome == "fail"
    disks = [HealthCheck(name="disk /", status="ok", value=40, unit="% used"),
             HealthCheck(name="disk /var", status="alert", value=93, unit="% used")]
    assert judge_health("disk headroom", disks, fix="clean").outcome == "fail"
    assert judge_health("health", [HealthCheck(name="redis", status="not_configured")], fix="x").outcome == "pass"
    halted = judge_trading({"trading_mode": "halted", "paused_by": "alice", "reason": "broker outage",
                            "changed_at": "2027-01-11T20:00:00+00:00"},
                           previous_close=datetime(2027, 1, 8, 18, tzinfo=UTC))
    assert halted.outcome == "fail" and "HALTED (kill switch) by alice" in halted.reason
    assert "broker outage" in halted.reason and halted.fix and "alice" in halted.fix
    left = judge_trading({"trading_mode": "paused", "paused_by": "bob", "changed_at": "2027-01-08T19:00:00Z"},
                         previous_close=datetime(2027, 1, 8, 18, tzinfo=UTC))
    assert left.outcome == "fail" and "PAUSED by bob" in left.reason and "before the previous close" not in left.reason
    assert judge_trading({"trading_mode": "running"}, previous_close=None).outcome == "pass"
    assert judge_serving(model_id="m", version="v4", healthy=False, flowing=True).outcome == "fail"
    assert judge_serving(model_id="m", version="v4", healthy=True, flowing=False).outcome == "warn"
    assert judge_feeds([]).outcome == "pass"
    stale = Finding(key="btc", severity="error", gates_trading=True, reason="stale for 30 min")
    assert judge_feeds([stale]).outcome == "fail" and "btc: stale for 30 min" in judge_feeds([stale]).reason


def test_parameters_refuse_a_market_that_never_opens_or_is_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    set_markets(monkeypatch, **SEED_MARKETS)
    settings = load_settings()
    PreOpenParameters(market="usd_cop").check_against(settings)
    for market, words in (("crypto", "24/7"), ("eur_usd", "not in [markets]")):
        with pytest.raises(ConfigurationError, match=re.escape(words)):
            PreOpenParameters(market=market).check_against(settings)
    with pytest.raises(ValueError, match="at most 24 hours"):
        PreOpenParameters(horizon="25h")
    with pytest.raises(ValueError):
        PreOpenParameters(at="2027-01-11T07:30:00")  # no time zone


# -- the runbook against the sandbox ----------------------------------------------------------------------------------
def run_check(**params: Any) -> tuple[Any, PreOpenResult]:
    state = pre_open_check_flow(**params, return_state=True)
    return state, outcome(state)


@pytest.fixture
def platform(config: SandboxState, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch,
             tmp_path: Path) -> Iterator[SandboxState]:
    """The sandbox with a gating market ``fx`` closed now (it opens within a day), crypto 24/7 with a fresh feed
    table of its own in trading_db, and no pgBackRest set up (a work directory of this test's). The shared host's
    disk, memory and CPU and the API latency under a loaded CI machine are not what these tests are about."""
    set_markets(monkeypatch, fx=closed_now(), crypto={"always_open": True, "days": EVERY_DAY})
    monkeypatch.setenv("RUNBOOKS_PITR__WORK_DIR", str(tmp_path / "pitr"))
    for name in ("disk", "memory", "cpu"):
        monkeypatch.setenv(f"RUNBOOKS_HEALTH__{name.upper()}_WARN_PERCENT", "99.9")
        monkeypatch.setenv(f"RUNBOOKS_HEALTH__{name.upper()}_ALERT_PERCENT", "100")
    monkeypatch.setenv("RUNBOOKS_HEALTH__API_WARN_SECONDS", "30")
    monkeypatch.setenv("RUNBOOKS_HEALTH__API_ALERT_SECONDS", "60")
    table = f"crypto_bars_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn(config, "trading_db"), autocommit=True) as conn:
        conn.execute(sql.SQL('CREATE TABLE {} (symbol text, "timestamp" timestamptz)').format(sql.Identifier(table)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('BTCUSDT', now()), ('ETHUSDT', now())").format(
            sql.Identifier(table)))
    monkeypatch.setenv("RUNBOOKS_FRESHNESS__TABLES", json.dumps([{
        "database": "trading_db", "table": table, "group_by": "symbol", "market": "crypto", "warn_after": "5m",
        "error_after": "10m", "kill_after": "60m", "gates_trading": True}]))
    try:
        yield config
    finally:
        with psycopg.connect(admin_dsn(config, "trading_db"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def back_up() -> None:
    state, _ = run_backup(include_cluster=False, apply_retention=False)
    assert state.is_completed(), state.message


def test_a_fit_platform_is_go_and_pages_nobody(platform: SandboxState, webhook: Any) -> None:
    received, _canary = webhook
    back_up()
    state, result = run_check(market="fx")
    assert state.is_completed() and result.succeeded and result.verdict == "go", result.reasons
    by_name = {c.name: c for c in result.checks}
    assert list(by_name) == ["backups", "PITR archive", "disk headroom", "health check", "trading mode",
                             "serving model ppo_primary", "24/7 feeds"]
    assert all(c.outcome != "fail" for c in result.checks), result.checks
    assert by_name["backups"].outcome == "pass" and "trading_db: " in by_name["backups"].reason
    assert "verified" in by_name["backups"].reason
    assert "not configured" in by_name["PITR archive"].reason
    assert by_name["trading mode"].outcome == "pass" and by_name["trading mode"].reason.startswith("running")
    assert "BTCUSDT" not in by_name["24/7 feeds"].reason and "fresh" in by_name["24/7 feeds"].reason
    assert [p.decision for p in result.markets] == ["due"] and result.notification is None and received == []
    steps = [t.step for t in result.timeline]
    assert steps == ["market calendar", "backups", "PITR archive", "disk headroom", "health check", "trading mode",
                     "serving model", "24/7 feeds"]
    report = render_report(result)
    assert "# Pre-open check — GO" in report and "## Checks before fx" in report


def test_trading_left_halted_is_no_go_naming_who_and_pages_on_call(platform: SandboxState, simulator: httpx.Client,
                                                                   webhook: Any) -> None:
    received, canary = webhook
    back_up()
    simulator.post("/api/v1/operations/kill-switch", json={"reason": "broker feed outage last night",
                                                           "activated_by": "alice@risk-desk"}).raise_for_status()
    try:
        state, result = run_check(market="fx")
    finally:
        simulator.post("/api/v1/operations/resume", json={"resumed_by": "test", "confirmation_code": "CONFIRM_RESUME"})
    assert state.is_failed() and not result.succeeded and result.verdict == "no-go"
    [failed] = [c for c in result.checks if c.outcome == "fail"]
    assert failed.name == "trading mode" and "HALTED (kill switch) by alice@risk-desk" in failed.reason
    assert "broker feed outage last night" in failed.reason
    assert result.reasons == [f"trading mode: {failed.reason}"]
    assert result.to_fix and "alice@risk-desk" in result.to_fix[0]
    assert result.notification and "FAILED" not in result.notification
    assert len(received) == 1
    page = json.dumps(received[0])
    assert "NO-GO" in page and "P2" in page and "alice@risk-desk" in page
    assert canary not in json.dumps(result.model_dump(mode="json"))
    assert "## Fix before the open" in render_report(result)


def test_on_a_colombian_holiday_the_market_is_closed_today_and_nothing_is_checked(
        config: SandboxState, simulator: httpx.Client, webhook: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    received, _canary = webhook
    set_markets(monkeypatch, **SEED_MARKETS)
    state, result = run_check(at=datetime.fromisoformat("2027-01-11T07:30:00-05:00"))
    assert state.is_completed() and result.succeeded and result.verdict == "market closed"
    assert result.reasons == ["usd_cop: market closed today: Epiphany (observed)"]
    assert result.checks == [] and [t.step for t in result.timeline] == ["market calendar"]
    assert received == [] and simulator.get("/_control/state").json()["calls"] == []  # no API was even read
    assert "market closed today" in render_report(result)


def test_the_command_line_runs_it_and_exits_0_on_a_holiday(config: SandboxState, prefect_api: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT),
           "RUNBOOKS_MARKETS": json.dumps(SEED_MARKETS)}
    proc = subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "pre-open-check", "--param",
                           "at=2027-01-11T07:30:00-05:00", "--json"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["verdict"] == "market closed" and "Epiphany" in result["reasons"][0]
    refused = subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "pre-open-check", "--param",
                              "market=crypto"], env=env, capture_output=True, text=True, timeout=180)
    assert refused.returncode == 2 and "24/7" in refused.stderr and "HINT:" in refused.stderr
