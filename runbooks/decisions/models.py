"""Whether a serving model is degraded, by seed 004's decision table (section 3.2): the evidence the inference API
gives, graded against the policy in the settings. Pure functions: the model-rollback runbook gathers, this
decides; the same grading tells whether an older version was healthy while it served (a rollback target)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from runbooks.settings import ModelPolicy

Verdict = Literal["healthy", "monitor", "shadow", "rollback"]
VERDICT_ORDER: dict[Verdict, int] = {"healthy": 0, "monitor": 1, "shadow": 2, "rollback": 3}


class ModelEvidence(BaseModel):
    """What the inference API says about one model version; a reading it does not give is None, never 0."""

    model_id: str
    version: str | None = None
    sharpe: float | None = None
    win_rate: float | None = Field(default=None, description="0-1")
    error_rate: float | None = Field(default=None, description="share of failed predictions, 0-1")
    consecutive_losses: int | None = None
    max_psi: float | None = Field(default=None, description="the largest feature drift (PSI)")
    latency_seconds: float | None = None


class Judgement(BaseModel):
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list, description="each reading past a line, with the line")
    missing: list[str] = Field(default_factory=list, description="readings the API did not give")


def judge(evidence: ModelEvidence, policy: ModelPolicy) -> Judgement:
    """The worst line any reading crosses. Sharpe: below 0.8 monitor, below 0.5 shadow-mode comparison, below 0.3
    roll back; an error rate over 5 %, drift over PSI 0.3 or latency over 5 s roll back too; drift over 0.2, a
    loss streak over 5 or a win rate under 40 % are symptoms to monitor (the seed's defaults)."""
    findings: list[tuple[Verdict, str]] = []
    e, p = evidence, policy
    if e.sharpe is not None:
        if e.sharpe < p.sharpe_rollback_below:
            findings.append(("rollback", f"Sharpe {e.sharpe:.2f} < {p.sharpe_rollback_below} (severe degradation)"))
        elif e.sharpe < p.sharpe_shadow_below:
            findings.append(("shadow", f"Sharpe {e.sharpe:.2f} < {p.sharpe_shadow_below} (significant degradation)"))
        elif e.sharpe < p.sharpe_monitor_below:
            findings.append(("monitor", f"Sharpe {e.sharpe:.2f} < {p.sharpe_monitor_below} (minor degradation)"))
    if e.error_rate is not None and e.error_rate > p.max_error_rate:
        findings.append(("rollback", f"prediction error rate {e.error_rate:.1%} > {p.max_error_rate:.0%}"))
    if e.max_psi is not None:
        if e.max_psi > p.psi_act:
            findings.append(("rollback", f"feature drift PSI {e.max_psi:.2f} > {p.psi_act}"))
        elif e.max_psi > p.psi_warn:
            findings.append(("monitor", f"feature drift PSI {e.max_psi:.2f} > {p.psi_warn}"))
    if e.latency_seconds is not None and e.latency_seconds > p.max_latency_seconds:
        findings.append(("rollback", f"latency {e.latency_seconds:.1f} s > {p.max_latency_seconds} s"))
    if e.consecutive_losses is not None and e.consecutive_losses > p.max_consecutive_losses:
        findings.append(("monitor", f"{e.consecutive_losses} consecutive losses > {p.max_consecutive_losses}"))
    if e.win_rate is not None and e.win_rate < p.min_win_rate:
        findings.append(("monitor", f"win rate {e.win_rate:.0%} < {p.min_win_rate:.0%}"))
    verdicts: list[Verdict] = [v for v, _ in findings]
    verdict: Verdict = max(verdicts, key=VERDICT_ORDER.__getitem__) if verdicts else "healthy"
    missing = [name for name in ("sharpe", "error_rate", "max_psi", "latency_seconds")
               if getattr(e, name) is None]
    return Judgement(verdict=verdict, reasons=[r for _, r in findings], missing=missing)


def served_healthy(evidence: ModelEvidence, policy: ModelPolicy) -> bool:
    """A version is a rollback target only if its recorded metrics needed no more than monitoring, and they
    include a Sharpe ratio: a version with no record is not known to have been healthy."""
    return evidence.sharpe is not None and VERDICT_ORDER[judge(evidence, policy).verdict] <= VERDICT_ORDER["monitor"]


class Candidate(BaseModel):
    """A version the registry offers to roll back to, with the metrics it recorded while it served."""

    version: str
    deployed_at: datetime | None = None
    status: str | None = None
    recorded: ModelEvidence
