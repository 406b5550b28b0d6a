"""Hostile and mistyped input (issue 13), property-based with hypothesis.

Every runbook's parameter model and the settings get wrong types, out-of-range numbers, unknown choices and hostile
strings (quotes, ``../``, NUL bytes, 10 KB names, RTL overrides, combining marks, emoji, lone surrogates). Each bad
value is refused with a validation error naming its field, and every valid value is accepted and survives a round
trip through JSON (how Prefect stores parameters). Through the command line a bad ``--param`` exits 2 with one line
and leaves nothing behind: no repository or state directory, no flow run in Prefect's API, no request to the
trading or inference API. A bad setting from the TOML file or the environment is one ConfigurationError line naming
the field and where it came from.

What is refused and what is not, per field (the rest of the project relies on these):
- inventory names (backup/backup-verification ``databases``, restore ``database``) are one path segment: no
  separator, no leading ``.``, no control character, valid UTF-8, at most 63 bytes; quotes, RTL marks and emoji are
  names PostgreSQL can hold, so they are accepted by the model and refused only when the inventory lacks them;
- PostgreSQL names (``drop_pre_restore``, the parts of ``vacuum_full``) are 1 to 63 bytes without control
  characters; ``../x`` or ``a"b`` are legitimate names there (quoted downstream with ``sql.Identifier``);
- backup ids are ``latest`` or a real UTC time in ASCII digits; plan hashes (``confirm``) are 12 hex digits;
- a rollback ``reason`` is free text (line breaks, quotes, any script) without NUL; ``initiated_by`` and
  ``target_version`` are one line without control characters.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import typing
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from runbooks.core.errors import ConfigurationError
from runbooks.core.text import is_blank
from runbooks.decisions.health import Status
from runbooks.flows import RUNBOOKS
from runbooks.flows.restore import IDENTIFIER
from runbooks.settings import MODEL_ID_PATTERN, RULE_NAME_PATTERN, load_settings

ROOT = Path(__file__).resolve().parent.parent
MODELS: dict[str, type[BaseModel]] = {name: runbook.load()[1] for name, runbook in RUNBOOKS.items()}
FEW = settings(max_examples=25, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
SETTINGS_FEW = settings(FEW, max_examples=20)
CLI_FEW = settings(FEW, max_examples=8)


# --- strategies -----------------------------------------------------------------------------------------------
# Legitimate but awkward characters: quotes, a path-looking fragment, RTL marks and overrides, combining marks,
# emoji (one with zero-width joiners), other scripts.
SPICE = st.sampled_from(["'", '"', "../", "\u202e", "\u200f", "e\u0301", "a\u0308", "\U0001f600",
                         "\U0001f469\u200d\U0001f469\u200d\U0001f467", "é", "ß", "日本", "١٢٣", "\u00a0"])
CONTROL = st.sampled_from(["\x00", "\x01", "\x07", "\x1b", "\n", "\r", "\t", "\x7f", "\x85", "\x9b"])
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
PLAIN_CHAR = st.characters(exclude_categories=("Cc", "Cs"))


def spiced(min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    """Text a person may write: any script, quotes, marks and emoji; no control character, no lone surrogate."""
    return st.lists(st.one_of(PLAIN_CHAR, SPICE), min_size=min_size, max_size=max_size).map("".join)


def with_char(char: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Spiced text with one ``char`` somewhere in it."""
    return st.builds(lambda a, c, b: a + c + b, spiced(max_size=8), char, spiced(max_size=8))


