"""What of a person's words a reader can see."""

import re

import pytest

from runbooks.core.text import VISIBLE_PATTERN, is_blank, visible


@pytest.mark.parametrize("text", ["", "   ", "\t\n", "\u200b", "\u2060 ", "\ufeff", "\u3164", "\u2800", "\u00a0",
                                  "\u3000", "\u200e\u200f", "\u180e", "\u115f\u1160", "\uffa0", "\ufe0f",
                                  "\ufe00\u180b"])
def test_text_that_draws_nothing_is_blank_for_the_run_and_the_form(text: str) -> None:
    assert is_blank(text) and not re.search(VISIBLE_PATTERN, text)


@pytest.mark.parametrize("text", ["bob", "José", "x\u200b", "😀", "李", "-", "٣"])
def test_visible_words_are_kept(text: str) -> None:
    assert not is_blank(text) and re.search(VISIBLE_PATTERN, text)
    assert visible(" \u200b" + text + " ") == text.replace("\u200b", "")


def test_a_supplementary_variation_selector_alone_is_blank_for_the_run() -> None:
    """The form's pattern cannot name U+E0100-E01EF for every regex engine; the run refuses it itself."""
    assert is_blank("\U000e0100") and is_blank(" \U000e01ef\ufe0f ")
