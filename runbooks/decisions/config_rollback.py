"""What a configuration rollback will do, decided from plain values: the unified diff an approver reads (secrets
masked), the plan and its hash, whether the files still are what the plan saw, the names of kept versions and which
kept versions retention lets go. No I/O here.

The hash covers the group, the source, and per file its path, its current SHA-256 and the target's: a confirm
approves exactly those bytes over exactly those bytes, so a file changed after the plan makes the plan stale.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from runbooks.core.redact import MASK, scrub

Source = Literal["kept", "backup"]
KEPT_MARK = ".runbooks-"
VERSION_PATTERN = r"^[0-9]{8}T[0-9]{6}Z(-[0-9]{1,3})?$"  # [0-9], not \d: that also matches other scripts' digits
_VERSION = re.compile(VERSION_PATTERN)
_SECRET_WORD = r"(?:pass(?:word|wd|phrase)?|pwd?|secret|token|key|credential|auth|dsn|private|salt|signing|cookie)"
# A line whose key looks secret: `password = x`, `DB_PASSWORD: "x",`, `export API_KEY=x`, `"token": "x"`. The key
# may be quoted and prefixed (comments too: a commented-out password is still one). Masked on both sides of the diff.
_SECRET_LINE = re.compile(
    rf"""^(?P<key>\s*(?:[#;]+\s*)?(?:export\s+)?["']?[\w.\-]*{_SECRET_WORD}[\w.\-]*["']?\s*[:=]\s*)"""
    r"""(?P<value>.+?)(?P<tail>,?\s*)$""", re.IGNORECASE)
# The same pairs inside a line (a one-line JSON or JS object, a query string): the value up to its closing quote,
# or to the next separator when unquoted.
_SECRET_PAIR = re.compile(
    rf"""(?P<key>["']?[\w.\-]*{_SECRET_WORD}[\w.\-]*["']?\s*[:=]\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|[^\s,;}&]+)""", re.IGNORECASE)


def version_stamp(now: datetime) -> str:
    """A kept version's name: the UTC time it was kept (``20261121T020000Z``)."""
    return f"{now:%Y%m%dT%H%M%SZ}"


def next_version(now: datetime, taken: set[str]) -> str:
    """``version_stamp(now)``, or with ``-2``, ``-3``… when a version of that second exists already."""
    stamp = version_stamp(now)
    if stamp not in taken:
        return stamp
    n = 2
    while f"{stamp}-{n}" in taken:
        n += 1
    return f"{stamp}-{n}"


def is_version(text: str) -> bool:
    return bool(_VERSION.match(text))


def kept_name(file_name: str, version: str) -> str:
    """``<file name>.runbooks-<version>``: what the operations runbook's ``cp ecosystem.config.cjs
    ecosystem.config.backup.cjs`` does, with the time in the name."""
    return f"{file_name}{KEPT_MARK}{version}"


# A command-line flag that carries a secret (PM2 `args: '--password x'`, `['--db-pass', 'x']`): its next value.
_SECRET_FLAG = re.compile(
    rf"""(?P<flag>--?[\w\-]*{_SECRET_WORD}[\w\-]*)(?P<sep>=|\s+|["']\s*,\s*["'])"""
    r"""(?P<value>[^\s"',\]]+)""", re.IGNORECASE)
# A key whose value is on the next lines (YAML `password:` then an indented or block value).
_SECRET_BLOCK_KEY = re.compile(rf"""^\s*(?:[#;]+\s*)?["']?[\w.\-]*{_SECRET_WORD}[\w.\-]*["']?\s*:\s*[|>]?[-+]?\s*$""",
                               re.IGNORECASE)


def mask_line(line: str) -> str:
    """The line with its value masked when its key looks like a password, secret, token or key (or a flag that
    carries one); registered secrets and URL passwords are scrubbed from every line. It over-masks rather than
    under-masks: the approver sees that such a line changed, never its value."""
    found = _SECRET_LINE.match(line)
    if found and found["value"].strip() not in ("", MASK):
        line = f"{found['key']}{MASK}{found['tail']}"
    else:
        line = _SECRET_PAIR.sub(lambda m: f"{m['key']}{MASK}", line)
    line = _SECRET_FLAG.sub(lambda m: f"{m['flag']}{m['sep']}{MASK}", line)
    return scrub(line)


def mask_lines(lines: list[str]) -> list[str]:
    """``mask_line`` on each, and the lines after a key whose value starts on the next line (YAML ``password:``
    then an indented value or block), masked whole while they are indented deeper than that key."""
    masked: list[str] = []
    block_indent: int | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and line.strip() and indent > block_indent:
            masked.append(" " * indent + MASK + ("\n" if line.endswith("\n") else ""))
            continue
        block_indent = indent if _SECRET_BLOCK_KEY.match(line.rstrip("\n")) else None
        masked.append(mask_line(line))
    return masked


def _text(data: bytes) -> list[str] | None:
    if b"\x00" in data:
        return None
    return data.decode("utf-8", errors="replace").splitlines()


def config_diff(path: str, current: bytes, target: bytes, *, context: int = 3, max_lines: int = 400) -> str:
    """The unified diff from the file as it is to the target, values of secret-looking keys masked and registered
    secrets scrubbed (the plan is an artifact, a log line and an approval form). Empty when they are the same."""
    if current == target:
        return ""
    before, after = _text(current), _text(target)
    if before is None or after is None:
        return f"binary file {path}: {len(current)} bytes now, {len(target)} bytes in the target (not shown)"
    lines = list(difflib.unified_diff(mask_lines(before), mask_lines(after),
                                      fromfile=f"{path} (now)", tofile=f"{path} (target)", lineterm="", n=context))
    if not lines:  # differs only in masked values or line endings
        return f"--- {path} (now)\n+++ {path} (target)\n(differs only in masked values or line endings)"
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"… {len(lines) - max_lines} more diff lines not shown"]
    return "\n".join(lines)


class FilePlan(BaseModel):
    """One file of the plan."""

    path: str
    current_sha256: str
    target_sha256: str
    current_bytes: int
    target_bytes: int
    changes: bool = Field(description="false: the file already holds the target; it is not written")
    diff: str = Field(default="", description="unified diff, secret values masked")


class ConfigPlan(BaseModel):
    """What the rollback will write, over what, and what it reloads afterwards."""

    group: str
    source: Source
    version: str | None = Field(default=None, description="the kept version put back (source kept)")
    backup_id: str | None = Field(default=None, description="the cluster backup put back (source backup)")
    owner: str = Field(description="what is reloaded afterwards, in words")
    files: list[FilePlan]
    plan_hash: str = ""

    @property
    def changing(self) -> list[FilePlan]:
        return [f for f in self.files if f.changes]


def plan_hash(*, group: str, source: Source, origin: str, files: list[FilePlan]) -> str:
    """12 hex digits over the group, where the targets come from and (path, current sha, target sha) per file."""
    payload = json.dumps([group, source, origin, sorted((f.path, f.current_sha256, f.target_sha256) for f in files)])
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def changed_since_plan(plan: ConfigPlan, current: dict[str, str | None]) -> list[str]:
    """The plan's files whose SHA-256 now (None: unreadable or gone) is not the one the plan was made over."""
    return [f.path for f in plan.files if current.get(f.path) != f.current_sha256]


# -- the runbook's own record of the versions it kept ----------------------------------------------------------------

class KeptFile(BaseModel):
    path: str = Field(description="the configuration file")
    kept_as: str = Field(description="the copy, 0600")
    sha256: str
    bytes: int


class KeptVersion(BaseModel):
    """One set of copies taken at once: before a rollback wrote over them, or on request (action keep)."""

    version: str = Field(pattern=VERSION_PATTERN)
    kept_at: datetime
    why: str
    flow_run_id: str | None = None
    files: list[KeptFile]

    def file(self, path: str) -> KeptFile | None:
        return next((f for f in self.files if f.path == path), None)


class KeptRecord(BaseModel):
    """A group's kept versions, oldest first. Only versions listed here are ever put back or deleted."""

    group: str
    versions: list[KeptVersion] = Field(default_factory=list)

    def find(self, version: str | None) -> KeptVersion | None:
        """The named version, or the newest when None."""
        if version is None:
            return self.versions[-1] if self.versions else None
        return next((v for v in self.versions if v.version == version), None)


def versions_to_prune(record: KeptRecord, *, keep: int, protect: set[str]) -> list[KeptVersion]:
    """The oldest versions beyond ``keep``; ``protect`` (the one just kept, the one put back) are never among them."""
    excess = len(record.versions) - keep
    if excess <= 0:
        return []
    return [v for v in record.versions if v.version not in protect][:excess]
