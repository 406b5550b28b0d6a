"""Every deployment in ``prefect.yaml`` loads its flow, belongs to a runbook of ``runbooks.flows.RUNBOOKS`` and
passes that runbook's parameter model; ``deployments/serve.py`` builds the same deployments without serving them.

No database and no API calls: only Prefect's loaders, schema builder and validators.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import sys
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import prefect
import pytest
import yaml
from prefect import Flow
from prefect.cli.deploy._models import DeploymentConfig
from prefect.exceptions import SignatureMismatchError
from prefect.flows import load_flow_from_entrypoint
from prefect.server.schemas.schedules import CronSchedule
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate
from pydantic import BaseModel
from pydantic import ValidationError as ModelRefused

from runbooks.flows import RUNBOOKS, Runbook

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC: dict[str, Any] = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
DEPLOYMENTS: list[dict[str, Any]] = SPEC["deployments"]
# What `prefect deploy` accepts in a schedule entry (prefect.cli.deploy._models.RawScheduleConfig, extra="forbid").
SCHEDULE_KEYS = {"cron", "interval", "rrule", "timezone", "anchor_date", "active", "parameters", "slug", "replaces",
                 "day_or"}


@cache
def entry_flow(entrypoint: str) -> Flow[..., Any]:
    """The flow as `prefect deploy` and the worker load it: from the file, relative to the repository root."""
    path, _, _ = entrypoint.rpartition(":")
    assert not Path(path).is_absolute(), f"entrypoint {entrypoint!r} must be relative to the repository root"
    assert (REPO_ROOT / path).is_file(), f"entrypoint {entrypoint!r}: no file {path!r} in the repository"
    return load_flow_from_entrypoint(str(REPO_ROOT / entrypoint))


def runbook_of(entrypoint: str) -> Runbook:
    flow = entry_flow(entrypoint)
    matches = [rb for rb in RUNBOOKS.values() if rb.name == flow.name]
    assert matches, f"{entrypoint!r} is flow {flow.name!r}, not a runbook of runbooks.flows.RUNBOOKS {sorted(RUNBOOKS)}"
    return matches[0]


def takes_model_fields(flow: Flow[..., Any], model: type[BaseModel]) -> None:
    """The flow takes the runbook model's fields as named arguments (one form field each), and the model is the
    one the flow validates them with."""
    assert getattr(flow.fn, "parameters_model", None) is model, f"flow {flow.name!r} does not take {model.__name__}"
    assert list(inspect.signature(flow.fn).parameters) == list(model.model_fields), flow.name


# What the operator must give when starting a run (the form asks for it): no default in the deployment stands in.
ASKED_AT_RUN = {"emergency-stop": {"reason": "a filled-in reason"}, "resume-trading": {"reason": "a filled-in reason"},
                "redis-restore": {"instance": "memory"},
                "restart-service": {"service": "trading_api", "reason": "a filled-in reason"},
                "config-rollback": {"group": "trading_api", "reason": "a filled-in reason"}}


def check_parameters(flow: Flow[..., Any], model: type[BaseModel], parameters: dict[str, Any], where: str) -> None:
    """Refuse what the server (schema), the engine (signature) or the runbook's model would refuse at run time,
    once the operator has filled in what the form asks for (``ASKED_AT_RUN``)."""
    parameters = {**ASKED_AT_RUN.get(flow.name, {}), **parameters}
    unknown = set(parameters) - set(inspect.signature(flow.fn).parameters)
    # Prefect's schema does not forbid unknown top-level names; the run would fail only when it starts.
    assert not unknown, f"{where}: {sorted(unknown)} are not parameters of flow {flow.name!r}"
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    validate(parameters, schema, raise_on_error=True)  # what enforce_parameter_schema makes the server do
    flow.validate_parameters(parameters)  # what the engine does before the flow function runs
    model.model_validate(parameters)  # what the flow does first (rules across fields)


def load_serve_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deployments_serve", REPO_ROOT / "deployments" / "serve.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deployment_entries_are_well_formed() -> None:
    names = [d.get("name") for d in DEPLOYMENTS]
    assert all(names) and len(names) == len(set(names)), names
    for deployment in DEPLOYMENTS:
        # `prefect deploy` ignores keys it does not know: a misspelled `parameters:` or `schedules:` would vanish.
        # (The model is private to Prefect's CLI; if an upgrade moves it, find its new home.)
        unknown = set(deployment) - set(DeploymentConfig.model_fields)
        assert not unknown, f"{deployment['name']}: keys {sorted(unknown)} are not deployment fields"
        assert deployment.get("work_pool", {}).get("name"), f"{deployment['name']}: no work pool"
        assert deployment.get("description") and deployment.get("tags"), f"{deployment['name']}: the UI needs both"


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_is_a_runbook_flow(deployment: dict[str, Any]) -> None:
    flow = entry_flow(deployment["entrypoint"])
    assert isinstance(flow, Flow)
    runbook = runbook_of(deployment["entrypoint"])
    runbook_flow, model, _render = runbook.load()
    # The same function the registry names, not a namesake: same source file, same attribute.
    assert Path(inspect.getfile(flow.fn)).resolve() == Path(inspect.getfile(runbook_flow.fn)).resolve()
    assert flow.fn.__name__ == runbook.flow
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    assert schema == parameter_schema(runbook_flow.fn).model_dump_for_openapi()
    takes_model_fields(runbook_flow, model)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_parameters_fit_the_runbook_model(deployment: dict[str, Any]) -> None:
    flow, model, _render = runbook_of(deployment["entrypoint"]).load()
    parameters = deployment.get("parameters") or {}
    check_parameters(flow, model, parameters, deployment["name"])
    for schedule in deployment.get("schedules") or []:
        check_parameters(flow, model, {**parameters, **(schedule.get("parameters") or {})},
                         f"{deployment['name']} schedule {schedule}")


@pytest.mark.parametrize("runbook", RUNBOOKS.values(), ids=list(RUNBOOKS))
def test_parameter_model_refuses_a_misspelled_field(runbook: Runbook) -> None:
    flow, model, _render = runbook.load()
    assert model.model_config.get("extra") == "forbid", (
        f"{model.__name__} must set model_config = ConfigDict(extra='forbid'), or a misspelled parameter in "
        "prefect.yaml or the UI is silently ignored"
    )
    typo = {"no_such_field": True}
    with pytest.raises(SignatureMismatchError):  # the engine refuses it before the flow body runs
        flow.validate_parameters(typo)
    with pytest.raises(ModelRefused):
        model.model_validate(typo)


@pytest.mark.parametrize("runbook", RUNBOOKS.values(), ids=list(RUNBOOKS))
def test_parameter_schema_builds(runbook: Runbook) -> None:
    flow, _model, _render = runbook.load()
    schema = parameter_schema(flow.fn)
    assert schema.properties, f"{runbook.name}: empty parameter schema, the UI would show no form"


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_schedules_parse(deployment: dict[str, Any]) -> None:
    for item in deployment.get("schedules") or []:
        assert set(item) <= SCHEDULE_KEYS, f"{deployment['name']}: unknown schedule keys {set(item) - SCHEDULE_KEYS}"
        assert "cron" in item, f"{deployment['name']}: only cron schedules are checked here, extend this test"
        assert item.get("timezone"), f"{deployment['name']}: name the timezone; operators read it in the UI"
        schedule = CronSchedule(cron=item["cron"], timezone=item["timezone"], day_or=item.get("day_or", True))
        # The scheduler's own computation: a valid but impossible cron (0 0 30 2 *) raises here.
        assert len(asyncio.run(schedule.get_dates(n=2))) == 2


def first_tuesdays_of_quarters(after: datetime, count: int) -> list[datetime]:
    """Computed with the calendar, not with cron: what seed 001's "every quarter, first Tuesday" means."""
    found: list[datetime] = []
    year = after.year
    while len(found) < count:
        for month in (1, 4, 7, 10):
            day = next(d for d in range(1, 8) if date(year, month, d).weekday() == 1)  # Monday is 0
            moment = datetime(year, month, day, 10, tzinfo=UTC)
            if moment > after and len(found) < count:
                found.append(moment)
        year += 1
    return found


