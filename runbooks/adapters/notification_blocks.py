"""The Prefect notification blocks ``[notifications]`` names, made from the settings with Prefect's own block
classes: ``runbooks notifications setup`` creates or updates one, ``check`` says which exist, ``test`` sends one
message through each. The sandbox makes its local receiver's block with the same code.

Why a command and not only the UI: a block the settings name but nobody created makes every notification fail
(best effort, so only a report line says so) and ``deployments/automations.py apply`` refuse to run.

The secret (a webhook URL carries its token; PagerDuty's two keys) comes from a private file, stdin or a hidden
prompt, never from the command line (process lists, shell history), and is never printed: it goes into the
block's secret fields, which the server encrypts and never shows. A ``custom-webhook`` block's ``url`` is a plain
field (the UI shows it and Prefect's block events carry it), so the whole URL goes into the block's ``secrets``
and ``url`` is the template ``{{webhook_url}}``.

Errors: bad input is a ``ConfigurationError`` raised before any call to the server; the Prefect API unreachable
or answering 5xx is ``PrefectApiUnavailable``, any other refusal ``PrefectApiRefused``.
"""

from __future__ import annotations

import difflib
import os
import socket
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel

from runbooks.core.errors import ConfigurationError, PrefectApiRefused, PrefectApiUnavailable
from runbooks.core.redact import register_secret, scrub
from runbooks.settings import NotificationSettings, Severity

TEMPLATE_KEYS = ("subject", "body", "name")  # filled in by the block at each send, never secrets of ours
URL_SECRET = "webhook_url"  # the key of a custom-webhook block's secrets that holds its whole URL
TEXT_PAYLOAD = {"text": "{{subject}}\n{{body}}"}  # Slack's incoming-webhook shape; most chat webhooks accept it
MAX_SECRET_BYTES = 64 * 1024


@dataclass(frozen=True)
class BlockKind:
    """A block type ``setup`` can make: what it asks for (``labels``, one value each, in order) and how those
    values become the block's fields (``fields``, given the block as it exists on the server, or None)."""

    slug: str
    class_name: str  # in prefect.blocks.notifications
    labels: tuple[str, ...]
    url_schemes: tuple[str, ...] | None  # the one value is a URL with one of these schemes; None: keys, not URLs
    defaults: Callable[[str], dict[str, Any]]
    fields: Callable[[list[str], Any | None], dict[str, Any]]

    def block_class(self) -> Any:
        import prefect.blocks.notifications as notifications

        return getattr(notifications, self.class_name)


def _custom_webhook_fields(values: list[str], existing: Any | None) -> dict[str, Any]:
    """The URL into ``secrets`` (kept with any other secret the operator templated into headers or payload)."""
    kept = dict(existing.secrets.get_secret_value()) if existing is not None else {}
    kept = {k: v for k, v in kept.items() if k not in TEMPLATE_KEYS}
    return {"url": "{{" + URL_SECRET + "}}", "secrets": {**kept, URL_SECRET: values[0]}}


KINDS: dict[str, BlockKind] = {kind.slug: kind for kind in (
    BlockKind("custom-webhook", "CustomWebhookNotificationBlock", ("webhook URL",), ("https", "http"),
              defaults=lambda name: {"name": name, "json_data": dict(TEXT_PAYLOAD)},
              fields=_custom_webhook_fields),
    BlockKind("slack-webhook", "SlackWebhook", ("Slack incoming-webhook URL",), None,
              defaults=lambda _name: {}, fields=lambda values, _existing: {"url": values[0]}),
    BlockKind("ms-teams-webhook", "MicrosoftTeamsWebhook", ("Teams Workflows URL",), ("https",),
              defaults=lambda _name: {}, fields=lambda values, _existing: {"url": values[0]}),
    # A PagerDuty block exists here to page: 'failure' is PagerDuty's critical severity ('info', Prefect's
    # default, may page nobody under the service's urgency rules).
    BlockKind("pager-duty-webhook", "PagerDutyWebHook", ("integration (routing) key", "API key"), None,
              defaults=lambda _name: {"notify_type": "failure"},
              fields=lambda values, _existing: {"integration_key": values[0], "api_key": values[1]}),
)}
# Slack's block hands its URL to apprise, which also takes its own schemes (json://, slack://); any scheme://host.
_APPRISE_URL = ("slack-webhook",)


