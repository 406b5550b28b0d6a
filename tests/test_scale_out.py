"""Scale-out (issue 26): one Prefect server on PostgreSQL, one work pool, two workers with distinct host identities
(``RUNBOOKS_HOST_NAME`` worker-1 and worker-2, each its own state directory, drill work directory and disk) and one
S3 repository (moto over HTTP), the settings declaring both hosts; the deployments are ``prefect.yaml`` as
``deployments/per_host.py`` writes it for those hosts, applied with ``prefect deploy``.

The two workers are two processes on this machine, as two hosts see each other through the server and the
repository: they share nothing else (no state directory, no lock file, no Prefect home). Shown:

- two backups started at once, one on each host, get distinct backup ids, both listed in the repository;
- two drills started at once, one on each host, never drill at the same time: one holds the cluster's lease in the
  repository and drills, the other is refused ("another drill is running", naming the first) while the first holds
  it, before it provisions or restores anything; one game-day record is kept;
- the per-host disk cleanup runs once per host, each on its own worker and its own tree (a real run on trees this
  test made), and a run for worker-2 that worker-1's worker pulls is refused there, touching nothing.

Slow (about three minutes on two cores): the server's PostgreSQL migration, two workers and two drills.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.records import DrillRecords
from runbooks.adapters.repository import open_repository
from runbooks.settings import load_settings
from runbooks_sandbox import SandboxState
from runbooks_sandbox.environment import BUCKET
from runbooks_sandbox.seed import catch_up_bars
from tests.events import runbook_events
from tests.prefect_server import prefect_server, stop_process_group

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).with_name("prefect")
POOL = "runbooks"
HOSTS = ["worker-1", "worker-2"]
SERVER_DATABASE = "prefect_scale_out"
RUN_DEADLINE = 300.0  # seconds for a run to reach a final state, worker pickup included
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
DEPLOYED = ["backup-on-demand", "backup-nightly", "dr-game-day-on-demand", "dr-game-day-quarterly",
            *[f"disk-cleanup-on-demand-{host}" for host in HOSTS]]
OLD = time.time() - 30 * 86400


@dataclass
class Host:
    name: str
    env: dict[str, str]  # the worker's environment: what this host's runs see
    tree: Path  # this host's disk, as far as its cleanup is allowed
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def worker_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no worker log)"


@pytest.fixture
def server(sandbox: SandboxState) -> Iterator[str]:
    """The production topology's server: its database on PostgreSQL (the sandbox cluster), dropped afterwards."""
    cluster = sandbox.cluster()

    def recreate(create: bool) -> None:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SERVER_DATABASE)))
            if create:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SERVER_DATABASE)))

    recreate(True)
    url = cluster.dsn(SERVER_DATABASE).replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        with prefect_server(timeout=180, database_url=url) as api:
            yield api
    finally:
        recreate(False)


@pytest.fixture
def fleet(server: str, sandbox: SandboxState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Host]]:
    """Two hosts' environments over one S3 repository; this process reads the same settings (as worker-1)."""
    assert sandbox.s3_config_path, "the sandbox has no S3 endpoint"
    repository = f"s3://{BUCKET}/scale-out-{uuid.uuid4().hex[:12]}"
    shared = {"RUNBOOKS_CONFIG": sandbox.s3_config_path, "RUNBOOKS_REPOSITORY__URL": repository,
              "RUNBOOKS_HOSTS": json.dumps(HOSTS), "RUNBOOKS_HEALTH__CPU_WINDOW_SECONDS": "1"}
    for name, value in {**shared, "RUNBOOKS_HOST_NAME": HOSTS[0]}.items():
        monkeypatch.setenv(name, value)
    # Work directories the server's OS user enters (drills): not under pytest's 0700 tmp dirs.
    private = Path(tempfile.mkdtemp(prefix="scale-out-", dir=os.environ["XDG_STATE_HOME"]))
    private.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNBOOKS_"))}
    base.update(PREFECT_API_URL=server, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                PREFECT_WORKER_QUERY_SECONDS="2", RUNBOOKS_HOME=str(CHECKOUT),
                PYTHONPATH=os.pathsep.join(filter(None, [str(CHECKOUT), base.get("PYTHONPATH")])), **shared)
    hosts = []
    for name in HOSTS:
        own = private / name
        (own / "prefect").mkdir(parents=True)
        own.chmod(0o755)
        tree = tmp_path / name
        logs = tree / "logs"
        for file in ("old.log", "older.log"):
            (logs / file).parent.mkdir(parents=True, exist_ok=True)
            (logs / file).write_bytes(os.urandom(4096))
            os.utime(logs / file, (OLD, OLD))
        (logs / "today.log").write_bytes(b"kept\n")
        cleanup = {"watch": [str(tree)], "survey": [str(tree)], "allowed_roots": [str(logs)],
                   "rules": [{"kind": "files", "name": "old-logs", "roots": [str(logs)], "patterns": ["*.log"],
                              "older_than": "7d"}]}
        env = {**base, "RUNBOOKS_HOST_NAME": name, "PREFECT_HOME": str(own / "prefect"),
               "RUNBOOKS_STATE_DIR": str(own / "state"), "RUNBOOKS_DRILL__WORK_DIR": str(own / "drills"),
               "RUNBOOKS_CLEANUP": json.dumps(cleanup)}
        hosts.append(Host(name=name, env=env, tree=tree, log=tmp_path / f"{name}-worker.log"))
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings({PREFECT_API_URL: server}):  # this process's client and run_deployment
            yield hosts
    finally:
        for host in hosts:
            if host.process is not None:
                stop_process_group(host.process)
        shutil.rmtree(private, ignore_errors=True)


