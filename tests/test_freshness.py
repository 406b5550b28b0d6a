"""The data-freshness runbook against a real PostgreSQL database and the simulator over HTTP: seed 004's ladder
(report, pause, kill switch, resume), humans' holds never lifted, per-symbol staleness, GX quality failures, volume
drops, missing and hostile names, and the trading API down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import psycopg
import pytest
from prefect import flow
from psycopg import sql
from pydantic import ValidationError

from runbooks.adapters.repository import open_repository
from runbooks.adapters.trading_holds import TradingHolds
from runbooks.decisions.freshness import Finding, TradingHold, decide, judge_volume
from runbooks.flows.data_freshness import FreshnessResult, data_freshness_flow
from runbooks.frame import RunbookRun, TradingGuard, outcome
from runbooks.settings import FreshnessSettings, MonitoredTable, load_settings
from runbooks_sandbox import SandboxState
from tests.events import runbook_events
from tests.pgfixtures import admin_dsn, drop_db, set_database_env
from tests.repositories import configured_repository_path

SYMBOLS = ("USD/COP", "EUR/COP")
BARS = """CREATE TABLE bars (symbol text NOT NULL, "timestamp" timestamptz NOT NULL, open numeric NOT NULL,
          high numeric NOT NULL, low numeric NOT NULL, close numeric NOT NULL, volume bigint NOT NULL);
          CREATE INDEX bars_ts ON bars ("timestamp")"""


def bucket(minutes_ago: float = 0) -> datetime:
    """The start of the 5-minute bar ``minutes_ago`` minutes back."""
    moment = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return moment.replace(minute=moment.minute - moment.minute % 5, second=0, microsecond=0)


class Market:
    """A database of its own with a bars table, monitored through the environment as an operator would."""

    def __init__(self, sandbox: SandboxState, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sandbox, self.monkeypatch = sandbox, monkeypatch
        self.name = f"fresh_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin_dsn(sandbox), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        with self.connect() as conn:
            conn.execute(BARS)
        set_database_env(monkeypatch, sandbox, self.name)
        self.configure()

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(admin_dsn(self.sandbox, self.name), autocommit=True)

    def configure(self, *tables: dict[str, Any], **settings: Any) -> None:
        default = {"table": "bars", "group_by": "symbol", "interval": "5m", "quality": "ohlcv",
                   "expected_groups": list(SYMBOLS)}
        listed = [{"database": self.name, **t} for t in (tables or (default,))]
        self.monkeypatch.setenv("RUNBOOKS_FRESHNESS", json.dumps({"tables": listed, "platform_table": "bars",
                                                                  **settings}))

    def bars(self, *, end: datetime, days: float = 1, symbols: tuple[str, ...] = SYMBOLS, table: str = "bars",
             start: datetime | None = None) -> None:
        """Valid 5-minute bars of ``symbols`` from ``start`` (default ``end - days``) up to ``end``."""
        with self.connect() as conn:
            conn.execute(sql.SQL(
                "INSERT INTO {} SELECT s, ts, 100, 101, 99, 100.5, 1000 FROM unnest(%s::text[]) s, "
                "generate_series(%s::timestamptz, %s::timestamptz, interval '5 min') ts").format(
                    sql.Identifier(table)), [list(symbols), start or end - timedelta(days=days), end])

    def execute(self, query: str, params: Any = None) -> None:
        with self.connect() as conn:
            conn.execute(query, params)  # type: ignore[arg-type]


@pytest.fixture
def market(config: SandboxState, monkeypatch: pytest.MonkeyPatch, simulator: httpx.Client) -> Iterator[Market]:
    box = Market(config, monkeypatch)
    try:
        yield box
    finally:
        drop_db(config, box.name)


def check(**params: Any) -> tuple[Any, FreshnessResult]:
    state = data_freshness_flow(**params, return_state=True)
    return state, outcome(state)


def operations(simulator: httpx.Client) -> dict[str, Any]:
    return simulator.get("/api/v1/operations/status").json()


def posts(simulator: httpx.Client) -> list[str]:
    calls = simulator.get("/_control/state").json()["calls"]
    return [c["path"] for c in calls if c["method"] == "POST"]


def platform_says(simulator: httpx.Client, last_bar_at: datetime) -> None:
    simulator.post("/_control/data", json={"last_bar_at": last_bar_at.isoformat()}).raise_for_status()


def test_fresh_data_takes_no_action(market: Market, simulator: httpx.Client) -> None:
    market.bars(end=bucket())
    platform_says(simulator, bucket())
    state, result = check()
    assert state.is_completed(), result.error
    assert result.worst in ("ok", "warn") and result.action == "none"
    assert result.tables[0].outcome == "measured" and result.tables[0].groups == 2
    assert [q.status for q in result.quality] == ["passed"] and result.quality[0].expectations >= 12
    assert result.platform is not None and not result.platform.disagrees
    assert posts(simulator) == [] and operations(simulator)["trading_mode"] == "running"


def test_stale_data_pauses_then_recovery_resumes_the_runbooks_own_pause(market: Market,
                                                                       simulator: httpx.Client) -> None:
    market.bars(end=bucket(15))
    platform_says(simulator, bucket(15))
    state, result = check()
    assert state.is_failed() and result.worst == "error"
    assert result.action == "paused trading"
    status = operations(simulator)
    assert status["trading_mode"] == "paused" and status["paused_by"].startswith("runbooks-data-freshness:")
    record = TradingHolds(open_repository(load_settings().repository), load_settings().trading_api.base_url  # type: ignore[union-attr]
                         ).get("data-freshness")
    assert record is not None and record.changed_at == status["changed_at"]

    # Still stale five minutes later: the pause stands, nothing is pressed again.
    _, again = check()
    assert again.action == "none" and posts(simulator) == ["/api/v1/operations/pause"]

    market.bars(start=bucket(10), end=bucket())
    platform_says(simulator, bucket())
    state, result = check()
    assert state.is_completed(), result.error
    assert result.action.startswith("resumed trading")
    assert operations(simulator)["trading_mode"] == "running"
    resume = [c for c in simulator.get("/_control/state").json()["calls"] if c["path"].endswith("/resume")]
    assert json.loads(resume[0]["body"])["confirmation_code"] == "CONFIRM_RESUME"
    assert TradingHolds(open_repository(load_settings().repository), load_settings().trading_api.base_url  # type: ignore[union-attr]
                       ).get("data-freshness") is None
    # The trading guard's events: the pause is a halt made "how=pause", and the resume names whose pause it was.
    wanted = ["runbooks.trading.halted", "runbooks.trading.resumed", "runbooks.data-freshness.verdict"]
    ours = status["paused_by"]  # names this test's first run, whatever other runs emitted on the same resource
    events = runbook_events("runbooks.data-freshness.market-data", names=wanted,
                            until=lambda evs: any(e.event == "runbooks.trading.resumed"
                                                  and e.payload.get("paused_by") == ours for e in evs))
    assert {e.event for e in events} == set(wanted)
    assert [e.payload["how"] for e in events if e.event == "runbooks.trading.halted"
            and e.payload.get("actor") == ours] == ["pause"]
    assert any(e.event == "runbooks.trading.resumed" and e.payload.get("paused_by") == ours for e in events)


def test_two_hours_stale_presses_the_kill_switch_and_never_lifts_it(market: Market, simulator: httpx.Client) -> None:
    market.bars(end=bucket(120))
    platform_says(simulator, bucket(120))
    state, result = check()
    assert state.is_failed() and result.worst == "kill"
    assert result.action == "KILL SWITCH activated"
    assert operations(simulator)["trading_mode"] == "halted"
    assert any("ESCALATE" in step for step in result.next_steps)

    market.bars(start=bucket(115), end=bucket())
    platform_says(simulator, bucket())
    state, result = check()
    assert state.is_completed()
    assert result.action == "none" and "human resumes" in (result.decision.why if result.decision else "")
    assert operations(simulator)["trading_mode"] == "halted"


def test_a_human_pause_is_never_resumed(market: Market, simulator: httpx.Client) -> None:
    simulator.post("/api/v1/operations/pause", json={"paused_by": "oncall-alice", "reason": "FOMC"})
    market.bars(end=bucket(15))
    _, result = check()
    assert result.action == "none" and "oncall-alice" in (result.decision.why if result.decision else "")
    market.bars(start=bucket(10), end=bucket())
    platform_says(simulator, bucket())
    state, result = check()
    assert state.is_completed() and result.action == "none"
    status = operations(simulator)
    assert status["trading_mode"] == "paused" and status["paused_by"] == "oncall-alice"


def test_a_pause_renewed_by_a_human_or_forged_in_our_name_is_not_resumed(market: Market,
                                                                         simulator: httpx.Client) -> None:
    market.bars(end=bucket(15))
    _, result = check()
    assert result.action == "paused trading"
    ours = operations(simulator)["paused_by"]
    # The on-call engineer confirms the pause by hand (seed 004: "manual pause confirmation"): it is now theirs.
    simulator.post("/api/v1/operations/pause", json={"paused_by": "oncall-bob", "reason": "confirming"})
    market.bars(start=bucket(10), end=bucket())
    platform_says(simulator, bucket())
    _, result = check()
    assert result.action.startswith("none") and operations(simulator)["trading_mode"] == "paused"

    # Someone pauses with the runbook's own name but there is no record of it: not ours either.
    simulator.post("/_control/reset")
    simulator.post("/api/v1/operations/pause", json={"paused_by": ours, "reason": "forged"})
    _, result = check()
    assert result.action == "none" and operations(simulator)["trading_mode"] == "paused"


# -- the trading guard's hold that outlives the run (what data-freshness stands on) ------------------------------

HOLDER = "guard-hold-test"


@flow(name="guard-hold-halt")
def hold_halt_flow(how: Literal["pause", "kill-switch"]) -> str:
    """Run 1: holds trading through a guard that keeps its holds, and ends."""
    run: RunbookRun[Any] = RunbookRun(HOLDER, resource="guard")
    done = TradingGuard.keeping_holds(run, run.settings.trading_api).halt(reason="feed stale", how=how)
    assert done is not None and done.record is not None
    return run.actor


@flow(name="guard-hold-resume")
def hold_resume_flow() -> tuple[str, dict[str, Any] | None]:
    """A later run: lifts the hold run 1 recorded, if the platform still matches the record."""
    run: RunbookRun[Any] = RunbookRun(HOLDER, resource="guard")
    return run.actor, TradingGuard.keeping_holds(run, run.settings.trading_api).resume_recorded()


def holds() -> TradingHolds:
    settings = load_settings()
    assert settings.trading_api is not None
    return TradingHolds(open_repository(settings.repository), settings.trading_api.base_url)


def test_a_later_run_lifts_a_recorded_hold_only_while_the_platform_still_matches_the_record(
        config: SandboxState, simulator: httpx.Client) -> None:
    first = hold_halt_flow("pause")
    status = operations(simulator)
    record = holds().get(HOLDER)
    assert status["trading_mode"] == "paused" and status["paused_by"] == first
    assert record is not None and (record.actor, record.mode, record.changed_at) == (first, "paused",
                                                                                     status["changed_at"])
    second, now = hold_resume_flow()
    assert second != first and now is not None and now["resumed"]  # another run lifts the first one's hold
    assert operations(simulator)["trading_mode"] == "running" and holds().get(HOLDER) is None
    assert posts(simulator) == ["/api/v1/operations/pause", "/api/v1/operations/resume"]

    # A human acts in between: pausing again keeps mode and paused_by, but changed_at moves. Not ours any more.
    simulator.post("/_control/reset")
    hold_halt_flow("pause")
    simulator.post("/api/v1/operations/pause", json={"paused_by": "oncall-bob", "reason": "confirming"})
    held = operations(simulator)
    _, now = hold_resume_flow()
    assert now is not None and not now["resumed"]
    assert operations(simulator) == held and holds().get(HOLDER) is None  # left as it is; the record forgotten
    assert "/api/v1/operations/resume" not in posts(simulator)

    # A human resumes and pauses again in their own name: left to them, the record forgotten.
    simulator.post("/_control/reset")
    hold_halt_flow("pause")
    simulator.post("/api/v1/operations/resume", json={"resumed_by": "oncall-bob",
                                                      "confirmation_code": "CONFIRM_RESUME"})
    simulator.post("/api/v1/operations/pause", json={"paused_by": "oncall-bob", "reason": "FOMC"})
    _, now = hold_resume_flow()
    assert now is not None and not now["resumed"] and holds().get(HOLDER) is None
    assert operations(simulator)["paused_by"] == "oncall-bob" and operations(simulator)["trading_mode"] == "paused"
    assert posts(simulator).count("/api/v1/operations/resume") == 1  # the human's only

    # The kill switch a run pressed is left for a human: nothing tried, the record kept.
    simulator.post("/_control/reset")
    first = hold_halt_flow("kill-switch")
    _, now = hold_resume_flow()
    assert now is None and operations(simulator)["trading_mode"] == "halted"
    record = holds().get(HOLDER)
    assert record is not None and (record.actor, record.mode) == (first, "halted")
    assert posts(simulator) == ["/api/v1/operations/kill-switch"]


def test_one_symbol_stale_while_the_other_ticks(market: Market, simulator: httpx.Client) -> None:
    market.bars(end=bucket(), symbols=("USD/COP",))
    market.bars(end=bucket(25), symbols=("EUR/COP",))
    _, result = check(act=False)
    table = result.tables[0]
    assert [g.group for g in table.stale_groups] == ["EUR/COP"]
    assert result.worst == "error" and "EUR/COP" in result.findings[0].reason
    assert result.action == "would pause (act=false)"
    assert posts(simulator) == [] and operations(simulator)["trading_mode"] == "running"


def test_an_expected_symbol_that_never_arrives_is_stale(market: Market) -> None:
    market.bars(end=bucket(), symbols=("USD/COP",))
    _, result = check(act=False, quality=False)
    assert [g.group for g in result.tables[0].stale_groups] == ["EUR/COP"], result.tables
    assert result.worst == "kill", result.findings


def test_quality_failures_are_detected_and_named(market: Market) -> None:
    market.bars(end=bucket())
    bad = bucket(30)
    market.execute("UPDATE bars SET high = 90 WHERE symbol = 'USD/COP' AND \"timestamp\" = %s", [bad])  # high < low
    market.execute("INSERT INTO bars SELECT * FROM bars WHERE symbol = 'EUR/COP' AND \"timestamp\" = %s",
                   [bucket(60)])  # a duplicate bar
    market.execute("DELETE FROM bars WHERE symbol = 'EUR/COP' AND \"timestamp\" = %s", [bucket(90)])  # a gap
    market.execute("UPDATE bars SET volume = 0 WHERE symbol = 'USD/COP' AND \"timestamp\" = %s", [bucket(120)])
    _, result = check(act=False)
    quality = result.quality[0]
    assert quality.status == "failed"
    failed = {f.expectation: f for f in quality.failures}
    assert failed["high >= low"].unexpected == 1
    assert any("USD/COP" in s and bad.strftime("%H:%M") in s for s in failed["high >= low"].samples)
    assert failed["one bar per (symbol, timestamp)"].unexpected == 2
    gap = next(f for name, f in failed.items() if name.startswith("no gap"))
    assert gap.unexpected == 1 and "EUR/COP" in gap.samples[0]
    assert failed["volume > 0"].unexpected == 1
    assert result.worst == "error" and result.action == "would pause (act=false)"
    assert any(f.reason.startswith("data quality failed") for f in result.findings)


def test_a_bad_bar_outside_the_recent_window_is_not_read(market: Market) -> None:
    market.bars(end=bucket(), days=2)
    market.execute("UPDATE bars SET high = 90 WHERE \"timestamp\" = %s", [bucket(60 * 30)])
    _, result = check(act=False)
    assert result.quality[0].status == "passed"
    assert result.quality[0].window_rows is not None and result.quality[0].window_rows <= 2 * (6 * 12 + 1)


def test_a_sudden_volume_drop_is_flagged(market: Market) -> None:
    symbols = tuple(f"S{i:02d}" for i in range(10))
    market.configure({"table": "bars", "group_by": "symbol", "interval": "5m", "error_after": "30m",
                      "kill_after": "2h"})
    market.bars(end=bucket(10), days=8, symbols=symbols)
    market.bars(start=bucket(5), end=bucket(), symbols=symbols[:2])  # 8 of 10 symbols lost two bars ago
    state, result = check(act=False, quality=False)
    volume = result.volumes[0]
    assert volume.count == 2 and volume.median == 10 and volume.flagged, volume.verdict
    assert any("sudden volume drop" in f.reason for f in result.findings)
    assert state.is_completed() and result.worst == "warn"


def test_the_platform_disagreeing_with_the_database_is_reported(market: Market, simulator: httpx.Client) -> None:
    market.bars(end=bucket(20))
    platform_says(simulator, datetime.now(UTC))
    _, result = check(act=False, quality=False)
    assert result.platform is not None and result.platform.disagrees
    assert any("disagree" in f.reason for f in result.findings)


def test_missing_table_missing_column_empty_table_and_hostile_names(market: Market, simulator: httpx.Client) -> None:
    hostile = 'bars"; DROP TABLE bars; --'
    market.execute(sql.SQL("CREATE TABLE {} (\"timestamp\" timestamptz)").format(  # type: ignore[arg-type]
        sql.Identifier(hostile)).as_string(None))
    market.execute(sql.SQL("INSERT INTO {} VALUES (now())").format(sql.Identifier(hostile)).as_string(None))
    market.execute("CREATE TABLE empty_bars (\"timestamp\" timestamptz)")
    market.bars(end=bucket())
    market.configure({"table": "no_such_table"}, {"table": "bars", "label": "no column", "loaded_at_field": "ts"},
                     {"table": "empty_bars"}, {"table": hostile, "label": "hostile"},
                     {"table": "bars'); DROP TABLE bars; --", "label": "hostile missing"}, {"table": "bars"})
    state, result = check()
    outcomes = {t.key: t.outcome for t in result.tables}
    assert outcomes == {"no_such_table": "missing_table", "no column": "missing_column", "empty_bars": "empty",
                        "hostile": "measured", "hostile missing": "missing_table", "bars": "measured"}
    assert state.is_failed() and result.worst == "unknown"
    # The empty gating table is evidence enough to pause, whatever the unknown ones say.
    assert result.action == "paused trading" and posts(simulator) == ["/api/v1/operations/pause"]
    with market.connect() as conn:
        assert conn.execute("SELECT count(*) FROM bars").fetchone()[0] > 0  # type: ignore[index]


@pytest.fixture
def fast_trading_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the trading tasks' retry policy (count, condition) but not its real-world delays (2 to 16 s)."""
    from runbooks.tasks.trading_api import halt_trading, pause_trading, read_trading_status, resume_trading_if_ours

    for task in (read_trading_status, halt_trading, pause_trading, resume_trading_if_ours):
        monkeypatch.setattr(task, "retry_delay_seconds", [0.05] * 4)