class BlockSetup(BaseModel):
    """What ``setup_block`` did to one block (its name only: never the URL)."""

    block: str
    outcome: Literal["created", "updated", "unchanged"]
    server: str  # the Prefect API it was made on


class BlockStatus(BaseModel):
    """One block the settings name, as the server knows it."""

    block: str
    severities: list[Severity]
    exists: bool
    supported: bool  # 'setup' can make it


class Delivery(BaseModel):
    """One test message sent through a block: delivered, or why not (scrubbed)."""

    block: str
    delivered: bool
    detail: str = ""


# -- decisions on the settings (no I/O) ----------------------------------------------------------------------------
def named_blocks(settings: NotificationSettings) -> dict[str, list[Severity]]:
    """Every block the settings name, with the severities it serves, in P0-P3 order of first use."""
    served: dict[str, list[Severity]] = {}
    for severity in sorted(settings.severities):
        for name in settings.blocks_for(severity):
            served.setdefault(name, []).append(severity)
    return served


def unrouted_severities(settings: NotificationSettings) -> list[Severity]:
    """Severities with no block at all: their notifications are events only."""
    return [s for s in sorted(settings.severities) if not settings.blocks_for(s)]


def kind_or_raise(name: str) -> BlockKind:
    """The kind of block ``name`` ('type-slug/name') is, when ``setup`` can make it."""
    slug, _, _ = name.partition("/")
    if slug in KINDS:
        return KINDS[slug]
    close = difflib.get_close_matches(slug, KINDS, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigurationError(
        f"block type {slug!r} of {name!r} is not one 'setup' makes{guess}; it makes {', '.join(KINDS)}.",
        hint=f"fix the name in [notifications], or create the block in the Prefect UI (Blocks) or with 'prefect block "
        f"create {slug}'; 'runbooks notifications check' then confirms it exists.")


def choose_block(settings: NotificationSettings, block: str | None, *, config: str) -> str:
    """The one block to set up: ``block`` if the settings name it, else the only block they name."""
    served = named_blocks(settings)
    if block is not None:
        if block in served:
            return block
        named = ", ".join(map(repr, served)) or "none"
        raise ConfigurationError(f"block {block!r} is not named in [notifications] of {config} (it names {named}).",
                                 hint="name it there first ([notifications] block, or a severity's blocks), then "
                                 "rerun; 'setup' makes only the blocks the runbooks will use.")
    if not served:
        raise ConfigurationError(f"[notifications] of {config} names no notification block, so there is nothing to "
                                 "set up (notifications are events only).",
                                 hint="add block = \"custom-webhook/oncall\" (or slack-webhook/..., "
                                 "pager-duty-webhook/...) under [notifications], then rerun.")
    if len(served) > 1:
        raise ConfigurationError(f"[notifications] of {config} names {len(served)} blocks "
                                 f"({', '.join(map(repr, served))}), each with its own secret.",
                                 hint=f"set them up one at a time: runbooks notifications setup --block "
                                 f"{next(iter(served))}")
    return next(iter(served))


def parse_secret_values(kind: BlockKind, text: str, *, source: str) -> list[str]:
    """The values ``kind`` asks for, one per non-blank line of ``text`` (lines starting with '#' are comments).
    Refusals never quote a value."""
    values = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    wanted = " then ".join(kind.labels)
    if len(values) != len(kind.labels):
        raise ConfigurationError(f"{source} holds {len(values)} value line(s); a {kind.slug} block takes "
                                 f"{len(kind.labels)}: {wanted}.",
                                 hint=f"put the {wanted} in it, one per line; nothing was changed.")
    register_secret(*values)  # scrubbed from anything printed from here on
    for label, value in zip(kind.labels, values, strict=True):
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ConfigurationError(f"the {label} from {source} contains blanks or control characters.",
                                     hint=f"give the {label} alone on its line; nothing was changed.")
    if kind.url_schemes is not None or kind.slug in _APPRISE_URL:
        _check_url(kind, values[0], source=source)
    return values


def _check_url(kind: BlockKind, url: str, *, source: str) -> None:
    label = kind.labels[0]
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or not parts.scheme or not host:
        raise ConfigurationError(f"the {label} from {source} is not a URL (scheme://host/...).",
                                 hint=f"give the whole {label} as the service shows it; nothing was changed.")
    if kind.url_schemes is not None and parts.scheme.lower() not in kind.url_schemes:
        raise ConfigurationError(f"the {label} from {source} is a {parts.scheme}:// URL; a {kind.slug} block takes "
                                 f"{' or '.join(s + '://' for s in kind.url_schemes)}.",
                                 hint=f"give the {label} the service shows; nothing was changed.")


def read_secret_file(path: Path) -> str:
    """The text of a file holding a secret. A regular file must be its owner's only (as ssh wants a private key):
    anyone else who can read it has the webhook. A pipe (``--secret-file <(pass show oncall)``) is read as is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigurationError(f"the secret file {str(path)!r} cannot be read ({exc.strerror}).",
                                 hint="give a file that holds the webhook URL, or '-' to read it from stdin; "
                                 "nothing was changed.") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise ConfigurationError(f"the secret file {str(path)!r} is a directory.",
                                     hint="give the file that holds the webhook URL; nothing was changed.")
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigurationError(f"the secret file {str(path)!r} is open to others (mode "
                                     f"{stat.S_IMODE(info.st_mode):04o}), so they can read the webhook too.",
                                     hint=f"chmod 600 {path} (and consider the secret exposed if others could read "
                                     "it), then rerun; nothing was changed.")
        data = handle.read(MAX_SECRET_BYTES + 1)
    return decode_secret(data, source=f"the secret file {str(path)!r}")


def decode_secret(data: bytes, *, source: str) -> str:
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigurationError(f"{source} holds more than {MAX_SECRET_BYTES // 1024} KiB, far more than a webhook "
                                 "URL or a key.", hint="give a file with the secret alone; nothing was changed.")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigurationError(f"{source} is not UTF-8 text.",
                                 hint="give a text file with the secret alone; nothing was changed.") from None


# -- the Prefect API -----------------------------------------------------------------------------------------------
def api_url_or_raise(api_url: str | None = None) -> str:
    """``api_url``, else the configured ``PREFECT_API_URL``. Without any API a block would go to a temporary server
    and vanish with it: refused (checked before asking for a secret)."""
    from prefect.settings import PREFECT_API_URL

    url = api_url or PREFECT_API_URL.value()
    if not url:
        raise ConfigurationError("no Prefect API is configured (PREFECT_API_URL and [prefect] api_url are unset), so "
                                 "the block would go to a temporary server and vanish with it.",
                                 hint="export PREFECT_API_URL=http://<server>:4200/api (the sandbox's: 'runbooks "
                                 "sandbox status --json'), or set [prefect] api_url; nothing was changed.")
    return str(url)


@contextmanager
def prefect_api(api_url: str | None = None) -> Iterator[str]:
    """Point Prefect at ``api_url_or_raise(api_url)`` for the block calls inside, and map what the API answers at
    this one boundary."""
    import httpx
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = api_url_or_raise(api_url)
    where = f"at {scrub(str(url))}"
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    except httpx.HTTPStatusError as exc:  # PrefectHTTPStatusError is one
        status = exc.response.status_code
        if status >= 500 or status in (408, 429):
            raise PrefectApiUnavailable(f"the Prefect API {where} answered {status}.",
                                        hint="retry when the server is healthy.") from None
        raise PrefectApiRefused(f"the Prefect API {where} refused the request: {status}.",
                                hint="check PREFECT_API_URL names a Prefect server (ending in /api) and "
                                "PREFECT_API_KEY / PREFECT_API_AUTH_STRING.") from None
    except ObjectNotFound:  # a 404 on a route every Prefect server has: not a Prefect API
        raise PrefectApiRefused(f"the Prefect API {where} answered 404: it is not a Prefect server's API.",
                                hint="check PREFECT_API_URL (it ends in /api).") from None
    except (httpx.TransportError, OSError, socket.gaierror) as exc:
        raise PrefectApiUnavailable(f"the Prefect API {where} cannot be reached ({type(exc).__name__}).",
                                    hint="start the server or fix PREFECT_API_URL / [prefect] api_url; nothing "
                                    "was changed.") from None


def _existing_document(client: Any, name: str) -> Any | None:
    from prefect.exceptions import ObjectNotFound

    slug, _, document = name.partition("/")
    try:
        return client.read_block_document_by_name(name=document, block_type_slug=slug, include_secrets=False)
    except ObjectNotFound:
        return None


def _plain(block: Any) -> dict[str, Any]:
    """A block's field values with secrets revealed, to tell whether an update changes anything."""
    values: dict[str, Any] = {}
    for field in type(block).model_fields:
        value: Any = getattr(block, field, None)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in TEMPLATE_KEYS}
        values[field] = value
    return values


