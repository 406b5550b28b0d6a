"""The checked-in example inventory stays loadable as the settings model evolves."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbooks.settings import load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "runbooks.example.toml"


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(EXAMPLE))
    settings = load_settings()
    assert settings.repository.url.startswith("s3://")
    assert set(settings.databases) == {"trading_db"}
    assert settings.backup.retention.daily == 7
    assert settings.trading_api and settings.trading_api.base_url.startswith("http")
    bars = settings.freshness.tables[0]
    assert (bars.table, bars.error_after.total_seconds(), bars.quality) == ("ohlcv_usdcop_5m", 600, "ohlcv")
    assert settings.weekly_report.model_ids == [settings.models.model_id]
    safety = settings.trading_safety
    assert safety.switches == ["api", "database", "environment"] and not safety.stop_on_p0
    assert safety.database and (safety.database.table, safety.database.halt_value) == ("system_config", "halt")
    assert safety.environment and safety.environment.command[:2] == ["docker", "compose"]
