"""Acting as the on-call engineer in tests: find a paused flow run, read the form the server holds for it, and
resume it with a decision (through the API, or bypassing its validation as a misbehaving client could)."""

from __future__ import annotations

import contextvars
import json
import threading
import time
from collections.abc import Callable
from typing import Any


def decide_when_paused(decision: dict[str, Any] | list[dict[str, Any]] | None, *,
                       timeout: float = 120) -> threading.Thread:
    """In a background thread (with this test's Prefect settings), wait for a PAUSED flow run whose form is stored
    and resume it with ``decision`` as its RunInput; ``None`` leaves it paused (to let the approval time out). A
    list is one decision per pause, in turn (four eyes: the run pauses again, with a new pause key, for the next
    approver); ``thread.seen`` gets the run id once per decision given, ``thread.forms`` each form's description."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    decisions: list[dict[str, Any] | None] = list(decision) if isinstance(decision, list) else [decision]
    seen: list[Any] = []
    forms: list[str] = []
    errors: list[str] = []

    def run() -> None:
        deadline = time.monotonic() + timeout
        answered: str | None = None  # the pause key just answered: the next decision waits for a new pause
        while decisions and time.monotonic() < deadline:
            # A busy API may fail one read or one resume: the approver tries again until its deadline, never
            # dies silently leaving the run paused for the rest of its approval timeout (seen in CI).
            try:
                with get_client(sync_client=True) as client:
                    runs = [r for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
                        if (r.state is None or r.state.state_details.pause_key != answered)
                        and form_is_stored(client, r)]
                if runs:
                    if decisions[0] is not None:
                        keyset = runs[0].state.state_details.run_input_keyset if runs[0].state else None
                        form = stored_form(runs[0])[1] if keyset else ""
                        resume_flow_run(runs[0].id, run_input=decisions[0])
                        forms.append(form)
                        answered = runs[0].state.state_details.pause_key if runs[0].state else None
                    decisions.pop(0)
                    seen.append(runs[0].id)
                    continue
            except Exception as exc:  # noqa: BLE001 - recorded for the test to show, then tried again
                errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.2)

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(run,), daemon=True)
    thread.seen = seen  # type: ignore[attr-defined]
    thread.forms = forms  # type: ignore[attr-defined]
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def paused_run(*, timeout: float = 60, other_than: str | None = None) -> Any:
    """The PAUSED flow run, once there is one (with a pause key other than ``other_than``: a new pause) and its
    form is stored (``form_is_stored``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))):
                if run.state and run.state.state_details.pause_key != other_than and form_is_stored(client, run):
                    return run
        time.sleep(0.2)
    raise TimeoutError(f"no paused flow run within {timeout} s")


def form_is_stored(client: Any, run: Any) -> bool:
    """Whether the paused ``run``'s form is all stored (true for a pause without one). Prefect saves the schema and
    then the description only after the run is PAUSED; a resume before the schema is there is refused ("Run input
    schema not found": seen with a second approver who answered the moment the run paused again). Every approval
    form has a description (``request_approval`` always gives one), so the description's arrival is the signal."""
    from prefect.exceptions import PrefectHTTPStatusError

    keyset = run.state.state_details.run_input_keyset if run.state else None
    if not keyset:
        return True
    try:
        client.read_flow_run_input(run.id, keyset["description"])  # saved last
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == 404:
            return False
        raise
    return True


def stored_form(run: Any) -> tuple[dict[str, Any], str]:
    """The form the server holds for a paused run, as the UI reads it: (JSON schema, description)."""
    from prefect.client.orchestration import get_client

    keyset = run.state.state_details.run_input_keyset
    with get_client(sync_client=True) as client:
        return (json.loads(client.read_flow_run_input(run.id, keyset["schema"])),
                json.loads(client.read_flow_run_input(run.id, keyset["description"])))


def resume_bypassing_the_schema(run: Any, decision: dict[str, Any]) -> None:
    """What a client that skips the resume endpoint's validation can do: store ``decision`` as the response to the
    pause and set the run RUNNING itself."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    keyset = run.state.state_details.run_input_keyset
    with get_client(sync_client=True) as client:
        client.create_flow_run_input(run.id, key=keyset["response"], value=json.dumps(decision))
        client.set_flow_run_state(run.id, Running(), force=True)


def act_when_paused(action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` in a background thread with this test's Prefect settings; what it raises is kept in
    ``thread.errors`` (a test asserts there is none after joining)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - handed to the test, which re-raises
            errors.append(exc)

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread
