"""``runbooks sandbox``: the embedded default platform on loopback, as a subcommand the sandbox package adds to
the product's command line (entry point ``runbooks.commands``). The product never imports this package: without
the ``sandbox`` extra the command says which install it needs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from runbooks.cli import _fail, _FittedTable, _say, err, out, printable
from runbooks.core.errors import RunbookError
from runbooks.settings import SANDBOX_DIR

if importlib.util.find_spec("moto") is None:  # the extra's marker: its S3 server
    raise ModuleNotFoundError("the sandbox's dependencies are not installed", name="moto")

sandbox_app = typer.Typer(no_args_is_help=True, help="The embedded default platform on loopback.")


# -- sandbox ----------------------------------------------------------------------------------------------------
SandboxDir = Annotated[Path, typer.Option("--dir", help="sandbox state directory")]


@sandbox_app.command("up")
def sandbox_up(
    size: Annotated[str, typer.Option(help="generated data size, e.g. 5MB, 1GB")] = "5MB",
    directory: SandboxDir = Path(SANDBOX_DIR),
    prefect: Annotated[bool, typer.Option(help="start a local Prefect server (UI)")] = True,
) -> None:
    """Start PostgreSQL, S3 (moto), the simulator and a Prefect server, seed data, write a config."""
    from runbooks_sandbox import Sandbox, parse_size
    from runbooks_sandbox.environment import ChildFailed

    try:
        size_mb = parse_size(size)
    except ValueError as exc:
        raise _fail(exc, 2) from None
    sandbox = Sandbox(directory)
    try:
        with err.status("starting sandbox…"):
            state = sandbox.up(size_mb=size_mb, prefect=prefect, progress=lambda m: _say(f"  {m}", console=err))
    except RunbookError as exc:  # refused before anything started (e.g. a directory postgres cannot enter)
        raise _fail(exc) from None
    except ChildFailed as exc:
        _fail(RuntimeError(f"the sandbox did not start: {exc}. HINT: what it had started was removed; "
                           f"the end of the {exc.what} log follows."), 1)
        for line in exc.log_tail.splitlines():
            _say(f"  | {line}", console=err)
        raise typer.Exit(1) from None
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise _fail(RuntimeError(f"the sandbox did not start: {exc}. HINT: what it had started was removed; "
                                 "fix the cause named above and run it again."), 1) from None
    err.print(Text.assemble(("sandbox up", "green"), ": config written to ", printable(state.config_path)))
    status = sandbox.status()
    _print_status(status, as_json=False)
    if state.prefect_api_url:  # what a shell needs so that `prefect` and every run use this server
        _say(f"export PREFECT_API_URL={state.prefect_api_url}")
        _say(f"Prefect UI: {status['prefect']['ui']}")


@sandbox_app.command("down")
def sandbox_down(directory: SandboxDir = Path(SANDBOX_DIR)) -> None:
    """Stop every sandbox process and remove every file it made (only in a directory 'sandbox up' made)."""
    from runbooks_sandbox import Sandbox
    from runbooks_sandbox.environment import NotASandbox

    try:
        done = Sandbox(directory).down()
    except NotASandbox as exc:  # not ours (no record of our own, or a link): nothing was stopped or removed
        raise _fail(exc, 2) from None
    for line in done or ["nothing to do"]:
        _say(line)


@sandbox_app.command("status")
def sandbox_status(
    as_json: Annotated[bool, typer.Option("--json")] = False, directory: SandboxDir = Path(SANDBOX_DIR)
) -> None:
    """Print the config file and every endpoint (passwords redacted)."""
    from runbooks_sandbox import Sandbox

    status = Sandbox(directory).status()
    _print_status(status, as_json=as_json)
    if not status.get("running"):
        raise typer.Exit(1)


def _print_status(status: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(status))
        return
    if not status.get("running"):
        _say(f"sandbox not running (state dir {status['root']})")
        return

    def row(*cells: object) -> None:
        table.add_row(*(Text(printable(str(cell))) for cell in cells))
    table = _FittedTable(title="runbooks sandbox", show_header=True)
    table.add_column("component")
    table.add_column("endpoint")
    table.add_column("up")
    pg = status["postgres"]
    for name, dsn in pg["dsns"].items():
        row(f"postgres {name}", dsn, pg["up"])
    s3 = status["repository"]["s3"]
    row("repository (local)", status["repository"]["local"], "")
    if s3:
        row("S3 (moto)", f"{s3['endpoint_url']}  bucket {s3['bucket']}/{s3['prefix']}", s3["up"])
    row("simulator", status["simulator"]["url"], status["simulator"]["up"])
    row("prefect UI", status["prefect"]["ui"], status["prefect"]["up"])
    if status.get("redis"):
        row(f"redis {status['redis']['instance']}", status["redis"]["endpoint"], status["redis"]["up"])
    if status.get("pm2"):
        row(f"pm2 {status['pm2']['app']}", status["pm2"]["url"], status["pm2"]["up"])
    if notified := status.get("notifications"):  # where pages arrive: the receiver and the log it appends to
        row("notifications", f"{notified['receiver']} -> {notified['log']} ({notified['messages']} received)",
            notified["up"])
    row("config", status["config"], "")
    if status.get("config_s3"):
        row("config (S3 repository)", status["config_s3"], "")
    feed = status.get("feed") or {}
    if feed.get("feeder"):
        row("market feed", "stopped (runbooks sandbox feed --resume)" if feed.get("stopped") else
            f"running, {feed.get('bars_written', 0)} bars written", "")
    for name, market in (feed.get("markets") or {}).items():
        row(f"market {name}", "open" if market["open"] else f"closed: {market['reason']}", "")
    out.print(table)


@sandbox_app.command("feed")
def sandbox_feed(
    stop: Annotated[bool, typer.Option("--stop", help="stop the feed: a dead feed on demand")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="resume the feed")] = False,
    directory: SandboxDir = Path(SANDBOX_DIR),
) -> None:
    """Stop or resume the sandbox's market-data feeder (bars per symbol while its market is open)."""
    from runbooks_sandbox import Sandbox

    if stop == resume:
        raise _fail(ValueError("give exactly one of --stop and --resume. HINT: runbooks sandbox feed --stop."), 2)
    if not Sandbox(directory).feed(running=resume):
        raise _fail(ValueError(f"the sandbox in {str(directory)!r} has no feeder running. HINT: start it with "
                               "'runbooks sandbox up'."), 2)
    _say(f"market feed {'resumed' if resume else 'stopped'}")
