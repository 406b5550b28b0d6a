"""Keep secrets out of logs, artifacts, events, exceptions and results: one registry of every secret value the
process has read, a scrubber over it, and a log filter that applies it to every handler."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I)
# A DSN is one string, so a (malformed) password with spaces still ends at the first '@', as libpq reads it.
_DSN_URL_PASSWORD = re.compile(r"^(?P<scheme>\s*[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@]*)@", re.I)
_URL_SCHEME = re.compile(r"\s*[a-z][a-z0-9+.-]*://", re.I)
# An unterminated quote (the DSN is malformed) runs to the end: mask all of it rather than leak its tail.
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.?)*(?:'|\Z)|\S+)", re.I)


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``***``, keeping its URL or key=value form."""
    if _URL_SCHEME.match(dsn):  # a URL only if it starts like one: a key=value password may contain '://'
        masked = _DSN_URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", dsn)
        return re.sub(r"([?&]password=)[^&]*", rf"\g<1>{MASK}", masked, flags=re.I)
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return _KV_PASSWORD.sub(rf"\g<1>{MASK}", dsn)
    if "password" in params:
        params["password"] = MASK
    return make_conninfo(**{k: str(v) for k, v in params.items()})


# -- the process's secret registry --------------------------------------------------------------------------------
# Every secret value this process has resolved (settings, Secret blocks, tokens) is registered here the moment it is
# read, so scrubbing never depends on a caller remembering to pass it along. Process-wide on purpose: a secret
# known to one task must be scrubbed from every log line, artifact and error of the process.
_REGISTERED: set[str] = set()
_LOCK = threading.Lock()


def _spellings(value: str) -> set[str]:
    """A secret web URL (a webhook) as written and as HTTP clients quote it back (httpx lower-cases the scheme and
    host, and may re-encode the path): an error message must not show the token in the other spelling. Its path and
    query are registered alone too (they carry the token whatever the host is written as)."""
    spellings = {value}
    if value[:8].lower().startswith(("http://", "https://")):
        try:
            import httpx

            url = httpx.URL(value)
        except Exception:  # noqa: BLE001 - not a URL httpx reads: the value as written is all there is
            return spellings
        spellings.add(str(url))
        tail = url.raw_path.decode("ascii", "replace")
        if len(tail.strip("/")) >= 8:  # a path that can hold a token, not "/" or "/api"
            spellings.add(tail)
    return spellings


def register_secret(*values: str | None) -> None:
    """Remember secret values for every later ``scrub`` (a URL in each spelling it may come back in); values
    shorter than 3 characters are ignored."""
    found = {spelling for v in values if v for spelling in _spellings(v)}
    with _LOCK:
        _REGISTERED.update(v for v in found if len(v) >= 3)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Replace every registered (and every given) secret value in ``text``; also masks passwords embedded in
    URLs."""
    with _LOCK:
        known = set(_REGISTERED)
    known.update(s for s in secrets if s and len(s) >= 3)
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def scrub_data(value: Any, *, limit: int | None = None) -> Any:
    """``scrub`` every string inside nested dicts/lists (keys included); strings cut to ``limit`` characters."""
    if isinstance(value, str):
        clean = scrub(value)
        return clean if limit is None or len(clean) <= limit else clean[:limit] + "…"
    if isinstance(value, dict):
        return {scrub_data(k): scrub_data(v, limit=limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_data(v, limit=limit) for v in value]
    return value


class ScrubbingFilter(logging.Filter):
    """Scrubs each record's final message, whoever logged it (our tasks, Prefect, boto3, a tool's stderr)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if scrub(text) != text:  # a traceback carrying a secret: keep the scrubbed text only
                record.exc_info, record.exc_text = None, scrub(text)
        return True


_FILTER = ScrubbingFilter()


def install_log_scrubbing() -> None:
    """Put the filter on every handler of every configured logger (idempotent): Prefect's API handlers sit on
    ``prefect.flow_runs``/``prefect.task_runs``, the console on the root. A handler's filters apply to the
    records of all loggers that reach it, which a logger's own filters would not."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