def setup_block(name: str, values: list[str], *, api_url: str | None = None) -> BlockSetup:
    """Create the block ``name`` ('type-slug/name') from ``values`` (``parse_secret_values``), or update the one
    that exists: only its secret fields change, anything else the operator set in the UI (payload, headers,
    notify type) stays. Idempotent: the same values again is ``unchanged``."""
    kind = kind_or_raise(name)
    register_secret(*values)
    cls = kind.block_class()
    document = name.partition("/")[2]
    with prefect_api(api_url) as server:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            found = _existing_document(client, name) is not None
        try:
            existing = cls.load(document, _sync=True) if found else None
        except ValueError:  # pydantic's ValidationError too: a document this class cannot read
            raise ConfigurationError(f"block {name!r} exists but is not a {kind.slug} block this Prefect can read.",
                                     hint="delete it in the Prefect UI (Blocks) or name another block in "
                                     "[notifications]; nothing was changed.") from None
        try:
            if existing is None:
                block = cls(**kind.defaults(document), **kind.fields(values, None))
            else:
                current = {field: getattr(existing, field) for field in type(existing).model_fields}
                block = cls(**{**current, **kind.fields(values, existing)})
        except (ValueError, TypeError) as exc:  # the block class's own checks (a Teams URL that is not a workflow)
            raise ConfigurationError(f"a {kind.slug} block refuses the {' and '.join(kind.labels)} given "
                                     f"({scrub(type(exc).__name__)}).",
                                     hint="give the value exactly as the service shows it; nothing was changed.") \
                from None
        if existing is not None and _plain(existing) == _plain(block):
            return BlockSetup(block=name, outcome="unchanged", server=scrub(server))
        block.save(document, overwrite=True, _sync=True)
    return BlockSetup(block=name, outcome="updated" if existing is not None else "created", server=scrub(server))


