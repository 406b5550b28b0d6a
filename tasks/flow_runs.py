"""Tasks on the Prefect API as a record of what the runbooks did: their flow runs in a window, with final state,
start, duration and state message. Errors are mapped where they enter: unreachable, 5xx or 429 is
``PrefectApiUnavailable`` (retried), any other refusal ``PrefectApiRefused``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import httpx

from runbooks.core.errors import ConfigurationError, PrefectApiRefused, PrefectApiUnavailable
from runbooks.core.redact import scrub
from runbooks.decisions.weekly import RunbookRunEntry, RunbookRuns
from runbooks.tasks.policies import TRANSIENT_RETRY, step_task

PAGE = 200  # the server's default cap on one read


@contextmanager
def _prefect_errors(where: str) -> Iterator[None]:
    try:
        yield
    except httpx.HTTPStatusError as exc:  # PrefectHTTPStatusError is one
        status = exc.response.status_code
        if status >= 500 or status in (408, 429):
            raise PrefectApiUnavailable(f"Prefect API {where} answered {status}.",
                                        hint="transient; the task retries.") from None
        raise PrefectApiRefused(f"Prefect API {where} refused the read: {status}.",
                                hint="check PREFECT_API_KEY / PREFECT_API_AUTH_STRING and the API URL.") from None
    except httpx.TransportError as exc:
        raise PrefectApiUnavailable(f"Prefect API {where} unreachable ({type(exc).__name__}).",
                                    hint="check the Prefect server is up and [prefect] api_url / PREFECT_API_URL "
                                    "names it; transient errors are retried.") from None


def _client(api_url: str | None) -> Any:
    """The client of ``api_url``, else of the API this run reports to."""
    from prefect.client.orchestration import SyncPrefectClient, get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL

    if api_url is None or api_url.rstrip("/") == str(PREFECT_API_URL.value() or "").rstrip("/"):
        return get_client(sync_client=True)
    return SyncPrefectClient(api_url, auth_string=PREFECT_API_AUTH_STRING.value(), api_key=PREFECT_API_KEY.value())


@step_task("read-runbook-runs", **TRANSIENT_RETRY)
def read_runbook_runs(*, flows: list[str], since: datetime, until: datetime, api_url: str | None = None,
                      exclude: str | None = None, max_runs: int = 5000) -> RunbookRuns:
    """The flow runs of the flows named ``flows`` that started in [since, until], oldest first.

    Args:
        api_url: the Prefect API holding the history; None: the one this run reports to.
        exclude: a flow run id left out (the run asking).
        max_runs: read at most this many; ``truncated`` says when the window held more.

    Returns:
        Each run's flow, name, final state (name, type, message), start and duration.
    """
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL

    if api_url is None and not PREFECT_API_URL.value():
        # A temporary server started for this run alone: it holds no other run, and an empty history would read
        # as a week in which nothing ran.
        raise ConfigurationError("this run has only a temporary Prefect server (no PREFECT_API_URL, no [prefect] "
                                 "api_url), which holds no runbook runs.",
                                 hint="set [prefect] api_url to the server the deployments run on, or run the "
                                 "weekly-report deployment.")
    where = api_url or "of this run"
    flow_filter = FlowFilter(name=FlowFilterName(any_=flows))
    run_filter = FlowRunFilter(start_time=FlowRunFilterStartTime.model_validate({"after_": since,
                                                                                  "before_": until}))
    found = RunbookRuns()
    with _prefect_errors(where), _client(api_url) as client:
        names = {flow.id: flow.name for flow in client.read_flows(flow_filter=flow_filter)}
        offset = 0
        while True:
            page = client.read_flow_runs(flow_filter=flow_filter, flow_run_filter=run_filter,
                                         sort=FlowRunSort.START_TIME_ASC, limit=PAGE, offset=offset)
            for run in page:
                if str(run.id) == exclude:
                    continue
                if len(found.runs) >= max_runs:
                    found.truncated = True
                    break
                state = run.state
                seconds = (run.end_time - run.start_time).total_seconds() if run.end_time and run.start_time \
                    else None
                found.runs.append(RunbookRunEntry(
                    runbook=names.get(run.flow_id, str(run.flow_id)), name=run.name, flow_run_id=str(run.id),
                    state=state.name if state else "unknown",
                    state_type=state.type.value if state else "UNKNOWN", started_at=run.start_time,
                    seconds=seconds, message=scrub((state.message or "") if state else "").replace("\n", " ")[:300]))
            if found.truncated or len(page) < PAGE:
                break
            offset += PAGE
    return found
