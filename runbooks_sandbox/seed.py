"""The trading platform's schema (from the seeds' SQL) and a data generator whose size is a parameter."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from runbooks.settings.markets import MarketSettings

APP_ROLE = "trading_user"
BAR = timedelta(minutes=5)
# The seeds' bars table and how it spells its symbol; every other market's bars go to ``ohlcv_<market>_5m``.
SEED_BARS_TABLE = "ohlcv_usdcop_5m"
_SEED_FEEDS = {"usd_cop": (SEED_BARS_TABLE, {"USDCOP": "USD/COP"})}
_BASE_PRICE = {"USD/COP": 3900.0, "BTCUSDT": 65000.0, "ETHUSDT": 3200.0}
# How far back a feeder (or a sandbox brought up again) fills missing bars: a sandbox left down for months does
# not need every bar of its absence.
CATCH_UP_LIMIT = timedelta(days=7)


class BarFeed(BaseModel):
    """The bars of one market's symbols: which table, and how each symbol is spelled in it."""

    market: str
    table: str
    symbols: dict[str, str] = Field(description="market symbol -> the value of the table's symbol column")


def bar_feeds(markets: Mapping[str, MarketSettings]) -> list[BarFeed]:
    """One feed per market that lists symbols: USD/COP in the seeds' table, other markets in their own."""
    feeds = []
    for name, market in sorted(markets.items()):
        if not market.symbols:
            continue
        table, spelled = _SEED_FEEDS.get(name, (f"ohlcv_{name.replace('-', '_')}_5m", {}))
        feeds.append(BarFeed(market=name, table=table, symbols={s: spelled.get(s, s) for s in market.symbols}))
    return feeds


