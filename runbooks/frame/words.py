"""A person's words as flow parameters: a reason or a name goes into the platform's records, a page and the report,
so it is one line a reader can see (no control, line-separator or bidi-override characters), and a reason that
draws nothing ("", spaces, U+200B) is no reason."""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator

from runbooks.core.text import is_blank

# Format characters that change what a reader sees (bidi overrides and isolates); ZWJ/ZWNJ and the like are fine.
_REORDERING = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def one_line(value: str) -> str:
    """Plain text on one line, stripped."""
    for ch in value:
        category = unicodedata.category(ch)
        what = ("a control character" if category == "Cc" else "a line separator" if category in ("Zl", "Zp")
                else "a bidi control" if ch in _REORDERING else None)
        if what:
            raise ValueError(f"{value[:80]!r} contains {what} (U+{ord(ch):04X}): give it as plain text on one line")
    return value.strip()


def reason(value: str) -> str:
    """One line with something visible in it."""
    value = one_line(value)
    if is_blank(value):
        raise ValueError("is blank: say why, in words a reader can see")
    return value


def cleaned_reason(value: str) -> str:
    """A reason made one plain line (control, separator and bidi characters become spaces) rather than refused:
    for a stop, which must never fail on its wording (an automation fills it from an event)."""
    kept = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _REORDERING else ch for ch in value)
    return reason(" ".join(kept.split()))


OneLine = Annotated[str, AfterValidator(one_line)]
Reason = Annotated[str, AfterValidator(reason)]
CleanedReason = Annotated[str, AfterValidator(cleaned_reason)]
