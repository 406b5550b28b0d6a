"""Keep secrets out of logs, artifacts, exceptions and results."""

from __future__ import annotations

import re
from collections.abc import Iterable

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


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every known secret value in ``text``; also masks passwords embedded in URLs."""
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
