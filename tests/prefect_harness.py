"""Prefect's test harness on PostgreSQL instead of SQLite.

``prefect.testing.utilities.prefect_test_harness`` always puts its temporary server on SQLite. Under a loaded CI
machine SQLite's single writer made a request wait past the client's timeout; the client retried a state change
the server had already committed, the server rejected the duplicate and handed back its own copy of the state,
without the run's result (a flow run that returned its report then read as ``FailedRun``). A server on PostgreSQL,
the production topology (docs/scale-out.md), has no single-writer lock. Otherwise this is the harness: the same
ephemeral server (with the services an ephemeral server runs: events are stored), the same settings contexts.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import prefect.context
import prefect.settings
from prefect.logging.handlers import APILogWorker
from prefect.server.api.server import SubprocessASGIServer
from prefect.server.database.dependencies import temporary_database_interface
from prefect.utilities.asyncutils import run_coro_as_sync

try:
    from prefect.events.worker import EventsWorker
except ImportError:  # pragma: no cover - moved between Prefect releases
    EventsWorker = None  # type: ignore[assignment,misc]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def prefect_harness_on(database_url: str, *, startup_timeout: float = 180) -> Iterator[str]:
    """A temporary Prefect server whose database is ``database_url`` (``postgresql+asyncpg://…``), set as this
    process's API for the block; yields its API URL."""
    with ExitStack() as stack:
        stack.enter_context(temporary_database_interface())
        stack.enter_context(prefect.settings.temporary_settings(
            updates={prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL: database_url}))
        server = SubprocessASGIServer(port=_free_port())
        prior = SubprocessASGIServer._instances.get(None)
        # Code that asks for "the" ephemeral server during a run finds this one instead of starting another.
        SubprocessASGIServer._instances[None] = server
        server.start(timeout=int(startup_timeout))
        try:
            stack.enter_context(prefect.settings.temporary_settings(
                updates={prefect.settings.PREFECT_API_URL: server.api_url}))
            stack.enter_context(prefect.context._temporary_global_settings_context(
                prefect.context.get_settings_context()))
            yield server.api_url

            async def drain() -> None:  # logs and events still queued reach the server before it stops
                try:
                    drained = APILogWorker.instance().drain()
                    if inspect.isawaitable(drained):
                        await drained
                except RuntimeError:
                    pass
                if EventsWorker is not None:
                    drained = EventsWorker.drain_all()
                    if inspect.isawaitable(drained):
                        await drained

            run_coro_as_sync(drain())
        finally:
            server.stop()
            if prior is not None:
                SubprocessASGIServer._instances[None] = prior
            else:
                SubprocessASGIServer._instances.pop(None, None)
