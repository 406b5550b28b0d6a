"""The trading platform's schema (from the seeds' SQL) and a data generator whose size is a parameter."""

from __future__ import annotations

import psycopg
from psycopg import sql

APP_ROLE = "trading_user"

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


def seed(dsn: str, *, size_mb: float) -> dict[str, int]:
    """Create the schema as the application role and fill it with about ``size_mb`` MB of data.

    Returns:
        Rows generated per table.
    """
    target = max(size_mb, 0.1) * 1_000_000
    rows = {
        "ohlcv_usdcop_5m": int(target * 0.50 / _BYTES_PER_ROW["ohlcv"]),
        "trades_history": int(target * 0.40 / _BYTES_PER_ROW["history"]),
        "trades": int(target * 0.10 / _BYTES_PER_ROW["trades"]),
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(APP_ROLE)))
        conn.execute("SET synchronous_commit = off")
        conn.execute(SCHEMA)
        # 5-minute bars ending at the last full bar before now: fresh data for the freshness runbook.
        conn.execute(
            """
            INSERT INTO ohlcv_usdcop_5m ("timestamp", open, high, low, close, volume)
            SELECT ts, o, greatest(o, c) + r * 3, least(o, c) - r * 3, c, (1000 + r * 50000)::bigint
            FROM (
                SELECT date_trunc('hour', now()) + floor(extract(minute FROM now()) / 5) * interval '5 min'
                       - g * interval '5 min' AS ts,
                       3900 + 100 * sin(g / 500.0) AS o, 3900 + 100 * sin(g / 500.0) + (r - 0.5) * 4 AS c, r
                FROM (SELECT g, random() AS r FROM generate_series(0, %(n)s - 1) AS g) gr
            ) bars
            """,
            {"n": rows["ohlcv_usdcop_5m"]},
        )
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