# -- helpers ----------------------------------------------------------------------------------------------------------

def command(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run(list(argv), cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{output[-4000:]}"
    return output


def start_worker(host: Host) -> None:
    """``prefect worker start`` as each host's service unit runs it: the shared queue and the host's own."""
    log = host.log.open("wb")
    host.process = subprocess.Popen([str(PREFECT), "worker", "start", "--pool", POOL, "--work-queue", "default",
                                     "--work-queue", f"host-{host.name}", "--name", f"runbooks-{host.name}"],
                                    cwd=CHECKOUT, env=host.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    log.close()


def start(deployment: str, parameters: dict[str, Any], queue: str | None = None) -> UUID:
    """A run of ``flow/deployment``, on ``queue`` (a host's) instead of the deployment's own when given."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    run = run_deployment(name=deployment, parameters=parameters, timeout=0, work_queue_name=queue)
    assert isinstance(run, FlowRun)
    return run.id


def wait(ids: list[UUID], hosts: list[Host]) -> dict[UUID, Any]:
    """Every run in a final state; fails with the runs' and workers' logs when one gets stuck."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + RUN_DEADLINE
    with get_client(sync_client=True) as client:
        while True:
            runs = {i: client.read_flow_run(i) for i in ids}
            if all(r.state is not None and r.state.type.value in FINAL for r in runs.values()):
                return runs
            dead = [h.name for h in hosts if h.process is not None and h.process.poll() is not None]
            if time.monotonic() > deadline or dead:
                logs = "\n".join(f"--- {h.name} worker ---\n{h.worker_log()[-3000:]}" for h in hosts)
                pytest.fail(f"runs not final ({dead or 'deadline'}): "
                            f"{[(r.name, r.state.type.value if r.state else None) for r in runs.values()]}\n{logs}",
                            pytrace=False)
            time.sleep(1)


def ran_on(run_id: UUID, hosts: list[Host]) -> list[str]:
    """Which hosts' workers took the run (a worker logs each run it submits; a run's own lines may name others)."""
    return [h.name for h in hosts if f"submitting flow run '{run_id}'" in h.worker_log()]


def state_of(run: Any) -> str:
    return f"{run.name}: {run.state.type.value} {run.state.message!r}"


def steps(resource: str, run_id: UUID) -> list[Any]:
    """The run's step and conclusion events, oldest first (waits until the conclusion has arrived)."""
    def of_run(events: list[Any]) -> list[Any]:
        return [e for e in events if any(r.id == f"prefect.flow-run.{run_id}" for r in e.related)]

    events = runbook_events(resource, until=lambda ev: any(e.event == "runbooks.run.concluded" for e in of_run(ev)),
                            timeout=60)
    return of_run(events)


def cleanup_report(run_id: UUID) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=["disk-cleanup-report"])))
    return str(artifact.data)


# -- the test ---------------------------------------------------------------------------------------------------------

