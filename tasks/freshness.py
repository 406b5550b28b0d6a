"""Tasks that measure data freshness in the database and read the platform's own view of it.

All the monitored tables of one database are measured in one network round trip: one statement per table (and per
volume comparison), sent together in a psycopg pipeline. A statement that fails (a missing table, a missing column)
fails alone: the statements after it are sent again in the next round trip. Names are quoted as identifiers; the
session is read-only with a statement timeout, so an operator's ``filter`` cannot write or hang.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from runbooks.adapters.postgres import connect, database_errors
from runbooks.core.market_time import MarketCalendar
from runbooks.core.redact import scrub
from runbooks.decisions.freshness import (
    MarketView,
    PlatformView,
    TableFreshness,
    VolumeCheck,
    comparison_buckets,
    judge_volume,
    summarize_rows,
)
from runbooks.settings import ApiSettings, DatabaseSettings, FreshnessSettings, MonitoredTable
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task
from runbooks.tasks.trading_api import TRADING_API_RETRY, trading_api_attempt

_ORIGIN = sql.SQL("'2000-01-01 00:00:00+00'::timestamptz")

# SQLSTATE -> outcome of a freshness statement that failed alone.
_OUTCOMES = {"42P01": "missing_table", "3F000": "missing_table", "42703": "missing_column",
             "42501": "no_access", "42883": "not_a_timestamp", "42804": "not_a_timestamp",
             "42846": "not_a_timestamp"}


def _loaded_at(table: MonitoredTable) -> sql.Composable:
    if table.loaded_at_field is not None:
        return sql.Identifier(table.loaded_at_field)
    return sql.SQL("({})").format(sql.SQL(table.loaded_at_expression or ""))


def where_clause(table: MonitoredTable, *conditions: sql.Composable) -> sql.Composable:
    parts = list(conditions) + ([sql.SQL("({})").format(sql.SQL(table.filter))] if table.filter else [])
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts) if parts else sql.SQL("")


def as_of_sql(as_of: datetime | None) -> sql.Composable:
    return sql.Literal(as_of) if as_of is not None else sql.SQL("now()")


FUTURE_SKEW = timedelta(minutes=1)  # clock skew tolerated before a row counts as dated in the future


def freshness_statement(table: MonitoredTable, *, as_of: datetime | None, grouped: bool = True) -> sql.Composed:
    """``(group, newest, age in seconds, rows dated in the future)`` per group, or one row for the whole table.
    Rows dated more than ``FUTURE_SKEW`` ahead are counted apart and never taken as the newest: a single row with
    a wrong clock would otherwise make a dead feed look fresh."""
    ts, now = _loaded_at(table), as_of_sql(as_of)
    source = sql.Identifier(table.schema_, table.table)
    horizon = sql.SQL("{now} + {skew}::interval").format(now=now, skew=sql.Literal(FUTURE_SKEW))
    if grouped and table.group_by:
        window = sql.SQL("{ts} >= {now} - {w}::interval").format(ts=ts, now=now, w=sql.Literal(table.group_window))
        newest = sql.SQL("max({ts}) FILTER (WHERE {ts} <= {h})").format(ts=ts, h=horizon)
        return sql.SQL(
            "SELECT {g}::text, {newest}::timestamptz, extract(epoch FROM ({now} - {newest}))::float8, "
            "count(*) FILTER (WHERE {ts} > {h}) FROM {t}{where} GROUP BY 1"
        ).format(g=sql.Identifier(table.group_by), newest=newest, now=now, ts=ts, h=horizon, t=source,
                 where=where_clause(table, window))
    # max() under the horizon is an index lookup; whether any row lies beyond it is one more (EXISTS, not a count:
    # a count would scan every future row of a table whose clock is wrong).
    past = sql.SQL("{ts} <= {h}").format(ts=ts, h=horizon)
    future = sql.SQL("{ts} > {h}").format(ts=ts, h=horizon)
    return sql.SQL(
        "SELECT NULL::text, max({ts})::timestamptz, extract(epoch FROM ({now} - max({ts})))::float8, "
        "EXISTS (SELECT FROM {t}{future})::int FROM {t}{past}"
    ).format(now=now, ts=ts, t=source, past=where_clause(table, past), future=where_clause(table, future))


def latest_bucket_statement(table: MonitoredTable, *, as_of: datetime | None = None) -> sql.Composed:
    """The start of the latest complete interval: the one before the newest row's (rows dated in the future
    ignored). Its sessions are found in Python, then ``volume_statement`` counts them."""
    assert table.interval is not None
    ts, iv = _loaded_at(table), sql.Literal(table.interval)
    past = sql.SQL("{ts} <= {now} + {skew}::interval").format(ts=ts, now=as_of_sql(as_of),
                                                               skew=sql.Literal(FUTURE_SKEW))
    return sql.SQL("SELECT date_bin({iv}, max({ts})::timestamptz, {origin}) - {iv} FROM {t}{past}").format(
        iv=iv, ts=ts, origin=_ORIGIN, t=sql.Identifier(table.schema_, table.table), past=where_clause(table, past))


def volume_statement(table: MonitoredTable, *, starts: Sequence[datetime]) -> sql.Composed:
    """Rows in the interval at each of ``starts`` (the latest complete one first, then the same interval on
    previous sessions or days): ``(index, interval start, rows)``. Each count is an index range scan."""
    assert table.interval is not None
    ts, iv = _loaded_at(table), sql.Literal(table.interval)
    window = [sql.SQL("{ts} >= x.start").format(ts=ts), sql.SQL("{ts} < x.start + {iv}").format(ts=ts, iv=iv)]
    return sql.SQL(
        "SELECT x.k - 1, x.start, (SELECT count(*) FROM {t}{where}) "
        "FROM unnest({starts}::timestamptz[]) WITH ORDINALITY AS x(start, k) ORDER BY x.k"
    ).format(t=sql.Identifier(table.schema_, table.table), where=where_clause(table, *window),
             starts=sql.Literal(list(starts)))


Rows = list[tuple[Any, ...]]


def _pipelined(conn: psycopg.Connection, statements: Sequence[sql.Composed | bytes]) -> list[Rows | psycopg.Error]:
    """Run every statement in as few round trips as possible: one, unless some fail. In a pipeline the first error
    aborts the statements queued after it; those are sent again (they did not run), the failed one is not."""
    results: list[Rows | psycopg.Error | None] = [None] * len(statements)
    pending = list(range(len(statements)))
    while pending:
        cursors: list[tuple[int, psycopg.Cursor[Any]]] = []
        error: psycopg.Error | None = None
        try:
            with conn.pipeline():
                for i in pending:
                    cursor = conn.cursor()
                    try:
                        cursor.execute(statements[i], prepare=False)
                    except psycopg.Error as exc:  # an earlier statement's error, read early: the rest is aborted
                        error = exc
                        break
                    cursors.append((i, cursor))
        except psycopg.Error as exc:  # the first error, raised when the pipeline syncs on leaving
            if conn.broken:
                raise  # the connection, not a statement: the task's retry policy decides
            error = error or exc
        retry: list[int] = []
        for i, cursor in cursors:
            if cursor.pgresult is not None:
                results[i] = cursor.fetchall()
            elif error is not None:
                results[i], error = error, None  # the first statement without a result is the one that failed
            else:
                retry.append(i)
        queued = {i for i, _ in cursors}
        retry += [i for i in pending if i not in queued]
        if error is not None or retry == pending:  # an error we cannot place: give up rather than loop
            for i in retry:
                results[i] = error or psycopg.OperationalError("statement not run")
            retry = []
        pending = retry
    return [r if r is not None else [] for r in results]


class _Composer:
    """Freshness statements for many tables of the same shape: composed once per shape with stand-in names, then
    the stand-in (itself quoted by ``sql.Identifier``) is replaced by each table's ``sql.Identifier`` bytes.
    Composing a thousand statements one by one costs about as much as running them."""

    _STAND_IN = ("runbooks_schema_9c1f", "runbooks_table_9c1f")

    def __init__(self, conn: psycopg.Connection, as_of: datetime | None) -> None:
        self.conn, self.as_of = conn, as_of
        self._templates: dict[str, bytes] = {}
        self._marker = sql.Identifier(*self._STAND_IN).as_bytes(conn)

    def freshness(self, table: MonitoredTable) -> sql.Composed | bytes:
        own_sql = f"{table.filter or ''}{table.loaded_at_expression or ''}"
        if any(name in own_sql for name in self._STAND_IN):
            return freshness_statement(table, as_of=self.as_of)  # never substitute inside the operator's SQL
        shape = table.model_copy(update={"schema_": self._STAND_IN[0], "table": self._STAND_IN[1], "label": None,
                                         "database": "x"})
        key = shape.model_dump_json()
        if (template := self._templates.get(key)) is None:
            template = self._templates[key] = freshness_statement(shape, as_of=self.as_of).as_bytes(self.conn)
        return template.replace(self._marker, sql.Identifier(table.schema_, table.table).as_bytes(self.conn))


def read_only_params(database: DatabaseSettings, timeout_seconds: float) -> dict[str, Any]:
    """Connection parameters for a read-only UTC session with a statement timeout (plain writes are refused)."""
    params = database.conninfo()
    options = f"-c statement_timeout={int(timeout_seconds * 1000)} -c TimeZone=UTC -c default_transaction_read_only=on"
    params["options"] = f"{params.get('options', '')} {options}".strip()
    params.setdefault("application_name", "runbooks-data-freshness")
    return params


def _failed(exc: psycopg.Error) -> tuple[str, str]:
    text = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return _OUTCOMES.get(exc.sqlstate or "", "failed"), text


@step_task("measure-freshness", **TRANSIENT_RETRY)
def measure_freshness(*, database_name: str, database: DatabaseSettings, tables: list[MonitoredTable],
                      settings: FreshnessSettings, as_of: datetime | None = None,
                      calendars: Mapping[str, MarketCalendar] | None = None,
                      ) -> tuple[list[TableFreshness], list[VolumeCheck]]:
    """Freshness (and the volume comparison, where an interval is set) of every monitored table of one database.

    Args:
        calendars: the markets' calendars by name; a table whose ``market`` is among them is measured in market
            time (open-market age, its market's state at ``as_of`` or now, volume against previous sessions).
            None: wall clock for every table.

    Returns:
        One ``TableFreshness`` per table, in order, and one ``VolumeCheck`` per table with an interval.
    """
    def calendar_of(table: MonitoredTable) -> MarketCalendar | None:
        return (calendars or {}).get(table.market) if table.market else None

    with_volume = [t for t in tables if t.interval is not None]
    where = f"measuring freshness in {database_name!r}"
    params = read_only_params(database, settings.statement_timeout_seconds)
    with connect(params, where=where, autocommit=True) as conn, database_errors(where):
        compose = _Composer(conn, as_of)
        statements = [compose.freshness(t) for t in tables]
        statements += [latest_bucket_statement(t, as_of=as_of) for t in with_volume]
        results = _pipelined(conn, statements)
        # A grouped table with no group in its window: is it empty, or is every group older than the window?
        regroup = [i for i, t in enumerate(tables) if t.group_by and isinstance(results[i], list)
                   and not any(row[1] is not None for row in results[i])]  # type: ignore[union-attr]
        if regroup:
            again = _pipelined(conn, [freshness_statement(tables[i], as_of=as_of, grouped=False) for i in regroup])
            for i, rows in zip(regroup, again, strict=True):
                results[i] = rows
        # The intervals to compare depend on the latest one's session: a second round trip counts them.
        buckets: list[tuple[MonitoredTable, datetime, list[datetime], str]] = []
        for table, rows in zip(with_volume, results[len(tables):], strict=True):
            if isinstance(rows, list) and rows and rows[0][0] is not None:
                assert table.interval is not None
                starts, basis = comparison_buckets(rows[0][0], interval=table.interval,
                                                   count=settings.volume_history_days, calendar=calendar_of(table))
                buckets.append((table, rows[0][0], starts, basis))
        counted = _pipelined(conn, [volume_statement(t, starts=starts) for t, _, starts, _ in buckets])
    now = as_of or datetime.now(UTC)
    measured: list[TableFreshness] = []
    for table, rows in zip(tables, results, strict=False):
        calendar = calendar_of(table)
        if isinstance(rows, psycopg.Error):
            outcome, text = _failed(rows)
            fresh = TableFreshness(key=table.key, database=table.database, outcome=outcome,  # type: ignore[arg-type]
                                   detail=text)
        else:
            fresh = summarize_rows(table, rows, calendar=calendar)
        if calendar is not None:
            fresh.market = MarketView.of(calendar, now)
        measured.append(fresh)
    volumes: list[VolumeCheck] = []
    counted_of = {t.key: (start, basis, rows) for (t, start, _, basis), rows in zip(buckets, counted, strict=True)}
    for table, latest in zip(with_volume, results[len(tables):], strict=True):
        start, basis, rows = counted_of.get(table.key, (None, "days", latest))
        if isinstance(rows, psycopg.Error):
            volumes.append(VolumeCheck(key=table.key, verdict=f"could not count: {_failed(rows)[1]}"))
            continue
        counts = {int(r[0]): int(r[2]) for r in rows} if start is not None else {}
        volumes.append(judge_volume(counts, key=table.key, bucket_start=start, settings=settings, basis=basis))
    return measured, volumes


@step_task("read-platform-data-status", **TRADING_API_RETRY)
def read_platform_data_status(*, api: ApiSettings | None, database_age_seconds: float | None,
                              tolerance: timedelta, error_after: timedelta) -> PlatformView:
    """The platform's own view (``GET /api/v1/data/status``) beside the database's: they disagree when the ages
    differ by more than ``tolerance`` or one calls the data fresh while the other calls it stale."""
    with trading_api_attempt(api) as client:  # bounded by [trading_api] retry_budget_seconds, retries included
        body = client.data_status()
    view = PlatformView(available=True, status=str(body.get("status")), last_bar_at=body.get("last_bar_at"),
                        staleness_seconds=_float(body.get("staleness_seconds")),
                        database_age_seconds=database_age_seconds)
    if view.staleness_seconds is None or database_age_seconds is None:
        view.detail = "nothing to compare"
        return view
    gap = abs(view.staleness_seconds - database_age_seconds)
    ours_stale = database_age_seconds > error_after.total_seconds()
    theirs_stale = view.status == "stale" if view.status in ("fresh", "stale") else ours_stale
    view.disagrees = gap > tolerance.total_seconds() or ours_stale != theirs_stale
    if view.disagrees:
        view.detail = (f"the platform says {view.status} ({view.staleness_seconds:.0f} s), the database says "
                       f"{database_age_seconds:.0f} s")
    return view


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
