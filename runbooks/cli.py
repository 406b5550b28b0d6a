"""``runbooks``: the operator's command line. Every command honours ``RUNBOOKS_CONFIG``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from runbooks.errors import RunbookError
from runbooks.settings import SANDBOX_DIR, Settings, config_path, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_show_locals=False)
sandbox_app = typer.Typer(no_args_is_help=True, help="The embedded default platform on loopback.")
backups_app = typer.Typer(no_args_is_help=True, help="Backups in the repository.")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(backups_app, name="backups")
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def _fail(exc: Exception, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
    return typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except RunbookError as exc:
        raise _fail(exc, 2) from None


def _prefect_env(settings: Settings | None) -> None:
    """Point Prefect at the sandbox's server (one API for every run) before Prefect is imported."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if settings and settings.prefect.api_url and "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_API_URL"] = settings.prefect.api_url


# -- sandbox ----------------------------------------------------------------------------------------------------
SandboxDir = Annotated[Path, typer.Option("--dir", help="sandbox state directory")]


@sandbox_app.command("up")
def sandbox_up(
    size: Annotated[str, typer.Option(help="generated data size, e.g. 5MB, 1GB")] = "5MB",
    directory: SandboxDir = Path(SANDBOX_DIR),
    prefect: Annotated[bool, typer.Option(help="start a local Prefect server (UI)")] = True,
) -> None:
    """Start PostgreSQL, S3 (moto), the simulator and a Prefect server, seed data, write a config."""
    from runbooks.sandbox import Sandbox, parse_size

    try:
        size_mb = parse_size(size)
    except ValueError as exc:
        raise _fail(exc, 2) from None
    sandbox = Sandbox(directory)
    try:
        with err.status("starting sandbox…"):
            state = sandbox.up(size_mb=size_mb, prefect=prefect, progress=lambda m: err.print(f"  {m}"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise _fail(RuntimeError(f"the sandbox did not start: {exc}. HINT: what it had started was removed; "
                                 "fix the cause named above and run it again."), 1) from None
    err.print(f"[green]sandbox up[/]: config written to {state.config_path}")
    _print_status(sandbox.status(), as_json=False)


@sandbox_app.command("down")
def sandbox_down(directory: SandboxDir = Path(SANDBOX_DIR)) -> None:
    """Stop every sandbox process and remove every file it made."""
    from runbooks.sandbox import Sandbox

    for line in Sandbox(directory).down() or ["nothing to do"]:
        out.print(line)


@sandbox_app.command("status")
def sandbox_status(
    as_json: Annotated[bool, typer.Option("--json")] = False, directory: SandboxDir = Path(SANDBOX_DIR)
) -> None:
    """Print the config file and every endpoint (passwords redacted)."""
    from runbooks.sandbox import Sandbox

    status = Sandbox(directory).status()
    _print_status(status, as_json=as_json)
    if not status.get("running"):
        raise typer.Exit(1)


def _print_status(status: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(status))
        return
    if not status.get("running"):
        out.print(f"sandbox not running (state dir {status['root']})")
        return
    table = Table(title="runbooks sandbox", show_header=True)
    table.add_column("component")
    table.add_column("endpoint")
    table.add_column("up")
    pg = status["postgres"]
    for name, dsn in pg["dsns"].items():
        table.add_row(f"postgres {name}", dsn, str(pg["up"]))
    s3 = status["repository"]["s3"]
    table.add_row("repository (local)", status["repository"]["local"], "")
    if s3:
        table.add_row("S3 (moto)", f"{s3['endpoint_url']}  bucket {s3['bucket']}/{s3['prefix']}", str(s3["up"]))
    table.add_row("simulator", str(status["simulator"]["url"]), str(status["simulator"]["up"]))
    table.add_row("prefect UI", str(status["prefect"]["ui"]), str(status["prefect"]["up"]))
    table.add_row("config", status["config"], "")
    if status.get("config_s3"):
        table.add_row("config (S3 repository)", status["config_s3"], "")
    out.print(table)


# -- run --------------------------------------------------------------------------------------------------------
def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"--param {pair!r} must be NAME=VALUE")
        try:
            params[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[name.strip()] = value
    return params


@app.command("run")
def run(
    runbook: Annotated[str, typer.Argument(help="backup (more to come: restore, data-freshness, …)")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE (VALUE as JSON if it parses)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result model as JSON")] = False,
) -> None:
    """Run a runbook flow locally; exit status 0 only when it succeeded."""
    from pydantic import ValidationError

    from flows import RUNBOOKS

    if runbook not in RUNBOOKS:
        raise _fail(ValueError(f"unknown runbook {runbook!r}; known: {', '.join(sorted(RUNBOOKS))}"), 2)
    raw = _parse_params(param or [])
    settings = _settings()
    _prefect_env(settings)
    flow_fn, model, render = RUNBOOKS[runbook].load()
    try:
        parameters = model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise _fail(ValueError(f"invalid parameters for {runbook!r}: {problems}"), 2) from None
    state = flow_fn(parameters=parameters, return_state=True)
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # result unavailable (e.g. crashed before returning)
        result = exc
    if isinstance(result, BaseException) or result is None:
        message = str(result) if result is not None else state.message
        if as_json:
            out.print_json(json.dumps({"succeeded": False, "state": state.type.value, "error": message}))
        else:
            err.print(f"[bold red]{runbook} failed:[/] {message}", highlight=False)
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        out.print(Markdown(render(result)))
    if not (state.is_completed() and getattr(result, "succeeded", True)):
        raise typer.Exit(1)


# -- backups ----------------------------------------------------------------------------------------------------
def _catalog():  # type: ignore[no-untyped-def]
    from runbooks.catalog import BackupCatalog
    from runbooks.repository import open_repository

    return BackupCatalog(open_repository(_settings().repository))


def _age(moment: datetime) -> str:
    seconds = (datetime.now(UTC) - moment).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@backups_app.command("list")
def backups_list(
    database: Annotated[str | None, typer.Option(help="only this database (or cluster name)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Published backups, newest last. Unfinished (interrupted) backups are never listed."""
    from runbooks.report import human_bytes

    try:
        catalog = _catalog()
        manifests = catalog.list_backups(name=database)
    except RunbookError as exc:
        raise _fail(exc) from None
    if as_json:
        sys.stdout.write(json.dumps([m.model_dump(mode="json") for m in manifests], indent=2) + "\n")
        return
    table = Table(title=f"backups in {catalog.repository.url}")
    for col in ("id", "kind", "name", "age", "size", "stored", "verification", "snapshot WAL"):
        table.add_column(col)
    for m in manifests:
        table.add_row(m.backup_id, m.kind, m.name, _age(m.started_at), human_bytes(m.bytes),
                      human_bytes(m.stored_bytes), m.verification.status if m.verification else "-",
                      m.snapshot.wal_lsn if m.snapshot else "-")
    out.print(table)
    if not manifests:
        out.print(f"no backups (config {config_path()})")


@backups_app.command("show")
def backups_show(
    backup_id: Annotated[str, typer.Argument(help="backup id, e.g. 20261121T020000Z")],
    database: Annotated[str | None, typer.Option(help="only this database (or cluster name)")] = None,
) -> None:
    """Print the manifest(s) of one backup id."""
    try:
        manifests = _catalog().find_or_raise(backup_id, name=database)
    except RunbookError as exc:
        raise _fail(exc) from None
    payload = [m.model_dump(mode="json") for m in manifests]
    sys.stdout.write(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2) + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
