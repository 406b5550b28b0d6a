"""What every section's settings are made of: names, connection strings, URLs, paths, durations, secrets.

A section module builds its models from these types (``InventoryName``, ``Dsn``, ``SecretBlock``, ``Duration``,
``AbsolutePath``...) so that the same value is refused with the same words wherever it appears, and so that the
loader finds every secret by its type (``secrets_held``) without a list of sections.
"""

from __future__ import annotations

import os
import re
import types
import typing
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlparse

from psycopg.conninfo import conninfo_to_dict
from pydantic import AfterValidator, BaseModel, BeforeValidator, SecretStr, ValidationInfo
from pydantic.fields import FieldInfo

from runbooks.core.errors import ConfigurationError
from runbooks.core.redact import redact_dsn, register_secret


def validate_name(name: str, *, what: str = "database") -> str:
    """``name`` if it can be one segment of a repository path (a database or cluster name from the inventory or
    the command line), else ConfigurationError: empty, ``/`` or ``\\``, a leading ``.`` (``..``, hidden
    entries), or a control character would let a name reach outside its own directory or garble a terminal."""
    problem = None
    if not name:
        problem = "is empty"
    elif not _utf8(name):
        problem = "is not valid UTF-8 text"
    elif len(name.encode()) > 63:
        problem = "is longer than 63 bytes (PostgreSQL's limit for a name)"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name.startswith("."):
        problem = "starts with '.'"
    elif any(unicodedata.category(ch) == "Cc" for ch in name):
        problem = "contains a control character"
    if problem:
        raise ConfigurationError(f"{what} name {name[:80]!r} {problem}: it cannot be used as a repository path.",
                                 hint=f"use the {what}'s name as the inventory lists it, e.g. 'trading_db'.")
    return name


def _utf8(text: str) -> bool:
    """False for a lone surrogate (undecodable bytes from the environment): no file system, S3 key or PostgreSQL
    name can hold it."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _name_in_inventory(name: str, info: ValidationInfo) -> str:
    try:
        return validate_name(name, what="cluster" if info.field_name == "name" else "database")
    except ConfigurationError as exc:
        raise ValueError(exc.message) from None


InventoryName = Annotated[str, AfterValidator(_name_in_inventory)]


def _check_dsn(value: SecretStr | None) -> SecretStr | None:
    """A DSN libpq can parse whose ports are numbers (libpq itself accepts ``port=abc`` until it connects)."""
    if value is None:
        return None
    dsn = value.get_secret_value()
    if "\x00" in dsn:  # libpq reads a DSN up to its first NUL: what is checked here would not be what connects
        raise ValueError("the connection string contains a NUL byte")
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        raise ValueError(f"not a valid PostgreSQL connection string: {redact_dsn(dsn)}") from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"port {port!r} in {redact_dsn(dsn)} is not a number from 1 to 65535")
    return value


@dataclass(frozen=True)
class _Holds:
    """What a field holds, for the walk that finds every secret of the settings (``secrets_held``): so the root
    object lists no section's secrets, and a new section's are found by their type alone."""

    what: Literal["dsn", "block"]


_DSN = _Holds("dsn")
_BLOCK = _Holds("block")

Dsn = Annotated[SecretStr, AfterValidator(_check_dsn), _DSN]
"""A libpq connection string, checked at load; its password (not the whole string) is a secret."""

SecretBlock = Annotated[str, _BLOCK]
"""The name of a Prefect Secret block holding a secret: read when a connection is made, and by Settings.secrets."""


def _marks(annotation: Any) -> set[_Holds]:
    """The marks anywhere in an annotation: inside ``Annotated`` and the members of a union."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *metadata = typing.get_args(annotation)
        return {m for m in metadata if isinstance(m, _Holds)} | _marks(inner)
    if origin in (typing.Union, types.UnionType):
        return {m for arg in typing.get_args(annotation) for m in _marks(arg)}
    return set()


def _holds(info: FieldInfo) -> set[_Holds]:
    """The marks of a field: pydantic moves an ``Annotated`` field's metadata to ``info.metadata``, but keeps an
    optional one (``Dsn | None``) whole in ``info.annotation``."""
    return {m for m in info.metadata if isinstance(m, _Holds)} | _marks(info.annotation)


def secrets_held(model: BaseModel) -> tuple[list[str], list[str]]:
    """The secret values held in ``model`` and every model below it (a ``Dsn``'s password, any other
    ``SecretStr`` whole), and the ``SecretBlock`` names, unresolved; empty ones left out."""
    values: list[str] = []
    blocks: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, BaseModel):
            for name, info in type(node).model_fields.items():
                value = getattr(node, name)
                if isinstance(value, SecretStr):
                    plain = value.get_secret_value()
                    values.append(str(conninfo_to_dict(plain).get("password") or "") if _DSN in _holds(info)
                                  else plain)
                elif isinstance(value, str) and _BLOCK in _holds(info):
                    blocks.append(value)
                else:
                    walk(value)
        elif isinstance(node, Mapping):
            for item in node.values():
                walk(item)
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item)

    walk(model)
    return [v for v in values if v], [b for b in blocks if b]


