"""Acting as the on-call engineer in tests: find a paused flow run and resume it with a decision."""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any


def decide_when_paused(decision: dict[str, Any] | None, *, timeout: float = 120) -> threading.Thread:
    """In a background thread (with this test's Prefect settings), wait for a PAUSED flow run and resume it
    with ``decision`` as its RunInput; ``None`` leaves it paused (to let the approval time out)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    seen: list[Any] = []

    def run() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            if runs:
                seen.append(runs[0].id)
                if decision is not None:
                    resume_flow_run(runs[0].id, run_input=decision)
                return
            time.sleep(0.2)

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(run,), daemon=True)
    thread.seen = seen  # type: ignore[attr-defined]
    thread.start()
    return thread
