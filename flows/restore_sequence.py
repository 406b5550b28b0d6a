"""The restore sequence the restore runbook and the DR drill share, one step each: the dump fetched and verified
against its manifest (only a file whose checksum matched is ever there), a scratch database created with the
source's properties (recorded before it exists, so that only the runbooks' own record ever decides what is
dropped), and ``pg_restore -j`` into it. What follows differs: the restore validates the copy, then publishes it
under a new name or swaps it in after approval; the drill publishes it on its clean cluster and proves the
platform on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runbooks.adapters.catalog import BackupCatalog
from runbooks.adapters.records import DatabaseRecord, RestoreRecords
from runbooks.decisions.manifest import BackupManifest
from runbooks.frame import RunbookRun
from runbooks.settings import DatabaseSettings
from runbooks.tasks.postgres import create_scratch_database, restore_database
from runbooks.tasks.storage import fetch_backup


def restore_to_scratch(run: RunbookRun[Any], *, catalog: BackupCatalog, manifest: BackupManifest,
                       database: DatabaseSettings, records: RestoreRecords, protected: set[str], source: str,
                       scratch: str, dump: Path, jobs: int, no_owner: bool, label: str = "",
                       settle: bool = True) -> float:
    """Restore ``manifest``'s dump of ``source`` into the new database ``scratch`` on ``database``'s server.

    Args:
        dump: where the verified dump is staged (removed once restored).
        label: appended to the step names when one run restores several databases (the drill).
        settle: let the kernel write the fetched file back before pg_restore reads it (a restore on the server's
            own disk); the drill's clean cluster reads it at once.

    Returns:
        pg_restore's seconds.
    """
    of = f" {label}" if label else ""
    with run.step(f"fetch and verify backup{of}") as figures:
        fetch_backup(catalog=catalog, manifest=manifest, role="dump", dest=dump, settle=settle)
        figures["bytes"] = manifest.bytes
    try:
        with run.step(f"create scratch database{of}", destructive=True):
            create_scratch_database(
                database=database, records=records, protected=protected, properties=manifest.database,
                record=DatabaseRecord(server=records.server, name=scratch, oid=None, kind="scratch", source=source,
                                      backup_id=manifest.backup_id, flow_run_id=run.flow_run_id))
        with run.step(f"pg_restore -j {jobs}{of}", destructive=True) as figures:
            seconds = restore_database(database=database, target=scratch, dump_file=dump, jobs=jobs,
                                       no_owner=no_owner,
                                       owner=manifest.database.owner if manifest.database else None)
            figures["seconds"] = round(seconds, 2)
    finally:
        dump.unlink(missing_ok=True)
    return seconds
