"""Runs an operator can tell apart (issue 26): every runbook names its flow runs by runbook, target, mode and
``dry-run``, bounded and clean whatever the parameters hold.

Real runs (health-check, data-freshness act=false) are named by Prefect's engine and read back from the API of the
test harness; the per-runbook names are computed by each flow's own ``flow_run_name`` callable with the runtime's
parameter lookup pointed at chosen parameters (a dict, as a deployment sends, or the model, as a Python caller
passes)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import prefect.runtime.flow_run
import pytest
from prefect.client.orchestration import get_client

from runbooks.flows import RUNBOOKS
from runbooks.frame.names import MAX_LENGTH, run_name
from runbooks_sandbox import SandboxState

STAMP = r"\d{8}T\d{4}Z"


@pytest.fixture
def named(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Any], str]:
    """``named(runbook, parameters)``: the name the runbook's flow gives a run with these parameters."""

    def name(runbook: str, parameters: Any) -> str:
        monkeypatch.setitem(prefect.runtime.flow_run.FIELDS, "parameters", lambda: dict(parameters or {}))
        flow, _, _ = RUNBOOKS[runbook].load()
        assert callable(flow.flow_run_name), f"{runbook}: no flow_run_name, its runs get random names"
        value = flow.flow_run_name()
        assert isinstance(value, str)
        return value

    return name


def assert_safe(value: str) -> None:
    assert 0 < len(value) <= MAX_LENGTH, value
    assert not any(unicodedata.category(c).startswith(("C", "Z")) for c in value), repr(value)
    assert re.fullmatch(r"[\w.+:@=-]+", value), repr(value)


@pytest.mark.parametrize("runbook", sorted(RUNBOOKS))
def test_every_runbook_names_its_runs_by_runbook(runbook: str, named: Callable[[str, Any], str]) -> None:
    # {}: a deployment that leaves every default
    for parameters in ({},):
        value = named(runbook, parameters)
        assert value.startswith(f"{runbook}-") or value == runbook, value
        assert_safe(value)


DRY_AND_REAL: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "restore": ({"database": "trading_db", "mode": "replace", "backup_id": "20261121T020000Z", "dry_run": True},
                {"database": "trading_db", "mode": "replace", "backup_id": "20261121T020000Z",
                 "confirm": "abc123abc123"}),
    "backup": ({"databases": ["trading_db"], "dry_run": True}, {"databases": ["trading_db"]}),
    "disk-cleanup": ({}, {"dry_run": False}),  # a dry run unless told otherwise
    "model-rollback": ({"model_id": "alpha", "dry_run": True}, {"model_id": "alpha"}),
    "pitr-setup": ({}, {"confirm": "0123456789ab"}),  # unset dry_run: a dry run unless a confirm is given
    "data-freshness": ({"act": False}, {"act": True}),
}


@pytest.mark.parametrize("runbook", sorted(DRY_AND_REAL))
def test_a_dry_run_is_named_apart_from_the_real_run(runbook: str, named: Callable[[str, Any], str]) -> None:
    dry, real = DRY_AND_REAL[runbook]
    dry_name, real_name = named(runbook, dry), named(runbook, real)
    assert "-dry-run" in dry_name and "dry-run" not in real_name, (dry_name, real_name)
    assert re.sub(f"-{STAMP}$", "", dry_name) != re.sub(f"-{STAMP}$", "", real_name)


def test_names_carry_target_and_mode_whether_parameters_are_a_dict_or_the_model(
        named: Callable[[str, Any], str]) -> None:
    from runbooks.flows.restore import RestoreParameters

    replace = {"database": "trading_db", "mode": "replace", "backup_id": "20261121T020000Z", "dry_run": True}
    expected = "restore-trading_db-replace-from-20261121T020000Z-dry-run"
    assert named("restore", replace) == expected
    assert named("restore", RestoreParameters.model_construct(**replace)) == expected  # as a Python caller passes it
    assert named("restore", {"database": "trading_db"}) == "restore-trading_db-new-from-latest"
    assert named("restore", {"database": "trading_db", "before": "2026-11-21T07:00:00-05:00"}) == \
        "restore-trading_db-new-from-latest-before-20261121T120000Z"
    assert re.fullmatch(f"backup-trading_db-dry-run-{STAMP}", named("backup", {"databases": ["trading_db"],
                                                                               "dry_run": True}))
    assert re.fullmatch(f"backup-all-{STAMP}", named("backup", {"databases": []}))
    assert re.fullmatch(f"model-rollback-alpha-to-v3-forced-{STAMP}",
                        named("model-rollback", {"model_id": "alpha", "target_version": "v3", "force": True}))
    assert named("pitr-restore", {"target_time": "2026-11-24T13:05:00Z"}) == "pitr-restore-to-20261124T130500Z"
    assert named("pitr-restore", {}) == "pitr-restore-to-latest"
    assert re.fullmatch(f"pitr-backup-full-{STAMP}", named("pitr-backup", {"kind": "full"}))
    assert re.fullmatch(f"data-freshness-bars\\+quotes-dry-run-{STAMP}",
                        named("data-freshness", {"tables": ["bars", "quotes"], "act": False}))
    assert re.fullmatch(f"weekly-report-7d-to-{STAMP}", named("weekly-report", {}))
    assert re.fullmatch(f"dr-game-day-physical-from-latest-{STAMP}", named("dr-game-day", {"physical": True}))
    assert re.fullmatch(f"pre-open-check-bvc-{STAMP}", named("pre-open-check", {"market": "bvc"}))


@pytest.mark.parametrize("hostile", [
    "trading_db\n\x1b[31mFAILED\x1b[0m", "a" * 5000, "\u202eevil", "db/../../etc", " ", "\x00", "-" * 300])
def test_hostile_parameters_give_a_bounded_clean_name_that_still_says_dry_run(
        hostile: str, named: Callable[[str, Any], str]) -> None:
    for parameters in ({"database": hostile, "mode": "replace", "backup_id": hostile, "dry_run": True},
                       {"database": "x", "before": hostile, "dry_run": True}):
        value = named("restore", parameters)
        assert_safe(value)
        assert value.startswith("restore-") and value.endswith("-dry-run"), value
    value = named("backup", {"databases": [hostile] * 20, "dry_run": True})
    assert_safe(value)
    assert re.search(f"-dry-run-{STAMP}$", value), value


def test_the_helper_keeps_marker_and_stamp_through_truncation() -> None:
    at = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
    value = run_name("restore", "x" * 80, "y" * 80, None, "", dry_run=True, stamp=True, now=at)
    assert len(value) <= MAX_LENGTH and value.endswith("-dry-run-20261121T0200Z") and value.startswith("restore-x")
    assert run_name("backup", "all", now=at) == "backup-all"


def flow_run_name(state: Any) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).name


def test_a_real_health_check_run_is_named_by_the_engine(config: SandboxState, simulator: httpx.Client) -> None:
    from runbooks.flows.health_check import health_check_flow

    state = health_check_flow(host=False, return_state=True)
    assert re.fullmatch(f"health-check-no-host-{STAMP}", flow_run_name(state)), flow_run_name(state)


def test_a_real_data_freshness_report_only_run_is_named_a_dry_run(config: SandboxState,
                                                                  simulator: httpx.Client) -> None:
    from runbooks.flows.data_freshness import data_freshness_flow

    state = data_freshness_flow(act=False, quality=False, return_state=True)
    assert re.fullmatch(f"data-freshness-all-no-quality-dry-run-{STAMP}", flow_run_name(state)), \
        flow_run_name(state)
