"""The runbooks' own records, kept in the backup repository (``RecordStore``: ``records/<kind>/<scope>/``):

- ``restore-databases/<server>/<database>``: the databases a restore created. A restore drops only what this
  record says it made, and only if the database still is that one: same server, same name, same OID. Nothing the
  application role can write (a database comment, a name) decides what is dropped. A replace restore also records
  the live database it kept (``pre-restore``, with its OID) right after the swap: the disk-cleanup runbook reports
  those and drops one only with approval and only while it still is that database. A record is written *before*
  the database is created (``oid`` None: pending) and completed with its OID right after, so a run killed in
  between leaves a pending record: such a database is reported, never dropped.
- ``drills/<cluster>/<drill id>``: every DR drill, for the trend.
- ``model-rollbacks/<inference API>/<model>``: the last rollback of each model (no flapping).

The trading holds of a run that paused trading are in ``runbooks.adapters.trading_holds``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from runbooks.adapters.repository import Repository
from runbooks.adapters.repository.records import RecordStore
from runbooks.decisions.drill import DrillRecord
from runbooks.decisions.rollback import RollbackRecord

RESTORE_DATABASES, DRILLS, MODEL_ROLLBACKS = "restore-databases", "drills", "model-rollbacks"  # records/<kind>/


class DatabaseRecord(BaseModel):
    server: str = Field(description="system identifier (or host-port) of the cluster")
    name: str
    oid: int | None = Field(description="None while creation is pending")
    kind: Literal["scratch", "recovery", "pre-restore"] = Field(description="scratch: a restore's copy being "
                                                              "filled; recovery: a mode=new target; pre-restore: "
                                                              "the live database a replace kept")
    source: str = Field(description="inventory name of the database whose backup it holds")
    backup_id: str
    flow_run_id: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class RestoreRecords:
    """The records of one server's restore-made databases (a damaged one is not ours: nothing is dropped by it)."""

    def __init__(self, repository: Repository, server: str) -> None:
        self.repository = repository
        self.server = server
        self.store = RecordStore(repository, RESTORE_DATABASES, server, DatabaseRecord, on_damaged="skip")

    def put(self, record: DatabaseRecord) -> None:
        self.store.put(record.name, record)

    def get(self, name: str) -> DatabaseRecord | None:
        record = self.store.get(name)
        return record if record is not None and record.server == self.server and record.name == name else None

    def delete(self, name: str) -> None:
        self.store.delete(name)

    def all(self) -> list[DatabaseRecord]:
        return sorted((r for r in self.store.all() if r.server == self.server), key=lambda r: r.created_at)


class DrillRecords:
    """``records/drills/<cluster>/<drill id>.json``: the trend of every drill (a damaged one is skipped)."""

    def __init__(self, repository: Repository, cluster: str) -> None:
        self.store = RecordStore(repository, DRILLS, cluster, DrillRecord, on_damaged="skip")

    def put(self, record: DrillRecord) -> None:
        self.store.put(record.drill_id, record)

    def recent(self, count: int) -> list[DrillRecord]:
        """The newest ``count`` records, oldest first."""
        return self.store.read(self.store.keys()[-count:]) if count > 0 else []


class RollbackRecords:
    """The last rollback the runbook made of each model, per inference API. A damaged record fails closed: the
    runbook cannot tell this incident from the one it already handled, so it must not roll back on its own."""

    def __init__(self, repository: Repository, api_url: str) -> None:
        self.store = RecordStore(repository, MODEL_ROLLBACKS, api_url, RollbackRecord, on_damaged="fail",
                                 what="rollback record", damaged_hint="inspect it; once the incident is understood, "
                                 "delete it or rerun with force=true.")

    def get(self, model_id: str) -> RollbackRecord | None:
        """The last rollback this runbook made of ``model_id``, or None if it never made one."""
        return self.store.get(model_id)

    def put(self, record: RollbackRecord) -> None:
        self.store.put(record.model_id, record)