def test_the_trading_api_down_fails_the_run_loudly_and_assumes_nothing(market: Market, simulator: httpx.Client,
                                                                       fast_trading_retries: None) -> None:
    market.bars(end=bucket(15))
    simulator.post("/_control/failures", json={"path_prefix": "/api/v1/operations", "status": 503, "count": 50})
    state, result = check(quality=False)
    assert state.is_failed()
    assert result.error is not None and "trading API" in result.error and result.worst == "unknown"
    assert result.action == "none" and result.trading_before is None
    simulator.post("/_control/failures", json={"path_prefix": "/api/v1/operations", "status": 503, "count": 0})
    assert operations(simulator)["trading_mode"] == "running"


def test_an_unknown_table_name_is_refused_before_any_query(market: Market, simulator: httpx.Client) -> None:
    state, result = check(tables=["nope"])
    assert state.is_failed() and "not in [freshness] tables" in (result.error or "")
    assert result.tables == [] and posts(simulator) == []


# -- pure parts --------------------------------------------------------------------------------------------


def test_durations_and_names_in_settings() -> None:
    table = MonitoredTable(table="t", error_after={"count": 3, "period": "hour"}, kill_after="4h", warn_after="90s")
    assert table.error_after == timedelta(hours=3) and table.warn_after == timedelta(seconds=90)
    assert table.loaded_at_field == "timestamp"
    assert MonitoredTable(table="t", loaded_at_expression="created_at::timestamptz").loaded_at_field is None
    for bad in ({"table": "x" * 64}, {"table": "a\x00b"}, {"table": "t", "error_after": "-5m"},
                {"table": "t", "error_after": "2h", "kill_after": "1h"},
                {"table": "t", "loaded_at_field": "a", "loaded_at_expression": "b"}):
        with pytest.raises(ValidationError):
            MonitoredTable(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="listed twice"):
        FreshnessSettings(tables=[MonitoredTable(table="t"), MonitoredTable(table="t")])


