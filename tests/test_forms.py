"""The forms the Prefect UI renders from each runbook's parameters model: every field explained, in words the UI
shows as written (it reads descriptions as HTML: '<database>' vanished from "default <database>_recovery")."""

from __future__ import annotations

from typing import Any

import pytest

from runbooks.flows import RUNBOOKS
from runbooks_sandbox import SandboxState


@pytest.mark.parametrize("runbook", sorted(RUNBOOKS))
def test_every_parameter_has_a_description_the_ui_shows_whole(runbook: str) -> None:
    _flow, model, _render = RUNBOOKS[runbook].load()
    for name, info in model.model_fields.items():
        description = info.description or ""
        assert description.strip(), f"{runbook}.{name} has no description: its form field would be unexplained"
        assert "<" not in description and ">" not in description, f"{runbook}.{name}: {description!r}"


def _walk(node: Any) -> list[dict[str, Any]]:
    """Every schema object below ``node``."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += _walk(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk(value)
    return found


@pytest.mark.parametrize("runbook", sorted(RUNBOOKS))
def test_the_form_has_one_described_field_per_parameter(runbook: str) -> None:
    """Prefect's conventions: the flow takes named, typed, described arguments (``prefect deployment run --param
    dry_run=true`` works, trigger templates need no ``{"parameters": ...}`` nesting), one form field each."""
    flow, model, _render = RUNBOOKS[runbook].load()
    schema = flow.parameters.model_dump_for_openapi()
    assert list(schema["properties"]) == list(model.model_fields), runbook
    for name, field in schema["properties"].items():
        assert field.get("description") == " ".join((model.model_fields[name].description or "").split()) \
            or field.get("description") == model.model_fields[name].description, (runbook, name, field)


@pytest.mark.parametrize("runbook", sorted(RUNBOOKS))
def test_optional_fields_offer_no_none_alternative(runbook: str) -> None:
    """An optional field is the field, left empty for its default; the UI rendered a 'null' branch of the schema
    as a second choice reading 'Property is type "None"'."""
    flow, _model, _render = RUNBOOKS[runbook].load()
    schema = flow.parameters.model_dump_for_openapi()
    nulls = [node for node in _walk(schema) if node.get("type") == "null"]
    assert not nulls, f"{runbook}: {nulls}"


def test_a_refused_combination_fails_the_run_in_one_line_before_anything_runs() -> None:
    """Each field valid, together refused by the model: the run fails with one line naming the rule, and no step
    ran (no report artifact was published)."""
    from runbooks.flows.restore import restore_database_flow
    from runbooks.frame import InvalidParameters

    state = restore_database_flow(database="trading_db", mode="new", target_database="trading_db", return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, InvalidParameters), error
    assert str(error).startswith("invalid parameters: ") and "\n" not in str(error), str(error)
    assert "use mode=replace" in str(error), str(error)


def test_inventory_names_are_the_forms_choices(config: SandboxState) -> None:
    """Where a value comes from the inventory, the form offers the configured names (read where the schema is built:
    the worker, ``prefect deploy``); the server then refuses any other under ``enforce_parameter_schema``."""
    from prefect.utilities.callables import parameter_schema

    from runbooks.settings import load_settings

    settings = load_settings()
    databases = sorted(settings.databases)
    assert databases, "the suite's settings name databases"

    def properties(runbook: str) -> dict[str, Any]:
        flow, _model, _render = RUNBOOKS[runbook].load()
        return parameter_schema(flow.fn).model_dump_for_openapi()["properties"]

    assert properties("restore")["database"]["enum"] == databases
    assert properties("backup")["databases"]["items"]["enum"] == databases
    assert properties("backup-verification")["databases"]["items"]["enum"] == databases
    assert properties("data-freshness")["tables"]["items"]["enum"] == sorted(t.key for t in settings.freshness.tables)
    assert properties("disk-cleanup")["rules"]["items"]["enum"] == sorted(r.name for r in settings.cleanup.rules)
    gating = sorted(name for name, market in settings.markets.items() if market.gates)
    assert properties("pre-open-check")["market"].get("enum") == (gating or None)
    assert properties("disk-cleanup")["on_host"].get("enum") == (sorted(settings.hosts) or None)