def test_the_game_day_runs_on_the_first_tuesday_of_each_quarter() -> None:
    [entry] = [d for d in DEPLOYMENTS if d["name"] == "dr-game-day-quarterly"]
    [item] = entry["schedules"]
    schedule = CronSchedule(cron=item["cron"], timezone=item["timezone"], day_or=item.get("day_or", True))
    start = datetime(2026, 11, 23, tzinfo=UTC)
    fires = [d.astimezone(UTC) for d in asyncio.run(schedule.get_dates(n=8, start=start))]
    assert fires == first_tuesdays_of_quarters(start, 8)
    assert fires[0] == datetime(2027, 1, 5, 10, tzinfo=UTC) and fires[-1] == datetime(2028, 10, 3, 10, tzinfo=UTC)
    # The served deployment (deployments/serve.py) keeps day_or; without it cron fires on every Tuesday too.
    served = schedule_of_served(item)
    assert asyncio.run(CronSchedule(cron=served.cron, timezone=served.timezone, day_or=served.day_or)
                       .get_dates(n=8, start=start)) == asyncio.run(schedule.get_dates(n=8, start=start))


# The next fire times after a fixed moment, from the seeds: nightly backup 02:00, disk cleanup after it, the health
# check before the market opens, freshness every 5 minutes, backups verified weekly. Every scheduled deployment must
# be listed here, so a new or changed schedule is a deliberate change of this table.
NEXT_FIRES = {
    "backup-nightly": ["2026-11-24T02:00", "2026-11-25T02:00", "2026-11-26T02:00"],
    "data-freshness": ["2026-11-23T12:05", "2026-11-23T12:10", "2026-11-23T12:15"],
    "disk-cleanup-daily": ["2026-11-24T03:30", "2026-11-25T03:30", "2026-11-26T03:30"],
    "health-check-daily": ["2026-11-24T07:00", "2026-11-25T07:00", "2026-11-26T07:00"],
    "backup-verification-weekly": ["2026-11-29T04:00", "2026-12-06T04:00", "2026-12-13T04:00"],  # Sundays
    "weekly-report": ["2026-11-30T06:00", "2026-12-07T06:00", "2026-12-14T06:00"],  # Monday mornings
    "dr-game-day-quarterly": ["2027-01-05T10:00", "2027-04-06T10:00", "2027-07-06T10:00"],
    "pitr-backup-full-weekly": ["2026-11-29T01:00", "2026-12-06T01:00", "2026-12-13T01:00"],  # Sundays
    "pitr-backup-diff-daily": ["2026-11-24T01:00", "2026-11-25T01:00", "2026-11-26T01:00"],  # not Sundays
    "archive-check-every-minute": ["2026-11-23T12:01", "2026-11-23T12:02", "2026-11-23T12:03"],
    # 07:30 COT (UTC-5 all year) on weekdays: 30 minutes before the USD/COP open.
    "pre-open-check-daily": ["2026-11-23T12:30", "2026-11-24T12:30", "2026-11-25T12:30"],
    # Seed 002: the memory/learning system's RPO is 15 minutes.
    "backup-redis-15min": ["2026-11-23T12:15", "2026-11-23T12:30", "2026-11-23T12:45"],
}
# Opt-in: pgBackRest must be set up on the database host first (pitr-setup), Redis configured; their schedules
# start inactive.
OPT_IN = {"pitr-backup-full-weekly", "pitr-backup-diff-daily", "archive-check-every-minute", "backup-redis-15min"}


