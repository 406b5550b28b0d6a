"""The runbook frame: what every runbook stands on (see docs/writing-a-runbook.md).

- ``RunbookRun``: settings once, secrets registered, durable steps (a Prefect event per step), the report;
- ``request_approval``: pause for an operator's decision with identity, or ``confirm`` = plan hash;
- ``TradingGuard``: halt or pause trading, resume only a halt that is still ours;
- ``resource_lock`` (a database server's), ``host_lock`` (this host's), ``repository_lock`` (any host, no server of
  its own): one run per resource at a time, re-checked before each destructive step;
- ``notify``: tell on-call through a Prefect notification block;
- ``takes``: a flow's parameters as named, typed, described arguments (one form field each), validated by the
  runbook's parameter model; ``outcome`` reads the result from a run's final state, failed or not.
"""

from runbooks.frame.approval import Approval, ApprovalInput, request_approval
from runbooks.frame.guard import Halt, TradingGuard
from runbooks.frame.locks import host_lock, repository_lock, resource_lock
from runbooks.frame.notify import notify
from runbooks.frame.parameters import InvalidParameters, arguments, takes
from runbooks.frame.run import RunbookFailed, RunbookResult, RunbookRun, outcome
from runbooks.frame.steps import Steps, StepTiming

__all__ = ["Approval", "ApprovalInput", "Halt", "InvalidParameters", "RunbookFailed", "RunbookResult", "RunbookRun",
           "StepTiming", "Steps", "TradingGuard", "arguments", "host_lock", "notify", "outcome", "repository_lock",
           "request_approval", "resource_lock", "takes"]
