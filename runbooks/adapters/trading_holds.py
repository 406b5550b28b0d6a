"""The runbooks' own record of a trading hold (a pause or kill switch) a scheduled runbook made and may later lift,
kept in the backup repository beside the restore records: it outlives the run that paused, is shared by every
worker host, and survives the Prefect database. Runbooks reach it through the trading guard
(``runbooks.frame.TradingGuard.keeping_holds``), which writes it when it halts and lifts only what it says. (Not to
be confused with a *backup* hold, ``BackupCatalog.holding``: a backup kept from retention while a run needs it.)

A later run resumes only if the platform's state still matches this record exactly: same mode, same ``paused_by``,
same ``changed_at`` (the platform's timestamp right after our call). A human who paused, resumed or pressed the
kill switch since changed ``changed_at``, so their hold is never lifted by the runbook. Layout:
``records/trading-holds/<quoted trading API URL>/<runbook>.json``.
"""

from __future__ import annotations

from urllib.parse import unquote

from runbooks.adapters.repository import Repository
from runbooks.adapters.repository.records import RecordStore
from runbooks.decisions.freshness import TradingHold
from runbooks.settings import Settings

TRADING_HOLDS = "trading-holds"  # records/<kind>/


class TradingHolds:
    """One trading API's holds, by runbook. A record that does not parse is not acted on (no resume is decided
    from it); errors of the repository itself are raised: the caller reports them and resumes nothing."""

    def __init__(self, repository: Repository, api_url: str) -> None:
        self.store = RecordStore(repository, TRADING_HOLDS, api_url, TradingHold, on_damaged="skip")

    def get(self, runbook: str) -> TradingHold | None:
        return self.store.get(runbook)

    def put(self, runbook: str, record: TradingHold) -> None:
        self.store.put(runbook, record)

    def forget(self, runbook: str) -> None:
        self.store.delete(runbook)

    def by_runbook(self) -> dict[str, TradingHold]:
        """Every runbook's hold record on this platform (damaged ones left out: nothing is decided from them)."""
        found: dict[str, TradingHold] = {}
        for key in self.store.keys():
            name = unquote(key.removeprefix(self.store.prefix).removesuffix(".json"))
            for record in self.store.read([key]):
                found[name] = record
        return found


def halt_scope(settings: Settings) -> str:
    """What a hold record is filed under: the trading API's URL, or (without one) the database switch's database.
    The guard files its holds under the URL too, so every runbook of one platform sees the others' holds."""
    if settings.trading_api is not None:
        return settings.trading_api.base_url
    switch = settings.trading_safety.database
    return f"database:{switch.database if switch else 'none'}"