def test_every_schedule_fires_when_the_seeds_say() -> None:
    start = datetime(2026, 11, 23, 12, 0, 1, tzinfo=UTC)  # a Monday
    scheduled = {d["name"]: d["schedules"] for d in DEPLOYMENTS if d.get("schedules")}
    assert set(scheduled) == set(NEXT_FIRES), "add the new schedule's expected fire times to NEXT_FIRES"
    for name, items in scheduled.items():
        [item] = items
        assert item.get("active", True) != (name in OPT_IN), f"{name}: schedule active or not as documented"
        schedule = CronSchedule(cron=item["cron"], timezone=item["timezone"], day_or=item.get("day_or", True))
        fires = [f"{d.astimezone(UTC):%Y-%m-%dT%H:%M}" for d in asyncio.run(schedule.get_dates(n=3, start=start))]
        assert fires == NEXT_FIRES[name], name


def test_recovery_and_maintenance_runs_never_overlap() -> None:
    """Seed 002: one recovery at a time. Only the on-demand backup may run beside the nightly one's schedule."""
    for deployment in DEPLOYMENTS:
        tags = set(deployment["tags"])
        if tags & {"on-demand-recovery", "scheduled-maintenance", "automation"}:
            assert deployment.get("concurrency_limit") == 1, f"{deployment['name']}: concurrency_limit 1"
        if tags & {"on-demand", "on-demand-recovery", "automation"}:
            assert not deployment.get("schedules"), f"{deployment['name']}: on demand, yet scheduled"


