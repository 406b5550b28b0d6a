"""``[databases.<name>]``: the platform's databases, each with its connection and the checks a restore of it runs."""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from runbooks.core.redact import redact_dsn, register_secret
from runbooks.settings.fields import Dsn, SecretBlock, resolve_secret


class IntegrityCheck(BaseModel):
    """A named SQL check run on a restored database. The schema is the user's: checks are configuration (the
    sandbox writes the seeds' data-corruption checks, seed 002, as its defaults)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="what the check looks for, as the report shows it")
    sql: str = Field(min_length=1, description="a read-only query; its first column of its first row is compared")
    expect: int | str | None = Field(default=None, description="the value that means healthy (e.g. 0 rows); "
                                     "unset: the check only reports its first rows")


class DatabaseSettings(BaseModel):
    """One database of the platform. The DSN may carry the password; ``password`` wins if both are set."""

    model_config = ConfigDict(extra="forbid")

    dsn: Dsn = Field(description="libpq URL or key=value connection string")
    password: SecretStr | None = Field(default=None, description="overrides any password in the DSN")
    password_block: SecretBlock | None = Field(default=None, description="name of a Prefect Secret block")
    checks: list[IntegrityCheck] = Field(default_factory=list, description="integrity checks after a restore "
                                         "(reported; row counts against the manifest are the gate)")

    def conninfo(self) -> dict[str, Any]:
        """Connection parameters with the password resolved (plain values: never log this)."""
        params = conninfo_to_dict(self.dsn.get_secret_value())
        password = resolve_secret(self.password, self.password_block)
        if password is not None:
            params["password"] = password
        register_secret(str(params.get("password") or ""))
        return params

    def safe_dsn(self) -> str:
        return redact_dsn(self.dsn.get_secret_value())
