"""The runbooks' own record of the databases a restore created, kept in the backup repository.

A restore drops only what this record says it made, and only if the database still is that one: same server,
same name, same OID. Nothing the application role can write (a database comment, a name) decides what is
dropped. Layout: ``records/restore-databases/<server>/<quoted database name>.json``.

A replace restore also records the live database it kept (``pre-restore``, with its OID) right after the swap:
the disk-cleanup runbook reports those and drops one only with approval and only while it still is that database.

A record is written *before* the database is created (``oid`` None: pending) and completed with its OID right
after, so a run killed in between leaves a pending record: such a database is reported, never dropped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field, ValidationError

from runbooks.adapters.repository import Repository
from runbooks.core.errors import BackupDamaged, BackupNotFound
from runbooks.decisions.drill import DrillRecord
from runbooks.decisions.rollback import RollbackRecord

RECORDS = "records/restore-databases"
DRILLS = "records/drills"
ROLLBACK_RECORDS = "records/model-rollbacks"


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
    """The records of one server's restore-made databases."""

    def __init__(self, repository: Repository, server: str) -> None:
        self.repository = repository
        self.server = server

    def _key(self, name: str) -> str:
        return f"{RECORDS}/{quote(self.server, safe='')}/{quote(name, safe='')}.json"

    def put(self, record: DatabaseRecord) -> None:
        self.repository.put_bytes(self._key(record.name), record.model_dump_json(indent=2).encode())

    def get(self, name: str) -> DatabaseRecord | None:
        try:
            record = DatabaseRecord.model_validate_json(self.repository.get_bytes(self._key(name)))
        except (BackupNotFound, ValidationError):
            return None
        return record if record.server == self.server and record.name == name else None

    def delete(self, name: str) -> None:
        self.repository.delete([self._key(name)])

    def all(self) -> list[DatabaseRecord]:
        found = []
        for obj in self.repository.list_objects(f"{RECORDS}/{quote(self.server, safe='')}/"):
            try:
                record = DatabaseRecord.model_validate_json(self.repository.get_bytes(obj.key))
            except (BackupNotFound, ValidationError):
                continue
            if record.server == self.server:
                found.append(record)
        return sorted(found, key=lambda r: r.created_at)


class DrillRecords:
    """``records/drills/<cluster>/<drill id>.json`` in the backup repository."""

    def __init__(self, repository: Repository, cluster: str) -> None:
        self.repository = repository
        self.prefix = f"{DRILLS}/{quote(cluster, safe='')}/"

    def put(self, record: DrillRecord) -> None:
        self.repository.put_bytes(f"{self.prefix}{record.drill_id}.json", record.model_dump_json(indent=2).encode())

    def recent(self, count: int) -> list[DrillRecord]:
        """The newest ``count`` records, oldest first; one that does not parse is skipped (it is not ours)."""
        if count <= 0:
            return []
        keys = sorted(o.key for o in self.repository.list_objects(self.prefix) if o.key.endswith(".json"))
        found = []
        for key in keys[-count:]:
            try:
                found.append(DrillRecord.model_validate_json(self.repository.get_bytes(key)))
            except (BackupNotFound, ValidationError):
                continue
        return found


class RollbackRecords:
    def __init__(self, repository: Repository, api_url: str) -> None:
        self.repository = repository
        self.api_url = api_url

    def _key(self, model_id: str) -> str:
        return f"{ROLLBACK_RECORDS}/{quote(self.api_url, safe='')}/{quote(model_id, safe='')}.json"

    def get(self, model_id: str) -> RollbackRecord | None:
        """The last rollback this runbook made of ``model_id``, or None if it never made one. A record that is
        there but does not parse raises: the caller cannot tell this incident from a new one, so it must not
        roll back on its own (fail closed)."""
        key = self._key(model_id)
        try:
            data = self.repository.get_bytes(key)
        except BackupNotFound:
            return None
        try:
            return RollbackRecord.model_validate_json(data)
        except ValidationError:
            raise BackupDamaged(f"the rollback record {key} does not parse.",
                                hint="inspect it; once the incident is understood, delete it or rerun with "
                                "force=true.") from None

    def put(self, record: RollbackRecord) -> None:
        self.repository.put_bytes(self._key(record.model_id), record.model_dump_json(indent=2).encode())
