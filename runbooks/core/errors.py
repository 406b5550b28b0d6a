"""Errors a runbook raises on purpose, split by whether a retry can help.

    RunbookError
    ├── TransientError            retry with backoff: the same call may succeed later (`exhausted`: it did not)
    │   ├── DatabaseUnavailable       connection refused, server starting up, too many clients
    │   ├── RepositoryUnavailable     S3 5xx / throttling / connection reset
    │   ├── TradingApiUnavailable     trading API unreachable, 5xx or 429
    │   ├── InferenceApiUnavailable   inference API unreachable, timed out, 5xx or 429
    │   ├── DockerUnavailable         the Docker engine's socket is absent, refuses, or answers 5xx
    │   └── PrefectApiUnavailable     the Prefect API (run history) unreachable, 5xx or 429
    └── PermanentError            fail at once: a retry only delays the page
        ├── ConfigurationError        malformed settings (repository URL, DSN, unknown database name)
        ├── AuthenticationFailed      wrong password / access denied
        ├── DatabaseNotFound          the server has no such database
        ├── RepositoryNotWritable     the repository path or bucket refuses writes
        │   └── RepositoryNotFound    the repository path or bucket does not exist
        ├── BackupDamaged             a backup whose manifest cannot be read
        ├── BackupNotFound            no such backup id / no manifest
        ├── BackupIncomplete          an interrupted backup: objects without a manifest
        ├── VerificationFailed        a checksum or archive check failed
        ├── ToolFailed                pg_dump / pg_restore / pg_dumpall exited non-zero
        ├── LockBusy                  another run holds the lock (e.g. a restore of the same database)
        ├── LockLost                  a lock this run held is gone (session killed): stop before the next change
        ├── InsufficientPrivilege     the role lacks a privilege the step needs (SQLSTATE 42501, CREATEDB, …)
        ├── DatabaseInUse             other sessions use a database the step would drop or rename (55006)
        ├── QueryFailed               any other SQL error, with its SQLSTATE
        ├── Refused                   the request would be unsafe (target exists, target is the source, …)
        │   └── OutsideChangeWindow   heavy work while a gating market is in session, without in_session_reason
        ├── TradingApiRefused         the trading API said no (4xx other than auth)
        ├── InferenceApiRefused       the inference API said no (4xx other than auth; ``status`` kept)
        └── PrefectApiRefused         the Prefect API said no (4xx)

Every message says what was refused and ends with a ``HINT:`` saying what to do next. Context is kept in
attributes (``sqlstate``), not parsed back out of the text. Foreign errors are mapped where they enter, in one
place each: psycopg by SQLSTATE and libpq tools by their C-locale messages (``runbooks.adapters.postgres``), S3
by error code (``runbooks.adapters.repository.s3``), HTTP by status (``runbooks.adapters.api``). Messages never
contain secrets: every secret value is registered in ``runbooks.core.redact`` and scrubbed from anything a tool or
library printed.
"""

from __future__ import annotations


class RunbookError(Exception):
    """Base class; ``hint`` is appended to the message so an operator always gets a next step."""

    def __init__(self, message: str, *, hint: str | None = None, sqlstate: str | None = None) -> None:
        self.message = message
        self.hint = hint
        self.sqlstate = sqlstate
        super().__init__(f"{message} HINT: {hint}" if hint else message)


class TransientError(RunbookError):
    """A failure a retry may fix. Its hint speaks to the retry (``transient; the task retries``) until the retries
    are spent; ``exhausted`` is the same error as it leaves the last attempt, with the hint an operator needs then.
    """

    attempts: int | None = None

    def exhausted(self, *, attempts: int, hint: str) -> TransientError:
        """The same error (class, message, SQLSTATE) after ``attempts`` failed attempts, with ``hint`` saying what
        to do now that no retry follows."""
        final = type(self)(self.message, hint=hint, sqlstate=self.sqlstate)
        final.attempts = attempts
        return final


class PermanentError(RunbookError):
    """A failure no retry will fix."""


class DatabaseUnavailable(TransientError):
    pass


class RepositoryUnavailable(TransientError):
    pass


class ConfigurationError(PermanentError):
    pass


class AuthenticationFailed(PermanentError):
    pass


class DatabaseNotFound(PermanentError):
    pass


class RepositoryNotWritable(PermanentError):
    pass


class RepositoryNotFound(RepositoryNotWritable):
    pass


class BackupDamaged(PermanentError):
    pass


class BackupNotFound(PermanentError):
    pass


class BackupIncomplete(PermanentError):
    pass


class VerificationFailed(PermanentError):
    pass


class ToolFailed(PermanentError):
    pass


class LockBusy(PermanentError):
    """``holder`` says who holds the lock (a flow run, its process and host), when the lock knows it: a report can
    name it without reading it back out of the message."""

    def __init__(self, message: str, *, hint: str | None = None, sqlstate: str | None = None,
                 holder: str | None = None) -> None:
        super().__init__(message, hint=hint, sqlstate=sqlstate)
        self.holder = holder


class LockLost(PermanentError):
    pass


class InsufficientPrivilege(PermanentError):
    pass


class DatabaseInUse(PermanentError):
    pass


class QueryFailed(PermanentError):
    pass


class Refused(PermanentError):
    pass


class OutsideChangeWindow(Refused):
    """Heavy or destructive work asked for while a gating market is in session, without a reason to act now: bad
    input (exit 2), refused before any side effect."""


class TradingApiUnavailable(TransientError):
    pass


class TradingApiRefused(PermanentError):
    pass


class InferenceApiUnavailable(TransientError):
    pass


class InferenceApiRefused(PermanentError):
    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class DockerUnavailable(TransientError):
    pass


class PrefectApiUnavailable(TransientError):
    pass


class PrefectApiRefused(PermanentError):
    pass


class RedisUnavailable(TransientError):
    pass


class RedisRefused(PermanentError):
    """Redis answered with an error a retry will not change (a command refused, a save that failed)."""
