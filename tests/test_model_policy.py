"""Seed 004 section 3.2's decision table as the model-rollback runbook's default policy: each line, on both
sides, and what makes an older version a rollback target."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runbooks.decisions.models import ModelEvidence, judge, served_healthy
from runbooks.settings import ModelPolicy

POLICY = ModelPolicy()


def evidence(**readings: float) -> ModelEvidence:
    base = {"sharpe": 1.2, "win_rate": 0.55, "error_rate": 0.01, "consecutive_losses": 1, "max_psi": 0.05,
            "latency_seconds": 0.2}
    return ModelEvidence(model_id="ppo_primary", version="v4", **{**base, **readings})  # type: ignore[arg-type]


@pytest.mark.parametrize(("readings", "verdict"), [
    ({}, "healthy"),
    ({"sharpe": 0.8}, "healthy"),
    ({"sharpe": 0.79}, "monitor"),
    ({"sharpe": 0.5}, "monitor"),
    ({"sharpe": 0.49}, "shadow"),
    ({"sharpe": 0.3}, "shadow"),
    ({"sharpe": 0.25}, "rollback"),
    ({"error_rate": 0.05}, "healthy"),
    ({"error_rate": 0.06}, "rollback"),
    ({"max_psi": 0.21}, "monitor"),
    ({"max_psi": 0.31}, "rollback"),
    ({"latency_seconds": 5.5}, "rollback"),
    ({"consecutive_losses": 6}, "monitor"),
    ({"win_rate": 0.39}, "monitor"),
    ({"sharpe": 0.45, "max_psi": 0.35}, "rollback"),  # the worst line crossed decides
])
def test_the_decision_table(readings: dict[str, float], verdict: str) -> None:
    judgement = judge(evidence(**readings), POLICY)
    assert judgement.verdict == verdict, judgement
    assert bool(judgement.reasons) == (verdict != "healthy")


def test_a_reading_the_api_does_not_give_is_missing_not_zero() -> None:
    judgement = judge(ModelEvidence(model_id="ppo_primary", sharpe=1.0), POLICY)
    assert judgement.verdict == "healthy"
    assert judgement.missing == ["error_rate", "max_psi", "latency_seconds"]


def test_a_rollback_target_must_have_served_healthy() -> None:
    assert served_healthy(evidence(sharpe=0.6), POLICY)
    assert not served_healthy(evidence(sharpe=0.4), POLICY)
    assert not served_healthy(evidence(error_rate=0.2), POLICY)
    assert not served_healthy(ModelEvidence(model_id="ppo_primary", version="v1"), POLICY)  # no record


def test_the_policy_is_settings_and_refuses_disordered_lines() -> None:
    assert judge(evidence(sharpe=0.9), ModelPolicy(sharpe_monitor_below=1.0)).verdict == "monitor"
    with pytest.raises(ValidationError, match="ordered"):
        ModelPolicy(sharpe_rollback_below=0.6)
    with pytest.raises(ValidationError, match="psi_warn"):
        ModelPolicy(psi_warn=0.4)
