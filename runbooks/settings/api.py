"""``[trading_api]``, ``[inference_api]`` (and the drill's ``[drill.trading_api]``): the platform's HTTP APIs."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from runbooks.settings.fields import SecretBlock, check_http_url, resolve_secret


class ApiSettings(BaseModel):
    """An HTTP API of the platform (trading, inference)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="e.g. http://trading-api:8000")
    token: SecretStr | None = Field(default=None, description="bearer token")
    token_block: SecretBlock | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    retry_budget_seconds: float = Field(default=30.0, gt=0, le=3600, description="a call, retries included, gives "
                                        "up after this long: each attempt waits timeout_seconds at most, and never "
                                        "past it (a frozen API is reported within it; trading API tasks)")

    _base_url = field_validator("base_url")(check_http_url)

    def bearer(self) -> str | None:
        return resolve_secret(self.token, self.token_block)


API_PATH_PATTERN = r"^/[A-Za-z0-9/_.~-]{0,199}$"
ApiPath = Annotated[str, Field(pattern=API_PATH_PATTERN)]