def _finding(severity: str) -> Finding:
    return Finding(key="bars", severity=severity, gates_trading=True, reason="r")  # type: ignore[arg-type]


def test_the_ladder() -> None:
    running = {"trading_mode": "running", "paused_by": None, "changed_at": "t0"}
    paused_by_us = {"trading_mode": "paused", "paused_by": "rb:1", "changed_at": "t1"}
    record = TradingHold(actor="rb:1", mode="paused", changed_at="t1", reason="r", at=datetime.now(UTC))
    assert decide([_finding("ok")], running, None).action == "none"
    assert decide([_finding("warn")], running, None).action == "none"
    assert decide([_finding("error")], running, None).action == "pause"
    assert decide([_finding("kill")], running, None).action == "kill-switch"
    assert decide([_finding("kill")], paused_by_us, record).action == "kill-switch"
    assert decide([_finding("error")], paused_by_us, record).action == "none"
    assert decide([_finding("ok")], paused_by_us, record).action == "resume"
    assert decide([_finding("ok")], paused_by_us, None).action == "none"
    renewed = decide([_finding("ok")], {**paused_by_us, "changed_at": "t2"}, record)
    assert renewed.action == "forget-record"
    assert renewed.why == ("trading is paused by 'rb:1' since t2, no longer the pause this runbook made at t1: left "
                           "as it is")
    assert decide([_finding("ok"), _finding("unknown")], paused_by_us, record).action == "none"
    assert decide([_finding("unknown")], running, None).action == "none"  # nothing is paused on a guess
    assert decide([_finding("unknown"), _finding("error")], running, None).action == "pause"
    halted = TradingHold(actor="rb:1", mode="halted", changed_at="t1", reason="r", at=datetime.now(UTC))
    assert decide([_finding("ok")], {**paused_by_us, "trading_mode": "halted"}, halted).action == "none"
    renewed_halt = decide([_finding("ok")], {**paused_by_us, "trading_mode": "halted", "changed_at": "t2"}, halted)
    assert "no longer the kill switch this runbook pressed at t1" in renewed_halt.why
    non_gating = Finding(key="x", severity="kill", gates_trading=False, reason="r")
    assert decide([non_gating], running, None).action == "none"


