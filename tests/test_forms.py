"""The forms the Prefect UI renders from each runbook's parameters model: every field explained, in words the UI
shows as written (it reads descriptions as HTML: '<database>' vanished from "default <database>_recovery")."""

from __future__ import annotations

import pytest

from flows import RUNBOOKS


@pytest.mark.parametrize("runbook", sorted(RUNBOOKS))
def test_every_parameter_has_a_description_the_ui_shows_whole(runbook: str) -> None:
    _flow, model, _render = RUNBOOKS[runbook].load()
    for name, info in model.model_fields.items():
        description = info.description or ""
        assert description.strip(), f"{runbook}.{name} has no description: its form field would be unexplained"
        assert "<" not in description and ">" not in description, f"{runbook}.{name}: {description!r}"
