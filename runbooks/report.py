"""Building blocks of run reports: a step timeline and small markdown helpers."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from pydantic import BaseModel


class StepTiming(BaseModel):
    step: str
    started_at: datetime
    seconds: float
    outcome: str = "ok"


class Timeline:
    """Records each step's start and duration, including steps that fail."""

    def __init__(self) -> None:
        self.steps: list[StepTiming] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started_at = datetime.now(UTC)
        started = time.monotonic()
        outcome = "ok"
        try:
            yield
        except BaseException as exc:
            outcome = f"failed: {type(exc).__name__}"
            raise
        finally:
            self.steps.append(StepTiming(step=name, started_at=started_at, seconds=time.monotonic() - started,
                                         outcome=outcome))

    def markdown(self) -> str:
        return self.markdown_of(self.steps)

    @staticmethod
    def markdown_of(steps: Sequence[StepTiming]) -> str:
        return table(
            ["step", "started (UTC)", "duration", "outcome"],
            [[s.step, f"{s.started_at:%H:%M:%S}", f"{s.seconds:.2f} s", s.outcome] for s in steps],
        )


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