def test_volume_judgement() -> None:
    settings = FreshnessSettings()
    start = datetime.now(UTC)
    assert not judge_volume({0: 10, 1: 10, 2: 11, 3: 9}, key="k", bucket_start=start, settings=settings).flagged
    assert judge_volume({0: 2, 1: 10, 2: 11, 3: 9}, key="k", bucket_start=start, settings=settings).flagged
    few = judge_volume({0: 2, 1: 10, 2: 0, 3: 0}, key="k", bucket_start=start, settings=settings)
    assert not few.flagged and "not enough history" in few.verdict
    one = judge_volume({0: 1, 1: 1, 2: 1, 3: 1}, key="k", bucket_start=start, settings=settings)
    assert one.verdict == "1 row against a median of 1 (spread 0.0): normal"
    assert judge_volume({0: 0, 1: 2, 2: 2, 3: 2}, key="k", bucket_start=start,
                        settings=settings).verdict.startswith("0 rows against a median of 2 ")
    # Noisy history: a drop within the noise is not a sudden drop.
    assert not judge_volume({0: 40, 1: 100, 2: 30, 3: 160, 4: 60}, key="k", bucket_start=start,
                            settings=settings).flagged


def test_great_expectations_is_not_imported_by_the_cli_or_the_flow() -> None:
    code = ("import sys, runbooks.cli, runbooks.flows.data_freshness, runbooks.tasks.quality; "
            "print(any(m.startswith('great_expectations') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pause_and_resume_notify_on_call_through_a_prefect_block(market: Market, simulator: httpx.Client,
                                                                  webhook: tuple[list[dict[str, Any]], str]) -> None:
    received, canary = webhook
    market.bars(end=bucket(15))
    _, result = check(quality=False)
    assert result.action == "paused trading" and result.notification and result.notification.startswith("notified")
    assert len(received) == 1 and received[0]["text"].startswith("[P1] INCIDENT: data-freshness: paused trading")
    assert "stale for" in received[0]["text"]
    _, again = check(quality=False)  # still stale, nothing new: no second message
    assert again.notification is None and len(received) == 1

    market.bars(start=bucket(10), end=bucket())
    _, result = check()
    assert result.action.startswith("resumed")
    assert received[-1]["text"].startswith("[P1] RESOLVED: data-freshness: resumed")
    assert canary not in result.model_dump_json()


