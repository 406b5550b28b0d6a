"""What a person typed, reduced to what a reader can see: a name or a reason made of zero-width spaces, fillers or
blank symbols must count as missing (an approval "by" U+200B is an approval by nobody)."""

from __future__ import annotations

import unicodedata

# Characters that draw nothing although their category is a letter or a symbol (Hangul fillers, the blank
# Braille pattern, the Mongolian vowel separator, the combining grapheme joiner, Khmer inherent vowels).
# Variation selectors (U+FE00-FE0F, U+E0100-E01EF) and the Mongolian free variation selectors (U+180B-180D, 180F)
# are marks that only choose a glyph's form: alone they draw nothing.
_BLANK_LOOKING = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u180f\u2800\u3164\uffa0"
                           + "".join(map(chr, range(0xFE00, 0xFE10))) + "".join(map(chr, range(0xE0100, 0xE01F0))))
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})

# The same rule as a pattern for a JSON Schema (the Prefect form and server): at least one character outside
# whitespace, controls, format characters and the blank-looking ones (those of the Basic Multilingual Plane: a
# JSON Schema pattern cannot name the supplementary variation selectors for every engine; the run refuses them).
VISIBLE_PATTERN = ("[^\\s\\u0000-\\u001f\\u007f-\\u00a0\\u00ad\\u034f\\u061c\\u115f\\u1160\\u17b4\\u17b5\\u180b-\\u180f"
                   "\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u2800\\u3000\\u3164\\ufe00-\\ufe0f\\ufeff\\ufff0-\\ufffb"
                   "\\uffa0]")


def visible(text: str) -> str:
    """``text`` without the characters that draw nothing, stripped; empty when nothing visible is left."""
    return "".join(ch for ch in text if ch not in _BLANK_LOOKING
                   and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES
                   or ch == " ").strip()


def is_blank(text: str | None) -> bool:
    return not visible(text or "")
