"""Model rollback: seed 004 section 3.2 ("Model Performance Degradation") and seed 000's "ML Model Performance
Degraded", as a flow that decides from evidence, rolls back to the last good version, proves it took, and watches.

Trigger: ``runbooks run model-rollback``, the ``model-rollback-on-demand`` deployment from the Prefect UI, or the
``model-rollback-on-degradation`` deployment when a ``runbooks.model.degraded`` event arrives. Blast radius: the
model registry (the inference API) swaps the serving version; nothing else, unless ``[models]
kill_switch_on_escalation`` lets an escalation press the kill switch. ``dry_run`` makes only reads. Rollback:
roll forward by hand (or with ``target_version``) once the newer version is fixed; the runbook never rolls back
twice for one incident.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import quote

from prefect import flow
from prefect.states import State
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from runbooks.adapters.records import RollbackRecords
from runbooks.adapters.registry import MetricPoint, Predictions, RegistryRef, Serving
from runbooks.adapters.repository import open_repository
from runbooks.core.errors import ConfigurationError, InferenceApiUnavailable, LockBusy, LockLost, Refused, RunbookError
from runbooks.core.redact import scrub
from runbooks.decisions.incidents import Notice, PostIncident
from runbooks.decisions.models import Judgement, ModelEvidence, Verdict, judge
from runbooks.decisions.report import report_tail, started, table
from runbooks.decisions.rollback import Plan, RollbackRecord, TargetView, grade_targets, pick_target, plan
from runbooks.frame import RunbookResult, RunbookRun, TradingGuard, notify, repository_lock
from runbooks.frame.names import run_name, run_parameters
from runbooks.frame.parameters import takes
from runbooks.settings import MODEL_ID_PATTERN, Settings
from runbooks.tasks.models import read_evidence, read_predictions, read_rollback_targets, read_serving, request_rollback

RUNBOOK = "model-rollback"


def _text(value: str) -> str:
    """Free text (quotes, any script, emoji, line breaks are all fine), but no NUL: a Prefect server on PostgreSQL
    cannot store it in the run's parameters, and it means nothing in the registry's record."""
    if "\x00" in value:
        raise ValueError("contains a NUL byte: give the text without it")
    return value


def _label(value: str) -> str:
    """A name (an engineer, a version): one line of text without control characters."""
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError(f"{value[:80]!r} contains a control character: give it as plain text")
    return value


Text = Annotated[str, AfterValidator(_text)]
Label = Annotated[str, AfterValidator(_label)]


class RollbackParameters(BaseModel):
    """One incident: which model, why and who asks. The decision table itself is in the settings
    (``[models.policy]``)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str | None = Field(default=None, pattern=MODEL_ID_PATTERN,
                                 description="The model to judge and roll back; empty: [models] model_id.")
    reason: Text = Field(default="", max_length=500, description="Why (sent to the registry, kept in the report "
                         "and the record); empty: the evidence's own words.")
    initiated_by: Label = Field(default="", max_length=200, description="Who asks (an engineer, or the "
                                "automation); empty: this run.")
    target_version: Label | None = Field(default=None, min_length=1, max_length=200, description="Roll back to "
                                         "this version; empty: the newest one that was healthy while it served.")
    force: bool = Field(default=False, description="Roll back even though the evidence does not call for it.")
    dry_run: bool = Field(default=False, description="Decide and pick the target, but change nothing.")
    monitor_minutes: float = Field(default=30, ge=0, le=1440, description="Watch the rolled-back model this long "
                                   "(the USD/COP playbook: 30 minutes); 0: do not watch.")
    poll_seconds: float = Field(default=60, ge=0.1, le=3600, description="How often to read the metrics while "
                                "watching (and the router while verifying, at most every 5 s).")

    def check_against(self, settings: Settings) -> None:
        """Refuse (ConfigurationError) a run whose registry is not configured; the CLI calls it before any run."""
        if settings.models.registry == "inference-api" and settings.inference_api is None:
            raise ConfigurationError("model-rollback needs the inference API, and [inference_api] is not "
                                     "configured.", hint="add [inference_api] base_url (and token) to the settings.")


class Sample(BaseModel):
    """One reading while watching the rolled-back model."""

    at: datetime
    version: str | None = None
    sharpe: float | None = None
    win_rate: float | None = None
    error_rate: float | None = None
    max_psi: float | None = None
    latency_seconds: float | None = None
    verdict: Verdict

    @classmethod
    def of(cls, evidence: ModelEvidence, verdict: Verdict) -> Sample:
        return cls(at=datetime.now(UTC), version=evidence.version, sharpe=evidence.sharpe, win_rate=evidence.win_rate,
                   error_rate=evidence.error_rate, max_psi=evidence.max_psi,
                   latency_seconds=evidence.latency_seconds, verdict=verdict)


