"""A PM2 daemon of the test's own: a private PM2_HOME (never ~/.pm2), two tiny node apps from an ecosystem file the
test writes, and ``pm2 kill`` of that daemon in teardown.

- ``crashy`` exits with status 1 a moment after it starts while its ``crash`` marker file exists (PM2 restarts it
  at once: a crash loop); removing the marker is "the fix";
- ``calm`` runs until it is stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PM2 = shutil.which("pm2") or "/usr/bin/pm2"

CRASHY = """const fs = require("fs");
if (fs.existsSync(process.env.CRASH_MARKER)) { setTimeout(() => process.exit(1), 150); }
else { setInterval(() => {}, 1000); }
"""
CALM = "setInterval(() => {}, 1000);\n"


@dataclass
class Pm2Daemon:
    home: Path
    apps: Path
    ecosystem: Path
    marker: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "PM2_HOME": str(self.home)}

    def pm2(self, *args: str) -> str:
        done = subprocess.run([PM2, *args], env=self.env(), capture_output=True, text=True, timeout=60,
                              check=False, stdin=subprocess.DEVNULL, cwd=self.apps)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        return done.stdout

    def jlist(self) -> dict[str, dict[str, Any]]:
        out = self.pm2("jlist")
        return {app["name"]: app for app in json.loads(out[out.find("["):])}

    def wait(self, name: str, until: Any, *, timeout: float = 60) -> dict[str, Any]:
        """Poll ``pm2 jlist`` until ``until(app)`` holds (a wait, not a timing assertion)."""
        deadline = time.monotonic() + timeout
        while True:
            app = self.jlist().get(name)
            if app is not None and until(app):
                return app
            assert time.monotonic() < deadline, f"{name}: {app and app['pm2_env']['status']}"
            time.sleep(0.2)

    def service(self, app: str, **overrides: Any) -> dict[str, Any]:
        """``[services.pm2.<name>]`` for ``app`` of this daemon, short waits for the tests."""
        return {"app": app, "ecosystem_file": str(self.ecosystem), "pm2": PM2, "pm2_home": str(self.home),
                "stable_seconds": 1.5, "healthy_timeout_seconds": 20, "poll_seconds": 0.3, "verify_api": "none",
                **overrides}


def pm2_available() -> None:
    if not Path(PM2).is_file() or shutil.which("node") is None:
        pytest.skip("pm2 and node are not installed (npm install -g pm2)")


@pytest.fixture(name="pm2_daemon")
def pm2_daemon_fixture() -> Iterator[Pm2Daemon]:
    """A daemon running ``crashy`` (crash-looping: its marker exists) and ``calm``; killed and removed after."""
    pm2_available()
    # Not pytest's tmp_path: PM2's sockets live in PM2_HOME, and a unix socket path is limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="rb-pm2-"))
    daemon = Pm2Daemon(home=root / "home", apps=root / "apps", ecosystem=root / "apps" / "ecosystem.config.cjs",
                       marker=root / "apps" / "crash")
    daemon.apps.mkdir()
    (daemon.apps / "crashy.js").write_text(CRASHY)
    (daemon.apps / "calm.js").write_text(CALM)
    daemon.marker.write_text("crash until this file is removed\n")
    apps = [{"name": "crashy", "script": str(daemon.apps / "crashy.js"), "autorestart": True,
             "env": {"CRASH_MARKER": str(daemon.marker)}},
            {"name": "calm", "script": str(daemon.apps / "calm.js")}]
    daemon.ecosystem.write_text(f"module.exports = {{ apps: {json.dumps(apps)} }};\n")
    try:
        daemon.pm2("start", str(daemon.ecosystem))
        yield daemon
    finally:
        subprocess.run([PM2, "kill"], env=daemon.env(), capture_output=True, timeout=60, check=False,
                       stdin=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