def schedule_of_served(item: dict[str, Any]) -> Any:
    return load_serve_module().schedule_of(item)


def test_every_runbook_has_a_deployment() -> None:
    deployed = {runbook_of(d["entrypoint"]).name for d in DEPLOYMENTS}
    assert set(RUNBOOKS) <= deployed, f"runbooks without a deployment in prefect.yaml: {set(RUNBOOKS) - deployed}"


def test_serve_builds_the_same_deployments_without_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("deployments/serve.py started serving on import")

    monkeypatch.setattr(prefect, "serve", refuse)
    module = load_serve_module()
    assert module.serve is refuse  # imported, not called

    built = module.build_deployments()
    assert {d.flow_name for d in built} == set(RUNBOOKS), "serve.py must serve every runbook"
    served = {d.name: d for d in built}
    for deployment in DEPLOYMENTS:
        runner = served.pop(deployment["name"])
        runbook = runbook_of(deployment["entrypoint"])
        flow, model, _render = runbook.load()
        assert runner.flow_name == runbook.name
        assert runner.work_pool_name is None, "served deployments run in the serving process, not a work pool"
        assert runner.parameters == (deployment.get("parameters") or {})
        check_parameters(flow, model, runner.parameters, f"served {runner.name}")
        assert [(s.schedule.cron, s.schedule.timezone, s.schedule.day_or, s.active) for s in runner.schedules] == [
            (s["cron"], s.get("timezone"), s.get("day_or", True), s.get("active", True))
            for s in deployment.get("schedules") or []
        ]
        limit = runner.concurrency_limit
        assert (getattr(limit, "limit", limit)) == deployment.get("concurrency_limit")
        assert len(runner.triggers) == len(deployment.get("triggers") or [])
    # Anything left is a runbook that prefect.yaml does not deploy: served on demand only.
    assert all(not d.schedules for d in served.values()), sorted(served)


def test_event_triggers_survive_prefect_deploy_and_fill_the_runbook_parameters() -> None:
    """`prefect deploy` first resolves {{ name }} placeholders from the environment over the whole file, then
    validates each trigger; the parameter templates must come through intact, and render (with the server's
    renderer) into parameters the runbook accepts."""
    import asyncio

    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.events.schemas.events import ReceivedEvent
    from prefect.server.utilities.user_templates import render_user_template
    from prefect.utilities.templating import apply_values

    triggered = [d for d in DEPLOYMENTS if d.get("triggers")]
    assert [d["name"] for d in triggered] == ["model-rollback-on-degradation"]
    for deployment in triggered:
        templated: Any = apply_values(deployment, dict(os.environ), remove_notset=False)  # as `prefect deploy` does
        assert templated["triggers"] == deployment["triggers"], "prefect deploy would rewrite the trigger"
        (trigger,) = _initialize_deployment_triggers(deployment["name"], templated["triggers"])
        assert isinstance(trigger, DeploymentEventTrigger)
        assert trigger.expect == {"runbooks.model.degraded"} and trigger.for_each == {"runbooks.model"}
        event = ReceivedEvent.model_validate({
            "event": "runbooks.model.degraded", "received": datetime.now(UTC).isoformat(),
            "payload": {"reason": "Sharpe 0.21 < 0.3"},
            "resource": {"prefect.resource.id": "runbooks.model.ppo_primary", "runbooks.model": "ppo_primary"}})
        assert trigger.parameters is not None
        rendered = {name: asyncio.run(render_user_template(value, {"event": event}))
                    for name, value in trigger.parameters.items()}
        runbook = runbook_of(deployment["entrypoint"])
        flow, model, _render = runbook.load()
        check_parameters(flow, model, rendered, deployment["name"])
        assert rendered["model_id"] == "ppo_primary" and "Sharpe 0.21 < 0.3" in rendered["reason"]


