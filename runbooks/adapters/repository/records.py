"""The runbooks' own records in the backup repository: one JSON object per record, under a prefix of their own,
keyed by quoted names. A record outlives the run that wrote it, is shared by every worker host and survives the
Prefect database; and it is not a mark someone else can write on the platform, so what a runbook drops, resumes
or rolls back is decided from it.

A record that is there but does not parse is *damaged*. What to do then is the caller's rule, given once per
store: ``skip`` (it is not ours: list the others, decide nothing from it) or ``fail`` (refuse: the caller cannot
tell this incident from a new one, so it must not act on its own).
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from runbooks.adapters.repository.base import Repository
from runbooks.core.errors import BackupDamaged, BackupNotFound

M = TypeVar("M", bound=BaseModel)
OnDamaged = Literal["skip", "fail"]


class RecordStore(Generic[M]):
    """Records of ``model`` under ``records/<kind>/<quoted scope>/``, one ``<quoted name>.json`` each."""

    def __init__(self, repository: Repository, kind: str, scope: str, model: type[M], *,
                 on_damaged: OnDamaged, what: str = "record",
                 damaged_hint: str = "inspect it, then delete it by hand once understood.") -> None:
        self.repository = repository
        self.model = model
        self.on_damaged = on_damaged
        self.what = what
        self.damaged_hint = damaged_hint
        self.prefix = f"records/{kind}/{quote(scope, safe='')}/"

    def key(self, name: str) -> str:
        return f"{self.prefix}{quote(name, safe='')}.json"

    def put(self, name: str, record: M) -> None:
        self.repository.put_bytes(self.key(name), record.model_dump_json(indent=2).encode())

    def _parse(self, key: str, data: bytes) -> M | None:
        try:
            return self.model.model_validate_json(data)
        except ValidationError:
            if self.on_damaged == "fail":
                raise BackupDamaged(f"the {self.what} {key} does not parse.", hint=self.damaged_hint) from None
            return None

    def get(self, name: str) -> M | None:
        """The record, or None if there is none (or, under ``skip``, if it is damaged). Errors of the repository
        itself are raised: a caller decides nothing from a record it could not read."""
        key = self.key(name)
        try:
            data = self.repository.get_bytes(key)
        except BackupNotFound:
            return None
        return self._parse(key, data)

    def delete(self, name: str) -> None:
        self.repository.delete([self.key(name)])

    def keys(self) -> list[str]:
        return sorted(o.key for o in self.repository.list_objects(self.prefix) if o.key.endswith(".json"))

    def read(self, keys: list[str]) -> list[M]:
        """The records at ``keys`` in that order; one deleted meanwhile is not there."""
        found = []
        for key in keys:
            try:
                record = self._parse(key, self.repository.get_bytes(key))
            except BackupNotFound:
                continue
            if record is not None:
                found.append(record)
        return found

    def all(self) -> list[M]:
        return self.read(self.keys())
