"""What `pip install .` puts on a production worker, in a clean virtualenv outside the checkout: the product under
its own names (no top-level ``tasks`` or ``flows`` to collide with another project's), no sandbox dependency, and
``runbooks sandbox`` answering with the one install it needs instead of a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # a real pip install into a new virtualenv


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with only ``pip install .`` (constrained by the lock, as make installs), built from the
    committed tree (``git archive HEAD``) in a directory of its own: nothing of the working tree (a ``build/``
    left by an earlier build, an uncommitted file) can end up in the wheel or on the path."""
    where = tmp_path_factory.mktemp("clean-install")
    source, venv = where / "source", where / "venv"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "-c", str(ROOT / "requirements.lock"),
                           str(source)], cwd=where, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def _python(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RUNBOOKS_CONFIG")}
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=venv.parent, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_product_installs_under_its_own_names(installed: Path) -> None:
    for foreign in ("tasks", "flows", "deployments"):
        proc = _python(installed, f"import {foreign}")
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, foreign
    proc = _python(installed, "import runbooks.flows.backup, runbooks.tasks.postgres, runbooks.deployments.per_host;"
                              "from runbooks.flows import RUNBOOKS; print(len(RUNBOOKS))")
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 13


def test_a_plain_install_has_no_sandbox_dependency(installed: Path) -> None:
    proc = _python(installed, "import importlib.util as u; print([m for m in ('moto', 'flask', 'cfnlint') "
                              "if u.find_spec(m)])")
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_sandbox_without_its_extra_says_what_to_install(installed: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RUNBOOKS_CONFIG")}
    proc = subprocess.run([str(installed / "bin" / "runbooks"), "sandbox", "up", "--dir", str(tmp_path / "sb")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'runbooks[sandbox]'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "sb").exists()  # refused before any side effect