def test_scheduled_maintenance_fires_outside_every_session_for_a_year() -> None:
    """Every scheduled run of heavy work (all but the ``in-session`` watchers: data freshness, the archive check)
    fires while every gating market of the seeds' calendar is closed, over the next year of fire times, holidays
    and the New Year included."""
    from runbooks.settings.markets import seed_markets

    calendars = [m.calendar(name) for name, m in seed_markets().items() if m.gates]
    assert calendars, "the seeds' USD/COP market gates maintenance"
    start = datetime(2026, 12, 7, tzinfo=UTC)
    end = datetime(2027, 12, 7, tzinfo=UTC)
    checked = 0
    for deployment in DEPLOYMENTS:
        if not deployment.get("schedules") or "in-session" in deployment["tags"]:
            continue
        for item in deployment["schedules"]:
            schedule = CronSchedule(cron=item["cron"], timezone=item["timezone"], day_or=item.get("day_or", True))
            fires = asyncio.run(schedule.get_dates(n=20_000, start=start, end=end))
            assert fires, deployment["name"]
            for fire in fires:
                opened = [c.name for c in calendars if c.is_open(fire)]
                assert not opened, f"{deployment['name']} fires at {fire.isoformat()} while {opened} is in session"
            checked += 1
    assert checked >= 8


def test_in_session_watchers_are_read_only_monitors() -> None:
    """The watchers, and the Redis backup: a 15-minute RPO holds in session too, and a BGSAVE only forks."""
    watchers = sorted(d["name"] for d in DEPLOYMENTS if "in-session" in d["tags"])
    assert watchers == ["archive-check-every-minute", "backup-redis-15min", "data-freshness"]


# Deployments whose failed runs do not go through the `runbooks: runbook run failed` automation, and why: each of
# these notifies on-call itself on every failed run (its Failed state *is* its finding), so the tag would page twice.
NOTIFIES_ITS_OWN_FAILURES = {
    "data-freshness": "its Failed state is its findings: it notifies (or the stale-data automation does) per table",
    "health-check-daily": "notifies on-call (P2) itself on any alert or error (notify_on, default 'alert')",
    "archive-check-every-minute": "notifies itself (P1/P2) on every failed run; tagged, it would page every minute",
    "pre-open-check-daily": "a no-go (or a check it could not run) notifies on-call (P2) itself",
    "pre-open-check-on-demand": "the same runbook, started by someone reading its verdict; a no-go notifies itself",
}


def test_every_deployment_whose_failure_matters_pages_on_failure() -> None:
    """Issue 26: a model rollback triggered by an event failed and nobody was told. Every deployment carries
    `notify-on-failure` (the tag the failure automation matches) but the named exceptions above."""
    automations = (REPO_ROOT / "deployments" / "automations.py").read_text()
    assert '_run_trigger(["Failed", "TimedOut"], "notify-on-failure")' in automations  # the tag it matches
    untagged = {d["name"] for d in DEPLOYMENTS if "notify-on-failure" not in d.get("tags", [])}
    assert untagged == set(NOTIFIES_ITS_OWN_FAILURES), (
        f"untagged but not a named exception: {sorted(untagged - set(NOTIFIES_ITS_OWN_FAILURES))}; "
        f"exceptions that are tagged or gone: {sorted(set(NOTIFIES_ITS_OWN_FAILURES) - untagged)}")
    for name in ("model-rollback-on-demand", "model-rollback-on-degradation"):
        assert name not in untagged
    scheduled = {d["name"] for d in DEPLOYMENTS if "scheduled-maintenance" in d.get("tags", [])}
    recovery = {d["name"] for d in DEPLOYMENTS if {"on-demand-recovery", "automation"} & set(d.get("tags", []))}
    assert recovery and scheduled
    assert not recovery & set(NOTIFIES_ITS_OWN_FAILURES), "a recovery runbook's failure always pages"


# -- issue 26: per-host deployments --------------------------------------------------------------------------------
def load_per_host_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deployments_per_host", REPO_ROOT / "deployments" / "per_host.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


FLEET = ["worker-1", "worker-2.internal"]


