"""``runbooks``: the operator's command line. Every command honours ``RUNBOOKS_CONFIG``."""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from markdown_it import MarkdownIt
from rich import box
from rich.console import Console, ConsoleDimensions, ConsoleOptions, RenderableType, RenderResult
from rich.markdown import Markdown, TableElement
from rich.table import Table
from rich.text import Text

from runbooks.core.errors import ConfigurationError, RunbookError
from runbooks.flows import describe_runbooks
from runbooks.settings import Settings, config_path, load_settings, validation_message

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_show_locals=False)
backups_app = typer.Typer(no_args_is_help=True, help="Backups in the repository.")
app.add_typer(backups_app, name="backups")
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str, *, keep: str = "") -> str:
    """``text`` made safe for a terminal: control characters (C0, DEL, C1) and bidirectional overrides become
    escapes like ``\\x1b``, so nothing a user or a config file wrote can retitle, recolour or rewrite the
    operator's terminal. Characters in ``keep`` (e.g. newlines of a report) stay."""
    def escaped(ch: str) -> str:
        if ch in keep or (unicodedata.category(ch) != "Cc" and ch not in _BIDI):
            return ch
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    return "".join(map(escaped, text))


LONG_VALUE = 160  # a word (a path, a URL, a name) longer than this is shortened in one-line messages
KEEP_EDGE = 60  # characters kept at each end of a shortened word: where it starts and how it ends


def shorten(text: str, *, limit: int = LONG_VALUE, keep: int = KEEP_EDGE) -> str:
    """``text`` with each word (run of non-blanks) longer than ``limit`` cut in the middle: its start and end stay,
    and the cut says how much it left out. A 5,000-character path still shows its root and its file name, and a
    one-line message keeps its HINT, instead of a screenful of one value."""
    def cut(word: str) -> str:
        if len(word) <= limit:
            return word
        return f"{word[:keep]}…[{len(word) - 2 * keep:,} characters]…{word[-keep:]}"

    return " ".join(cut(word) for word in text.split(" "))


MIN_COLUMNS = 40  # narrower than this, COLUMNS is taken as 40: one character per line helps no one


