"""Data-quality tasks: Great Expectations (GX Core 1.x) suites on the recent window of a monitored table, every
metric computed in SQL by PostgreSQL (only a few sample rows come back), plus the database's configured integrity
checks. GX is imported here, inside the task, and nowhere else: it costs seconds and hundreds of MB to import."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from prefect import get_run_logger
from psycopg import sql

from runbooks.adapters.postgres import connect, database_errors, run_checks
from runbooks.core.redact import scrub
from runbooks.decisions.freshness import ExpectationFailure, QualityResult
from runbooks.settings import DatabaseSettings, IntegrityCheck, MonitoredTable
from runbooks.tasks.freshness import as_of_sql, read_only_params, where_clause
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task

SAMPLES = 5


def window_query(table: MonitoredTable, *, lookback: timedelta, as_of: datetime | None) -> sql.Composed:
    """The rows of the last ``lookback`` (an index range scan on the timestamp): the only rows a suite reads."""
    ts = sql.Identifier(table.loaded_at_field or "")
    since = sql.SQL("{ts} >= {now} - {lb}::interval").format(ts=ts, now=as_of_sql(as_of), lb=sql.Literal(lookback))
    return sql.SQL("SELECT * FROM {t}{where}").format(t=sql.Identifier(table.schema_, table.table),
                                                     where=where_clause(table, since))


def ohlcv_suite(table: MonitoredTable) -> list[Any]:
    """Seed 004's bar invariants: prices present, low <= open, close <= high, volume > 0, one bar per (symbol,
    timestamp), no gap longer than one interval per symbol."""
    import great_expectations as gx

    E = gx.expectations
    c, ts = table.columns, table.loaded_at_field or ""
    suite: list[Any] = [E.ExpectColumnValuesToNotBeNull(column=col) for col in (c.open, c.high, c.low, c.close,
                                                                                 c.volume)]
    for a, b in ((c.high, c.low), (c.open, c.low), (c.high, c.open), (c.close, c.low), (c.high, c.close)):
        suite.append(E.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B=b, or_equal=True,
                                                               description=f"{a} >= {b}"))
    suite.append(E.ExpectColumnValuesToBeBetween(column=c.volume, min_value=0, strict_min=True,
                                                 description=f"{c.volume} > 0"))
    suite.append(E.ExpectCompoundColumnsToBeUnique(column_list=[c.symbol, ts],
                                                   description=f"one bar per ({c.symbol}, {ts})"))
    if table.interval is not None:
        gaps = sql.SQL(
            "SELECT {s}, {ts}, gap::text FROM (SELECT {s}, {ts}, "
            "{ts} - lag({ts}) OVER (PARTITION BY {s} ORDER BY {ts}) AS gap FROM {{batch}}) bars "
            "WHERE gap > {iv}::interval ORDER BY {ts} DESC"
        ).format(s=sql.Identifier(c.symbol), ts=sql.Identifier(ts), iv=sql.Literal(table.interval))
        suite.append(E.UnexpectedRowsExpectation(unexpected_rows_query=gaps.as_string(None),
                                                 description=f"no gap longer than {table.interval} per {c.symbol}"))
    return suite


def _name(result: Any) -> str:
    config = result.expectation_config
    if config.description:
        return str(config.description)
    column = config.kwargs.get("column")
    return f"{config.type}({column})" if column else str(config.type)


def _raised(info: Any) -> str | None:
    """The first line of the exception GX caught while computing a result (a missing column, a statement
    timeout), or None. ``exception_info`` is flat, or keyed by metric."""
    if not isinstance(info, dict):
        return None
    candidates = [info] + [v for v in info.values() if isinstance(v, dict)]
    for candidate in candidates:
        if candidate.get("raised_exception"):
            return str(candidate.get("exception_message") or "error").strip().splitlines()[0][:200]
    return None


def _sample(row: Any) -> str:
    if isinstance(row, dict):
        return ", ".join(f"{k}={v}" for k, v in row.items())
    if isinstance(row, list | tuple):
        return ", ".join(str(v) for v in row)
    return str(row)


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - called outside a run (a benchmark)
        return logging.getLogger("runbooks.quality")


def _quiet_gx() -> None:
    """GX logs its internals at INFO (temporary docs directories...); the report says what matters."""
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("great_expectations")]:
        logging.getLogger(name).setLevel(logging.WARNING)


_preloading: threading.Thread | None = None


def preload_gx() -> None:
    """Import GX on a background thread, for a run that will validate only after minutes of other work (a DR
    drill's restore): the seconds of the import are spent while pg_restore runs, not after it. The task's own
    import then finds the module (or waits for this import to finish)."""
    global _preloading
    if _preloading is None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        _preloading = threading.Thread(target=_import_gx, name="preload-gx", daemon=True)
        _preloading.start()


def _import_gx() -> None:
    try:
        import great_expectations  # noqa: F401
    except Exception:  # noqa: BLE001 - the task imports it again and reports what fails
        pass


@step_task("validate-recent-window")
def validate_recent_window(*, table: MonitoredTable, database: DatabaseSettings, lookback: timedelta,
                           timeout_seconds: float, as_of: datetime | None = None) -> QualityResult:
    """Run the table's suite on its recent window, computed in PostgreSQL.

    Returns:
        A summary: each failed expectation with its unexpected count and a few sample keys; never GX's raw JSON.
    """
    started = time.monotonic()
    result = QualityResult(key=table.key, status="passed")
    params = read_only_params(database, timeout_seconds)
    if table.quality == "ohlcv":
        try:
            _validate_ohlcv(table, params, lookback, as_of, result)
        except Exception as exc:  # noqa: BLE001 - a suite that cannot run is a finding, not a crash
            result.status, result.detail = "could_not_run", scrub(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
            _logger().error("Quality suite of %s could not run: %s", table.key, result.detail)
    if result.status == "passed" and (result.failures or result.checks_failed):
        result.status = "failed"
    result.seconds = time.monotonic() - started
    return result


@step_task("run-integrity-checks", **TRANSIENT_RETRY)
def run_integrity_checks(*, name: str, database: DatabaseSettings, checks: list[IntegrityCheck],
                         timeout_seconds: float) -> QualityResult:
    """The database's configured integrity checks (positions, trades: seed 002's corruption checks by default),
    each in its own savepoint; report-only checks (no ``expect``) are not judged here.

    Returns:
        ``failed`` with the checks that failed or could not run.
    """
    started = time.monotonic()
    where = f"running the integrity checks of {name!r}"
    judged = [c for c in checks if c.expect is not None]
    params = read_only_params(database, timeout_seconds)
    with connect(params, where=where, autocommit=True) as conn, database_errors(where):
        outcome = run_checks(conn, judged)
    failed = [f"{c.name} ({c.value}, expected {c.expect})" if c.status == "failed"
              else f"{c.name}: could not run ({c.error})" for c in outcome if c.status in ("failed", "could_not_run")]
    return QualityResult(key=f"{name} integrity checks", status="failed" if failed else "passed",
                         expectations=len(judged), checks_failed=failed, seconds=time.monotonic() - started)


@contextmanager
def _reflect_columns_without_rows(query: str) -> Iterator[None]:
    """GX learns a query asset's columns by running the query itself and reading the cursor's description; psycopg
    would fetch the whole window into Python for that. Only that exact statement is rewritten, to ``LIMIT 0``:
    every metric query wraps the asset's query as a subquery, so none of them matches. (GX copies the datasource,
    so the listener is on the Engine class, for the duration of the validation only.)"""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def rewrite(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool
                ) -> tuple[str, Any]:
        if statement.strip() == query.strip():
            return f"SELECT * FROM ({query}) AS columns_only LIMIT 0", parameters
        return statement, parameters

    event.listen(Engine, "before_cursor_execute", rewrite, retval=True)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", rewrite)


def _validate_ohlcv(table: MonitoredTable, params: dict[str, Any], lookback: timedelta, as_of: datetime | None,
                    result: QualityResult) -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    _quiet_gx()

    c = table.columns
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    # The password travels in connect_args, never in a connection string GX could echo.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a more specific PostgresDatasource may be more appropriate": it needs a
        # URL with the password in it, which this avoids
        source = context.data_sources.add_sql("runbooks", connection_string="postgresql+psycopg://",
                                              kwargs={"connect_args": params})  # type: ignore[call-arg]
    query = window_query(table, lookback=lookback, as_of=as_of).as_string(None)
    batch = source.add_query_asset("recent", query=query).add_batch_definition_whole_table("window")
    suite = context.suites.add(gx.ExpectationSuite(name=f"ohlcv-{table.key}", expectations=ohlcv_suite(table)))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="recent", data=batch, suite=suite))
    keys = [c.symbol, table.loaded_at_field or ""]
    with _reflect_columns_without_rows(query):
        outcome = definition.run(result_format={"result_format": "SUMMARY", "partial_unexpected_count": SAMPLES,
                                                "unexpected_index_column_names": keys})
    result.expectations = len(outcome.results)
    unexpected_rows = []
    errors: list[str] = []
    for r in outcome.results:
        counted = r.result.get("element_count")
        if counted is not None:
            result.window_rows = int(counted)
        if r.success:
            continue
        if (error := _raised(r.exception_info)) is not None:
            errors.append(f"{_name(r)}: {error}")  # a query that failed says nothing about the data
            continue
        config = r.expectation_config
        if config is not None and config.type == "unexpected_rows_expectation":
            unexpected_rows.append(config)
            result.failures.append(ExpectationFailure(expectation=_name(r), unexpected=r.result.get("observed_value")))
            continue
        rows = r.result.get("partial_unexpected_index_list") or r.result.get("partial_unexpected_list") or []
        keyed = [{k: row[k] for k in keys if k in row} if isinstance(row, dict) else row for row in rows]
        result.failures.append(ExpectationFailure(expectation=_name(r), unexpected=r.result.get("unexpected_count"),
                                                  samples=[_sample(s) for s in keyed[:SAMPLES]]))
    if errors:  # failures found by the other expectations still stand as evidence
        result.detail = "could not run: " + scrub("; ".join(errors))[:500]
        if not result.failures:
            result.status = "could_not_run"
    if unexpected_rows:
        # Samples of rows a query found: SUMMARY carries only the count, COMPLETE carries at most GX's cap of rows.
        again = context.suites.add(gx.ExpectationSuite(name=f"samples-{table.key}", expectations=[
            gx.expectations.UnexpectedRowsExpectation(unexpected_rows_query=cfg.kwargs["unexpected_rows_query"],
                                                      description=cfg.description) for cfg in unexpected_rows]))
        samples = context.validation_definitions.add(gx.ValidationDefinition(name="samples", data=batch, suite=again))
        by_name = {f.expectation: f for f in result.failures}
        with _reflect_columns_without_rows(query):
            rerun = samples.run(result_format={"result_format": "COMPLETE"}).results
        for r in rerun:
            rows = (r.result.get("details") or {}).get("unexpected_rows") or []
            if (failure := by_name.get(_name(r))) is not None:
                failure.samples = [_sample(row) for row in rows[:SAMPLES]]
    _logger().info("Quality of %s: %d expectations on %s rows, %d failed", table.key, result.expectations,
                          result.window_rows, len(result.failures))