def longer_than(limit: int) -> st.SearchStrategy[str]:
    """More than ``limit`` bytes of UTF-8 (a 10 KB name among them)."""
    return st.one_of(st.just("x" * 10240),
                     spiced(min_size=1, max_size=6).map(lambda t: t * (limit // len(t.encode()) + 1)))


def more_chars_than(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(st.just("y" * 10240), spiced(min_size=1, max_size=6).map(lambda t: t * (limit // len(t) + 1)))


def not_matching(pattern: str, *extra: str) -> st.SearchStrategy[str]:
    return st.one_of(spiced(max_size=16), with_char(CONTROL), st.sampled_from(["", "../x", "a\x00b", *extra])) \
        .filter(lambda s: re.fullmatch(pattern.strip("^$"), s) is None)


NONE: list[st.SearchStrategy[Any]] = [st.none()]
CONTAINERS = st.one_of(st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
                                                                              max_size=2))
BOOL_WORDS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}


def not_text(*, nullable: bool = False) -> st.SearchStrategy[Any]:
    return st.one_of(CONTAINERS, st.integers(), st.floats(), st.booleans(), *([] if nullable else NONE))


def not_bool(*, nullable: bool = False) -> st.SearchStrategy[Any]:
    return st.one_of(CONTAINERS, st.integers().filter(lambda i: i not in (0, 1)),
                     st.floats().filter(lambda f: f not in (0.0, 1.0)),
                     st.text(max_size=8).filter(lambda s: s.lower() not in BOOL_WORDS), *([] if nullable else NONE))


def not_int(lo: int, hi: int) -> st.SearchStrategy[Any]:
    return st.one_of(CONTAINERS, st.none(), st.integers(max_value=lo - 1), st.integers(min_value=hi + 1),
                     st.floats().filter(lambda f: not (math.isfinite(f) and f.is_integer() and lo <= f <= hi)),
                     st.text(max_size=8).filter(lambda s: not any(c.isdigit() for c in s)),
                     st.sampled_from([str(lo - 1), str(hi + 1), "3 jobs", "0x10", "1e400", "٣"]))


def not_float(lo: float, hi: float) -> st.SearchStrategy[Any]:
    return st.one_of(CONTAINERS, st.none(), st.floats(max_value=lo, exclude_max=True),
                     st.floats(min_value=hi, exclude_min=True), st.just(math.nan), st.integers(min_value=int(hi) + 1),
                     st.text(max_size=8).filter(lambda s: not any(c.isdigit() for c in s)))


def not_choice(choices: tuple[str, ...], *, nullable: bool = False) -> st.SearchStrategy[Any]:
    variants = [v for c in choices for v in (c.upper(), f" {c}", f"{c}\x00", c[:-1]) if v not in choices]
    return st.one_of(CONTAINERS, st.integers(), st.sampled_from(variants),
                     st.text(max_size=10).filter(lambda s: s not in choices), *([] if nullable else NONE))


def bad_list(item: st.SearchStrategy[Any], bad_item: st.SearchStrategy[Any], *,
             nullable: bool = False) -> st.SearchStrategy[Any]:
    """Not a list, or a list with one bad item among good ones."""
    spliced = st.builds(lambda good, bad, at: [*good[:at], bad, *good[at:]], st.lists(item, max_size=3), bad_item,
                        st.integers(0, 3))
    return st.one_of(spliced, st.text(max_size=10), st.integers(), st.dictionaries(st.text(max_size=4), item,
                                                                                   max_size=2),
                     *([] if nullable else NONE))


def name_ok(name: str) -> bool:
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name \
        and len(name.encode()) <= 63


INVENTORY_NAME = spiced(min_size=1, max_size=20).filter(name_ok)
HOSTILE_NAME = st.one_of(st.sampled_from(["", ".", "..", "../x", "../../etc/passwd", "a/b", "a\\b", "/abs", ".x"]),
                         with_char(st.sampled_from(["/", "\\"])), spiced(max_size=10).map(lambda t: "." + t),
                         with_char(CONTROL), with_char(SURROGATE), longer_than(63))
PG_NAME = spiced(min_size=1, max_size=20).filter(lambda t: len(t.encode()) <= 63)
BAD_PG_NAME = st.one_of(st.just(""), with_char(CONTROL), longer_than(63), not_text())
TABLE_PART = st.lists(st.one_of(PLAIN_CHAR, SPICE), min_size=1, max_size=12).map("".join) \
    .filter(lambda t: "." not in t and not any(c.isspace() for c in t) and len(t.encode()) <= 63)
QUALIFIED_TABLE = st.builds(lambda *parts: ".".join(parts), TABLE_PART, TABLE_PART, TABLE_PART)
BAD_QUALIFIED_TABLE = st.one_of(
    st.sampled_from(["trading_db.trades", "a.b.c.d", "trading_db.public.my table", "..", "trading_db..t"]),
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", TABLE_PART, with_char(CONTROL), TABLE_PART),
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", TABLE_PART, TABLE_PART, longer_than(63).map(lambda t: t.replace(
        ".", "").replace(" ", "") or "z" * 64)),
    not_text())


def backup_id_of(moment: datetime) -> str:
    return f"{moment.year:04d}{moment:%m%dT%H%M%S}Z"


BACKUP_ID = st.one_of(st.just("latest"), st.datetimes().map(backup_id_of))
BAD_BACKUP_ID = st.one_of(
    not_text(), st.sampled_from(["", "LATEST", "latest\n", " latest", "20261121T020000", "20261121t020000z",
                                 "20261121T020000Z ", "20261399T996099Z", "20230229T000000Z", "../20261121T020000Z",
                                 "٢٠٢٦١١٢١T٠٢٠٠٠٠Z", "２０２６１１２１T020000Z"]),
    st.datetimes().map(lambda d: backup_id_of(d) + "\x00"), not_matching(r"latest|[0-9]{8}T[0-9]{6}Z"))
NO_DIGITS = st.text(max_size=12).filter(lambda s: not any(c.isdigit() for c in s))
DURATION_PARAM_BAD = st.one_of(  # a duration parameter: negative, zero, not a duration, not finite
    st.sampled_from(["-5m", "0m", "5 parsecs", "m", "9999999999d", "1e400s", "", "PT-10M", "nan", "inf"]),
    CONTAINERS.filter(lambda v: v not in ([], {})), st.booleans(), st.integers(max_value=0), st.none())


@dataclass(frozen=True)
class Spec:
    """One parameter of one runbook: values it must refuse and, where meaningful, values it must keep."""

    runbook: str
    field: str
    bad: st.SearchStrategy[Any]
    good: st.SearchStrategy[Any] | None
    base: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.runbook}.{self.field}"


def boolean(runbook: str, name: str, *, nullable: bool = False, base: dict[str, Any] | None = None) -> Spec:
    good = st.one_of(st.booleans(), *(NONE if nullable else []))
    return Spec(runbook, name, not_bool(nullable=nullable), good, base or {})


# Not a host name: a path, a blank, a leading dash, a space, a control character, too long; or not text at all.
BAD_HOST = st.one_of(st.sampled_from(["", "../x", "-worker", "worker-", "a b", "a..b", "x" * 254, "w\u00f6rker"]),
                     with_char(CONTROL), not_text(nullable=True))
GOOD_HOST = st.one_of(st.none(), st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?(?:\.[a-z0-9]{1,10})?\Z"))
RESTORE = {"database": "trading_db"}
REDIS = {"instance": "memory"}
CFG = {"group": "x", "reason": "why"}
WHY = {"reason": "why"}  # the trading-safety runbooks that need a reason
# One line a reader can see (frame/words.py): no control character, line separator or bidi control; stripped.
BIDI = st.sampled_from(["\u202e", "\u202d", "\u200f", "\u2066", "\u2069", "\u061c"])
ONE_LINE_CHAR = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"),
                              exclude_characters="\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066"
                                                 "\u2067\u2068\u2069")
ONE_LINE_GOOD = st.lists(ONE_LINE_CHAR, max_size=40).map("".join).map(str.strip)
ONE_LINE_BAD = st.one_of(with_char(CONTROL), with_char(BIDI), with_char(st.sampled_from(["\u2028", "\u2029"])),
                         more_chars_than(200), not_text())
BLANK_REASON = st.sampled_from(["", " ", "\u200b", "\u200b \u00a0", "\t\n"])
SPECS: list[Spec] = [
    Spec("backup", "databases", st.one_of(bad_list(INVENTORY_NAME, HOSTILE_NAME),
                                          st.lists(INVENTORY_NAME, min_size=1, max_size=3).map(lambda n: n + n[:1])),
         st.lists(INVENTORY_NAME, max_size=3, unique=True)),
    boolean("backup", "include_cluster"), boolean("backup", "apply_retention"), boolean("backup", "dry_run"),
    boolean("backup", "include_databases"), boolean("backup", "include_redis"),
    Spec("backup", "redis", st.one_of(bad_list(INVENTORY_NAME, HOSTILE_NAME),
                                      st.lists(INVENTORY_NAME, min_size=1, max_size=3).map(lambda n: n + n[:1])),
         st.lists(INVENTORY_NAME, max_size=3, unique=True)),

    Spec("redis-restore", "instance", st.one_of(HOSTILE_NAME, not_text()), INVENTORY_NAME),
    Spec("redis-restore", "backup_id", BAD_BACKUP_ID, BACKUP_ID, REDIS),
    Spec("redis-restore", "target", not_choice(("new", "replace")), st.sampled_from(["new", "replace"]), REDIS),
    Spec("redis-restore", "confirm", st.one_of(not_matching("[0-9a-f]{12}", "ABCDEF012345", "0" * 11, "0" * 13),
                                               not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{12}\Z")), REDIS),
    Spec("redis-restore", "approval_timeout_seconds", not_int(1, 86400), st.integers(1, 86400), REDIS),
    Spec("redis-restore", "approval_poll_seconds", not_int(1, 300), st.integers(1, 300), REDIS),
    Spec("redis-restore", "sync_timeout_seconds", not_int(5, 86400), st.integers(5, 86400), REDIS),
    boolean("redis-restore", "dry_run", base=REDIS),

    Spec("restart-service", "service", st.one_of(HOSTILE_NAME, not_text()), INVENTORY_NAME, WHY),
    Spec("restart-service", "reason", st.one_of(BLANK_REASON, with_char(CONTROL), more_chars_than(500), not_text()),
         ONE_LINE_GOOD.filter(lambda t: not is_blank(t)), {"service": "x"}),
    boolean("restart-service", "dry_run", base={"service": "x", **WHY}),

    Spec("config-rollback", "group", st.one_of(HOSTILE_NAME, not_text()), INVENTORY_NAME, WHY),
    Spec("config-rollback", "reason", st.one_of(BLANK_REASON, with_char(CONTROL), more_chars_than(500), not_text()),
         ONE_LINE_GOOD.filter(lambda t: not is_blank(t)), {"group": "x"}),
    Spec("config-rollback", "action", not_choice(("rollback", "keep")), st.sampled_from(["rollback", "keep"]), CFG),
    Spec("config-rollback", "source", not_choice(("kept", "backup")), st.sampled_from(["kept", "backup"]), CFG),
    Spec("config-rollback", "version", st.one_of(not_matching(r"[0-9]{8}T[0-9]{6}Z(-[0-9]{1,3})?", "2026-11-21",
                                                              "20261121T020000Z-1234"), not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(r"\A[0-9]{8}T[0-9]{6}Z\Z")), CFG),
    Spec("config-rollback", "backup_id", BAD_BACKUP_ID, BACKUP_ID, {**CFG, "source": "backup"}),
    Spec("config-rollback", "files",
         st.one_of(bad_list(st.just("/etc/app.conf"), st.sampled_from(["etc/x", "/a/../b", "/a\x00b", ""])),
                   st.just(["/etc/a.conf", "/etc/a.conf"])),
         st.lists(st.from_regex(r"\A(/[a-z0-9_]{1,8}){1,4}\Z"), max_size=3, unique=True).map(
             lambda files: [Path(f) for f in files]), CFG),
    boolean("config-rollback", "dry_run", base=CFG),
    Spec("config-rollback", "confirm", st.one_of(not_matching("[0-9a-f]{12}", "ABCDEF012345"),
                                                 not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{12}\Z")), CFG),
    Spec("config-rollback", "approval_timeout_seconds", not_int(10, 86400), st.integers(10, 86400), CFG),
    Spec("config-rollback", "approval_poll_seconds", not_int(1, 300), st.integers(1, 300), CFG),

    Spec("database-connections", "database", st.one_of(HOSTILE_NAME, not_text(nullable=True)),
         st.one_of(st.none(), INVENTORY_NAME)),
    boolean("database-connections", "dry_run"),
    Spec("database-connections", "confirm", st.one_of(not_matching("[0-9a-f]{12}", "ABCDEF012345"),
                                                      not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{12}\Z"))),

    Spec("backup-verification", "databases", bad_list(INVENTORY_NAME, HOSTILE_NAME),
         st.lists(INVENTORY_NAME, max_size=3)),

    Spec("restore", "database", st.one_of(HOSTILE_NAME, not_text()), INVENTORY_NAME.filter(
        lambda n: n != "trading_db_recovery")),
    Spec("restore", "backup_id", BAD_BACKUP_ID, BACKUP_ID, RESTORE),
    Spec("restore", "before", st.one_of(CONTAINERS, st.booleans(), NO_DIGITS, st.just(math.nan), st.sampled_from(
        ["2026-13-01T00:00:00Z", "2026-11-21T25:00:00Z", "2026-11-21T02:00:00+25:00", "../x", "\x00"])),
        st.one_of(st.none(), st.datetimes(timezones=st.just(UTC)), st.datetimes()), RESTORE),
    Spec("restore", "mode", not_choice(("verify", "new", "replace")), st.sampled_from(["verify", "new", "replace"]),
         RESTORE),
    Spec("restore", "target_database", st.one_of(not_matching(IDENTIFIER, "a'b", "x" * 64, "db name"),
                                                 not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(IDENTIFIER.rstrip("$") + r"\Z").filter(lambda s: s != "trading_db")),
         RESTORE),
    boolean("restore", "overwrite_target", base=RESTORE),
    Spec("restore", "jobs", not_int(1, 32), st.integers(1, 32), RESTORE),
    boolean("restore", "halt_trading", nullable=True, base=RESTORE),
    boolean("restore", "compare_live", base=RESTORE),
    Spec("restore", "restore_globals", not_choice(("auto", "always", "never")),
         st.sampled_from(["auto", "always", "never"]), RESTORE),
    boolean("restore", "no_owner", base=RESTORE),
    Spec("restore", "confirm", st.one_of(not_matching("[0-9a-f]{12}", "ABCDEF012345", "0" * 11, "0" * 13),
                                         not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{12}\Z")), RESTORE),
    Spec("restore", "approval_timeout_seconds", not_int(1, 86400), st.integers(1, 86400), RESTORE),
    Spec("restore", "approval_poll_seconds", not_int(1, 300), st.integers(1, 300), RESTORE),
    Spec("restore", "lock_wait_seconds", not_int(0, 86400), st.integers(0, 86400), RESTORE),
    boolean("restore", "dry_run", base=RESTORE),
    Spec("restore", "in_session_reason", st.one_of(more_chars_than(500), not_text(nullable=True)),
         st.one_of(st.none(), spiced(max_size=60)), RESTORE),

    Spec("dr-game-day", "backup_id", BAD_BACKUP_ID, BACKUP_ID),
    boolean("dr-game-day", "keep_cluster"),
    Spec("dr-game-day", "jobs", not_int(1, 32), st.integers(1, 32)),
    boolean("dr-game-day", "quality"),
    boolean("dr-game-day", "physical"),

    boolean("data-freshness", "act"),
    Spec("data-freshness", "tables", bad_list(spiced(min_size=1, max_size=20), st.one_of(
        st.just(""), more_chars_than(200), with_char(SURROGATE), not_text())),
        st.lists(spiced(min_size=1, max_size=40), max_size=3)),
    boolean("data-freshness", "quality"),

    boolean("disk-cleanup", "dry_run"), boolean("disk-cleanup", "force"),
    Spec("disk-cleanup", "rules", bad_list(st.from_regex(RULE_NAME_PATTERN.rstrip("$") + r"\Z"),
                                           not_matching(RULE_NAME_PATTERN, "Rotated-Logs", "x" * 64), nullable=True),
         st.one_of(st.none(), st.lists(st.from_regex(RULE_NAME_PATTERN.rstrip("$") + r"\Z"), max_size=3))),
    Spec("disk-cleanup", "drop_pre_restore", bad_list(PG_NAME, BAD_PG_NAME), st.lists(PG_NAME, max_size=3)),
    Spec("disk-cleanup", "vacuum_full", bad_list(QUALIFIED_TABLE, BAD_QUALIFIED_TABLE),
         st.lists(QUALIFIED_TABLE, max_size=3)),
    Spec("disk-cleanup", "confirm", st.one_of(not_matching("[0-9a-f]{12}", "ABCDEF012345"), not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{12}\Z"))),
    Spec("disk-cleanup", "approval_timeout_seconds", not_int(10, 86400), st.integers(10, 86400)),
    Spec("disk-cleanup", "approval_poll_seconds", not_int(1, 300), st.integers(1, 300)),
    Spec("disk-cleanup", "in_session_reason", st.one_of(more_chars_than(500), not_text(nullable=True)),
         st.one_of(st.none(), spiced(max_size=60))),

    Spec("model-rollback", "model_id", st.one_of(not_matching(MODEL_ID_PATTERN, "../ppo", "_x", "x" * 201),
                                                 not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(MODEL_ID_PATTERN.rstrip("$") + r"\Z"))),
    Spec("model-rollback", "reason", st.one_of(with_char(st.just("\x00")), more_chars_than(500), not_text()),
         st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=500)),
    Spec("model-rollback", "initiated_by", st.one_of(with_char(CONTROL), more_chars_than(200), not_text()),
         spiced(max_size=60)),
    Spec("model-rollback", "target_version", st.one_of(st.just(""), with_char(CONTROL), more_chars_than(200),
                                                       not_text(nullable=True)),
         st.one_of(st.none(), spiced(min_size=1, max_size=60))),
    boolean("model-rollback", "force"), boolean("model-rollback", "dry_run"),
    Spec("model-rollback", "monitor_minutes", not_float(0, 1440), st.floats(0, 1440)),
    Spec("model-rollback", "poll_seconds", not_float(0.1, 3600), st.floats(0.1, 3600)),

    boolean("health-check", "host"), boolean("health-check", "platform"),
    Spec("health-check", "notify_on", not_choice(typing.get_args(Status)), st.sampled_from(typing.get_args(Status))),
    Spec("health-check", "on_host", BAD_HOST, GOOD_HOST),
    Spec("disk-cleanup", "on_host", BAD_HOST, GOOD_HOST),

    Spec("weekly-report", "days", not_int(1, 31), st.integers(1, 31)),

    boolean("pitr-setup", "restart"), boolean("pitr-setup", "dry_run", nullable=True),
    Spec("pitr-setup", "confirm", st.one_of(not_matching("[0-9a-f]{12}", "ABCDEF012345", "0123456789ab\n"),
                                            not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{12}\Z"))),
    Spec("pitr-setup", "approval_timeout_seconds", not_int(10, 86400), st.integers(10, 86400)),
    Spec("pitr-setup", "approval_poll_seconds", not_int(1, 300), st.integers(1, 300)),
    Spec("pitr-setup", "lock_wait_seconds", not_int(0, 86400), st.integers(0, 86400)),
    Spec("pitr-setup", "in_session_reason", st.one_of(more_chars_than(500), not_text(nullable=True)),
         st.one_of(st.none(), spiced(max_size=60))),
    Spec("pitr-backup", "kind", not_choice(("full", "diff", "incr")), st.sampled_from(["full", "diff", "incr"])),
    Spec("pitr-restore", "target_time", st.one_of(not_text(), st.sampled_from(
        ["", "now", "2026-11-24T13:05:00", "2026-13-01T00:00:00Z", "2026-11-24T25:00:00Z", "../x", "latest\n",
         "2026-11-24T13:05:00+25:00"]), with_char(CONTROL), more_chars_than(64)),
         st.one_of(st.just("latest"), st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()))),
    Spec("pitr-restore", "backup_label", st.one_of(not_matching(r"[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?",
                                                                "20261124-133332F\n", "../20261124-133332F"),
                                                   not_text(nullable=True)),
         st.one_of(st.none(), st.sampled_from(["20261124-133332F", "20261124-133332F_20261125-010000D"]))),
    boolean("pitr-restore", "keep_running"),
    boolean("archive-check", "marker"), boolean("archive-check", "notify"),

    Spec("emergency-stop", "reason", st.one_of(BLANK_REASON, more_chars_than(500), not_text()), None),
    Spec("emergency-stop", "initiated_by", ONE_LINE_BAD, ONE_LINE_GOOD, WHY),

    Spec("resume-trading", "reason", st.one_of(BLANK_REASON, with_char(CONTROL), more_chars_than(500), not_text()),
         ONE_LINE_GOOD.filter(lambda t: not is_blank(t))),
    Spec("resume-trading", "initiated_by", ONE_LINE_BAD, ONE_LINE_GOOD, WHY),
    Spec("resume-trading", "halt_holder", st.one_of(with_char(CONTROL), with_char(BIDI), more_chars_than(200),
                                                    not_text(nullable=True)),
         st.one_of(st.none(), ONE_LINE_GOOD), WHY),
    boolean("resume-trading", "dry_run", base=WHY),
    Spec("resume-trading", "confirm", st.one_of(not_matching("[0-9a-f]{12}", "ABCDEF012345"), not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{12}\Z")), WHY),
    Spec("resume-trading", "approval_timeout_seconds", not_int(10, 86400), st.integers(10, 86400), WHY),
    Spec("resume-trading", "approval_poll_seconds", not_int(1, 300), st.integers(1, 300), WHY),
    Spec("resume-trading", "follow_up_of", st.one_of(not_matching("[0-9a-f-]+", "ABC", "x" * 65),
                                                     not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(r"\A[0-9a-f-]{1,64}\Z")), WHY),

    boolean("drawdown-limit", "reset", base=WHY),
    Spec("drawdown-limit", "reason", st.one_of(with_char(CONTROL), with_char(BIDI), more_chars_than(500), not_text()),
         ONE_LINE_GOOD),
    Spec("drawdown-limit", "confirm", st.one_of(not_matching("[0-9a-f]{12}", "ABCDEF012345"), not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(r"\A[0-9a-f]{12}\Z"))),
    Spec("drawdown-limit", "approval_timeout_seconds", not_int(10, 86400), st.integers(10, 86400)),
    Spec("drawdown-limit", "approval_poll_seconds", not_int(1, 300), st.integers(1, 300)),

    Spec("exchange-reconnect", "initiated_by", ONE_LINE_BAD, ONE_LINE_GOOD),
    boolean("exchange-reconnect", "paper_if_down"),

    Spec("pre-open-check", "market", st.one_of(not_matching(r"[a-z0-9][a-z0-9_-]{0,62}", "USD_COP", "usd cop",
                                                            "_x", "x" * 64), not_text(nullable=True)),
         st.one_of(st.none(), st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z"))),
    Spec("pre-open-check", "horizon", st.one_of(DURATION_PARAM_BAD, st.sampled_from(["25h", "2d", 86401])),
         st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(hours=24))),
    Spec("pre-open-check", "at", st.one_of(CONTAINERS, st.booleans(), NO_DIGITS, st.sampled_from(
        ["2027-01-11T07:30:00", "2027-13-01T00:00:00Z", "2027-01-11T25:00:00-05:00", "2027-01-11T07:30:00+25:00",
         "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1999-12-31T23:59:59Z", "../x", "\x00"]),
        st.datetimes(max_value=datetime(2099, 12, 31)).map(lambda d: d.isoformat()),  # no time zone
        st.datetimes(max_value=datetime(1999, 12, 30), timezones=st.just(UTC)).map(lambda d: d.isoformat())),
         st.one_of(st.none(), st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30),
                                           timezones=st.just(UTC)))),
]


# Bad values always tried besides the generated ones: each was accepted before issue 13.
REGRESSIONS: dict[str, list[Any]] = {
    "backup.databases": [["../x"], ["a\x00b"], ["d" * 64], ["trading_db", "trading_db"]],
    "backup-verification.databases": [["../x"], ["\udcff"]],
    "restore.database": ["../x", "trading\udcffdb", "é" * 32, ""],
    "restore.backup_id": ["٢٠٢٦١١٢١T٠٢٠٠٠٠Z", "20261399T996099Z"],
    "restore.confirm": ["../x", "x" * 10240],
    "dr-game-day.backup_id": ["２０２６１１２１T020000Z", "20230229T000000Z"],
    "data-freshness.tables": [[""], ["t" * 10240]],
    "disk-cleanup.vacuum_full": [["trading_db.public." + "é" * 40], ["trading_db.public.a\x00b"]],
    "model-rollback.reason": ["Sharpe 0.2\x00"],
    "model-rollback.initiated_by": ["\x1b]0;PWNED\x07"],
    "model-rollback.target_version": ["v2\n"],
}


def with_regressions(test: Any, key: str) -> Any:
    for value in REGRESSIONS.get(key, []):
        test = example(value=value)(test)
    return test


def refusal(model: type[BaseModel], data: dict[str, Any]) -> list[Any]:
    """The validation errors of ``data`` (an empty list when the model accepts it)."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return exc.errors()  # type: ignore[return-value]
    return []


# --- the parameter models ---------------------------------------------------------------------------------------
def test_every_parameter_of_every_runbook_has_strategies() -> None:
    """A parameter added later without hostile values of its own fails here."""
    for runbook, model in MODELS.items():
        assert {s.field for s in SPECS if s.runbook == runbook} == set(model.model_fields), runbook


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_bad_values_are_refused_naming_the_field(spec: Spec) -> None:
    model = MODELS[spec.runbook]

    def refused(value: Any) -> None:
        errors = refusal(model, {**spec.base, spec.field: value})
        assert errors, f"{spec} accepted {value!r}"
        assert {e["loc"][0] for e in errors} == {spec.field}, errors

    FEW(given(value=spec.bad)(with_regressions(refused, str(spec))))()


@pytest.mark.parametrize("spec", [s for s in SPECS if s.good is not None], ids=str)
def test_valid_values_are_kept_and_round_trip_through_json(spec: Spec) -> None:
    model = MODELS[spec.runbook]
    assert spec.good is not None

    @FEW
    @given(value=spec.good)
    def kept(value: Any) -> None:
        params = model.model_validate({**spec.base, spec.field: value})
        assert getattr(params, spec.field) == value or isinstance(value, int | float)  # 3 -> 3.0 for a float
        assert model.model_validate_json(params.model_dump_json()) == params  # what Prefect stores and reads back
        assert model.model_validate(params.model_dump()) == params

    kept()


@FEW
@given(runbook=st.sampled_from(sorted(MODELS)), name=st.text(min_size=1, max_size=30))
def test_unknown_parameter_names_are_refused(runbook: str, name: str) -> None:
    model = MODELS[runbook]
    base = {"restore": RESTORE, "redis-restore": REDIS}.get(runbook, {})
    base = {**base, **(WHY if "reason" in model.model_fields and model.model_fields["reason"].is_required() else {})}
    base = {**base, **({"service": "x"} if runbook == "restart-service" else {})}
    base = {**base, **({"group": "x"} if runbook == "config-rollback" else {})}
    errors = refusal(model, {**base, name: "x"})
    assert name in model.model_fields or [(e["loc"], e["type"]) for e in errors] == [((name,), "extra_forbidden")]


# --- the command line: refused before any side effect ---------------------------------------------------------
class Recorder:
    """An HTTP server on loopback standing in for the trading and the inference API: it records every request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                requests.append(f"{self.command} {self.path}")
                self.send_response(503)
                self.end_headers()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any  # noqa: N815 - http.server's names

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Platform:
    """A config whose every side effect is visible: a repository and a state directory that must not appear, both
    APIs on the recorder, a database on a closed port, a cleanup rule on a directory of its own."""

    root: Path
    config: Path
    apis: Recorder

    @property
    def leftovers(self) -> list[str]:
        made = sorted(p.name for p in self.root.iterdir() if p.name not in ("runbooks.toml", "logs"))
        return made + [f"logs/{p.name}" for p in (self.root / "logs").iterdir()] + self.apis.requests


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    root = Path(tempfile.mkdtemp(prefix="runbooks-hostile-"))
    (root / "logs").mkdir()
    apis = Recorder()
    config = root / "runbooks.toml"
    config.write_text(f"""
state_dir = "{root}/state"
[databases.trading_db]
dsn = "postgresql://app@127.0.0.1:1/trading_db"
[repository]
url = "{(root / 'repository').as_uri()}"
[trading_api]
base_url = "{apis.url}"
[inference_api]
base_url = "{apis.url}"
[drill]
work_dir = "{root}/drills"
[cleanup]
watch = ["{root}/logs"]
allowed_roots = ["{root}/logs"]
survey = []
rules = [{{kind = "files", name = "logs", roots = ["{root}/logs"], match_all = true}}, {{kind = "databases"}}]
""")
    try:
        yield Platform(root, config, apis)
    finally:
        apis.close()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def flow_runs() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.count_flow_runs()


def invoke(platform: Platform, *args: str) -> tuple[int, str, str, BaseException | None]:
    """``runbooks`` in this process (typer's runner): exit code, stdout, stderr, any exception but SystemExit."""
    from prefect import flow_engine
    from typer.testing import CliRunner

    from runbooks.cli import app

    heartbeat = flow_engine._send_heartbeats  # type: ignore[attr-defined]
    try:
        result = CliRunner().invoke(app, list(args), env={"RUNBOOKS_CONFIG": str(platform.config)})
    finally:
        flow_engine._send_heartbeats = heartbeat  # type: ignore[attr-defined]  # the CLI patches it per process
    crash = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.stdout, result.stderr, crash


def expected_words(spec: Spec, value: Any, platform: Platform) -> str:
    """What the error line must say: the runbook and field for a model error, else the settings' refusal."""
    from runbooks.cli import printable

    model = MODELS[spec.runbook]
    if refusal(model, {**spec.base, spec.field: value}):
        return f"{spec.runbook}.{spec.field}"
    params = model.model_validate({**spec.base, spec.field: value})
    with environment(platform.config, {}), pytest.raises(ConfigurationError) as info:
        params.check_against(load_settings())  # type: ignore[attr-defined]
    return printable(info.value.message)


def assert_refused_cleanly(platform: Platform, spec: Spec, value: Any) -> None:
    expected = expected_words(spec, value, platform)  # first: a value nothing refuses must not start a real run
    before = flow_runs()
    base = [arg for key, v in spec.base.items() if key != spec.field for arg in ("--param", f"{key}={v}")]
    code, out, err, crash = invoke(platform, "run", spec.runbook, *base, "--param",
                                   f"{spec.field}={json.dumps(value)}")
    assert crash is None and code == 2, (code, err, crash)
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in err and out == "", err
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", err), repr(err)
    assert expected in line, line
    assert platform.leftovers == [] and flow_runs() == before


# Values the models accept but the settings refuse (names the inventory, [freshness] or [cleanup] lack).
UNKNOWN = {
    "backup.databases": st.lists(INVENTORY_NAME.filter(lambda n: n != "trading_db"), min_size=1, max_size=2,
                                 unique=True),
    "backup-verification.databases": st.lists(INVENTORY_NAME.filter(lambda n: n != "trading_db"), min_size=1,
                                              max_size=2),
    "restart-service.service": INVENTORY_NAME,
    "config-rollback.group": INVENTORY_NAME,
    "redis-restore.instance": INVENTORY_NAME.filter(lambda n: n != "memory"),
    "backup.redis": st.lists(INVENTORY_NAME.filter(lambda n: n != "memory"), min_size=1, max_size=2, unique=True),
    "restore.database": INVENTORY_NAME.filter(lambda n: n not in ("trading_db", "trading_db_recovery")),
    "data-freshness.tables": st.lists(spiced(min_size=1, max_size=20).filter(lambda t: t != "ohlcv_usdcop_5m"),
                                      min_size=1, max_size=2),
    "disk-cleanup.rules": st.lists(st.from_regex(RULE_NAME_PATTERN.rstrip("$") + r"\Z").filter(
        lambda r: r not in ("logs", "databases")), min_size=1, max_size=2),
    "disk-cleanup.vacuum_full": st.lists(QUALIFIED_TABLE.filter(lambda t: not t.startswith("trading_db.")),
                                         min_size=1, max_size=2),
    "pre-open-check.market": st.one_of(st.just("crypto"), st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z").filter(
        lambda m: m not in ("usd_cop", "crypto"))),  # a 24/7 market never opens; the rest are not in [markets]
}


@pytest.mark.parametrize("runbook", sorted(MODELS))
def test_bad_params_through_the_cli_exit_2_and_leave_nothing_behind(runbook: str, platform: Platform) -> None:
    specs = [s for s in SPECS if s.runbook == runbook]
    unknown = [(s, UNKNOWN[str(s)]) for s in specs if str(s) in UNKNOWN]
    cases = st.one_of(*(st.tuples(st.just(s), s.bad) for s in specs), *(st.tuples(st.just(s), u) for s, u in unknown))

    def refused(case: tuple[Spec, Any]) -> None:
        assert_refused_cleanly(platform, *case)

    for spec in specs:
        for value in REGRESSIONS.get(str(spec), []):
            refused = example(case=(spec, value))(refused)
    CLI_FEW(given(case=cases)(refused))()


def test_the_flow_run_counter_sees_a_run_the_cli_makes(platform: Platform) -> None:
    """The control for the tests above: a valid run through the same path is counted (and reaches nothing, as the
    repository does not exist)."""
    before = flow_runs()
    code, _out, _err, crash = invoke(platform, "run", "backup-verification", "--param", 'databases=["trading_db"]')
    assert crash is None and code == 1
    assert flow_runs() == before + 1
    assert not (platform.root / "repository").exists()


def cli_process(platform: Platform, prefect_api: str, *args: str | bytes) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RUNBOOKS_")}
    env.update(RUNBOOKS_CONFIG=str(platform.config), PREFECT_API_URL=prefect_api, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "runbooks.cli", *args], env=env, capture_output=True, text=True,
                          errors="backslashreplace", timeout=120)


@pytest.mark.parametrize(("args", "named"), [
    (("run", "backup", "--param", 'databases=["../x"]'), "backup.databases.0: database name '../x' contains a path"),
    (("run", "restore", b"--param", b"database=trading\xffdb"), "restore.database: database name 'trading\\udcffdb' "
                                                                   "is not valid UTF-8 text"),
    (("run", "model-rollback", "--param", 'reason="Sharpe 0.2\\u0000"'), "model-rollback.reason: contains a NUL"),
    (("run", "dr-game-day", "--param", "backup_id=٢٠٢٦١١٢١T٠٢٠٠٠٠Z"), "dr-game-day.backup_id: String should match"),
    (("run", "backup", "--param", 'databases=["trading_db", "trading_db"]'), "'trading_db' listed more than once"),
], ids=["dot-dot", "undecodable-argv", "nul", "arabic-indic-digits", "twice"])
def test_a_real_process_refuses_with_one_line(platform: Platform, prefect_api: str, args: tuple[str | bytes, ...],
                                              named: str) -> None:
    before = flow_runs()
    proc = cli_process(platform, prefect_api, *args)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line and proc.stdout == "", proc.stderr
    assert named in line, line
    assert platform.leftovers == [] and flow_runs() == before


def test_the_server_refuses_a_deployment_run_with_mistyped_parameters(platform: Platform) -> None:
    """Prefect's server enforces the parameter schema it got from the model (types, bounds, patterns, unknown
    names) when a run is created from a deployment; what only a validator checks (an inventory name with '..') is
    refused by the flow's own parameter validation before its first step."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    from runbooks.flows.restore import restore_database_flow

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(restore_database_flow.name)
        schema = restore_database_flow.parameters.model_dump()
        deployment_id = client.create_deployment(flow_id=flow_id, name="hostile-input", parameter_openapi_schema=schema,
                                                 enforce_parameter_schema=True)
        before = flow_runs()
        for bad in ({"database": "trading_db", "jobs": "many"}, {"database": "trading_db", "jobs": 99},
                    {"database": "trading_db", "backup_id": "20261121T020000Z; rm -rf /"},
                    {"database": "trading_db", "mode": "drop"}):
            # (An unknown name, {"bogus": 1}, passes Prefect's flow schema, which does not forbid extra names; the
            # engine refuses it before the flow body runs: tests/test_deployments.py, misspelled field.)
            with pytest.raises(PrefectHTTPStatusError) as info:
                client.create_flow_run_from_deployment(deployment_id, parameters=bad)
            assert info.value.response.status_code in (409, 422), info.value.response.text
        assert flow_runs() == before
        client.delete_deployment(deployment_id)


# --- the settings ---------------------------------------------------------------------------------------------
def toml_string(text: str) -> str:
    escaped = "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cc" else "\\" + c if c in '"\\' else c
                      for c in text)
    return f'"{escaped}"'


def toml_value(value: Any) -> str:
    """``value`` as TOML (inline tables and arrays), so a whole config is ``key = value`` lines."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def nest(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """``{"a": {"b": [{"c": value}]}}`` for ``("a", "b", 0, "c")`` (an index makes a one-element list)."""
    for part in reversed(path[1:]):
        value = [value] if isinstance(part, int) else {part: value}
    return {str(path[0]): value}


def dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) if str(p).isidentifier() else repr(str(p)) for p in path)


@dataclass(frozen=True)
class Setting:
    path: tuple[str | int, ...]
    bad: st.SearchStrategy[Any]
    siblings: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the rest of the table needs to be valid
    env: bool = True  # scalar settings can come from RUNBOOKS_A__B (lists and tables as JSON)

    def __str__(self) -> str:
        return dotted(self.path)


TABLE = {"table": "bars"}
DURATION_BAD = st.one_of(
    st.sampled_from(["-5m", "5 parsecs", "m", "9999999999d", "1e400s", "", "PT-10M", "nan", "inf"]),
    st.builds(lambda c, p: {"count": c, "period": p}, st.one_of(st.just(math.inf), st.just(math.nan), st.just(-1),
              st.just(1e300), st.just([1]), st.just("ten")), st.sampled_from(["minute", "hour", "day"])),
    st.builds(lambda c: {"count": c, "period": "fortnight"}, st.integers(1, 10)),
    CONTAINERS.filter(lambda v: v not in ([], {})), st.booleans(), st.integers(max_value=0))
SETTINGS: list[Setting] = [
    Setting(("databases", "trading_db", "dsn"), st.one_of(
        st.sampled_from(["postgresql://u@h:54x2/db", "host=h port=0", "host=h port=65536", "not a dsn",
                         "postgresql://u@h:-1/db", "host='unclosed", "postgresql://[::1/db"]),
        st.builds(lambda a: f"host=h dbname=trading_db{a}\x00other", spiced(max_size=5)),
        st.integers(65536, 10**6).map(lambda p: f"host=h port={p}"), not_text(nullable=False).filter(
            lambda v: v is not None))),
    Setting(("databases", "trading_db"), st.one_of(st.integers(), st.text(max_size=8), st.lists(st.integers()))),
    Setting(("repository", "url"), st.one_of(
        st.sampled_from(["ftp://x/y", "s3://", "file://relative/path", "file:relative", "/var/backups", "",
                         "file:///srv/\x00backups", "s3://bucket/pre\x1bfix", "file://host/abs"]),
        spiced(max_size=12).filter(lambda u: not u.startswith(("file:", "s3:"))), not_text().filter(
            lambda v: v is not None))),
    Setting(("repository", "part_size_mb"), not_int(5, 512).filter(lambda v: v is not None)),
    Setting(("notifications", "timezone"), st.one_of(st.sampled_from(["../../etc/passwd", "UTC\x00", "Mars/Olympus",
                                                                      "x" * 10240, "", "/etc/localtime"]),
                                                     with_char(CONTROL), not_text().filter(lambda v: v is not None))),
    Setting(("notifications", "block"), not_matching(r"[a-z0-9-]+/[A-Za-z0-9_.-]+", "slack-webhook/../x",
                                                     "Slack/oncall")),
    Setting(("notifications", "severities", "P1", "resolution_minutes"), st.one_of(
        st.integers(max_value=0), NO_DIGITS, CONTAINERS, st.floats().filter(lambda f: not (f.is_integer() and f > 0)))),
    Setting(("notifications", "contacts", "On-Call Primary"), st.one_of(CONTAINERS, st.integers(), st.booleans()),
            env=False),
    Setting(("notifications", "backup_stale_after"), st.one_of(st.sampled_from(["-1", "5", "PT1S", "soon", "1e400"]),
                                                               st.integers(max_value=9), CONTAINERS)),
    Setting(("freshness", "tables", 0, "error_after"), DURATION_BAD, TABLE, env=False),
    Setting(("freshness", "tables", 0, "kill_after"), DURATION_BAD, TABLE, env=False),
    Setting(("freshness", "tables", 0, "table"), st.one_of(BAD_PG_NAME.filter(lambda v: v is not None)), env=False),
    Setting(("freshness", "lookback"), DURATION_BAD),
    Setting(("freshness", "volume_max_drop"), not_float(0, 1)),
    Setting(("cleanup", "allowed_roots"), bad_list(st.just("/var/log"), st.one_of(
        st.sampled_from(["/", "relative/dir", "/var/log/../../etc", "/tmp/\x00x", "", "/etc", "/usr/share", "/var",
                         "/var/lib", "/opt", "/home/x", "/lib64"]),
        with_char(st.just("\x00")).map(lambda t: "/" + t), st.integers()))),
    Setting(("cleanup", "high_watermark"), not_float(0, 100)),
    Setting(("cleanup", "rules", 0, "roots"), bad_list(st.just("/var/log"), st.sampled_from(
        ["/", "/etc", "var/log", "/var/log/../../etc", "/var/log/\x00", "/usr/local/x", "/srv", "/proc/1"])),
        {"kind": "files", "name": "x", "match_all": True}, env=False),
    Setting(("drill", "components", 0, "rto"), DURATION_BAD.filter(lambda v: v != 0), {"name": "x", "rpo": "1m"},
            env=False),  # an objective may be 0
    Setting(("drill", "components", 0, "tables"), bad_list(st.just("trading_db.public.trades"), st.sampled_from(
        ["trades", "a..b", ".x.y", "a.b.c.d", ""])), {"name": "x", "rto": "1m", "rpo": "1m"}, env=False),
    Setting(("drill", "work_dir"), st.one_of(st.sampled_from(["relative", "/tmp/\x00x"]),
                                             st.integers(), CONTAINERS)),
    Setting(("drill", "history"), not_int(1, 100).filter(lambda v: v is not None)),
    Setting(("state_dir",), st.one_of(st.just("/var/lib/\x00runbooks"), CONTAINERS, st.integers()), env=False),
    Setting(("backup", "retention", "daily"), not_int(0, 3660).filter(lambda v: v is not None)),
    Setting(("pitr", "s3_endpoint"), st.one_of(st.sampled_from(["https://s3.local", "s3.local:443/x", "a b", "",
                                                                "s3.local:", "s3.local:123456", "../etc"]),
                                               with_char(CONTROL), CONTAINERS)),
    Setting(("pitr", "s3_ca_file"), st.one_of(st.sampled_from(["ca.pem", "../ca.pem", "/etc/ssl/\x00ca.pem"]),
                                              st.integers(), CONTAINERS)),
    Setting(("pitr", "stanza"), st.one_of(st.sampled_from(["", "-x", "a b", "main\n[global]", "x" * 65]),
                                          with_char(CONTROL), CONTAINERS)),
]
BASE_CONFIG = {"databases": {"trading_db": {"dsn": "postgresql://app@127.0.0.1:1/trading_db"}}}
# Bad settings always tried besides the generated ones: each was accepted, or crashed, before issue 13.
FILE_REGRESSIONS: dict[str, list[Any]] = {
    "databases.trading_db.dsn": ["host=h dbname=trading_db\x00other"],
    "repository.url": ["file:///srv/\x00backups"],
    "notifications.timezone": ["x" * 10240],
    "freshness.tables.'0'.error_after": [True],
    "freshness.lookback": ["9999999999d", {"count": math.inf, "period": "day"}, {"count": 1e300, "period": "day"},
                           {"count": [1], "period": "day"}, True],
    "drill.components.'0'.rto": ["999999999999d", True],
    "drill.work_dir": ["/tmp/\x00x"],
    "state_dir": ["/var/lib/\x00runbooks"],
}
ENV_REGRESSIONS: dict[str, list[Any]] = {
    "cleanup.allowed_roots": [["relative/dir"], ["/var/log/../../etc"]],
    "notifications.timezone": ["x" * 10240],
    "freshness.lookback": ["9999999999d"],
}


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def env_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def env_representable(value: Any) -> bool:
    """The environment holds no NUL, and only surrogates that stand for undecodable bytes."""
    text = env_text(value)
    try:
        os.fsencode(text)
    except (UnicodeEncodeError, ValueError):
        return False
    return "\x00" not in text


@contextmanager
def environment(config: Path, variables: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("RUNBOOKS_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(RUNBOOKS_CONFIG=str(config), **variables)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("RUNBOOKS_")]:
            del os.environ[key]
        os.environ.update(saved)


LOCATED = re.compile(r"(?:settings: |; )(.+?) \((?:in |environment variable |set it in )")


def assert_one_line_naming(message: str, setting: Setting, where: str) -> None:
    """One line with a HINT, no pydantic dump, and every problem located at the setting or a table holding it (a
    table's own check, e.g. cleanup roots inside allowed_roots; union tags such as '.files.' may sit between)."""
    assert "\n" not in message and "HINT:" in message and where in message, message
    for noise in ("Traceback", "pydantic", "input_value", "For further information", "type="):
        assert noise not in message, message
    path = dotted(setting.path).split(".")
    located = LOCATED.findall(message)
    assert located, message
    for loc in located:
        parts = loc.split(".")
        rest = iter(parts)
        deeper = all(part in rest for part in path)  # the setting itself, or an item of it
        holding = parts == path[:len(parts)]  # a table that holds it
        assert parts[0] == path[0] and (deeper or holding), (loc, path, message)


@pytest.fixture(scope="module")
def config_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="runbooks-hostile-settings-") as directory:
        yield Path(directory) / "runbooks.toml"


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_a_bad_setting_in_the_file_is_one_line_naming_it(setting: Setting, config_file: Path) -> None:
    def refused(value: Any) -> None:
        section = nest(setting.path, value) if not setting.siblings else \
            nest(setting.path[:-1], {**setting.siblings, str(setting.path[-1]): value})  # the rest of its table
        document = merge(BASE_CONFIG, section)
        text = "\n".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in document.items())
        config_file.write_text(text, encoding="utf-8", errors="surrogatepass")
        with environment(config_file, {}), pytest.raises(ConfigurationError) as info:
            load_settings()
        message = str(info.value)
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # a lone surrogate is neither UTF-8 nor TOML
            assert "\n" not in message and "cannot be read" in message and str(config_file) in message
            return
        assert_one_line_naming(message, setting, str(config_file))

    for value in FILE_REGRESSIONS.get(str(setting), []):
        refused = example(value=value)(refused)
    SETTINGS_FEW(given(value=setting.bad.filter(lambda v: v is not None))(refused))()


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.env], ids=str)
def test_a_bad_setting_in_the_environment_is_one_line_naming_the_variable(setting: Setting,
                                                                          config_file: Path) -> None:
    config_file.write_text(f"[databases.trading_db]\ndsn = {toml_string(BASE_CONFIG['databases']['trading_db']['dsn'])}"
                           "\n", encoding="utf-8")
    variable = "RUNBOOKS_" + "__".join(str(p).upper() for p in setting.path)

    def refused(value: Any) -> None:
        with environment(config_file, {variable: env_text(value)}), pytest.raises(ConfigurationError) as info:
            load_settings()
        message = str(info.value)
        if "settings cannot be read" in message:  # JSON the environment source could not parse: names the field
            assert "\n" not in message and "HINT:" in message and str(setting.path[0]) in message, message
            return
        assert_one_line_naming(message, setting, "environment variable RUNBOOKS_")
        assert str(config_file) not in message

    for value in ENV_REGRESSIONS.get(str(setting), []):
        refused = example(value=value)(refused)
    SETTINGS_FEW(given(value=setting.bad.filter(lambda v: v is not None).filter(env_representable))(refused))()


@FEW
@given(name=HOSTILE_NAME.filter(lambda n: not any(0xD800 <= ord(c) <= 0xDFFF for c in n)),  # TOML holds none
       kind=st.sampled_from(["databases", "cluster"]))
@example(name="d" * 64, kind="databases").via("63 bytes")
@example(name="x" * 300, kind="databases").via("crashed the backup: File name too long")
@example(name="x" * 300, kind="cluster").via("the same, for the cluster's directory")
def test_a_hostile_inventory_name_in_the_file_is_refused(name: str, kind: str, config_file: Path) -> None:
    """Inventory names become repository directories (and PostgreSQL names when the DSN has none)."""
    config_file.write_text(f"[databases.{toml_string(name)}]\ndsn = \"host=h\"\n" if kind == "databases" else
                           f"[cluster]\nname = {toml_string(name)}\n", encoding="utf-8")
    with environment(config_file, {}), pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message and "HINT:" in message and str(config_file) in message, message
    assert message.startswith(f"invalid runbooks settings: {kind if kind == 'databases' else 'cluster.name'}")


def test_a_bad_setting_through_the_cli_is_one_line_and_exit_2(platform: Platform, config_file: Path) -> None:
    """The same refusal as the CLI prints it, for a few of the values above: exit 2, nothing run or created."""
    before = flow_runs()
    for variable, value, named in [
        ("RUNBOOKS_FRESHNESS__LOOKBACK", "9999999999d", "freshness.lookback (environment variable"),
        ("RUNBOOKS_REPOSITORY__URL", "file:///srv/\x1bbackups", "repository.url (environment variable"),
        ("RUNBOOKS_CLEANUP__ALLOWED_ROOTS", '["/var/log/../../etc"]', "cleanup.allowed_roots.'0'"),
        ("RUNBOOKS_DATABASES", json.dumps({"x" * 300: {"dsn": "host=h"}}), "is longer than 63 bytes"),
    ]:
        code, out, err, crash = invoke_with(platform, {variable: value}, "run", "backup", "--param", "dry_run=true")
        assert crash is None and code == 2 and out == "", (code, err, crash)
        line = err.strip()
        assert line.startswith("error: ") and "\n" not in line and named in line, line
        assert "\x1b" not in err
    assert platform.leftovers == [] and flow_runs() == before


def invoke_with(platform: Platform, env: dict[str, str], *args: str) -> tuple[int, str, str, BaseException | None]:
    from typer.testing import CliRunner

    from runbooks.cli import app

    result = CliRunner().invoke(app, list(args), env={"RUNBOOKS_CONFIG": str(platform.config), **env})
    crash = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.stdout, result.stderr, crash

