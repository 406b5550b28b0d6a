"""The sandbox's market moves: its own feeder process writes a bar per symbol while the symbol's market is open (24/7
symbols always), stops and resumes on the simulator's control (a dead feed on demand), and writes nothing for a
market that is closed; seeded history ends at each market's last close (now for an open one), and the config
carries the markets and a freshness table per bars table. Checked on a sandbox of its own with a one-second tick;
the waits follow the feeder's recorded ticks, never the clock."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from runbooks.settings import load_settings
from runbooks.settings.markets import MarketSettings
from runbooks_sandbox import Sandbox, SandboxState
from runbooks_sandbox.environment import DATABASE
from runbooks_sandbox.feeder import read_status

pytestmark = pytest.mark.slow


def _closed_now() -> MarketSettings:
    """A market whose venue is closed yesterday, today and tomorrow (UTC): closed whenever the test runs."""
    today = datetime.now(UTC).date()
    return MarketSettings(timezone="UTC", days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                          extra_closed=[today + timedelta(days=d) for d in (-1, 0, 1)], symbols=["SHUT"])


@pytest.fixture(scope="module")
def box() -> Iterator[tuple[Sandbox, SandboxState]]:
    # Not under pytest's 0700 tmp dirs: the cluster runs as the postgres OS user when we are root.
    parent = Path(tempfile.mkdtemp(prefix="runbooks-sandbox-feed-"))
    parent.chmod(0o755)
    sandbox = Sandbox(parent / "box")
    markets = {"crypto": MarketSettings(always_open=True, symbols=["BTCUSDT", "ETHUSDT"]), "shut": _closed_now()}
    try:
        state = sandbox.up(size_mb=0.5, s3=False, prefect=False, markets=markets, feed_interval=1,
                           redis=False, pm2=False,
                           progress=lambda _m: None)
        yield sandbox, state
    finally:
        sandbox.down()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def api(box: tuple[Sandbox, SandboxState]) -> Iterator[httpx.Client]:
    _, state = box
    with httpx.Client(base_url=state.simulator_url or "", timeout=10,
                      headers={"Authorization": f"Bearer {state.simulator_token}"}) as client:
        yield client
        client.post("/_control/feed", json={"running": True}).raise_for_status()


def _dsn(state: SandboxState) -> str:
    return state.cluster().dsn(DATABASE)


def _query(state: SandboxState, query: str, *params: Any) -> Any:
    with psycopg.connect(_dsn(state), autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None


def _wait(what: str, condition: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def _ticks(state: SandboxState) -> int:
    status = read_status(state.feed_dir)
    return status.ticks if status else 0


def _after_ticks(state: SandboxState, count: int) -> None:
    """Wait until the feeder has completed ``count`` more ticks (each one wrote, or decided not to, before it)."""
    start = _ticks(state)
    _wait(f"{count} feeder ticks", lambda: _ticks(state) >= start + count)


def _recent(state: SandboxState, table: str, symbol: str, since: datetime) -> int:
    return int(_query(state, f'SELECT count(*) FROM {table} WHERE symbol = %s AND "timestamp" > %s', symbol, since))


def test_the_config_carries_the_markets_and_a_freshness_table_per_bars_table(
        box: tuple[Sandbox, SandboxState], monkeypatch: pytest.MonkeyPatch) -> None:
    _, state = box
    monkeypatch.setenv("RUNBOOKS_CONFIG", state.config_path)
    settings = load_settings()
    assert set(settings.markets) == {"crypto", "shut"}
    assert settings.markets["crypto"].always_open and settings.markets["shut"].extra_closed == state.markets[
        "shut"].extra_closed
    tables = {t.table: t.market for t in settings.freshness.tables}
    assert tables == {"ohlcv_usdcop_5m": None, "ohlcv_crypto_5m": "crypto", "ohlcv_shut_5m": "shut"}


def test_history_ends_now_for_a_24_7_market_and_at_the_last_close_of_a_closed_one(
        box: tuple[Sandbox, SandboxState]) -> None:
    _, state = box
    close = state.markets["shut"].calendar("shut").previous_close(state.created_at)
    assert close is not None
    last_shut = _query(state, 'SELECT max("timestamp") FROM ohlcv_shut_5m')
    assert close - timedelta(minutes=5) < last_shut <= close
    assert _query(state, "SELECT count(DISTINCT symbol) FROM ohlcv_crypto_5m") == 2
    assert _query(state, 'SELECT max("timestamp") FROM ohlcv_crypto_5m') > state.created_at - timedelta(minutes=5)


def test_bars_arrive_for_a_24_7_symbol_stop_with_the_feed_and_come_again_on_resume(
        box: tuple[Sandbox, SandboxState], api: httpx.Client) -> None:
    _, state = box
    since = datetime.now(UTC) - timedelta(minutes=30)

    def drop_recent() -> None:
        with psycopg.connect(_dsn(state), autocommit=True) as conn:
            conn.execute('DELETE FROM ohlcv_crypto_5m WHERE "timestamp" > %s', [since])

    drop_recent()
    _wait("the feeder to write the missing BTCUSDT bars", lambda: _recent(state, "ohlcv_crypto_5m", "BTCUSDT",
                                                                          since) >= 6)
    assert _recent(state, "ohlcv_crypto_5m", "ETHUSDT", since) >= 6

    stopped = api.post("/_control/feed", json={"running": False})
    assert stopped.status_code == 200 and stopped.json()["running"] is False
    _wait("a tick that saw the stop", lambda: (s := read_status(state.feed_dir)) is not None and not s.running)
    drop_recent()
    _after_ticks(state, 3)
    assert _recent(state, "ohlcv_crypto_5m", "BTCUSDT", since) == 0, "a stopped feed wrote bars"
    assert api.get("/_control/feed").json()["last_tick"]["running"] is False

    assert api.post("/_control/feed", json={"running": True}).json()["running"] is True
    _wait("bars again after resume", lambda: _recent(state, "ohlcv_crypto_5m", "BTCUSDT", since) >= 6)


def test_a_market_closed_now_gets_no_bars(box: tuple[Sandbox, SandboxState]) -> None:
    _, state = box
    before = _query(state, "SELECT count(*) FROM ohlcv_shut_5m")
    _after_ticks(state, 3)
    assert _query(state, "SELECT count(*) FROM ohlcv_shut_5m") == before
    status = read_status(state.feed_dir)
    assert status is not None and status.markets["shut"]["open"] is False
    assert status.markets["shut"]["kind"] == "venue-closed" and status.markets["crypto"]["open"] is True


def test_the_simulator_reset_resumes_a_dead_feed(box: tuple[Sandbox, SandboxState], api: httpx.Client) -> None:
    sandbox, state = box
    assert sandbox.feed(running=False)
    assert api.get("/_control/feed").json()["running"] is False
    assert sandbox.status()["feed"]["running"] is False
    api.post("/_control/reset").raise_for_status()
    assert api.get("/_control/feed").json()["running"] is True


def test_the_feeder_gets_its_password_from_its_environment_not_its_command_line(
        box: tuple[Sandbox, SandboxState]) -> None:
    sandbox, state = box
    pid = state.pids["feeder"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert "runbooks_sandbox.feeder" in cmdline
    assert state.app_password not in cmdline and state.superuser_password not in cmdline
    assert (sandbox.root / "feeder.log").stat().st_mode & 0o077 == 0
    feed = sandbox.status()["feed"]
    assert feed["feeder"] is True and feed["markets"]["shut"]["open"] is False and feed["bars_written"] > 0


def test_the_seeds_usd_cop_table_without_its_market_still_ends_now(box: tuple[Sandbox, SandboxState]) -> None:
    _, state = box
    newest = _query(state, 'SELECT max("timestamp") FROM ohlcv_usdcop_5m')
    assert newest > state.created_at - timedelta(minutes=5)
    assert _query(state, "SELECT count(DISTINCT symbol) FROM ohlcv_usdcop_5m") == 1


def test_up_again_catches_a_running_sandbox_up_even_with_its_feed_stopped(box: tuple[Sandbox, SandboxState]) -> None:
    sandbox, state = box
    since = datetime.now(UTC) - timedelta(minutes=30)
    assert sandbox.feed(running=False)
    try:
        _wait("a tick that saw the stop", lambda: (s := read_status(state.feed_dir)) is not None and not s.running)
        with psycopg.connect(_dsn(state), autocommit=True) as conn:
            conn.execute('DELETE FROM ohlcv_crypto_5m WHERE "timestamp" > %s', [since])
        said: list[str] = []
        again = sandbox.up(progress=said.append)
        assert again.postgres_port == state.postgres_port and again.pids == state.pids
        assert any("market-data bars added" in line for line in said), said
        assert _recent(state, "ohlcv_crypto_5m", "ETHUSDT", since) >= 6
        assert _query(state, "SELECT count(*) FROM ohlcv_shut_5m WHERE \"timestamp\" > %s", since) == 0
    finally:
        sandbox.feed(running=True)