class _Terminal(Console):
    """A console whose plain strings never carry raw control characters. Text from users or the config is printed
    as ``Text`` (never parsed as rich markup) after ``printable``; this catches any string that slips through.

    Its width is ``COLUMNS`` when set, else the terminal's, else (a file or a pipe) ``piped_width``; read at each
    print, so ``COLUMNS=80 runbooks … | less`` gets 80 columns."""

    def __init__(self, *, piped_width: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.piped_width = piped_width

    @property
    def size(self) -> ConsoleDimensions:
        found = Console.size.fget(self)  # type: ignore[attr-defined]
        columns = self._environ.get("COLUMNS", "").strip()
        if columns.isascii() and columns.isdigit() and int(columns) > 0:
            # Narrower than a word or two helps no one (one character per line): 40 at least, and a sane maximum.
            return ConsoleDimensions(min(max(int(columns), MIN_COLUMNS), 10_000), found.height)
        if self.piped_width and not self.is_terminal:
            return ConsoleDimensions(self.piped_width, found.height)
        return ConsoleDimensions(found.width, found.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def render_str(self, text: str, **kwargs: Any) -> Text:  # type: ignore[override]
        return super().render_str(printable(text, keep="\n"), **kwargs)


def fitted(table: Table, console: Console, options: ConsoleOptions) -> RenderableType:
    """``table`` laid out so that no word of any cell is cut: as it is when it fits; with each column at least as
    wide as its longest word, the spare width shared by how much more each could use, when that fits; otherwise
    the same rows as records (the first cell, then one ``heading: value`` line per other cell). Rich alone shrinks
    the widest columns first, whatever they hold, and cuts names to "Positi…". (Uses rich's own column measure.)"""
    available = options.max_width
    ranges = [table._measure_column(console, options, column) for column in table.columns]  # padding included
    extra = table._extra_width  # borders and separators
    if sum(r.maximum for r in ranges) + extra <= available:
        return table
    narrowest = sum(r.minimum for r in ranges) + extra
    if narrowest <= available:
        laid_out = copy.deepcopy(table)
        spare, wants = available - narrowest, [r.maximum - r.minimum for r in ranges]
        for column, measured, want in zip(laid_out.columns, ranges, wants, strict=True):
            width = measured.minimum + spare * want // max(sum(wants), 1)
            column.width = max(width - laid_out._get_padding_width(column._index), 1)
        return laid_out
    headings = [column.header for column in table.columns]
    cells = [list(column.cells) for column in table.columns]
    lines: list[Text] = [Text(str(table.title), style="bold")] if table.title else []
    for row in range(table.row_count):
        lines.append(Text.assemble(_text(cells[0][row]), style="bold"))
        for heading, values in zip(headings[1:], cells[1:], strict=True):
            lines.append(Text.assemble("  ", _text(heading), ": ", _text(values[row])))
    return Text("\n").join(lines)


def _text(value: object) -> Text:
    return value if isinstance(value, Text) else Text(str(value))


class _FittedTable(Table):
    """A table laid out by ``fitted`` at print time: no word cut, records when the console is too narrow."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        shown = fitted(self, console, options)
        if shown is self:
            yield from super().__rich_console__(console, options)
        else:
            yield shown


class _FittedTableElement(TableElement):
    """A report's markdown table, laid out by ``fitted`` (no word cut, records when it cannot fit)."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for table in super().__rich_console__(console, options):
            yield fitted(table, console, options) if isinstance(table, Table) else table


class _Report(Markdown):
    """A runbook's markdown report with raw HTML off: ``RUNBOOKS_DATABASES__<NAME>__PASSWORD`` keeps its ``<NAME>``
    (rich drops what CommonMark reads as an HTML tag). Tables too wide for the console become records."""

    elements = {**Markdown.elements, "table_open": _FittedTableElement}

    def __init__(self, markup: str) -> None:
        super().__init__(markup)
        self.parsed = MarkdownIt("commonmark", {"html": False}).enable("strikethrough").enable("table").parse(markup)


class _PrintableFormatter(logging.Formatter):
    """Wraps a console log handler's formatter: a log line can carry a parameter or a name verbatim. A record
    carrying one of our errors is written without its traceback: the error was mapped at our boundary and its
    message says what failed and what to do (``HINT:``); the stack through Prefect's engine only buries that line.
    The record itself is untouched (the run's log in the Prefect API keeps the traceback)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and isinstance(record.exc_info[1], RunbookError):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return printable(self.inner.format(record), keep="\n\t")


class _DrainNotes(logging.Filter):
    """Drops the "Still processing items: N items remaining..." notes Prefect's event and log workers write while
    they drain at the end of a run: progress of Prefect's own shutdown, not something the operator acts on. Told
    apart by where they come from (the queue service's main loop), not by their English; the same workers'
    other warnings (a full queue dropping an item) still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and record.funcName == "_main_loop")


DRAINING_LOGGERS = ("EventsWorker", "APILogWorker")  # Prefect's QueueService subclasses log under their class name


def prepare_log_output() -> None:
    """What the CLI process's log lines look like, once Prefect has configured logging: control characters
    escaped, our errors without Prefect's traceback, no drain notes; our own warnings untouched."""
    _escape_log_output()
    for name in DRAINING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DrainNotes) for f in logger.filters):
            logger.addFilter(_DrainNotes())