def test_per_host_runbooks_are_tagged_and_take_on_host() -> None:
    """The `per-host` tag is on exactly the deployments of runbooks about their worker's own machine, and each such
    runbook's parameters carry `on_host` (so its per-host copy can name its host)."""
    tagged = {d["name"] for d in DEPLOYMENTS if "per-host" in d.get("tags", [])}
    assert tagged == {"disk-cleanup-daily", "disk-cleanup-on-demand", "health-check-daily"}
    for deployment in DEPLOYMENTS:
        _flow, model, _render = runbook_of(deployment["entrypoint"]).load()
        takes_on_host = "on_host" in model.model_fields
        assert takes_on_host == (deployment["name"] in tagged), deployment["name"]
        assert "on_host" not in (deployment.get("parameters") or {}), "prefect.yaml names no host: per_host.py does"


def test_per_host_deployments_are_one_per_host_on_its_queue_and_fit_their_flows() -> None:
    per_host = load_per_host_module()
    made = per_host.per_host_spec(SPEC, FLEET)
    assert "definitions" not in made and made["pull"] == SPEC["pull"]
    entries = made["deployments"]
    names = [d["name"] for d in entries]
    assert len(names) == len(set(names)), names
    by_name = {d["name"]: d for d in entries}
    for deployment in DEPLOYMENTS:
        name = deployment["name"]
        if "per-host" not in deployment.get("tags", []):
            assert by_name[name] == deployment, f"{name} is not per host: written unchanged"
            continue
        for host in FLEET:
            copy = by_name[f"{name}-{host}"]
            assert copy["work_pool"] == {**deployment["work_pool"], "work_queue_name": f"host-{host}"}
            assert copy["parameters"]["on_host"] == host and f"host:{host}" in copy["tags"]
            assert copy["schedules"] == deployment.get("schedules") and copy["entrypoint"] == deployment["entrypoint"]
            assert copy["description"].startswith(f"On host {host} only (work queue host-{host};")
    # disk-cleanup runs only per host; health-check keeps the platform's checks once for the fleet, on any worker.
    assert "disk-cleanup-daily" not in by_name and "disk-cleanup-on-demand" not in by_name
    fleet = by_name["health-check-daily"]
    assert fleet["parameters"] == {"host": False} and fleet["work_pool"]["work_queue_name"] == "default"
    assert "per-host" not in fleet["tags"]
    assert by_name["health-check-daily-worker-1"]["parameters"] == {"platform": False, "on_host": "worker-1"}
    for entry in entries:  # what `prefect deploy`, the server and the flow would accept
        assert not set(entry) - set(DeploymentConfig.model_fields), entry["name"]
        flow, model, _render = runbook_of(entry["entrypoint"]).load()
        check_parameters(flow, model, entry.get("parameters") or {}, f"per-host {entry['name']}")
    assert {runbook_of(d["entrypoint"]).name for d in entries} == set(RUNBOOKS)


def test_per_host_write_needs_declared_hosts_and_writes_a_file_prefect_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    per_host = load_per_host_module()
    config = tmp_path / "runbooks.toml"
    config.write_text('[repository]\nurl = "s3://backups/runbooks"\n')
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(config))
    output = tmp_path / "prefect.hosts.yaml"
    assert per_host.main(["write", "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "declare no hosts" in err[0] and "HINT:" in err[0], err
    assert not output.exists()
    config.write_text('hosts = ["worker-1", "Worker-2.internal"]\n[repository]\nurl = "s3://backups/runbooks"\n')
    monkeypatch.setenv("RUNBOOKS_HOST_NAME", "worker-1")
    assert per_host.main(["write", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "--work-queue default --work-queue host-worker-2.internal" in printed
    assert "prefect deployment delete disk-cleanup/disk-cleanup-daily" in printed
    written = yaml.safe_load(output.read_text())
    assert written == per_host.per_host_spec(SPEC, FLEET)
    assert "&id" not in output.read_text() and output.read_text().startswith("# Generated by")


def test_serve_refuses_several_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """One serving process runs every runbook on its own host: the other hosts' disks would never be cleaned."""
    module = load_serve_module()

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("served although several hosts are declared")

    monkeypatch.setattr(module, "serve", refuse)
    config = tmp_path / "runbooks.toml"
    config.write_text('hosts = ["worker-1", "worker-2"]\n[repository]\nurl = "s3://backups/runbooks"\n')
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(config))
    monkeypatch.setenv("RUNBOOKS_HOST_NAME", "worker-1")
    monkeypatch.chdir(tmp_path)
    assert module.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "deployments/per_host.py" in err[0] and "HINT:" in err[0], err
