"""The hosts the runbooks run on (issue 26, scale-out): ``hosts`` declares the workers' host names, ``host_name`` says
which one this is, and a ``file://`` repository is refused once there is more than one host (each host would keep
its own backups, claim its own backup ids and hold its own leases)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runbooks.core.errors import ConfigurationError
from runbooks.settings import load_settings, this_host

ROOT = Path(__file__).resolve().parents[1]
SHARED = '[repository]\nurl = "s3://backups/prod"\n'


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RUNBOOKS_* variable from the outside and a working directory without any config file."""
    for name in [k for k in os.environ if k.upper().startswith("RUNBOOKS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.toml"
    path.write_text(text)
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(path))
    return path


def refusal(**overrides: object) -> str:
    with pytest.raises(ConfigurationError) as refused:
        load_settings(**overrides)
    text = str(refused.value)
    assert "\n" not in text and "HINT:" in text
    return text


def test_a_single_host_by_default_named_as_hostname_says() -> None:
    settings = load_settings()
    assert (settings.hosts, settings.several_hosts) == ([], False)
    assert settings.host_name == this_host() == __import__("socket").gethostname().lower()


def test_several_hosts_share_an_s3_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The file declares the fleet; each host says which one it is through RUNBOOKS_HOST_NAME. Host names are
    case-insensitive: they are kept lower-cased."""
    write_config(monkeypatch, tmp_path, 'hosts = ["Worker-1", "worker-2.internal"]\n' + SHARED)
    monkeypatch.setenv("RUNBOOKS_HOST_NAME", "WORKER-2.internal")
    settings = load_settings()
    assert (settings.hosts, settings.host_name, settings.several_hosts) == (
        ["worker-1", "worker-2.internal"], "worker-2.internal", True)


def test_one_declared_host_may_keep_a_file_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path, 'hosts = ["db-1"]\nhost_name = "db-1"\n'
                 '[repository]\nurl = "file:///srv/backups"\n')
    settings = load_settings()
    assert (settings.hosts, settings.several_hosts) == (["db-1"], False)


def test_a_file_repository_is_refused_once_there_are_several_hosts(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    path = write_config(monkeypatch, tmp_path, 'hosts = ["worker-1", "worker-2"]\nhost_name = "worker-1"\n'
                        '[repository]\nurl = "file:///srv/backups"\n')
    text = refusal()
    assert text.startswith("invalid runbooks settings: repository.url (in " + str(path))
    assert "the repository must be shared (S3 or another shared store" in text
    assert "'file:///srv/backups'" in text and "2 (worker-1, worker-2)" in text


def test_the_default_repository_is_a_file_one_and_is_refused_too(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """No [repository] at all: the default file:///var/backups/runbooks conflicts with the hosts declared."""
    path = write_config(monkeypatch, tmp_path, 'hosts = ["worker-1", "worker-2"]\nhost_name = "worker-2"\n')
    text = refusal()
    assert f"repository.url (a default, not set in {path})" in text and "must be shared" in text
    assert "HINT: set the value the default conflicts with, or this one" in text


def test_an_environment_repository_is_blamed_on_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_HOSTS", '["worker-1", "worker-2"]')
    monkeypatch.setenv("RUNBOOKS_HOST_NAME", "worker-1")
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", "file:///srv/backups")
    assert "environment variable RUNBOOKS_REPOSITORY__URL" in refusal()
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", "s3://backups/prod")
    assert load_settings().several_hosts


@pytest.mark.parametrize(("overrides", "said"), [
    ({"hosts": ["worker-1", "worker-2"], "host_name": "worker-3"},
     "this host's name 'worker-3' is not one of hosts (worker-1, worker-2): set RUNBOOKS_HOST_NAME"),
    ({"hosts": ["worker-1", "WORKER-1"], "host_name": "worker-1"}, "host 'worker-1' is listed twice"),
    ({"hosts": ["worker_1"]}, "'worker_1' is not a host name"),
    ({"hosts": ["-worker"]}, "'-worker' is not a host name"),
    ({"hosts": ["worker-1."]}, "'worker-1.' is not a host name"),
    ({"hosts": ["a" * 64]}, "is not a host name"),
    ({"hosts": ["worker 1"]}, "'worker 1' is not a host name"),
    ({"host_name": ""}, "'' is not a host name"),
    ({"host_name": "../etc"}, "'../etc' is not a host name"),
    ({"host_name": "w\x1b[31m"}, "is not a host name"),
])
def test_hosts_and_host_name_are_host_names(overrides: dict[str, object], said: str) -> None:
    assert said in refusal(**{"repository": {"url": "s3://b/p"}, **overrides})


def test_a_host_name_that_is_not_the_default_is_checked_against_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without RUNBOOKS_HOST_NAME, this machine's own name must be among the declared hosts."""
    monkeypatch.setenv("RUNBOOKS_HOSTS", f'["{this_host()}", "another-host"]')
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", "s3://b/p")
    assert load_settings().host_name == this_host()
    monkeypatch.setenv("RUNBOOKS_HOSTS", '["worker-1", "worker-2"]')
    assert f"this host's name {this_host()!r} is not one of hosts" in refusal()


def test_the_cli_refuses_a_file_repository_for_several_hosts_in_one_line(tmp_path: Path) -> None:
    """Through the command line's settings-error path: one line, exit 2, before anything runs."""
    config = tmp_path / "inventory.toml"
    config.write_text('hosts = ["worker-1", "worker-2"]\nhost_name = "worker-1"\n'
                      '[repository]\nurl = "file:///srv/backups"\n')
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RUNBOOKS_")}
    proc = subprocess.run([sys.executable, "-m", "runbooks.cli", "backups", "list"], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT), "RUNBOOKS_CONFIG": str(config)}, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in proc.stderr and line.startswith("error: "), proc.stderr
    assert "must be shared" in line and "HINT:" in line and proc.stdout == ""


def test_a_deployment_run_that_names_no_host_is_refused_once_there_are_several(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path) -> None:
    """A generic disk-cleanup or host check deployment left from before the hosts were declared would act on
    whichever host's worker took it: refused; a local run (no deployment) is this host's, and a named host is
    checked against this one."""
    import uuid

    from prefect.context import _deployment_id

    from runbooks.frame.locks import require_this_host

    write_config(monkeypatch, tmp_path, 'hosts = ["worker-1", "worker-2"]\n' + SHARED)
    monkeypatch.setenv("RUNBOOKS_HOST_NAME", "worker-1")
    settings = load_settings()
    require_this_host(settings, None, runbook="disk-cleanup", acts="clean")  # a local run: this host
    require_this_host(settings, "worker-1", runbook="disk-cleanup", acts="clean")
    token = _deployment_id.set(uuid.uuid4())  # as the engine sets it for a run from a deployment
    try:
        with pytest.raises(ConfigurationError, match=r"names no host \(on_host\)"):
            require_this_host(settings, None, runbook="disk-cleanup", acts="clean")
        require_this_host(settings, "worker-1", runbook="disk-cleanup", acts="clean")
        with pytest.raises(ConfigurationError, match="is for host 'worker-2'"):
            require_this_host(settings, "worker-2", runbook="disk-cleanup", acts="clean")
    finally:
        _deployment_id.reset(token)