def _escape_log_output() -> None:
    """Escape control characters in what the loggers (Prefect's console handler above all) write to a stream."""
    loggers = [logging.getLogger(), *(logger for logger in logging.root.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    for handler in {h for logger in loggers for h in logger.handlers}:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler.formatter, _PrintableFormatter):
            handler.setFormatter(_PrintableFormatter(handler.formatter))


out = _Terminal(piped_width=160)
err = _Terminal(stderr=True)


def _fail(exc: Exception, code: int | None = None) -> typer.Exit:
    """Print ``exc`` as one line on stderr (escaped, never read as markup, never wrapped by us, absurdly long
    values shortened); return the exit to raise: ``code``, by default 2 for bad input or configuration and 1 for
    anything else."""
    if code is None:
        code = 2 if isinstance(exc, ConfigurationError) else 1
    err.print(Text.assemble(("error:", "bold red"), " ", shorten(printable(str(exc)))), soft_wrap=True)
    return typer.Exit(code)


def _say(text: str, *, console: Console | None = None) -> None:
    """One line of text that may hold a user's or the config's words: escaped, never read as markup, never
    wrapped by us (the terminal wraps it), absurdly long values shortened."""
    (console or out).print(Text(shorten(printable(text))), soft_wrap=True)


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


def _skip_heartbeat_join() -> None:
    """Do not wait for Prefect's flow-run heartbeat thread when a run ends.

    Prefect 3.8's sync engine joins that thread on exit, and the thread sleeps in 1 s steps: up to 1 s (0.85 s
    measured) added to every ``runbooks run``. Heartbeats themselves are unchanged. The thread is a daemon that
    sees its stop flag within 1 s and never emits after it (nor once the run is final); Prefect's async engine
    already skips this join (``join_on_exit=False``). Without that hook (another Prefect), nothing changes.
    """
    import functools
    import inspect

    from prefect import flow_engine

    original = getattr(flow_engine, "_send_heartbeats", None)
    if original is None or isinstance(original, functools.partial):
        return
    if "join_on_exit" not in inspect.signature(original).parameters:
        return
    flow_engine._send_heartbeats = functools.partial(original, join_on_exit=False)  # type: ignore[attr-defined]


# -- notifications ----------------------------------------------------------------------------------------------
notifications_app = typer.Typer(no_args_is_help=True, help="The Prefect notification blocks [notifications] names: "
                                "make them, check them, send a test through them.")
app.add_typer(notifications_app, name="notifications")
BlockOption = Annotated[str | None, typer.Option("--block", help="one block as [notifications] names it "
                                                 "('type-slug/name'); needed when it names several")]


def _notification_settings() -> Settings:
    """The settings, Prefect pointed at [prefect] api_url unless PREFECT_API_URL is set, and its log lines tidied."""
    settings = _settings()
    _prefect_env(settings)
    import prefect  # noqa: F401 - configures Prefect's logging, which prepare_log_output then adjusts

    prepare_log_output()
    return settings


@notifications_app.command("setup")
def notifications_setup(
    block: BlockOption = None,
    secret_file: Annotated[Path | None, typer.Option(
        "--secret-file", help="file holding the webhook URL (pager-duty-webhook: the integration key, then the API "
        "key, one per line), readable by you only (chmod 600); '-' reads stdin. Without it a hidden prompt asks. "
        "Never on the command line: process lists and shell history would show it.")] = None,
) -> None:
    """Create or update the notification block [notifications] names on the Prefect server (PREFECT_API_URL, else
    [prefect] api_url), with Prefect's own block class. Idempotent; says what it did, never the secret."""
    from runbooks.adapters import notification_blocks

    settings = _notification_settings()
    try:
        name = notification_blocks.choose_block(settings.notifications, block, config=str(config_path()))
        kind = notification_blocks.kind_or_raise(name)
        notification_blocks.api_url_or_raise()  # before asking for a secret it could not store
        if secret_file is None:
            if not sys.stdin.isatty():
                raise ConfigurationError(f"no {' and '.join(kind.labels)} given for {name!r}.",
                                         hint="pass --secret-file PATH (chmod 600), or --secret-file - with it on "
                                         "stdin, or run in a terminal to be asked; nothing was changed.")
            text = "\n".join(typer.prompt(f"{label} for {name} (hidden)", hide_input=True, err=True)
                             for label in kind.labels)
            source = "the prompt"
        elif str(secret_file) == "-":
            source = "stdin"
            text = notification_blocks.decode_secret(sys.stdin.buffer.read(notification_blocks.MAX_SECRET_BYTES + 1),
                                                     source=source)
        else:
            source = f"the secret file {str(secret_file)!r}"
            text = notification_blocks.read_secret_file(secret_file)
        values = notification_blocks.parse_secret_values(kind, text, source=source)
        done = notification_blocks.setup_block(name, values)
    except RunbookError as exc:
        raise _fail(exc) from None
    severities = ", ".join(notification_blocks.named_blocks(settings.notifications)[name])
    _say(f"{done.outcome} {done.block} ({kind.class_name}) on {done.server}: notifications of {severities} go "
         f"through it. Try it: runbooks notifications test --block {done.block}")


@notifications_app.command("check")
def notifications_check(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Which blocks [notifications] names exist on the Prefect server; exit 1 when one is missing."""
    from runbooks.adapters import notification_blocks

    settings = _notification_settings()
    try:
        found = notification_blocks.check_blocks(settings.notifications)
    except RunbookError as exc:
        raise _fail(exc) from None
    unrouted = notification_blocks.unrouted_severities(settings.notifications)
    if as_json:
        out.print_json(json.dumps({"blocks": [b.model_dump() for b in found], "events_only": unrouted}))
    else:
        for status in found:
            served = ", ".join(status.severities)
            if status.exists:
                _say(f"exists   {status.block} ({served})")
            else:
                fix = (f"runbooks notifications setup --block {status.block}" if status.supported else
                       "create it in the Prefect UI (Blocks)")
                _say(f"MISSING  {status.block} ({served}): {fix}")
        for severity in unrouted:
            _say(f"no block {severity}: its notifications are events only ([notifications] block)")
    if any(not status.exists for status in found):
        raise typer.Exit(1)


@notifications_app.command("test")
def notifications_test(block: BlockOption = None) -> None:
    """Send a test message through every block [notifications] names (or --block): what on-call would see. Exit 1
    when one did not deliver."""
    from runbooks.adapters import notification_blocks

    settings = _notification_settings()
    try:
        names = ([notification_blocks.choose_block(settings.notifications, block, config=str(config_path()))]
                 if block else list(notification_blocks.named_blocks(settings.notifications)))
        if not names:
            notification_blocks.choose_block(settings.notifications, None, config=str(config_path()))  # says why
        sent = notification_blocks.send_test(names)
    except RunbookError as exc:
        raise _fail(exc) from None
    for delivery in sent:
        _say(f"delivered via {delivery.block}" if delivery.delivered else
             f"NOT delivered via {delivery.block}: {delivery.detail}")
    if not all(delivery.delivered for delivery in sent):
        raise typer.Exit(1)


# -- markets ----------------------------------------------------------------------------------------------------
@app.command("markets")
def markets(
    at: Annotated[str | None, typer.Option("--at", help="an ISO-8601 instant with its offset (default: now)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Each configured market open or closed at an instant, why, the previous close and the next open."""
    moment = datetime.now(UTC)
    if at is not None:
        try:
            moment = datetime.fromisoformat(at)
        except ValueError:
            raise _fail(ValueError(f"--at {at[:80]!r} is not an ISO-8601 instant. HINT: e.g. "
                                   "--at 2027-01-11T10:00:00-05:00."), 2) from None
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise _fail(ValueError(f"--at {at[:80]!r} has no UTC offset. HINT: add one, e.g. {at[:40]}-05:00 "
                                   "(COT) or Z."), 2)
        if not 2000 <= moment.astimezone(UTC).year <= 2099:
            raise _fail(ValueError(f"--at {at[:80]!r} is outside the years 2000-2099 the calendars cover. HINT: "
                                   "give an instant of this century."), 2)
    settings = _settings()
    statuses = [calendar.status(moment) for calendar in settings.calendars().values()]
    if as_json:
        out.print_json(json.dumps({s.market: {**s.as_dict(), "gating": settings.markets[s.market].gates}
                                   for s in statuses}))
        return

    def local(instant: datetime | None, zone: str) -> str:
        return instant.astimezone(ZoneInfo(zone)).strftime("%a %Y-%m-%d %H:%M %Z") if instant else "-"
    table = _FittedTable(title=f"markets at {moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC", show_header=True)
    for heading in ("market", "state", "why", "previous close", "next open", "gates heavy work"):
        table.add_column(heading)
    for status in statuses:
        zone = settings.markets[status.market].timezone
        table.add_row(*(Text(printable(cell)) for cell in (
            status.market, "OPEN" if status.open else "closed", status.reason, local(status.previous_close, zone),
            local(status.next_open, zone), "yes" if settings.markets[status.market].gates else "no")))
    out.print(table)


# -- run --------------------------------------------------------------------------------------------------------
def _parse_params(pairs: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs (VALUE as JSON if it parses); a name given twice is refused, not silently replaced."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise _fail(ValueError(f"--param {pair!r} must be NAME=VALUE. HINT: e.g. --param dry_run=true."), 2)
        if name in params:
            raise _fail(ValueError(f"--param {name!r} is given more than once. HINT: give each parameter once; "
                                   "a list is one JSON value, e.g. --param 'databases=[\"a\", \"b\"]'."), 2)
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    return params


@app.command("run")
def run(
    runbook: Annotated[str, typer.Argument(help=f"one of: {describe_runbooks()}")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE (VALUE as JSON if it parses)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result model as JSON")] = False,
) -> None:
    """Run a runbook flow locally; exit status 0 only when it succeeded."""
    from pydantic import ValidationError

    from runbooks.flows import RUNBOOKS

    if runbook not in RUNBOOKS:
        raise _fail(ValueError(f"unknown runbook {runbook!r}. HINT: pick one of {', '.join(RUNBOOKS)}."), 2)
    raw = _parse_params(param or [])
    settings = _settings()
    _prefect_env(settings)
    flow_fn, model, render = RUNBOOKS[runbook].load()
    prepare_log_output()
    _skip_heartbeat_join()
    try:
        parameters = model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join([runbook, *map(str, e['loc'])])}: {validation_message(e, model)}"
                             for e in exc.errors())
        raise _fail(ValueError(f"invalid parameters: {problems}. HINT: fix the --param named above; {runbook} "
                               f"takes {', '.join(model.model_fields)}."), 2) from None
    # Parameters that name things in the settings (tables, databases) are refused here, before any flow run.
    check_against = getattr(parameters, "check_against", None)
    if callable(check_against):
        from runbooks.core.errors import ConfigurationError, OutsideChangeWindow

        try:
            check_against(settings)
        except (ConfigurationError, OutsideChangeWindow) as exc:  # bad input: refused before any side effect
            raise _fail(exc, 2) from None
    from runbooks.frame import arguments, outcome

    state = flow_fn(**arguments(parameters), return_state=True)
    try:
        result = outcome(state)
    except Exception as exc:  # result unavailable (e.g. crashed before returning)
        result = exc
    if isinstance(result, BaseException) or result is None:
        message = str(result) if result is not None else state.message
        if as_json:
            out.print_json(json.dumps({"succeeded": False, "state": state.type.value, "error": message}))
        else:
            err.print(Text.assemble((f"{runbook} failed:", "bold red"), " ", shorten(printable(str(message)))),
                      soft_wrap=True)
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        out.print(_Report(printable(render(result), keep="\n\t")))
    if not (state.is_completed() and getattr(result, "succeeded", True)):
        raise typer.Exit(1)


# -- backups ----------------------------------------------------------------------------------------------------
def _catalog():  # type: ignore[no-untyped-def]
    from runbooks.adapters.catalog import BackupCatalog
    from runbooks.adapters.repository import open_repository

    return BackupCatalog(open_repository(_settings().repository))


def _age(moment: datetime) -> str:
    seconds = (datetime.now(UTC) - moment).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _catalog_for(database: str | None):  # type: ignore[no-untyped-def]
    """The catalog, after refusing (exit 2) a name that is not a database name and a repository that does not
    exist: a mistyped path must not read as "no backups"."""
    from runbooks.core.errors import ConfigurationError, RepositoryNotFound
    from runbooks.settings import validate_name

    try:
        if database is not None:
            validate_name(database)
        catalog = _catalog()
        catalog.repository.check_exists()
    except (ConfigurationError, RepositoryNotFound) as exc:
        raise _fail(exc, 2) from None
    except RunbookError as exc:
        raise _fail(exc) from None
    except OSError as exc:  # e.g. a path longer than the system allows: the repository layer does not map it yet
        raise _fail(ConfigurationError(f"the backup repository cannot be read: {exc.strerror} ({exc.filename}).",
                                       hint="fix repository.url in the settings; nothing was read."), 2) from None
    return catalog


@backups_app.command("list")
def backups_list(
    database: Annotated[str | None, typer.Option(help="only this database (or cluster name)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Published backups, newest last, and damaged ones (exit 1 while any is damaged). Unfinished (interrupted)
    backups are never listed."""
    from runbooks.decisions.report import human_bytes

    catalog = _catalog_for(database)
    try:
        scan = catalog.scan(name=database)
    except RunbookError as exc:
        raise _fail(exc) from None
    url = catalog.repository.url
    for damaged in scan.damaged:
        _say(f"warning: {damaged.kind} backup {damaged.backup_id} of {damaged.name!r} is DAMAGED: "
             f"{damaged.recovery(url)}.", console=err)
    if as_json:
        rows: list[dict[str, Any]] = [m.model_dump(mode="json") for m in scan.manifests]
        rows += [d.as_dict(url) for d in scan.damaged]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        # Short values only in the table; where (a URL to copy) is one line above it, and why a backup is damaged
        # a sentence under it, wrapped at the width like any paragraph.
        _say(f"backups in {url}")
        table = _FittedTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                             collapse_padding=True)  # 80 columns hold a row
        for col in ("id", "kind", "name", "age", "size", "stored", "verified", "snapshot WAL"):
            table.add_column(col)
        entries: list[tuple[str, list[str]]] = [
            (m.backup_id, [m.backup_id, m.kind, m.name, _age(m.started_at), human_bytes(m.bytes),
                           human_bytes(m.stored_bytes), m.verification.status if m.verification else "-",
                           m.snapshot.wal_lsn if m.snapshot else "-"]) for m in scan.manifests]
        entries += [(d.backup_id, [d.backup_id, d.kind, d.name, "-", "-",
                                   human_bytes(sum(o.size for o in d.objects)), "DAMAGED", "-"])
                    for d in scan.damaged]
        for _, row in sorted(entries, key=lambda e: e[0]):
            table.add_row(*[Text(shorten(printable(cell))) for cell in row])
        if entries:
            out.print(table)
        for d in sorted(scan.damaged, key=lambda d: d.backup_id):
            out.print(Text(shorten(printable(f"{d.backup_id} {d.kind} {d.name}: DAMAGED, manifest {d.reason}; "
                                             "'runbooks backups show' says how to recover it."))))
        if not entries:
            _say(f"no backups (config {config_path()})")
    if scan.damaged:
        raise typer.Exit(1)


@backups_app.command("show")
def backups_show(
    backup_id: Annotated[str, typer.Argument(help="backup id, e.g. 20261121T020000Z")],
    database: Annotated[str | None, typer.Option(help="only this database (or cluster name)")] = None,
) -> None:
    """Print the manifest(s) of one backup id (a damaged one: what is stored and how to recover it; exit 1)."""
    catalog = _catalog_for(database)
    try:
        scan = catalog.scan(name=database)
        damaged = [d.as_dict(catalog.repository.url) for d in scan.damaged if d.backup_id == backup_id]
        payload: list[dict[str, Any]] = [m.model_dump(mode="json") for m in scan.manifests
                                         if m.backup_id == backup_id]
        if not payload and not damaged:
            catalog.find_or_raise(backup_id, name=database)  # says why there is nothing
    except RunbookError as exc:
        raise _fail(exc) from None
    payload += damaged
    sys.stdout.write(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2) + "\n")
    if damaged:
        raise typer.Exit(1)


PLUGINS = "runbooks.commands"  # entry-point group: subcommands other packages add (the sandbox)


def _unavailable(name: str, missing: str) -> Callable[[typer.Context], None]:
    def refuse(ctx: typer.Context) -> None:
        raise _fail(ConfigurationError(
            f"'runbooks {name}' is not installed here (it needs {missing!r}).",
            hint=f"pip install 'runbooks[{name}]' (from a checkout: pip install '.[{name}]')."), 2)
    refuse.__doc__ = f"Not installed: pip install 'runbooks[{name}]'."
    return refuse


def add_plugins() -> None:
    """Add the subcommands installed packages declare; one whose dependencies are missing answers with the one
    line that names its extra instead of a traceback."""
    from importlib.metadata import entry_points

    present = {info.name for info in app.registered_groups} | {c.name for c in app.registered_commands}
    for entry in entry_points(group=PLUGINS):
        if entry.name in present:
            continue
        try:
            sub = entry.load()
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.split(".")[0] in ("runbooks", "runbooks_sandbox"):
                raise  # our own code is broken: a traceback, not an install hint
            app.command(entry.name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                                      "help_option_names": []})(
                _unavailable(entry.name, exc.name))
        else:
            app.add_typer(sub, name=entry.name)


def main() -> None:
    add_plugins()
    app()


if __name__ == "__main__":
    main()
