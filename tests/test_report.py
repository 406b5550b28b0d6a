"""Report building blocks."""

from runbooks.decisions.report import inline


def test_a_persons_words_cannot_restyle_a_report_line() -> None:
    assert inline("bob *x* _y_ [a](b)\nline2 `c` <b>") == r"bob \*x\* \_y\_ \[a\](b) line2 \`c\` \<b\>"