def resolve_secret(value: SecretStr | None, block: str | None) -> str | None:
    """The secret's plain value, from the setting itself or from a Prefect Secret block; registered for scrubbing
    the moment it is read."""
    if value is not None:
        register_secret(value.get_secret_value())
        return value.get_secret_value()
    if block:
        from prefect.blocks.system import Secret

        try:
            secret = cast(Secret, Secret.load(block))  # sync in a sync context
            plain = str(secret.get())
        except ValueError as exc:
            raise ConfigurationError(
                f"Prefect Secret block {block!r} could not be loaded.",
                hint=f"create it with 'prefect block create secret' or set the value in the environment ({exc}).",
            ) from None
        register_secret(plain)
        return plain
    return None


def check_http_url(url: str | None) -> str | None:
    """An http(s) URL with a host and a port that is a number: the platform's APIs, Prefect's, an S3 endpoint."""
    if url is None:
        return None
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        raise ValueError(f"URL {url!r} contains a space or a control character")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"URL {url!r} must look like http://host:port")
    try:
        parsed.port  # noqa: B018 - raises on a malformed or out-of-range port
    except ValueError:
        raise ValueError(f"URL {url!r} has a port that is not a number from 0 to 65535") from None
    return url


def _no_nul(path: Path) -> Path:
    """Every OS call refuses a path with a NUL byte (``ValueError: embedded null byte``, a traceback mid-run)."""
    if "\x00" in str(path):
        raise ValueError(f"path {str(path)!r} contains a NUL byte")
    if not _utf8(str(path)):
        raise ValueError(f"path {str(path).encode('utf-8', 'backslashreplace').decode()!r} is not valid UTF-8")
    return path


OsPath = Annotated[Path, AfterValidator(_no_nul)]


def _absolute_os_path(path: Path) -> Path:
    """``~`` expanded; a relative path is refused: it would mean a different directory for every worker, service
    and shell that loads the same settings."""
    path = _no_nul(path).expanduser()
    if not path.is_absolute():
        raise ValueError(f"path {str(path)!r} must be absolute (a worker's working directory is not the config's)")
    return path


AbsoluteOsPath = Annotated[Path, AfterValidator(_absolute_os_path)]


def _absolute_path(path: Path) -> Path:
    """An absolute, normalised path with no ``..``: a root is compared with the allowlist as written."""
    text = str(path)
    if "\x00" in text:
        raise ValueError("path contains a NUL byte")
    if not _utf8(text):
        raise ValueError(f"path {text.encode('utf-8', 'backslashreplace').decode()!r} is not valid UTF-8")
    if not path.is_absolute():
        raise ValueError(f"{text!r} is not an absolute path (a worker's working directory is not the config's)")
    if ".." in path.parts:
        raise ValueError(f"{text!r} contains '..': name the directory itself")
    return Path(os.path.normpath(text))


AbsolutePath = Annotated[Path, AfterValidator(_absolute_path)]


def absolute_or_none(path: Path | None) -> Path | None:
    """``~`` expanded; a relative path is refused (a worker's working directory is not the config's)."""
    if path is not None and not path.expanduser().is_absolute():
        raise ValueError(f"path {str(path)!r} must be absolute (a worker's working directory is not the config's)")
    return None if path is None else path.expanduser()


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)\s*$")
_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
            "d": 86400, "day": 86400}


def _span(count: Any, unit: int) -> timedelta:
    """``count`` units as a timedelta; a count that is no number, NaN or beyond timedelta's range (999,999,999 days)
    is a ValueError (pydantic reports only those as bad input, an OverflowError would escape as a traceback)."""
    try:
        return timedelta(seconds=float(count) * unit)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{count!r} is not a duration: give a number of seconds, minutes, hours or days up to "
                         "999,999,999 days, e.g. '10m'") from None


def _duration(value: Any) -> Any:
    """``"10m"``, ``"90s"``, ``"2h"``, ``"1d"``, or dbt's ``{count = 10, period = "minute"}``; anything else is left
    to pydantic (seconds as a number, ISO 8601 ``PT10M``)."""
    if isinstance(value, bool):  # pydantic reads true as 1 s: 'error_after = true' would pause trading at once
        raise ValueError("must be a duration such as '10m', not true or false")
    if isinstance(value, str) and value.strip().startswith("-"):
        raise ValueError("must not be negative, e.g. '0m' or '10m'")
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return _span(match[1], _PERIODS[match[2]])
    if isinstance(value, Mapping) and set(value) == {"count", "period"}:
        period = str(value["period"]).rstrip("s")
        if period not in _PERIODS:
            raise ValueError(f"period {value['period']!r} must be second, minute, hour or day")
        return _span(value["count"], _PERIODS[period])
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be a positive duration, e.g. '10m'")
    return value


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative, e.g. '0m' or '10m'")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]
Objective = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_not_negative)]  # an RPO may be 0


def _identifier(name: str | None) -> str | None:
    """A name PostgreSQL would keep as written: longer than 63 bytes it would silently be cut to another name."""
    if name is None:
        return None
    if not name or len(name.encode()) > 63:
        raise ValueError(f"{name[:80]!r} is not a PostgreSQL name: 1 to 63 bytes")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise ValueError(f"{name[:80]!r} contains a control character")
    return name


Identifier = Annotated[str, AfterValidator(_identifier)]


def refused_at(loc: tuple[int | str, ...], message: str) -> Exception:
    """A validation error located at ``loc`` below the model raising it, so the loader names the exact setting and
    where it came from (the variable or the file); a model validator's own ValueError has no location."""
    from pydantic import ValidationError
    from pydantic_core import InitErrorDetails, PydanticCustomError

    return ValidationError.from_exception_data("settings", [InitErrorDetails(
        type=PydanticCustomError("value_error", "{error}", {"error": message}), loc=loc, input=None)])