def test_a_failed_notification_never_undoes_or_hides_the_pause(market: Market, simulator: httpx.Client,
                                                               webhook: tuple[list[dict[str, Any]], str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    _received, canary = webhook
    name = f"dead-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(name="dead", url=f"http://127.0.0.1:9/{canary}", json_data={"text": "{{body}}"},
                                   allow_private_urls=True).save(name)
    monkeypatch.setenv("RUNBOOKS_NOTIFICATIONS__BLOCK", f"custom-webhook/{name}")
    market.bars(end=bucket(15))
    _, result = check(quality=False)
    assert result.action == "paused trading" and operations(simulator)["trading_mode"] == "paused"
    assert result.notification is not None and "FAILED" in result.notification
    assert canary not in result.model_dump_json()


# -- regressions of the hostile review -------------------------------------------------------------------------


def test_an_unreadable_hold_record_never_stands_between_stale_data_and_a_pause(market: Market,
                                                                               simulator: httpx.Client) -> None:
    repository = configured_repository_path()
    elsewhere = repository.parent / "elsewhere"
    elsewhere.mkdir(parents=True, exist_ok=True)
    repository.mkdir(parents=True, exist_ok=True)
    (repository / "records").symlink_to(elsewhere)  # the local repository never follows a symlink
    market.bars(end=bucket(25))
    _, result = check(quality=False)
    assert result.action == "paused trading" and operations(simulator)["trading_mode"] == "paused"
    assert any("hold record could not be written" in step for step in result.next_steps)
    market.bars(start=bucket(20), end=bucket())
    _, result = check(quality=False)  # fresh again, but no record of its own pause: it stays paused
    assert result.action == "none" and operations(simulator)["trading_mode"] == "paused"


def test_a_partial_run_never_lifts_the_pause(market: Market, simulator: httpx.Client) -> None:
    market.execute("CREATE TABLE feed2 (ts timestamptz)")
    market.execute("INSERT INTO feed2 VALUES (now() - interval '30 minutes')")
    market.configure({"table": "bars", "group_by": "symbol"}, {"table": "feed2", "loaded_at_field": "ts"})
    market.bars(end=bucket())
    _, result = check(quality=False)
    assert result.action == "paused trading"  # for feed2
    _, result = check(quality=False, tables=["bars"])  # bars is fresh, but feed2 was not looked at
    assert result.action == "none" and "only a full run" in (result.decision.why if result.decision else "")
    assert operations(simulator)["trading_mode"] == "paused"

    market.configure()  # quality gates the default table: a run without it cannot lift a pause either
    market.execute("DELETE FROM bars")
    market.bars(end=bucket())
    market.execute("UPDATE bars SET high = 1 WHERE \"timestamp\" = %s", [bucket(30)])
    simulator.post("/_control/reset")
    _, result = check()
    assert result.action == "paused trading"
    _, result = check(quality=False)
    assert result.action == "none" and operations(simulator)["trading_mode"] == "paused"


def test_a_row_dated_in_the_future_does_not_hide_staleness(market: Market) -> None:
    market.bars(end=bucket(25))
    market.execute("INSERT INTO bars SELECT symbol, \"timestamp\" + interval '30 days', open, high, low, close, "
                   "volume FROM bars WHERE \"timestamp\" = %s", [bucket(25)])
    _, result = check(act=False, quality=False)
    assert result.tables[0].future_rows == 2 and result.worst == "error"
    assert any("in the future" in f.reason for f in result.findings)


def test_a_table_in_a_database_outside_the_inventory_does_not_silence_the_rest(market: Market,
                                                                                simulator: httpx.Client) -> None:
    market.configure({"table": "bars", "group_by": "symbol"}, {"database": "typo_db", "table": "x"})
    market.bars(end=bucket(25))
    state, result = check(quality=False)
    assert {t.key: t.outcome for t in result.tables} == {"bars": "measured", "x": "not_in_inventory"}
    assert result.action == "paused trading" and state.is_failed()


def test_a_suite_that_cannot_run_is_not_bad_data(market: Market, simulator: httpx.Client) -> None:
    market.configure({"table": "bars", "group_by": "symbol", "interval": "5m", "quality": "ohlcv",
                      "columns": {"open": "opn"}})
    market.bars(end=bucket())
    _, result = check()
    assert result.quality[0].status == "could_not_run" and "opn" in (result.quality[0].detail or "")
    assert result.worst == "unknown" and result.action == "none" and posts(simulator) == []


def test_two_runs_at_once_pause_once_and_the_pause_is_lifted_later(market: Market, simulator: httpx.Client,
                                                                  prefect_api: str) -> None:
    stale_end = bucket(25)
    market.bars(end=stale_end)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    procs = [subprocess.Popen([sys.executable, "-m", "runbooks.cli", "run", "data-freshness", "--json", "--param",
                               "quality=false"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
             for _ in range(2)]
    actions = sorted(json.loads(p.communicate(timeout=300)[0])["action"] for p in procs)
    assert actions == ["none", "paused trading"]
    assert posts(simulator) == ["/api/v1/operations/pause"]
    # From the bar after the stale end, not from bucket(20) read now: two runs can take long enough to cross a
    # 5-minute boundary, and the bars would then have a 10-minute gap (quality fails, no resume; seen in CI).
    market.bars(start=stale_end + timedelta(minutes=5), end=bucket())
    _, result = check()
    assert result.action.startswith("resumed") and operations(simulator)["trading_mode"] == "running"


def test_when_the_trading_api_is_down_the_stale_verdict_and_what_to_do_by_hand_remain(
        market: Market, simulator: httpx.Client, webhook: tuple[list[dict[str, Any]], str],
        fast_trading_retries: None) -> None:
    received, _canary = webhook
    market.bars(end=bucket(90))
    simulator.post("/_control/failures", json={"path_prefix": "/api/v1/operations", "status": 503, "count": 50})
    state, result = check(quality=False)
    simulator.post("/_control/failures", json={"path_prefix": "/api/v1/operations", "status": 503, "count": 0})
    assert state.is_failed() and result.worst == "unknown"
    assert any(f.severity == "kill" for f in result.findings)
    assert any("press the kill switch by hand" in step for step in result.next_steps)
    assert "stale for" in (state.message or "")
    # Escalated: on-call hears at once that nobody holds trading (P1), after the API's retries ran out.
    [message] = received
    assert "[P1] INCIDENT: data-freshness: stale data and trading NOT known to be held" in message["text"]
    assert "Press the kill switch by hand now" in message["text"] and "503" in message["text"]
    assert result.notification and result.notification.startswith("notified")


def test_no_changed_at_from_the_platform_means_no_automatic_resume() -> None:
    record = TradingHold(actor="rb:1", mode="paused", changed_at=None, reason="r", at=datetime.now(UTC))
    status = {"trading_mode": "paused", "paused_by": "rb:1"}
    decision = decide([_finding("ok")], status, record)
    assert decision.action == "none" and "changed_at" in decision.why


def test_statements_composed_from_a_shape_equal_statements_composed_one_by_one(market: Market) -> None:
    from runbooks.tasks.freshness import _Composer, freshness_statement

    tables = [MonitoredTable(table="bars"), MonitoredTable(table='we"ird; --', schema="a b", group_by="symbol"),
              MonitoredTable(table="runbooks_table_9c1f", filter="symbol <> 'runbooks_table_9c1f'"),
              MonitoredTable(table="t", loaded_at_expression="created_at + interval '1 hour'", filter="x > 1")]
    with market.connect() as conn:
        compose = _Composer(conn, None)
        for table in tables * 2:
            composed = compose.freshness(table)
            direct = freshness_statement(table, as_of=None).as_bytes(conn)
            assert (composed if isinstance(composed, bytes) else composed.as_bytes(conn)) == direct
