"""``[prefect]``: which Prefect API the runbooks report to."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runbooks.settings.fields import check_http_url


class PrefectSettings(BaseModel):
    """Which Prefect API the runbooks report to."""

    model_config = ConfigDict(extra="forbid")

    api_url: str | None = Field(
        default=None, description="Prefect API; None uses PREFECT_API_URL or a temporary server"
    )

    _api_url = field_validator("api_url")(check_http_url)