def check_blocks(settings: NotificationSettings, *, api_url: str | None = None) -> list[BlockStatus]:
    """Each block the settings name, and whether the server has it."""
    served = named_blocks(settings)
    with prefect_api(api_url):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return [BlockStatus(block=name, severities=severities, exists=_existing_document(client, name) is not None,
                                supported=name.partition("/")[0] in KINDS) for name, severities in served.items()]


def send_test(names: list[str], *, api_url: str | None = None) -> list[Delivery]:
    """Send one test message through each block in ``names``: what on-call sees when the runbooks notify. A block
    that cannot be loaded or does not deliver is reported (scrubbed), and the others are still tried."""
    import prefect.blocks.notifications  # noqa: F401 - registers the block classes Block.load looks up by slug
    from prefect.blocks.core import Block

    subject = "[runbooks] test notification"
    body = (f"A test from 'runbooks notifications test' on {socket.gethostname()} at "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: this block reaches on-call. No action needed.")
    sent: list[Delivery] = []
    with prefect_api(api_url):
        for name in names:
            try:
                block: Any = Block.load(name, _sync=True)  # type: ignore[call-arg]
            except ValueError:
                sent.append(Delivery(block=name, delivered=False, detail="no such block on this server "
                                     "('runbooks notifications setup' makes it)"))
                continue

            register_block_secrets(block)
            try:
                if hasattr(block, "raise_on_failure"):  # apprise blocks only log a failed send otherwise
                    with block.raise_on_failure():
                        block.notify(body=body, subject=subject, _sync=True)
                else:
                    block.notify(body=body, subject=subject, _sync=True)
            except Exception as exc:  # noqa: BLE001 - one dead block does not keep the test from the others
                text = scrub(f"{type(exc).__name__}: {exc or 'not delivered'}".splitlines()[0])[:300]
                sent.append(Delivery(block=name, delivered=False, detail=text))
            else:
                sent.append(Delivery(block=name, delivered=True))
    return sent


def register_block_secrets(block: object) -> None:
    """Secret fields (``SecretStr``, ``SecretDict``) and any URL of a loaded block: a webhook URL often is the
    credential. Registered for scrubbing before anything can print them."""
    for name in getattr(type(block), "model_fields", {}):
        value: Any = getattr(block, name, None)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif not (isinstance(value, str) and "url" in name):
            continue
        if isinstance(value, dict):
            register_secret(*[str(v) for k, v in value.items() if v and k not in TEMPLATE_KEYS])
        elif isinstance(value, str):
            register_secret(value)
