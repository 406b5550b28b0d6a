"""Building blocks of run reports: the step timeline and small markdown helpers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, Field

Figure = int | float | str | bool | None


class StepTiming(BaseModel):
    step: str
    started_at: datetime
    seconds: float
    outcome: str = "ok"
    figures: dict[str, Figure] = Field(default_factory=dict)


def timeline_markdown(steps: Sequence[StepTiming]) -> str:
    def figures(s: StepTiming) -> str:
        return ", ".join(f"{k}={v}" for k, v in s.figures.items()) or ""

    return table(
        ["step", "started (UTC)", "duration", "outcome", "figures"],
        [[s.step, f"{s.started_at:%H:%M:%S}", f"{s.seconds:.2f} s", s.outcome, figures(s)] for s in steps],
    )


class Concluded(Protocol):
    started_at: datetime
    seconds: float
    error: str | None
    timeline: list[StepTiming]
    next_steps: list[str]


def report_head(title: str, verdict: str) -> str:
    """How every report starts: what ran, then how it ended (``# Backup — succeeded``)."""
    return f"# {title} — {verdict}"


def started(result: Concluded) -> str:
    """The line under the heading: when the run started (UTC) and how long it took."""
    return f"Started {result.started_at:%Y-%m-%d %H:%M:%S} UTC, {result.seconds:.1f} s"


def report_tail(result: Concluded, *, body: str) -> list[str]:
    """How every report ends: the run's error (unless ``body``, the report so far, already says it), the step
    timeline and the next steps."""
    lines: list[str] = []
    if result.error and result.error not in body:
        lines += ["## Error", result.error, ""]
    lines += ["## Timeline", timeline_markdown(result.timeline)]
    if result.next_steps:
        lines += ["", "## Next steps", *[f"- {step}" for step in result.next_steps]]
    return lines


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def inline(text: object) -> str:
    """A person's words (an approver, a reason) inside a markdown line: markup characters escaped, one line."""
    return "".join(f"\\{ch}" if ch in "\\`*_[]<>#|~" else ch for ch in " ".join(str(text).split()))


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
