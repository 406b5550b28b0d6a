"""The trading system runbook's two kill switches beside the trading API's: the database row the platform reads its
trading mode from, and the environment the services start with. Each reads back what it set: an answer is not proof.

A halt is the safe direction, so none of these is a ``mutates`` task: stopping is never gated on a lock. Each
gives up within its own bound (``[trading_safety]``), without retries: the emergency stop's next switch is the
retry.
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime
from typing import Any

from prefect import get_run_logger
from psycopg import sql
from pydantic import BaseModel, Field

from runbooks.adapters.postgres import connect, database_errors
from runbooks.core.errors import ConfigurationError, RunbookError, ToolFailed
from runbooks.core.redact import scrub
from runbooks.settings import DatabaseSettings
from runbooks.settings.trading_safety import DatabaseSwitch, EnvironmentSwitch
from runbooks.tasks.policies import step_task


class DatabaseMode(BaseModel):
    """The trading-mode row as read."""

    value: str | None = Field(description="the row's value; None: no such row")
    updated_at: datetime | None = None
    changed: bool = Field(default=False, description="this run's UPDATE changed the row (it was not halt before)")


def _mode(row: tuple[object, ...] | None, switch: DatabaseSwitch, *, changed: bool = False) -> DatabaseMode:
    if row is None:
        return DatabaseMode(value=None)
    since = row[1]
    if since is not None and not isinstance(since, datetime):
        raise ConfigurationError(f"{switch.table}.{switch.updated_at_column} is not a timestamp "
                                 f"({type(since).__name__}).",
                                 hint="set [trading_safety.database] updated_at_column to a timestamptz column, or "
                                 "to \"\" if the table has none.")
    return DatabaseMode(value=str(row[0]), updated_at=since, changed=changed)


def _params(database: DatabaseSettings, timeout: float) -> dict[str, Any]:
    ms = int(timeout * 1000)
    return {**database.conninfo(), "connect_timeout": max(1, round(timeout)),
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}", "application_name": "runbooks-kill-switch"}


def _table(switch: DatabaseSwitch) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(switch.schema_), sql.Identifier(switch.table))


def _select(switch: DatabaseSwitch) -> sql.Composed:
    since = sql.Identifier(switch.updated_at_column) if switch.updated_at_column else sql.SQL("NULL::timestamptz")
    return sql.SQL("SELECT {}, {} FROM {} WHERE {} = %s").format(
        sql.Identifier(switch.value_column), since, _table(switch), sql.Identifier(switch.key_column))


@step_task("read-database-trading-mode")
def read_database_mode(*, database: DatabaseSettings, switch: DatabaseSwitch, timeout: float) -> DatabaseMode:
    """Returns:
    The trading-mode row of ``switch`` (value None when the row is missing)."""
    where = f"reading {switch.table}.{switch.key} in {switch.database!r}"
    with connect(_params(database, timeout), where=where, autocommit=True) as conn, database_errors(where):
        row = conn.execute(_select(switch), [switch.key]).fetchone()
    return _mode(row, switch)


@step_task("database-kill-switch")
def set_database_halt(*, database: DatabaseSettings, switch: DatabaseSwitch, timeout: float) -> DatabaseMode:
    """``UPDATE system_config SET value = 'halt' WHERE key = 'trading_mode'`` (names from the settings), then the
    row read back in a new statement. A missing row is not created: the platform's schema is its own, and a row it
    does not expect would prove nothing.

    Returns:
        The row as read back after the update.
    """
    where = f"setting {switch.table}.{switch.key} = {switch.halt_value!r} in {switch.database!r}"
    assignments = [sql.SQL("{} = %s").format(sql.Identifier(switch.value_column))]
    if switch.updated_at_column:
        assignments.append(sql.SQL("{} = now()").format(sql.Identifier(switch.updated_at_column)))
    # Only a row not already halted: one already halted is someone's, and its time must not become ours.
    update = sql.SQL("UPDATE {} SET {} WHERE {} = %s AND {} IS DISTINCT FROM %s").format(
        _table(switch), sql.SQL(", ").join(assignments), sql.Identifier(switch.key_column),
        sql.Identifier(switch.value_column))
    with connect(_params(database, timeout), where=where, autocommit=True) as conn, database_errors(where):
        updated = conn.execute(update, [switch.halt_value, switch.key, switch.halt_value]).rowcount
        row = conn.execute(_select(switch), [switch.key]).fetchone()
    if row is None:
        raise ConfigurationError(f"{where}: no row has {switch.key_column} = {switch.key!r}.",
                                 hint="check [trading_safety.database] names the platform's own table and key.")
    if updated:
        get_run_logger().warning("Trading mode set to %r in %s.%s", switch.halt_value, switch.database, switch.table)
    return _mode(row, switch, changed=bool(updated))


class CommandRun(BaseModel):
    """What the environment switch's command did."""

    argv0: str
    returncode: int
    seconds: float
    output_tail: str = Field(description="the last lines of its output, scrubbed")


@step_task("environment-kill-switch")
def run_environment_switch(*, switch: EnvironmentSwitch, value: str) -> CommandRun:
    """Run the operator's restart command with ``<variable>=<value>`` in its environment (no shell), within its
    timeout; a non-zero exit fails the task with the command's last output line.

    Returns:
        How the command ended.
    """
    env = {**os.environ, switch.variable: value}
    started = time.monotonic()
    try:
        done = subprocess.run(switch.command, env=env, capture_output=True, text=True, errors="replace",
                              timeout=switch.timeout_seconds, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"the environment kill switch ({switch.command[0]}) did not finish in "
                         f"{switch.timeout_seconds:g} s and was killed.",
                         hint="check the command in [trading_safety.environment] by hand.") from None
    except OSError as exc:
        raise ConfigurationError(f"the environment kill switch could not start {switch.command[0]!r}: "
                                 f"{exc.strerror or exc}.", hint="fix [trading_safety.environment] command.") from None
    tail = scrub("\n".join((done.stdout + done.stderr).strip().splitlines()[-5:]))[-1000:]
    run = CommandRun(argv0=switch.command[0], returncode=done.returncode, seconds=time.monotonic() - started,
                     output_tail=tail)
    if done.returncode != 0:
        last = tail.splitlines()[-1] if tail else "no output"
        raise RunbookError(f"the environment kill switch ({switch.command[0]}) exited {done.returncode}: {last}",
                           hint="check the command in [trading_safety.environment] by hand.")
    get_run_logger().warning("Services restarted with %s=%s", switch.variable, value)
    return run