class RollbackResult(RunbookResult):
    model_id: str
    dry_run: bool
    force: bool
    reason: str = ""
    initiated_by: str = ""
    serving_before: Serving | None = None
    evidence: ModelEvidence | None = None
    judgement: Judgement | None = None
    predictions_before: Predictions | None = None
    previous_rollback: RollbackRecord | None = Field(default=None, description="this runbook's record of its last "
                                                     "rollback of the model, as read at the start")
    plan: Plan | None = None
    targets: list[TargetView] = Field(default_factory=list)
    target_version: str | None = None
    action: str = Field(default="none", description="what was done (or, in a dry run, would be)")
    serving_after: Serving | None = None
    predictions_after: Predictions | None = None
    verified: bool | None = Field(default=None, description="the router serves the target and predictions flow")
    series_before: list[MetricPoint] = Field(default_factory=list, description="the registry's recent metrics")
    series_after: list[Sample] = Field(default_factory=list, description="read while watching")
    escalation: str | None = None
    notification: str | None = None
    trading: list[str] = Field(default_factory=list, description="what an escalation did to trading")


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def render_report(result: RollbackResult) -> str:
    verdict = result.judgement.verdict if result.judgement else "unknown"
    title = "ESCALATED" if result.escalation else ("dry run" if result.dry_run else result.action)
    lines = [f"# Model rollback of {result.model_id} — {title}", "",
             f"{started(result)}. Verdict: **{verdict}**. "
             f"**Action: {result.action}.**" + (f" Notification: {result.notification}." if result.notification
                                                 else ""), ""]
    if result.reason or result.initiated_by:
        lines += [f"Requested by {result.initiated_by or '-'}: {result.reason or '-'}"
                  + (" (force)" if result.force else ""), ""]
    if result.plan:
        lines += [f"Decision: {result.plan.why}.", ""]
    if result.escalation:
        lines += [f"**Escalation (P1):** {result.escalation}", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.evidence:
        e = result.evidence
        s = result.serving_before
        lines += ["## Evidence (the serving version)",
                  f"Router: serving {s.version if s else '-'} (healthy: {s.healthy if s else '-'}, routing "
                  f"{s.routing if s else '-'}).", "",
                  table(["version", "Sharpe", "win rate", "error rate", "loss streak", "drift PSI", "latency"],
                        [[e.version or "-", _num(e.sharpe), _num(e.win_rate, ".0%"), _num(e.error_rate, ".1%"),
                          e.consecutive_losses if e.consecutive_losses is not None else "-", _num(e.max_psi),
                          f"{_num(e.latency_seconds)} s"]])]
        if result.judgement and result.judgement.reasons:
            lines += ["Lines crossed:", *[f"- {r}" for r in result.judgement.reasons], ""]
        if result.judgement and result.judgement.missing:
            lines += [f"Not given by the registry: {', '.join(result.judgement.missing)}.", ""]
        if result.predictions_before:
            lines += [f"Predictions: {'flowing' if result.predictions_before.flowing else 'NOT flowing'} "
                      f"({result.predictions_before.detail}).", ""]
    if result.targets:
        lines += ["## Rollback targets (recorded metrics, newest first)",
                  table(["version", "deployed", "verdict", "eligible", "why not"],
                        [[t.version, f"{t.deployed_at:%Y-%m-%d %H:%M}" if t.deployed_at else "-", t.verdict,
                          "yes" if t.eligible else "no", t.why_not or "-"] for t in result.targets])]
    if result.target_version:
        after, flow = result.serving_after, result.predictions_after
        flowing = "-" if flow is None else (f"flowing ({flow.detail})" if flow.flowing else f"NOT flowing "
                                            f"({flow.detail})")
        verified = {True: "yes", False: "no", None: "-"}[result.verified]
        lines += ["## Proof", f"Target {result.target_version}: the router serves {after.version if after else '-'}; "
                  f"predictions {flowing}. Verified: {verified}.", ""]
    if result.series_before:
        lines += ["## Metrics before (the registry's recent series)",
                  table(["at", "Sharpe", "win rate", "error rate", "latency"],
                        [[f"{p.at:%H:%M:%S}" if p.at else "-", _num(p.sharpe), _num(p.win_rate, ".0%"),
                          _num(p.error_rate, ".1%"), f"{_num(p.latency_seconds)} s"]
                         for p in result.series_before[-20:]])]
    if result.series_after:
        lines += ["## Metrics after (watched)",
                  table(["at", "version", "Sharpe", "win rate", "error rate", "drift PSI", "latency", "verdict"],
                        [[f"{p.at:%H:%M:%S}", p.version or "-", _num(p.sharpe), _num(p.win_rate, ".0%"),
                          _num(p.error_rate, ".1%"), _num(p.max_psi), f"{_num(p.latency_seconds)} s", p.verdict]
                         for p in result.series_after])]
    if result.trading:
        lines += ["## Trading", *[f"- {a}" for a in result.trading], ""]
    lines += report_tail(result, body="\n".join(lines))
    return "\n".join(lines)


class _Escalated(Exception):
    """Stops the run after an escalation; the report says why."""


def _run_name() -> str:
    p = run_parameters()
    target = p.get("target_version")
    return run_name(RUNBOOK, p.get("model_id") or "default", "to" if target else None, target,
                    "forced" if p.get("force") else None, dry_run=bool(p.get("dry_run")), stamp=True)


@flow(name=RUNBOOK, flow_run_name=_run_name, log_prints=False)
@takes(RollbackParameters)
def model_rollback_flow(params: RollbackParameters) -> State:
    """Judge the serving model by the USD/COP playbook's decision table (section 3.2); roll back to the last
    version that was healthy while it served, prove the router serves it and predictions flow, and watch it;
    escalate instead of flapping."""
    run: RunbookRun[RollbackResult] = RunbookRun(RUNBOOK, resource=lambda s: params.model_id or s.models.model_id)
    settings = run.settings
    cfg = settings.models
    model_id = run.resource
    result = RollbackResult(model_id=model_id, dry_run=params.dry_run, force=params.force, reason=params.reason,
                            initiated_by=params.initiated_by or run.actor, started_at=run.started_at)
    run.report(result, render=render_report, key="model-rollback-report",
               description="Model-rollback runbook report", post_incident=_post_incident)
    registry = RegistryRef(kind=cfg.registry, api=settings.inference_api, model_id=model_id)

    def conclude(error: str | None = None) -> State:
        result.error = error or result.error
        result.succeeded = result.error is None and result.escalation is None
        run.steps.event("model-rollback.outcome", model_id=model_id, action=result.action,
                        verdict=result.judgement.verdict if result.judgement else None,
                        target_version=result.target_version, verified=result.verified,
                        escalated=result.escalation is not None)
        return run.conclude(result)

    def escalate(why: str) -> _Escalated:
        result.escalation = why
        if params.dry_run:  # a dry run changes nothing and pages nobody: it says what would happen
            result.escalation = f"(dry run: would escalate) {why}"
            result.next_steps.append(f"A real run would escalate (P1): {why}.")
            return _Escalated(why)
        run.logger.error("ESCALATE: %s", why)
        run.steps.event("escalation", labels={"runbooks.severity": "P1"}, severity="P1", reason=why, model_id=model_id)
        result.notification = notify(run, Notice(  # first: the kill switch may retry
            kind="start", severity="P1", title=f"model-rollback: ESCALATE {model_id}", status="Investigating",
            impact=f"model {model_id} is degraded and this runbook will not fix it on its own", details=[why],
            actions=["Kill switch pressed (kill_switch_on_escalation)" if cfg.kill_switch_on_escalation else
                     "Trading left as it is", "On-call: follow the USD/COP playbook's 'Model Performance Degradation' "
                     "(section 3.2) by hand"]))
        if cfg.kill_switch_on_escalation:
            guard = TradingGuard(run, settings.trading_api)
            try:
                guard.halt(reason=f"model-rollback escalation: {why}"[:500], how="kill-switch")
            except RunbookError as exc:
                guard.actions.append(f"kill switch NOT pressed: {scrub(str(exc))}")
                result.next_steps.append("Press the kill switch by hand: the escalation could not.")
            result.trading += guard.actions
        result.next_steps.append(f"ESCALATE (P1): {why}. Follow the USD/COP playbook's 'Model Performance "
                                 "Degradation' (section 3.2) by hand; this runbook will "
                                 "not roll back again for this incident.")
        return _Escalated(why)

    held = ExitStack()
    try:
        with run.step("check settings"):
            params.check_against(settings)
        unlocked = None if params.dry_run else _lock(run, held, model_id)
        with run.step("gather evidence", model_id=model_id) as figures:
            serving = read_serving(registry)
            if serving.model_id != model_id:
                raise Refused(f"the router serves model {serving.model_id!r}, not {model_id!r}.",
                              hint="set model_id (or [models] model_id) to the model the router serves.")
            result.serving_before = serving
            reading = read_evidence(registry, window=cfg.metrics_window)
            result.evidence, result.series_before = reading.evidence, reading.history
            result.judgement = judge(reading.evidence, cfg.policy)
            result.predictions_before = read_predictions(registry)
            figures.update(serving=serving.version, verdict=result.judgement.verdict,
                           sharpe=reading.evidence.sharpe)
        records, unreadable = _records(run)
        if unlocked is not None:  # records readable now do not make an unlocked rollback safe
            unreadable = unreadable or f"no lock: {unlocked}"
        with run.step("decide") as figures:
            previous = result.previous_rollback = None
            if records is not None:
                try:
                    previous = result.previous_rollback = records.get(model_id)
                except (RunbookError, OSError) as exc:
                    unreadable = scrub(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
            avoid = {previous.from_version} if previous and previous.to_version == serving.version else set()
            if params.target_version is not None:  # an operator's target is checked first, whatever comes next
                result.targets = grade_targets(read_rollback_targets(registry), serving=serving.version,
                                               avoid=avoid, policy=cfg.policy)
                pick_target(result.targets, params.target_version)
            decision = result.plan = plan(result.judgement, serving=serving.version, force=params.force,
                                          requested=params.target_version, record=previous,
                                          incident_window=cfg.incident_window)
            figures.update(action=decision.action)
            run.logger.info("Decision: %s: %s", decision.action, decision.why)
        if {"sharpe", "error_rate"} <= set(result.judgement.missing) and not params.force:
            why = (f"the registry gave neither a Sharpe ratio nor an error rate for {serving.version}: the model "
                   "cannot be judged")
            result.next_steps.append("Check the inference API's metrics endpoint by hand (the USD/COP "
                                     "playbook's section 3.2).")
            if not params.dry_run:
                result.notification = notify(run, Notice(
                    kind="start", severity="P2", title=f"model-rollback: {model_id} cannot be judged",
                    impact="the serving model's health is unknown", details=[why], actions=result.next_steps))
            return conclude(why)
        if decision.action == "verify":
            result.action = "none (verified only)"
            result.target_version = serving.version
            _verify(run, result, registry, target=serving.version, timeout=cfg.verify_timeout.total_seconds(),
                    poll=params.poll_seconds)
            if not result.verified:
                raise escalate(f"{serving.version} serves but its predictions are not flowing "
                               f"({result.predictions_after.detail if result.predictions_after else '?'})")
            if result.judgement.verdict == "rollback":
                raise escalate(f"the rolled-back version {serving.version} is degraded too "
                               f"({'; '.join(result.judgement.reasons)}); not rolling back again")
            return conclude()
        if decision.action == "none":
            if result.judgement.verdict == "shadow":
                result.next_steps.append("Activate shadow-mode comparison (the USD/COP playbook's section "
                                         "3.2) and compare: "
                                         "GET /api/v1/models/shadow/comparison.")
                if not params.dry_run:
                    result.notification = notify(run, Notice(
                        kind="start", severity="P2", title=f"model-rollback: {model_id} significantly degraded",
                        impact="the serving model trades below its baseline", details=[decision.why],
                        actions=result.next_steps))
            elif result.judgement.verdict == "monitor":
                result.next_steps.append("Monitor closely (the USD/COP playbook's section 3.2); rerun, or "
                                         "force a rollback.")
            return conclude()
        if unreadable is not None and not params.force:
            raise escalate(f"the model is degraded, but this runbook's rollback record cannot be read ({unreadable}),"
                           " so it cannot tell this incident from one it already rolled back: it does not roll "
                           "back on its own (rerun with force=true to roll back anyway)")

        with run.step("choose target") as figures:
            if not result.targets:
                result.targets = grade_targets(read_rollback_targets(registry), serving=serving.version,
                                               avoid=avoid, policy=cfg.policy)
            try:
                target = pick_target(result.targets, params.target_version)
            except Refused as exc:
                if result.judgement.verdict != "rollback":
                    raise  # forced on a model that is not degraded: a refusal, not an incident
                raise escalate(scrub(str(exc))) from None
            result.target_version = target.version
            figures.update(candidates=len(result.targets), target=target.version)
        reason = params.reason or f"runbooks model-rollback: {decision.why}"
        result.reason = reason[:500]
        if params.dry_run:
            result.action = f"would roll back {serving.version} -> {target.version} (dry run)"
            return conclude()
        try:
            _roll_back(run, result, registry, records, serving=serving.version, target=target.version,
                       why=decision.why, poll=params.poll_seconds)
            _watch(run, result, registry, params, target=target.version, escalate=escalate)
        except (_Escalated, LockLost):
            raise  # a run that lost its lock stops: the run that took it over acts (and pages) now
        except RunbookError as exc:
            raise escalate(f"the rollback of {serving.version} to {target.version} did not complete: "
                           f"{scrub(str(exc))}") from None
        except Exception as exc:  # noqa: BLE001 - once a rollback has started, anything unexpected pages a human
            text = scrub(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
            raise escalate(f"the rollback of {serving.version} to {target.version} stopped on an unexpected "
                           f"error ({text})") from None
    except _Escalated:
        return conclude(f"escalated: {result.escalation}")
    except RunbookError as exc:
        run.logger.error("%s", scrub(str(exc)))
        if isinstance(exc, InferenceApiUnavailable) and not params.dry_run:
            # After the retries: nobody can judge or roll back the model from here, which is itself an incident.
            result.next_steps.append("The inference API did not answer after its retries: check it, then judge "
                                     "and roll back by hand (the USD/COP playbook's section 3.2) or rerun "
                                     "this runbook.")
            result.notification = notify(run, Notice(
                kind="start", severity="P1", title=f"model-rollback: inference API unreachable ({model_id})",
                status="Investigating", impact=f"model {model_id} can be neither judged nor rolled back",
                details=[scrub(str(exc))], actions=result.next_steps))
        return conclude(scrub(str(exc)))
    finally:
        held.close()
    return conclude()


def _lock(run: RunbookRun[RollbackResult], held: ExitStack, model_id: str) -> str | None:
    """One run per model at a time, from evidence to watch, on any host: two at once would each decide on what they
    read and each send a rollback (or escalate over the other's). The lock lives in the repository beside the
    rollback records; when it cannot be taken the run goes on to judge, and returns why: the caller then does not
    roll back on its own (as without its records)."""
    api = run.settings.inference_api
    where = quote(api.base_url.rstrip("/") if api else run.settings.models.registry, safe="")
    try:
        held.enter_context(repository_lock(run, repository=open_repository(run.settings.repository),
                                           key=f"model-rollback/{where}/{quote(model_id, safe='')}"))
    except LockBusy:
        raise
    except (RunbookError, OSError) as exc:
        run.logger.warning("No lock (the backup repository cannot be reached: %s); this run will not roll back "
                           "on its own", scrub(str(exc)))
        return scrub(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
    return None


def _roll_back(run: RunbookRun[RollbackResult], result: RollbackResult, registry: RegistryRef,
               records: RollbackRecords | None, *, serving: str, target: str, why: str, poll: float) -> None:
    """Record, request, prove; a RunbookError here makes the caller escalate."""
    cfg = run.settings.models
    with run.step("roll back", destructive=True, target=target) as figures:
        if records is None:
            raise RunbookError("the backup repository that keeps the rollback records is not available, and a "
                               "rollback no later run can recognise could flap", hint="restore access to the "
                               "repository, or roll back by hand")
        # First: a run killed after the request is still known to the next one, which then only verifies.
        records.put(RollbackRecord(model_id=result.model_id, from_version=serving, to_version=target,
                                   reason=result.reason, initiated_by=result.initiated_by, actor=run.actor,
                                   flow_run_id=run.flow_run_id))
        answer = request_rollback(registry, from_version=serving, target_version=target, reason=result.reason,
                                  initiated_by=result.initiated_by)
        already = bool(answer["already_serving"])
        result.action = (f"{target} was already serving" if already else f"rolled back {serving} -> {target}"
                         + (" by this run (the request timed out but took effect)" if answer.get("answer_lost")
                            else ""))
        figures.update(already_serving=already, answer_lost=bool(answer.get("answer_lost")))
        if not already:
            run.steps.event("model.rolled-back", model_id=result.model_id, from_version=serving, to_version=target,
                            reason=result.reason, initiated_by=result.initiated_by)
    _verify(run, result, registry, target=target, timeout=cfg.verify_timeout.total_seconds(), poll=poll)
    if not result.verified:
        after = result.serving_after
        if after is None or after.version != target:
            raise RunbookError(f"the router still serves {after.version if after else 'an unknown version'} after "
                               f"{cfg.verify_timeout.total_seconds():.0f} s (the rollback did not take)")
        raise RunbookError(f"{target} serves but predictions are not flowing "
                           f"({result.predictions_after.detail if result.predictions_after else '?'})")
    result.notification = notify(run, Notice(
        kind="resolved", severity="P1", title=f"model-rollback: {result.model_id} rolled back to {target}",
        impact=f"{result.model_id} served a degraded version until the rollback", root_cause=why,
        resolution=f"{result.action}; the router serves {target} and predictions flow",
        actions=["Find why the model degraded before promoting a new version", "Post-mortem (the incident "
                 "response playbook's template: the model-rollback-post-incident artifact)"]))


def _post_incident(result: RollbackResult) -> PostIncident | None:
    """Only a rollback that happened, or an escalation, is an incident to review."""
    if result.dry_run or not (result.action.startswith("rolled back") or result.escalation):
        return None
    judged = "; ".join(result.judgement.reasons) if result.judgement else "not judged"
    before = result.serving_before.version if result.serving_before else "?"
    return PostIncident(
        title=f"model {result.model_id} degraded", severity="P1", lead=result.initiated_by,
        what_happened=f"{result.model_id} served {before}, judged {judged}. Requested: {result.reason or '-'}.",
        impact=[f"predictions of {before} were degraded until "
                + ("a human acts" if result.escalation else "the rollback")],
        resolution=(f"Escalated to on-call: {result.escalation}" if result.escalation else
                    f"{result.action}; verified: {result.verified}"),
        action_items=["Find why the model degraded", "Decide whether to retrain or retire " + before])


def _records(run: RunbookRun[RollbackResult]) -> tuple[RollbackRecords | None, str | None]:
    """The runbook's own records, or why they cannot be reached (then it does not roll back on its own)."""
    api = run.settings.inference_api
    try:
        where = api.base_url.rstrip("/") if api else run.settings.models.registry
        return RollbackRecords(open_repository(run.settings.repository), where), None
    except (RunbookError, OSError) as exc:
        run.logger.warning("Backup repository unavailable for rollback records: %s", scrub(str(exc)))
        return None, scrub(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]


def _flowing_for(predictions: Predictions, target: str) -> bool:
    """Predictions flow, and from the target (a registry that names the version must name this one)."""
    return predictions.flowing and predictions.version in (None, target)


def _verify(run: RunbookRun[RollbackResult], result: RollbackResult, registry: RegistryRef, *, target: str,
            timeout: float, poll: float) -> None:
    """The router must serve ``target`` and predictions must flow, within ``timeout`` seconds."""
    with run.step("verify", target=target) as figures:
        deadline = time.monotonic() + timeout
        interval = min(poll, 5.0)
        while True:
            result.serving_after = read_serving(registry)
            if result.serving_after.version == target:
                result.predictions_after = read_predictions(registry)
                if _flowing_for(result.predictions_after, target):
                    break
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        result.verified = (result.serving_after.version == target and result.predictions_after is not None
                           and _flowing_for(result.predictions_after, target))
        figures.update(serving=result.serving_after.version, verified=result.verified)


def _watch(run: RunbookRun[RollbackResult], result: RollbackResult, registry: RegistryRef,
           params: RollbackParameters, *, target: str, escalate: Callable[[str], Exception]) -> None:
    """Seed 004: monitor for 30 minutes after a rollback. If the rolled-back model breaches the rollback line
    too, stop and escalate: a second rollback would be a flap."""
    if params.monitor_minutes <= 0:
        return
    policy = run.settings.models.policy
    with run.step("watch", minutes=params.monitor_minutes) as figures:
        deadline = time.monotonic() + params.monitor_minutes * 60
        while True:
            reading = read_evidence(registry, window=run.settings.models.watch_window)
            grade = judge(reading.evidence, policy)
            result.series_after.append(Sample.of(reading.evidence, grade.verdict))
            figures.update(samples=len(result.series_after), last_verdict=grade.verdict)
            if reading.evidence.version not in (None, target):
                result.next_steps.append(f"The serving version changed to {reading.evidence.version} while it was "
                                         "watched (someone else rolled): watching stopped.")
                break
            if grade.verdict == "rollback":
                raise escalate(f"the rolled-back version {target} degraded too ({'; '.join(grade.reasons)}); "
                               "not rolling back again")
            if time.monotonic() + params.poll_seconds > deadline:
                break
            time.sleep(params.poll_seconds)
