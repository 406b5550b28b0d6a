"""The runbooks' own record of a trading pause (or kill switch) a scheduled runbook made and may later lift, kept
in the backup repository beside the restore records: it outlives the run that paused, is shared by every worker
host, and survives the Prefect database. Runbooks reach it through the trading guard
(``runbooks.frame.TradingGuard.keeping_holds``), which writes it when it halts and lifts only what it says.

A later run resumes only if the platform's state still matches this record exactly: same mode, same ``paused_by``,
same ``changed_at`` (the platform's timestamp right after our call). A human who paused, resumed or pressed the
kill switch since changed ``changed_at``, so their hold is never lifted by the runbook. Layout:
``records/trading-holds/<quoted trading API URL>/<runbook>.json``.
"""

from __future__ import annotations

from urllib.parse import quote

from pydantic import ValidationError

from runbooks.adapters.repository import Repository
from runbooks.core.errors import BackupNotFound
from runbooks.decisions.freshness import HoldRecord

HOLDS = "records/trading-holds"


class HoldRecords:
    def __init__(self, repository: Repository, api_url: str) -> None:
        self.repository = repository
        self.api_url = api_url

    def _key(self, runbook: str) -> str:
        return f"{HOLDS}/{quote(self.api_url, safe='')}/{quote(runbook, safe='')}.json"

    def get(self, runbook: str) -> HoldRecord | None:
        """The record, or None if there is none or it does not parse (no resume is decided from it). Errors of
        the repository itself are raised: the caller reports them and resumes nothing."""
        try:
            return HoldRecord.model_validate_json(self.repository.get_bytes(self._key(runbook)))
        except (BackupNotFound, ValidationError):
            return None

    def put(self, runbook: str, record: HoldRecord) -> None:
        self.repository.put_bytes(self._key(runbook), record.model_dump_json(indent=2).encode())

    def forget(self, runbook: str) -> None:
        self.repository.delete([self._key(runbook)])