def test_two_workers_on_two_hosts_share_one_server_and_one_repository(fleet: list[Host], tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    one, two = fleet
    settings = load_settings()
    assert settings.several_hosts and settings.repository.url.startswith("s3://")

    # The deployments, made per host from prefect.yaml and the settings (never copied by hand), then applied.
    hosts_file = tmp_path / "prefect.hosts.yaml"
    written = command(one.env, sys.executable, "deployments/per_host.py", "write", "--output", str(hosts_file))
    assert "--work-queue default --work-queue host-worker-2" in written, written
    command(one.env, str(PREFECT), "--no-prompt", "work-pool", "create", POOL, "--type", "process")
    command(one.env, str(PREFECT), "--no-prompt", "deploy", "--prefect-file", str(hosts_file),
            *[arg for name in DEPLOYED for arg in ("-n", name)])
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments(limit=200)}
        assert sorted(deployments) == sorted(DEPLOYED)
        for host in HOSTS:
            copy = deployments[f"disk-cleanup-on-demand-{host}"]
            assert copy.work_queue_name == f"host-{host}" and copy.parameters["on_host"] == host
        for deployment in deployments.values():  # only the runs this test starts, never a scheduled one
            if deployment.schedules:
                client.pause_deployment(deployment.id)
    for worker in fleet:
        start_worker(worker)

    # 1. Two backups at once, one on each host: distinct ids, both in the one repository.
    catch_up_bars(settings.databases["trading_db"].dsn.get_secret_value())  # data as fresh as a live feed keeps it
    backups = {start("backup/backup-on-demand", {"databases": ["trading_db"], "apply_retention": False},
                     "host-worker-1"): "worker-1",
               start("backup/backup-nightly", {"databases": ["trading_db"], "apply_retention": False},
                     "host-worker-2"): "worker-2"}
    runs = wait(list(backups), fleet)
    for run_id, host in backups.items():
        assert runs[run_id].state.type.value == "COMPLETED", state_of(runs[run_id])
        assert ran_on(run_id, fleet) == [host], (run_id, host)
    listed = BackupCatalog(open_repository(settings.repository)).list_backups(kind="database", name="trading_db")
    ids = [m.backup_id for m in listed]
    assert len(ids) == 2 and len(set(ids)) == 2, ids

    # 2. Two drills at once, one on each host: one drills, the other is refused while the first holds the lease.
    drills = {start("dr-game-day/dr-game-day-quarterly", {"quality": False}, "host-worker-1"): "worker-1",
              start("dr-game-day/dr-game-day-on-demand", {"quality": False}, "host-worker-2"): "worker-2"}
    runs = wait(list(drills), fleet)
    for run_id, host in drills.items():
        assert ran_on(run_id, fleet) == [host], (run_id, host)
    refused = [i for i in drills if "another drill is running" in (runs[i].state.message or "")]
    assert len(refused) == 1, [state_of(r) for r in runs.values()]
    [drilled] = [i for i in drills if i not in refused]
    [loser] = refused
    assert runs[drilled].state.type.value == "COMPLETED", state_of(runs[drilled])
    message = runs[loser].state.message
    assert str(drilled) in message and f"on {drills[drilled]}," in message, message  # names who holds it, and where
    # Their drill work does not overlap: the refused one stopped at the lease, which the other held from before that
    # refusal until after its teardown (the events each run emitted as it went, in the server's order).
    lease = f"dr-game-day/{settings.cluster.name}"
    first = steps("runbooks.dr-game-day.platform", drilled)
    second = steps("runbooks.dr-game-day.platform", loser)
    walked = [(e.event.removeprefix("runbooks.step."), e.payload["step"]) for e in second
              if e.event in ("runbooks.step.finished", "runbooks.step.failed")]
    assert walked == [("finished", "check settings"), ("finished", "take lock"), ("failed", "take lock")], walked
    [refusal] = [e for e in second if e.event == "runbooks.step.failed"]
    [leased] = [e for e in first if e.event == "runbooks.step.finished" and e.payload["figures"].get("key") == lease]
    [torn_down] = [e for e in first if e.event == "runbooks.step.finished" and e.payload["step"] == "tear down"]
    assert leased.occurred < refusal.occurred < torn_down.occurred, (leased.occurred, refusal, torn_down.occurred)
    [record] = DrillRecords(open_repository(settings.repository), settings.cluster.name).recent(10)
    assert record.flow_run_id == str(drilled) and record.host == drills[drilled] and record.backup_id in ids

    # 3. The per-host cleanup. A run for worker-2 pulled by worker-1's worker (its queue misassigned) is refused
    # there and touches neither disk; then each host's deployment runs once, on its own worker, on its own tree.
    misrouted = start("disk-cleanup/disk-cleanup-on-demand-worker-2", {"dry_run": False, "force": True},
                      "host-worker-1")
    runs = wait([misrouted], fleet)
    assert runs[misrouted].state.type.value == "FAILED" and ran_on(misrouted, fleet) == ["worker-1"]
    assert "is for host 'worker-2', but it runs on 'worker-1'" in runs[misrouted].state.message
    assert all((h.tree / "logs" / "old.log").exists() for h in fleet)
    cleanups = {start(f"disk-cleanup/disk-cleanup-on-demand-{h.name}", {"dry_run": False, "force": True}): h
                for h in fleet}
    runs = wait(list(cleanups), fleet)
    for run_id, worker in cleanups.items():
        assert runs[run_id].state.type.value == "COMPLETED", state_of(runs[run_id])
        assert ran_on(run_id, fleet) == [worker.name]
        assert sorted(p.name for p in (worker.tree / "logs").iterdir()) == ["today.log"], worker.name
        report = cleanup_report(run_id)  # what it cleaned: its own tree, on its own host, and nothing of the other's
        assert f"UTC on {worker.name}," in report and str(worker.tree / "logs") in report, report
        assert not any(str(other.tree) in report for other in fleet if other is not worker), report
        concluded = [e for e in steps(f"runbooks.disk-cleanup.{worker.name}", run_id)
                     if e.event == "runbooks.run.concluded"]
        assert len(concluded) == 1 and concluded[0].payload["succeeded"] is True
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        for host in HOSTS:  # once per host: one run of each host's deployment (worker-2's: and the misrouted one)
            deployment = client.read_deployment_by_name(f"disk-cleanup/disk-cleanup-on-demand-{host}")
            made = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
                any_=[deployment.id])))
            assert sorted(r.id for r in made) == sorted([i for i, h in cleanups.items() if h.name == host]
                                                        + ([misrouted] if host == "worker-2" else []))