def _floor_bar(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return at.replace(minute=at.minute - at.minute % 5, second=0, microsecond=0)


def history_end(market: MarketSettings, name: str, at: datetime) -> datetime:
    """Where seeded history ends: the bar of ``at`` while the market is open (always, for a 24/7 one), else the
    bar of its last close, so that a market closed at night looks as it does after a real session."""
    calendar = market.calendar(name)
    if calendar.is_open(at):
        return _floor_bar(at)
    close = calendar.previous_close(at)
    return _floor_bar(close) if close is not None else _floor_bar(at)


def missing_bar_times(market: MarketSettings, name: str, newest: datetime | None, at: datetime) -> list[datetime]:
    """Bar times after ``newest`` up to the bar of ``at`` that fall in a session of the market (open to close, both
    included), at most ``CATCH_UP_LIMIT`` back: what a feed that ran all along would have written."""
    calendar = market.calendar(name)
    end = _floor_bar(at)
    start = end - CATCH_UP_LIMIT
    if newest is not None:
        start = max(start, _floor_bar(newest) + BAR)
    if market.always_open:
        count = int((end - start) / BAR) + 1
        return [start + i * BAR for i in range(max(count, 0))]
    times: list[datetime] = []
    for session in calendar.sessions(start - BAR, end + BAR):
        tick = max(start, _floor_bar(session.open) + (BAR if _floor_bar(session.open) < session.open else
                                                      timedelta(0)))
        while tick <= min(end, session.close):
            times.append(tick)
            tick += BAR
    return sorted(set(times))

SCHEMA = """
CREATE TABLE ohlcv_usdcop_5m (
    symbol      text        NOT NULL DEFAULT 'USD/COP',
    "timestamp" timestamptz NOT NULL,
    open        numeric(12,4) NOT NULL,
    high        numeric(12,4) NOT NULL,
    low         numeric(12,4) NOT NULL,
    close       numeric(12,4) NOT NULL,
    volume      bigint      NOT NULL,
    PRIMARY KEY (symbol, "timestamp")
);
-- The platform keeps its bars in a TimescaleDB hypertable (seed 001), which always has this time index.
CREATE INDEX ohlcv_usdcop_5m_timestamp ON ohlcv_usdcop_5m ("timestamp" DESC);
CREATE TABLE trades (
    trade_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    symbol      text        NOT NULL,
    side        text        NOT NULL,
    quantity    numeric(18,6) NOT NULL,
    price       numeric(12,4) NOT NULL,
    status      text        NOT NULL,          -- open / closed / cancelled (checked by the integrity runbook)
    signal      text,
    pnl         numeric(14,4),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX trades_created_at ON trades (created_at);
CREATE TABLE positions (
    position_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    symbol        text        NOT NULL,
    quantity      numeric(18,6) NOT NULL,
    entry_price   numeric(12,4),
    current_price numeric(12,4),
    status        text        NOT NULL DEFAULT 'open',
    opened_at     timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE trades_history (
    trade_id    bigint      NOT NULL,
    symbol      text        NOT NULL,
    signal      text        NOT NULL,
    side        text        NOT NULL,
    quantity    numeric(18,6) NOT NULL,
    price       numeric(12,4) NOT NULL,
    pnl         numeric(14,4) NOT NULL,
    model_id    text        NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (trade_id)
);
CREATE INDEX trades_history_created_at ON trades_history (created_at);
CREATE TABLE system_config (
    key         text PRIMARY KEY,
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE risk_state (
    id                        int PRIMARY KEY DEFAULT 1,
    daily_pnl                 numeric(14,4) NOT NULL DEFAULT 0,
    max_drawdown              numeric(8,4)  NOT NULL DEFAULT 0,
    circuit_breaker_triggered boolean       NOT NULL DEFAULT false,
    updated_at                timestamptz   NOT NULL DEFAULT now()
);
INSERT INTO system_config (key, value) VALUES ('trading_mode', 'live'), ('max_position_size', '0.25');
INSERT INTO risk_state DEFAULT VALUES;
INSERT INTO positions (symbol, quantity, entry_price, current_price, status) VALUES
    ('USD/COP', 100000, 3950.1200, 3961.4000, 'open'),
    ('USD/COP', -25000, 3972.0000, 3961.4000, 'open'),
    ('EUR/COP', 40000, 4290.5500, 4301.0000, 'closed');
"""

# Bytes per row on disk including indexes, measured on PostgreSQL 15; used only to size the generator.
_BYTES_PER_ROW = {"ohlcv": 150, "history": 190, "trades": 160}


# The data-corruption checks of seed 002, written into the sandbox's config as trading_db's integrity checks.
SEED_CHECKS: list[dict[str, str | int]] = [
    {"name": "positions with NULL entry_price or current_price",
     "sql": "SELECT count(*) FROM positions WHERE entry_price IS NULL OR current_price IS NULL", "expect": 0},
    {"name": "trades with a status outside open/closed/cancelled",
     "sql": "SELECT count(*) FROM trades WHERE status NOT IN ('open', 'closed', 'cancelled')", "expect": 0},
    {"name": "open position totals per symbol",
     "sql": "SELECT symbol, SUM(quantity)::text, SUM(quantity * entry_price)::text FROM positions"
            " WHERE status = 'open' GROUP BY symbol ORDER BY symbol"},
]


def create_database(admin_dsn: str, *, dbname: str, app_password: str) -> None:
    """Create the application role and an empty database it owns (idempotent)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(APP_ROLE), sql.Literal(app_password)))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(APP_ROLE)))


def seed(dsn: str, *, size_mb: float, markets: Mapping[str, MarketSettings] | None = None,
         at: datetime | None = None) -> dict[str, int]:
    """Create the schema as the application role and fill it with about ``size_mb`` MB of data.

    Bars end where each market's feed would have stopped (``history_end``): now for an open or 24/7 market, the
    last close for a closed one. Without ``markets``, the USD/COP bars end now (the suite's fresh data).

    Returns:
        Rows generated per table.
    """
    at = at or datetime.now(UTC)
    feeds = [f for f in bar_feeds(markets or {}) if f.table != SEED_BARS_TABLE]
    seed_market = (markets or {}).get("usd_cop")
    symbols = 1 + sum(len(f.symbols) for f in feeds)
    target = max(size_mb, 0.1) * 1_000_000
    bars = int(target * 0.50 / _BYTES_PER_ROW["ohlcv"])
    rows = {
        SEED_BARS_TABLE: bars // symbols + bars % symbols,
        "trades_history": int(target * 0.40 / _BYTES_PER_ROW["history"]),
        "trades": int(target * 0.10 / _BYTES_PER_ROW["trades"]),
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(APP_ROLE)))
        conn.execute("SET synchronous_commit = off")
        conn.execute(SCHEMA)
        end = history_end(seed_market, "usd_cop", at) if seed_market else _floor_bar(at)
        _insert_history(conn, SEED_BARS_TABLE, "USD/COP", end=end, count=rows[SEED_BARS_TABLE])
        for feed in feeds:
            _create_bars_table(conn, feed.table)
            end = history_end((markets or {})[feed.market], feed.market, at)
            for spelled in feed.symbols.values():
                _insert_history(conn, feed.table, spelled, end=end, count=bars // symbols)
            rows[feed.table] = len(feed.symbols) * (bars // symbols)
        conn.execute(
            """
            INSERT INTO trades_history (trade_id, symbol, signal, side, quantity, price, pnl, model_id, created_at)
            SELECT g, 'USD/COP', (ARRAY['long','short','flat'])[1 + mod(g, 3)],
                   CASE WHEN mod(g, 2) = 0 THEN 'buy' ELSE 'sell' END,
                   round((1000 + random() * 100000)::numeric, 2), round((3800 + random() * 300)::numeric, 4),
                   round(((random() - 0.48) * 2000)::numeric, 4),
                   (ARRAY['ppo_primary_v3','ppo_primary_v4','ppo_shadow_v1'])[1 + mod(g, 3)],
                   now() - g * interval '37 seconds'
            FROM generate_series(1, %(n)s) AS g
            """,
            {"n": rows["trades_history"]},
        )
        conn.execute(
            """
            INSERT INTO trades (symbol, side, quantity, price, status, signal, pnl, created_at)
            SELECT 'USD/COP', CASE WHEN mod(g, 2) = 0 THEN 'buy' ELSE 'sell' END,
                   round((1000 + random() * 100000)::numeric, 2), round((3800 + random() * 300)::numeric, 4),
                   (ARRAY['open','closed','closed','closed','cancelled'])[1 + mod(g, 5)],
                   (ARRAY['long','short','flat'])[1 + mod(g, 3)], round(((random() - 0.5) * 1000)::numeric, 4),
                   now() - g * interval '61 seconds'
            FROM generate_series(1, %(n)s) AS g
            """,
            {"n": rows["trades"]},
        )
        conn.execute("ANALYZE")
    rows.update({"positions": 3, "system_config": 2, "risk_state": 1})
    return rows


def _create_bars_table(conn: psycopg.Connection, table: str) -> None:
    """A bars table shaped like the seeds' (symbol and bar time as its key, a time index)."""
    conn.execute(sql.SQL(
        """
        CREATE TABLE IF NOT EXISTS {table} (
            symbol      text        NOT NULL,
            "timestamp" timestamptz NOT NULL,
            open        numeric(14,4) NOT NULL,
            high        numeric(14,4) NOT NULL,
            low         numeric(14,4) NOT NULL,
            close       numeric(14,4) NOT NULL,
            volume      bigint      NOT NULL,
            PRIMARY KEY (symbol, "timestamp")
        );
        CREATE INDEX IF NOT EXISTS {index} ON {table} ("timestamp" DESC);
        """).format(table=sql.Identifier(table), index=sql.Identifier(f"{table}_timestamp")))


def _insert_history(conn: psycopg.Connection, table: str, symbol: str, *, end: datetime, count: int) -> None:
    """``count`` consecutive 5-minute bars of ``symbol`` ending at ``end``: a slow wave around its base price."""
    base = _BASE_PRICE.get(symbol, 100.0)
    conn.execute(sql.SQL(
        """
        INSERT INTO {table} (symbol, "timestamp", open, high, low, close, volume)
        SELECT %(symbol)s, ts, o, greatest(o, c) + r * %(tick)s, least(o, c) - r * %(tick)s, c,
               (1000 + r * 50000)::bigint
        FROM (
            SELECT %(end)s::timestamptz - g * interval '5 min' AS ts,
                   %(base)s * (1 + 0.025 * sin(g / 500.0)) AS o,
                   %(base)s * (1 + 0.025 * sin(g / 500.0)) + (r - 0.5) * 4 * %(tick)s AS c, r
            FROM (SELECT g, random() AS r FROM generate_series(0, %(n)s - 1) AS g) gr
        ) bars
        """).format(table=sql.Identifier(table)),
        {"symbol": symbol, "end": end, "n": count, "base": base, "tick": base * 3 / 3900})


def catch_up_bars(dsn: str) -> int:
    """The market-data feed ticking: append the 5-minute bars since the newest one, up to the last full bar before
    now, for every symbol (flat bars at the last close, so the quality suite still holds). A sandbox seeded an
    hour ago is fresh again for the freshness runbook and the DR drill. Returns the bars added."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(APP_ROLE)))
        cur = conn.execute(
            """
            INSERT INTO ohlcv_usdcop_5m (symbol, "timestamp", open, high, low, close, volume)
            SELECT last.symbol, ts, last.close, last.close, last.close, last.close, greatest(last.volume, 1)
            FROM (SELECT DISTINCT ON (symbol) symbol, "timestamp", close, volume FROM ohlcv_usdcop_5m
                  ORDER BY symbol, "timestamp" DESC) last,
                 generate_series(last."timestamp" + interval '5 min',
                                 date_trunc('hour', now()) + floor(extract(minute FROM now()) / 5) * interval '5 min',
                                 interval '5 min') AS ts
            ON CONFLICT DO NOTHING
            """)
        return cur.rowcount


def feed_bars(dsn: str, markets: Mapping[str, MarketSettings], *, at: datetime | None = None,
              open_only: bool = True) -> dict[str, int]:
    """The sandbox's market-data feed, one tick: for every symbol of a market open at ``at`` (every tick for a 24/7
    one), write the bars missing since its newest one up to the bar of ``at`` (a small random walk from its last
    close). Idempotent: a bar already there is left as it is. ``open_only=False`` also catches a closed market up
    to its last close (a sandbox brought up again). Returns the bars written per market symbol."""
    at = at or datetime.now(UTC)
    written: dict[str, int] = {}
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(APP_ROLE)))
        for feed in bar_feeds(markets):
            market = markets[feed.market]
            if open_only and not market.calendar(feed.market).is_open(at):
                continue
            for symbol, spelled in feed.symbols.items():
                last = conn.execute(sql.SQL('SELECT "timestamp", close FROM {} WHERE symbol = %s '
                                            'ORDER BY "timestamp" DESC LIMIT 1').format(sql.Identifier(feed.table)),
                                    [spelled]).fetchone()
                newest, price = (last[0], float(last[1])) if last else (None, _BASE_PRICE.get(spelled, 100.0))
                rows = []
                for ts in missing_bar_times(market, feed.market, newest, at):
                    close = round(price * (1 + random.gauss(0, 0.0004)), 4)
                    spread = abs(close - price) + price * 0.0002 * random.random()
                    rows.append((spelled, ts, price, max(price, close) + spread / 2, min(price, close) - spread / 2,
                                 close, random.randint(1000, 50000)))
                    price = close
                if rows:
                    with conn.cursor() as cur:
                        cur.executemany(sql.SQL(
                            'INSERT INTO {} (symbol, "timestamp", open, high, low, close, volume) '
                            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING").format(
                                sql.Identifier(feed.table)), rows)
                written[symbol] = len(rows)
    return written
