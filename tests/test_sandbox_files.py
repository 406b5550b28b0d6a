"""What the sandbox writes is its owner's only: the state and configs (passwords, tokens), the children's logs, and
the Prefect server's home with its SQLite database (every run's parameters and logs). Checked on a whole sandbox,
Prefect server included, started under the usual umask 022."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from runbooks_sandbox import Sandbox


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.slow
def test_a_sandbox_with_a_prefect_server_keeps_its_files_private() -> None:
    # Not under pytest's 0700 tmp dirs: the cluster runs as the postgres OS user when we are root.
    parent = Path(tempfile.mkdtemp(prefix="runbooks-sandbox-files-"))
    parent.chmod(0o755)
    box = Sandbox(parent / "box")
    old = os.umask(0o022)  # what a shell usually has: a file made without care is world-readable
    try:
        state = box.up(size_mb=1, prefect=True, progress=lambda _m: None)
        os.umask(old)
        assert state.prefect_api_url and state.s3_config_path
        home = box.root / "prefect"
        database = home / "prefect.db"
        assert database.is_file()
        assert (_mode(home), _mode(database)) == (0o700, 0o600)
        # The root and the cluster's directory stay open: the postgres OS user must pass through them (as root).
        open_dirs = {box.root, box.root / "postgres"}
        seen: list[str] = []
        for dirpath, dirnames, filenames in os.walk(box.root):
            here = Path(dirpath)
            if here == box.root / "postgres":
                dirnames.clear()  # the cluster's own (initdb's data directory, its socket): not this test's
            if here not in open_dirs:
                assert _mode(here) == 0o700, here
            for name in filenames:
                assert _mode(here / name) == 0o600, here / name
                seen.append(str((here / name).relative_to(box.root)))
        assert {"state.json", "runbooks.toml", "runbooks-s3.toml", "prefect.log", "s3.log", "simulator.log",
                "prefect/prefect.db"} <= set(seen), seen
    finally:
        os.umask(old)
        box.down()
        shutil.rmtree(parent, ignore_errors=True)
